//! Connections: authentication, vhosts, heartbeats, channel vs connection errors, server
//! properties, channel limits, update-secret and broker shutdown.

mod common;
use amq_protocol::frame::AMQPFrame;
use amq_protocol::protocol::{channel as chan, connection as conn, AMQPClass};
use amq_protocol::types::{AMQPValue, FieldTable};
use common::raw::{encode, publish_frames, Raw};
use common::*;
use lapin::options::*;
use lapin::{Connection, ConnectionProperties};
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;

const HEARTBEAT_FRAME: [u8; 8] = [8, 0, 0, 0, 0, 0, 0, 0xCE];

/// The reply code of an operation that must fail with a protocol error.
fn code<T>(r: Result<T, lapin::Error>) -> u16 {
    match r {
        Ok(_) => panic!("expected an AMQP error, the operation succeeded"),
        Err(e) => reply_code(&e).unwrap_or_else(|| panic!("not a protocol error: {e:?}")),
    }
}

async fn connect_uri(uri: &str) -> Result<Connection, lapin::Error> {
    within(
        "connect",
        Connection::connect(uri, ConnectionProperties::default()),
    )
    .await
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test]
async fn wrong_password_is_refused_and_the_broker_keeps_serving() {
    let b = start_broker().await;
    let uri = format!("amqp://guest:wrong@{}/%2f", b.addr());
    // lapin advertises authentication_failure_close, so the refusal is a 403 close.
    assert_eq!(code(connect_uri(&uri).await), 403);
    let uri = format!("amqp://nobody:guest@{}/%2f", b.addr());
    assert_eq!(code(connect_uri(&uri).await), 403);
    still_serving(&b).await;
}

#[tokio::test]
async fn unknown_vhost_is_530() {
    let b = start_broker().await;
    let uri = format!("amqp://guest:guest@{}/no-such-vhost", b.addr());
    assert_eq!(code(connect_uri(&uri).await), 530);
    still_serving(&b).await;
}

#[tokio::test]
async fn silent_client_is_dropped_after_two_missed_heartbeats() {
    let b = start_broker().await;
    let mut r = Raw::open_with(b.addr(), 4096, 1).await;
    let start = Instant::now();
    // Say nothing; the broker must give up after about two intervals (2 s).
    let bytes = tokio::time::timeout(Duration::from_secs(5), r.read_to_close())
        .await
        .expect("the broker did not drop a silent client within 5 s");
    let elapsed = start.elapsed();
    assert!(
        elapsed >= Duration::from_millis(1500),
        "dropped too early, after {elapsed:?}"
    );
    assert!(
        elapsed <= Duration::from_millis(4000),
        "dropped too late, after {elapsed:?}"
    );
    // Meanwhile the broker itself kept sending heartbeats.
    assert!(
        contains(&bytes, &HEARTBEAT_FRAME),
        "no heartbeat frame among {bytes:?}"
    );
    still_serving(&b).await;
}

#[tokio::test]
async fn broker_sends_heartbeats_to_an_idle_client() {
    let b = start_broker().await;
    let mut r = Raw::open_with(b.addr(), 4096, 1).await;
    let mut seen = Vec::new();
    let mut tmp = [0u8; 256];
    // With a 1 s interval a heartbeat is due well before the 2 s dead-peer limit.
    let found = tokio::time::timeout(Duration::from_millis(1800), async {
        loop {
            let n = r.sock.read(&mut tmp).await.expect("read");
            assert!(n > 0, "socket closed before a heartbeat, got {seen:?}");
            seen.extend_from_slice(&tmp[..n]);
            if contains(&seen, &HEARTBEAT_FRAME) {
                return;
            }
        }
    })
    .await;
    assert!(found.is_ok(), "no heartbeat within 1.8 s; got {seen:?}");

    // A client that answers with heartbeats stays connected past the dead-peer limit.
    let until = tokio::time::Instant::now() + Duration::from_millis(3500);
    let mut beats = 0;
    loop {
        let read = tokio::time::timeout_at(until, r.sock.read(&mut tmp)).await;
        match read {
            Err(_) => break,
            Ok(Ok(n)) if n > 0 => {
                if contains(&tmp[..n], &HEARTBEAT_FRAME) {
                    beats += 1;
                    r.send_raw(&HEARTBEAT_FRAME).await;
                }
            }
            Ok(other) => {
                panic!("connection dropped although the client sent heartbeats: {other:?}")
            }
        }
    }
    assert!(beats >= 2, "only {beats} heartbeats in 3.5 s");
    r.open_channel(1).await;
}

#[tokio::test]
async fn channel_error_closes_only_that_channel() {
    let b = start_broker().await;
    let c = connect(&b).await;
    let ok = channel(&c).await;
    let bad = channel(&c).await;
    declare(&ok, "q").await;
    publish(&ok, "", "q", b"before").await;
    let r = within(
        "passive declare",
        bad.queue_declare(
            "missing".into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            Default::default(),
        ),
    )
    .await;
    assert_eq!(code(r), 404);
    assert!(!bad.status().connected(), "the failed channel is closed");
    // The other channel and the connection still work.
    assert!(ok.status().connected());
    publish(&ok, "", "q", b"after").await;
    let q = within(
        "declare",
        ok.queue_declare(
            "q".into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            Default::default(),
        ),
    )
    .await
    .unwrap();
    assert_eq!(q.message_count(), 2);
    let third = channel(&c).await;
    declare(&third, "q").await;
    assert!(c.status().connected());
}

#[tokio::test]
async fn server_properties_advertise_product_and_capabilities() {
    let b = start_broker().await;
    let mut r = Raw::tcp(b.addr()).await;
    r.send_raw(b"AMQP\x00\x00\x09\x01").await;
    let start = match r.recv().await {
        Some(AMQPFrame::Method(0, AMQPClass::Connection(conn::AMQPMethod::Start(s)))) => s,
        other => panic!("expected connection.start, got {other:?}"),
    };
    assert_eq!((start.version_major, start.version_minor), (0, 9));
    let mechanisms = String::from_utf8_lossy(start.mechanisms.as_bytes()).into_owned();
    let mut mechanisms: Vec<&str> = mechanisms.split(' ').collect();
    mechanisms.sort();
    assert_eq!(mechanisms, vec!["AMQPLAIN", "PLAIN", "RABBIT-CR-DEMO"]);
    assert_eq!(start.locales.as_bytes(), b"en_US");

    let props = start.server_properties.inner();
    for key in ["product", "version", "platform", "cluster_name"] {
        match props.get(key) {
            Some(AMQPValue::LongString(s)) => assert!(!s.as_bytes().is_empty(), "{key} empty"),
            other => panic!("server property {key}: {other:?}"),
        }
    }
    let caps: &FieldTable = match props.get("capabilities") {
        Some(AMQPValue::FieldTable(t)) => t,
        other => panic!("capabilities: {other:?}"),
    };
    for cap in [
        "publisher_confirms",
        "consumer_cancel_notify",
        "basic.nack",
        "exchange_exchange_bindings",
        "connection.blocked",
        "authentication_failure_close",
        "per_consumer_qos",
        "consumer_priorities",
        "direct_reply_to",
    ] {
        assert_eq!(
            caps.inner().get(cap),
            Some(&AMQPValue::Boolean(true)),
            "capability {cap}"
        );
    }
}

#[tokio::test]
async fn second_channel_open_on_an_open_channel_is_504() {
    let b = start_broker().await;
    let mut r = Raw::open(b.addr()).await;
    r.open_channel(1).await;
    r.send(AMQPFrame::Method(
        1,
        AMQPClass::Channel(chan::AMQPMethod::Open(chan::Open {})),
    ))
    .await;
    assert_eq!(r.expect_connection_close().await, (504, 20, 10));
    still_serving(&b).await;
}

#[tokio::test]
async fn channel_max_bounds_open_channels_not_channel_numbers() {
    let b = start_broker().await;
    // Raw::open negotiates channel_max 16. Any number may be used, as in RabbitMQ.
    let mut r = Raw::open(b.addr()).await;
    r.open_channel(65535).await;
    for id in 1..=15 {
        r.open_channel(id * 100).await;
    }
    r.send(AMQPFrame::Method(
        17,
        AMQPClass::Channel(chan::AMQPMethod::Open(chan::Open {})),
    ))
    .await;
    let close = r.expect_connection_close_full().await;
    assert_eq!(
        close,
        (
            530,
            "NOT_ALLOWED - number of channels opened (16) has reached the negotiated \
             channel_max (16)"
                .to_string(),
            0,
            0
        )
    );
    still_serving(&b).await;
}

#[tokio::test]
async fn update_secret_is_answered() {
    let b = start_broker().await;
    let c = connect(&b).await;
    within(
        "update-secret",
        c.update_secret("new-secret".into(), "token refresh".into()),
    )
    .await
    .expect("update-secret-ok");
    // The connection is still fine afterwards.
    let ch = channel(&c).await;
    declare(&ch, "q").await;
}

#[tokio::test]
async fn update_secret_raw_gets_update_secret_ok() {
    let b = start_broker().await;
    let mut r = Raw::open(b.addr()).await;
    r.send(AMQPFrame::Method(
        0,
        AMQPClass::Connection(conn::AMQPMethod::UpdateSecret(conn::UpdateSecret {
            new_secret: "s".into(),
            reason: "refresh".into(),
        })),
    ))
    .await;
    match r.recv().await {
        Some(AMQPFrame::Method(0, AMQPClass::Connection(conn::AMQPMethod::UpdateSecretOk(_)))) => {}
        other => panic!("expected connection.update-secret-ok, got {other:?}"),
    }
}

#[tokio::test]
async fn shutdown_sends_connection_forced_320() {
    let mut b = start_broker().await;
    let mut r = Raw::open(b.addr()).await;
    r.open_channel(1).await;
    let (_, close) = within("shutdown", async {
        tokio::join!(b.stop(), r.expect_connection_close())
    })
    .await;
    assert_eq!(close, (320, 0, 0));
    // After close-ok the socket ends.
    assert!(r.read_to_close().await.is_empty());
}

/// Start a raw handshake and answer start with `props` and a wrong password.
async fn raw_wrong_password(b: &TestBroker, props: FieldTable) -> Raw {
    raw_start(b, props, "PLAIN", "\0guest\0not-the-password")
        .await
        .0
}

#[tokio::test]
async fn failed_login_with_authentication_failure_close_gets_rabbitmq_text() {
    let b = start_broker().await;
    let mut r = raw_wrong_password(&b, failure_close()).await;
    match r.recv().await {
        Some(AMQPFrame::Method(0, AMQPClass::Connection(conn::AMQPMethod::Close(c)))) => {
            assert_eq!(c.reply_code, 403);
            assert_eq!(
                c.reply_text.as_str(),
                "ACCESS_REFUSED - Login was refused using authentication mechanism PLAIN. \
                 For details see the broker logfile."
            );
            assert_eq!((c.class_id, c.method_id), (10, 11));
        }
        other => panic!("expected connection.close, got {other:?}"),
    }
    still_serving(&b).await;
}

#[tokio::test]
async fn failed_login_without_the_capability_just_closes_the_socket() {
    let b = start_broker().await;
    let mut r = raw_wrong_password(&b, FieldTable::default()).await;
    assert!(r.read_to_close().await.is_empty());
    still_serving(&b).await;
}

#[tokio::test]
async fn failed_login_is_answered_after_the_configured_delay() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = test_config(dir.path());
    cfg.auth_failure_delay = 300;
    let b = start_broker_with(cfg, dir).await;
    let started = Instant::now();
    let mut r = raw_wrong_password(&b, FieldTable::default()).await;
    assert!(r.read_to_close().await.is_empty());
    // A lower bound only: the refusal cannot come before the delay.
    assert!(started.elapsed() >= Duration::from_millis(300));
}

/// A client may still be sending when it closes: amqplib, for one, goes on writing
/// publishes queued on a channel after its connection.close, even after the close-ok has
/// arrived. The broker answers close-ok and reads on (bounded) until the client closes, so
/// those writes land and the socket ends with a clean EOF, never a reset.
#[tokio::test]
async fn close_ok_reaches_a_client_still_sending_after_its_close() {
    use tokio::io::AsyncWriteExt;
    let b = start_broker().await;
    let mut r = Raw::open_with(b.addr(), 131072, 0).await;
    r.open_channel(1).await;
    let close = encode(&AMQPFrame::Method(
        0,
        AMQPClass::Connection(conn::AMQPMethod::Close(conn::Close {
            reply_code: 200,
            reply_text: "bye".into(),
            class_id: 0,
            method_id: 0,
        })),
    ));
    let publish: Vec<u8> = publish_frames("nowhere", &[7u8; 1024])
        .iter()
        .flat_map(encode)
        .collect();
    let burst: Vec<u8> = publish
        .iter()
        .copied()
        .cycle()
        .take(16 * publish.len())
        .collect();
    let (mut rd, mut wr) = r.sock.into_split();
    let mut sent = close.clone();
    sent.extend_from_slice(&burst);
    within("write", wr.write_all(&sent)).await.unwrap();
    let close_ok = encode(&AMQPFrame::Method(
        0,
        AMQPClass::Connection(conn::AMQPMethod::CloseOk(conn::CloseOk {})),
    ));
    let mut got = vec![0u8; close_ok.len()];
    within("close-ok", rd.read_exact(&mut got)).await.unwrap();
    assert_eq!(got, close_ok);
    // Still flushing after the close-ok: about 1 MB more, in pieces.
    for i in 0..64 {
        if let Err(e) = within("write", wr.write_all(&burst)).await {
            panic!("write {i} after close-ok failed: {e}");
        }
        tokio::task::yield_now().await;
    }
    drop(wr);
    let mut rest = Vec::new();
    match within("EOF", rd.read_to_end(&mut rest)).await {
        Ok(_) => assert!(rest.is_empty(), "nothing after close-ok: {rest:?}"),
        Err(e) => panic!("socket ended with {e}, not EOF"),
    }
}

/// Header, connection.start (its mechanisms returned), and a start-ok with `mechanism`.
async fn raw_start(
    b: &TestBroker,
    props: FieldTable,
    mechanism: &str,
    response: &str,
) -> (Raw, String) {
    let mut r = Raw::tcp(b.addr()).await;
    r.send_raw(b"AMQP\x00\x00\x09\x01").await;
    let mechanisms = match r.recv().await {
        Some(AMQPFrame::Method(0, AMQPClass::Connection(conn::AMQPMethod::Start(s)))) => {
            String::from_utf8_lossy(s.mechanisms.as_bytes()).into_owned()
        }
        other => panic!("expected connection.start, got {other:?}"),
    };
    r.send(AMQPFrame::Method(
        0,
        AMQPClass::Connection(conn::AMQPMethod::StartOk(conn::StartOk {
            client_properties: props,
            mechanism: mechanism.into(),
            response: response.into(),
            locale: "en_US".into(),
        })),
    ))
    .await;
    (r, mechanisms)
}

/// Client properties with the `authentication_failure_close` capability.
fn failure_close() -> FieldTable {
    let mut caps = FieldTable::default();
    caps.insert(
        "authentication_failure_close".into(),
        AMQPValue::Boolean(true),
    );
    let mut props = FieldTable::default();
    props.insert("capabilities".into(), AMQPValue::FieldTable(caps));
    props
}

/// RabbitMQ's RABBIT-CR-DEMO (amqprs' suite logs in with it): the user name in start-ok,
/// connection.secure asks for the password, secure-ok gives it.
#[tokio::test]
async fn rabbit_cr_demo_logs_in_through_connection_secure() {
    let b = start_broker().await;
    for (answer, accepted) in [
        ("My password is guest", true),
        ("My password is nope", false),
    ] {
        let (mut r, mechanisms) = raw_start(&b, failure_close(), "RABBIT-CR-DEMO", "guest").await;
        assert_eq!(mechanisms, "PLAIN AMQPLAIN RABBIT-CR-DEMO");
        match r.recv().await {
            Some(AMQPFrame::Method(0, AMQPClass::Connection(conn::AMQPMethod::Secure(s)))) => {
                assert_eq!(s.challenge.as_bytes(), b"Please tell me your password")
            }
            other => panic!("expected connection.secure, got {other:?}"),
        }
        r.send(AMQPFrame::Method(
            0,
            AMQPClass::Connection(conn::AMQPMethod::SecureOk(conn::SecureOk {
                response: answer.into(),
            })),
        ))
        .await;
        if accepted {
            match r.recv().await {
                Some(AMQPFrame::Method(0, AMQPClass::Connection(conn::AMQPMethod::Tune(_)))) => {}
                other => panic!("expected connection.tune, got {other:?}"),
            }
        } else {
            let (code, _, _) = r.expect_connection_close().await;
            assert_eq!(code, 403);
        }
    }
}

/// `auth_mechanisms` chooses what is offered; anything else is refused as RabbitMQ refuses
/// an unknown mechanism (503).
#[tokio::test]
async fn auth_mechanisms_limit_what_is_offered() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = test_config(dir.path());
    cfg.auth_mechanisms = vec!["PLAIN".into()];
    let b = start_broker_with(cfg, dir).await;
    let (mut r, mechanisms) = raw_start(&b, failure_close(), "RABBIT-CR-DEMO", "guest").await;
    assert_eq!(mechanisms, "PLAIN");
    let (code, _, _) = r.expect_connection_close().await;
    assert_eq!(code, 503);
    still_serving(&b).await;
}

/// A port free on both 127.0.0.1 and [::1] at the time of asking; None without IPv6.
fn free_port_on_both_loopbacks() -> Option<u16> {
    for _ in 0..20 {
        let v4 = std::net::TcpListener::bind("127.0.0.1:0").ok()?;
        let port = v4.local_addr().ok()?.port();
        match std::net::TcpListener::bind(("::1", port)) {
            Ok(_) => return Some(port),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => continue,
            Err(_) => return None,
        }
    }
    None
}

/// `localhost` is ::1 first for many clients: a broker on 127.0.0.1 with a fixed port also
/// answers AMQP and HTTP on [::1], still loopback only (guest may log in there).
#[tokio::test]
async fn loopback_listeners_also_answer_on_ipv6_loopback() {
    let (Some(amqp), Some(http)) = (free_port_on_both_loopbacks(), free_port_on_both_loopbacks())
    else {
        eprintln!("skipped: no IPv6 loopback on this machine");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = test_config(dir.path());
    cfg.amqp_addr = ([127, 0, 0, 1], amqp).into();
    cfg.http_addr = ([127, 0, 0, 1], http).into();
    let b = start_broker_with(cfg, dir).await;
    // (A raw client: lapin's URI parser does not take a bracketed IPv6 host.)
    let sock = within(
        "connect over [::1]",
        tokio::net::TcpStream::connect(("::1", amqp)),
    )
    .await
    .expect("AMQP on [::1]");
    let mut r = Raw::over(sock);
    r.handshake(131072, 0).await;
    r.open_channel(1).await;
    let c = connect(&b).await;
    let ch = channel(&c).await;
    declare(&ch, "v6").await;
    let r = within(
        "GET over [::1]",
        reqwest::Client::new()
            .get(format!("http://[::1]:{http}/api/queues/%2F/v6"))
            .basic_auth("guest", Some("guest"))
            .send(),
    )
    .await
    .expect("HTTP on [::1]");
    assert_eq!(r.status(), 200);
    // The AMQP connection really came over IPv6.
    let conns: serde_json::Value = within(
        "GET connections",
        reqwest::Client::new()
            .get(format!("http://127.0.0.1:{http}/api/connections"))
            .basic_auth("guest", Some("guest"))
            .send(),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let peers: Vec<&str> = conns
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["peer_host"].as_str())
        .collect();
    assert!(peers.contains(&"::1"), "{conns}");
    still_serving(&b).await;
}

fn close_frame(channel: u16, code: u16) -> AMQPFrame {
    if channel == 0 {
        AMQPFrame::Method(
            0,
            AMQPClass::Connection(conn::AMQPMethod::Close(conn::Close {
                reply_code: code,
                reply_text: "bye".into(),
                class_id: 0,
                method_id: 0,
            })),
        )
    } else {
        AMQPFrame::Method(
            channel,
            AMQPClass::Channel(chan::AMQPMethod::Close(chan::Close {
                reply_code: code,
                reply_text: "bye".into(),
                class_id: 0,
                method_id: 0,
            })),
        )
    }
}

/// amqp091-go closes one connection from many goroutines: every connection.close gets
/// its close-ok, and the socket stays open until the client closes it (RabbitMQ 3.10).
#[tokio::test]
async fn every_pipelined_connection_close_gets_a_close_ok() {
    let b = start_broker().await;
    let mut r = Raw::open(b.addr()).await;
    let mut two = encode(&close_frame(0, 200));
    two.extend(encode(&close_frame(0, 200)));
    r.send_raw(&two).await;
    for _ in 0..2 {
        match r.recv().await {
            Some(AMQPFrame::Method(0, AMQPClass::Connection(conn::AMQPMethod::CloseOk(_)))) => {}
            other => panic!("expected connection.close-ok, got {other:?}"),
        }
    }
    // One more, after both answers: the broker has not closed its side.
    r.send(close_frame(0, 200)).await;
    match r.recv().await {
        Some(AMQPFrame::Method(0, AMQPClass::Connection(conn::AMQPMethod::CloseOk(_)))) => {}
        other => panic!("expected a third connection.close-ok, got {other:?}"),
    }
    still_serving(&b).await;
}

/// The client closes a channel while the broker is closing it for an error: the
/// client's close gets close-ok, the broker's close waits for the client's close-ok, and
/// the channel number is then free again (RabbitMQ's reader; amqp091-go issue 43).
#[tokio::test]
async fn channel_closed_from_both_sides_at_once() {
    let b = start_broker().await;
    let mut r = Raw::open(b.addr()).await;
    r.open_channel(1).await;
    let passive = AMQPFrame::Method(
        1,
        AMQPClass::Queue(amq_protocol::protocol::queue::AMQPMethod::Declare(
            amq_protocol::protocol::queue::Declare {
                queue: "missing".into(),
                passive: true,
                ..Default::default()
            },
        )),
    );
    let mut both = encode(&passive);
    both.extend(encode(&close_frame(1, 200)));
    r.send_raw(&both).await;
    match r.recv().await {
        Some(AMQPFrame::Method(1, AMQPClass::Channel(chan::AMQPMethod::Close(c)))) => {
            assert_eq!(c.reply_code, 404)
        }
        other => panic!("expected channel.close 404, got {other:?}"),
    }
    match r.recv().await {
        Some(AMQPFrame::Method(1, AMQPClass::Channel(chan::AMQPMethod::CloseOk(_)))) => {}
        other => panic!("expected channel.close-ok for the client's close, got {other:?}"),
    }
    r.send(AMQPFrame::Method(
        1,
        AMQPClass::Channel(chan::AMQPMethod::CloseOk(chan::CloseOk {})),
    ))
    .await;
    r.open_channel(1).await;
    still_serving(&b).await;
}

/// connection.close-ok comes only after the connection is released, as RabbitMQ's reader
/// sends it: once a client has its close-ok, every other client sees the unacked messages
/// requeued and the exclusive queues gone.
#[tokio::test]
async fn close_ok_follows_the_release_of_unacked_messages_and_exclusive_queues() {
    const N: u32 = 3000;
    let b = start_broker().await;
    let observer = connect(&b).await;
    let och = channel(&observer).await;
    declare(&och, "work").await;
    for _ in 0..N {
        publish(&och, "", "work", b"task").await;
    }
    let conn = connect(&b).await;
    let ch = channel(&conn).await;
    let exclusive = QueueDeclareOptions {
        exclusive: true,
        ..Default::default()
    };
    within(
        "exclusive declare",
        ch.queue_declare("mine".into(), exclusive, FieldTable::default()),
    )
    .await
    .expect("exclusive declare");
    let _consumer = within(
        "consume",
        ch.basic_consume(
            "work".into(),
            "holder".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        ),
    )
    .await
    .expect("consume");
    // Every message delivered and unacked.
    let deadline = Instant::now() + Duration::from_secs(10);
    while ready_count(&och, "work").await > 0 {
        assert!(
            Instant::now() < deadline,
            "deliveries did not drain the queue"
        );
        tokio::task::yield_now().await;
    }
    within("connection.close", conn.close(200, "bye".into()))
        .await
        .expect("close");
    assert_eq!(
        ready_count(&och, "work").await,
        N,
        "requeued before close-ok"
    );
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let r = within(
        "passive declare",
        och.queue_declare("mine".into(), passive, FieldTable::default()),
    )
    .await;
    assert_eq!(code(r), 404, "the exclusive queue is gone before close-ok");
}
