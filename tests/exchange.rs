//! Exchanges through lapin: declaration rules, the predeclared set, routing per type,
//! exchange-to-exchange bindings and auto-delete.

mod common;
use common::*;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, ExchangeKind};

/// The reply code of an operation that must fail with a protocol error.
fn code<T>(r: Result<T, lapin::Error>) -> u16 {
    match r {
        Ok(_) => panic!("expected an AMQP error, the operation succeeded"),
        Err(e) => reply_code(&e).unwrap_or_else(|| panic!("not a protocol error: {e:?}")),
    }
}

async fn xdeclare(
    ch: &Channel,
    name: &str,
    kind: ExchangeKind,
    options: ExchangeDeclareOptions,
) -> Result<(), lapin::Error> {
    within(
        "exchange.declare",
        ch.exchange_declare(name.into(), kind, options, FieldTable::default()),
    )
    .await
}

async fn passive(ch: &Channel, name: &str) -> Result<(), lapin::Error> {
    xdeclare(
        ch,
        name,
        ExchangeKind::Direct,
        ExchangeDeclareOptions {
            passive: true,
            ..Default::default()
        },
    )
    .await
}

async fn bind(ch: &Channel, queue: &str, exchange: &str, key: &str, args: FieldTable) {
    within(
        "queue.bind",
        ch.queue_bind(
            queue.into(),
            exchange.into(),
            key.into(),
            QueueBindOptions::default(),
            args,
        ),
    )
    .await
    .expect("queue.bind");
}

async fn e2e_bind(ch: &Channel, destination: &str, source: &str, key: &str) {
    within(
        "exchange.bind",
        ch.exchange_bind(
            destination.into(),
            source.into(),
            key.into(),
            ExchangeBindOptions::default(),
            FieldTable::default(),
        ),
    )
    .await
    .expect("exchange.bind");
}

async fn publish_headers(ch: &Channel, exchange: &str, body: &[u8], headers: FieldTable) {
    within(
        "publish",
        ch.basic_publish(
            exchange.into(),
            "".into(),
            BasicPublishOptions::default(),
            body,
            BasicProperties::default().with_headers(headers),
        ),
    )
    .await
    .expect("publish");
}

/// Every ready message of `queue`, in order, taken with basic.get. Because a channel's
/// methods are handled in order, this sees everything published earlier on `ch`.
async fn drain(ch: &Channel, queue: &str) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let got = within(
            "basic.get",
            ch.basic_get(queue.into(), BasicGetOptions { no_ack: true }),
        )
        .await
        .expect("basic.get");
        match got {
            Some(m) => out.push(m.delivery.data),
            None => return out,
        }
    }
}

fn table(entries: &[(&str, AMQPValue)]) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in entries {
        t.insert((*k).into(), v.clone());
    }
    t
}

fn s(v: &str) -> AMQPValue {
    AMQPValue::LongString(v.into())
}

/// Publish with confirms on and return the error the channel is closed with.
async fn publish_error(ch: &Channel, exchange: &str) -> u16 {
    within(
        "confirm.select",
        ch.confirm_select(ConfirmSelectOptions::default()),
    )
    .await
    .expect("confirm.select");
    let confirm = within(
        "publish",
        ch.basic_publish(
            exchange.into(),
            "k".into(),
            BasicPublishOptions::default(),
            b"x",
            BasicProperties::default(),
        ),
    )
    .await
    .expect("publish is sent");
    code(within("publisher confirm", confirm).await)
}

#[tokio::test]
async fn declare_each_of_the_four_types() {
    let b = start_broker().await;
    let conn = connect(&b).await;
    let ch = channel(&conn).await;
    for (name, kind) in [
        ("x-direct", ExchangeKind::Direct),
        ("x-fanout", ExchangeKind::Fanout),
        ("x-topic", ExchangeKind::Topic),
        ("x-headers", ExchangeKind::Headers),
    ] {
        xdeclare(&ch, name, kind.clone(), ExchangeDeclareOptions::default())
            .await
            .unwrap_or_else(|e| panic!("declare {name}: {e:?}"));
        // An equivalent redeclare is fine, and the exchange now exists.
        xdeclare(&ch, name, kind, ExchangeDeclareOptions::default())
            .await
            .unwrap_or_else(|e| panic!("redeclare {name}: {e:?}"));
        passive(&ch, name)
            .await
            .unwrap_or_else(|e| panic!("passive {name}: {e:?}"));
    }
}

#[tokio::test]
async fn passive_declare_of_a_missing_exchange_is_404() {
    let b = start_broker().await;
    let conn = connect(&b).await;
    let ch = channel(&conn).await;
    assert_eq!(code(passive(&ch, "nope").await), 404);
    // Only the channel closed.
    let ch = channel(&conn).await;
    passive(&ch, "amq.direct").await.expect("amq.direct exists");
}

#[tokio::test]
async fn non_equivalent_redeclare_is_406() {
    let b = start_broker().await;
    let conn = connect(&b).await;
    let ch = channel(&conn).await;
    xdeclare(
        &ch,
        "e",
        ExchangeKind::Direct,
        ExchangeDeclareOptions::default(),
    )
    .await
    .unwrap();
    assert_eq!(
        code(
            xdeclare(
                &ch,
                "e",
                ExchangeKind::Fanout,
                ExchangeDeclareOptions::default()
            )
            .await
        ),
        406
    );
    let ch = channel(&conn).await;
    let durable = ExchangeDeclareOptions {
        durable: true,
        ..Default::default()
    };
    assert_eq!(
        code(xdeclare(&ch, "e", ExchangeKind::Direct, durable).await),
        406
    );
    let ch = channel(&conn).await;
    let auto_delete = ExchangeDeclareOptions {
        auto_delete: true,
        ..Default::default()
    };
    assert_eq!(
        code(xdeclare(&ch, "e", ExchangeKind::Direct, auto_delete).await),
        406
    );
    // The original is unchanged.
    let ch = channel(&conn).await;
    xdeclare(
        &ch,
        "e",
        ExchangeKind::Direct,
        ExchangeDeclareOptions::default(),
    )
    .await
    .expect("the original declaration is still equivalent");
}

#[tokio::test]
async fn amq_prefixed_names_cannot_be_declared_or_deleted() {
    let b = start_broker().await;
    let conn = connect(&b).await;
    let ch = channel(&conn).await;
    assert_eq!(
        code(
            xdeclare(
                &ch,
                "amq.foo",
                ExchangeKind::Direct,
                ExchangeDeclareOptions::default()
            )
            .await
        ),
        403
    );
    let ch = channel(&conn).await;
    assert_eq!(
        code(
            within(
                "exchange.delete",
                ch.exchange_delete("amq.direct".into(), ExchangeDeleteOptions::default())
            )
            .await
        ),
        403
    );
    let ch = channel(&conn).await;
    passive(&ch, "amq.direct")
        .await
        .expect("amq.direct survives");
    assert_eq!(code(passive(&ch, "amq.foo").await), 404);
}

/// RabbitMQ refuses every exchange.declare of the default exchange, passive or not and even
/// an equivalent one (aiormq's test_channel_closed_reuse depends on it).
#[tokio::test]
async fn declaring_the_default_exchange_is_403() {
    let b = start_broker().await;
    let conn = connect(&b).await;
    let ch = channel(&conn).await;
    assert_eq!(code(passive(&ch, "").await), 403);
    let ch = channel(&conn).await;
    let durable = ExchangeDeclareOptions {
        durable: true,
        ..Default::default()
    };
    assert_eq!(
        code(xdeclare(&ch, "", ExchangeKind::Direct, durable).await),
        403
    );
    let ch = channel(&conn).await;
    passive(&ch, "amq.direct")
        .await
        .expect("only the channel closed");
}

#[tokio::test]
async fn delete_of_a_missing_exchange_is_ok() {
    let b = start_broker().await;
    let conn = connect(&b).await;
    let ch = channel(&conn).await;
    within(
        "exchange.delete",
        ch.exchange_delete("never-declared".into(), ExchangeDeleteOptions::default()),
    )
    .await
    .expect("delete of a missing exchange");
    xdeclare(
        &ch,
        "gone",
        ExchangeKind::Fanout,
        ExchangeDeclareOptions::default(),
    )
    .await
    .unwrap();
    within(
        "exchange.delete",
        ch.exchange_delete("gone".into(), ExchangeDeleteOptions::default()),
    )
    .await
    .expect("delete");
    within(
        "exchange.delete",
        ch.exchange_delete("gone".into(), ExchangeDeleteOptions::default()),
    )
    .await
    .expect("second delete");
    assert_eq!(code(passive(&ch, "gone").await), 404);
}

#[tokio::test]
async fn delete_if_unused_with_a_binding_is_406() {
    let b = start_broker().await;
    let conn = connect(&b).await;
    let ch = channel(&conn).await;
    xdeclare(
        &ch,
        "used",
        ExchangeKind::Direct,
        ExchangeDeclareOptions::default(),
    )
    .await
    .unwrap();
    declare(&ch, "q").await;
    bind(&ch, "q", "used", "k", FieldTable::default()).await;
    let if_unused = ExchangeDeleteOptions {
        if_unused: true,
        ..Default::default()
    };
    assert_eq!(
        code(
            within(
                "exchange.delete",
                ch.exchange_delete("used".into(), if_unused)
            )
            .await
        ),
        406
    );
    let ch = channel(&conn).await;
    passive(&ch, "used").await.expect("still there");
    within(
        "queue.unbind",
        ch.queue_unbind("q".into(), "used".into(), "k".into(), FieldTable::default()),
    )
    .await
    .unwrap();
    within(
        "exchange.delete",
        ch.exchange_delete("used".into(), if_unused),
    )
    .await
    .expect("unused now");
    assert_eq!(code(passive(&ch, "used").await), 404);
}

#[tokio::test]
async fn invalid_exchange_type_is_a_503_connection_error() {
    let b = start_broker().await;
    let conn = connect(&b).await;
    let ch = channel(&conn).await;
    let r = xdeclare(
        &ch,
        "weird",
        ExchangeKind::Custom("foo".into()),
        ExchangeDeclareOptions::default(),
    )
    .await;
    // RabbitMQ 3.10's code and text.
    assert_eq!(
        failure(r),
        (
            503,
            "COMMAND_INVALID - unknown exchange type 'foo'".to_string()
        )
    );
    // The whole connection is gone, not just the channel.
    assert!(
        within("channel", conn.create_channel()).await.is_err(),
        "connection still usable after a 503"
    );
    // And the exchange was not created.
    let conn = connect(&b).await;
    let ch = channel(&conn).await;
    assert_eq!(code(passive(&ch, "weird").await), 404);
}

#[tokio::test]
async fn predeclared_exchanges_exist() {
    let b = start_broker().await;
    let conn = connect(&b).await;
    let ch = channel(&conn).await;
    for name in [
        "amq.direct",
        "amq.fanout",
        "amq.topic",
        "amq.headers",
        "amq.match",
        "amq.rabbitmq.trace",
    ] {
        passive(&ch, name)
            .await
            .unwrap_or_else(|e| panic!("{name} should exist: {e:?}"));
    }
    // Their types: an equivalent (durable, same type) redeclare is accepted.
    for (name, kind) in [
        ("amq.direct", ExchangeKind::Direct),
        ("amq.fanout", ExchangeKind::Fanout),
        ("amq.topic", ExchangeKind::Topic),
        ("amq.headers", ExchangeKind::Headers),
        ("amq.match", ExchangeKind::Headers),
    ] {
        let durable = ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        };
        xdeclare(&ch, name, kind, durable)
            .await
            .unwrap_or_else(|e| panic!("equivalent redeclare of {name}: {e:?}"));
    }
}

#[tokio::test]
async fn internal_exchange_refuses_publish_with_403() {
    let b = start_broker().await;
    let conn = connect(&b).await;
    let ch = channel(&conn).await;
    let internal = ExchangeDeclareOptions {
        internal: true,
        ..Default::default()
    };
    xdeclare(&ch, "inside", ExchangeKind::Fanout, internal)
        .await
        .unwrap();
    assert_eq!(publish_error(&ch, "inside").await, 403);
    let ch = channel(&conn).await;
    assert_eq!(publish_error(&ch, "amq.rabbitmq.trace").await, 403);
    // An internal exchange still routes what reaches it through an e2e binding.
    let ch = channel(&conn).await;
    xdeclare(
        &ch,
        "front",
        ExchangeKind::Fanout,
        ExchangeDeclareOptions::default(),
    )
    .await
    .unwrap();
    declare(&ch, "behind").await;
    bind(&ch, "behind", "inside", "", FieldTable::default()).await;
    e2e_bind(&ch, "inside", "front", "").await;
    publish(&ch, "front", "", b"via").await;
    assert_eq!(drain(&ch, "behind").await, vec![b"via".to_vec()]);
}

#[tokio::test]
async fn publish_to_a_missing_exchange_is_404() {
    let b = start_broker().await;
    let conn = connect(&b).await;
    let ch = channel(&conn).await;
    assert_eq!(publish_error(&ch, "missing").await, 404);
    let ch = channel(&conn).await;
    declare(&ch, "q").await;
    publish(&ch, "", "q", b"ok").await;
    assert_eq!(drain(&ch, "q").await, vec![b"ok".to_vec()]);
}

#[tokio::test]
async fn direct_routes_only_on_the_exact_key() {
    let b = start_broker().await;
    let conn = connect(&b).await;
    let ch = channel(&conn).await;
    xdeclare(
        &ch,
        "d",
        ExchangeKind::Direct,
        ExchangeDeclareOptions::default(),
    )
    .await
    .unwrap();
    for q in ["q1", "q2", "q3"] {
        declare(&ch, q).await;
    }
    bind(&ch, "q1", "d", "k1", FieldTable::default()).await;
    bind(&ch, "q2", "d", "k2", FieldTable::default()).await;
    bind(&ch, "q3", "d", "k1", FieldTable::default()).await;
    publish(&ch, "d", "k1", b"one").await;
    publish(&ch, "d", "k2", b"two").await;
    publish(&ch, "d", "k3", b"three").await;
    publish(&ch, "d", "K1", b"case").await;
    publish(&ch, "d", "k1.x", b"longer").await;
    assert_eq!(drain(&ch, "q1").await, vec![b"one".to_vec()]);
    assert_eq!(drain(&ch, "q2").await, vec![b"two".to_vec()]);
    assert_eq!(drain(&ch, "q3").await, vec![b"one".to_vec()]);
}

#[tokio::test]
async fn fanout_gives_each_queue_exactly_one_copy() {
    let b = start_broker().await;
    let conn = connect(&b).await;
    let ch = channel(&conn).await;
    xdeclare(
        &ch,
        "f",
        ExchangeKind::Fanout,
        ExchangeDeclareOptions::default(),
    )
    .await
    .unwrap();
    for q in ["a", "b", "c"] {
        declare(&ch, q).await;
        bind(&ch, q, "f", "", FieldTable::default()).await;
    }
    // A second binding of the same queue with another key: still one copy.
    bind(&ch, "c", "f", "other", FieldTable::default()).await;
    declare(&ch, "unbound").await;
    publish(&ch, "f", "whatever", b"m1").await;
    publish(&ch, "f", "", b"m2").await;
    for q in ["a", "b", "c"] {
        assert_eq!(
            drain(&ch, q).await,
            vec![b"m1".to_vec(), b"m2".to_vec()],
            "queue {q}"
        );
    }
    assert!(drain(&ch, "unbound").await.is_empty());
}

#[tokio::test]
async fn topic_star_and_hash() {
    let b = start_broker().await;
    let conn = connect(&b).await;
    let ch = channel(&conn).await;
    xdeclare(
        &ch,
        "t",
        ExchangeKind::Topic,
        ExchangeDeclareOptions::default(),
    )
    .await
    .unwrap();
    let bindings = [
        ("star", "a.*"),
        ("hash", "a.#"),
        ("mid", "*.b.#"),
        ("all", "#"),
        ("exact", "a.b"),
        ("inner", "a.#.z"),
    ];
    for (q, pattern) in bindings {
        declare(&ch, q).await;
        bind(&ch, q, "t", pattern, FieldTable::default()).await;
    }
    for key in ["a", "a.b", "a.b.c", "x.b", "b.a", "a.z", "a.q.r.z", ""] {
        publish(&ch, "t", key, key.as_bytes()).await;
    }
    let got = |v: &[&str]| v.iter().map(|s| s.as_bytes().to_vec()).collect::<Vec<_>>();
    assert_eq!(drain(&ch, "star").await, got(&["a.b", "a.z"]));
    assert_eq!(
        drain(&ch, "hash").await,
        got(&["a", "a.b", "a.b.c", "a.z", "a.q.r.z"])
    );
    assert_eq!(drain(&ch, "mid").await, got(&["a.b", "a.b.c", "x.b"]));
    assert_eq!(
        drain(&ch, "all").await,
        got(&["a", "a.b", "a.b.c", "x.b", "b.a", "a.z", "a.q.r.z", ""])
    );
    assert_eq!(drain(&ch, "exact").await, got(&["a.b"]));
    assert_eq!(drain(&ch, "inner").await, got(&["a.z", "a.q.r.z"]));
}

#[tokio::test]
async fn headers_all_any_and_typed_values() {
    let b = start_broker().await;
    let conn = connect(&b).await;
    let ch = channel(&conn).await;
    xdeclare(
        &ch,
        "h",
        ExchangeKind::Headers,
        ExchangeDeclareOptions::default(),
    )
    .await
    .unwrap();
    for q in ["all", "any", "int", "default"] {
        declare(&ch, q).await;
    }
    bind(
        &ch,
        "all",
        "h",
        "",
        table(&[("x-match", s("all")), ("a", s("1")), ("b", s("2"))]),
    )
    .await;
    bind(
        &ch,
        "any",
        "h",
        "",
        table(&[("x-match", s("any")), ("a", s("1")), ("b", s("2"))]),
    )
    .await;
    bind(
        &ch,
        "int",
        "h",
        "",
        table(&[("x-match", s("all")), ("n", AMQPValue::LongInt(1))]),
    )
    .await;
    // No x-match: `all`.
    bind(
        &ch,
        "default",
        "h",
        "",
        table(&[("c", s("3")), ("d", s("4"))]),
    )
    .await;

    publish_headers(&ch, "h", b"ab", table(&[("a", s("1")), ("b", s("2"))])).await;
    publish_headers(&ch, "h", b"a", table(&[("a", s("1"))])).await;
    publish_headers(&ch, "h", b"b-wrong", table(&[("a", s("9")), ("b", s("2"))])).await;
    publish_headers(&ch, "h", b"none", table(&[("z", s("1"))])).await;
    publish_headers(&ch, "h", b"n-str", table(&[("n", s("1"))])).await;
    publish_headers(&ch, "h", b"n-int", table(&[("n", AMQPValue::LongInt(1))])).await;
    publish_headers(&ch, "h", b"n-2", table(&[("n", AMQPValue::LongInt(2))])).await;
    publish_headers(&ch, "h", b"c-only", table(&[("c", s("3"))])).await;
    publish_headers(&ch, "h", b"cd", table(&[("c", s("3")), ("d", s("4"))])).await;

    let got = |v: &[&str]| v.iter().map(|s| s.as_bytes().to_vec()).collect::<Vec<_>>();
    assert_eq!(drain(&ch, "all").await, got(&["ab"]));
    assert_eq!(drain(&ch, "any").await, got(&["ab", "a", "b-wrong"]));
    assert_eq!(drain(&ch, "int").await, got(&["n-int"]));
    assert_eq!(drain(&ch, "default").await, got(&["cd"]));
}

#[tokio::test]
async fn exchange_to_exchange_binding_routes() {
    let b = start_broker().await;
    let conn = connect(&b).await;
    let ch = channel(&conn).await;
    xdeclare(
        &ch,
        "src",
        ExchangeKind::Direct,
        ExchangeDeclareOptions::default(),
    )
    .await
    .unwrap();
    xdeclare(
        &ch,
        "dst",
        ExchangeKind::Fanout,
        ExchangeDeclareOptions::default(),
    )
    .await
    .unwrap();
    declare(&ch, "q").await;
    bind(&ch, "q", "dst", "", FieldTable::default()).await;
    e2e_bind(&ch, "dst", "src", "k").await;
    publish(&ch, "src", "k", b"through").await;
    publish(&ch, "src", "other", b"filtered").await;
    assert_eq!(drain(&ch, "q").await, vec![b"through".to_vec()]);

    within(
        "exchange.unbind",
        ch.exchange_unbind(
            "dst".into(),
            "src".into(),
            "k".into(),
            ExchangeUnbindOptions::default(),
            FieldTable::default(),
        ),
    )
    .await
    .expect("exchange.unbind");
    publish(&ch, "src", "k", b"after-unbind").await;
    assert!(drain(&ch, "q").await.is_empty());
}

#[tokio::test]
async fn a_queue_reached_by_two_paths_gets_one_copy() {
    let b = start_broker().await;
    let conn = connect(&b).await;
    let ch = channel(&conn).await;
    xdeclare(
        &ch,
        "src",
        ExchangeKind::Topic,
        ExchangeDeclareOptions::default(),
    )
    .await
    .unwrap();
    xdeclare(
        &ch,
        "mid1",
        ExchangeKind::Fanout,
        ExchangeDeclareOptions::default(),
    )
    .await
    .unwrap();
    xdeclare(
        &ch,
        "mid2",
        ExchangeKind::Fanout,
        ExchangeDeclareOptions::default(),
    )
    .await
    .unwrap();
    declare(&ch, "q").await;
    // Three paths: directly, through mid1, and through mid2.
    bind(&ch, "q", "src", "a.*", FieldTable::default()).await;
    e2e_bind(&ch, "mid1", "src", "#").await;
    e2e_bind(&ch, "mid2", "src", "a.b").await;
    bind(&ch, "q", "mid1", "", FieldTable::default()).await;
    bind(&ch, "q", "mid2", "", FieldTable::default()).await;
    publish(&ch, "src", "a.b", b"once").await;
    assert_eq!(drain(&ch, "q").await, vec![b"once".to_vec()]);
}

#[tokio::test]
async fn a_cycle_of_exchange_bindings_does_not_loop() {
    let b = start_broker().await;
    let conn = connect(&b).await;
    let ch = channel(&conn).await;
    for e in ["e1", "e2", "e3"] {
        xdeclare(
            &ch,
            e,
            ExchangeKind::Fanout,
            ExchangeDeclareOptions::default(),
        )
        .await
        .unwrap();
    }
    e2e_bind(&ch, "e2", "e1", "").await;
    e2e_bind(&ch, "e3", "e2", "").await;
    e2e_bind(&ch, "e1", "e3", "").await;
    declare(&ch, "q2").await;
    declare(&ch, "q3").await;
    bind(&ch, "q2", "e2", "", FieldTable::default()).await;
    bind(&ch, "q3", "e3", "", FieldTable::default()).await;
    publish(&ch, "e1", "", b"from-e1").await;
    publish(&ch, "e3", "", b"from-e3").await;
    assert_eq!(
        drain(&ch, "q2").await,
        vec![b"from-e1".to_vec(), b"from-e3".to_vec()]
    );
    assert_eq!(
        drain(&ch, "q3").await,
        vec![b"from-e1".to_vec(), b"from-e3".to_vec()]
    );
}

#[tokio::test]
async fn auto_delete_exchange_goes_with_its_last_binding() {
    let b = start_broker().await;
    let conn = connect(&b).await;
    let ch = channel(&conn).await;
    let auto_delete = ExchangeDeclareOptions {
        auto_delete: true,
        ..Default::default()
    };
    xdeclare(&ch, "ad", ExchangeKind::Direct, auto_delete)
        .await
        .unwrap();
    // Never bound: it stays.
    passive(&ch, "ad").await.expect("exists before any binding");
    declare(&ch, "q1").await;
    declare(&ch, "q2").await;
    bind(&ch, "q1", "ad", "k", FieldTable::default()).await;
    bind(&ch, "q2", "ad", "k", FieldTable::default()).await;
    within(
        "queue.unbind",
        ch.queue_unbind("q1".into(), "ad".into(), "k".into(), FieldTable::default()),
    )
    .await
    .unwrap();
    passive(&ch, "ad").await.expect("one binding left");
    within(
        "queue.unbind",
        ch.queue_unbind("q2".into(), "ad".into(), "k".into(), FieldTable::default()),
    )
    .await
    .unwrap();
    assert_eq!(code(passive(&ch, "ad").await), 404);
}

#[tokio::test]
async fn auto_delete_exchange_goes_when_its_last_bound_queue_is_deleted() {
    let b = start_broker().await;
    let conn = connect(&b).await;
    let ch = channel(&conn).await;
    let auto_delete = ExchangeDeclareOptions {
        auto_delete: true,
        ..Default::default()
    };
    xdeclare(&ch, "ad2", ExchangeKind::Fanout, auto_delete)
        .await
        .unwrap();
    declare(&ch, "only").await;
    bind(&ch, "only", "ad2", "", FieldTable::default()).await;
    within(
        "queue.delete",
        ch.queue_delete("only".into(), QueueDeleteOptions::default()),
    )
    .await
    .unwrap();
    assert_eq!(code(passive(&ch, "ad2").await), 404);
}
