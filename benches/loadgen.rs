//! `loadgen`: a PerfTest-like AMQP 0-9-1 load generator.
//!
//! Publishers and consumers each get their own connection. Every message
//! body carries the publish wall-clock time (nanoseconds since the Unix
//! epoch, little endian) in bytes 0..8 and a per-run id in bytes 8..16, so
//! the consumers can compute end-to-end latency (only messages of the
//! current run are counted for latency).
//!
//! Run with e.g.
//!
//! ```text
//! cargo bench --bench loadgen -- --uri amqp://guest:guest@127.0.0.1:5672/%2f \
//!     --publishers 1 --consumers 1 --size 16 --auto-ack --duration 10
//! ```
//!
//! See benches/README.md for all options.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures_lite::future::poll_once;
use futures_lite::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use tokio::time::Instant;

#[path = "loadgen/common.rs"]
mod common;
#[path = "loadgen/driver.rs"]
mod driver;

use common::{now_nanos, Opts, Shared};
use driver::{redact, Generator, SetupConn, Worker};

fn main() {
    driver::main_with::<Lapin>(
        "loadgen",
        "PerfTest-like AMQP 0-9-1 load generator (throughput and end-to-end latency)",
    );
}

/// The generator built on the lapin client.
struct Lapin;

impl Generator for Lapin {
    type Setup = LapinSetup;
    async fn connect_setup(o: &Opts) -> Result<LapinSetup, String> {
        let (conn, ch) = connect(&o.uri, "setup").await?;
        Ok(LapinSetup { conn, ch })
    }
    fn consumer(
        w: Worker,
        queue: String,
    ) -> impl Future<Output = Result<(), String>> + Send + 'static {
        run_consumer(w, queue)
    }
    fn publisher(
        w: Worker,
        exchange: String,
        routing_key: String,
    ) -> impl Future<Output = Result<(), String>> + Send + 'static {
        run_publisher(w, exchange, routing_key)
    }
    type Idle = (Connection, Channel);
    async fn idle(o: Arc<Opts>, id: usize) -> Result<(Connection, Channel), String> {
        connect(&o.uri, &format!("idle {id}")).await
    }
    async fn close_idle(c: (Connection, Channel)) {
        close_quietly(&c.0).await
    }
}

struct LapinSetup {
    conn: Connection,
    ch: Channel,
}

fn exchange_kind(s: &str) -> ExchangeKind {
    match s {
        "direct" => ExchangeKind::Direct,
        "fanout" => ExchangeKind::Fanout,
        "topic" => ExchangeKind::Topic,
        "headers" => ExchangeKind::Headers,
        other => ExchangeKind::Custom(other.to_string()),
    }
}

impl SetupConn for LapinSetup {
    async fn declare_exchange(
        &mut self,
        name: &str,
        kind: &str,
        durable: bool,
    ) -> Result<(), String> {
        self.ch
            .exchange_declare(
                name.into(),
                exchange_kind(kind),
                ExchangeDeclareOptions {
                    durable,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(|e| e.to_string())
    }
    async fn declare_queue(
        &mut self,
        name: &str,
        durable: bool,
        auto_delete: bool,
        args: &FieldTable,
    ) -> Result<String, String> {
        let q = self
            .ch
            .queue_declare(
                name.into(),
                QueueDeclareOptions {
                    durable,
                    auto_delete,
                    ..Default::default()
                },
                args.clone(),
            )
            .await
            .map_err(|e| e.to_string())?;
        Ok(q.name().as_str().to_string())
    }
    async fn bind_queue(
        &mut self,
        queue: &str,
        exchange: &str,
        routing_key: &str,
    ) -> Result<(), String> {
        self.ch
            .queue_bind(
                queue.into(),
                exchange.into(),
                routing_key.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| e.to_string())
    }
    async fn delete_queues(&mut self, queues: &[String]) -> usize {
        // Concurrently: thousands of queues one round trip at a time is slow.
        let mut set = tokio::task::JoinSet::new();
        for q in queues {
            let ch = self.ch.clone();
            let q = q.clone();
            set.spawn(async move {
                ch.queue_delete(q.as_str().into(), QueueDeleteOptions::default())
                    .await
                    .is_ok()
            });
        }
        let mut deleted = 0;
        while let Some(r) = set.join_next().await {
            if matches!(r, Ok(true)) {
                deleted += 1;
            }
        }
        deleted
    }
    async fn delete_exchange(&mut self, name: &str) {
        let _ = self
            .ch
            .exchange_delete(name.into(), ExchangeDeleteOptions::default())
            .await;
    }
    async fn close(self) {
        close_quietly(&self.conn).await;
    }
}

// ---------------------------------------------------------------------------
// FIFO of in-flight futures (publish writes, acks), polled lazily
// ---------------------------------------------------------------------------

type BoxFut<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

struct Fifo<'a, T> {
    q: VecDeque<BoxFut<'a, T>>,
}

impl<'a, T: Send + 'a> Fifo<'a, T> {
    fn new(cap: usize) -> Self {
        Self {
            q: VecDeque::with_capacity(cap),
        }
    }
    fn len(&self) -> usize {
        self.q.len()
    }
    /// Start `f` (poll it once). Returns its output if it finished at once and
    /// nothing older is pending; otherwise it is queued.
    async fn start(&mut self, f: impl Future<Output = T> + Send + 'a) -> Option<T> {
        let mut f: BoxFut<'a, T> = Box::pin(f);
        match poll_once(&mut f).await {
            Some(out) if self.q.is_empty() => Some(out),
            Some(out) => {
                self.q.push_back(Box::pin(std::future::ready(out)));
                None
            }
            None => {
                self.q.push_back(f);
                None
            }
        }
    }
    /// Pop the oldest entry if it is already finished.
    async fn pop_ready(&mut self) -> Option<T> {
        let front = self.q.front_mut()?;
        let out = poll_once(front).await?;
        self.q.pop_front();
        Some(out)
    }
    /// Wait for the oldest entry.
    async fn pop(&mut self) -> Option<T> {
        let front = self.q.front_mut()?;
        let out = front.await;
        self.q.pop_front();
        Some(out)
    }
}

async fn connect(uri: &str, what: &str) -> Result<(Connection, Channel), String> {
    let limit = Duration::from_secs(20);
    let conn = tokio::time::timeout(
        limit,
        Connection::connect(uri, ConnectionProperties::default()),
    )
    .await
    .map_err(|_| format!("{what}: connect to {}: timed out", redact(uri)))?
    .map_err(|e| format!("{what}: connect to {}: {e}", redact(uri)))?;
    let ch = tokio::time::timeout(limit, conn.create_channel())
        .await
        .map_err(|_| format!("{what}: channel.open: timed out"))?
        .map_err(|e| format!("{what}: channel.open: {e}"))?;
    Ok((conn, ch))
}

async fn close_quietly(conn: &Connection) {
    let _ = tokio::time::timeout(Duration::from_secs(3), conn.close(200, "bye".into())).await;
}

// ---------------------------------------------------------------------------
// Consumer
// ---------------------------------------------------------------------------

async fn run_consumer(mut w: Worker, queue: String) -> Result<(), String> {
    let (o, shared, id) = (w.o.clone(), w.shared.clone(), w.id);
    let what = format!("consumer {id}");
    let setup = async {
        let (conn, ch) = connect(&o.uri, &what).await?;
        if o.prefetch > 0 {
            ch.basic_qos(o.prefetch, BasicQosOptions::default())
                .await
                .map_err(|e| format!("{what}: basic.qos: {e}"))?;
        }
        let consumer = ch
            .basic_consume(
                queue.as_str().into(),
                format!("loadgen-{id}").into(),
                BasicConsumeOptions {
                    no_ack: o.auto_ack,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(|e| format!("{what}: basic.consume {queue:?}: {e}"))?;
        Ok::<_, String>((conn, ch, consumer))
    };
    let ((conn, ch, mut consumer), deadline) = w.started(setup.await).await?;

    let ack_every = w.ack_every();
    let multiple = ack_every > 1;
    let check_run = o.size >= 16;
    // Acks go through Channel::basic_ack, whose frame is queued when the future
    // is first polled on this task, so pipelined (multiple) acks keep their
    // order. (Acker::ack hands the ack to a spawned task, which can reorder
    // concurrent acks.)
    let mut acks: Fifo<'_, lapin::Result<()>> = Fifo::new(64);
    let mut unacked = 0u64;
    let stop = tokio::time::sleep_until(deadline);
    tokio::pin!(stop);
    let mut result = Ok(());
    let mut done: Vec<lapin::Result<()>> = Vec::with_capacity(72);
    'deliveries: loop {
        let next = tokio::select! {
            biased;
            _ = &mut stop => break,
            d = consumer.next() => d,
        };
        let delivery = match next {
            Some(Ok(d)) => d,
            Some(Err(e)) => {
                result = Err(format!("{what}: {e}"));
                break;
            }
            None => {
                result = Err(format!("{what}: consumer cancelled"));
                break;
            }
        };
        let data = &delivery.data;
        if data.len() >= 8 {
            let ts = u64::from_le_bytes(data[0..8].try_into().unwrap());
            let ours =
                !check_run || u64::from_le_bytes(data[8..16].try_into().unwrap()) == shared.run_id;
            if ours {
                shared.hist.record(now_nanos().saturating_sub(ts));
            }
        }
        shared.counters.consumed.0.fetch_add(1, Ordering::Relaxed);
        if o.auto_ack {
            continue;
        }
        unacked += 1;
        if unacked < ack_every {
            continue;
        }
        unacked = 0;
        let f = ch.basic_ack(delivery.delivery_tag, BasicAckOptions { multiple });
        done.clear();
        if let Some(r) = acks.start(f).await {
            done.push(r);
        }
        while let Some(r) = acks.pop_ready().await {
            done.push(r);
        }
        if acks.len() >= 64 {
            tokio::select! {
                biased;
                _ = &mut stop => break 'deliveries,
                r = acks.pop() => done.extend(r),
            }
        }
        for r in done.drain(..) {
            if let Err(e) = r {
                result = Err(format!("{what}: basic.ack: {e}"));
                break 'deliveries;
            }
        }
    }
    drop(acks);
    drop(consumer);
    drop(ch);
    close_quietly(&conn).await;
    result
}

// ---------------------------------------------------------------------------
// Publisher
// ---------------------------------------------------------------------------

async fn run_publisher(mut w: Worker, exchange: String, routing_key: String) -> Result<(), String> {
    let (o, shared, id) = (w.o.clone(), w.shared.clone(), w.id);
    let what = format!("publisher {id}");
    let setup = async {
        let (conn, ch) = connect(&o.uri, &what).await?;
        if o.confirm > 0 {
            ch.confirm_select(ConfirmSelectOptions::default())
                .await
                .map_err(|e| format!("{what}: confirm.select: {e}"))?;
        }
        Ok::<_, String>((conn, ch))
    };
    let ((conn, ch), deadline) = w.started(setup.await).await?;
    let result = publish_loop(&o, &shared, &ch, &exchange, &routing_key, deadline, &what).await;
    close_quietly(&conn).await;
    result
}

async fn publish_loop(
    o: &Opts,
    shared: &Shared,
    ch: &Channel,
    exchange: &str,
    routing_key: &str,
    deadline: Instant,
    what: &str,
) -> Result<(), String> {
    // Body buffers travel with their in-flight publish and come back when it
    // completes, so steady state allocates no bodies.
    let mut pool: Vec<Vec<u8>> = Vec::with_capacity(o.pipeline.max(1) + 1);
    let new_body = || {
        let mut b = vec![0u8; o.size];
        if o.size >= 16 {
            b[8..16].copy_from_slice(&shared.run_id.to_le_bytes());
        }
        b
    };
    let props = if o.persistent {
        BasicProperties::default().with_delivery_mode(2)
    } else {
        BasicProperties::default()
    };
    let exchange: ShortString = exchange.into();
    let routing_key: ShortString = routing_key.into();
    let pipeline = o.pipeline.max(1);
    let confirm_window = o.confirm;
    let counters = &shared.counters;

    type Written = (lapin::Result<lapin::PublisherConfirm>, Vec<u8>);
    let mut writes: Fifo<'_, Written> = Fifo::new(pipeline);
    let mut confirms: VecDeque<lapin::PublisherConfirm> = VecDeque::new();

    let interval = if o.rate > 0.0 {
        Some(Duration::from_secs_f64(1.0 / o.rate))
    } else {
        None
    };
    let mut next_send = Instant::now();
    let stop = tokio::time::sleep_until(deadline);
    tokio::pin!(stop);

    let on_written = |(r, buf): Written,
                      pool: &mut Vec<Vec<u8>>,
                      confirms: &mut VecDeque<lapin::PublisherConfirm>|
     -> Result<(), String> {
        pool.push(buf);
        let pc = r.map_err(|e| format!("{what}: basic.publish: {e}"))?;
        if confirm_window > 0 {
            confirms.push_back(pc);
        }
        Ok(())
    };
    let on_confirm = |r: lapin::Result<lapin::Confirmation>| -> Result<(), String> {
        match r.map_err(|e| format!("{what}: publisher confirm: {e}"))? {
            lapin::Confirmation::Nack(_) => {
                counters.nacked.0.fetch_add(1, Ordering::Relaxed);
            }
            _ => {
                counters.confirmed.0.fetch_add(1, Ordering::Relaxed);
            }
        }
        Ok(())
    };

    let mut published = 0u64;
    loop {
        let now = Instant::now();
        if now >= deadline || (o.pmessages > 0 && published >= o.pmessages) {
            break;
        }
        if let Some(iv) = interval {
            if next_send > now {
                tokio::select! {
                    biased;
                    _ = &mut stop => break,
                    _ = tokio::time::sleep_until(next_send) => {}
                }
            } else if now.duration_since(next_send) > Duration::from_millis(100) {
                // do not try to catch up on more than 100 ms of backlog
                next_send = now;
            }
            next_send += iv;
        }

        // Respect the confirm window: outstanding = not yet written + unconfirmed.
        while confirm_window > 0 && writes.len() + confirms.len() >= confirm_window {
            if let Some(front) = confirms.front_mut() {
                let r = tokio::select! {
                    biased;
                    _ = &mut stop => return Ok(()),
                    r = front => r,
                };
                confirms.pop_front();
                on_confirm(r)?;
            } else {
                let r = tokio::select! {
                    biased;
                    _ = &mut stop => return Ok(()),
                    r = writes.pop() => r,
                };
                if let Some(r) = r {
                    on_written(r, &mut pool, &mut confirms)?;
                }
            }
        }

        let mut body = pool.pop().unwrap_or_else(new_body);
        if o.size >= 8 {
            body[0..8].copy_from_slice(&now_nanos().to_le_bytes());
        }
        let (exchange, routing_key, props) = (exchange.clone(), routing_key.clone(), props.clone());
        let f = async move {
            let r = ch
                .basic_publish(
                    exchange,
                    routing_key,
                    BasicPublishOptions::default(),
                    &body,
                    props,
                )
                .await;
            (r, body)
        };
        if let Some(r) = writes.start(f).await {
            on_written(r, &mut pool, &mut confirms)?;
        }
        counters.published.0.fetch_add(1, Ordering::Relaxed);
        published += 1;

        // Reap whatever already completed, then bound the write pipeline.
        while let Some(r) = writes.pop_ready().await {
            on_written(r, &mut pool, &mut confirms)?;
        }
        while let Some(front) = confirms.front_mut() {
            match poll_once(front).await {
                Some(r) => {
                    confirms.pop_front();
                    on_confirm(r)?;
                }
                None => break,
            }
        }
        while writes.len() >= pipeline {
            let r = tokio::select! {
                biased;
                _ = &mut stop => return Ok(()),
                r = writes.pop() => r,
            };
            if let Some(r) = r {
                on_written(r, &mut pool, &mut confirms)?;
            }
        }
    }
    Ok(())
}
