//! Soak run: mixed traffic against a running broker for a long time (30 minutes by
//! default), sampling the broker's RSS and open descriptors every 10 s, and checking at
//! the end that every confirmed persistent message was consumed.
//!
//! What runs at once (all through lapin, like an application would):
//! - durable pipelines: per queue a publisher with confirms publishing persistent
//!   messages of 100 B–16 KB and a manual-ack consumer (prefetch 100) that nacks with
//!   requeue now and then; both reconnect every 30–60 s, so unacked messages are
//!   requeued and redelivered. Every confirmed sequence number must arrive.
//! - transient traffic: a topic exchange feeding a catch-all queue, a `gpu.*` queue and a
//!   queue with TTL and max-length dead-lettering into a consumed DLQ (auto-ack).
//! - churn: connections that declare queues with assorted arguments, bind, publish,
//!   get, declare and delete durable queues and exchanges, then close; and raw sockets that
//!   send half a handshake and hang up.
//! - the management API polled every 5 s.
//!
//! Any unexpected error is counted (and the first ones printed); the run passes with no
//! errors, no lost confirmed message and RSS and descriptors flat between the early
//! part of the run and its end. Used by benches/soak.sh; see benches/README.md.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use futures_lite::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicGetOptions, BasicNackOptions, BasicPublishOptions,
    BasicQosOptions, ConfirmSelectOptions, ExchangeDeclareOptions, ExchangeDeleteOptions,
    QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Connection, ConnectionProperties, ExchangeKind};
use parking_lot::Mutex;
use rand::Rng;
use tokio::io::AsyncWriteExt;
use tokio::time::Instant;

#[derive(Parser, Debug, Clone)]
#[command(name = "soak", about = "Long mixed-traffic run against a broker")]
struct Opts {
    /// AMQP URI of the broker.
    #[arg(long, default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
    uri: String,
    /// Management API base URL.
    #[arg(long, default_value = "http://127.0.0.1:15672")]
    http: String,
    /// The broker's process id (for RSS and descriptor samples).
    #[arg(long)]
    pid: u32,
    /// Seconds of traffic.
    #[arg(long, default_value_t = 1800)]
    duration: u64,
    /// Seconds between samples.
    #[arg(long, default_value_t = 10)]
    sample_every: u64,
    /// Durable pipelines (queue + confirming publisher + consumer each).
    #[arg(long, default_value_t = 4)]
    durable_queues: usize,
    /// Persistent messages per second per durable pipeline.
    #[arg(long, default_value_t = 300.0)]
    durable_rate: f64,
    /// Transient messages per second into the topic exchange.
    #[arg(long, default_value_t = 2000.0)]
    transient_rate: f64,
    /// Parallel churn loops.
    #[arg(long, default_value_t = 2)]
    churners: usize,
    /// Write the samples as CSV here.
    #[arg(long)]
    csv: Option<std::path::PathBuf>,
}

/// Counters shared by every task.
#[derive(Default)]
struct Stats {
    published: AtomicU64,
    confirmed: AtomicU64,
    consumed: AtomicU64,
    redelivered: AtomicU64,
    transient_published: AtomicU64,
    transient_consumed: AtomicU64,
    churn_cycles: AtomicU64,
    http_requests: AtomicU64,
    errors: AtomicU64,
    first_errors: Mutex<Vec<String>>,
}

impl Stats {
    fn error(&self, what: impl Into<String>) {
        let n = self.errors.fetch_add(1, Ordering::Relaxed);
        let what = what.into();
        if n < 20 {
            eprintln!("soak: error: {what}");
            self.first_errors.lock().push(what);
        }
    }
}

/// Which sequence numbers of one durable queue were confirmed and which arrived.
#[derive(Default)]
struct Ledger {
    confirmed: Vec<bool>,
    received: Vec<bool>,
}

impl Ledger {
    fn mark(v: &mut Vec<bool>, seq: usize) {
        if v.len() <= seq {
            v.resize(seq + 1, false);
        }
        v[seq] = true;
    }
    fn missing(&self) -> usize {
        self.confirmed
            .iter()
            .enumerate()
            .filter(|&(i, &c)| c && !self.received.get(i).copied().unwrap_or(false))
            .count()
    }
}

struct Run {
    o: Opts,
    stats: Stats,
    /// Publishers stop at the deadline; consumers go on until everything arrived.
    publishing: AtomicBool,
    draining_done: AtomicBool,
    ledgers: Vec<Mutex<Ledger>>,
}

impl Run {
    /// Counts a failed session and backs off briefly before the caller reconnects.
    async fn session_failed(&self, what: &str, e: String) {
        self.stats.error(format!("{what}: {e}"));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn main() {
    // `cargo bench` appends `--bench`.
    let o = Opts::parse_from(std::env::args().filter(|a| a != "--bench"));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    std::process::exit(rt.block_on(run(o)));
}

async fn connect(uri: &str) -> Result<Connection, String> {
    tokio::time::timeout(
        Duration::from_secs(20),
        Connection::connect(uri, ConnectionProperties::default()),
    )
    .await
    .map_err(|_| "connect: timed out".to_string())?
    .map_err(|e| format!("connect: {e}"))
}

async fn run(o: Opts) -> i32 {
    let run = Arc::new(Run {
        ledgers: (0..o.durable_queues).map(|_| Mutex::default()).collect(),
        o,
        stats: Stats::default(),
        publishing: AtomicBool::new(true),
        draining_done: AtomicBool::new(false),
    });
    if let Err(e) = setup(&run.o).await {
        eprintln!("soak: setup failed: {e}");
        return 2;
    }
    let mut tasks = Vec::new();
    for q in 0..run.o.durable_queues {
        tasks.push(tokio::spawn(durable_publisher(run.clone(), q)));
        tasks.push(tokio::spawn(durable_consumer(run.clone(), q)));
    }
    tasks.push(tokio::spawn(transient(run.clone())));
    for q in ["soak.t.all", "soak.t.gpu", "soak.dlq"] {
        tasks.push(tokio::spawn(transient_consumer(run.clone(), q)));
    }
    for i in 0..run.o.churners {
        tasks.push(tokio::spawn(churn(run.clone(), i)));
    }
    tasks.push(tokio::spawn(http_poller(run.clone())));
    let samples = sample(&run).await;

    // Drain: every confirmed message must arrive (bounded).
    run.publishing.store(false, Ordering::Relaxed);
    let drain_until = Instant::now() + Duration::from_secs(120);
    let lost = loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let missing: usize = run.ledgers.iter().map(|l| l.lock().missing()).sum();
        if missing == 0 || Instant::now() > drain_until {
            break missing;
        }
    };
    run.draining_done.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(30), t).await;
    }
    report(&run, &samples, lost)
}

/// Exchanges and queues the long-lived tasks use.
async fn setup(o: &Opts) -> Result<(), String> {
    let conn = connect(&o.uri).await?;
    let ch = conn.create_channel().await.map_err(|e| e.to_string())?;
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    for q in 0..o.durable_queues {
        let name = format!("soak.d.{q}");
        let _ = ch
            .queue_delete(name.as_str().into(), QueueDeleteOptions::default())
            .await;
        ch.queue_declare(name.as_str().into(), durable, FieldTable::default())
            .await
            .map_err(|e| format!("declare {name}: {e}"))?;
    }
    ch.exchange_declare(
        "soak.topic".into(),
        ExchangeKind::Topic,
        ExchangeDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .map_err(|e| e.to_string())?;
    let mut ttl = FieldTable::default();
    ttl.insert("x-message-ttl".into(), AMQPValue::LongInt(500));
    ttl.insert("x-max-length".into(), AMQPValue::LongInt(2000));
    ttl.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString("".into()),
    );
    ttl.insert(
        "x-dead-letter-routing-key".into(),
        AMQPValue::LongString("soak.dlq".into()),
    );
    for (q, key, args) in [
        ("soak.t.all", "#", FieldTable::default()),
        ("soak.t.gpu", "gpu.*", FieldTable::default()),
        ("soak.t.ttl", "gpu.#", ttl),
        ("soak.dlq", "", FieldTable::default()),
    ] {
        ch.queue_declare(q.into(), QueueDeclareOptions::default(), args)
            .await
            .map_err(|e| format!("declare {q}: {e}"))?;
        if !key.is_empty() {
            ch.queue_bind(
                q.into(),
                "soak.topic".into(),
                key.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| e.to_string())?;
        }
    }
    let _ = conn.close(200, "setup done".into()).await;
    Ok(())
}

/// Waits so that `n` events are spread at `rate` per second from `start`.
async fn pace(start: Instant, n: u64, rate: f64) {
    if rate > 0.0 {
        tokio::time::sleep_until(start + Duration::from_secs_f64(n as f64 / rate)).await;
    }
}

fn session_length() -> Duration {
    Duration::from_secs(rand::rng().random_range(30..60))
}

async fn durable_publisher(run: Arc<Run>, q: usize) {
    let key = format!("soak.d.{q}");
    let mut seq: u64 = 0;
    let start = Instant::now();
    while run.publishing.load(Ordering::Relaxed) {
        if let Err(e) = publish_session(&run, q, &key, &mut seq, start).await {
            run.session_failed(&format!("durable publisher {q}"), e)
                .await;
        }
    }
}

/// One connection's worth of publishing: up to 256 unconfirmed, then reconnect.
async fn publish_session(
    run: &Run,
    q: usize,
    key: &str,
    seq: &mut u64,
    start: Instant,
) -> Result<(), String> {
    let conn = connect(&run.o.uri).await?;
    let ch = conn.create_channel().await.map_err(|e| e.to_string())?;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(|e| e.to_string())?;
    let until = Instant::now() + session_length();
    let mut pending: VecDeque<(u64, lapin::PublisherConfirm)> = VecDeque::new();
    let props = BasicProperties::default().with_delivery_mode(2);
    while run.publishing.load(Ordering::Relaxed) && Instant::now() < until {
        pace(start, *seq, run.o.durable_rate).await;
        let size = rand::rng().random_range(100..16 * 1024);
        let mut body = format!("{q}:{seq}:").into_bytes();
        body.resize(size, b'x');
        let pc = ch
            .basic_publish(
                "".into(),
                key.into(),
                BasicPublishOptions::default(),
                &body,
                props.clone(),
            )
            .await
            .map_err(|e| format!("publish: {e}"))?;
        run.stats.published.fetch_add(1, Ordering::Relaxed);
        pending.push_back((*seq, pc));
        *seq += 1;
        while pending.len() >= 256 {
            settle(run, q, &mut pending).await?;
        }
    }
    while !pending.is_empty() {
        settle(run, q, &mut pending).await?;
    }
    conn.close(200, "session over".into())
        .await
        .map_err(|e| format!("close: {e}"))
}

async fn settle(
    run: &Run,
    q: usize,
    pending: &mut VecDeque<(u64, lapin::PublisherConfirm)>,
) -> Result<(), String> {
    let Some((seq, pc)) = pending.pop_front() else {
        return Ok(());
    };
    let c = tokio::time::timeout(Duration::from_secs(30), pc)
        .await
        .map_err(|_| format!("confirm of {seq}: timed out"))?
        .map_err(|e| format!("confirm of {seq}: {e}"))?;
    match c {
        lapin::Confirmation::Nack(_) => Err(format!("message {seq} nacked")),
        _ => {
            Ledger::mark(&mut run.ledgers[q].lock().confirmed, seq as usize);
            run.stats.confirmed.fetch_add(1, Ordering::Relaxed);
            Ok(())
        }
    }
}

async fn durable_consumer(run: Arc<Run>, q: usize) {
    while !run.draining_done.load(Ordering::Relaxed) {
        if let Err(e) = consume_session(&run, q).await {
            run.session_failed(&format!("durable consumer {q}"), e)
                .await;
        }
    }
}

async fn consume_session(run: &Run, q: usize) -> Result<(), String> {
    let conn = connect(&run.o.uri).await?;
    let ch = conn.create_channel().await.map_err(|e| e.to_string())?;
    ch.basic_qos(100, BasicQosOptions::default())
        .await
        .map_err(|e| e.to_string())?;
    let mut consumer = ch
        .basic_consume(
            format!("soak.d.{q}").as_str().into(),
            "soak".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(|e| e.to_string())?;
    let until = Instant::now() + session_length();
    while Instant::now() < until && !run.draining_done.load(Ordering::Relaxed) {
        let d = match tokio::time::timeout(Duration::from_millis(500), consumer.next()).await {
            Err(_) => continue,
            Ok(None) => return Err("consumer stream ended".into()),
            Ok(Some(d)) => d.map_err(|e| format!("delivery: {e}"))?,
        };
        let seq = std::str::from_utf8(&d.data[..d.data.len().min(32)])
            .ok()
            .and_then(|s| s.split(':').nth(1))
            .and_then(|s| s.parse::<usize>().ok())
            .ok_or_else(|| "a body without its sequence number".to_string())?;
        if d.redelivered {
            run.stats.redelivered.fetch_add(1, Ordering::Relaxed);
        }
        if rand::rng().random_range(0..500) == 0 {
            d.nack(BasicNackOptions {
                requeue: true,
                ..Default::default()
            })
            .await
            .map_err(|e| format!("nack: {e}"))?;
            continue;
        }
        d.ack(BasicAckOptions::default())
            .await
            .map_err(|e| format!("ack: {e}"))?;
        Ledger::mark(&mut run.ledgers[q].lock().received, seq);
        run.stats.consumed.fetch_add(1, Ordering::Relaxed);
    }
    // Unacked deliveries in flight go back to the queue with the connection.
    conn.close(200, "session over".into())
        .await
        .map_err(|e| format!("close: {e}"))
}

async fn transient(run: Arc<Run>) {
    const KEYS: [&str; 4] = ["gpu.a", "cpu.b", "gpu.c.d", "llm.e"];
    let start = Instant::now();
    let mut n: u64 = 0;
    while run.publishing.load(Ordering::Relaxed) {
        let r: Result<(), String> = async {
            let conn = connect(&run.o.uri).await?;
            let ch = conn.create_channel().await.map_err(|e| e.to_string())?;
            let until = Instant::now() + session_length();
            while run.publishing.load(Ordering::Relaxed) && Instant::now() < until {
                pace(start, n, run.o.transient_rate).await;
                let props = BasicProperties::default().with_priority((n % 10) as u8);
                ch.basic_publish(
                    "soak.topic".into(),
                    KEYS[(n % 4) as usize].into(),
                    BasicPublishOptions::default(),
                    &[b't'; 256],
                    props,
                )
                .await
                .map_err(|e| format!("publish: {e}"))?;
                n += 1;
                run.stats
                    .transient_published
                    .fetch_add(1, Ordering::Relaxed);
            }
            conn.close(200, "bye".into())
                .await
                .map_err(|e| e.to_string())
        }
        .await;
        if let Err(e) = r {
            run.session_failed("transient publisher", e).await;
        }
    }
}

async fn transient_consumer(run: Arc<Run>, queue: &'static str) {
    while !run.draining_done.load(Ordering::Relaxed) {
        let r: Result<(), String> = async {
            let conn = connect(&run.o.uri).await?;
            let ch = conn.create_channel().await.map_err(|e| e.to_string())?;
            let mut c = ch
                .basic_consume(
                    queue.into(),
                    "".into(),
                    BasicConsumeOptions {
                        no_ack: true,
                        ..Default::default()
                    },
                    FieldTable::default(),
                )
                .await
                .map_err(|e| e.to_string())?;
            while !run.draining_done.load(Ordering::Relaxed) {
                match tokio::time::timeout(Duration::from_millis(500), c.next()).await {
                    Err(_) => {}
                    Ok(None) => return Err("consumer stream ended".into()),
                    Ok(Some(d)) => {
                        d.map_err(|e| format!("delivery: {e}"))?;
                        run.stats.transient_consumed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            conn.close(200, "bye".into())
                .await
                .map_err(|e| e.to_string())
        }
        .await;
        if let Err(e) = r {
            run.session_failed(&format!("consumer of {queue}"), e).await;
        }
    }
}

/// Short-lived connections doing a bit of everything, ~5 cycles a second per loop.
async fn churn(run: Arc<Run>, id: usize) {
    let mut cycle: u64 = 0;
    while run.publishing.load(Ordering::Relaxed) {
        cycle += 1;
        let r = if cycle.is_multiple_of(10) {
            half_handshake(&run.o.uri).await
        } else {
            churn_cycle(&run, id, cycle).await
        };
        match r {
            Ok(()) => {
                run.stats.churn_cycles.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => run.stats.error(format!("churn {id}: {e}")),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn churn_cycle(run: &Run, id: usize, cycle: u64) -> Result<(), String> {
    let conn = connect(&run.o.uri).await?;
    let ch = conn.create_channel().await.map_err(|e| e.to_string())?;
    let mut args = FieldTable::default();
    match cycle % 4 {
        0 => {}
        1 => {
            args.insert("x-max-priority".into(), AMQPValue::ShortShortUInt(5));
        }
        2 => {
            args.insert("x-message-ttl".into(), AMQPValue::LongInt(50));
        }
        _ => {
            args.insert("x-max-length".into(), AMQPValue::LongInt(3));
            args.insert(
                "x-overflow".into(),
                AMQPValue::LongString("reject-publish".into()),
            );
        }
    }
    let q = ch
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                ..Default::default()
            },
            args,
        )
        .await
        .map_err(|e| format!("declare: {e}"))?;
    ch.queue_bind(
        q.name().clone(),
        "soak.topic".into(),
        "gpu.#".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .map_err(|e| format!("bind: {e}"))?;
    for i in 0..5u8 {
        ch.basic_publish(
            "".into(),
            q.name().clone(),
            BasicPublishOptions::default(),
            &[i; 64],
            BasicProperties::default().with_priority(i),
        )
        .await
        .map_err(|e| format!("publish: {e}"))?;
    }
    for _ in 0..3 {
        ch.basic_get(q.name().clone(), BasicGetOptions { no_ack: true })
            .await
            .map_err(|e| format!("get: {e}"))?;
    }
    if cycle.is_multiple_of(3) {
        // A durable queue with a persistent message, and an exchange, declared and deleted.
        let name: ShortString = format!("soak.c.{id}.{cycle}").into();
        ch.queue_declare(
            name.clone(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(|e| format!("declare durable: {e}"))?;
        ch.basic_publish(
            "".into(),
            name.clone(),
            BasicPublishOptions::default(),
            &[b'p'; 1024],
            BasicProperties::default().with_delivery_mode(2),
        )
        .await
        .map_err(|e| format!("publish persistent: {e}"))?;
        ch.queue_delete(name, QueueDeleteOptions::default())
            .await
            .map_err(|e| format!("delete durable: {e}"))?;
        let x: ShortString = format!("soak.x.{id}.{cycle}").into();
        ch.exchange_declare(
            x.clone(),
            ExchangeKind::Fanout,
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(|e| format!("exchange declare: {e}"))?;
        ch.exchange_delete(x, ExchangeDeleteOptions::default())
            .await
            .map_err(|e| format!("exchange delete: {e}"))?;
    }
    conn.close(200, "bye".into())
        .await
        .map_err(|e| format!("close: {e}"))
}

/// A client that sends the protocol header and part of nothing, then hangs up.
async fn half_handshake(uri: &str) -> Result<(), String> {
    let host = uri
        .split('@')
        .nth(1)
        .and_then(|s| s.split('/').next())
        .ok_or("bad uri")?;
    let mut s = tokio::net::TcpStream::connect(host)
        .await
        .map_err(|e| format!("raw connect: {e}"))?;
    s.write_all(b"AMQP\x00\x00\x09\x01\x01\x00\x00")
        .await
        .map_err(|e| format!("raw write: {e}"))?;
    Ok(())
}

async fn http_poller(run: Arc<Run>) {
    let client = reqwest::Client::new();
    while run.publishing.load(Ordering::Relaxed) {
        for path in [
            "/api/overview",
            "/api/queues?page=1&page_size=100",
            "/api/connections",
        ] {
            let r = client
                .get(format!("{}{path}", run.o.http))
                .basic_auth("guest", Some("guest"))
                .timeout(Duration::from_secs(10))
                .send()
                .await;
            match r {
                Ok(resp) if resp.status().is_success() => {
                    run.stats.http_requests.fetch_add(1, Ordering::Relaxed);
                }
                Ok(resp) => run.stats.error(format!("GET {path}: {}", resp.status())),
                Err(e) => run.stats.error(format!("GET {path}: {e}")),
            }
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
}

#[derive(Clone, Copy)]
struct Sample {
    secs: u64,
    rss_kb: u64,
    fds: u64,
}

fn rss_kb(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn fds(pid: u32) -> Option<u64> {
    Some(std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64)
}

/// Samples until the deadline; a broker that disappears ends the run early.
async fn sample(run: &Run) -> Vec<Sample> {
    let o = &run.o;
    let start = Instant::now();
    let mut out = Vec::new();
    let mut csv = o.csv.as_ref().and_then(|p| std::fs::File::create(p).ok());
    if let Some(f) = csv.as_mut() {
        use std::io::Write;
        let _ = writeln!(f, "secs,rss_kb,fds,published,confirmed,consumed,transient_published,transient_consumed,churn_cycles,errors");
    }
    let mut tick = tokio::time::interval(Duration::from_secs(o.sample_every.max(1)));
    loop {
        tick.tick().await;
        let secs = start.elapsed().as_secs();
        let (Some(rss), Some(fd)) = (rss_kb(o.pid), fds(o.pid)) else {
            run.stats.error("the broker process is gone");
            break;
        };
        let s = &run.stats;
        let line = format!(
            "{secs},{rss},{fd},{},{},{},{},{},{},{}",
            s.published.load(Ordering::Relaxed),
            s.confirmed.load(Ordering::Relaxed),
            s.consumed.load(Ordering::Relaxed),
            s.transient_published.load(Ordering::Relaxed),
            s.transient_consumed.load(Ordering::Relaxed),
            s.churn_cycles.load(Ordering::Relaxed),
            s.errors.load(Ordering::Relaxed),
        );
        eprintln!("soak: {line}");
        if let Some(f) = csv.as_mut() {
            use std::io::Write;
            let _ = writeln!(f, "{line}");
        }
        out.push(Sample {
            secs,
            rss_kb: rss,
            fds: fd,
        });
        if secs >= o.duration {
            break;
        }
    }
    out
}

fn median(mut v: Vec<u64>) -> u64 {
    if v.is_empty() {
        return 0;
    }
    v.sort_unstable();
    v[v.len() / 2]
}

/// Prints the summary (JSON on stdout) and returns the exit code: 0 when the run passed.
fn report(run: &Run, samples: &[Sample], lost: usize) -> i32 {
    let total = samples.last().map(|s| s.secs).unwrap_or(0);
    // Early window: after the first fifth (warm-up), up to two fifths; late window: the
    // last fifth.
    let window = |from: u64, to: u64, f: fn(&Sample) -> u64| {
        median(
            samples
                .iter()
                .filter(|s| s.secs >= from && s.secs <= to)
                .map(f)
                .collect(),
        )
    };
    let (early_rss, late_rss) = (
        window(total / 5, 2 * total / 5, |s| s.rss_kb),
        window(4 * total / 5, total, |s| s.rss_kb),
    );
    let (early_fds, late_fds) = (
        window(total / 5, 2 * total / 5, |s| s.fds),
        window(4 * total / 5, total, |s| s.fds),
    );
    let max_rss = samples.iter().map(|s| s.rss_kb).max().unwrap_or(0);
    let growth = if early_rss > 0 {
        (late_rss as f64 - early_rss as f64) / early_rss as f64 * 100.0
    } else {
        0.0
    };
    let s = &run.stats;
    let errors = s.errors.load(Ordering::Relaxed);
    // Flat: the late median within 20 % (or 16 MB) of the early one.
    let flat = late_rss <= early_rss + (early_rss / 5).max(16 * 1024);
    let passed = errors == 0 && lost == 0 && flat && late_fds <= early_fds + 20;
    println!(
        "{{\"seconds\":{total},\"samples\":{},\"published\":{},\"confirmed\":{},\"consumed\":{},\
         \"redelivered\":{},\"lost_confirmed\":{lost},\"transient_published\":{},\
         \"transient_consumed\":{},\"churn_cycles\":{},\"http_requests\":{},\"errors\":{errors},\
         \"rss_kb_early_median\":{early_rss},\"rss_kb_late_median\":{late_rss},\
         \"rss_kb_max\":{max_rss},\"rss_growth_pct\":{growth:.1},\"fds_early_median\":{early_fds},\
         \"fds_late_median\":{late_fds},\"passed\":{passed}}}",
        samples.len(),
        s.published.load(Ordering::Relaxed),
        s.confirmed.load(Ordering::Relaxed),
        s.consumed.load(Ordering::Relaxed),
        s.redelivered.load(Ordering::Relaxed),
        s.transient_published.load(Ordering::Relaxed),
        s.transient_consumed.load(Ordering::Relaxed),
        s.churn_cycles.load(Ordering::Relaxed),
        s.http_requests.load(Ordering::Relaxed),
    );
    for e in s.first_errors.lock().iter() {
        eprintln!("soak: first errors: {e}");
    }
    i32::from(!passed)
}
