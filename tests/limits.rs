//! User limits (max-connections, max-channels) and vhost limits (max-connections,
//! max-queues): set over the HTTP API, enforced over AMQP with RabbitMQ's reply codes and
//! texts, lifted again, and carried by definitions.

mod common;
use common::http::api;
use common::*;
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties};
use serde_json::json;

async fn amqp(b: &TestBroker, user: &str, pass: &str) -> Result<Connection, lapin::Error> {
    let uri = format!("amqp://{user}:{pass}@{}/%2f", b.addr());
    within(
        "connect",
        Connection::connect(&uri, ConnectionProperties::default()),
    )
    .await
}

fn refusal(e: &lapin::Error) -> String {
    format!("{e:?}")
}

#[tokio::test]
async fn vhost_queue_limit() {
    let b = start_broker().await;
    let a = api(&b);
    let (s, _) = a
        .put("/api/vhost-limits/%2F/max-queues", json!({"value": 2}))
        .await;
    assert_eq!(s, 204);
    assert_eq!(
        a.ok("/api/vhost-limits").await,
        json!([{"vhost": "/", "value": {"max-queues": 2}}])
    );
    let c = connect(&b).await;
    let ch = channel(&c).await;
    declare(&ch, "q1").await;
    declare(&ch, "q2").await;
    // Declaring an existing queue again is not a new queue.
    declare(&ch, "q1").await;
    let e = ch
        .queue_declare(
            "q3".into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect_err("over the limit");
    assert_eq!(reply_code(&e), Some(406));
    assert!(
        refusal(&e).contains("cannot declare queue 'q3': queue limit in vhost '/' (2) is reached"),
        "{e:?}"
    );
    let (s, _) = a.delete("/api/vhost-limits/%2F/max-queues").await;
    assert_eq!(s, 204);
    assert_eq!(a.ok("/api/vhost-limits/%2F").await, json!([]));
    let ch = channel(&c).await;
    declare(&ch, "q3").await;
}

#[tokio::test]
async fn vhost_connection_limit() {
    let b = start_broker().await;
    let a = api(&b);
    a.put("/api/vhost-limits/%2F/max-connections", json!({"value": 1}))
        .await;
    let first = connect(&b).await;
    let e = amqp(&b, "guest", "guest")
        .await
        .expect_err("second refused");
    assert!(
        refusal(&e).contains(
            "access to vhost '/' refused for user 'guest': connection limit (1) is reached"
        ),
        "{e:?}"
    );
    first.close(200, "bye".into()).await.unwrap();
    // -1 is no limit.
    a.put(
        "/api/vhost-limits/%2F/max-connections",
        json!({"value": -1}),
    )
    .await;
    let _c1 = connect(&b).await;
    let _c2 = connect(&b).await;
}

#[tokio::test]
async fn user_connection_and_channel_limits() {
    let b = start_broker().await;
    let a = api(&b);
    a.put("/api/users/lim", json!({"password": "pw", "tags": ""}))
        .await;
    a.put(
        "/api/permissions/%2F/lim",
        json!({"configure": ".*", "write": ".*", "read": ".*"}),
    )
    .await;
    let (s, _) = a
        .put("/api/user-limits/lim/max-connections", json!({"value": 1}))
        .await;
    assert_eq!(s, 204);
    let (s, _) = a
        .put("/api/user-limits/lim/max-channels", json!({"value": 2}))
        .await;
    assert_eq!(s, 204);
    assert_eq!(
        a.ok("/api/user-limits/lim").await,
        json!([{"user": "lim", "value": {"max-connections": 1, "max-channels": 2}}])
    );
    let c = amqp(&b, "lim", "pw").await.expect("first connection");
    let e = amqp(&b, "lim", "pw").await.expect_err("second refused");
    assert!(
        refusal(&e)
            .contains("Connection refused for user 'lim'. User connection limit (1) is reached"),
        "{e:?}"
    );
    // Other users are not limited.
    let _guest = connect(&b).await;
    let _ch1 = c.create_channel().await.expect("channel 1");
    let _ch2 = c.create_channel().await.expect("channel 2");
    let e = c.create_channel().await.expect_err("third channel refused");
    assert!(
        refusal(&e).contains("has reached the maximum allowed user limit of (2)"),
        "{e:?}"
    );
    // The connection was closed with 530: a new one is allowed again.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let c2 = loop {
        match amqp(&b, "lim", "pw").await {
            Ok(c) => break c,
            Err(e) => assert!(std::time::Instant::now() < deadline, "{e:?}"),
        }
        tokio::task::yield_now().await;
    };
    a.delete("/api/user-limits/lim/max-channels").await;
    for _ in 0..3 {
        c2.create_channel().await.expect("no channel limit");
    }
}

#[tokio::test]
async fn bad_limit_requests() {
    let b = start_broker().await;
    let a = api(&b);
    let (s, _) = a
        .put("/api/vhost-limits/%2F/max-cats", json!({"value": 1}))
        .await;
    assert_eq!(s, 400);
    let (s, _) = a
        .put("/api/vhost-limits/%2F/max-queues", json!({"value": "x"}))
        .await;
    assert_eq!(s, 400);
    let (s, _) = a
        .put("/api/vhost-limits/nope/max-queues", json!({"value": 1}))
        .await;
    assert_eq!(s, 404);
    let (s, _) = a
        .put("/api/user-limits/nobody/max-channels", json!({"value": 1}))
        .await;
    assert_eq!(s, 404);
    let (s, _) = a
        .put("/api/user-limits/guest/max-queues", json!({"value": 1}))
        .await;
    assert_eq!(s, 400);
}

#[tokio::test]
async fn limits_travel_with_definitions() {
    let b1 = start_broker().await;
    let a1 = api(&b1);
    a1.put("/api/vhost-limits/%2F/max-queues", json!({"value": 1}))
        .await;
    a1.put("/api/user-limits/guest/max-channels", json!({"value": 5}))
        .await;
    let defs = a1.ok("/api/definitions").await;
    assert_eq!(
        defs["parameters"],
        json!([{"vhost": "/", "component": "vhost-limits", "name": "limits",
                "value": {"max-queues": 1}}])
    );
    let b2 = start_broker().await;
    let a2 = api(&b2);
    assert_eq!(a2.post("/api/definitions", defs).await.0, 204);
    assert_eq!(
        a2.ok("/api/vhost-limits").await,
        json!([{"vhost": "/", "value": {"max-queues": 1}}])
    );
    assert_eq!(
        a2.ok("/api/user-limits").await,
        json!([{"user": "guest", "value": {"max-channels": 5}}])
    );
    let c = connect(&b2).await;
    let ch = channel(&c).await;
    declare(&ch, "only").await;
    let e = ch
        .queue_declare(
            "two".into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect_err("limit imported");
    assert_eq!(reply_code(&e), Some(406));
}
