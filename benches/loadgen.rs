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
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::Parser;
use futures_lite::future::poll_once;
use futures_lite::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use tokio::time::Instant;

// ---------------------------------------------------------------------------
// Options
// ---------------------------------------------------------------------------

#[derive(Parser, Debug, Clone)]
#[command(
    name = "loadgen",
    about = "PerfTest-like AMQP 0-9-1 load generator (throughput and end-to-end latency)"
)]
struct Opts {
    /// AMQP URI of the broker.
    #[arg(long, default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
    uri: String,
    /// Number of publishers (one connection each).
    #[arg(short = 'x', long, default_value_t = 1)]
    publishers: usize,
    /// Number of consumers (one connection each).
    #[arg(short = 'y', long, default_value_t = 1)]
    consumers: usize,
    /// Message body size in bytes (>= 16 for latency with run-id check, >= 8 for latency).
    #[arg(short = 's', long, default_value_t = 16)]
    size: usize,
    /// Publish with delivery-mode 2 (persistent).
    #[arg(long)]
    persistent: bool,
    /// Publisher confirms: maximum unconfirmed messages per publisher (0 = confirms off).
    #[arg(short = 'c', long, default_value_t = 0)]
    confirm: usize,
    /// basic.qos prefetch count per consumer (0 = unlimited).
    #[arg(short = 'q', long, default_value_t = 0)]
    prefetch: u16,
    /// Acknowledge every N messages with multiple=true (1 = ack each message).
    #[arg(short = 'A', long, default_value_t = 1)]
    multi_ack_every: u64,
    /// Consume with no-ack (automatic acknowledgement).
    #[arg(short = 'a', long)]
    auto_ack: bool,
    /// Publish rate limit per publisher in msg/s (0 = unlimited).
    #[arg(short = 'r', long, default_value_t = 0.0)]
    rate: f64,
    /// Exchange to publish to ("" = default exchange). Declared unless it is "" or starts with "amq.".
    #[arg(short = 'e', long, default_value = "")]
    exchange: String,
    /// Type of the exchange when it is declared (direct, fanout, topic, headers).
    #[arg(short = 't', long, default_value = "direct")]
    exchange_type: String,
    /// Routing key (default: the queue name).
    #[arg(short = 'k', long)]
    routing_key: Option<String>,
    /// Queue name (declared). Without it a server-named queue is declared.
    /// With --queues/--fanout-queues N > 1 the queues are named NAME-0 .. NAME-(N-1).
    #[arg(short = 'u', long)]
    queue: Option<String>,
    /// Queue arguments: comma separated k=v list; integers, true/false or strings,
    /// e.g. x-max-length=100000,x-queue-type=classic.
    #[arg(long, default_value = "")]
    queue_args: String,
    /// Declare the queue(s) durable.
    #[arg(long)]
    durable_queue: bool,
    /// Run time in seconds.
    #[arg(short = 'z', long, default_value_t = 10.0)]
    duration: f64,
    /// Fanout scenario: declare a fanout exchange (--exchange, default "loadgen.fanout")
    /// bound to N queues; consumer i consumes queue i % N.
    #[arg(long, default_value_t = 0)]
    fanout_queues: usize,
    /// Spread publishers and consumers over N queues (publisher i -> queue i % N,
    /// consumer j <- queue j % N).
    #[arg(long, default_value_t = 1)]
    queues: usize,
    /// Declare the queues auto-delete (the broker removes them when their last
    /// consumer goes away; server-named queues always are).
    #[arg(long)]
    auto_delete: bool,
    /// Do not delete the queues / exchange this tool declared at the end.
    #[arg(long)]
    keep_queues: bool,
    /// Print the summary as one JSON object on stdout (per-second lines still go to stderr).
    #[arg(long)]
    json: bool,
    /// Do not print per-second lines.
    #[arg(long)]
    quiet: bool,
    /// Seconds at the start excluded from the averages and summary percentiles.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Publishes per publisher handed to the client library before waiting for
    /// them to be written (pipelining depth).
    #[arg(long, default_value_t = 256)]
    pipeline: usize,
    /// Worker threads of the async runtime (default: number of CPUs).
    #[arg(long)]
    threads: Option<usize>,
}

// ---------------------------------------------------------------------------
// Latency histogram (log-linear, lock-free, ~0.8% precision)
// ---------------------------------------------------------------------------

const SUB_BITS: u32 = 7; // 128 exact values, then 64 sub-buckets per power of two
const SUB: u64 = 1 << SUB_BITS;
const HALF: u64 = SUB / 2;
const MAX_MSB: u32 = 43; // values are clamped to < 2^44 ns (~4.9 h)
const BUCKETS: usize = (SUB + (MAX_MSB as u64 - SUB_BITS as u64 + 1) * HALF) as usize;

fn bucket_of(v: u64) -> usize {
    let v = v.min((1u64 << (MAX_MSB + 1)) - 1);
    if v < SUB {
        return v as usize;
    }
    let msb = 63 - v.leading_zeros();
    let shift = msb - (SUB_BITS - 1);
    let m = v >> shift; // in [HALF, SUB)
    (SUB + (shift as u64 - 1) * HALF + (m - HALF)) as usize
}

/// Middle of the value range of a bucket.
fn bucket_value(idx: usize) -> u64 {
    let idx = idx as u64;
    if idx < SUB {
        return idx;
    }
    let k = idx - SUB;
    let shift = k / HALF + 1;
    let m = k % HALF + HALF;
    (m << shift) + (1u64 << shift) / 2
}

struct Histogram {
    buckets: Box<[AtomicU64]>,
}

impl Histogram {
    fn new() -> Self {
        Self {
            buckets: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
        }
    }
    #[inline]
    fn record(&self, v: u64) {
        self.buckets[bucket_of(v)].fetch_add(1, Ordering::Relaxed);
    }
    fn snapshot(&self) -> Vec<u64> {
        self.buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect()
    }
}

#[derive(Clone, Copy, Debug, Default)]
struct Percentiles {
    count: u64,
    p50: u64,
    p95: u64,
    p99: u64,
    max: u64,
}

/// Percentiles (in ns) of `now - before` bucket counts.
fn percentiles(now: &[u64], before: &[u64]) -> Percentiles {
    let diff: Vec<u64> = now
        .iter()
        .zip(before)
        .map(|(a, b)| a.saturating_sub(*b))
        .collect();
    let count: u64 = diff.iter().sum();
    if count == 0 {
        return Percentiles::default();
    }
    let at = |p: f64| -> u64 {
        let rank = ((p * count as f64).ceil() as u64).clamp(1, count);
        let mut cum = 0;
        for (i, c) in diff.iter().enumerate() {
            cum += c;
            if cum >= rank {
                return bucket_value(i);
            }
        }
        0
    };
    let max = diff
        .iter()
        .rposition(|c| *c > 0)
        .map(bucket_value)
        .unwrap_or(0);
    Percentiles {
        count,
        p50: at(0.50),
        p95: at(0.95),
        p99: at(0.99),
        max,
    }
}

// ---------------------------------------------------------------------------
// Shared counters
// ---------------------------------------------------------------------------

#[repr(align(128))]
#[derive(Default)]
struct Padded(AtomicU64);

#[derive(Default)]
struct Counters {
    published: Padded,
    confirmed: Padded,
    nacked: Padded,
    consumed: Padded,
}

#[derive(Clone, Copy, Debug, Default)]
struct Snap {
    published: u64,
    confirmed: u64,
    nacked: u64,
    consumed: u64,
}

impl Counters {
    fn snap(&self) -> Snap {
        Snap {
            published: self.published.0.load(Ordering::Relaxed),
            confirmed: self.confirmed.0.load(Ordering::Relaxed),
            nacked: self.nacked.0.load(Ordering::Relaxed),
            consumed: self.consumed.0.load(Ordering::Relaxed),
        }
    }
}

struct Shared {
    counters: Counters,
    hist: Histogram,
    run_id: u64,
    failed: AtomicBool,
}

#[inline]
fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
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

// ---------------------------------------------------------------------------
// Topology
// ---------------------------------------------------------------------------

struct Topology {
    exchange: String,
    declared_exchange: bool,
    queues: Vec<String>,
    /// Routing key used by publisher i: routing_keys[i % len].
    routing_keys: Vec<String>,
}

fn parse_queue_args(s: &str) -> Result<FieldTable, String> {
    let mut t = FieldTable::default();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (k, v) = part
            .split_once('=')
            .ok_or_else(|| format!("bad --queue-args entry {part:?} (want k=v)"))?;
        let (k, v) = (k.trim(), v.trim());
        let value = if let Ok(i) = v.parse::<i64>() {
            if let Ok(i32v) = i32::try_from(i) {
                AMQPValue::LongInt(i32v)
            } else {
                AMQPValue::LongLongInt(i)
            }
        } else if v == "true" || v == "false" {
            AMQPValue::Boolean(v == "true")
        } else {
            AMQPValue::LongString(LongString::from(v.as_bytes().to_vec()))
        };
        t.insert(ShortString::from(k.to_string()), value);
    }
    Ok(t)
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

async fn declare_topology(ch: &Channel, o: &Opts) -> Result<Topology, String> {
    let fanout = o.fanout_queues > 0;
    let nq = if fanout {
        o.fanout_queues
    } else {
        o.queues.max(1)
    };
    let (exchange, ex_type) = if fanout {
        let e = if o.exchange.is_empty() {
            "loadgen.fanout".to_string()
        } else {
            o.exchange.clone()
        };
        (e, "fanout".to_string())
    } else {
        (o.exchange.clone(), o.exchange_type.clone())
    };
    let mut declared_exchange = false;
    if !exchange.is_empty() && !exchange.starts_with("amq.") {
        ch.exchange_declare(
            exchange.as_str().into(),
            exchange_kind(&ex_type),
            ExchangeDeclareOptions {
                durable: o.durable_queue,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(|e| format!("exchange.declare {exchange:?}: {e}"))?;
        declared_exchange = true;
    }
    let args = parse_queue_args(&o.queue_args)?;
    let mut queues = Vec::with_capacity(nq);
    for i in 0..nq {
        let name = match &o.queue {
            Some(q) if nq == 1 => q.clone(),
            Some(q) => format!("{q}-{i}"),
            None => String::new(),
        };
        let q = ch
            .queue_declare(
                name.as_str().into(),
                QueueDeclareOptions {
                    durable: o.durable_queue,
                    // server-named queues go away with their last consumer
                    auto_delete: o.auto_delete || name.is_empty(),
                    ..Default::default()
                },
                args.clone(),
            )
            .await
            .map_err(|e| format!("queue.declare {name:?}: {e}"))?;
        queues.push(q.name().as_str().to_string());
    }
    let mut routing_keys = Vec::with_capacity(nq);
    for q in &queues {
        let rk = if exchange.is_empty() {
            q.clone()
        } else if let (Some(rk), true) = (&o.routing_key, nq == 1 || fanout) {
            rk.clone()
        } else if fanout {
            String::new()
        } else {
            q.clone()
        };
        if !exchange.is_empty() {
            ch.queue_bind(
                q.as_str().into(),
                exchange.as_str().into(),
                rk.as_str().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| format!("queue.bind {q:?} -> {exchange:?}: {e}"))?;
        }
        routing_keys.push(rk);
    }
    if fanout {
        routing_keys.truncate(1);
    }
    Ok(Topology {
        exchange,
        declared_exchange,
        queues,
        routing_keys,
    })
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

async fn run_consumer(
    o: Arc<Opts>,
    shared: Arc<Shared>,
    queue: String,
    id: usize,
    ready: tokio::sync::mpsc::Sender<Result<(), String>>,
    deadline: Arc<tokio::sync::OnceCell<Instant>>,
) -> Result<(), String> {
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
    let (conn, ch, mut consumer) = match setup.await {
        Ok(v) => {
            let _ = ready.send(Ok(())).await;
            v
        }
        Err(e) => {
            let _ = ready.send(Err(e.clone())).await;
            return Err(e);
        }
    };
    drop(ready);
    // Wait for the start signal (deadline known).
    let deadline = loop {
        if let Some(d) = deadline.get() {
            break *d;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    };

    let mut ack_every = o.multi_ack_every.max(1);
    if o.prefetch > 0 && ack_every > o.prefetch as u64 {
        ack_every = o.prefetch as u64;
    }
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

async fn run_publisher(
    o: Arc<Opts>,
    shared: Arc<Shared>,
    exchange: String,
    routing_key: String,
    id: usize,
    ready: tokio::sync::mpsc::Sender<Result<(), String>>,
    deadline: Arc<tokio::sync::OnceCell<Instant>>,
) -> Result<(), String> {
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
    let (conn, ch) = match setup.await {
        Ok(v) => {
            let _ = ready.send(Ok(())).await;
            v
        }
        Err(e) => {
            let _ = ready.send(Err(e.clone())).await;
            return Err(e);
        }
    };
    drop(ready);
    let deadline = loop {
        if let Some(d) = deadline.get() {
            break *d;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    };
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

    loop {
        let now = Instant::now();
        if now >= deadline {
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

// ---------------------------------------------------------------------------
// Main
// ---------------------------------------------------------------------------

fn fmt_us(ns: u64) -> String {
    format!("{:.0}", ns as f64 / 1000.0)
}

struct Line {
    t: f64,
    published: f64,
    confirmed: f64,
    consumed: f64,
    lat: Percentiles,
}

fn main() {
    // `cargo bench` appends `--bench` to the arguments; drop it.
    let args = std::env::args().filter(|a| a != "--bench");
    let opts = Opts::parse_from(args);
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    rt.enable_all();
    if let Some(n) = opts.threads {
        rt.worker_threads(n.max(1));
    }
    let rt = rt.build().expect("tokio runtime");
    let code = rt.block_on(run(opts));
    // lapin's I/O threads are detached; do not wait for them.
    std::process::exit(code);
}

async fn run(o: Opts) -> i32 {
    if o.duration <= 0.0 {
        eprintln!("--duration must be > 0");
        return 2;
    }
    let o = Arc::new(o);
    let run_id = now_nanos() ^ ((std::process::id() as u64) << 32) | 1;
    let shared = Arc::new(Shared {
        counters: Counters::default(),
        hist: Histogram::new(),
        run_id,
        failed: AtomicBool::new(false),
    });

    // Topology on its own connection.
    let (setup_conn, setup_ch) = match connect(&o.uri, "setup").await {
        Ok(v) => v,
        Err(e) => {
            eprintln!("error: {e}");
            return 1;
        }
    };
    let topo = match tokio::time::timeout(Duration::from_secs(30), declare_topology(&setup_ch, &o))
        .await
        .unwrap_or_else(|_| Err("declaring queues/exchange timed out".into()))
    {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {e}");
            close_quietly(&setup_conn).await;
            return 1;
        }
    };
    if o.fanout_queues > 0 && o.consumers < topo.queues.len() {
        eprintln!(
            "warning: {} queues but only {} consumers; some queues are not consumed",
            topo.queues.len(),
            o.consumers
        );
    }
    if !o.auto_ack && o.prefetch > 0 && o.multi_ack_every > o.prefetch as u64 {
        eprintln!(
            "warning: --multi-ack-every {} > --prefetch {}; acking every {} instead",
            o.multi_ack_every, o.prefetch, o.prefetch
        );
    }

    let start_cell: Arc<tokio::sync::OnceCell<Instant>> = Arc::new(tokio::sync::OnceCell::new());
    let n_tasks = o.consumers + o.publishers;
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel(n_tasks.max(1));
    let mut handles = Vec::with_capacity(n_tasks);
    for j in 0..o.consumers {
        let q = topo.queues[j % topo.queues.len()].clone();
        handles.push(tokio::spawn(run_consumer(
            o.clone(),
            shared.clone(),
            q,
            j,
            ready_tx.clone(),
            start_cell.clone(),
        )));
    }
    // Consumers first, so no early message goes unconsumed.
    let setup_timeout = Duration::from_secs(30);
    let mut setup_err = None;
    let mut got = 0;
    let setup_deadline = Instant::now() + setup_timeout;
    while got < o.consumers {
        match tokio::time::timeout_at(setup_deadline, ready_rx.recv()).await {
            Ok(Some(Ok(()))) => got += 1,
            Ok(Some(Err(e))) => {
                setup_err = Some(e);
                break;
            }
            Ok(None) => break,
            Err(_) => {
                setup_err = Some("timed out setting up consumers".into());
                break;
            }
        }
    }
    if setup_err.is_none() {
        for i in 0..o.publishers {
            let rk = topo.routing_keys[i % topo.routing_keys.len()].clone();
            handles.push(tokio::spawn(run_publisher(
                o.clone(),
                shared.clone(),
                topo.exchange.clone(),
                rk,
                i,
                ready_tx.clone(),
                start_cell.clone(),
            )));
        }
        got = 0;
        while got < o.publishers {
            match tokio::time::timeout_at(setup_deadline, ready_rx.recv()).await {
                Ok(Some(Ok(()))) => got += 1,
                Ok(Some(Err(e))) => {
                    setup_err = Some(e);
                    break;
                }
                Ok(None) => break,
                Err(_) => {
                    setup_err = Some("timed out setting up publishers".into());
                    break;
                }
            }
        }
    }
    drop(ready_tx);

    let start = Instant::now();
    let duration = Duration::from_secs_f64(o.duration);
    let deadline = if setup_err.is_some() {
        start
    } else {
        start + duration
    };
    let _ = start_cell.set(deadline);
    if let Some(e) = &setup_err {
        eprintln!("error: {e}");
    }

    // Reporter: one line per second.
    let mut lines: Vec<Line> = Vec::new();
    let mut prev_snap = shared.counters.snap();
    let mut prev_hist = shared.hist.snapshot();
    let mut prev_t = start;
    let warmup = Duration::from_secs_f64(o.warmup.max(0.0));
    let mut warm: Option<(Instant, Snap, Vec<u64>)> = if warmup.is_zero() || warmup >= duration {
        Some((start, prev_snap, prev_hist.clone()))
    } else {
        None
    };
    let mut tick = 1u64;
    let mut all_done = false;
    while setup_err.is_none() {
        let target = (start + Duration::from_secs(tick)).min(deadline);
        tokio::time::sleep_until(target).await;
        let now = Instant::now();
        let snap = shared.counters.snap();
        let hist = shared.hist.snapshot();
        let dt = now.duration_since(prev_t).as_secs_f64().max(1e-9);
        let line = Line {
            t: now.duration_since(start).as_secs_f64(),
            published: (snap.published - prev_snap.published) as f64 / dt,
            confirmed: (snap.confirmed + snap.nacked - prev_snap.confirmed - prev_snap.nacked)
                as f64
                / dt,
            consumed: (snap.consumed - prev_snap.consumed) as f64 / dt,
            lat: percentiles(&hist, &prev_hist),
        };
        if !o.quiet {
            let mut s = format!("time {:6.1}s  sent {:9.0} msg/s", line.t, line.published);
            if o.confirm > 0 {
                s.push_str(&format!("  confirmed {:9.0} msg/s", line.confirmed));
            }
            s.push_str(&format!("  received {:9.0} msg/s", line.consumed));
            if line.lat.count > 0 {
                s.push_str(&format!(
                    "  latency us p50 {} p95 {} p99 {} max {}",
                    fmt_us(line.lat.p50),
                    fmt_us(line.lat.p95),
                    fmt_us(line.lat.p99),
                    fmt_us(line.lat.max)
                ));
            }
            eprintln!("{s}");
        }
        lines.push(line);
        if warm.is_none() && now.duration_since(start) >= warmup {
            warm = Some((now, snap, hist.clone()));
        }
        prev_snap = snap;
        prev_hist = hist;
        prev_t = now;
        if now >= deadline {
            break;
        }
        if handles.iter().all(|h| h.is_finished()) {
            all_done = true;
            break;
        }
        tick += 1;
    }
    let end = prev_t;
    let end_snap = prev_snap;
    let end_hist = prev_hist;

    // Join tasks (they stop at the deadline by themselves).
    let mut errors = Vec::new();
    if let Some(e) = setup_err {
        errors.push(e);
    }
    let join_deadline = Instant::now() + Duration::from_secs(20);
    let mut stuck = 0;
    for h in handles {
        let abort = h.abort_handle();
        match tokio::time::timeout_at(join_deadline, h).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => errors.push(e),
            Ok(Err(e)) => errors.push(format!("task failed: {e}")),
            Err(_) => {
                abort.abort();
                stuck += 1;
            }
        }
    }
    if stuck > 0 {
        errors.push(format!(
            "{stuck} publisher/consumer tasks did not stop within 20 s"
        ));
    }
    if all_done && errors.is_empty() {
        errors.push("all publishers and consumers stopped early".into());
    }
    for e in &errors {
        eprintln!("error: {e}");
    }
    if !errors.is_empty() {
        shared.failed.store(true, Ordering::Relaxed);
    }

    // Clean up: delete all queues concurrently, then the exchange.
    if !o.keep_queues {
        let mut set = tokio::task::JoinSet::new();
        for q in &topo.queues {
            let ch = setup_ch.clone();
            let q = q.clone();
            set.spawn(async move {
                ch.queue_delete(q.as_str().into(), QueueDeleteOptions::default())
                    .await
                    .is_ok()
            });
        }
        let mut deleted = 0;
        let _ = tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(r) = set.join_next().await {
                if matches!(r, Ok(true)) {
                    deleted += 1;
                }
            }
        })
        .await;
        if deleted < topo.queues.len() {
            eprintln!(
                "warning: deleted {deleted} of {} queues{}",
                topo.queues.len(),
                if o.auto_delete {
                    " (the others are auto-delete)"
                } else {
                    ""
                }
            );
        }
        if topo.declared_exchange {
            let _ = tokio::time::timeout(
                Duration::from_secs(5),
                setup_ch.exchange_delete(
                    topo.exchange.as_str().into(),
                    ExchangeDeleteOptions::default(),
                ),
            )
            .await;
        }
    }
    close_quietly(&setup_conn).await;

    // Summary over [warmup, end].
    let (w_t, w_snap, w_hist) = warm.unwrap_or((start, Snap::default(), vec![0; BUCKETS]));
    let span = end.duration_since(w_t).as_secs_f64().max(1e-9);
    let pub_rate = (end_snap.published - w_snap.published) as f64 / span;
    let conf_rate =
        (end_snap.confirmed + end_snap.nacked - w_snap.confirmed - w_snap.nacked) as f64 / span;
    let cons_rate = (end_snap.consumed - w_snap.consumed) as f64 / span;
    let lat = percentiles(&end_hist, &w_hist);
    let total_lat = percentiles(&end_hist, &vec![0; BUCKETS]);
    let ok = !shared.failed.load(Ordering::Relaxed);

    if o.json {
        let per_second: Vec<String> = lines
            .iter()
            .map(|l| {
                format!(
                    "{{\"t\":{:.3},\"published\":{:.1},\"confirmed\":{:.1},\"consumed\":{:.1},\"latency_us\":{{\"count\":{},\"p50\":{:.1},\"p95\":{:.1},\"p99\":{:.1},\"max\":{:.1}}}}}",
                    l.t,
                    l.published,
                    l.confirmed,
                    l.consumed,
                    l.lat.count,
                    l.lat.p50 as f64 / 1e3,
                    l.lat.p95 as f64 / 1e3,
                    l.lat.p99 as f64 / 1e3,
                    l.lat.max as f64 / 1e3
                )
            })
            .collect();
        println!(
            "{{\"ok\":{ok},\"uri\":{uri:?},\"publishers\":{p},\"consumers\":{c},\"size\":{size},\"persistent\":{pers},\"confirm\":{conf},\"prefetch\":{pf},\"multi_ack_every\":{mae},\"auto_ack\":{aa},\"rate_limit\":{rate},\"queues\":{nq},\"duration_s\":{dur:.3},\"measured_s\":{span:.3},\"published_total\":{pt},\"confirmed_total\":{ct},\"nacked_total\":{nt},\"consumed_total\":{rt},\"publish_rate\":{pr:.1},\"confirm_rate\":{cr:.1},\"consume_rate\":{cor:.1},\"latency_us\":{{\"count\":{lc},\"p50\":{l50:.1},\"p95\":{l95:.1},\"p99\":{l99:.1},\"max\":{lmax:.1}}},\"per_second\":[{ps}]}}",
            uri = redact(&o.uri),
            p = o.publishers,
            c = o.consumers,
            size = o.size,
            pers = o.persistent,
            conf = o.confirm,
            pf = o.prefetch,
            mae = o.multi_ack_every,
            aa = o.auto_ack,
            rate = o.rate,
            nq = topo.queues.len(),
            dur = end.duration_since(start).as_secs_f64(),
            pt = end_snap.published,
            ct = end_snap.confirmed,
            nt = end_snap.nacked,
            rt = end_snap.consumed,
            pr = pub_rate,
            cr = conf_rate,
            cor = cons_rate,
            lc = lat.count,
            l50 = lat.p50 as f64 / 1e3,
            l95 = lat.p95 as f64 / 1e3,
            l99 = lat.p99 as f64 / 1e3,
            lmax = lat.max as f64 / 1e3,
            ps = per_second.join(","),
        );
    } else {
        println!(
            "summary: {} publishers, {} consumers, {} B, {} queue(s), {:.1}s measured (first {:.1}s excluded){}",
            o.publishers,
            o.consumers,
            o.size,
            topo.queues.len(),
            span,
            o.warmup,
            if ok { "" } else { ", ERRORS" }
        );
        println!(
            "  published {} msgs, confirmed {}, nacked {}, consumed {}",
            end_snap.published, end_snap.confirmed, end_snap.nacked, end_snap.consumed
        );
        print!("  publish rate {pub_rate:.0} msg/s");
        if o.confirm > 0 {
            print!(", confirm rate {conf_rate:.0} msg/s");
        }
        println!(", consume rate {cons_rate:.0} msg/s");
        if lat.count > 0 {
            println!(
                "  latency us ({} samples): p50 {} p95 {} p99 {} max {}  (whole run max {})",
                lat.count,
                fmt_us(lat.p50),
                fmt_us(lat.p95),
                fmt_us(lat.p99),
                fmt_us(lat.max),
                fmt_us(total_lat.max)
            );
        }
    }
    if ok {
        0
    } else {
        1
    }
}

/// URI without the password, for printing.
fn redact(uri: &str) -> String {
    if let Some((scheme, rest)) = uri.split_once("://") {
        if let Some((creds, host)) = rest.split_once('@') {
            let user = creds.split(':').next().unwrap_or("");
            return format!("{scheme}://{user}:***@{host}");
        }
    }
    uri.to_string()
}
