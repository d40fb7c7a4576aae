//! Shared test helpers: an in-process broker on port 0 with a fresh data dir, lapin
//! connections to it, and bounded waits.
#![allow(dead_code)]

pub mod http;
pub mod process;
pub mod raw;
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::{Channel, Connection, ConnectionProperties};
use std::future::Future;
use std::time::Duration;
use warrenmq::config::Config;
use warrenmq::server::ServerHandle;

pub struct TestBroker {
    pub handle: Option<ServerHandle>,
    pub dir: tempfile::TempDir,
    pub uri: String,
}

impl TestBroker {
    pub fn addr(&self) -> std::net::SocketAddr {
        self.handle.as_ref().expect("running").amqp_addr
    }

    pub async fn stop(&mut self) {
        if let Some(h) = self.handle.take() {
            h.shutdown().await;
        }
    }
}

pub fn test_config(dir: &std::path::Path) -> Config {
    Config {
        amqp_addr: "127.0.0.1:0".parse().unwrap(),
        http_addr: "127.0.0.1:0".parse().unwrap(),
        metrics_addr: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.to_path_buf(),
        log_level: "warn".into(),
        // Wrong-password tests need not wait the production second.
        auth_failure_delay: 50,
        ..Config::default()
    }
}

pub async fn start_broker() -> TestBroker {
    let dir = tempfile::tempdir().expect("temp dir");
    start_broker_with(test_config(dir.path()), dir).await
}

pub async fn start_broker_with(config: Config, dir: tempfile::TempDir) -> TestBroker {
    // After a restart in the same process, sled's own I/O threads can hold the data dir's
    // lock a moment after the last handle went away: retry that, briefly.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let handle = loop {
        match warrenmq::server::start(config.clone()).await {
            Ok(h) => break h,
            Err(e)
                if format!("{e:?}").contains("could not acquire lock")
                    && std::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            Err(e) => panic!("broker starts: {e:?}"),
        }
    };
    let uri = format!("amqp://guest:guest@{}/%2f", handle.amqp_addr);
    TestBroker {
        handle: Some(handle),
        dir,
        uri,
    }
}

/// Fail the test instead of hanging: every await in tests goes through this.
pub async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(Duration::from_secs(15), fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out waiting for {what}"),
    }
}

pub async fn connect(b: &TestBroker) -> Connection {
    within(
        "connect",
        Connection::connect(&b.uri, ConnectionProperties::default()),
    )
    .await
    .expect("connect")
}

pub async fn channel(c: &Connection) -> Channel {
    within("channel", c.create_channel())
        .await
        .expect("channel")
}

/// Reply code of a channel or connection error returned by lapin.
pub fn reply_code(e: &lapin::Error) -> Option<u16> {
    match e.kind() {
        lapin::ErrorKind::ProtocolError(amqp) => Some(amqp.get_id()),
        _ => None,
    }
}

/// (reply code, reply text) of an operation that must have failed with an AMQP error.
pub fn failure<T>(r: Result<T, lapin::Error>) -> (u16, String) {
    match r {
        Ok(_) => panic!("expected an AMQP error, the operation succeeded"),
        Err(e) => match e.kind() {
            lapin::ErrorKind::ProtocolError(amqp) => {
                (amqp.get_id(), amqp.get_message().to_string())
            }
            other => panic!("not a protocol error: {other:?}"),
        },
    }
}

/// A durable queue without arguments.
pub async fn declare_durable(ch: &Channel, name: &str) {
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    within(
        "queue.declare",
        ch.queue_declare(name.into(), durable, FieldTable::default()),
    )
    .await
    .expect("declare");
}

pub async fn declare(ch: &Channel, name: &str) {
    within(
        "queue.declare",
        ch.queue_declare(
            name.into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        ),
    )
    .await
    .expect("declare");
}

pub async fn publish(ch: &Channel, exchange: &str, key: &str, body: &[u8]) {
    within(
        "publish",
        ch.basic_publish(
            exchange.into(),
            key.into(),
            BasicPublishOptions::default(),
            body,
            lapin::BasicProperties::default(),
        ),
    )
    .await
    .expect("publish");
}

/// Publish through the default exchange; its confirm (on a channel in confirm mode), to
/// await later.
pub async fn publish_to(
    ch: &Channel,
    q: &str,
    body: &[u8],
    props: lapin::BasicProperties,
) -> lapin::PublisherConfirm {
    within(
        "publish",
        ch.basic_publish(
            "".into(),
            q.into(),
            BasicPublishOptions::default(),
            body,
            props,
        ),
    )
    .await
    .expect("publish")
}

/// Publish through the default exchange on a channel in confirm mode; true if acked.
pub async fn confirmed(ch: &Channel, q: &str, body: &[u8], props: lapin::BasicProperties) -> bool {
    let c = publish_to(ch, q, body, props).await;
    within("confirm", c).await.expect("confirm").is_ack()
}

/// Publish a persistent message through the default exchange; its confirm, to await later.
pub async fn publish_persistent(ch: &Channel, q: &str, body: &[u8]) -> lapin::PublisherConfirm {
    publish_to(
        ch,
        q,
        body,
        lapin::BasicProperties::default().with_delivery_mode(2),
    )
    .await
}

/// Next delivery from a lapin consumer, bounded in time.
pub async fn next(consumer: &mut lapin::Consumer) -> lapin::message::Delivery {
    use futures_lite::StreamExt;
    within("delivery", consumer.next())
        .await
        .expect("consumer stream ended")
        .expect("delivery error")
}

/// Ready messages in a queue, read with a passive declare.
pub async fn ready_count(ch: &Channel, q: &str) -> u32 {
    within(
        "passive queue.declare",
        ch.queue_declare(
            q.into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        ),
    )
    .await
    .expect("passive declare")
    .message_count()
}

/// A fresh lapin client can connect and work.
pub async fn still_serving(b: &TestBroker) {
    let c = connect(b).await;
    let ch = channel(&c).await;
    declare(&ch, "alive").await;
    publish(&ch, "", "alive", b"ping").await;
    let got = within(
        "basic.get",
        ch.basic_get("alive".into(), BasicGetOptions { no_ack: true }),
    )
    .await
    .unwrap()
    .expect("a message");
    assert_eq!(got.delivery.data, b"ping");
}
