//! Definitions: importing a RabbitMQ 3.12 export (tests/fixtures) recreates users (with
//! their passwords), vhosts, permissions, policies, exchanges, queues and bindings, and
//! they work over AMQP and survive a restart; export → import round-trips; per-vhost
//! export and import; bad imports are refused.

mod common;
use common::http::{api, api_as};
use common::*;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Connection, ConnectionProperties};
use serde_json::{json, Value};

const FIXTURE: &str = include_str!("fixtures/rabbitmq-3.12-definitions.json");

async fn amqp(
    b: &TestBroker,
    user: &str,
    pass: &str,
    vhost: &str,
) -> Result<Connection, lapin::Error> {
    let uri = format!("amqp://{user}:{pass}@{}/{vhost}", b.addr());
    within(
        "connect",
        Connection::connect(&uri, ConnectionProperties::default()),
    )
    .await
}

fn names(v: &Value) -> Vec<String> {
    let mut n: Vec<String> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["name"].as_str().unwrap().to_string())
        .collect();
    n.sort();
    n
}

async fn depth(a: &common::http::Api, q: &str) -> u64 {
    a.ok(&format!("/api/queues/inference/{q}")).await["messages_ready"]
        .as_u64()
        .unwrap()
}

#[tokio::test]
async fn a_rabbitmq_export_imports_and_works() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = test_config(dir.path());
    let mut b = start_broker_with(cfg.clone(), tempfile::tempdir().unwrap()).await;
    let defs: Value = serde_json::from_str(FIXTURE).unwrap();
    let (s, v) = api(&b).post("/api/definitions", defs).await;
    assert_eq!(s, 204, "{v}");

    // Passwords came across as hashes: the admin logs in to the API with the old password.
    let admin = api_as(&b, "admin", "admin-pw");
    assert_eq!(
        admin.ok("/api/whoami").await["tags"],
        json!(["administrator"])
    );
    assert_eq!(
        names(&admin.ok("/api/users").await),
        ["admin", "gpu-worker", "grafana", "guest", "inference-api"]
    );
    let vh = admin.ok("/api/vhosts/inference").await;
    assert_eq!(vh["description"], "Model serving");
    assert_eq!(vh["tags"], json!(["production"]));
    assert_eq!(
        names(&admin.ok("/api/queues/inference").await),
        [
            "dead-letters",
            "results.llm",
            "tasks.llm",
            "tasks.vision",
            "unrouted"
        ]
    );
    assert_eq!(admin.ok("/api/queues/%2F/audit").await["durable"], true);
    let llm = admin.ok("/api/queues/inference/tasks.llm").await;
    assert_eq!(llm["policy"], "task-limits");
    assert_eq!(llm["arguments"]["x-max-priority"], 10);
    assert_eq!(
        admin.ok("/api/exchanges/inference/tasks").await["policy"],
        "tasks-ae"
    );
    assert_eq!(
        admin.ok("/api/exchanges/inference/by-model").await["internal"],
        true
    );
    assert_eq!(
        admin
            .ok("/api/policies/inference")
            .await
            .as_array()
            .unwrap()
            .len(),
        3
    );
    let grafana = api_as(&b, "grafana", "metrics");
    assert_eq!(grafana.get("/api/nodes").await.0, 200);
    assert_eq!(grafana.get("/api/users").await.0, 403);

    // Over AMQP: the API user publishes (write on tasks only), the worker (sha512 hash)
    // reads tasks.* and may not declare anything.
    let api_conn = amqp(&b, "inference-api", "api-secret", "inference")
        .await
        .unwrap();
    let pubch = channel(&api_conn).await;
    let send = |rk: &'static str, headers: Option<FieldTable>| {
        let ch = pubch.clone();
        async move {
            let mut p = BasicProperties::default();
            if let Some(h) = headers {
                p = p.with_headers(h);
            }
            ch.basic_publish(
                "tasks".into(),
                rk.into(),
                BasicPublishOptions::default(),
                b"job",
                p,
            )
            .await
            .unwrap();
        }
    };
    send("llm.chat", None).await;
    let mut h = FieldTable::default();
    h.insert("model".into(), AMQPValue::LongString("yolo".into()));
    send("vision.detect", Some(h)).await;
    send("audio.transcribe", None).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while depth(&admin, "unrouted").await < 1 {
        assert!(
            std::time::Instant::now() < deadline,
            "alternate exchange from policy"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(depth(&admin, "tasks.llm").await, 1);
    // tasks.vision is a quorum queue: its message is counted once its group applied it.
    while depth(&admin, "tasks.vision").await < 1 {
        assert!(
            std::time::Instant::now() < deadline,
            "e2e + headers binding into the quorum queue"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(depth(&admin, "tasks.vision").await, 1);
    let e = pubch
        .queue_declare(
            "mine".into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(reply_code(&e), Some(403));

    let worker = amqp(&b, "gpu-worker", "worker-secret", "inference")
        .await
        .unwrap();
    let wch = channel(&worker).await;
    let got = wch
        .basic_get("tasks.llm".into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap();
    assert!(got.is_some());
    assert_eq!(
        reply_code(
            &amqp(&b, "gpu-worker", "wrong", "inference")
                .await
                .unwrap_err()
        ),
        Some(403)
    );
    assert_eq!(
        reply_code(
            &amqp(&b, "gpu-worker", "worker-secret", "%2f")
                .await
                .unwrap_err()
        ),
        Some(530)
    );
    drop((api_conn, worker));

    // Everything is durable.
    b.stop().await;
    let b = start_broker_with(cfg, tempfile::tempdir().unwrap()).await;
    let admin = api_as(&b, "admin", "admin-pw");
    assert_eq!(
        admin.ok("/api/queues/inference/tasks.llm").await["policy"],
        "task-limits"
    );
    assert_eq!(
        admin
            .ok("/api/bindings/inference/e/tasks/e/by-model")
            .await
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert!(amqp(&b, "gpu-worker", "worker-secret", "inference")
        .await
        .is_ok());
}

#[tokio::test]
async fn export_then_import_round_trips() {
    let b1 = start_broker().await;
    let a1 = api(&b1);
    a1.post("/api/definitions", serde_json::from_str(FIXTURE).unwrap())
        .await;
    let exported = a1.ok("/api/definitions").await;
    assert_eq!(exported["product_name"], "WarrenMQ");
    assert!(exported["rabbitmq_version"].is_string());
    assert_eq!(exported["users"].as_array().unwrap().len(), 5);
    assert_eq!(exported["bindings"].as_array().unwrap().len(), 7);
    assert!(
        exported["queues"]
            .as_array()
            .unwrap()
            .iter()
            .any(|q| q["name"] == "tasks.vision" && q["arguments"]["x-queue-type"] == "quorum"),
        "the quorum queue keeps its type: {exported}"
    );

    let b2 = start_broker().await;
    let a2 = api(&b2);
    assert_eq!(a2.post("/api/definitions", exported.clone()).await.0, 204);
    let again = api_as(&b2, "admin", "admin-pw")
        .ok("/api/definitions")
        .await;
    for key in [
        "users",
        "vhosts",
        "permissions",
        "policies",
        "queues",
        "exchanges",
        "bindings",
    ] {
        assert_eq!(
            again[key], exported[key],
            "{key} differs after a round trip"
        );
    }
}

#[tokio::test]
async fn per_vhost_export_and_import() {
    let b = start_broker().await;
    let a = api(&b);
    a.post("/api/definitions", serde_json::from_str(FIXTURE).unwrap())
        .await;
    let one = a.ok("/api/definitions/inference").await;
    assert!(one.get("users").is_none());
    assert!(one["queues"][0].get("vhost").is_none());
    assert_eq!(one["policies"].as_array().unwrap().len(), 3);
    assert_eq!(a.put("/api/vhosts/staging", json!({})).await.0, 201);
    assert_eq!(a.post("/api/definitions/staging", one).await.0, 204);
    a.put(
        "/api/permissions/staging/guest",
        json!({"configure": ".*", "write": ".*", "read": ".*"}),
    )
    .await;
    assert_eq!(
        names(&a.ok("/api/queues/staging").await),
        [
            "dead-letters",
            "results.llm",
            "tasks.llm",
            "tasks.vision",
            "unrouted"
        ]
    );
    assert_eq!(
        a.ok("/api/queues/staging/tasks.llm").await["policy"],
        "task-limits"
    );
    assert_eq!(a.get("/api/definitions/nowhere").await.0, 404);
    assert_eq!(a.post("/api/definitions/nowhere", json!({})).await.0, 404);
}

#[tokio::test]
async fn bad_imports_are_refused() {
    let b = start_broker().await;
    let a = api(&b);
    let (s, v) = a
        .post(
            "/api/definitions",
            json!({"queues": [{"name": "q", "vhost": "missing", "durable": true}]}),
        )
        .await;
    assert_eq!(s, 400);
    assert!(v["reason"].as_str().unwrap().contains("missing"), "{v}");
    assert_eq!(a.post("/api/definitions", json!([1, 2])).await.0, 400);
    assert_eq!(
        a.post(
            "/api/definitions",
            json!({"users": [{"name": "x", "password_hash": "bad", "tags": ""}]})
        )
        .await
        .0,
        400
    );
    assert_eq!(
        a.post("/api/definitions", json!({"permissions": [{"user": "guest", "vhost": "/", "configure": "(", "write": "", "read": ""}]})).await.0,
        400
    );
    a.put(
        "/api/users/mon",
        json!({"password": "pw", "tags": "monitoring"}),
    )
    .await;
    assert_eq!(api_as(&b, "mon", "pw").get("/api/definitions").await.0, 403);
    assert_eq!(
        api_as(&b, "mon", "pw")
            .post("/api/definitions", json!({}))
            .await
            .0,
        403
    );
}

/// Exports from RabbitMQ 3.5 and older hash passwords with MD5 and name no algorithm:
/// such users import, log in with their password and are refused with another.
#[tokio::test]
async fn md5_users_from_old_exports_log_in() {
    use base64::Engine;
    use md5::{Digest, Md5};
    let salt = [0x5a, 0x11, 0x7e, 0x03];
    let mut raw = salt.to_vec();
    raw.extend(
        Md5::new()
            .chain_update(salt)
            .chain_update(b"old-pw")
            .finalize(),
    );
    let hash = base64::engine::general_purpose::STANDARD.encode(raw);
    let b = start_broker().await;
    let a = api(&b);
    let defs = json!({
        "rabbit_version": "3.5.7",
        "users": [
            {"name": "legacy", "password_hash": hash, "tags": ""},
            {"name": "legacy-named", "password_hash": hash,
             "hashing_algorithm": "rabbit_password_hashing_md5", "tags": ""}
        ],
        "permissions": [
            {"user": "legacy", "vhost": "/", "configure": ".*", "write": ".*", "read": ".*"},
            {"user": "legacy-named", "vhost": "/", "configure": ".*", "write": ".*", "read": ".*"}
        ]
    });
    assert_eq!(a.post("/api/definitions", defs).await.0, 204);
    for user in ["legacy", "legacy-named"] {
        let c = amqp(&b, user, "old-pw", "%2f")
            .await
            .expect("right password");
        c.close(200, "bye".into()).await.unwrap();
        assert!(amqp(&b, user, "new-pw", "%2f").await.is_err());
    }
    let exported = a.ok("/api/definitions").await;
    let legacy = exported["users"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["name"] == "legacy")
        .unwrap()
        .clone();
    assert_eq!(legacy["hashing_algorithm"], "rabbit_password_hashing_md5");
    assert_eq!(legacy["password_hash"], hash.as_str());
}

#[tokio::test]
async fn vhost_default_queue_types_import_when_served_here() {
    let b = start_broker().await;
    let a = api(&b);
    let defs = json!({"vhosts": [
        {"name": "qq", "default_queue_type": "quorum"},
        {"name": "streams", "metadata": {"default_queue_type": "stream"}},
    ]});
    assert_eq!(a.post("/api/definitions", defs).await.0, 204);
    assert_eq!(a.ok("/api/vhosts/qq").await["default_queue_type"], "quorum");
    // Not served here: the node's default (classic) applies instead of refusing declares.
    assert_eq!(
        a.ok("/api/vhosts/streams").await["default_queue_type"],
        "classic"
    );
    let exported = a.ok("/api/definitions").await;
    let qq = exported["vhosts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "qq")
        .cloned()
        .unwrap();
    assert_eq!(qq["default_queue_type"], "quorum", "{qq}");
}
