//! At-least-once dead-lettering from quorum queues (`x-dead-letter-strategy:
//! at-least-once` with `x-overflow: reject-publish`): a dead-lettered message stays in the
//! source until a target has it, through a missing exchange, a full target and a restart.

mod common;
use common::http::api;
use common::*;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable};
use lapin::BasicProperties;
use std::time::{Duration, Instant};

fn table(entries: &[(&str, AMQPValue)]) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in entries {
        t.insert((*k).into(), v.clone());
    }
    t
}

fn text(s: &str) -> AMQPValue {
    AMQPValue::LongString(s.into())
}

fn durable() -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: true,
        ..Default::default()
    }
}

/// The source: dead-letters to exchange `dlx` with key `dead`, at least once.
async fn declare_source(ch: &lapin::Channel, strategy: &str) {
    let args = table(&[
        ("x-queue-type", text("quorum")),
        ("x-overflow", text("reject-publish")),
        ("x-dead-letter-exchange", text("dlx")),
        ("x-dead-letter-routing-key", text("dead")),
        ("x-dead-letter-strategy", text(strategy)),
    ]);
    within(
        "declare source",
        ch.queue_declare("src".into(), durable(), args),
    )
    .await
    .expect("source declared");
}

/// The target: a quorum queue holding at most `max` messages (reject-publish), bound.
async fn declare_target(ch: &lapin::Channel, max: i32) {
    within(
        "declare dlx",
        ch.exchange_declare(
            "dlx".into(),
            lapin::ExchangeKind::Direct,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        ),
    )
    .await
    .expect("dlx declared");
    let args = table(&[
        ("x-queue-type", text("quorum")),
        ("x-max-length", AMQPValue::LongInt(max)),
        ("x-overflow", text("reject-publish")),
    ]);
    within(
        "declare target",
        ch.queue_declare("dlq".into(), durable(), args),
    )
    .await
    .expect("target declared");
    within(
        "bind target",
        ch.queue_bind(
            "dlq".into(),
            "dlx".into(),
            "dead".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        ),
    )
    .await
    .expect("bound");
}

/// Publish `n` confirmed messages to the source, then reject each without requeue.
async fn publish_and_reject(ch: &lapin::Channel, n: u32) {
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirm.select");
    for i in 0..n {
        let body = format!("task-{i}");
        let props = BasicProperties::default().with_delivery_mode(2);
        assert!(confirmed(ch, "src", body.as_bytes(), props).await);
    }
    for _ in 0..n {
        let m = within(
            "get",
            ch.basic_get("src".into(), BasicGetOptions::default()),
        )
        .await
        .expect("get")
        .expect("a message in src");
        within(
            "reject",
            m.delivery.reject(BasicRejectOptions { requeue: false }),
        )
        .await
        .expect("reject");
    }
}

/// Poll the source's JSON until `messages_dlx` is `n` (bounded).
async fn wait_dead_pending(b: &TestBroker, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let q = api(b).ok("/api/queues/%2f/src").await;
        if q["messages_dlx"].as_u64() == Some(n) {
            return;
        }
        assert!(Instant::now() < deadline, "messages_dlx never {n}: {q}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Take every message from the target until `n` distinct bodies arrived (bounded): the
/// worker retries the ones the full target refused as room is made.
async fn drain_target(ch: &lapin::Channel, n: usize) -> Vec<String> {
    let mut seen = std::collections::BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while seen.len() < n {
        assert!(
            Instant::now() < deadline,
            "only {seen:?} reached the target"
        );
        match within(
            "get",
            ch.basic_get("dlq".into(), BasicGetOptions::default()),
        )
        .await
        .expect("get")
        {
            Some(m) => {
                let headers = m.delivery.properties.headers().clone().unwrap_or_default();
                assert_eq!(
                    headers.inner().get("x-first-death-reason"),
                    Some(&text("rejected"))
                );
                seen.insert(String::from_utf8(m.delivery.data.clone()).unwrap());
                within("ack", m.delivery.ack(BasicAckOptions::default()))
                    .await
                    .expect("ack");
            }
            None => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    seen.into_iter().collect()
}

fn tasks(n: u32) -> Vec<String> {
    let mut v: Vec<String> = (0..n).map(|i| format!("task-{i}")).collect();
    v.sort();
    v
}

#[tokio::test]
async fn kept_while_the_exchange_is_missing_and_while_the_target_is_full() {
    let b = start_broker().await;
    let conn = connect(&b).await;
    let ch = channel(&conn).await;
    declare_source(&ch, "at-least-once").await;
    publish_and_reject(&ch, 5).await;
    // No dead-letter exchange yet: at-least-once keeps all five, none ready.
    wait_dead_pending(&b, 5).await;
    assert_eq!(ready_count(&ch, "src").await, 0);
    let q = api(&b).ok("/api/queues/%2f/src").await;
    assert_eq!(q["message_bytes_dlx"], 5 * "task-0".len(), "{q}");
    // A target with room for two: the rest wait in the source until it drains.
    let ch2 = channel(&conn).await;
    declare_target(&ch2, 2).await;
    assert_eq!(drain_target(&ch2, 5).await, tasks(5));
    wait_dead_pending(&b, 0).await;
    assert_eq!(ready_count(&ch2, "dlq").await, 0);
}

#[tokio::test]
async fn at_most_once_drops_what_has_no_route() {
    let b = start_broker().await;
    let conn = connect(&b).await;
    let ch = channel(&conn).await;
    declare_source(&ch, "at-most-once").await;
    publish_and_reject(&ch, 3).await;
    // The passive declare is answered after the rejects on the same channel were handled.
    assert_eq!(ready_count(&ch, "src").await, 0);
    let q = api(&b).ok("/api/queues/%2f/src").await;
    assert_eq!(q["messages_dlx"], 0, "{q}");
    assert_eq!(q["message_bytes_dlx"], 0, "{q}");
    assert_eq!(q["messages"], 0, "{q}");
}

#[tokio::test]
async fn dead_lettered_messages_survive_a_restart_until_delivered() {
    let mut b = start_broker().await;
    {
        let conn = connect(&b).await;
        let ch = channel(&conn).await;
        declare_source(&ch, "at-least-once").await;
        publish_and_reject(&ch, 4).await;
        wait_dead_pending(&b, 4).await;
        let _ = conn.close(200, "bye".into()).await;
    }
    b.stop().await;
    let dir = b.dir;
    let b = start_broker_with(test_config(dir.path()), dir).await;
    wait_dead_pending(&b, 4).await;
    let conn = connect(&b).await;
    let ch = channel(&conn).await;
    assert_eq!(ready_count(&ch, "src").await, 0);
    declare_target(&ch, 100).await;
    assert_eq!(drain_target(&ch, 4).await, tasks(4));
    wait_dead_pending(&b, 0).await;
}

#[tokio::test]
async fn a_policy_can_make_dead_lettering_at_least_once() {
    let b = start_broker().await;
    let (code, body) = api(&b)
        .put(
            "/api/policies/%2f/alo",
            serde_json::json!({
                "pattern": "^src$",
                "apply-to": "queues",
                "definition": {
                    "dead-letter-strategy": "at-least-once",
                    "overflow": "reject-publish",
                    "dead-letter-exchange": "dlx",
                    "dead-letter-routing-key": "dead",
                },
            }),
        )
        .await;
    assert_eq!(code, 201, "{body}");
    let (code, _) = api(&b)
        .put(
            "/api/policies/%2f/bad",
            serde_json::json!({"pattern": "x", "definition": {"dead-letter-strategy": "sometimes"}}),
        )
        .await;
    assert_eq!(code, 400);
    let conn = connect(&b).await;
    let ch = channel(&conn).await;
    within(
        "declare source",
        ch.queue_declare(
            "src".into(),
            durable(),
            table(&[("x-queue-type", text("quorum"))]),
        ),
    )
    .await
    .expect("declared");
    publish_and_reject(&ch, 2).await;
    wait_dead_pending(&b, 2).await;
    declare_target(&ch, 10).await;
    assert_eq!(drain_target(&ch, 2).await, tasks(2));
}

#[tokio::test]
async fn an_expired_message_routed_only_back_into_its_queue_is_dropped() {
    let b = start_broker().await;
    let conn = connect(&b).await;
    let ch = channel(&conn).await;
    let args = table(&[
        ("x-queue-type", text("quorum")),
        ("x-overflow", text("reject-publish")),
        ("x-message-ttl", AMQPValue::LongInt(20)),
        ("x-dead-letter-exchange", text("")),
        ("x-dead-letter-routing-key", text("loop")),
        ("x-dead-letter-strategy", text("at-least-once")),
    ]);
    within("declare", ch.queue_declare("loop".into(), durable(), args))
        .await
        .expect("declared");
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirm.select");
    assert!(confirmed(&ch, "loop", b"round and round", BasicProperties::default()).await);
    // An automatic cycle (expired, back into the same queue) is cut: the message is
    // dropped, not kept for a target that can never take it.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let q = api(&b).ok("/api/queues/%2f/loop").await;
        if q["messages"] == 0 && q["messages_dlx"] == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "never dropped: {q}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn messages_waiting_for_their_target_count_towards_the_length_limit() {
    let b = start_broker().await;
    let conn = connect(&b).await;
    let ch = channel(&conn).await;
    let args = table(&[
        ("x-queue-type", text("quorum")),
        ("x-overflow", text("reject-publish")),
        ("x-max-length", AMQPValue::LongInt(3)),
        ("x-dead-letter-exchange", text("dlx")),
        ("x-dead-letter-strategy", text("at-least-once")),
    ]);
    within("declare", ch.queue_declare("src".into(), durable(), args))
        .await
        .expect("declared");
    publish_and_reject(&ch, 2).await;
    wait_dead_pending(&b, 2).await;
    // Two of three places are taken by messages on their way out (RabbitMQ counts them).
    let mut acks = Vec::new();
    for body in [&b"third"[..], b"fourth"] {
        acks.push(confirmed(&ch, "src", body, BasicProperties::default()).await);
    }
    assert_eq!(acks, [true, false]);
    assert_eq!(ready_count(&ch, "src").await, 1);
}
