//! Options, latency histogram and counters shared by the load generators
//! (`loadgen` and `rawgen` include this file with `#[path]`), so both accept
//! the same options and measure the same way.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use clap::Parser;

// ---------------------------------------------------------------------------
// Options
// ---------------------------------------------------------------------------

#[derive(Parser, Debug, Clone)]
#[command(
    name = "loadgen",
    about = "PerfTest-like AMQP 0-9-1 load generator (throughput and end-to-end latency)"
)]
pub struct Opts {
    /// AMQP URI of the broker.
    #[arg(long, default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
    pub uri: String,
    /// Number of publishers (one connection each).
    #[arg(short = 'x', long, default_value_t = 1)]
    pub publishers: usize,
    /// Number of consumers (one connection each).
    #[arg(short = 'y', long, default_value_t = 1)]
    pub consumers: usize,
    /// Message body size in bytes (>= 16 for latency with run-id check, >= 8 for latency).
    #[arg(short = 's', long, default_value_t = 16)]
    pub size: usize,
    /// Publish with delivery-mode 2 (persistent).
    #[arg(long)]
    pub persistent: bool,
    /// Publisher confirms: maximum unconfirmed messages per publisher (0 = confirms off).
    #[arg(short = 'c', long, default_value_t = 0)]
    pub confirm: usize,
    /// basic.qos prefetch count per consumer (0 = unlimited).
    #[arg(short = 'q', long, default_value_t = 0)]
    pub prefetch: u16,
    /// Acknowledge every N messages with multiple=true (1 = ack each message).
    #[arg(short = 'A', long, default_value_t = 1)]
    pub multi_ack_every: u64,
    /// Consume with no-ack (automatic acknowledgement).
    #[arg(short = 'a', long)]
    pub auto_ack: bool,
    /// Publish rate limit per publisher in msg/s (0 = unlimited).
    #[arg(short = 'r', long, default_value_t = 0.0)]
    pub rate: f64,
    /// Messages each publisher sends before it stops (0 = no limit).
    #[arg(short = 'C', long, default_value_t = 0)]
    pub pmessages: u64,
    /// Exchange to publish to ("" = default exchange). Declared unless it is "" or starts with "amq.".
    #[arg(short = 'e', long, default_value = "")]
    pub exchange: String,
    /// Type of the exchange when it is declared (direct, fanout, topic, headers).
    #[arg(short = 't', long, default_value = "direct")]
    pub exchange_type: String,
    /// Routing key (default: the queue name).
    #[arg(short = 'k', long)]
    pub routing_key: Option<String>,
    /// Queue name (declared). Without it a server-named queue is declared.
    /// With --queues/--fanout-queues N > 1 the queues are named NAME-0 .. NAME-(N-1).
    #[arg(short = 'u', long)]
    pub queue: Option<String>,
    /// Queue arguments: comma separated k=v list; integers, true/false or strings,
    /// e.g. x-max-length=100000,x-queue-type=classic.
    #[arg(long, default_value = "")]
    pub queue_args: String,
    /// Declare the queue(s) durable.
    #[arg(long)]
    pub durable_queue: bool,
    /// Run time in seconds.
    #[arg(short = 'z', long, default_value_t = 10.0)]
    pub duration: f64,
    /// Fanout scenario: declare a fanout exchange (--exchange, default "loadgen.fanout")
    /// bound to N queues; consumer i consumes queue i % N.
    #[arg(long, default_value_t = 0)]
    pub fanout_queues: usize,
    /// Spread publishers and consumers over N queues (publisher i -> queue i % N,
    /// consumer j <- queue j % N).
    #[arg(long, default_value_t = 1)]
    pub queues: usize,
    /// Declare the queues auto-delete (the broker removes them when their last
    /// consumer goes away; server-named queues always are).
    #[arg(long)]
    pub auto_delete: bool,
    /// Do not delete the queues / exchange this tool declared at the end.
    #[arg(long)]
    pub keep_queues: bool,
    /// Print the summary as one JSON object on stdout (per-second lines still go to stderr).
    #[arg(long)]
    pub json: bool,
    /// Do not print per-second lines.
    #[arg(long)]
    pub quiet: bool,
    /// Seconds at the start excluded from the averages and summary percentiles.
    #[arg(long, default_value_t = 1.0)]
    pub warmup: f64,
    /// loadgen: publishes per publisher handed to the client library before
    /// waiting for them to be written (pipelining depth). rawgen: most
    /// messages per publisher written with one write call.
    #[arg(long, default_value_t = 256)]
    pub pipeline: usize,
    /// Worker threads of the async runtime (default: number of CPUs).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Idle-connection scenario: instead of publishing and consuming, open N
    /// connections with one channel each (at most 64 handshakes at a time),
    /// report on stderr when they are all open, hold them for --duration
    /// seconds and close them. The broker's memory is measured meanwhile.
    #[arg(long, default_value_t = 0)]
    pub idle_connections: usize,
}

// ---------------------------------------------------------------------------
// Latency histogram (log-linear, lock-free, ~0.8% precision)
// ---------------------------------------------------------------------------

const SUB_BITS: u32 = 7; // 128 exact values, then 64 sub-buckets per power of two
const SUB: u64 = 1 << SUB_BITS;
const HALF: u64 = SUB / 2;
const MAX_MSB: u32 = 43; // values are clamped to < 2^44 ns (~4.9 h)
pub const BUCKETS: usize = (SUB + (MAX_MSB as u64 - SUB_BITS as u64 + 1) * HALF) as usize;

pub fn bucket_of(v: u64) -> usize {
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
pub fn bucket_value(idx: usize) -> u64 {
    let idx = idx as u64;
    if idx < SUB {
        return idx;
    }
    let k = idx - SUB;
    let shift = k / HALF + 1;
    let m = k % HALF + HALF;
    (m << shift) + (1u64 << shift) / 2
}

pub struct Histogram {
    buckets: Box<[AtomicU64]>,
}

impl Histogram {
    pub fn new() -> Self {
        Self {
            buckets: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
        }
    }
    #[inline]
    pub fn record(&self, v: u64) {
        self.buckets[bucket_of(v)].fetch_add(1, Ordering::Relaxed);
    }
    pub fn snapshot(&self) -> Vec<u64> {
        self.buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect()
    }
}

#[derive(Clone, Copy, Debug, Default)]
pub struct Percentiles {
    pub count: u64,
    pub p50: u64,
    pub p95: u64,
    pub p99: u64,
    pub max: u64,
}

/// Percentiles (in ns) of `now - before` bucket counts.
pub fn percentiles(now: &[u64], before: &[u64]) -> Percentiles {
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
pub struct Padded(pub AtomicU64);

#[derive(Default)]
pub struct Counters {
    pub published: Padded,
    pub confirmed: Padded,
    pub nacked: Padded,
    pub consumed: Padded,
}

#[derive(Clone, Copy, Debug, Default)]
pub struct Snap {
    pub published: u64,
    pub confirmed: u64,
    pub nacked: u64,
    pub consumed: u64,
}

impl Counters {
    pub fn snap(&self) -> Snap {
        Snap {
            published: self.published.0.load(Ordering::Relaxed),
            confirmed: self.confirmed.0.load(Ordering::Relaxed),
            nacked: self.nacked.0.load(Ordering::Relaxed),
            consumed: self.consumed.0.load(Ordering::Relaxed),
        }
    }
}

pub struct Shared {
    pub counters: Counters,
    pub hist: Histogram,
    pub run_id: u64,
    pub failed: AtomicBool,
}

#[inline]
pub fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}
