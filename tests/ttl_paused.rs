//! Time-driven queue behaviour with paused tokio time: message TTL (also behind the head),
//! per-message expiration, x-expires and dead-lettering of expired messages. No sleeps: the
//! clock is advanced by hand.

use bytes::Bytes;
use std::sync::Arc;
use std::time::Duration;
use warrenmq::broker::exchange::{ExchangeSpec, ExchangeType};
use warrenmq::broker::message::Message;
use warrenmq::broker::vhost::{QueueDeclare, VHost};
use warrenmq::protocol::{AMQPValue, BasicProperties, FieldTable, LongString};

fn args(pairs: &[(&str, AMQPValue)]) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in pairs {
        t.insert((*k).into(), v.clone());
    }
    t
}

fn declare(vhost: &Arc<VHost>, name: &str, arguments: FieldTable) {
    vhost
        .declare_queue(
            QueueDeclare {
                name: name.into(),
                passive: false,
                durable: false,
                exclusive: false,
                auto_delete: false,
                arguments,
                server_named: false,
            },
            1,
        )
        .expect("declare");
}

fn msg(expiration: Option<&str>, body: &'static [u8]) -> Arc<Message> {
    let mut p = BasicProperties::default();
    if let Some(e) = expiration {
        p = p.with_expiration(e.into());
    }
    Message::new(String::new(), "work".into(), p, Bytes::from_static(body))
}

fn count(vhost: &VHost, q: &str) -> u32 {
    vhost
        .queues
        .get(q)
        .map(|q| q.message_count())
        .unwrap_or(u32::MAX)
}

/// Let the queue timer task run after the clock moved.
async fn settle() {
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
}

fn dlx_setup(vhost: &Arc<VHost>) {
    vhost
        .declare_exchange(
            ExchangeSpec {
                name: "dlx".into(),
                kind: ExchangeType::Fanout,
                durable: false,
                auto_delete: false,
                internal: false,
                arguments: FieldTable::default(),
            },
            false,
        )
        .unwrap();
    declare(vhost, "dlq", FieldTable::default());
    vhost
        .bind_queue("dlq", "dlx", "", FieldTable::default(), 1)
        .unwrap();
}

#[tokio::test(start_paused = true)]
async fn queue_ttl_expires_and_dead_letters() {
    let vhost = VHost::new("/", None);
    dlx_setup(&vhost);
    declare(
        &vhost,
        "work",
        args(&[
            ("x-message-ttl", AMQPValue::LongInt(1000)),
            (
                "x-dead-letter-exchange",
                AMQPValue::LongString(LongString::from(b"dlx".to_vec())),
            ),
        ]),
    );
    let q = vhost.queues.get("work").unwrap().clone();
    q.publish(msg(None, b"a"));
    q.publish(msg(None, b"b"));
    tokio::time::advance(Duration::from_millis(999)).await;
    settle().await;
    assert_eq!(count(&vhost, "work"), 2, "not yet expired");
    tokio::time::advance(Duration::from_millis(2)).await;
    settle().await;
    assert_eq!(count(&vhost, "work"), 0, "expired at the deadline");
    assert_eq!(count(&vhost, "dlq"), 2, "dead-lettered");
}

#[tokio::test(start_paused = true)]
async fn short_ttl_behind_long_ttl_expires_on_time() {
    let vhost = VHost::new("/", None);
    dlx_setup(&vhost);
    declare(
        &vhost,
        "work",
        args(&[(
            "x-dead-letter-exchange",
            AMQPValue::LongString(LongString::from(b"dlx".to_vec())),
        )]),
    );
    let q = vhost.queues.get("work").unwrap().clone();
    q.publish(msg(Some("60000"), b"long"));
    q.publish(msg(Some("100"), b"short"));
    tokio::time::advance(Duration::from_millis(101)).await;
    settle().await;
    assert_eq!(
        count(&vhost, "work"),
        1,
        "the short one left from behind the head"
    );
    assert_eq!(count(&vhost, "dlq"), 1);
    // The smaller of queue TTL and per-message expiration wins; the long one is still there.
    tokio::time::advance(Duration::from_secs(60)).await;
    settle().await;
    assert_eq!(count(&vhost, "work"), 0);
    assert_eq!(count(&vhost, "dlq"), 2);
}

#[tokio::test(start_paused = true)]
async fn ttl_zero_without_consumer_expires_at_once() {
    let vhost = VHost::new("/", None);
    declare(
        &vhost,
        "work",
        args(&[("x-message-ttl", AMQPValue::LongInt(0))]),
    );
    let q = vhost.queues.get("work").unwrap().clone();
    q.publish(msg(None, b"now-or-never"));
    assert_eq!(count(&vhost, "work"), 0);
}

#[tokio::test(start_paused = true)]
async fn unused_queue_with_x_expires_is_deleted() {
    let vhost = VHost::new("/", None);
    declare(
        &vhost,
        "tmp",
        args(&[("x-expires", AMQPValue::LongInt(5000))]),
    );
    tokio::time::advance(Duration::from_millis(4000)).await;
    settle().await;
    // A redeclare counts as use and restarts the clock.
    declare(
        &vhost,
        "tmp",
        args(&[("x-expires", AMQPValue::LongInt(5000))]),
    );
    tokio::time::advance(Duration::from_millis(4000)).await;
    settle().await;
    assert!(vhost.queues.contains_key("tmp"), "used 4 s ago");
    tokio::time::advance(Duration::from_millis(1001)).await;
    settle().await;
    assert!(
        !vhost.queues.contains_key("tmp"),
        "deleted after 5 s unused"
    );
}
