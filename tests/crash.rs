//! Crash safety: the real binary is killed with SIGKILL at a random moment while one client
//! publishes persistent messages with confirms and another consumes and acks. After a
//! restart on the same data dir every confirmed message that was not acked is there
//! (at-least-once) and nothing confirmed is lost. Repeated for many rounds.

mod common;
use common::process::{broker_command, free_port, BrokerProcess};
use common::within;
use futures_lite::StreamExt;
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use rand::Rng;
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Rounds in the normal test command; `CRASH_ROUNDS=200` for a longer run.
fn rounds() -> usize {
    std::env::var("CRASH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20)
}

fn spawn_broker(dir: &std::path::Path, port: u16) -> BrokerProcess {
    BrokerProcess(
        broker_command(dir, port, "warn")
            .spawn()
            .expect("start broker"),
    )
}

async fn connect(port: u16) -> Connection {
    let uri = format!("amqp://guest:guest@127.0.0.1:{port}/%2f");
    for _ in 0..300 {
        if let Ok(c) = Connection::connect(&uri, ConnectionProperties::default()).await {
            return c;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("broker did not accept connections on {port}");
}

/// Publish persistent messages `<round>-<n>` with confirms in batches of 50 until the
/// broker dies; the confirmed ids go to `confirmed`.
async fn spawn_publisher(
    port: u16,
    queue: &'static str,
    round: usize,
    confirmed: Arc<Mutex<HashSet<String>>>,
) -> tokio::task::JoinHandle<Result<(), lapin::Error>> {
    let conn = connect(port).await;
    tokio::spawn(async move {
        let ch = conn.create_channel().await?;
        ch.confirm_select(ConfirmSelectOptions::default()).await?;
        let mut i = 0u64;
        loop {
            let mut batch = Vec::new();
            for _ in 0..50 {
                let id = format!("{round}-{i}");
                i += 1;
                let c = ch
                    .basic_publish(
                        "".into(),
                        queue.into(),
                        BasicPublishOptions::default(),
                        id.as_bytes(),
                        BasicProperties::default().with_delivery_mode(2),
                    )
                    .await?;
                batch.push((id, c));
            }
            for (id, c) in batch {
                if c.await?.is_ack() {
                    confirmed.lock().unwrap().insert(id);
                }
            }
        }
    })
}

#[derive(Clone, Copy)]
enum Settle {
    Ack,
    /// Reject without requeue (dead-letters).
    Reject,
}

/// Consume (prefetch 20) and settle every delivery until the broker dies; the settled ids
/// go to `settled`.
async fn spawn_consumer(
    port: u16,
    queue: &'static str,
    settle: Settle,
    settled: Arc<Mutex<HashSet<String>>>,
) -> tokio::task::JoinHandle<Result<(), lapin::Error>> {
    let conn = connect(port).await;
    tokio::spawn(async move {
        let ch = conn.create_channel().await?;
        ch.basic_qos(20, BasicQosOptions::default()).await?;
        let mut c = ch
            .basic_consume(
                queue.into(),
                "c".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        while let Some(d) = c.next().await {
            let d = d?;
            let id = String::from_utf8_lossy(&d.data).into_owned();
            match settle {
                Settle::Ack => {
                    ch.basic_ack(d.delivery_tag, BasicAckOptions::default())
                        .await?
                }
                Settle::Reject => {
                    ch.basic_reject(d.delivery_tag, BasicRejectOptions { requeue: false })
                        .await?
                }
            }
            settled.lock().unwrap().insert(id);
        }
        Ok(())
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_loses_no_confirmed_message() {
    kill_9_rounds(FieldTable::default(), rounds()).await;
}

/// The same for a quorum queue: confirms go out once the group applied the entry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_loses_no_confirmed_message_of_a_quorum_queue() {
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        lapin::types::AMQPValue::LongString("quorum".into()),
    );
    kill_9_rounds(args, rounds().div_ceil(2)).await;
}

async fn kill_9_rounds(args: FieldTable, rounds: usize) {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = rand::rng();
    let mut total_confirmed = 0usize;
    for round in 0..rounds {
        let port = free_port();
        let mut child = spawn_broker(dir.path(), port);
        let setup = connect(port).await;
        let ch = setup.create_channel().await.unwrap();
        let durable = QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        ch.queue_declare("crash".into(), durable, args.clone())
            .await
            .unwrap();

        let confirmed = Arc::new(Mutex::new(HashSet::<String>::new()));
        let acked = Arc::new(Mutex::new(HashSet::<String>::new()));

        let publisher = spawn_publisher(port, "crash", round, confirmed.clone()).await;
        let consumer = spawn_consumer(port, "crash", Settle::Ack, acked.clone()).await;

        let delay = rng.random_range(50..400);
        tokio::time::sleep(Duration::from_millis(delay)).await;
        child.kill9();
        let _ = within("publisher ends", publisher).await;
        let _ = within("consumer ends", consumer).await;

        // Restart on the same data dir and drain the queue.
        let port = free_port();
        let mut child = spawn_broker(dir.path(), port);
        let conn = connect(port).await;
        let ch = conn.create_channel().await.unwrap();
        // Redeclare, as a client would: if the broker died before anything was confirmed,
        // the declaration itself may not have reached the disk.
        ch.queue_declare("crash".into(), durable, args.clone())
            .await
            .unwrap();
        let mut recovered = HashSet::new();
        while let Some(m) = within(
            "get",
            ch.basic_get("crash".into(), BasicGetOptions { no_ack: true }),
        )
        .await
        .unwrap()
        {
            recovered.insert(String::from_utf8_lossy(&m.delivery.data).into_owned());
        }
        let confirmed = confirmed.lock().unwrap().clone();
        let acked = acked.lock().unwrap().clone();
        let lost: Vec<&String> = confirmed
            .iter()
            .filter(|id| !acked.contains(*id) && !recovered.contains(*id))
            .collect();
        assert!(
            lost.is_empty(),
            "round {round}: {} confirmed, {} acked, {} recovered; lost {:?}",
            confirmed.len(),
            acked.len(),
            recovered.len(),
            &lost[..lost.len().min(10)]
        );
        total_confirmed += confirmed.len();
        let _ = conn.close(200, "bye".into()).await;
        child.kill9();
    }
    assert!(
        total_confirmed > 0,
        "the publisher never got a confirm: the test proved nothing"
    );
}

/// At-least-once dead-lettering under SIGKILL: a consumer rejects every message of a
/// quorum queue (x-dead-letter-strategy at-least-once) into a durable dead-letter queue
/// while the broker is killed. After a restart every confirmed message is in the source
/// or in the dead-letter queue (the ones dead-lettered but not yet delivered get there
/// after the restart).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_loses_no_message_dead_lettered_at_least_once() {
    use lapin::types::AMQPValue;
    let text = |s: &str| AMQPValue::LongString(s.into());
    let mut src_args = FieldTable::default();
    for (k, v) in [
        ("x-queue-type", "quorum"),
        ("x-overflow", "reject-publish"),
        ("x-dead-letter-exchange", ""),
        ("x-dead-letter-routing-key", "crash-dlq"),
        ("x-dead-letter-strategy", "at-least-once"),
    ] {
        src_args.insert(k.into(), text(v));
    }
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    let declare_both = |ch: lapin::Channel, args: FieldTable| async move {
        ch.queue_declare("crash-dlq".into(), durable, FieldTable::default())
            .await
            .unwrap();
        ch.queue_declare("crash-src".into(), durable, args)
            .await
            .unwrap();
    };
    let dir = tempfile::tempdir().unwrap();
    let mut rng = rand::rng();
    let mut total_dead = 0usize;
    for round in 0..rounds().div_ceil(5) {
        let port = free_port();
        let mut child = spawn_broker(dir.path(), port);
        let setup = connect(port).await;
        declare_both(setup.create_channel().await.unwrap(), src_args.clone()).await;
        let confirmed = Arc::new(Mutex::new(HashSet::<String>::new()));
        let rejected = Arc::new(Mutex::new(HashSet::<String>::new()));

        let publisher = spawn_publisher(port, "crash-src", round, confirmed.clone()).await;
        let consumer = spawn_consumer(port, "crash-src", Settle::Reject, rejected.clone()).await;
        tokio::time::sleep(Duration::from_millis(rng.random_range(100..400))).await;
        child.kill9();
        let _ = within("publisher ends", publisher).await;
        let _ = within("consumer ends", consumer).await;

        let port = free_port();
        let mut child = spawn_broker(dir.path(), port);
        let conn = connect(port).await;
        let ch = conn.create_channel().await.unwrap();
        declare_both(ch.clone(), src_args.clone()).await;
        let confirmed = confirmed.lock().unwrap().clone();
        // Drain both queues until every confirmed message was seen (bounded): the dead
        // ones still on their way reach the dead-letter queue after the restart.
        let mut seen = HashSet::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while !confirmed.is_subset(&seen) {
            let mut got = false;
            for q in ["crash-src", "crash-dlq"] {
                if let Some(m) = within(
                    "get",
                    ch.basic_get(q.into(), BasicGetOptions { no_ack: true }),
                )
                .await
                .unwrap()
                {
                    seen.insert(String::from_utf8_lossy(&m.delivery.data).into_owned());
                    got = true;
                }
            }
            if !got {
                let missing: Vec<_> = confirmed.difference(&seen).take(10).collect();
                assert!(
                    std::time::Instant::now() < deadline,
                    "round {round}: {} confirmed, {} seen; lost {missing:?}",
                    confirmed.len(),
                    seen.len()
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        total_dead += rejected.lock().unwrap().len();
        let _ = conn.close(200, "bye".into()).await;
        child.kill9();
    }
    assert!(
        total_dead > 0,
        "nothing was dead-lettered before the kills: the test proved nothing"
    );
}
