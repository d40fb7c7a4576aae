//! Queues through lapin: naming, declare-ok counts, equivalence, exclusivity, auto-delete,
//! bindings, purge/delete, the "last declared queue" rule, argument validation and
//! consumer cancel notification.

mod common;
use common::*;
use futures_lite::StreamExt;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Connection};

/// The reply code of an operation that must fail with a protocol error.
fn code<T>(r: Result<T, lapin::Error>) -> u16 {
    match r {
        Ok(_) => panic!("expected an AMQP error, the operation succeeded"),
        Err(e) => reply_code(&e).unwrap_or_else(|| panic!("not a protocol error: {e:?}")),
    }
}

/// Reply code and reply text of an operation that must fail with a protocol error.
fn code_and_text<T>(r: Result<T, lapin::Error>) -> (u16, String) {
    match r {
        Ok(_) => panic!("expected an AMQP error, the operation succeeded"),
        Err(e) => match e.kind() {
            lapin::ErrorKind::ProtocolError(amqp) => {
                (amqp.get_id(), amqp.get_message().as_str().to_string())
            }
            _ => panic!("not a protocol error: {e:?}"),
        },
    }
}

async fn qdeclare(
    ch: &Channel,
    name: &str,
    options: QueueDeclareOptions,
    args: FieldTable,
) -> Result<lapin::Queue, lapin::Error> {
    within(
        "queue.declare",
        ch.queue_declare(name.into(), options, args),
    )
    .await
}

async fn passive(ch: &Channel, name: &str) -> Result<lapin::Queue, lapin::Error> {
    qdeclare(
        ch,
        name,
        QueueDeclareOptions {
            passive: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
}

async fn bind(ch: &Channel, queue: &str, exchange: &str, key: &str) -> Result<(), lapin::Error> {
    within(
        "queue.bind",
        ch.queue_bind(
            queue.into(),
            exchange.into(),
            key.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        ),
    )
    .await
}

async fn unbind(ch: &Channel, queue: &str, exchange: &str, key: &str) -> Result<(), lapin::Error> {
    within(
        "queue.unbind",
        ch.queue_unbind(
            queue.into(),
            exchange.into(),
            key.into(),
            FieldTable::default(),
        ),
    )
    .await
}

async fn purge(ch: &Channel, queue: &str) -> Result<u32, lapin::Error> {
    within(
        "queue.purge",
        ch.queue_purge(queue.into(), QueuePurgeOptions::default()),
    )
    .await
}

async fn delete(
    ch: &Channel,
    queue: &str,
    options: QueueDeleteOptions,
) -> Result<u32, lapin::Error> {
    within("queue.delete", ch.queue_delete(queue.into(), options)).await
}

async fn consume(ch: &Channel, queue: &str, tag: &str) -> Result<lapin::Consumer, lapin::Error> {
    within(
        "basic.consume",
        ch.basic_consume(
            queue.into(),
            tag.into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        ),
    )
    .await
}

async fn cancel(ch: &Channel, tag: &str) {
    within(
        "basic.cancel",
        ch.basic_cancel(tag.into(), BasicCancelOptions::default()),
    )
    .await
    .expect("basic.cancel");
}

async fn get(ch: &Channel, queue: &str) -> Result<Option<Vec<u8>>, lapin::Error> {
    within(
        "basic.get",
        ch.basic_get(queue.into(), BasicGetOptions { no_ack: true }),
    )
    .await
    .map(|m| m.map(|m| m.delivery.data))
}

fn args(entries: &[(&str, AMQPValue)]) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in entries {
        t.insert((*k).into(), v.clone());
    }
    t
}

#[tokio::test]
async fn empty_name_gives_a_server_named_queue() {
    let b = start_broker().await;
    let conn = connect(&b).await;
    let ch = channel(&conn).await;
    let q1 = qdeclare(
        &ch,
        "",
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    let q2 = qdeclare(
        &ch,
        "",
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    let n1 = q1.name().as_str();
    assert!(n1.starts_with("amq.gen-"), "got {n1:?}");
    assert!(n1.len() > "amq.gen-".len() + 8, "name too short: {n1:?}");
    assert_ne!(n1, q2.name().as_str());
    // It is a real queue, reachable by its name through the default exchange.
    publish(&ch, "", n1, b"hi").await;
    assert_eq!(get(&ch, n1).await.unwrap(), Some(b"hi".to_vec()));
    let p = passive(&ch, n1)
        .await
        .expect("passive of the generated name");
    assert_eq!(p.name().as_str(), n1);
}

#[tokio::test]
async fn declare_ok_carries_ready_message_and_consumer_counts() {
    let b = start_broker().await;
    let conn = connect(&b).await;
    let ch = channel(&conn).await;
    let q = qdeclare(
        &ch,
        "counted",
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    assert_eq!((q.message_count(), q.consumer_count()), (0, 0));
    for body in [b"1", b"2", b"3"] {
        publish(&ch, "", "counted", body).await;
    }
    let q = qdeclare(
        &ch,
        "counted",
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    assert_eq!((q.message_count(), q.consumer_count()), (3, 0));

    // A consumer with prefetch 1 holds one message unacked: ready count is 2.
    let ch2 = channel(&conn).await;
    within("qos", ch2.basic_qos(1, BasicQosOptions::default()))
        .await
        .unwrap();
    let mut consumer = consume(&ch2, "counted", "c1").await.unwrap();
    let d = next(&mut consumer).await;
    assert_eq!(d.data, b"1");
    let q = passive(&ch, "counted").await.unwrap();
    assert_eq!((q.message_count(), q.consumer_count()), (2, 1));
}

#[tokio::test]
async fn passive_declare_of_a_missing_queue_is_404() {
    let b = start_broker().await;
    let conn = connect(&b).await;
    let ch = channel(&conn).await;
    assert_eq!(code(passive(&ch, "nope").await), 404);
    let ch = channel(&conn).await;
    declare(&ch, "yes").await;
    passive(&ch, "yes").await.expect("exists");
}

#[tokio::test]
async fn non_equivalent_redeclare_is_406() {
    let b = start_broker().await;
    let conn = connect(&b).await;
    let ch = channel(&conn).await;
    declare(&ch, "q").await;
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    assert_eq!(
        code(qdeclare(&ch, "q", durable, FieldTable::default()).await),
        406
    );
    let ch = channel(&conn).await;
    let auto_delete = QueueDeclareOptions {
        auto_delete: true,
        ..Default::default()
    };
    assert_eq!(
        code(qdeclare(&ch, "q", auto_delete, FieldTable::default()).await),
        406
    );
    let ch = channel(&conn).await;
    let ttl = args(&[("x-message-ttl", AMQPValue::LongInt(1000))]);
    assert_eq!(
        code(qdeclare(&ch, "q", QueueDeclareOptions::default(), ttl).await),
        406
    );
    let ch = channel(&conn).await;
    declare(&ch, "q").await;
}

#[tokio::test]
async fn amq_prefixed_queue_name_is_403() {
    let b = start_broker().await;
    let conn = connect(&b).await;
    let ch = channel(&conn).await;
    assert_eq!(
        code(
            qdeclare(
                &ch,
                "amq.x",
                QueueDeclareOptions::default(),
                FieldTable::default()
            )
            .await
        ),
        403
    );
    let ch = channel(&conn).await;
    assert_eq!(code(passive(&ch, "amq.x").await), 404);
}

#[tokio::test]
async fn exclusive_queue_is_locked_for_other_connections() {
    let b = start_broker().await;
    let owner = connect(&b).await;
    let och = channel(&owner).await;
    let exclusive = QueueDeclareOptions {
        exclusive: true,
        ..Default::default()
    };
    qdeclare(&och, "mine", exclusive, FieldTable::default())
        .await
        .unwrap();
    publish(&och, "", "mine", b"m").await;

    let other = connect(&b).await;
    let ch = channel(&other).await;
    assert_eq!(
        code(qdeclare(&ch, "mine", exclusive, FieldTable::default()).await),
        405,
        "declare"
    );
    let ch = channel(&other).await;
    assert_eq!(code(passive(&ch, "mine").await), 405, "passive declare");
    let ch = channel(&other).await;
    assert_eq!(code(consume(&ch, "mine", "thief").await), 405, "consume");
    let ch = channel(&other).await;
    assert_eq!(
        code(bind(&ch, "mine", "amq.direct", "k").await),
        405,
        "bind"
    );
    let ch = channel(&other).await;
    assert_eq!(code(purge(&ch, "mine").await), 405, "purge");
    let ch = channel(&other).await;
    assert_eq!(
        code(delete(&ch, "mine", QueueDeleteOptions::default()).await),
        405,
        "delete"
    );
    let ch = channel(&other).await;
    assert_eq!(code(get(&ch, "mine").await), 405, "get");

    // The owner is unaffected and the message is still there.
    let q = passive(&och, "mine").await.expect("owner can still use it");
    assert_eq!(q.message_count(), 1);
    bind(&och, "mine", "amq.direct", "k")
        .await
        .expect("owner binds");
}

/// RabbitMQ's strict check: a declaration whose exclusivity differs from the queue's is
/// 405 RESOURCE_LOCKED, never 406, whichever connection sends it.
#[tokio::test]
async fn declaring_with_other_exclusivity_is_405_not_406() {
    let b = start_broker().await;
    let owner = connect(&b).await;
    let exclusive = QueueDeclareOptions {
        exclusive: true,
        ..Default::default()
    };
    qdeclare(
        &channel(&owner).await,
        "mine",
        exclusive,
        FieldTable::default(),
    )
    .await
    .unwrap();
    let locked = |q: &str| {
        format!(
            "RESOURCE_LOCKED - cannot obtain exclusive access to locked queue '{q}' in vhost \
             '/'. It could be originally declared on another connection or the exclusive \
             property value does not match that of the original declaration."
        )
    };
    let other = connect(&b).await;
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    let r = qdeclare(
        &channel(&other).await,
        "mine",
        durable,
        FieldTable::default(),
    )
    .await;
    assert_eq!(
        code_and_text(r),
        (405, locked("mine")),
        "another connection"
    );
    let r = qdeclare(
        &channel(&owner).await,
        "mine",
        Default::default(),
        FieldTable::default(),
    )
    .await;
    assert_eq!(
        code_and_text(r),
        (405, locked("mine")),
        "the owner, not exclusive"
    );

    qdeclare(
        &channel(&owner).await,
        "shared",
        Default::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    let r = qdeclare(
        &channel(&other).await,
        "shared",
        exclusive,
        FieldTable::default(),
    )
    .await;
    assert_eq!(
        code_and_text(r),
        (405, locked("shared")),
        "exclusive on a shared queue"
    );
    // A passive declare does not care about exclusivity.
    let passive_exclusive = QueueDeclareOptions {
        passive: true,
        exclusive: true,
        ..Default::default()
    };
    qdeclare(
        &channel(&other).await,
        "shared",
        passive_exclusive,
        FieldTable::default(),
    )
    .await
    .expect("passive");
}

/// The deleting channel gets delete-ok first, then the cancel of its own consumer, as from
/// RabbitMQ (kombu fails inside queue_delete when the cancel comes first).
#[tokio::test]
async fn queue_delete_answers_delete_ok_before_the_consumer_cancel() {
    use amq_protocol::frame::AMQPFrame;
    use amq_protocol::protocol::{basic, queue as q, AMQPClass};
    let b = start_broker().await;
    let mut r = common::raw::Raw::open_capable(b.addr(), "consumer_cancel_notify").await;
    r.open_channel(1).await;
    let declare = q::Declare {
        queue: "del".into(),
        passive: false,
        durable: false,
        exclusive: false,
        auto_delete: false,
        nowait: false,
        arguments: FieldTable::default(),
    };
    r.send(AMQPFrame::Method(
        1,
        AMQPClass::Queue(q::AMQPMethod::Declare(declare)),
    ))
    .await;
    r.recv().await.expect("declare-ok");
    let consume = basic::Consume {
        queue: "del".into(),
        consumer_tag: "ctag".into(),
        no_local: false,
        no_ack: true,
        exclusive: false,
        nowait: false,
        arguments: FieldTable::default(),
    };
    r.send(AMQPFrame::Method(
        1,
        AMQPClass::Basic(basic::AMQPMethod::Consume(consume)),
    ))
    .await;
    r.recv().await.expect("consume-ok");
    let delete = q::Delete {
        queue: "del".into(),
        if_unused: false,
        if_empty: false,
        nowait: false,
    };
    r.send(AMQPFrame::Method(
        1,
        AMQPClass::Queue(q::AMQPMethod::Delete(delete)),
    ))
    .await;
    match r.recv().await {
        Some(AMQPFrame::Method(1, AMQPClass::Queue(q::AMQPMethod::DeleteOk(_)))) => {}
        other => panic!("expected delete-ok first, got {other:?}"),
    }
    match r.recv().await {
        Some(AMQPFrame::Method(1, AMQPClass::Basic(basic::AMQPMethod::Cancel(c)))) => {
            assert_eq!(c.consumer_tag.as_str(), "ctag")
        }
        other => panic!("expected basic.cancel, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exclusive_queue_is_deleted_when_its_connection_closes() {
    let b = start_broker().await;
    let owner = connect(&b).await;
    let och = channel(&owner).await;
    let exclusive = QueueDeclareOptions {
        exclusive: true,
        ..Default::default()
    };
    qdeclare(&och, "temp", exclusive, FieldTable::default())
        .await
        .unwrap();

    let other = connect(&b).await;
    let ch = channel(&other).await;
    assert_eq!(code(passive(&ch, "temp").await), 405, "locked while owned");

    within("close", owner.close(200, "bye".into()))
        .await
        .expect("close");
    // The broker cleans up right after close-ok; poll (bounded) until it is gone.
    within("exclusive queue removal", async {
        loop {
            let ch = channel(&other).await;
            match passive(&ch, "temp").await {
                Err(e) if reply_code(&e) == Some(404) => break,
                Err(e) if reply_code(&e) == Some(405) => tokio::task::yield_now().await,
                other => panic!("unexpected passive declare result: {other:?}"),
            }
        }
    })
    .await;
    // The name is free again.
    let ch = channel(&other).await;
    declare(&ch, "temp").await;
}

#[tokio::test]
async fn auto_delete_queue_goes_after_its_last_consumer_only() {
    let b = start_broker().await;
    let conn = connect(&b).await;
    let ch = channel(&conn).await;
    let auto_delete = QueueDeclareOptions {
        auto_delete: true,
        ..Default::default()
    };
    qdeclare(&ch, "ad", auto_delete, FieldTable::default())
        .await
        .unwrap();
    // Never had a consumer: stays, even through publish and get.
    publish(&ch, "", "ad", b"x").await;
    assert_eq!(get(&ch, "ad").await.unwrap(), Some(b"x".to_vec()));
    passive(&ch, "ad")
        .await
        .expect("exists before any consumer");

    let cch = channel(&conn).await;
    let _c1 = consume(&cch, "ad", "c1").await.unwrap();
    let _c2 = consume(&cch, "ad", "c2").await.unwrap();
    cancel(&cch, "c1").await;
    let q = passive(&ch, "ad").await.expect("one consumer left");
    assert_eq!(q.consumer_count(), 1);
    cancel(&cch, "c2").await;
    assert_eq!(code(passive(&ch, "ad").await), 404);
}

#[tokio::test]
async fn bind_and_unbind() {
    let b = start_broker().await;
    let conn = connect(&b).await;
    let ch = channel(&conn).await;
    declare(&ch, "q").await;
    bind(&ch, "q", "amq.direct", "k").await.unwrap();
    // Binding twice is idempotent: still one copy.
    bind(&ch, "q", "amq.direct", "k").await.unwrap();
    publish(&ch, "amq.direct", "k", b"bound").await;
    assert_eq!(get(&ch, "q").await.unwrap(), Some(b"bound".to_vec()));
    assert_eq!(get(&ch, "q").await.unwrap(), None);

    unbind(&ch, "q", "amq.direct", "k").await.unwrap();
    publish(&ch, "amq.direct", "k", b"unbound").await;
    assert_eq!(get(&ch, "q").await.unwrap(), None);

    // Unbinding what is not bound is fine: missing binding, queue, or exchange.
    unbind(&ch, "q", "amq.direct", "k").await.unwrap();
    unbind(&ch, "q", "amq.direct", "never").await.unwrap();
    unbind(&ch, "no-such-queue", "amq.direct", "k")
        .await
        .unwrap();
    unbind(&ch, "q", "no-such-exchange", "k").await.unwrap();

    assert_eq!(
        code(bind(&ch, "no-such-queue", "amq.direct", "k").await),
        404
    );
    let ch = channel(&conn).await;
    assert_eq!(code(bind(&ch, "q", "no-such-exchange", "k").await), 404);
}

#[tokio::test]
async fn purge_returns_the_count() {
    let b = start_broker().await;
    let conn = connect(&b).await;
    let ch = channel(&conn).await;
    declare(&ch, "p").await;
    assert_eq!(purge(&ch, "p").await.unwrap(), 0);
    for _ in 0..3 {
        publish(&ch, "", "p", b"m").await;
    }
    assert_eq!(purge(&ch, "p").await.unwrap(), 3);
    assert_eq!(passive(&ch, "p").await.unwrap().message_count(), 0);
    assert_eq!(get(&ch, "p").await.unwrap(), None);
    assert_eq!(code(purge(&ch, "missing").await), 404);
}

#[tokio::test]
async fn delete_conditions_and_count() {
    let b = start_broker().await;
    let conn = connect(&b).await;
    let ch = channel(&conn).await;
    declare(&ch, "full").await;
    publish(&ch, "", "full", b"1").await;
    publish(&ch, "", "full", b"2").await;
    let if_empty = QueueDeleteOptions {
        if_empty: true,
        ..Default::default()
    };
    assert_eq!(code(delete(&ch, "full", if_empty).await), 406);

    let ch = channel(&conn).await;
    declare(&ch, "used").await;
    let cch = channel(&conn).await;
    let _c = consume(&cch, "used", "c").await.unwrap();
    let if_unused = QueueDeleteOptions {
        if_unused: true,
        ..Default::default()
    };
    assert_eq!(code(delete(&ch, "used", if_unused).await), 406);

    let ch = channel(&conn).await;
    assert_eq!(passive(&ch, "full").await.unwrap().message_count(), 2);
    // Unconditional delete returns the ready count.
    assert_eq!(
        delete(&ch, "full", QueueDeleteOptions::default())
            .await
            .unwrap(),
        2
    );
    assert_eq!(code(passive(&ch, "full").await), 404);
    // Delete of a missing queue is ok.
    let ch = channel(&conn).await;
    assert_eq!(
        delete(&ch, "full", QueueDeleteOptions::default())
            .await
            .unwrap(),
        0
    );
    // The conditions pass when they hold.
    declare(&ch, "empty").await;
    let both = QueueDeleteOptions {
        if_empty: true,
        if_unused: true,
        ..Default::default()
    };
    assert_eq!(delete(&ch, "empty", both).await.unwrap(), 0);
    assert_eq!(code(passive(&ch, "empty").await), 404);
}

#[tokio::test]
async fn empty_name_means_the_last_declared_server_named_queue() {
    let b = start_broker().await;
    let conn = connect(&b).await;
    let ch = channel(&conn).await;
    let q = qdeclare(
        &ch,
        "",
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    let name = q.name().as_str().to_string();
    bind(&ch, "", "amq.direct", "to-last").await.unwrap();
    publish(&ch, "amq.direct", "to-last", b"a").await;
    publish(&ch, "amq.direct", "to-last", b"b").await;
    publish(&ch, "amq.direct", "to-last", b"c").await;
    assert_eq!(get(&ch, "").await.unwrap(), Some(b"a".to_vec()));
    assert_eq!(purge(&ch, "").await.unwrap(), 2);
    // It really was that queue.
    publish(&ch, "", &name, b"d").await;
    assert_eq!(get(&ch, "").await.unwrap(), Some(b"d".to_vec()));
    assert_eq!(passive(&ch, &name).await.unwrap().message_count(), 0);
}

#[tokio::test]
async fn empty_name_means_the_last_declared_queue() {
    let b = start_broker().await;
    let conn = connect(&b).await;
    let ch = channel(&conn).await;
    declare(&ch, "first").await;
    declare(&ch, "last").await;
    bind(&ch, "", "amq.direct", "to-last").await.unwrap();
    publish(&ch, "amq.direct", "to-last", b"a").await;
    publish(&ch, "amq.direct", "to-last", b"b").await;
    publish(&ch, "amq.direct", "to-last", b"c").await;
    assert_eq!(passive(&ch, "first").await.unwrap().message_count(), 0);
    // The passive declare just above made "first" the last declared queue.
    declare(&ch, "last").await;
    assert_eq!(get(&ch, "").await.unwrap(), Some(b"a".to_vec()));
    assert_eq!(purge(&ch, "").await.unwrap(), 2);
    assert_eq!(passive(&ch, "last").await.unwrap().message_count(), 0);
    // A later declare becomes the new "last".
    declare(&ch, "first").await;
    publish(&ch, "", "first", b"e").await;
    assert_eq!(get(&ch, "").await.unwrap(), Some(b"e".to_vec()));

    // A fresh channel has no last queue.
    let fresh = channel(&conn).await;
    assert_eq!(code(bind(&fresh, "", "amq.direct", "k").await), 404);
    let fresh = channel(&conn).await;
    assert_eq!(code(get(&fresh, "").await), 404);
    let fresh = channel(&conn).await;
    assert_eq!(code(purge(&fresh, "").await), 404);
}

#[tokio::test]
async fn invalid_argument_types_and_ranges_are_406() {
    let b = start_broker().await;
    let conn = connect(&b).await;
    let cases: Vec<(&str, FieldTable)> = vec![
        (
            "ttl as string",
            args(&[("x-message-ttl", AMQPValue::LongString("1000".into()))]),
        ),
        (
            "negative ttl",
            args(&[("x-message-ttl", AMQPValue::LongInt(-1))]),
        ),
        (
            "max priority 300",
            args(&[("x-max-priority", AMQPValue::LongInt(300))]),
        ),
        ("expires 0", args(&[("x-expires", AMQPValue::LongInt(0))])),
        (
            "max length as string",
            args(&[("x-max-length", AMQPValue::LongString("10".into()))]),
        ),
        (
            "unknown overflow",
            args(&[("x-overflow", AMQPValue::LongString("explode".into()))]),
        ),
    ];
    for (what, a) in cases {
        let ch = channel(&conn).await;
        assert_eq!(
            code(qdeclare(&ch, "argq", QueueDeclareOptions::default(), a).await),
            406,
            "{what}"
        );
    }
    // None of them created the queue; valid arguments do.
    let ch = channel(&conn).await;
    assert_eq!(code(passive(&ch, "argq").await), 404);
    let ch = channel(&conn).await;
    let good = args(&[
        ("x-message-ttl", AMQPValue::LongInt(1000)),
        ("x-max-priority", AMQPValue::ShortShortUInt(10)),
        ("x-queue-type", AMQPValue::LongString("classic".into())),
    ]);
    qdeclare(&ch, "argq", QueueDeclareOptions::default(), good)
        .await
        .expect("valid arguments");
}

#[tokio::test]
async fn stream_and_unknown_queue_types_are_refused_with_a_clear_text() {
    let b = start_broker().await;
    let conn = connect(&b).await;
    let ch = channel(&conn).await;
    let a = args(&[("x-queue-type", AMQPValue::LongString("stream".into()))]);
    let (reply, text) = code_and_text(qdeclare(&ch, "sq", QueueDeclareOptions::default(), a).await);
    assert_eq!(reply, 406, "{text}");
    assert!(text.contains("x-queue-type"), "reply text: {text}");
    assert!(text.contains("stream"), "reply text: {text}");
    let ch = channel(&conn).await;
    assert_eq!(code(passive(&ch, "sq").await), 404);
    // A type RabbitMQ does not know either: its text, word for word (3.10.8).
    let ch = channel(&conn).await;
    let a = args(&[("x-queue-type", AMQPValue::LongString("foo".into()))]);
    let (reply, text) = code_and_text(qdeclare(&ch, "q", QueueDeclareOptions::default(), a).await);
    assert_eq!(reply, 406, "{text}");
    assert_eq!(
        text,
        "PRECONDITION_FAILED - invalid arg 'x-queue-type' for queue 'q' in vhost '/': \"unsupported queue type 'foo'\""
    );
}

async fn consumer_cancelled_by_queue_delete(conn: &Connection, deleter: &Channel) {
    let ch = channel(conn).await;
    declare(&ch, "doomed").await;
    let mut consumer = consume(&ch, "doomed", "watcher").await.unwrap();
    publish(&ch, "", "doomed", b"before").await;
    let d = next(&mut consumer).await;
    assert_eq!(d.data, b"before");
    within("ack", d.ack(BasicAckOptions::default()))
        .await
        .unwrap();

    assert_eq!(
        delete(deleter, "doomed", QueueDeleteOptions::default())
            .await
            .unwrap(),
        0
    );
    // basic.cancel from the broker ends the consumer stream.
    let end = within("consumer cancel", consumer.next()).await;
    assert!(end.is_none(), "expected the stream to end, got {end:?}");
    // The channel is still open; a later cancel of that tag is answered.
    cancel(&ch, "watcher").await;
    declare(&ch, "after").await;
}

#[tokio::test]
async fn deleting_a_queue_cancels_its_consumers() {
    let b = start_broker().await;
    let conn = connect(&b).await;
    // Deleted from another channel of the same connection.
    let deleter = channel(&conn).await;
    consumer_cancelled_by_queue_delete(&conn, &deleter).await;
    // Deleted from another connection.
    let other = connect(&b).await;
    let deleter = channel(&other).await;
    consumer_cancelled_by_queue_delete(&conn, &deleter).await;
}
