//! Management HTTP API, in process on port 0: overview, nodes, whoami, health checks, the
//! AMQP model (queues, exchanges, bindings, publish, get, purge), connections, channels and
//! consumers, list parameters, and bad input (auth, malformed JSON, unknown objects, body
//! size, encoded names). Administration endpoints are in tests/http_admin.rs.

mod common;
use common::http::{api, api_as};
use common::*;
use lapin::options::*;
use lapin::types::FieldTable;
use serde_json::{json, Value};

#[tokio::test]
async fn overview_nodes_whoami_and_health() {
    let b = start_broker().await;
    let a = api(&b);
    let o = a.ok("/api/overview").await;
    assert_eq!(o["product_name"], "WarrenMQ");
    assert!(o["rabbitmq_version"].as_str().unwrap().starts_with('3'));
    assert!(o["management_version"].is_string());
    assert!(o["node"].as_str().unwrap().starts_with("warrenmq@"));
    assert_eq!(o["object_totals"]["queues"], 0);
    assert_eq!(o["object_totals"]["exchanges"], 7);
    assert_eq!(o["queue_totals"]["messages"], 0);
    assert!(o["message_stats"]["publish_details"]["rate"].is_number());
    let listeners = o["listeners"].as_array().unwrap();
    let amqp_port = b.addr().port();
    assert!(listeners
        .iter()
        .any(|l| l["protocol"] == "amqp" && l["port"] == amqp_port));

    let nodes = a.ok("/api/nodes").await;
    assert_eq!(nodes[0]["name"], o["node"]);
    assert!(nodes[0]["mem_used"].as_u64().unwrap() > 0);
    assert!(nodes[0]["disk_free"].as_u64().unwrap() > 0);
    let node = o["node"].as_str().unwrap();
    assert_eq!(a.ok(&format!("/api/nodes/{node}")).await["running"], true);
    assert_eq!(a.get("/api/nodes/nobody@nowhere").await.0, 404);

    assert_eq!(
        a.ok("/api/whoami").await,
        json!({"name": "guest", "tags": ["administrator"]})
    );
    assert_eq!(a.ok("/api/extensions").await, json!([]));
    assert_eq!(a.ok("/api/health/checks/alarms").await["status"], "ok");
    assert_eq!(
        a.ok("/api/health/checks/local-alarms").await["status"],
        "ok"
    );
    // RabbitMQ 3.10.8's answer on one node, word for word.
    for check in ["node-is-quorum-critical", "node-is-mirror-sync-critical"] {
        assert_eq!(
            a.ok(&format!("/api/health/checks/{check}")).await,
            json!({"status": "ok", "reason": "single node cluster"})
        );
    }
    assert_eq!(
        a.ok("/api/health/checks/virtual-hosts").await["status"],
        "ok"
    );
    let p = a
        .ok(&format!("/api/health/checks/port-listener/{amqp_port}"))
        .await;
    assert_eq!(p["status"], "ok");
    let (s, v) = a.get("/api/health/checks/port-listener/1").await;
    assert_eq!((s, v["status"].as_str()), (503, Some("failed")));
    assert_eq!(a.get("/api/health/checks/port-listener/x").await.0, 400);
}

#[tokio::test]
async fn aliveness_test_node_healthchecks_and_cluster_name() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = test_config(dir.path());
    let mut b = start_broker_with(cfg.clone(), dir).await;
    let a = api(&b);
    assert_eq!(
        a.ok("/api/aliveness-test/%2F").await,
        json!({"status": "ok"})
    );
    // It leaves its queue behind, empty, as RabbitMQ does.
    let q = a.ok("/api/queues/%2F/aliveness-test").await;
    assert_eq!(
        (q["durable"].as_bool(), q["messages"].as_u64()),
        (Some(false), Some(0))
    );
    assert_eq!(a.get("/api/aliveness-test/nowhere").await.0, 404);
    // Bad credentials are 401 before an unknown vhost is 404.
    let bad = api_as(&b, "guest", "wrong");
    assert_eq!(bad.get("/api/aliveness-test/nowhere").await.0, 401);

    assert_eq!(
        a.ok("/api/healthchecks/node").await,
        json!({"status": "ok"})
    );
    // RabbitMQ's route is `/healthchecks/node/[:node]`: the empty node segment (amqpstorm's
    // `healthchecks.get()` asks for `healthchecks/node/`) is the local node.
    assert_eq!(
        a.ok("/api/healthchecks/node/").await,
        json!({"status": "ok"})
    );
    let node = a.ok("/api/overview").await["node"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        a.ok(&format!("/api/healthchecks/node/{node}")).await,
        json!({"status": "ok"})
    );
    assert_eq!(a.get("/api/healthchecks/node/nobody@nowhere").await.0, 404);

    assert_eq!(a.ok("/api/cluster-name").await, json!({"name": "warrenmq"}));
    assert_eq!(
        a.put("/api/cluster-name", json!({"name": "gpu-pool"}))
            .await
            .0,
        204
    );
    assert_eq!(a.put("/api/cluster-name", json!({"name": 7})).await.0, 400);
    assert_eq!(a.ok("/api/cluster-name").await, json!({"name": "gpu-pool"}));
    assert_eq!(a.ok("/api/overview").await["cluster_name"], "gpu-pool");
    // Clients see it in connection.start.
    let mut r = common::raw::Raw::tcp(b.addr()).await;
    r.send_raw(b"AMQP\x00\x00\x09\x01").await;
    use amq_protocol::frame::AMQPFrame;
    use amq_protocol::protocol::{connection, AMQPClass};
    match r.recv().await {
        Some(AMQPFrame::Method(0, AMQPClass::Connection(connection::AMQPMethod::Start(s)))) => {
            let name = s.server_properties.inner().get("cluster_name").cloned();
            assert_eq!(
                name,
                Some(amq_protocol::types::AMQPValue::LongString(
                    "gpu-pool".into()
                ))
            );
        }
        other => panic!("expected connection.start, got {other:?}"),
    }
    let defs = a.ok("/api/definitions").await;
    assert_eq!(
        defs["global_parameters"],
        json!([{"name": "cluster_name", "value": "gpu-pool"}])
    );
    // Kept across a restart.
    let dir = std::mem::replace(&mut b.dir, tempfile::tempdir().unwrap());
    b.stop().await;
    let b = start_broker_with(cfg, dir).await;
    assert_eq!(
        api(&b).ok("/api/cluster-name").await,
        json!({"name": "gpu-pool"})
    );
}

#[tokio::test]
async fn authentication_and_tags() {
    let b = start_broker().await;
    let addr = b.handle.as_ref().unwrap().http_addr;
    // No credentials: 401 with a Basic challenge.
    let r = reqwest::get(format!("http://{addr}/api/overview"))
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.headers().contains_key("www-authenticate"));
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"], "not_authorized");
    // Wrong password: 401.
    let (s, v) = api_as(&b, "guest", "nope").get("/api/overview").await;
    assert_eq!((s, v["error"].as_str()), (401, Some("not_authorized")));
    assert_eq!(v["reason"], "Login failed");

    let a = api(&b);
    for (name, tags) in [
        ("plain", ""),
        ("mgmt", "management"),
        ("mon", "monitoring"),
        ("pol", "policymaker"),
    ] {
        let (s, _) = a
            .put(
                &format!("/api/users/{name}"),
                json!({"password": "pw", "tags": tags}),
            )
            .await;
        assert_eq!(s, 201);
    }
    // No management tag: 403.
    let (s, v) = api_as(&b, "plain", "pw").get("/api/overview").await;
    assert_eq!(
        (s, v["reason"].as_str()),
        (403, Some("Not management user"))
    );
    // management: overview yes, users and nodes no; sees only vhosts it has permissions in.
    let m = api_as(&b, "mgmt", "pw");
    assert_eq!(m.get("/api/overview").await.0, 200);
    assert_eq!(m.get("/api/users").await.0, 403);
    assert_eq!(m.get("/api/nodes").await.0, 403);
    assert_eq!(m.ok("/api/vhosts").await, json!([]));
    assert_eq!(m.get("/api/queues/%2F").await.0, 403);
    a.put(
        "/api/permissions/%2F/mgmt",
        json!({"configure": "", "write": "", "read": ".*"}),
    )
    .await;
    assert_eq!(m.ok("/api/vhosts").await.as_array().unwrap().len(), 1);
    // Its AMQP permissions apply to what it does through HTTP.
    let (s, v) = m.put("/api/queues/%2F/q", json!({})).await;
    assert_eq!(s, 403);
    assert_eq!(
        v["reason"],
        "access to queue 'q' in vhost '/' refused for user 'mgmt'"
    );
    // monitoring: nodes and every vhost, but no administration.
    let mon = api_as(&b, "mon", "pw");
    assert_eq!(mon.get("/api/nodes").await.0, 200);
    assert_eq!(mon.ok("/api/vhosts").await.as_array().unwrap().len(), 1);
    assert_eq!(mon.put("/api/vhosts/x", json!({})).await.0, 403);
    // policymaker: policies in its vhosts.
    let pol = api_as(&b, "pol", "pw");
    let policy = json!({"pattern": ".*", "definition": {"max-length": 1}});
    assert_eq!(pol.put("/api/policies/%2F/p", policy.clone()).await.0, 403);
    a.put(
        "/api/permissions/%2F/pol",
        json!({"configure": "", "write": "", "read": ""}),
    )
    .await;
    assert_eq!(pol.put("/api/policies/%2F/p", policy).await.0, 201);
    assert_eq!(pol.get("/api/users").await.0, 403);
}

#[tokio::test]
async fn queues_declare_get_list_purge_delete() {
    let b = start_broker().await;
    let a = api(&b);
    let (s, _) = a
        .put(
            "/api/queues/%2F/jobs",
            json!({"durable": true, "arguments": {"x-max-priority": 5}}),
        )
        .await;
    assert_eq!(s, 201);
    assert_eq!(
        a.put(
            "/api/queues/%2F/jobs",
            json!({"durable": true, "arguments": {"x-max-priority": 5}})
        )
        .await
        .0,
        204
    );
    let (s, v) = a
        .put("/api/queues/%2F/jobs", json!({"durable": false}))
        .await;
    assert_eq!(s, 400);
    assert_eq!(v["error"], "bad_request");
    assert!(v["reason"]
        .as_str()
        .unwrap()
        .contains("inequivalent arg 'durable'"));
    assert_eq!(a.put("/api/queues/%2F/amq.nope", json!({})).await.0, 403);
    assert_eq!(
        a.put(
            "/api/queues/%2F/bad",
            json!({"arguments": {"x-max-length": "many"}})
        )
        .await
        .0,
        400
    );

    for i in 0..3 {
        let (s, v) = a
            .post(
                "/api/exchanges/%2F/amq.default/publish",
                json!({"properties": {"priority": i, "headers": {"n": i}}, "routing_key": "jobs",
                       "payload": format!("job {i}"), "payload_encoding": "string"}),
            )
            .await;
        assert_eq!((s, v), (200, json!({"routed": true})));
    }
    let q = a.ok("/api/queues/%2F/jobs").await;
    assert_eq!(q["name"], "jobs");
    assert_eq!(q["vhost"], "/");
    assert_eq!(q["durable"], true);
    assert_eq!(q["arguments"], json!({"x-max-priority": 5}));
    assert_eq!(q["messages_ready"], 3);
    assert_eq!(q["messages"], 3);
    assert_eq!(q["message_bytes"], 15);
    assert_eq!(q["consumers"], 0);
    assert_eq!(q["message_stats"]["publish"], 3);

    // get with requeue leaves them there (redelivered); ack removes.
    let (s, got) = a
        .post(
            "/api/queues/%2F/jobs/get",
            json!({"count": 2, "ackmode": "ack_requeue_true", "encoding": "auto"}),
        )
        .await;
    assert_eq!(s, 200, "{got}");
    assert_eq!(got.as_array().unwrap().len(), 2);
    assert_eq!(got[0]["payload"], "job 2", "highest priority first");
    assert_eq!(got[0]["payload_encoding"], "string");
    assert_eq!(got[0]["properties"]["headers"], json!({"n": 2}));
    assert_eq!(got[0]["routing_key"], "jobs");
    assert_eq!(got[0]["message_count"], 2);
    assert_eq!(a.ok("/api/queues/%2F/jobs").await["messages_ready"], 3);
    let (_, got) = a
        .post(
            "/api/queues/%2F/jobs/get",
            json!({"count": 1, "ackmode": "ack_requeue_false", "encoding": "base64"}),
        )
        .await;
    assert_eq!(got[0]["redelivered"], true);
    assert_eq!(got[0]["payload_encoding"], "base64");
    assert_eq!(a.ok("/api/queues/%2F/jobs").await["messages_ready"], 2);
    assert_eq!(
        a.post(
            "/api/queues/%2F/jobs/get",
            json!({"count": 1, "ackmode": "nope"})
        )
        .await
        .0,
        400
    );

    assert_eq!(a.delete("/api/queues/%2F/jobs?if-empty=true").await.0, 400);
    assert_eq!(a.delete("/api/queues/%2F/jobs/contents").await.0, 204);
    assert_eq!(a.ok("/api/queues/%2F/jobs").await["messages_ready"], 0);
    assert_eq!(
        a.ok("/api/queues/%2F/jobs/bindings")
            .await
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(a.delete("/api/queues/%2F/jobs?if-empty=true").await.0, 204);
    assert_eq!(a.get("/api/queues/%2F/jobs").await.0, 404);
    assert_eq!(a.delete("/api/queues/%2F/jobs").await.0, 404);
    let (s, v) = a.get("/api/queues/nowhere/jobs").await;
    assert_eq!(
        (s, v),
        (
            404,
            json!({"error": "Object Not Found", "reason": "Not Found"})
        )
    );
}

#[tokio::test]
async fn list_parameters_page_sort_filter_columns() {
    let b = start_broker().await;
    let a = api(&b);
    for i in 0..30 {
        a.put(
            &format!("/api/queues/%2F/q{i:02}"),
            json!({"durable": false}),
        )
        .await;
    }
    for _ in 0..4 {
        a.post(
            "/api/exchanges/%2F/amq.default/publish",
            json!({"properties": {}, "routing_key": "q07", "payload": "x", "payload_encoding": "string"}),
        )
        .await;
    }
    let all = a.ok("/api/queues").await;
    assert_eq!(all.as_array().unwrap().len(), 30);
    assert_eq!(all[0]["name"], "q00");
    let page = a.ok("/api/queues/%2F?page=2&page_size=10").await;
    assert_eq!(page["page"], 2);
    assert_eq!(page["page_count"], 3);
    assert_eq!(page["total_count"], 30);
    assert_eq!(page["filtered_count"], 30);
    assert_eq!(page["item_count"], 10);
    assert_eq!(page["items"][0]["name"], "q10");
    let f = a.ok("/api/queues?page=1&name=q2").await;
    assert_eq!(f["filtered_count"], 10);
    // Regex and substring filters are case-insensitive and apply with `page` only, as in
    // RabbitMQ.
    let r = a
        .ok("/api/queues?page=1&name=%5EQ0%5B12%5D%24&use_regex=true")
        .await;
    assert_eq!(r["filtered_count"], 2);
    let unpaged = a.ok("/api/queues?name=q2").await;
    assert_eq!(unpaged.as_array().unwrap().len(), 30);
    let s = a
        .ok("/api/queues?sort=messages_ready&sort_reverse=true&columns=name,messages_ready")
        .await;
    assert_eq!(s[0], json!({"name": "q07", "messages_ready": 4}));
    let rev = a.ok("/api/queues?sort=name&sort_reverse=true").await;
    assert_eq!(rev[0]["name"], "q29");
    let (code, body) = a.get("/api/queues?page=9&page_size=10").await;
    assert_eq!(code, 400);
    assert_eq!(body["error"], "page_out_of_range");
    assert_eq!(
        body["reason"],
        "Page out of range, page: 9 page size: 10, len: 30"
    );
    // The page just past the end is empty, not an error.
    assert_eq!(
        a.ok("/api/queues?page=4&page_size=10").await["item_count"],
        0
    );
    let (code, body) = a.get("/api/queues?page=1&page_size=600").await;
    assert_eq!(
        (code, body["error"].as_str()),
        (400, Some("invalid_pagination_parameters"))
    );
    assert_eq!(a.get("/api/queues?page=x").await.0, 400);
    let (code, body) = a.get("/api/queues?page=1&name=(&use_regex=true").await;
    assert_eq!(
        (code, body["reason"].as_str()),
        (400, Some("Pagination parameters are invalid"))
    );
    let ex = a.ok("/api/exchanges/%2F?columns=name").await;
    assert!(ex
        .as_array()
        .unwrap()
        .contains(&json!({"name": "amq.topic"})));
}

#[tokio::test]
async fn exchanges_bindings_and_publish() {
    let b = start_broker().await;
    let a = api(&b);
    assert_eq!(
        a.put(
            "/api/exchanges/%2F/logs",
            json!({"type": "topic", "durable": true})
        )
        .await
        .0,
        201
    );
    assert_eq!(
        a.put(
            "/api/exchanges/%2F/logs",
            json!({"type": "topic", "durable": true})
        )
        .await
        .0,
        204
    );
    assert_eq!(
        a.put("/api/exchanges/%2F/logs", json!({"type": "fanout"}))
            .await
            .0,
        400
    );
    assert_eq!(
        a.put("/api/exchanges/%2F/x", json!({"type": "nonsense"}))
            .await
            .0,
        400
    );
    assert_eq!(a.put("/api/exchanges/%2F/x", json!({})).await.0, 400);
    assert_eq!(
        a.put("/api/exchanges/%2F/amq.mine", json!({"type": "direct"}))
            .await
            .0,
        403
    );
    let e = a.ok("/api/exchanges/%2F/logs").await;
    assert_eq!(e["type"], "topic");
    assert_eq!(e["durable"], true);
    assert_eq!(e["internal"], false);
    let d = a.ok("/api/exchanges/%2F/amq.default").await;
    assert_eq!(d["name"], "");
    assert_eq!(a.get("/api/exchanges/%2F/missing").await.0, 404);

    a.put("/api/queues/%2F/errors", json!({})).await;
    let (s, _) = a
        .post(
            "/api/bindings/%2F/e/logs/q/errors",
            json!({"routing_key": "*.error", "arguments": {}}),
        )
        .await;
    assert_eq!(s, 201);
    let r = a
        .req(reqwest::Method::POST, "/api/bindings/%2F/e/logs/q/errors")
        .json(&json!({"routing_key": "x.fatal", "arguments": {"k": 1}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let location = r.headers()["location"].to_str().unwrap().to_string();
    assert!(
        location.starts_with("/api/bindings/%2F/e/logs/q/errors/x.fatal~"),
        "{location}"
    );
    assert_eq!(a.ok(&location).await["arguments"], json!({"k": 1}));
    let between = a.ok("/api/bindings/%2F/e/logs/q/errors").await;
    assert_eq!(between.as_array().unwrap().len(), 2);
    let one = a.ok("/api/bindings/%2F/e/logs/q/errors/*.error").await;
    assert_eq!(one["properties_key"], "*.error");
    assert_eq!(one["destination_type"], "queue");
    assert_eq!(a.get("/api/bindings/%2F/e/logs/q/missing").await.0, 404);
    assert_eq!(
        a.post(
            "/api/bindings/%2F/e/amq.default/q/errors",
            json!({"routing_key": "x"})
        )
        .await
        .0,
        403
    );

    // Exchange-to-exchange.
    a.put("/api/exchanges/%2F/all", json!({"type": "fanout"}))
        .await;
    assert_eq!(
        a.post("/api/bindings/%2F/e/all/e/logs", json!({"routing_key": ""}))
            .await
            .0,
        201
    );
    assert_eq!(
        a.ok("/api/exchanges/%2F/logs/bindings/destination")
            .await
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        a.ok("/api/exchanges/%2F/logs/bindings/source")
            .await
            .as_array()
            .unwrap()
            .len(),
        2
    );
    let everywhere = a.ok("/api/bindings").await;
    assert!(everywhere
        .as_array()
        .unwrap()
        .iter()
        .any(|b| b["source"] == "logs"));
    assert!(a
        .ok("/api/exchanges")
        .await
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["name"] == "logs"));
    let all = a.ok("/api/bindings/%2F").await;
    assert!(all
        .as_array()
        .unwrap()
        .iter()
        .any(|b| b["source"] == "" && b["destination"] == "errors"));

    // Publish: through the e2e binding to the queue; unroutable says so; base64 payloads.
    let pub_ = |rk: &str, payload: &str, enc: &str| json!({"properties": {"content_type": "text/plain"}, "routing_key": rk, "payload": payload, "payload_encoding": enc});
    assert_eq!(
        a.post(
            "/api/exchanges/%2F/all/publish",
            pub_("app.error", "boom", "string")
        )
        .await
        .1["routed"],
        true
    );
    assert_eq!(
        a.post(
            "/api/exchanges/%2F/logs/publish",
            pub_("app.info", "meh", "string")
        )
        .await
        .1["routed"],
        false
    );
    assert_eq!(
        a.post(
            "/api/exchanges/%2F/logs/publish",
            pub_("db.error", "aGk=", "base64")
        )
        .await
        .1["routed"],
        true
    );
    assert_eq!(
        a.post(
            "/api/exchanges/%2F/logs/publish",
            pub_("db.error", "!!", "base64")
        )
        .await
        .0,
        400
    );
    assert_eq!(
        a.post(
            "/api/exchanges/%2F/logs/publish",
            json!({"routing_key": "x"})
        )
        .await
        .0,
        400
    );
    assert_eq!(
        a.post(
            "/api/exchanges/%2F/logs/publish",
            json!({"routing_key": "x", "payload": "", "properties": {"bogus": 1}})
        )
        .await
        .0,
        400
    );
    assert_eq!(
        a.post(
            "/api/exchanges/%2F/missing/publish",
            pub_("x", "", "string")
        )
        .await
        .0,
        404
    );
    assert_eq!(
        a.post(
            "/api/exchanges/%2F/amq.rabbitmq.trace/publish",
            pub_("x", "", "string")
        )
        .await
        .0,
        403
    );
    let (_, got) = a
        .post(
            "/api/queues/%2F/errors/get",
            json!({"count": 5, "ackmode": "ack_requeue_false", "encoding": "auto"}),
        )
        .await;
    let payloads: Vec<&str> = got
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["payload"].as_str().unwrap())
        .collect();
    assert_eq!(payloads, ["boom", "hi"]);
    assert_eq!(got[0]["properties"]["content_type"], "text/plain");

    // Delete a binding by its properties key, then the exchange.
    assert_eq!(
        a.delete("/api/bindings/%2F/e/logs/q/errors/*.error")
            .await
            .0,
        204
    );
    assert_eq!(a.delete(&location).await.0, 204);
    assert_eq!(
        a.get("/api/bindings/%2F/e/logs/q/errors/*.error").await.0,
        404
    );
    assert_eq!(a.delete("/api/bindings/%2F/e/all/e/logs/~").await.0, 204);
    assert_eq!(a.delete("/api/exchanges/%2F/amq.direct").await.0, 403);
    assert_eq!(a.delete("/api/exchanges/%2F/logs").await.0, 204);
    assert_eq!(a.delete("/api/exchanges/%2F/logs").await.0, 404);
}

#[tokio::test]
async fn connections_channels_consumers_and_closing_one() {
    let b = start_broker().await;
    let a = api(&b);
    let c = connect(&b).await;
    let ch = channel(&c).await;
    declare(&ch, "work").await;
    let _consumer = ch
        .basic_consume(
            "work".into(),
            "worker-1".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let conns = a.ok("/api/connections").await;
    assert_eq!(conns.as_array().unwrap().len(), 1);
    let conn = &conns[0];
    assert_eq!(conn["user"], "guest");
    assert_eq!(conn["vhost"], "/");
    assert_eq!(conn["protocol"], "AMQP 0-9-1");
    assert_eq!(conn["channels"], 1);
    assert_eq!(conn["auth_mechanism"], "PLAIN");
    assert!(conn["client_properties"]["product"].is_string());
    let name = conn["name"].as_str().unwrap().to_string();
    let enc = name.replace(' ', "%20").replace('>', "%3E");
    assert_eq!(
        a.ok(&format!("/api/connections/{enc}")).await["name"],
        name.as_str()
    );
    assert_eq!(
        a.ok("/api/vhosts/%2F/connections")
            .await
            .as_array()
            .unwrap()
            .len(),
        1
    );

    let chans = a.ok("/api/channels").await;
    assert_eq!(chans[0]["number"], 1);
    assert_eq!(chans[0]["consumer_count"], 1);
    assert_eq!(chans[0]["connection_details"]["name"], name.as_str());
    assert_eq!(
        a.ok(&format!("/api/connections/{enc}/channels"))
            .await
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        a.ok("/api/vhosts/%2F/channels")
            .await
            .as_array()
            .unwrap()
            .len(),
        1
    );
    let chan_name = chans[0]["name"]
        .as_str()
        .unwrap()
        .replace(' ', "%20")
        .replace('>', "%3E")
        .replace('(', "%28")
        .replace(')', "%29");
    assert_eq!(
        a.ok(&format!("/api/channels/{chan_name}")).await["number"],
        1
    );

    let consumers = a.ok("/api/consumers").await;
    assert_eq!(consumers[0]["consumer_tag"], "worker-1");
    assert_eq!(consumers[0]["queue"], json!({"name": "work", "vhost": "/"}));
    assert_eq!(consumers[0]["ack_required"], true);
    assert_eq!(
        a.ok("/api/consumers/%2F").await.as_array().unwrap().len(),
        1
    );
    assert_eq!(a.ok("/api/queues/%2F/work").await["consumers"], 1);
    assert_eq!(a.ok("/api/overview").await["object_totals"]["consumers"], 1);

    // Confirm and tx mode show on the channels.
    let confirming = channel(&c).await;
    confirming
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let transacting = channel(&c).await;
    transacting.tx_select().await.unwrap();
    let chans = a.ok("/api/channels").await;
    let modes: Vec<(i64, bool, bool)> = chans
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["number"].as_i64().unwrap(),
                c["confirm"].as_bool().unwrap(),
                c["transactional"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        modes,
        vec![(1, false, false), (2, true, false), (3, false, true)]
    );

    // What a channel holds back: a transaction's publishes and acks, the consumer prefetch.
    confirming
        .basic_qos(7, BasicQosOptions::default())
        .await
        .unwrap();
    transacting
        .queue_declare(
            "held".into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    confirming
        .basic_publish(
            "".into(),
            "held".into(),
            BasicPublishOptions::default(),
            b"m",
            Default::default(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    let got = transacting
        .basic_get("held".into(), BasicGetOptions::default())
        .await
        .unwrap()
        .expect("a message");
    transacting
        .basic_ack(got.delivery.delivery_tag, BasicAckOptions::default())
        .await
        .unwrap();
    for body in [b"a", b"b"] {
        transacting
            .basic_publish(
                "".into(),
                "held".into(),
                BasicPublishOptions::default(),
                body,
                Default::default(),
            )
            .await
            .unwrap();
    }
    let held = |chans: &Value, n: i64| -> Vec<Value> {
        let c = chans
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["number"] == n)
            .unwrap()
            .clone();
        [
            "prefetch_count",
            "messages_unconfirmed",
            "messages_uncommitted",
            "acks_uncommitted",
        ]
        .iter()
        .map(|k| c[*k].clone())
        .collect()
    };
    // The publishes are read by the broker after basic.get-ok, ack and publish were sent:
    // poll until the transaction shows them, bounded.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let chans = a.ok("/api/channels").await;
        if held(&chans, 3) == vec![json!(0), json!(0), json!(2), json!(1)] {
            assert_eq!(
                held(&chans, 2),
                vec![json!(7), json!(0), json!(0), json!(0)]
            );
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "transaction not shown: {:?}",
            held(&chans, 3)
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    transacting.tx_commit().await.unwrap();
    assert_eq!(
        held(&a.ok("/api/channels").await, 3),
        vec![json!(0), json!(0), json!(0), json!(0)]
    );
    assert_eq!(a.ok("/api/queues/%2F/held").await["messages"], 2);

    // DELETE closes it with 320.
    let r = a
        .req(reqwest::Method::DELETE, &format!("/api/connections/{enc}"))
        .header("X-Reason", "maintenance")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while c.status().connected() {
        assert!(
            std::time::Instant::now() < deadline,
            "connection not closed"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // The broker forgets it once its connection task has finished.
    while a.get(&format!("/api/connections/{enc}")).await.0 != 404 {
        assert!(
            std::time::Instant::now() < deadline,
            "connection still listed"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(a.delete("/api/connections/nope").await.0, 404);
}

#[tokio::test]
async fn bad_input_gets_the_right_status_and_the_broker_is_unaffected() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = test_config(dir.path());
    cfg.http_max_body = 64 * 1024;
    let b = start_broker_with(cfg, dir).await;
    let a = api(&b);
    // Malformed JSON.
    let r = a
        .req(reqwest::Method::PUT, "/api/queues/%2F/q")
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"], "bad_request");
    // A body over the limit.
    let big = "x".repeat(100 * 1024);
    let r = a
        .req(
            reqwest::Method::POST,
            "/api/exchanges/%2F/amq.default/publish",
        )
        .header("content-type", "application/json")
        .body(format!(
            "{{\"payload\":\"{big}\",\"routing_key\":\"q\",\"properties\":{{}}}}"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    // Wrong types.
    assert_eq!(
        a.put("/api/queues/%2F/q", json!({"durable": "maybe"}))
            .await
            .0,
        400
    );
    assert_eq!(
        a.put("/api/queues/%2F/q", json!({"arguments": [1]}))
            .await
            .0,
        400
    );
    // Unknown paths and methods.
    let (s, v) = a.get("/api/nothing-here").await;
    assert_eq!((s, v["error"].as_str()), (404, Some("Object Not Found")));
    assert_eq!(a.post("/api/overview", json!({})).await.0, 405);
    // Names with '/' are path-encoded.
    assert_eq!(a.put("/api/vhosts/team%2Fa", json!({})).await.0, 201);
    a.put(
        "/api/permissions/team%2Fa/guest",
        json!({"configure": ".*", "write": ".*", "read": ".*"}),
    )
    .await;
    assert_eq!(
        a.put("/api/queues/team%2Fa/jobs%2Fgpu", json!({})).await.0,
        201
    );
    let q = a.ok("/api/queues/team%2Fa/jobs%2Fgpu").await;
    assert_eq!(
        (q["vhost"].as_str(), q["name"].as_str()),
        (Some("team/a"), Some("jobs/gpu"))
    );
    // The broker still serves AMQP.
    let c = connect(&b).await;
    let ch = channel(&c).await;
    declare(&ch, "still-fine").await;
}

#[tokio::test]
async fn message_rates_come_from_sampled_counters() {
    let b = start_broker().await;
    let a = api(&b);
    let c = connect(&b).await;
    let ch = channel(&c).await;
    declare(&ch, "r").await;
    for _ in 0..10 {
        publish(&ch, "", "r", b"m").await;
    }
    for _ in 0..4 {
        let got = ch
            .basic_get("r".into(), BasicGetOptions::default())
            .await
            .unwrap()
            .expect("msg");
        got.ack(BasicAckOptions::default()).await.unwrap();
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let q = a.ok("/api/queues/%2F/r").await;
        if q["message_stats"]["ack"] == 4 {
            assert_eq!(q["message_stats"]["publish"], 10);
            assert_eq!(q["message_stats"]["get"], 4);
            assert_eq!(q["messages_ready"], 6);
            assert_eq!(q["messages_unacknowledged"], 0);
            break;
        }
        assert!(std::time::Instant::now() < deadline, "counters: {q}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let o = a.ok("/api/overview").await;
    assert_eq!(o["message_stats"]["publish"], 10);
    assert_eq!(o["message_stats"]["ack"], 4);
    assert_eq!(o["queue_totals"]["messages_ready"], 6);
    // Rates: the difference between two samples over the time between them.
    let h = b.handle.as_ref().unwrap();
    h.http.rates.sample(&h.broker);
    for _ in 0..20 {
        publish(&ch, "", "r", b"m").await;
    }
    ch.basic_qos(0, BasicQosOptions::default()).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    h.http.rates.sample(&h.broker);
    let q = a.ok("/api/queues/%2F/r").await;
    let rate = q["message_stats"]["publish_details"]["rate"]
        .as_f64()
        .unwrap();
    assert!(rate > 10.0, "publish rate {rate}");
    // 20 more ready messages between the samples: depth rates are positive.
    for field in ["messages_ready_details", "messages_details"] {
        let r = q[field]["rate"].as_f64().unwrap();
        assert!(r > 10.0, "{field} {r}");
    }
    assert_eq!(q["messages_unacknowledged_details"]["rate"], 0.0);
    let o = a.ok("/api/overview").await;
    let r = o["queue_totals"]["messages_ready_details"]["rate"]
        .as_f64()
        .unwrap();
    assert!(r > 10.0, "overall ready rate {r}");
    assert!(
        o["message_stats"]["publish_details"]["rate"]
            .as_f64()
            .unwrap()
            > 10.0
    );
    // Bytes and syscalls per connection, and the received-bytes rate between the samples.
    let conns = a.ok("/api/connections").await;
    let conn = &conns[0];
    for field in ["recv_oct", "recv_cnt", "send_oct", "send_cnt"] {
        assert!(conn[field].as_u64().unwrap() > 0, "{field}: {conn}");
    }
    assert!(conn["recv_oct"].as_u64().unwrap() > 30 * 8, "{conn}");
    assert!(
        conn["recv_oct_details"]["rate"].as_f64().unwrap() > 0.0,
        "{conn}"
    );
    assert!(conn["send_oct_details"]["rate"].is_number());
}

/// A wrong password over HTTP is answered after `auth_failure_delay`, as on AMQP.
#[tokio::test]
async fn failed_login_is_delayed() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = test_config(dir.path());
    cfg.auth_failure_delay = 300;
    let b = start_broker_with(cfg, dir).await;
    let started = std::time::Instant::now();
    let (s, _) = api_as(&b, "guest", "nope").get("/api/overview").await;
    assert_eq!(s, 401);
    assert!(started.elapsed() >= std::time::Duration::from_millis(300));
    assert_eq!(api(&b).get("/api/overview").await.0, 200);
}
