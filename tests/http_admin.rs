//! Management HTTP API, administration: vhosts, users (passwords and RabbitMQ hashes),
//! permissions and policies, with their errors.

mod common;
use common::http::{api, api_as};
use common::*;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable};
use serde_json::json;

#[tokio::test]
async fn vhosts_create_list_delete() {
    let b = start_broker().await;
    let a = api(&b);
    let (s, _) = a
        .put(
            "/api/vhosts/tenant-a",
            json!({"description": "team A", "tags": "gpu,prod"}),
        )
        .await;
    assert_eq!(s, 201);
    assert_eq!(
        a.put("/api/vhosts/tenant-a", json!({"description": "Team A"}))
            .await
            .0,
        204
    );
    let v = a.ok("/api/vhosts/tenant-a").await;
    assert_eq!(v["name"], "tenant-a");
    assert_eq!(v["description"], "Team A");
    assert_eq!(v["messages"], 0);
    let names: Vec<String> = a
        .ok("/api/vhosts")
        .await
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["/", "tenant-a"]);
    assert_eq!(
        a.ok("/api/vhosts/%2F/permissions").await[0]["user"],
        "guest"
    );
    // As RabbitMQ's API: the creator gets full permissions on the new vhost and can use it.
    assert_eq!(
        a.ok("/api/vhosts/tenant-a/permissions").await,
        json!([{"vhost": "tenant-a", "user": "guest", "configure": ".*", "write": ".*", "read": ".*"}])
    );
    assert_eq!(a.put("/api/queues/tenant-a/jobs", json!({})).await.0, 201);
    assert_eq!(
        a.put("/api/exchanges/tenant-a/jobs-x", json!({"type": "direct"}))
            .await
            .0,
        201
    );
    assert_eq!(a.delete("/api/vhosts/tenant-a").await.0, 204);
    assert_eq!(a.delete("/api/vhosts/tenant-a").await.0, 404);
    assert_eq!(a.get("/api/vhosts/tenant-a").await.0, 404);
    assert_eq!(a.get("/api/vhosts/tenant-a/permissions").await.0, 404);
}

#[tokio::test]
async fn users_with_passwords_or_rabbitmq_hashes() {
    let b = start_broker().await;
    let a = api(&b);
    assert_eq!(
        a.put(
            "/api/users/alice",
            json!({"password": "s3cret", "tags": "monitoring"})
        )
        .await
        .0,
        201
    );
    let u = a.ok("/api/users/alice").await;
    assert_eq!(u["tags"], json!(["monitoring"]));
    assert_eq!(u["hashing_algorithm"], "rabbit_password_hashing_sha256");
    assert_eq!(
        api_as(&b, "alice", "s3cret").ok("/api/whoami").await["name"],
        "alice"
    );
    // Updating tags alone keeps the password.
    assert_eq!(
        a.put("/api/users/alice", json!({"tags": ["management"]}))
            .await
            .0,
        204
    );
    assert_eq!(
        api_as(&b, "alice", "s3cret").ok("/api/whoami").await["tags"],
        json!(["management"])
    );

    // A hash copied from another broker logs in with the same password.
    let hash = u["password_hash"].as_str().unwrap();
    a.put(
        "/api/users/bob",
        json!({"password_hash": hash, "hashing_algorithm": "rabbit_password_hashing_sha256", "tags": ["administrator"]}),
    )
    .await;
    assert_eq!(api_as(&b, "bob", "s3cret").get("/api/users").await.0, 200);

    assert_eq!(a.put("/api/users/carol", json!({"tags": ""})).await.0, 400);
    assert_eq!(
        a.put(
            "/api/users/carol",
            json!({"password_hash": "xx", "tags": ""})
        )
        .await
        .0,
        400
    );
    assert_eq!(
        a.put(
            "/api/users/carol",
            json!({"password_hash": hash, "hashing_algorithm": "rabbit_password_hashing_md5"})
        )
        .await
        .0,
        400
    );
    let users = a.ok("/api/users").await;
    assert_eq!(users.as_array().unwrap().len(), 3);
    assert_eq!(
        a.ok("/api/users/without-permissions")
            .await
            .as_array()
            .unwrap()
            .len(),
        2
    );
    assert_eq!(a.ok("/api/users/guest/permissions").await[0]["vhost"], "/");
    assert_eq!(
        a.post("/api/users/bulk-delete", json!({"users": ["alice", "bob"]}))
            .await
            .0,
        204
    );
    assert_eq!(a.get("/api/users/alice").await.0, 404);
    assert_eq!(a.delete("/api/users/alice").await.0, 404);
    assert_eq!(
        api_as(&b, "alice", "s3cret").get("/api/whoami").await.0,
        401
    );
}

#[tokio::test]
async fn permissions_set_get_clear_and_enforced_over_amqp() {
    let b = start_broker().await;
    let a = api(&b);
    a.put("/api/users/worker", json!({"password": "pw", "tags": ""}))
        .await;
    let perm = json!({"configure": "^worker\\.", "write": ".*", "read": ".*"});
    assert_eq!(
        a.put("/api/permissions/%2F/worker", perm.clone()).await.0,
        201
    );
    assert_eq!(a.put("/api/permissions/%2F/worker", perm).await.0, 204);
    let p = a.ok("/api/permissions/%2F/worker").await;
    assert_eq!(
        p,
        json!({"user": "worker", "vhost": "/", "configure": "^worker\\.", "write": ".*", "read": ".*"})
    );
    assert_eq!(a.ok("/api/permissions").await.as_array().unwrap().len(), 2);
    assert_eq!(
        a.put(
            "/api/permissions/%2F/worker",
            json!({"configure": "(", "write": "", "read": ""})
        )
        .await
        .0,
        400
    );
    assert_eq!(
        a.put("/api/permissions/%2F/worker", json!({"configure": ".*"}))
            .await
            .0,
        400
    );
    assert_eq!(
        a.put(
            "/api/permissions/nowhere/worker",
            json!({"configure": "", "write": "", "read": ""})
        )
        .await
        .0,
        404
    );
    assert_eq!(
        a.put(
            "/api/permissions/%2F/nobody",
            json!({"configure": "", "write": "", "read": ""})
        )
        .await
        .0,
        404
    );

    let uri = format!("amqp://worker:pw@{}/%2f", b.addr());
    let c = lapin::Connection::connect(&uri, lapin::ConnectionProperties::default())
        .await
        .unwrap();
    let ch = c.create_channel().await.unwrap();
    ch.queue_declare(
        "worker.jobs".into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("configure allowed");
    let e = ch
        .queue_declare(
            "other".into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(reply_code(&e), Some(403));

    // Deleting the user closes its connections.
    a.put("/api/users/temp", json!({"password": "pw", "tags": ""}))
        .await;
    a.put(
        "/api/permissions/%2F/temp",
        json!({"configure": "", "write": "", "read": ""}),
    )
    .await;
    let temp = lapin::Connection::connect(
        &format!("amqp://temp:pw@{}/%2f", b.addr()),
        lapin::ConnectionProperties::default(),
    )
    .await
    .unwrap();
    assert_eq!(a.delete("/api/users/temp").await.0, 204);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while temp.status().connected() {
        assert!(
            std::time::Instant::now() < deadline,
            "connection of a deleted user stays open"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(a.get("/api/permissions/%2F/temp").await.0 == 404);

    assert_eq!(a.delete("/api/permissions/%2F/worker").await.0, 204);
    assert_eq!(a.delete("/api/permissions/%2F/worker").await.0, 404);
    let e = lapin::Connection::connect(&uri, lapin::ConnectionProperties::default())
        .await
        .unwrap_err();
    assert_eq!(reply_code(&e), Some(530));
}

#[tokio::test]
async fn policies_apply_to_matching_queues_and_arguments_win() {
    let b = start_broker().await;
    let a = api(&b);
    let c = connect(&b).await;
    let ch = channel(&c).await;
    declare(&ch, "capped.a").await;
    let mut args = FieldTable::default();
    args.insert("x-max-length".into(), AMQPValue::LongInt(1));
    ch.queue_declare("capped.b".into(), QueueDeclareOptions::default(), args)
        .await
        .unwrap();

    let (s, _) = a
        .put(
            "/api/policies/%2F/cap",
            json!({"pattern": "^capped\\.", "definition": {"max-length": 2, "overflow": "reject-publish"},
                   "priority": 1, "apply-to": "queues"}),
        )
        .await;
    assert_eq!(s, 201);
    let p = a.ok("/api/policies/%2F/cap").await;
    assert_eq!(p["apply-to"], "queues");
    assert_eq!(p["definition"]["max-length"], 2);
    assert_eq!(a.ok("/api/policies").await.as_array().unwrap().len(), 1);
    assert_eq!(a.ok("/api/policies/%2F").await.as_array().unwrap().len(), 1);

    // An existing queue picks the policy up; the smaller limit (its argument) wins for b.
    declare(&ch, "free").await;
    for q in ["capped.a", "capped.b", "free"] {
        for i in 0..5 {
            publish(&ch, "", q, format!("{i}").as_bytes()).await;
        }
    }
    let depth = |q: &'static str| {
        let a = &a;
        async move {
            a.ok(&format!("/api/queues/%2F/{q}")).await["messages_ready"]
                .as_u64()
                .unwrap()
        }
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while depth("free").await < 5 {
        assert!(std::time::Instant::now() < deadline);
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(depth("capped.a").await, 2);
    assert_eq!(depth("capped.b").await, 1);
    // Lowering the limit sheds what is over it at once (drop-head).
    a.put(
        "/api/policies/%2F/cap2",
        json!({"pattern": "^capped\\.a$", "definition": {"max-length": 1}, "priority": 5}),
    )
    .await;
    assert_eq!(depth("capped.a").await, 1);
    assert_eq!(a.delete("/api/policies/%2F/cap2").await.0, 204);
    let q = a.ok("/api/queues/%2F/capped.a").await;
    assert_eq!(q["policy"], "cap");
    assert_eq!(q["effective_policy_definition"]["max-length"], 2);
    assert!(a.ok("/api/queues/%2F/free").await["policy"].is_null());

    // Bad policies.
    assert_eq!(
        a.put(
            "/api/policies/%2F/bad",
            json!({"pattern": "(", "definition": {"expires": 1}})
        )
        .await
        .0,
        400
    );
    assert_eq!(
        a.put(
            "/api/policies/%2F/bad",
            json!({"pattern": ".*", "definition": {"max-length": "x"}})
        )
        .await
        .0,
        400
    );
    assert_eq!(
        a.put(
            "/api/policies/%2F/bad",
            json!({"pattern": ".*", "definition": {"expires": 1}, "apply-to": "nope"})
        )
        .await
        .0,
        400
    );
    assert_eq!(
        a.put("/api/policies/%2F/bad", json!({"pattern": ".*"}))
            .await
            .0,
        400
    );
    assert_eq!(
        a.put(
            "/api/policies/nowhere/p",
            json!({"pattern": ".*", "definition": {"expires": 1}})
        )
        .await
        .0,
        404
    );

    // Removing the policy lifts the limit from capped.a.
    assert_eq!(a.delete("/api/policies/%2F/cap").await.0, 204);
    assert_eq!(a.delete("/api/policies/%2F/cap").await.0, 404);
    assert_eq!(a.get("/api/policies/%2F/cap").await.0, 404);
    for i in 0..3 {
        publish(&ch, "", "capped.a", format!("{i}").as_bytes()).await;
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while depth("capped.a").await < 4 {
        assert!(std::time::Instant::now() < deadline, "policy still applied");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_policy_sets_dead_lettering_ttl_and_alternate_exchange() {
    let b = start_broker().await;
    let a = api(&b);
    let c = connect(&b).await;
    let ch = channel(&c).await;
    a.put("/api/exchanges/%2F/dlx", json!({"type": "fanout"}))
        .await;
    a.put("/api/queues/%2F/dead", json!({})).await;
    a.post("/api/bindings/%2F/e/dlx/q/dead", json!({"routing_key": ""}))
        .await;
    a.put(
        "/api/policies/%2F/ttl",
        json!({"pattern": "^short$", "definition": {"message-ttl": 50, "dead-letter-exchange": "dlx"}, "apply-to": "queues"}),
    )
    .await;
    declare(&ch, "short").await;
    publish(&ch, "", "short", b"expiring").await;
    // The alternate exchange of a policy catches what an exchange cannot route.
    a.put("/api/exchanges/%2F/front", json!({"type": "direct"}))
        .await;
    a.put("/api/queues/%2F/unrouted", json!({})).await;
    a.put("/api/exchanges/%2F/ae", json!({"type": "fanout"}))
        .await;
    a.post(
        "/api/bindings/%2F/e/ae/q/unrouted",
        json!({"routing_key": ""}),
    )
    .await;
    a.put(
        "/api/policies/%2F/ae",
        json!({"pattern": "^front$", "definition": {"alternate-exchange": "ae"}, "apply-to": "exchanges"}),
    )
    .await;
    assert_eq!(a.ok("/api/exchanges/%2F/front").await["policy"], "ae");
    publish(&ch, "front", "nobody", b"lost?").await;

    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let dead = a.ok("/api/queues/%2F/dead").await["messages_ready"]
            .as_u64()
            .unwrap();
        let unrouted = a.ok("/api/queues/%2F/unrouted").await["messages_ready"]
            .as_u64()
            .unwrap();
        if dead == 1 && unrouted == 1 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "dead {dead}, unrouted {unrouted}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}
