//! `default_queue_type` (RabbitMQ 3.13): the node setting and the vhost metadata decide
//! the type of durable, non-exclusive, non-auto-delete queues declared without
//! `x-queue-type`; every other declaration stays classic.

mod common;
use common::http::api;
use common::*;
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties};
use serde_json::json;

fn opts(durable: bool, exclusive: bool, auto_delete: bool) -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable,
        exclusive,
        auto_delete,
        ..Default::default()
    }
}

async fn declare_plain(ch: &lapin::Channel, name: &str, o: QueueDeclareOptions) {
    within(
        "queue.declare",
        ch.queue_declare(name.into(), o, FieldTable::default()),
    )
    .await
    .unwrap_or_else(|e| panic!("declare {name}: {e}"));
}

async fn queue_type(b: &TestBroker, vhost: &str, name: &str) -> String {
    let q = api(b).ok(&format!("/api/queues/{vhost}/{name}")).await;
    q["type"].as_str().unwrap_or_default().to_string()
}

#[tokio::test]
async fn the_node_default_makes_durable_queues_quorum_and_leaves_the_rest_classic() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.default_queue_type = "quorum".into();
    let b = start_broker_with(config, dir).await;
    let conn = connect(&b).await;
    let ch = channel(&conn).await;
    declare_plain(&ch, "jobs", opts(true, false, false)).await;
    declare_plain(&ch, "mine", opts(true, true, false)).await;
    declare_plain(&ch, "brief", opts(true, false, true)).await;
    declare_plain(&ch, "transient", opts(false, false, false)).await;
    assert_eq!(queue_type(&b, "%2f", "jobs").await, "quorum");
    for name in ["mine", "brief", "transient"] {
        assert_eq!(queue_type(&b, "%2f", name).await, "classic", "{name}");
    }
    // Redeclaring either kind as a client written for the default does is equivalent.
    declare_plain(&ch, "jobs", opts(true, false, false)).await;
    declare_plain(&ch, "transient", opts(false, false, false)).await;
    let v = api(&b).ok("/api/vhosts/%2f").await;
    assert_eq!(v["default_queue_type"], "quorum");
    // The management API's queue PUT takes the default too.
    let (code, _) = api(&b)
        .put("/api/queues/%2f/from-http", json!({"durable": true}))
        .await;
    assert_eq!(code, 201);
    assert_eq!(queue_type(&b, "%2f", "from-http").await, "quorum");
}

#[tokio::test]
async fn a_vhost_default_overrides_the_node_default() {
    let b = start_broker().await;
    let (code, _) = api(&b)
        .put("/api/vhosts/gpu", json!({"default_queue_type": "quorum"}))
        .await;
    assert_eq!(code, 201);
    let v = api(&b).ok("/api/vhosts/gpu").await;
    assert_eq!(v["default_queue_type"], "quorum");
    assert_eq!(
        api(&b).ok("/api/vhosts/%2f").await["default_queue_type"],
        "classic"
    );
    // Updating the description alone keeps the type.
    let (code, _) = api(&b)
        .put("/api/vhosts/gpu", json!({"description": "GPU workers"}))
        .await;
    assert_eq!(code, 204);
    assert_eq!(
        api(&b).ok("/api/vhosts/gpu").await["default_queue_type"],
        "quorum"
    );
    let (code, body) = api(&b)
        .put("/api/vhosts/gpu", json!({"default_queue_type": "lazy"}))
        .await;
    assert_eq!(code, 400, "{body}");

    let uri = b.uri.replace("/%2f", "/gpu");
    let gpu = within(
        "connect to gpu",
        Connection::connect(&uri, ConnectionProperties::default()),
    )
    .await
    .expect("connect to gpu");
    let ch = channel(&gpu).await;
    declare_plain(&ch, "llm", opts(true, false, false)).await;
    assert_eq!(queue_type(&b, "gpu", "llm").await, "quorum");
    let root = connect(&b).await;
    let ch = channel(&root).await;
    declare_plain(&ch, "llm", opts(true, false, false)).await;
    assert_eq!(queue_type(&b, "%2f", "llm").await, "classic");
}

#[test]
fn an_unknown_default_queue_type_is_a_configuration_error() {
    let mut config = warrenmq::config::Config {
        default_queue_type: "stream".into(),
        ..Default::default()
    };
    let err = config.validate().expect_err("refused");
    assert!(err.to_string().contains("default_queue_type"), "{err}");
    config.default_queue_type = "quorum".into();
    config.validate().expect("quorum is a valid default");
}
