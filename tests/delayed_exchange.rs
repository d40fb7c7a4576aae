//! The `x-delayed-message` exchange type: declaration rules, messages held until their
//! `x-delay` ends and then routed as the underlying type, one timer per exchange, and
//! held persistent messages surviving a restart. Timing tests run on paused tokio time;
//! the lapin tests check what a real client sees.

mod common;

use bytes::Bytes;
use common::*;
use lapin::options::*;
use std::sync::Arc;
use std::time::Duration;
use warrenmq::broker::exchange::{ExchangeSpec, ExchangeType};
use warrenmq::broker::message::Message;
use warrenmq::broker::vhost::{QueueDeclare, VHost};
use warrenmq::protocol::{AMQPValue, BasicProperties, FieldTable, LongString};

fn ls(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s.as_bytes().to_vec()))
}

fn table(pairs: &[(&str, AMQPValue)]) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in pairs {
        t.insert((*k).into(), v.clone());
    }
    t
}

fn delayed_spec(name: &str, base: &str) -> ExchangeSpec {
    let arguments = table(&[("x-delayed-type", ls(base))]);
    ExchangeSpec {
        name: name.into(),
        kind: ExchangeType::declared("x-delayed-message", &arguments).expect("valid type"),
        durable: false,
        auto_delete: false,
        internal: false,
        arguments,
    }
}

fn setup(base: &str, binding_key: &str) -> Arc<VHost> {
    let vhost = VHost::new("/", None);
    vhost
        .declare_exchange(delayed_spec("dx", base), false)
        .expect("declare");
    vhost
        .declare_queue(
            QueueDeclare {
                name: "q".into(),
                passive: false,
                durable: false,
                exclusive: false,
                auto_delete: false,
                arguments: FieldTable::default(),
                server_named: false,
            },
            1,
        )
        .expect("queue");
    vhost
        .bind_queue("q", "dx", binding_key, FieldTable::default(), 1)
        .expect("bind");
    vhost
}

fn msg(key: &str, delay: Option<AMQPValue>) -> Arc<Message> {
    let mut p = BasicProperties::default();
    if let Some(d) = delay {
        p = p.with_headers(table(&[("x-delay", d)]));
    }
    Message::new("dx".into(), key.into(), p, Bytes::from_static(b"m"))
}

/// Publish as a channel does: hold if delayed, else route now. Returns "held".
fn publish(vhost: &Arc<VHost>, m: Arc<Message>) -> bool {
    let x = vhost.exchange("dx").expect("exchange");
    if vhost.hold_delayed(&x, &m).is_some() {
        return true;
    }
    let mut m = m;
    let mut queues = Vec::new();
    vhost.route_publish(&x, &mut m, &mut queues);
    for q in queues {
        q.publish(m.clone());
    }
    false
}

fn count(vhost: &VHost) -> u32 {
    vhost
        .queues
        .get("q")
        .map(|q| q.message_count())
        .unwrap_or(u32::MAX)
}

fn held(vhost: &VHost) -> usize {
    vhost
        .exchange("dx")
        .expect("exchange")
        .messages_delayed()
        .expect("a delayed exchange")
}

/// Advance paused time and let the exchange's timer task run.
async fn advance(ms: u64) {
    tokio::time::advance(Duration::from_millis(ms)).await;
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
}

#[tokio::test(start_paused = true)]
async fn held_until_the_delay_ends_then_routed() {
    let vhost = setup("direct", "k");
    assert!(publish(&vhost, msg("k", Some(AMQPValue::LongInt(1000)))));
    assert_eq!((count(&vhost), held(&vhost)), (0, 1));
    advance(999).await;
    assert_eq!((count(&vhost), held(&vhost)), (0, 1), "not yet due");
    advance(2).await;
    assert_eq!((count(&vhost), held(&vhost)), (1, 0), "routed when due");
}

#[tokio::test(start_paused = true)]
async fn no_positive_delay_routes_at_once() {
    let vhost = setup("direct", "k");
    for d in [
        None,
        Some(AMQPValue::LongInt(0)),
        Some(AMQPValue::LongInt(-500)),
        Some(ls("1000")),
    ] {
        assert!(
            !publish(&vhost, msg("k", d.clone())),
            "{d:?} is not a delay"
        );
    }
    assert_eq!(count(&vhost), 4);
    // Any integer width counts.
    assert!(publish(&vhost, msg("k", Some(AMQPValue::LongLongInt(10)))));
    assert!(publish(&vhost, msg("k", Some(AMQPValue::ShortInt(10)))));
    advance(11).await;
    assert_eq!(count(&vhost), 6);
}

#[tokio::test(start_paused = true)]
async fn released_in_due_order_by_one_timer() {
    let vhost = setup("direct", "k");
    // A long delay first: the timer sleeps towards it, and must wake earlier for the
    // shorter ones published after.
    publish(&vhost, msg("k", Some(AMQPValue::LongInt(5000))));
    publish(&vhost, msg("k", Some(AMQPValue::LongInt(3000))));
    publish(&vhost, msg("k", Some(AMQPValue::LongInt(100))));
    advance(101).await;
    assert_eq!(count(&vhost), 1);
    advance(2900).await;
    assert_eq!(count(&vhost), 2);
    advance(2000).await;
    assert_eq!((count(&vhost), held(&vhost)), (3, 0));
}

#[tokio::test(start_paused = true)]
async fn routes_as_the_underlying_topic_type() {
    let vhost = setup("topic", "a.*");
    publish(&vhost, msg("a.b", Some(AMQPValue::LongInt(50))));
    publish(&vhost, msg("x.y", Some(AMQPValue::LongInt(50))));
    publish(&vhost, msg("a.b.c", Some(AMQPValue::LongInt(50))));
    advance(51).await;
    assert_eq!(
        (count(&vhost), held(&vhost)),
        (1, 0),
        "only a.b matches a.*"
    );
}

#[tokio::test(start_paused = true)]
async fn routes_as_the_underlying_fanout_type() {
    let vhost = setup("fanout", "ignored");
    publish(&vhost, msg("whatever", Some(AMQPValue::LongInt(50))));
    advance(51).await;
    assert_eq!(count(&vhost), 1);
}

#[tokio::test(start_paused = true)]
async fn deleting_the_exchange_drops_what_it_holds() {
    let vhost = setup("direct", "k");
    publish(&vhost, msg("k", Some(AMQPValue::LongInt(100))));
    vhost.delete_exchange("dx", false).expect("delete");
    advance(200).await;
    assert_eq!(count(&vhost), 0);
}

#[tokio::test(start_paused = true)]
async fn binding_added_during_the_delay_is_used() {
    let vhost = setup("direct", "k");
    publish(&vhost, msg("late", Some(AMQPValue::LongInt(100))));
    vhost
        .bind_queue("q", "dx", "late", FieldTable::default(), 1)
        .expect("bind");
    advance(101).await;
    assert_eq!(count(&vhost), 1, "routing is decided when the delay ends");
}

#[test]
fn declaration_rules() {
    let missing = ExchangeType::declared("x-delayed-message", &FieldTable::default())
        .expect_err("needs x-delayed-type");
    assert_eq!(missing.code as u16, 406);
    assert_eq!(
        missing.text,
        "Invalid argument, 'x-delayed-type' must be an existing exchange type"
    );
    let not_a_string = ExchangeType::declared(
        "x-delayed-message",
        &table(&[("x-delayed-type", AMQPValue::LongInt(1))]),
    )
    .expect_err("406");
    assert_eq!(not_a_string.code as u16, 406);
    let nested = ExchangeType::declared(
        "x-delayed-message",
        &table(&[("x-delayed-type", ls("x-delayed-message"))]),
    )
    .expect_err("406");
    assert_eq!(nested.code as u16, 406);
    let unknown = ExchangeType::declared(
        "x-delayed-message",
        &table(&[("x-delayed-type", ls("bogus"))]),
    )
    .expect_err("503");
    assert_eq!(unknown.code as u16, 503);
    for base in ["direct", "fanout", "topic", "headers"] {
        let t =
            ExchangeType::declared("x-delayed-message", &table(&[("x-delayed-type", ls(base))]))
                .expect("valid");
        assert_eq!(t.as_str(), "x-delayed-message");
        assert_eq!(t.routing_kind().as_str(), base);
    }
}

#[test]
fn redeclare_with_another_underlying_type_is_406() {
    let vhost = VHost::new("/", None);
    vhost
        .declare_exchange(delayed_spec("dx", "direct"), false)
        .expect("declare");
    vhost
        .declare_exchange(delayed_spec("dx", "direct"), false)
        .expect("equivalent redeclare");
    let Err(err) = vhost.declare_exchange(delayed_spec("dx", "topic"), false) else {
        panic!("inequivalent redeclare accepted");
    };
    assert_eq!(err.code as u16, 406);
    assert!(err.text.contains("x-delayed-type"), "{}", err.text);
}

// ---- real clients ----

fn lapin_args(pairs: &[(&str, lapin::types::AMQPValue)]) -> lapin::types::FieldTable {
    let mut t = lapin::types::FieldTable::default();
    for (k, v) in pairs {
        t.insert((*k).into(), v.clone());
    }
    t
}

fn delayed_type(base: &str) -> lapin::types::FieldTable {
    lapin_args(&[(
        "x-delayed-type",
        lapin::types::AMQPValue::LongString(base.into()),
    )])
}

async fn declare_delayed(ch: &lapin::Channel, name: &str, durable: bool) {
    within(
        "exchange.declare",
        ch.exchange_declare(
            name.into(),
            lapin::ExchangeKind::Custom("x-delayed-message".into()),
            ExchangeDeclareOptions {
                durable,
                ..Default::default()
            },
            delayed_type("direct"),
        ),
    )
    .await
    .expect("declare delayed exchange");
}

async fn declare_bound_queue(ch: &lapin::Channel, q: &str, x: &str, durable: bool) {
    within(
        "queue.declare",
        ch.queue_declare(
            q.into(),
            QueueDeclareOptions {
                durable,
                ..Default::default()
            },
            lapin::types::FieldTable::default(),
        ),
    )
    .await
    .expect("queue");
    within(
        "queue.bind",
        ch.queue_bind(
            q.into(),
            x.into(),
            q.into(),
            QueueBindOptions::default(),
            lapin::types::FieldTable::default(),
        ),
    )
    .await
    .expect("bind");
}

/// Publish under confirms; returns (acked, returned reply code).
async fn confirmed(
    ch: &lapin::Channel,
    x: &str,
    key: &str,
    delay: Option<i32>,
    persistent: bool,
    mandatory: bool,
) -> (bool, Option<u16>) {
    let mut props = lapin::BasicProperties::default();
    if let Some(d) = delay {
        props = props.with_headers(lapin_args(&[(
            "x-delay",
            lapin::types::AMQPValue::LongInt(d),
        )]));
    }
    if persistent {
        props = props.with_delivery_mode(2);
    }
    let confirm = within(
        "publish",
        ch.basic_publish(
            x.into(),
            key.into(),
            BasicPublishOptions {
                mandatory,
                ..Default::default()
            },
            b"later",
            props,
        ),
    )
    .await
    .expect("publish");
    let c = within("confirm", confirm).await.expect("confirm");
    (c.is_ack(), c.take_message().map(|m| m.reply_code))
}

async fn confirm_channel(conn: &lapin::Connection) -> lapin::Channel {
    let ch = channel(conn).await;
    within(
        "confirm.select",
        ch.confirm_select(ConfirmSelectOptions::default()),
    )
    .await
    .expect("confirms");
    ch
}

#[tokio::test]
async fn lapin_delayed_message_arrives_after_its_delay() {
    let b = start_broker().await;
    let conn = connect(&b).await;
    let ch = confirm_channel(&conn).await;
    declare_delayed(&ch, "later", false).await;
    declare_bound_queue(&ch, "jobs", "later", false).await;
    let started = std::time::Instant::now();
    // Mandatory and delayed: not returned (routing happens when the delay ends).
    let (acked, returned) = confirmed(&ch, "later", "jobs", Some(300), false, true).await;
    assert!(acked);
    assert_eq!(returned, None);
    assert_eq!(ready_count(&ch, "jobs").await, 0, "held by the exchange");
    // Without x-delay it goes through at once.
    let (acked, _) = confirmed(&ch, "later", "jobs", None, false, false).await;
    assert!(acked);
    assert_eq!(ready_count(&ch, "jobs").await, 1);
    // Not delayed and unroutable with mandatory: returned as usual.
    let (_, returned) = confirmed(&ch, "later", "nowhere", None, false, true).await;
    assert_eq!(returned, Some(312));

    let mut consumer = within(
        "consume",
        ch.basic_consume(
            "jobs".into(),
            "c".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            lapin::types::FieldTable::default(),
        ),
    )
    .await
    .expect("consume");
    let first = next(&mut consumer).await;
    assert!(
        first.properties.headers().is_none(),
        "the undelayed one first"
    );
    let second = next(&mut consumer).await;
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "arrived after {:?}",
        started.elapsed()
    );
    let headers = second.properties.headers().as_ref().expect("headers kept");
    assert_eq!(
        headers.inner().get("x-delay"),
        Some(&lapin::types::AMQPValue::LongInt(300))
    );
    assert_eq!(second.exchange.as_str(), "later");
}

#[tokio::test]
async fn lapin_declare_without_delayed_type_is_406() {
    let b = start_broker().await;
    let conn = connect(&b).await;
    let ch = channel(&conn).await;
    let err = within(
        "exchange.declare",
        ch.exchange_declare(
            "bad".into(),
            lapin::ExchangeKind::Custom("x-delayed-message".into()),
            ExchangeDeclareOptions::default(),
            lapin::types::FieldTable::default(),
        ),
    )
    .await
    .expect_err("406");
    assert_eq!(reply_code(&err), Some(406), "{err:?}");
    assert!(
        format!("{err:?}").contains("'x-delayed-type' must be an existing exchange type"),
        "{err:?}"
    );
}

#[tokio::test]
async fn management_shows_the_delayed_type_and_arguments() {
    let b = start_broker().await;
    let conn = connect(&b).await;
    let ch = confirm_channel(&conn).await;
    declare_delayed(&ch, "later", true).await;
    declare_bound_queue(&ch, "jobs", "later", true).await;
    confirmed(&ch, "later", "jobs", Some(60_000), false, false).await;
    let api = common::http::api(&b);
    let x = api.ok("/api/exchanges/%2f/later").await;
    assert_eq!(x["type"], "x-delayed-message");
    assert_eq!(x["arguments"]["x-delayed-type"], "direct");
    assert_eq!(x["messages_delayed"], 1);
    let defs = api.ok("/api/definitions").await;
    let exported = defs["exchanges"]
        .as_array()
        .expect("exchanges")
        .iter()
        .find(|e| e["name"] == "later")
        .expect("exported")
        .clone();
    assert_eq!(exported["type"], "x-delayed-message");
    assert_eq!(exported["arguments"]["x-delayed-type"], "direct");
}

/// Open the store of a stopped broker (sled may hold its lock a moment after shutdown).
async fn open_store(dir: &std::path::Path) -> warrenmq::store::Store {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        match warrenmq::store::Store::open(dir, 8 * 1024 * 1024) {
            Ok(s) => return s,
            Err(e) if std::time::Instant::now() < deadline => {
                let _ = e;
                within("retry", tokio::time::sleep(Duration::from_millis(20))).await;
            }
            Err(e) => panic!("store opens: {e}"),
        }
    }
}

#[tokio::test]
async fn held_persistent_messages_survive_a_restart() {
    let mut b = start_broker().await;
    {
        let conn = connect(&b).await;
        let ch = confirm_channel(&conn).await;
        declare_delayed(&ch, "later", true).await;
        declare_bound_queue(&ch, "jobs", "later", true).await;
        // Persistent: kept. Transient: not kept across the restart.
        confirmed(&ch, "later", "jobs", Some(60_000), true, false).await;
        confirmed(&ch, "later", "jobs", Some(60_000), false, false).await;
        assert_eq!(ready_count(&ch, "jobs").await, 0);
    }
    b.stop().await;
    let dir = b.dir;
    {
        let store = open_store(dir.path()).await;
        let held = store.recover_delayed("/", "later").expect("readable");
        assert_eq!(held.len(), 1, "only the persistent message is stored");
        // A message that fell due while the broker was down.
        let due = Message::new(
            "later".into(),
            "jobs".into(),
            BasicProperties::default().with_delivery_mode(2),
            Bytes::from_static(b"overdue"),
        );
        assert!(store.put_delayed("/", "later", 1, tokio::time::Instant::now(), &due));
        store.flush();
    }
    let b = start_broker_with(test_config(dir.path()), dir).await;
    let conn = connect(&b).await;
    let ch = channel(&conn).await;
    // Poll (bounded) until the overdue one has been routed.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while ready_count(&ch, "jobs").await == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "overdue message never routed"
        );
        within("tick", tokio::time::sleep(Duration::from_millis(20))).await;
    }
    let m = within(
        "get",
        ch.basic_get("jobs".into(), BasicGetOptions { no_ack: true }),
    )
    .await
    .expect("get")
    .expect("routed");
    assert_eq!(m.delivery.data, b"overdue");
    let x = common::http::api(&b).ok("/api/exchanges/%2f/later").await;
    assert_eq!(x["messages_delayed"], 1, "the long one is still held");
}
