//! Queue features through lapin: priorities, dead-lettering with x-death, length limits and
//! overflow, consumer priorities, single active consumer, delivery limits, ack timeouts.
//! (Time-driven expiry is covered with paused time in ttl_paused.rs.)

mod common;
use common::*;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::BasicProperties;

fn table(pairs: &[(&str, AMQPValue)]) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in pairs {
        t.insert((*k).into(), v.clone());
    }
    t
}

fn s(v: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(v.as_bytes().to_vec()))
}

async fn declare_args(ch: &lapin::Channel, name: &str, args: FieldTable) {
    within(
        "declare",
        ch.queue_declare(name.into(), QueueDeclareOptions::default(), args),
    )
    .await
    .expect("declare");
}

async fn publish_props(
    ch: &lapin::Channel,
    key: &str,
    body: &[u8],
    props: BasicProperties,
) -> lapin::Confirmation {
    let c = within(
        "publish",
        ch.basic_publish(
            "".into(),
            key.into(),
            BasicPublishOptions::default(),
            body,
            props,
        ),
    )
    .await
    .expect("publish");
    within("confirm", c).await.expect("confirm")
}

async fn get(ch: &lapin::Channel, q: &str) -> Option<lapin::message::BasicGetMessage> {
    within(
        "get",
        ch.basic_get(q.into(), BasicGetOptions { no_ack: false }),
    )
    .await
    .expect("get")
}

/// A channel in confirm mode, so every publish is settled before the next step.
async fn confirm_channel(conn: &lapin::Connection) -> lapin::Channel {
    let ch = channel(conn).await;
    within(
        "confirm.select",
        ch.confirm_select(ConfirmSelectOptions::default()),
    )
    .await
    .unwrap();
    ch
}

#[tokio::test]
async fn priorities_highest_first_fifo_within_capped_at_max() {
    let b = start_broker().await;
    let conn = connect(&b).await;
    let ch = confirm_channel(&conn).await;
    declare_args(
        &ch,
        "prio",
        table(&[("x-max-priority", AMQPValue::ShortShortUInt(5))]),
    )
    .await;
    for (body, p) in [
        (b"low1", None),
        (b"high", Some(9u8)),
        (b"mid1", Some(3)),
        (b"low2", Some(0)),
        (b"mid2", Some(3)),
        (b"max5", Some(5)),
    ] {
        let mut props = BasicProperties::default();
        if let Some(p) = p {
            props = props.with_priority(p);
        }
        publish_props(&ch, "prio", body, props).await;
    }
    let mut order = Vec::new();
    while let Some(m) = get(&ch, "prio").await {
        order.push(String::from_utf8(m.delivery.data.clone()).unwrap());
    }
    // 9 counts as 5 (the max) and keeps its FIFO place before the real 5.
    assert_eq!(order, vec!["high", "max5", "mid1", "mid2", "low1", "low2"]);
}

fn x_death(d: &lapin::message::Delivery) -> Vec<FieldTable> {
    let headers = d.properties.headers().as_ref().expect("headers");
    match headers.inner().get("x-death") {
        Some(AMQPValue::FieldArray(a)) => a
            .as_slice()
            .iter()
            .map(|v| match v {
                AMQPValue::FieldTable(t) => t.clone(),
                other => panic!("x-death entry {other:?}"),
            })
            .collect(),
        other => panic!("x-death {other:?}"),
    }
}

fn str_field(t: &FieldTable, k: &str) -> String {
    match t.inner().get(k) {
        Some(AMQPValue::LongString(s)) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        other => panic!("{k}: {other:?}"),
    }
}

#[tokio::test]
async fn rejected_messages_are_dead_lettered_with_x_death() {
    let b = start_broker().await;
    let conn = connect(&b).await;
    let ch = confirm_channel(&conn).await;
    within(
        "dlx",
        ch.exchange_declare(
            "agent_dlx".into(),
            lapin::ExchangeKind::Direct,
            Default::default(),
            FieldTable::default(),
        ),
    )
    .await
    .unwrap();
    declare_args(&ch, "failed", FieldTable::default()).await;
    within(
        "bind",
        ch.queue_bind(
            "failed".into(),
            "agent_dlx".into(),
            "failed_tasks".into(),
            Default::default(),
            FieldTable::default(),
        ),
    )
    .await
    .unwrap();
    declare_args(
        &ch,
        "agent_tasks",
        table(&[
            ("x-dead-letter-exchange", s("agent_dlx")),
            ("x-dead-letter-routing-key", s("failed_tasks")),
            ("x-max-priority", AMQPValue::LongInt(10)),
            ("x-message-ttl", AMQPValue::LongInt(300_000)),
        ]),
    )
    .await;
    publish_props(
        &ch,
        "agent_tasks",
        b"task-1",
        BasicProperties::default().with_expiration("60000".into()),
    )
    .await;
    let m = get(&ch, "agent_tasks").await.expect("task");
    within(
        "reject",
        m.delivery.reject(BasicRejectOptions { requeue: false }),
    )
    .await
    .unwrap();
    let dead = get(&ch, "failed").await.expect("dead-lettered");
    let d = &dead.delivery;
    assert_eq!(d.data, b"task-1");
    assert_eq!(d.exchange.as_str(), "agent_dlx");
    assert_eq!(d.routing_key.as_str(), "failed_tasks");
    assert!(d.properties.expiration().is_none(), "expiration removed");
    let deaths = x_death(d);
    assert_eq!(deaths.len(), 1);
    let e = &deaths[0];
    assert_eq!(str_field(e, "queue"), "agent_tasks");
    assert_eq!(str_field(e, "reason"), "rejected");
    assert_eq!(str_field(e, "exchange"), "");
    assert_eq!(str_field(e, "original-expiration"), "60000");
    assert_eq!(e.inner().get("count"), Some(&AMQPValue::LongLongInt(1)));
    assert!(matches!(e.inner().get("time"), Some(AMQPValue::Timestamp(t)) if *t > 1_600_000_000));
    match e.inner().get("routing-keys") {
        Some(AMQPValue::FieldArray(keys)) => assert_eq!(keys.as_slice(), &[s("agent_tasks")]),
        other => panic!("routing-keys {other:?}"),
    }
    let h = d.properties.headers().as_ref().unwrap();
    assert_eq!(str_field(h, "x-first-death-reason"), "rejected");
    assert_eq!(str_field(h, "x-first-death-queue"), "agent_tasks");
    assert_eq!(str_field(h, "x-last-death-reason"), "rejected");
}

#[tokio::test]
async fn missing_dead_letter_exchange_drops_silently() {
    let b = start_broker().await;
    let conn = connect(&b).await;
    let ch = confirm_channel(&conn).await;
    declare_args(
        &ch,
        "w",
        table(&[("x-dead-letter-exchange", s("nonexistent"))]),
    )
    .await;
    publish_props(&ch, "w", b"x", BasicProperties::default()).await;
    let m = get(&ch, "w").await.unwrap();
    within(
        "nack",
        m.delivery.nack(BasicNackOptions {
            requeue: false,
            multiple: false,
        }),
    )
    .await
    .unwrap();
    assert_eq!(ready_count(&ch, "w").await, 0);
}

#[tokio::test]
async fn max_length_drop_head_dead_letters_the_oldest() {
    let b = start_broker().await;
    let conn = connect(&b).await;
    let ch = confirm_channel(&conn).await;
    declare_args(&ch, "dlq", FieldTable::default()).await;
    declare_args(
        &ch,
        "bounded",
        table(&[
            ("x-max-length", AMQPValue::LongInt(2)),
            ("x-dead-letter-exchange", s("")),
            ("x-dead-letter-routing-key", s("dlq")),
        ]),
    )
    .await;
    for body in [b"1", b"2", b"3"] {
        publish_props(&ch, "bounded", body, BasicProperties::default()).await;
    }
    assert_eq!(ready_count(&ch, "bounded").await, 2);
    let dropped = get(&ch, "dlq").await.expect("oldest dead-lettered");
    assert_eq!(dropped.delivery.data, b"1");
    assert_eq!(
        str_field(&x_death(&dropped.delivery)[0], "reason"),
        "maxlen"
    );
    assert_eq!(get(&ch, "bounded").await.unwrap().delivery.data, b"2");
}

#[tokio::test]
async fn max_length_bytes_counts_body_bytes() {
    let b = start_broker().await;
    let conn = connect(&b).await;
    let ch = confirm_channel(&conn).await;
    declare_args(
        &ch,
        "bytes",
        table(&[("x-max-length-bytes", AMQPValue::LongInt(10))]),
    )
    .await;
    publish_props(&ch, "bytes", b"123456", BasicProperties::default()).await;
    publish_props(&ch, "bytes", b"7890", BasicProperties::default()).await;
    publish_props(&ch, "bytes", b"x", BasicProperties::default()).await;
    assert_eq!(
        ready_count(&ch, "bytes").await,
        2,
        "11 bytes > 10: the head went"
    );
}

#[tokio::test]
async fn reject_publish_nacks_under_confirms() {
    let b = start_broker().await;
    let conn = connect(&b).await;
    let ch = confirm_channel(&conn).await;
    declare_args(
        &ch,
        "full",
        table(&[
            ("x-max-length", AMQPValue::LongInt(1)),
            ("x-overflow", s("reject-publish")),
        ]),
    )
    .await;
    assert!(publish_props(&ch, "full", b"1", BasicProperties::default())
        .await
        .is_ack());
    assert!(publish_props(&ch, "full", b"2", BasicProperties::default())
        .await
        .is_nack());
    assert_eq!(ready_count(&ch, "full").await, 1);
    assert_eq!(get(&ch, "full").await.unwrap().delivery.data, b"1");
    assert!(publish_props(&ch, "full", b"3", BasicProperties::default())
        .await
        .is_ack());
}

#[tokio::test]
async fn reject_publish_dlx_dead_letters_the_refused_message() {
    let b = start_broker().await;
    let conn = connect(&b).await;
    let ch = confirm_channel(&conn).await;
    declare_args(&ch, "overflow", FieldTable::default()).await;
    declare_args(
        &ch,
        "full",
        table(&[
            ("x-max-length", AMQPValue::LongInt(1)),
            ("x-overflow", s("reject-publish-dlx")),
            ("x-dead-letter-exchange", s("")),
            ("x-dead-letter-routing-key", s("overflow")),
        ]),
    )
    .await;
    publish_props(&ch, "full", b"1", BasicProperties::default()).await;
    assert!(publish_props(&ch, "full", b"2", BasicProperties::default())
        .await
        .is_nack());
    let m = get(&ch, "overflow")
        .await
        .expect("refused message dead-lettered");
    assert_eq!(m.delivery.data, b"2");
    assert_eq!(str_field(&x_death(&m.delivery)[0], "reason"), "maxlen");
}

async fn consume_with(
    ch: &lapin::Channel,
    q: &str,
    tag: &str,
    args: FieldTable,
) -> lapin::Consumer {
    within(
        "consume",
        ch.basic_consume(q.into(), tag.into(), BasicConsumeOptions::default(), args),
    )
    .await
    .expect("consume")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn higher_priority_consumers_get_messages_first() {
    let b = start_broker().await;
    let conn = connect(&b).await;
    let ch = confirm_channel(&conn).await;
    declare_args(&ch, "cp", FieldTable::default()).await;
    let low_ch = channel(&conn).await;
    let high_ch = channel(&conn).await;
    within("qos", high_ch.basic_qos(2, BasicQosOptions::default()))
        .await
        .unwrap();
    let mut low = consume_with(&low_ch, "cp", "low", FieldTable::default()).await;
    let mut high = consume_with(
        &high_ch,
        "cp",
        "high",
        table(&[("x-priority", AMQPValue::LongInt(10))]),
    )
    .await;
    for i in 0..3u8 {
        publish_props(&ch, "cp", &[i], BasicProperties::default()).await;
    }
    // The high-priority consumer takes what its prefetch allows; the rest overflows to low.
    assert_eq!(next(&mut high).await.data, [0]);
    assert_eq!(next(&mut high).await.data, [1]);
    assert_eq!(next(&mut low).await.data, [2]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_active_consumer_gets_everything_and_hands_over() {
    let b = start_broker().await;
    let conn = connect(&b).await;
    let ch = confirm_channel(&conn).await;
    declare_args(
        &ch,
        "sac",
        table(&[("x-single-active-consumer", AMQPValue::Boolean(true))]),
    )
    .await;
    let ch1 = channel(&conn).await;
    let ch2 = channel(&conn).await;
    let mut first = consume_with(&ch1, "sac", "first", FieldTable::default()).await;
    let mut second = consume_with(&ch2, "sac", "second", FieldTable::default()).await;
    for i in 0..3u8 {
        publish_props(&ch, "sac", &[i], BasicProperties::default()).await;
    }
    for i in 0..3u8 {
        let d = next(&mut first).await;
        assert_eq!(d.data, [i]);
        within("ack", d.ack(BasicAckOptions::default()))
            .await
            .unwrap();
    }
    within(
        "cancel",
        ch1.basic_cancel("first".into(), BasicCancelOptions::default()),
    )
    .await
    .unwrap();
    publish_props(&ch, "sac", b"next", BasicProperties::default()).await;
    assert_eq!(next(&mut second).await.data, b"next");
    // An exclusive consume on a single-active-consumer queue is refused.
    let ch3 = channel(&conn).await;
    let err = within(
        "exclusive",
        ch3.basic_consume(
            "sac".into(),
            "x".into(),
            BasicConsumeOptions {
                exclusive: true,
                ..Default::default()
            },
            FieldTable::default(),
        ),
    )
    .await
    .expect_err("refused");
    assert_eq!(reply_code(&err), Some(403));
}

#[tokio::test]
async fn delivery_limit_counts_returns_and_dead_letters_poison_tasks() {
    let b = start_broker().await;
    let conn = connect(&b).await;
    let ch = confirm_channel(&conn).await;
    declare_args(&ch, "poison", FieldTable::default()).await;
    declare_args(
        &ch,
        "tasks",
        table(&[
            ("x-delivery-limit", AMQPValue::LongInt(2)),
            ("x-dead-letter-exchange", s("")),
            ("x-dead-letter-routing-key", s("poison")),
        ]),
    )
    .await;
    publish_props(&ch, "tasks", b"boom", BasicProperties::default()).await;
    for expected in [None, Some(1i64), Some(2)] {
        let m = get(&ch, "tasks").await.expect("delivered again");
        let count = m
            .delivery
            .properties
            .headers()
            .as_ref()
            .and_then(|h| h.inner().get("x-delivery-count").cloned());
        assert_eq!(count, expected.map(AMQPValue::LongLongInt));
        assert_eq!(m.delivery.redelivered, expected.is_some());
        within(
            "nack",
            m.delivery.nack(BasicNackOptions {
                requeue: true,
                multiple: false,
            }),
        )
        .await
        .unwrap();
    }
    assert!(
        get(&ch, "tasks").await.is_none(),
        "third return exceeded the limit of 2"
    );
    let dead = get(&ch, "poison").await.expect("dead-lettered");
    assert_eq!(
        str_field(&x_death(&dead.delivery)[0], "reason"),
        "delivery_limit"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ack_timeout_cancels_the_consumer_and_requeues() {
    let b = start_broker().await;
    let conn = connect(&b).await;
    let ch = confirm_channel(&conn).await;
    declare_args(&ch, "slow", FieldTable::default()).await;
    publish_props(&ch, "slow", b"job", BasicProperties::default()).await;
    let worker = channel(&conn).await;
    let mut c = consume_with(
        &worker,
        "slow",
        "gpu",
        table(&[("x-consumer-timeout", AMQPValue::LongInt(200))]),
    )
    .await;
    let d = next(&mut c).await;
    assert!(!d.redelivered);
    // lapin advertises consumer_cancel_notify: the consumer is cancelled (its stream ends)
    // and the job goes back to the queue.
    use futures_lite::StreamExt;
    let end = within("cancel notification", c.next()).await;
    assert!(
        end.is_none(),
        "consumer stream ends on basic.cancel, got {end:?}"
    );
    let again = get(&ch, "slow").await.expect("requeued");
    assert!(again.delivery.redelivered);
}

#[tokio::test]
async fn invalid_expiration_is_406() {
    let b = start_broker().await;
    let conn = connect(&b).await;
    let ch = confirm_channel(&conn).await;
    declare_args(&ch, "e", FieldTable::default()).await;
    let res = within(
        "publish",
        ch.basic_publish(
            "".into(),
            "e".into(),
            BasicPublishOptions::default(),
            b"x",
            BasicProperties::default().with_expiration("soon".into()),
        ),
    )
    .await;
    let err = match res {
        Ok(confirm) => within("confirm", confirm)
            .await
            .expect_err("channel closed"),
        Err(e) => e,
    };
    assert_eq!(reply_code(&err), Some(406), "{err:?}");
}

#[tokio::test]
async fn ack_timeout_without_cancel_notify_closes_the_channel_with_406() {
    use amq_protocol::frame::{AMQPContentHeader, AMQPFrame};
    use amq_protocol::protocol::{basic, queue, AMQPClass};
    let b = start_broker().await;
    // The raw client advertises no capabilities, so RabbitMQ's behaviour applies.
    let mut r = common::raw::Raw::open(b.addr()).await;
    r.open_channel(1).await;
    r.send(AMQPFrame::Method(
        1,
        AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
            queue: "slow".into(),
            passive: false,
            durable: false,
            exclusive: false,
            auto_delete: false,
            nowait: true,
            arguments: table(&[("x-consumer-timeout", AMQPValue::LongInt(100))]),
        })),
    ))
    .await;
    r.send(AMQPFrame::Method(
        1,
        AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
            exchange: "".into(),
            routing_key: "slow".into(),
            mandatory: false,
            immediate: false,
        })),
    ))
    .await;
    r.send(AMQPFrame::Header(
        1,
        AMQPContentHeader {
            class_id: 60,
            body_size: 3,
            properties: Default::default(),
        },
    ))
    .await;
    r.send(AMQPFrame::Body(1, b"job".to_vec())).await;
    r.send(AMQPFrame::Method(
        1,
        AMQPClass::Basic(basic::AMQPMethod::Consume(basic::Consume {
            queue: "slow".into(),
            consumer_tag: "gpu".into(),
            no_local: false,
            no_ack: false,
            exclusive: false,
            nowait: false,
            arguments: FieldTable::default(),
        })),
    ))
    .await;
    // The delivery arrives, is never acked, and the channel is closed with 406.
    let (code, _, _) = r.expect_channel_close(1).await;
    assert_eq!(code, 406);
    // The message went back to the queue.
    let conn = connect(&b).await;
    let ch = channel(&conn).await;
    let m = get(&ch, "slow").await.expect("requeued");
    assert!(m.delivery.redelivered);
}
