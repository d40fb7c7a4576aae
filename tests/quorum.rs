//! Quorum queues through a real client: declaration checks with RabbitMQ 3.10.8's texts,
//! confirms after the group applied, delivery counts and the delivery limit, where returned
//! messages go, two priority levels served 2:1, max-length, restarts (clean and with snapshots), damage to the group's log.

mod common;
use common::http::api;
use common::*;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable};
use lapin::BasicProperties;
use std::time::Duration;

fn quorum_args(extra: &[(&str, AMQPValue)]) -> FieldTable {
    let mut t = FieldTable::default();
    t.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    for (k, v) in extra {
        t.insert((*k).into(), v.clone());
    }
    t
}

fn durable() -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: true,
        ..Default::default()
    }
}

async fn declare_quorum(ch: &lapin::Channel, name: &str, extra: &[(&str, AMQPValue)]) {
    within(
        "queue.declare",
        ch.queue_declare(name.into(), durable(), quorum_args(extra)),
    )
    .await
    .expect("quorum queue declared");
}

async fn get(ch: &lapin::Channel, q: &str) -> Option<lapin::message::BasicGetMessage> {
    within(
        "basic.get",
        ch.basic_get(q.into(), BasicGetOptions { no_ack: false }),
    )
    .await
    .expect("basic.get")
}

fn delivery_count(m: &lapin::message::BasicGetMessage) -> Option<i64> {
    let h = m.delivery.properties.headers().as_ref()?;
    match h.inner().get("x-delivery-count")? {
        AMQPValue::LongLongInt(n) => Some(*n),
        AMQPValue::LongInt(n) => Some(*n as i64),
        _ => None,
    }
}

#[tokio::test]
async fn declarations_are_checked_with_rabbitmqs_texts() {
    let b = start_broker().await;
    let conn = connect(&b).await;
    let q = "PRECONDITION_FAILED - ";
    let cases: Vec<(&str, QueueDeclareOptions, FieldTable, String)> = vec![
        (
            "nd",
            QueueDeclareOptions::default(),
            quorum_args(&[]),
            format!("{q}invalid property 'non-durable' for queue 'nd' in vhost '/'"),
        ),
        (
            "ex",
            QueueDeclareOptions {
                durable: true,
                exclusive: true,
                ..Default::default()
            },
            quorum_args(&[]),
            format!("{q}invalid property 'exclusive-owner' for queue 'ex' in vhost '/'"),
        ),
        (
            "ad",
            QueueDeclareOptions {
                durable: true,
                auto_delete: true,
                ..Default::default()
            },
            quorum_args(&[]),
            format!("{q}invalid property 'auto-delete' for queue 'ad' in vhost '/'"),
        ),
        (
            "pr",
            durable(),
            quorum_args(&[("x-max-priority", AMQPValue::LongInt(5))]),
            format!("{q}invalid arg 'x-max-priority' for queue 'pr' in vhost '/' of queue type rabbit_quorum_queue"),
        ),
        (
            "lz",
            durable(),
            quorum_args(&[("x-queue-mode", AMQPValue::LongString("lazy".into()))]),
            format!("{q}invalid arg 'x-queue-mode' for queue 'lz' in vhost '/' of queue type rabbit_quorum_queue"),
        ),
        (
            "gs",
            durable(),
            quorum_args(&[("x-quorum-initial-group-size", AMQPValue::LongInt(0))]),
            format!("{q}invalid arg 'x-quorum-initial-group-size' for queue 'gs' in vhost '/': {{value_zero,0}}"),
        ),
        (
            "ll",
            durable(),
            quorum_args(&[("x-queue-leader-locator", AMQPValue::LongString("x".into()))]),
            format!("{q}invalid arg 'x-queue-leader-locator' for queue 'll' in vhost '/': invalid_queue_locator_arg"),
        ),
        (
            "ds",
            durable(),
            quorum_args(&[("x-dead-letter-strategy", AMQPValue::LongString("bad".into()))]),
            format!("{q}invalid arg 'x-dead-letter-strategy' for queue 'ds' in vhost '/': invalid_dlx_strategy"),
        ),
        (
            "ml",
            durable(),
            quorum_args(&[("x-max-length", AMQPValue::LongInt(-1))]),
            format!("{q}invalid arg 'x-max-length' for queue 'ml' in vhost '/': {{value_negative,-1}}"),
        ),
    ];
    for (name, opts, args, want) in cases {
        let ch = channel(&conn).await;
        let (code, text) =
            failure(within("queue.declare", ch.queue_declare(name.into(), opts, args)).await);
        assert_eq!((code, text.as_str()), (406, want.as_str()), "queue {name}");
    }
    // Accepted as RabbitMQ accepts them.
    let ch = channel(&conn).await;
    declare_quorum(
        &ch,
        "ok",
        &[
            (
                "x-queue-leader-locator",
                AMQPValue::LongString("balanced".into()),
            ),
            ("x-quorum-initial-group-size", AMQPValue::LongInt(3)),
            (
                "x-dead-letter-strategy",
                AMQPValue::LongString("at-most-once".into()),
            ),
            ("x-delivery-limit", AMQPValue::LongInt(-1)),
        ],
    )
    .await;
    // Redeclared as another type: inequivalent, worded as RabbitMQ does.
    let mut classic = FieldTable::default();
    classic.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("classic".into()),
    );
    let (code, text) = failure(
        within(
            "queue.declare",
            ch.queue_declare("ok".into(), durable(), classic.clone()),
        )
        .await,
    );
    assert_eq!(code, 406);
    assert_eq!(text, format!("{q}inequivalent arg 'x-queue-type' for queue 'ok' in vhost '/': received 'classic' but current is 'quorum'"));
    let ch = channel(&conn).await;
    let (_, text) = failure(
        within(
            "queue.declare",
            ch.queue_declare("ok".into(), durable(), FieldTable::default()),
        )
        .await,
    );
    assert_eq!(text, format!("{q}inequivalent arg 'x-queue-type' for queue 'ok' in vhost '/': received none but current is the value 'quorum' of type 'longstr'"));
    // A classic queue redeclared with x-queue-type classic is the same queue.
    let ch = channel(&conn).await;
    declare_durable(&ch, "cq").await;
    within(
        "queue.declare",
        ch.queue_declare("cq".into(), durable(), classic),
    )
    .await
    .expect("classic is the default type");

    let q = api(&b).ok("/api/queues/%2f/ok").await;
    assert_eq!(q["type"], "quorum", "{q}");
    assert_eq!(q["durable"], true);
    let node = q["node"].clone();
    assert_eq!(q["members"], serde_json::json!([node.clone()]), "{q}");
    assert_eq!(q["online"], serde_json::json!([node.clone()]), "{q}");
    // The leader is known once the group elected itself.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let q = api(&b).ok("/api/queues/%2f/ok").await;
        if q["leader"] == node {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no leader: {q}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(api(&b).ok("/api/queues/%2f/cq").await["type"], "classic");
}

#[tokio::test]
async fn confirmed_messages_are_delivered_counted_and_redelivered_with_their_count() {
    let b = start_broker().await;
    let conn = connect(&b).await;
    let ch = channel(&conn).await;
    declare_quorum(&ch, "jobs", &[]).await;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    // Transient messages too: a quorum queue keeps everything in its log.
    for i in 0..20u8 {
        assert!(confirmed(&ch, "jobs", &[i], BasicProperties::default()).await);
    }
    assert_eq!(ready_count(&ch, "jobs").await, 20);
    let m = get(&ch, "jobs").await.expect("a message");
    assert_eq!(m.delivery.data, [0]);
    assert!(!m.delivery.redelivered);
    within(
        "nack",
        m.delivery.nack(BasicNackOptions {
            requeue: true,
            ..Default::default()
        }),
    )
    .await
    .unwrap();
    let m = get(&ch, "jobs").await.expect("the returned message");
    assert_eq!(m.delivery.data, [0], "back in its place");
    assert!(m.delivery.redelivered);
    assert_eq!(delivery_count(&m), Some(1));
    within("ack", m.delivery.ack(BasicAckOptions::default()))
        .await
        .unwrap();
    // A consumer gets the rest in order.
    let mut c = within(
        "consume",
        ch.basic_consume(
            "jobs".into(),
            "c".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        ),
    )
    .await
    .unwrap();
    for i in 1..20u8 {
        let d = next(&mut c).await;
        assert_eq!(d.data, [i]);
        within("ack", d.ack(BasicAckOptions::default()))
            .await
            .unwrap();
    }
    let q = api(&b).ok("/api/queues/%2f/jobs").await;
    assert_eq!(q["messages_ready"], 0, "{q}");
}

/// Reject-requeue until the limit: the message is dead-lettered with reason
/// `delivery_limit`. `limit` None checks RabbitMQ 4's default of 20.
async fn poison(limit: Option<i64>) {
    let b = start_broker().await;
    let conn = connect(&b).await;
    let ch = channel(&conn).await;
    declare(&ch, "dlq").await;
    let mut extra = vec![
        ("x-dead-letter-exchange", AMQPValue::LongString("".into())),
        (
            "x-dead-letter-routing-key",
            AMQPValue::LongString("dlq".into()),
        ),
    ];
    if let Some(l) = limit {
        extra.push(("x-delivery-limit", AMQPValue::LongInt(l as i32)));
    }
    declare_quorum(&ch, "work", &extra).await;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    assert!(confirmed(&ch, "work", b"poison", BasicProperties::default()).await);
    let limit = limit.unwrap_or(20);
    for round in 0..=limit {
        let m = get(&ch, "work")
            .await
            .unwrap_or_else(|| panic!("round {round}"));
        if round > 0 {
            assert_eq!(delivery_count(&m), Some(round));
        }
        within(
            "reject",
            m.delivery.reject(BasicRejectOptions { requeue: true }),
        )
        .await
        .unwrap();
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let dead = loop {
        if let Some(m) = get(&ch, "dlq").await {
            break m;
        }
        assert!(std::time::Instant::now() < deadline, "never dead-lettered");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(dead.delivery.data, b"poison");
    let headers = dead.delivery.properties.headers().clone().unwrap();
    let Some(AMQPValue::FieldArray(deaths)) = headers.inner().get("x-death") else {
        panic!("no x-death: {headers:?}")
    };
    let AMQPValue::FieldTable(first) = &deaths.as_slice()[0] else {
        panic!("x-death entry")
    };
    assert_eq!(
        first.inner().get("reason"),
        Some(&AMQPValue::LongString("delivery_limit".into()))
    );
    assert_eq!(
        first.inner().get("queue"),
        Some(&AMQPValue::LongString("work".into()))
    );
    assert!(get(&ch, "work").await.is_none());
}

#[tokio::test]
async fn the_delivery_limit_dead_letters_with_reason_delivery_limit() {
    poison(Some(2)).await;
}

#[tokio::test]
async fn the_default_delivery_limit_is_twenty() {
    poison(None).await;
}

/// Publish one message per priority (its body: the priority), confirmed, then get and ack
/// until the queue is empty: the bodies in delivery order.
async fn publish_and_drain(ch: &lapin::Channel, q: &str, priorities: &[u8]) -> Vec<u8> {
    for &p in priorities {
        let props = BasicProperties::default().with_priority(p);
        assert!(confirmed(ch, q, &[p], props).await);
    }
    let mut order = Vec::new();
    while let Some(m) = get(ch, q).await {
        order.push(m.delivery.data[0]);
        m.delivery.ack(BasicAckOptions::default()).await.unwrap();
    }
    order
}

#[tokio::test]
async fn priorities_above_four_come_first_and_max_length_rejects_publishes() {
    let b = start_broker().await;
    let conn = connect(&b).await;
    let ch = channel(&conn).await;
    declare_quorum(&ch, "prio", &[]).await;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    assert_eq!(
        publish_and_drain(&ch, "prio", &[1, 9, 3, 5, 0, 4]).await,
        [9, 5, 1, 3, 0, 4],
        "high (above 4) first, FIFO within"
    );
    // Both levels waiting: two high ones, then the older normal one (RabbitMQ 4's 2:1).
    assert_eq!(
        publish_and_drain(&ch, "prio", &[0, 0, 0, 0, 9, 9, 9, 9, 9, 9]).await,
        [9, 9, 0, 9, 9, 0, 9, 9, 0, 0]
    );

    declare_quorum(
        &ch,
        "small",
        &[
            ("x-max-length", AMQPValue::LongInt(2)),
            ("x-overflow", AMQPValue::LongString("reject-publish".into())),
        ],
    )
    .await;
    let acks: Vec<bool> = {
        let mut v = Vec::new();
        for i in 0..3u8 {
            v.push(confirmed(&ch, "small", &[i], BasicProperties::default()).await);
        }
        v
    };
    assert_eq!(acks, [true, true, false], "the third publish is nacked");
    assert_eq!(ready_count(&ch, "small").await, 2);
}

/// Get four of six messages, return the third and then the first (nack, then reject) and
/// drain the queue: the order the rest come in, with their x-delivery-count.
async fn order_after_returns(ch: &lapin::Channel, q: &str) -> Vec<(u8, Option<i64>)> {
    for i in 0..6u8 {
        assert!(confirmed(ch, q, &[i], BasicProperties::default()).await);
    }
    let mut got = Vec::new();
    for _ in 0..4 {
        got.push(get(ch, q).await.expect("a message"));
    }
    let nack = BasicNackOptions {
        requeue: true,
        ..Default::default()
    };
    within("nack", got[2].delivery.nack(nack)).await.unwrap();
    within(
        "reject",
        got[0].delivery.reject(BasicRejectOptions { requeue: true }),
    )
    .await
    .unwrap();
    let mut order = Vec::new();
    while let Some(m) = get(ch, q).await {
        order.push((m.delivery.data[0], delivery_count(&m)));
        within("ack", m.delivery.ack(BasicAckOptions::default()))
            .await
            .unwrap();
    }
    order
}

/// RabbitMQ's quorum queue (3.10.8 seen doing both): with a delivery limit returned
/// messages wait ahead of the queue in the order they came back; without one they are
/// enqueued again behind it. Both carry their count.
#[tokio::test]
async fn returned_messages_go_ahead_with_a_delivery_limit_and_behind_without_one() {
    let b = start_broker().await;
    let conn = connect(&b).await;
    let ch = channel(&conn).await;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    declare_quorum(&ch, "limited", &[]).await;
    assert_eq!(
        order_after_returns(&ch, "limited").await,
        [(2, Some(1)), (0, Some(1)), (4, None), (5, None)]
    );
    declare_quorum(
        &ch,
        "unlimited",
        &[("x-delivery-limit", AMQPValue::LongInt(-1))],
    )
    .await;
    assert_eq!(
        order_after_returns(&ch, "unlimited").await,
        [(4, None), (5, None), (2, Some(1)), (0, Some(1))]
    );
}

#[tokio::test]
async fn messages_and_delivery_counts_survive_restarts_and_snapshots() {
    let mut b = start_broker().await;
    {
        let conn = connect(&b).await;
        let ch = channel(&conn).await;
        declare_quorum(&ch, "kept", &[("x-delivery-limit", AMQPValue::LongInt(5))]).await;
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        // More rounds than a snapshot interval: one confirmed publish per round, most
        // acked again, so the log is purged behind a snapshot.
        let rounds = 2300u32;
        for i in 0..rounds {
            assert!(confirmed(&ch, "kept", &i.to_be_bytes(), BasicProperties::default()).await);
        }
        for _ in 0..rounds - 10 {
            let m = get(&ch, "kept").await.unwrap();
            m.delivery.ack(BasicAckOptions::default()).await.unwrap();
        }
        // One returned twice: its count must survive.
        for _ in 0..2 {
            let m = get(&ch, "kept").await.unwrap();
            m.delivery
                .nack(BasicNackOptions {
                    requeue: true,
                    ..Default::default()
                })
                .await
                .unwrap();
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let q = api(&b).ok("/api/queues/%2f/kept").await;
            let kept = q["raft_log_entries"].as_u64().unwrap();
            if kept < 2048 {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "log never purged: {q}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let _ = conn.close(200, "bye".into()).await;
    }
    b.stop().await;
    let dir = b.dir;
    let snaps: Vec<_> = std::fs::read_dir(dir.path().join("quorum/snapshots"))
        .unwrap()
        .collect();
    assert_eq!(snaps.len(), 1, "one snapshot of the one group");
    let b = start_broker_with(test_config(dir.path()), dir).await;
    let conn = connect(&b).await;
    let ch = channel(&conn).await;
    assert_eq!(ready_count(&ch, "kept").await, 10);
    let first = get(&ch, "kept").await.unwrap();
    assert_eq!(first.delivery.data, (2290u32).to_be_bytes());
    assert!(first.delivery.redelivered);
    // Two returns before the restart: this is its third delivery.
    first
        .delivery
        .nack(BasicNackOptions {
            requeue: true,
            ..Default::default()
        })
        .await
        .unwrap();
    let again = get(&ch, "kept").await.unwrap();
    assert_eq!(again.delivery.data, (2290u32).to_be_bytes());
    assert_eq!(delivery_count(&again), Some(3));
}

#[tokio::test]
async fn a_damaged_group_log_is_reported_and_only_that_queue_refuses_work() {
    let mut b = start_broker().await;
    {
        let conn = connect(&b).await;
        let ch = channel(&conn).await;
        declare_quorum(&ch, "hurt", &[]).await;
        declare_quorum(&ch, "fine", &[]).await;
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        for i in 0..20u8 {
            let body = [b'H', i, 0xAB, 0xCD];
            assert!(confirmed(&ch, "hurt", &body, BasicProperties::default()).await);
        }
        assert!(confirmed(&ch, "fine", b"ok", BasicProperties::default()).await);
        let _ = conn.close(200, "bye".into()).await;
    }
    b.stop().await;
    let dir = b.dir;
    // Flip a byte inside one of "hurt"'s message bodies in the log.
    let qdir = dir.path().join("quorum");
    let mut hit = false;
    for e in std::fs::read_dir(&qdir).unwrap() {
        let path = e.unwrap().path();
        if path.extension().is_some_and(|x| x == "rlog") {
            let mut raw = std::fs::read(&path).unwrap();
            if let Some(at) = raw.windows(4).position(|w| w == [b'H', 7, 0xAB, 0xCD]) {
                raw[at + 2] ^= 0xFF;
                std::fs::write(&path, raw).unwrap();
                hit = true;
            }
        }
    }
    assert!(hit, "the message was in the log");
    let b = start_broker_with(test_config(dir.path()), dir).await;
    let conn = connect(&b).await;
    let ch = channel(&conn).await;
    assert_eq!(ready_count(&ch, "fine").await, 1, "the other queue serves");
    let (code, text) = failure(
        within(
            "basic.get",
            ch.basic_get("hurt".into(), BasicGetOptions::default()),
        )
        .await,
    );
    assert_eq!(code, 404, "{text}");
    assert!(text.contains("down or inaccessible"), "{text}");
    let (status, health) = api(&b).get("/api/health/checks/storage").await;
    assert_eq!(status, 503, "{health}");
    assert!(health.to_string().contains("raft_log"), "{health}");
    let q = api(&b).ok("/api/queues/%2f/hurt").await;
    assert_eq!(q["state"], "down", "{q}");
    assert_eq!(q["online"], serde_json::json!([]), "{q}");
    let ch = channel(&conn).await;
    let (code, _) = failure(
        within(
            "basic.consume",
            ch.basic_consume(
                "hurt".into(),
                "c".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            ),
        )
        .await,
    );
    assert_eq!(code, 404);
}

#[tokio::test]
async fn tx_commit_ok_comes_once_the_group_applied_the_commit() {
    let b = start_broker().await;
    let conn = connect(&b).await;
    let ch = channel(&conn).await;
    declare_quorum(&ch, "txq", &[]).await;
    within("tx.select", ch.tx_select()).await.unwrap();
    for round in 0..3u8 {
        for i in 0..5u8 {
            within(
                "publish",
                ch.basic_publish(
                    "".into(),
                    "txq".into(),
                    BasicPublishOptions::default(),
                    &[round, i],
                    BasicProperties::default(),
                ),
            )
            .await
            .unwrap();
        }
        within("tx.commit", ch.tx_commit()).await.unwrap();
        // commit-ok means applied: the messages are ready at once.
        assert_eq!(ready_count(&ch, "txq").await, 5 * (round as u32 + 1));
    }
    within("tx.rollback", ch.tx_rollback()).await.unwrap();
}

/// Acks and returns still waiting for the next round when the broker stops cleanly are
/// written before the group stops: acked messages do not come back.
#[tokio::test]
async fn a_clean_stop_writes_the_last_round() {
    let mut b = start_broker().await;
    {
        let conn = connect(&b).await;
        let ch = channel(&conn).await;
        declare_quorum(&ch, "last", &[]).await;
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        for i in 0..50u8 {
            assert!(confirmed(&ch, "last", &[i], BasicProperties::default()).await);
        }
        let mut c = within(
            "consume",
            ch.basic_consume(
                "last".into(),
                "c".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            ),
        )
        .await
        .unwrap();
        for _ in 0..40 {
            let d = next(&mut c).await;
            within("ack", d.ack(BasicAckOptions::default()))
                .await
                .unwrap();
        }
        // Round trip: the broker has read every ack.
        ready_count(&ch, "last").await;
    }
    b.stop().await;
    let dir = b.dir;
    let b = start_broker_with(test_config(dir.path()), dir).await;
    let conn = connect(&b).await;
    let ch = channel(&conn).await;
    assert_eq!(ready_count(&ch, "last").await, 10);
}

/// A message body that says where it belongs: its number, then filler.
fn numbered(i: u32, len: usize) -> Vec<u8> {
    let mut body = i.to_be_bytes().to_vec();
    body.resize(len, (i % 251) as u8);
    body
}

#[tokio::test]
async fn a_deep_queue_keeps_a_memory_budget_and_reads_the_rest_back_from_its_log() {
    const N: u32 = 6000;
    const LEN: usize = 2048;
    let mut b = start_broker().await;
    let check = |m: &lapin::message::BasicGetMessage, i: u32| {
        assert_eq!(m.delivery.data, numbered(i, LEN), "message {i}");
    };
    {
        let conn = connect(&b).await;
        let ch = channel(&conn).await;
        declare_quorum(&ch, "deep", &[]).await;
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        let mut confirms = Vec::new();
        for i in 0..N {
            confirms.push(publish_persistent(&ch, "deep", &numbered(i, LEN)).await);
        }
        for c in confirms {
            assert!(within("confirm", c).await.unwrap().is_ack());
        }
        // 12 MB queued: the ready list holds its budget (2 MB) and pages out the rest.
        let q = api(&b).ok("/api/queues/%2f/deep").await;
        assert_eq!(q["messages"], N as u64, "{q}");
        assert!(q["messages_paged_out"].as_u64().unwrap() > 1000, "{q}");
        assert!(q["message_bytes_ram"].as_u64().unwrap() <= 2 << 20, "{q}");
        for i in 0..1000 {
            let m = get(&ch, "deep").await.expect("a message");
            check(&m, i);
            m.delivery.ack(BasicAckOptions::default()).await.unwrap();
        }
        let _ = conn.close(200, "bye".into()).await;
    }
    b.stop().await;
    let dir = b.dir;
    let b = start_broker_with(test_config(dir.path()), dir).await;
    let q = api(&b).ok("/api/queues/%2f/deep").await;
    assert_eq!(q["messages"], (N - 1000) as u64, "{q}");
    assert!(
        q["messages_paged_out"].as_u64().unwrap() > 0,
        "recovery pages out too: {q}"
    );
    let conn = connect(&b).await;
    let ch = channel(&conn).await;
    for i in 1000..N {
        let m = get(&ch, "deep").await.expect("a message");
        check(&m, i);
        m.delivery.ack(BasicAckOptions::default()).await.unwrap();
    }
    assert!(get(&ch, "deep").await.is_none());
}

/// RabbitMQ 3.12's `apply-to` per queue type: a `quorum_queues` policy shapes the quorum
/// queue only, a `classic_queues` one the classic queue only; both show in `/api/queues`.
#[tokio::test]
async fn policies_for_one_queue_type_apply_to_that_type_only() {
    let b = start_broker().await;
    for (name, apply_to, max) in [
        ("qq-cap", "quorum_queues", 1),
        ("cq-cap", "classic_queues", 2),
    ] {
        let (code, body) = api(&b)
            .put(
                &format!("/api/policies/%2f/{name}"),
                serde_json::json!({
                    "pattern": "^jobs\\.",
                    "apply-to": apply_to,
                    "definition": {"max-length": max, "overflow": "reject-publish"},
                }),
            )
            .await;
        assert_eq!(code, 201, "{body}");
    }
    assert_eq!(
        api(&b).ok("/api/policies/%2f/qq-cap").await["apply-to"],
        "quorum_queues"
    );
    let conn = connect(&b).await;
    let ch = channel(&conn).await;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    declare_quorum(&ch, "jobs.q", &[]).await;
    within(
        "declare classic",
        ch.queue_declare("jobs.c".into(), durable(), FieldTable::default()),
    )
    .await
    .unwrap();
    let mut accepted = Vec::new();
    for q in ["jobs.q", "jobs.c"] {
        let mut n = 0;
        for i in 0..3u8 {
            n += confirmed(&ch, q, &[i], BasicProperties::default()).await as u32;
        }
        accepted.push(n);
    }
    assert_eq!(accepted, [1, 2], "each queue took its own type's limit");
    assert_eq!(
        api(&b).ok("/api/queues/%2f/jobs.q").await["policy"],
        "qq-cap"
    );
    assert_eq!(
        api(&b).ok("/api/queues/%2f/jobs.c").await["policy"],
        "cq-cap"
    );
}
