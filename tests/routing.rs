//! Routing through lapin: alternate exchanges (chained, looping, mandatory), sender-selected
//! distribution (CC/BCC), topic edge cases, headers typed matching, binding errors, and
//! exchange-to-exchange bindings surviving a restart.
//!
//! Every publish goes through a confirm-mode channel: once its ack arrives the message has
//! been routed and enqueued, so a `basic.get` after it sees the outcome, including "nothing".

mod common;
use common::*;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldArray, FieldTable, LongString};
use lapin::{BasicProperties, Channel, ExchangeKind};

fn code<T>(r: Result<T, lapin::Error>) -> u16 {
    match r {
        Ok(_) => panic!("expected an AMQP error, the operation succeeded"),
        Err(e) => reply_code(&e).unwrap_or_else(|| panic!("not a protocol error: {e:?}")),
    }
}

fn ls(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s.as_bytes().to_vec()))
}

fn table(entries: Vec<(&str, AMQPValue)>) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in entries {
        t.insert(k.into(), v);
    }
    t
}

fn keys(list: &[&str]) -> AMQPValue {
    AMQPValue::FieldArray(FieldArray::from(
        list.iter().map(|k| ls(k)).collect::<Vec<_>>(),
    ))
}

async fn confirm_channel(conn: &lapin::Connection) -> Channel {
    let ch = channel(conn).await;
    within(
        "confirm.select",
        ch.confirm_select(ConfirmSelectOptions::default()),
    )
    .await
    .expect("confirm.select");
    ch
}

async fn exchange(ch: &Channel, name: &str, kind: ExchangeKind, durable: bool, args: FieldTable) {
    let o = ExchangeDeclareOptions {
        durable,
        ..Default::default()
    };
    within(
        "exchange.declare",
        ch.exchange_declare(name.into(), kind, o, args),
    )
    .await
    .expect("exchange.declare");
}

async fn queue(ch: &Channel, name: &str, durable: bool) {
    let o = QueueDeclareOptions {
        durable,
        ..Default::default()
    };
    within(
        "queue.declare",
        ch.queue_declare(name.into(), o, FieldTable::default()),
    )
    .await
    .expect("queue.declare");
}

async fn bind(ch: &Channel, q: &str, x: &str, key: &str, args: FieldTable) {
    let o = QueueBindOptions::default();
    within(
        "queue.bind",
        ch.queue_bind(q.into(), x.into(), key.into(), o, args),
    )
    .await
    .expect("queue.bind");
}

async fn xbind(ch: &Channel, destination: &str, source: &str, key: &str) {
    let o = ExchangeBindOptions::default();
    let f = ch.exchange_bind(
        destination.into(),
        source.into(),
        key.into(),
        o,
        FieldTable::default(),
    );
    within("exchange.bind", f).await.expect("exchange.bind");
}

/// Publish on a confirm channel and wait for the ack; true if the broker returned it.
async fn send(
    ch: &Channel,
    x: &str,
    key: &str,
    body: &[u8],
    props: BasicProperties,
    mandatory: bool,
) -> bool {
    let o = BasicPublishOptions {
        mandatory,
        ..Default::default()
    };
    let confirm = within(
        "publish",
        ch.basic_publish(x.into(), key.into(), o, body, props),
    )
    .await
    .expect("publish");
    let confirmation = within("confirm", confirm).await.expect("confirm");
    assert!(confirmation.is_ack(), "publish was nacked");
    match confirmation.take_message() {
        Some(r) => {
            assert_eq!(r.reply_code, 312);
            true
        }
        None => false,
    }
}

async fn pub_key(ch: &Channel, x: &str, key: &str, body: &[u8]) {
    assert!(!send(ch, x, key, body, BasicProperties::default(), false).await);
}

/// Every ready message of a queue, in order.
async fn drain(ch: &Channel, q: &str) -> Vec<lapin::message::BasicGetMessage> {
    let mut out = Vec::new();
    while let Some(m) = within(
        "basic.get",
        ch.basic_get(q.into(), BasicGetOptions { no_ack: true }),
    )
    .await
    .expect("basic.get")
    {
        out.push(m);
    }
    out
}

async fn bodies(ch: &Channel, q: &str) -> Vec<String> {
    drain(ch, q)
        .await
        .into_iter()
        .map(|m| String::from_utf8(m.delivery.data).unwrap())
        .collect()
}

fn ae(name: &str) -> FieldTable {
    table(vec![("alternate-exchange", ls(name))])
}

#[tokio::test]
async fn unroutable_messages_go_to_the_alternate_exchange() {
    let b = start_broker().await;
    let conn = connect(&b).await;
    let ch = confirm_channel(&conn).await;
    exchange(
        &ch,
        "tasks.ae",
        ExchangeKind::Fanout,
        false,
        FieldTable::default(),
    )
    .await;
    exchange(&ch, "tasks", ExchangeKind::Direct, false, ae("tasks.ae")).await;
    queue(&ch, "summarize", false).await;
    queue(&ch, "unrouted", false).await;
    bind(
        &ch,
        "summarize",
        "tasks",
        "summarize",
        FieldTable::default(),
    )
    .await;
    bind(&ch, "unrouted", "tasks.ae", "", FieldTable::default()).await;

    pub_key(&ch, "tasks", "summarize", b"routed").await;
    // Unroutable but mandatory: the alternate exchange routed it, so it is not returned.
    assert!(
        !send(
            &ch,
            "tasks",
            "translate",
            b"spare",
            BasicProperties::default(),
            true
        )
        .await
    );
    assert_eq!(bodies(&ch, "summarize").await, ["routed"]);
    assert_eq!(bodies(&ch, "unrouted").await, ["spare"]);
    let m = {
        pub_key(&ch, "tasks", "embed", b"again").await;
        drain(&ch, "unrouted").await.remove(0)
    };
    // Delivered with the exchange and key it was published with.
    assert_eq!(m.delivery.exchange.as_str(), "tasks");
    assert_eq!(m.delivery.routing_key.as_str(), "embed");
}

#[tokio::test]
async fn alternate_exchanges_chain_and_a_loop_ends() {
    let b = start_broker().await;
    let conn = connect(&b).await;
    let ch = confirm_channel(&conn).await;
    // first -> second -> third (direct, bound on "k"); none of the first two routes.
    exchange(
        &ch,
        "third",
        ExchangeKind::Direct,
        false,
        FieldTable::default(),
    )
    .await;
    exchange(&ch, "second", ExchangeKind::Topic, false, ae("third")).await;
    exchange(&ch, "first", ExchangeKind::Direct, false, ae("second")).await;
    queue(&ch, "end", false).await;
    bind(&ch, "end", "third", "k", FieldTable::default()).await;
    assert!(
        !send(
            &ch,
            "first",
            "k",
            b"chained",
            BasicProperties::default(),
            true
        )
        .await
    );
    assert_eq!(bodies(&ch, "end").await, ["chained"]);
    // The chain ends nowhere for another key: returned.
    assert!(
        send(
            &ch,
            "first",
            "other",
            b"lost",
            BasicProperties::default(),
            true
        )
        .await
    );

    // ping <-> pong name each other as alternate: the loop is cut and the message returned.
    exchange(&ch, "ping", ExchangeKind::Direct, false, ae("pong")).await;
    exchange(&ch, "pong", ExchangeKind::Direct, false, ae("ping")).await;
    assert!(send(&ch, "ping", "x", b"loop", BasicProperties::default(), true).await);
    // An exchange that is its own alternate, and a missing alternate: returned too.
    exchange(&ch, "self", ExchangeKind::Fanout, false, ae("self")).await;
    assert!(send(&ch, "self", "x", b"self", BasicProperties::default(), true).await);
    exchange(
        &ch,
        "dangling",
        ExchangeKind::Direct,
        false,
        ae("no-such-exchange"),
    )
    .await;
    assert!(
        send(
            &ch,
            "dangling",
            "x",
            b"gone",
            BasicProperties::default(),
            true
        )
        .await
    );
    // A queue bound in the loop gets exactly one copy.
    queue(&ch, "loop-q", false).await;
    bind(&ch, "loop-q", "pong", "x", FieldTable::default()).await;
    assert!(
        !send(
            &ch,
            "ping",
            "x",
            b"caught",
            BasicProperties::default(),
            true
        )
        .await
    );
    assert_eq!(bodies(&ch, "loop-q").await, ["caught"]);
}

#[tokio::test]
async fn alternate_exchange_of_an_exchange_reached_by_an_e2e_binding() {
    let b = start_broker().await;
    let conn = connect(&b).await;
    let ch = confirm_channel(&conn).await;
    exchange(
        &ch,
        "fallback",
        ExchangeKind::Fanout,
        false,
        FieldTable::default(),
    )
    .await;
    exchange(&ch, "inner", ExchangeKind::Direct, false, ae("fallback")).await;
    exchange(
        &ch,
        "outer",
        ExchangeKind::Topic,
        false,
        FieldTable::default(),
    )
    .await;
    xbind(&ch, "inner", "outer", "#").await;
    queue(&ch, "fb", false).await;
    bind(&ch, "fb", "fallback", "", FieldTable::default()).await;
    // outer routes to inner, inner's bindings match nothing, so inner's alternate takes it.
    assert!(
        !send(
            &ch,
            "outer",
            "a.b",
            b"via-inner",
            BasicProperties::default(),
            true
        )
        .await
    );
    assert_eq!(bodies(&ch, "fb").await, ["via-inner"]);
}

#[tokio::test]
async fn cc_and_bcc_add_routing_keys_and_bcc_is_removed() {
    let b = start_broker().await;
    let conn = connect(&b).await;
    let ch = confirm_channel(&conn).await;
    for q in ["a", "b", "c"] {
        queue(&ch, q, false).await;
        bind(&ch, q, "amq.direct", q, FieldTable::default()).await;
    }
    let headers = table(vec![
        ("CC", keys(&["b", "a"])),
        ("BCC", keys(&["c"])),
        ("model", ls("llama")),
    ]);
    let props = BasicProperties::default().with_headers(headers);
    assert!(!send(&ch, "amq.direct", "a", b"m", props, true).await);
    for q in ["a", "b", "c"] {
        let got = drain(&ch, q).await;
        assert_eq!(got.len(), 1, "queue {q} gets exactly one copy");
        let d = &got[0].delivery;
        assert_eq!(
            d.routing_key.as_str(),
            "a",
            "delivered with the publish key"
        );
        let h = d.properties.headers().as_ref().expect("headers kept");
        assert!(!h.inner().contains_key("BCC"), "BCC stripped for queue {q}");
        assert_eq!(h.inner().get("CC"), Some(&keys(&["b", "a"])));
        assert_eq!(h.inner().get("model"), Some(&ls("llama")));
    }
    // BCC alone reaches its queue, and CC works on the default exchange too.
    let props = BasicProperties::default().with_headers(table(vec![("BCC", keys(&["b"]))]));
    assert!(!send(&ch, "", "nowhere", b"bcc-only", props, true).await);
    let got = drain(&ch, "b").await;
    assert_eq!(got.len(), 1);
    assert!(got[0]
        .delivery
        .properties
        .headers()
        .as_ref()
        .is_none_or(|h| !h.inner().contains_key("BCC")));
    let props = BasicProperties::default().with_headers(table(vec![("CC", keys(&["c"]))]));
    assert!(!send(&ch, "", "a", b"default", props, true).await);
    assert_eq!(bodies(&ch, "a").await, ["default"]);
    assert_eq!(bodies(&ch, "c").await, ["default"]);
}

#[tokio::test]
async fn unusable_cc_entries_are_ignored_and_a_non_array_cc_is_406() {
    let b = start_broker().await;
    let conn = connect(&b).await;
    let ch = confirm_channel(&conn).await;
    queue(&ch, "main", false).await;
    bind(&ch, "main", "amq.topic", "main", FieldTable::default()).await;
    queue(&ch, "all", false).await;
    bind(&ch, "all", "amq.topic", "all.#", FieldTable::default()).await;
    let long = format!("all.{}", "x".repeat(300));
    let cc = AMQPValue::FieldArray(FieldArray::from(vec![AMQPValue::LongInt(7), ls(&long)]));
    let props = BasicProperties::default().with_headers(table(vec![("CC", cc)]));
    assert!(!send(&ch, "amq.topic", "main", b"m", props, true).await);
    assert_eq!(bodies(&ch, "main").await, ["m"]);
    assert!(bodies(&ch, "all").await.is_empty());
    // A CC header that is not an array is refused, as RabbitMQ does (406).
    let props = BasicProperties::default().with_headers(table(vec![("CC", ls("all.x"))]));
    let confirm = within(
        "publish",
        ch.basic_publish(
            "amq.topic".into(),
            "main".into(),
            BasicPublishOptions::default(),
            b"n",
            props,
        ),
    )
    .await;
    let err = match confirm {
        Ok(c) => within("confirm", c).await.expect_err("channel closed"),
        Err(e) => e,
    };
    assert_eq!(reply_code(&err), Some(406), "{err:?}");
}

#[tokio::test]
async fn topic_edge_cases() {
    let b = start_broker().await;
    let conn = connect(&b).await;
    let ch = confirm_channel(&conn).await;
    exchange(&ch, "t", ExchangeKind::Topic, false, FieldTable::default()).await;
    let patterns = [
        ("empty", ""),
        ("hash", "#"),
        ("star", "*"),
        ("empty-word", "a..b"),
        ("star-mid", "a.*.b"),
        ("hash-hash", "#.#"),
        ("prefix", "inference.summarize.*"),
        ("embed", "embed.#"),
        ("hash-mid", "a.#.b"),
    ];
    for (q, p) in patterns {
        queue(&ch, q, false).await;
        bind(&ch, q, "t", p, FieldTable::default()).await;
    }
    let cases: &[(&str, &[&str])] = &[
        ("", &["empty", "hash", "hash-hash"]),
        ("a", &["hash", "star", "hash-hash"]),
        (
            "a..b",
            &["hash", "empty-word", "star-mid", "hash-hash", "hash-mid"],
        ),
        ("a.b", &["hash", "hash-hash", "hash-mid"]),
        ("inference.summarize.gpu", &["hash", "prefix", "hash-hash"]),
        ("inference.summarize", &["hash", "hash-hash"]),
        ("inference.summarize.gpu.x", &["hash", "hash-hash"]),
        ("embed", &["hash", "star", "hash-hash", "embed"]),
        ("embed.text.v2", &["hash", "hash-hash", "embed"]),
        (".", &["hash", "hash-hash"]),
    ];
    for (key, want) in cases {
        pub_key(&ch, "t", key, key.as_bytes()).await;
        for (q, _) in patterns {
            let got = bodies(&ch, q).await;
            let expect: Vec<String> = if want.contains(&q) {
                vec![key.to_string()]
            } else {
                vec![]
            };
            assert_eq!(got, expect, "key {key:?}, queue {q}");
        }
    }
    // Unbinding one of two equivalent patterns leaves the other.
    within(
        "unbind",
        ch.queue_unbind(
            "hash-hash".into(),
            "t".into(),
            "#.#".into(),
            FieldTable::default(),
        ),
    )
    .await
    .unwrap();
    pub_key(&ch, "t", "z", b"z").await;
    assert_eq!(bodies(&ch, "hash").await, ["z"]);
    assert!(bodies(&ch, "hash-hash").await.is_empty());
}

#[tokio::test]
async fn headers_typed_values_with_x_and_presence() {
    let b = start_broker().await;
    let conn = connect(&b).await;
    let ch = confirm_channel(&conn).await;
    let bindings = [
        ("int", table(vec![("gpus", AMQPValue::LongInt(1))])),
        ("str", table(vec![("gpus", ls("1"))])),
        (
            "tenant",
            table(vec![
                ("x-match", ls("any-with-x")),
                ("x-tenant", ls("acme")),
            ]),
        ),
        (
            "ignored-x",
            table(vec![("x-match", ls("any")), ("x-tenant", ls("acme"))]),
        ),
        (
            "present",
            table(vec![("model", AMQPValue::Void), ("task", ls("embed"))]),
        ),
    ];
    for (q, args) in &bindings {
        queue(&ch, q, false).await;
        bind(&ch, q, "amq.headers", "", args.clone()).await;
    }
    let cases: Vec<(FieldTable, &[&str])> = vec![
        // A long-long 1 is the integer 1 (integer widths compare by value), not "1".
        (table(vec![("gpus", AMQPValue::LongLongInt(1))]), &["int"]),
        (table(vec![("gpus", ls("1"))]), &["str"]),
        (table(vec![("x-tenant", ls("acme"))]), &["tenant"]),
        (
            table(vec![
                ("model", AMQPValue::Boolean(false)),
                ("task", ls("embed")),
            ]),
            &["present"],
        ),
        (table(vec![("task", ls("embed"))]), &[]),
    ];
    for (i, (headers, want)) in cases.into_iter().enumerate() {
        let props = BasicProperties::default().with_headers(headers);
        let body = format!("m{i}");
        assert_eq!(
            send(&ch, "amq.headers", "", body.as_bytes(), props, true).await,
            want.is_empty()
        );
        for (q, _) in &bindings {
            let expect: Vec<String> = if want.contains(q) {
                vec![body.clone()]
            } else {
                vec![]
            };
            assert_eq!(bodies(&ch, q).await, expect, "case {i}, queue {q}");
        }
    }
}

#[tokio::test]
async fn malformed_x_match_is_406() {
    let b = start_broker().await;
    let conn = connect(&b).await;
    queue(&channel(&conn).await, "h", false).await;
    for bad in [ls("most"), AMQPValue::LongInt(1)] {
        let ch = channel(&conn).await;
        let args = table(vec![("x-match", bad)]);
        let o = QueueBindOptions::default();
        let r = within(
            "bind",
            ch.queue_bind("h".into(), "amq.match".into(), "".into(), o, args),
        )
        .await;
        assert_eq!(code(r), 406);
    }
}

#[tokio::test]
async fn binding_to_missing_things_is_404_and_unbinding_missing_is_ok() {
    let b = start_broker().await;
    let conn = connect(&b).await;
    let ch = channel(&conn).await;
    queue(&ch, "q", false).await;
    let o = QueueBindOptions::default;
    let nx = FieldTable::default;
    assert_eq!(
        code(
            within(
                "bind",
                ch.queue_bind("q".into(), "nope".into(), "k".into(), o(), nx())
            )
            .await
        ),
        404
    );
    let ch = channel(&conn).await;
    assert_eq!(
        code(
            within(
                "bind",
                ch.queue_bind("nope".into(), "amq.direct".into(), "k".into(), o(), nx())
            )
            .await
        ),
        404
    );
    let ch = channel(&conn).await;
    let eo = ExchangeBindOptions::default;
    assert_eq!(
        code(
            within(
                "xbind",
                ch.exchange_bind("nope".into(), "amq.direct".into(), "k".into(), eo(), nx())
            )
            .await
        ),
        404
    );
    let ch = channel(&conn).await;
    assert_eq!(
        code(
            within(
                "xbind",
                ch.exchange_bind("amq.direct".into(), "nope".into(), "k".into(), eo(), nx())
            )
            .await
        ),
        404
    );
    let ch = channel(&conn).await;
    within(
        "unbind",
        ch.queue_unbind("q".into(), "amq.direct".into(), "never".into(), nx()),
    )
    .await
    .expect("unbind of nothing");
    within(
        "unbind",
        ch.queue_unbind("nope".into(), "nope".into(), "k".into(), nx()),
    )
    .await
    .expect("unbind of missing");
    let uo = ExchangeUnbindOptions::default();
    within(
        "xunbind",
        ch.exchange_unbind(
            "amq.fanout".into(),
            "amq.direct".into(),
            "k".into(),
            uo,
            nx(),
        ),
    )
    .await
    .expect("xunbind");
}

#[tokio::test]
async fn deleting_the_destination_removes_e2e_bindings_and_auto_deletes_the_source() {
    let b = start_broker().await;
    let conn = connect(&b).await;
    let ch = confirm_channel(&conn).await;
    let o = ExchangeDeclareOptions {
        auto_delete: true,
        ..Default::default()
    };
    within(
        "declare",
        ch.exchange_declare("src".into(), ExchangeKind::Fanout, o, FieldTable::default()),
    )
    .await
    .unwrap();
    exchange(
        &ch,
        "dst",
        ExchangeKind::Fanout,
        false,
        FieldTable::default(),
    )
    .await;
    xbind(&ch, "dst", "src", "").await;
    within(
        "delete",
        ch.exchange_delete("dst".into(), ExchangeDeleteOptions::default()),
    )
    .await
    .unwrap();
    let passive = ExchangeDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let r = within(
        "passive",
        ch.exchange_declare(
            "src".into(),
            ExchangeKind::Fanout,
            passive,
            FieldTable::default(),
        ),
    )
    .await;
    assert_eq!(
        code(r),
        404,
        "auto-delete source went with its last binding"
    );
}

#[tokio::test]
async fn durable_e2e_bindings_survive_a_restart() {
    let mut b = start_broker().await;
    {
        let conn = connect(&b).await;
        let ch = confirm_channel(&conn).await;
        exchange(&ch, "in", ExchangeKind::Topic, true, FieldTable::default()).await;
        exchange(
            &ch,
            "models",
            ExchangeKind::Direct,
            true,
            FieldTable::default(),
        )
        .await;
        exchange(
            &ch,
            "gone",
            ExchangeKind::Direct,
            true,
            FieldTable::default(),
        )
        .await;
        exchange(
            &ch,
            "transient",
            ExchangeKind::Direct,
            false,
            FieldTable::default(),
        )
        .await;
        queue(&ch, "llama", true).await;
        bind(
            &ch,
            "llama",
            "models",
            "inference.llama",
            FieldTable::default(),
        )
        .await;
        xbind(&ch, "models", "in", "inference.*").await;
        xbind(&ch, "models", "in", "unbound.*").await;
        xbind(&ch, "gone", "in", "#").await;
        xbind(&ch, "transient", "in", "#").await;
        let uo = ExchangeUnbindOptions::default();
        within(
            "xunbind",
            ch.exchange_unbind(
                "models".into(),
                "in".into(),
                "unbound.*".into(),
                uo,
                FieldTable::default(),
            ),
        )
        .await
        .unwrap();
        within(
            "delete",
            ch.exchange_delete("gone".into(), ExchangeDeleteOptions::default()),
        )
        .await
        .unwrap();
        pub_key(&ch, "in", "inference.llama", b"before").await;
        assert_eq!(bodies(&ch, "llama").await, ["before"]);
    }
    b.stop().await;
    let dir = b.dir;
    let b = start_broker_with(test_config(dir.path()), dir).await;
    let conn = connect(&b).await;
    let ch = confirm_channel(&conn).await;
    pub_key(&ch, "in", "inference.llama", b"after").await;
    assert_eq!(
        bodies(&ch, "llama").await,
        ["after"],
        "e2e binding recovered"
    );
    // The unbound and the deleted-destination bindings did not come back.
    queue(&ch, "probe", false).await;
    bind(
        &ch,
        "probe",
        "models",
        "unbound.llama",
        FieldTable::default(),
    )
    .await;
    exchange(
        &ch,
        "gone",
        ExchangeKind::Direct,
        true,
        FieldTable::default(),
    )
    .await;
    bind(&ch, "probe", "gone", "x", FieldTable::default()).await;
    pub_key(&ch, "in", "unbound.llama", b"u").await;
    pub_key(&ch, "in", "x", b"x").await;
    assert!(bodies(&ch, "probe").await.is_empty());
    // The transient destination is gone, and so is the binding to it.
    let passive = ExchangeDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let r = within(
        "passive",
        ch.exchange_declare(
            "transient".into(),
            ExchangeKind::Direct,
            passive,
            FieldTable::default(),
        ),
    )
    .await;
    assert_eq!(code(r), 404);
}
