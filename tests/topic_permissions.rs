//! Topic permissions: set over the HTTP API, enforced over AMQP on topic exchanges only
//! (routing keys on publish against `write`, binding keys on queue and exchange bindings
//! against `read`, `{username}` expanded), with RabbitMQ's 403 texts; cleared, exported
//! and imported.

mod common;
use common::http::api;
use common::*;
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel};
use serde_json::json;

/// Publish in confirm mode and wait for the confirm: a refusal arrives as the error.
async fn publish_confirmed(ch: &Channel, exchange: &str, key: &str) -> Result<(), lapin::Error> {
    let confirm = within(
        "publish",
        ch.basic_publish(
            exchange.into(),
            key.into(),
            BasicPublishOptions::default(),
            b"m",
            BasicProperties::default(),
        ),
    )
    .await?;
    within("confirm", confirm).await.map(|_| ())
}

async fn confirming(c: &lapin::Connection) -> Channel {
    let ch = channel(c).await;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    ch
}

#[tokio::test]
async fn topic_permissions_over_http_and_amqp() {
    let b = start_broker().await;
    let a = api(&b);
    let (s, _) = a
        .put(
            "/api/topic-permissions/%2F/guest",
            json!({"exchange": "amq.topic", "write": "^gpu\\.", "read": "^{username}\\."}),
        )
        .await;
    assert_eq!(s, 201);
    let (s, _) = a
        .put(
            "/api/topic-permissions/%2F/guest",
            json!({"exchange": "amq.topic", "write": "^gpu\\.", "read": "^{username}\\."}),
        )
        .await;
    assert_eq!(s, 204);
    let row = json!({"user": "guest", "vhost": "/", "exchange": "amq.topic",
                     "write": "^gpu\\.", "read": "^{username}\\."});
    assert_eq!(a.ok("/api/topic-permissions").await, json!([row.clone()]));
    assert_eq!(
        a.ok("/api/topic-permissions/%2F/guest").await,
        json!([row.clone()])
    );
    assert_eq!(
        a.ok("/api/users/guest/topic-permissions").await,
        json!([row.clone()])
    );
    assert_eq!(
        a.ok("/api/vhosts/%2F/topic-permissions").await,
        json!([row.clone()])
    );

    let c = connect(&b).await;
    publish_confirmed(&confirming(&c).await, "amq.topic", "gpu.llm")
        .await
        .expect("write pattern matches");
    assert_eq!(
        failure(publish_confirmed(&confirming(&c).await, "amq.topic", "cpu.llm").await),
        (
            403,
            "ACCESS_REFUSED - write access to topic 'cpu.llm' in exchange 'amq.topic' in \
             vhost '/' refused for user 'guest'"
                .into()
        )
    );
    // Other exchange types are not checked.
    publish_confirmed(&confirming(&c).await, "amq.direct", "cpu.llm")
        .await
        .expect("not a topic exchange");

    // Binding keys against read, with {username} expanded.
    let ch = channel(&c).await;
    declare(&ch, "mine").await;
    ch.queue_bind(
        "mine".into(),
        "amq.topic".into(),
        "guest.#".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("read pattern matches");
    let r = ch
        .queue_bind(
            "mine".into(),
            "amq.topic".into(),
            "other.#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await;
    assert_eq!(
        failure(r),
        (
            403,
            "ACCESS_REFUSED - read access to topic 'other.#' in exchange 'amq.topic' in \
             vhost '/' refused for user 'guest'"
                .into()
        )
    );
    let ch = channel(&c).await;
    let r = ch
        .exchange_bind(
            "amq.fanout".into(),
            "amq.topic".into(),
            "other.#".into(),
            ExchangeBindOptions::default(),
            FieldTable::default(),
        )
        .await;
    assert_eq!(failure(r).0, 403);

    // HTTP publish is held to the same patterns.
    let body = |key: &str| {
        json!({"properties": {}, "routing_key": key, "payload": "m",
                                  "payload_encoding": "string"})
    };
    let path = "/api/exchanges/%2F/amq.topic/publish";
    assert_eq!(a.post(path, body("gpu.x")).await.0, 200);
    assert_eq!(a.post(path, body("cpu.x")).await.0, 403);

    // Cleared: everything is allowed again.
    let (s, _) = a.delete("/api/topic-permissions/%2F/guest").await;
    assert_eq!(s, 204);
    assert_eq!(a.ok("/api/topic-permissions").await, json!([]));
    publish_confirmed(&confirming(&c).await, "amq.topic", "cpu.llm")
        .await
        .expect("no topic permissions left");
}

#[tokio::test]
async fn bad_topic_permission_requests() {
    let b = start_broker().await;
    let a = api(&b);
    let put = |path: &'static str, body| {
        let a = &a;
        async move { a.put(path, body).await.0 }
    };
    assert_eq!(
        put(
            "/api/topic-permissions/%2F/guest",
            json!({"exchange": "amq.topic", "write": "(", "read": ""})
        )
        .await,
        400
    );
    assert_eq!(
        put(
            "/api/topic-permissions/%2F/guest",
            json!({"write": ".*", "read": ".*"})
        )
        .await,
        400
    );
    assert_eq!(
        put(
            "/api/topic-permissions/%2F/nobody",
            json!({"exchange": "amq.topic", "write": ".*", "read": ".*"})
        )
        .await,
        404
    );
    assert_eq!(
        put(
            "/api/topic-permissions/nowhere/guest",
            json!({"exchange": "amq.topic", "write": ".*", "read": ".*"})
        )
        .await,
        404
    );
    assert_eq!(a.get("/api/topic-permissions/%2F/guest").await.0, 404);
}

#[tokio::test]
async fn topic_permissions_travel_with_definitions() {
    let b1 = start_broker().await;
    let a1 = api(&b1);
    a1.put(
        "/api/topic-permissions/%2F/guest",
        json!({"exchange": "amq.topic", "write": "^gpu\\.", "read": ".*"}),
    )
    .await;
    let defs = a1.ok("/api/definitions").await;
    assert_eq!(
        defs["topic_permissions"],
        json!([{"user": "guest", "vhost": "/", "exchange": "amq.topic",
                "write": "^gpu\\.", "read": ".*"}])
    );
    let b2 = start_broker().await;
    let a2 = api(&b2);
    assert_eq!(a2.post("/api/definitions", defs).await.0, 204);
    let c = connect(&b2).await;
    assert_eq!(
        failure(publish_confirmed(&confirming(&c).await, "amq.topic", "cpu.x").await).0,
        403
    );
}

#[tokio::test]
async fn topic_permissions_and_limits_survive_a_restart() {
    let mut b = start_broker().await;
    let a = api(&b);
    a.put(
        "/api/topic-permissions/%2F/guest",
        json!({"exchange": "amq.topic", "write": "^gpu\\.", "read": ".*"}),
    )
    .await;
    a.put("/api/vhost-limits/%2F/max-queues", json!({"value": 7}))
        .await;
    b.stop().await;
    let dir = b.dir;
    let b = start_broker_with(test_config(dir.path()), dir).await;
    let a = api(&b);
    assert_eq!(
        a.ok("/api/topic-permissions")
            .await
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        a.ok("/api/vhost-limits").await,
        json!([{"vhost": "/", "value": {"max-queues": 7}}])
    );
    let c = connect(&b).await;
    assert_eq!(
        failure(publish_confirmed(&confirming(&c).await, "amq.topic", "cpu.x").await).0,
        403
    );
}
