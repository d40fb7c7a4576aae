//! Routing benchmarks.
//!
//! ```text
//! cargo bench --bench routing                     # criterion: topic 100k, headers 10k
//! cargo bench --bench routing -- --bind-churn [Q [C]]  # 10k bindings bound + unbound over AMQP
//! cargo bench --bench routing -- --setup-topic URI N   # helper for the end-to-end comparison
//! ```
//!
//! The criterion groups route through `Exchange` (the per-type matcher behind its lock) and
//! through `VHost::route` (the whole shared routing step: e2e, alternate exchange, CC/BCC,
//! one copy per queue), one key per element, on one thread.
//!
//! `--setup-topic URI N` binds N patterns (the same mix as the topic benchmark, none of which
//! matches `inference.summarize.gpu`) from `amq.topic` to 100 queues on a running broker,
//! so `loadgen --exchange amq.topic` then publishes through an exchange with N extra
//! bindings. README.md ("Routing benchmarks") has the commands and the figures.

use criterion::{BenchmarkId, Criterion, Throughput};
use lapin::options::{QueueBindOptions, QueueDeclareOptions};
use lapin::{Connection, ConnectionProperties};
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};
use warrenmq::broker::exchange::{Exchange, ExchangeType};
use warrenmq::broker::message::Message;
use warrenmq::broker::queue::Queue;
use warrenmq::broker::vhost::{QueueDeclare, VHost};
use warrenmq::protocol::{AMQPValue, BasicProperties, FieldTable};

/// A small deterministic generator, so every run binds and routes the same things.
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

const QUEUES: usize = 100;

fn vhost_with_queues() -> (Arc<VHost>, Vec<Arc<Queue>>) {
    let vhost = VHost::new("/", None);
    let queues = (0..QUEUES)
        .map(|i| {
            vhost
                .declare_queue(
                    QueueDeclare {
                        name: format!("q{i}"),
                        passive: false,
                        durable: false,
                        exclusive: false,
                        auto_delete: false,
                        arguments: FieldTable::default(),
                        server_named: false,
                    },
                    0,
                )
                .expect("declare")
                .0
        })
        .collect();
    (vhost, queues)
}

/// `n` topic patterns over models m0..m9999, tasks t0..t49 and regions r0..r9: 60 % exact
/// (`m.t.r`), 30 % with `*` (`m.*.r`, `m.t.*`, `*.t.r`), 10 % with `#` (`m.#`, `m.t.#`,
/// `#.t.r`).
fn topic_patterns(n: usize) -> Vec<String> {
    let mut g = Lcg(42);
    (0..n)
        .map(|_| {
            let (m, t, r) = (g.below(10_000), g.below(50), g.below(10));
            match g.below(100) {
                0..=59 => format!("m{m}.t{t}.r{r}"),
                60..=74 => format!("m{m}.*.r{r}"),
                75..=88 => format!("m{m}.t{t}.*"),
                89 => format!("*.t{t}.r{r}"),
                90..=94 => format!("m{m}.#"),
                95..=98 => format!("m{m}.t{t}.#"),
                _ => format!("#.t{t}.r{r}"),
            }
        })
        .collect()
}

/// Keys to route: half are exact patterns that are bound (so they hit), half random.
fn topic_keys(n: usize, patterns: &[String]) -> Vec<String> {
    let mut g = Lcg(7);
    let exact: Vec<&String> = patterns
        .iter()
        .filter(|p| !p.contains(['*', '#']))
        .collect();
    (0..n)
        .map(|i| {
            if i % 2 == 0 {
                exact[g.below(exact.len() as u64) as usize].clone()
            } else {
                let (m, t, r) = (g.below(10_000), g.below(50), g.below(10));
                format!("m{m}.t{t}.r{r}")
            }
        })
        .collect()
}

fn ls(s: &str) -> AMQPValue {
    AMQPValue::LongString(s.as_bytes().to_vec().into())
}

fn table(entries: Vec<(&str, AMQPValue)>) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in entries {
        t.insert(k.into(), v);
    }
    t
}

/// `n` headers bindings over 1000 models, 20 tasks and 1000 shard numbers: 70 % `all` on
/// model and task, 20 % `any` on model or shard (an integer), 10 % `all` on model plus
/// presence of `gpu`.
fn headers_bindings(n: usize) -> Vec<FieldTable> {
    let mut g = Lcg(3);
    (0..n)
        .map(|_| {
            let (m, t, r) = (g.below(1000), g.below(20), g.below(1000));
            let model = ls(&format!("m{m}"));
            match g.below(10) {
                0..=6 => table(vec![("model", model), ("task", ls(&format!("t{t}")))]),
                7..=8 => table(vec![
                    ("x-match", ls("any")),
                    ("model", model),
                    ("shard", AMQPValue::LongInt(r as i32)),
                ]),
                _ => table(vec![("model", model), ("gpu", AMQPValue::Void)]),
            }
        })
        .collect()
}

fn headers_messages(n: usize) -> Vec<FieldTable> {
    let mut g = Lcg(11);
    (0..n)
        .map(|_| {
            table(vec![
                ("model", ls(&format!("m{}", g.below(1000)))),
                ("task", ls(&format!("t{}", g.below(20)))),
                ("shard", AMQPValue::LongLongInt(g.below(1000) as i64)),
                ("gpu", AMQPValue::Boolean(true)),
                ("tenant", ls("acme")),
            ])
        })
        .collect()
}

fn bench_topic(c: &mut Criterion) {
    let (vhost, _queues) = vhost_with_queues();
    let n = 100_000;
    let spec = warrenmq::broker::exchange::ExchangeSpec {
        name: "tasks".into(),
        kind: ExchangeType::Topic,
        durable: false,
        auto_delete: false,
        internal: false,
        arguments: FieldTable::default(),
    };
    let ex = vhost.declare_exchange(spec, false).expect("declare");
    let start = Instant::now();
    let patterns = topic_patterns(n);
    for (i, p) in patterns.iter().enumerate() {
        vhost
            .bind_queue(
                &format!("q{}", i % QUEUES),
                "tasks",
                p,
                FieldTable::default(),
                0,
            )
            .expect("bind");
    }
    eprintln!("topic: {n} bindings in {:?}", start.elapsed());
    let keys = topic_keys(1000, &patterns);
    let msgs: Vec<Arc<Message>> = keys
        .iter()
        .map(|k| {
            Message::new(
                "tasks".into(),
                k.clone(),
                BasicProperties::default(),
                bytes::Bytes::from_static(b"x"),
            )
        })
        .collect();
    let mut matched = 0usize;
    let mut out = Vec::new();
    for m in &msgs {
        out.clear();
        vhost.route(&ex, m, &mut out);
        matched += out.len();
    }
    eprintln!(
        "topic: {:.1} queues per key on average",
        matched as f64 / msgs.len() as f64
    );

    let mut g = c.benchmark_group("topic_100k_bindings");
    g.throughput(Throughput::Elements(keys.len() as u64));
    g.bench_function(BenchmarkId::new("exchange_route", "1000 keys"), |b| {
        let mut dests = Vec::new();
        b.iter(|| {
            for k in &keys {
                dests.clear();
                ex.route(black_box(k), None, &mut dests);
            }
            dests.len()
        })
    });
    g.bench_function(BenchmarkId::new("vhost_route", "1000 keys"), |b| {
        let mut out = Vec::new();
        b.iter(|| {
            for m in &msgs {
                out.clear();
                vhost.route(&ex, black_box(m), &mut out);
            }
            out.len()
        })
    });
    g.finish();
    let mut dests = Vec::new();
    cpu_rate("topic_100k_bindings/exchange_route", keys.len(), 5, || {
        for k in &keys {
            dests.clear();
            ex.route(black_box(k), None, &mut dests);
        }
    });
    let mut out = Vec::new();
    cpu_rate("topic_100k_bindings/vhost_route", msgs.len(), 5, || {
        for m in &msgs {
            out.clear();
            vhost.route(&ex, black_box(m), &mut out);
        }
    });
}

fn bench_headers(c: &mut Criterion) {
    let (vhost, _queues) = vhost_with_queues();
    let n = 10_000;
    let spec = warrenmq::broker::exchange::ExchangeSpec {
        name: "models".into(),
        kind: ExchangeType::Headers,
        durable: false,
        auto_delete: false,
        internal: false,
        arguments: FieldTable::default(),
    };
    let ex: Arc<Exchange> = vhost.declare_exchange(spec, false).expect("declare");
    for (i, args) in headers_bindings(n).into_iter().enumerate() {
        vhost
            .bind_queue(&format!("q{}", i % QUEUES), "models", "", args, 0)
            .expect("bind");
    }
    let msgs: Vec<Arc<Message>> = headers_messages(1000)
        .into_iter()
        .map(|h| {
            Message::new(
                "models".into(),
                String::new(),
                BasicProperties::default().with_headers(h),
                bytes::Bytes::from_static(b"x"),
            )
        })
        .collect();
    let mut matched = 0usize;
    let mut out = Vec::new();
    for m in &msgs {
        out.clear();
        vhost.route(&ex, m, &mut out);
        matched += out.len();
    }
    eprintln!(
        "headers: {:.1} queues per message on average",
        matched as f64 / msgs.len() as f64
    );

    let mut g = c.benchmark_group("headers_10k_bindings");
    g.throughput(Throughput::Elements(msgs.len() as u64));
    g.bench_function(BenchmarkId::new("vhost_route", "1000 messages"), |b| {
        let mut out = Vec::new();
        b.iter(|| {
            for m in &msgs {
                out.clear();
                vhost.route(&ex, black_box(m), &mut out);
            }
            out.len()
        })
    });
    g.finish();
    let mut out = Vec::new();
    cpu_rate("headers_10k_bindings/vhost_route", msgs.len(), 5, || {
        for m in &msgs {
            out.clear();
            vhost.route(&ex, black_box(m), &mut out);
        }
    });
}

/// CPU time this thread has run, from the scheduler's accounting (ns resolution). The
/// machine is shared, so rates are also given per CPU-second of the routing thread, which
/// is what "on one core" means, next to criterion's wall-clock figures.
fn thread_cpu() -> Duration {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").unwrap_or_default();
    let ns = s
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    Duration::from_nanos(ns)
}

/// Run `round` (which routes `per_round` items) repeatedly for about `secs` of wall time
/// and print the median rate per CPU-second.
fn cpu_rate(name: &str, per_round: usize, secs: u64, mut round: impl FnMut()) {
    let mut rates = Vec::new();
    let end = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < end || rates.len() < 5 {
        let c0 = thread_cpu();
        for _ in 0..20 {
            round();
        }
        let cpu = thread_cpu().saturating_sub(c0);
        if cpu > Duration::ZERO {
            rates.push((20 * per_round) as f64 / cpu.as_secs_f64());
        }
    }
    rates.sort_by(|a, b| a.total_cmp(b));
    println!(
        "cpu-time {name}: median {:.0} /s per CPU-second ({} rounds of {} ; min {:.0}, max {:.0})",
        rates[rates.len() / 2],
        rates.len(),
        20 * per_round,
        rates[0],
        rates[rates.len() - 1]
    );
}

async fn connect(uri: &str) -> Connection {
    Connection::connect(uri, ConnectionProperties::default())
        .await
        .expect("connect")
}

/// Declare and then delete 10k bindings over one connection against an in-process broker,
/// the bindings spread over `queues` queues, from `channels` channels at once (each method
/// waits for its -ok; several channels keep several in flight). Prints each of 5 runs and
/// the median.
fn bind_churn(queues: usize, channels: usize) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = warrenmq::config::Config {
            amqp_addr: "127.0.0.1:0".parse().unwrap(),
            http_addr: "127.0.0.1:0".parse().unwrap(),
            metrics_addr: "127.0.0.1:0".parse().unwrap(),
            data_dir: dir.path().to_path_buf(),
            log_level: "warn".into(),
            ..Default::default()
        };
        let handle = warrenmq::server::start(config).await.expect("broker");
        let uri = format!("amqp://guest:guest@{}/%2f", handle.amqp_addr);
        let conn = connect(&uri).await;
        let ch = conn.create_channel().await.expect("channel");
        let mut chans = Vec::new();
        for _ in 0..channels {
            chans.push(conn.create_channel().await.expect("channel"));
        }
        let names: Vec<String> = (0..queues).map(|i| format!("churn-{i}")).collect();
        for q in &names {
            let o = QueueDeclareOptions::default();
            ch.queue_declare(q.as_str().into(), o, FieldTable::default())
                .await
                .expect("declare");
        }
        let work: Arc<Vec<(String, String)>> = Arc::new(
            topic_patterns(10_000)
                .into_iter()
                .enumerate()
                .map(|(i, p)| (names[i % queues].clone(), p))
                .collect(),
        );
        let mut runs = Vec::new();
        for _ in 0..5 {
            let t = Instant::now();
            churn_phase(&chans, &work, true).await;
            let bound = t.elapsed();
            churn_phase(&chans, &work, false).await;
            let total = t.elapsed();
            println!(
                "bind-churn ({queues} queues, {channels} channels): 10000 queue.bind in {:.3} s, \
                 10000 queue.unbind in {:.3} s, total {:.3} s",
                bound.as_secs_f64(),
                (total - bound).as_secs_f64(),
                total.as_secs_f64()
            );
            runs.push(total);
        }
        runs.sort();
        println!(
            "bind-churn ({queues} queues, {channels} channels): median total {:.3} s",
            runs[2].as_secs_f64()
        );
        let _ = conn.close(200, "done".into()).await;
        handle.shutdown().await;
    });
}

/// Bind (or unbind) every (queue, pattern) of `work`, channel c taking every c-th item.
async fn churn_phase(chans: &[lapin::Channel], work: &Arc<Vec<(String, String)>>, bind: bool) {
    let mut tasks = Vec::new();
    for (c, ch) in chans.iter().enumerate() {
        let (ch, work, n) = (ch.clone(), work.clone(), chans.len());
        tasks.push(tokio::spawn(async move {
            for (q, p) in work.iter().skip(c).step_by(n) {
                let (q, k, x) = (q.as_str().into(), p.as_str().into(), "amq.topic".into());
                let args = FieldTable::default();
                if bind {
                    let o = QueueBindOptions::default();
                    ch.queue_bind(q, x, k, o, args).await.expect("bind");
                } else {
                    ch.queue_unbind(q, x, k, args).await.expect("unbind");
                }
            }
        }));
    }
    for t in tasks {
        t.await.expect("churn task");
    }
}

/// Bind `n` non-matching patterns from `amq.topic` to 100 queues `routing-bench-<i>` on a
/// running broker (for the end-to-end comparison with loadgen).
fn setup_topic(uri: &str, n: usize) {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let conn = connect(uri).await;
        let ch = conn.create_channel().await.expect("channel");
        for i in 0..QUEUES {
            let o = QueueDeclareOptions {
                auto_delete: false,
                ..Default::default()
            };
            ch.queue_declare(
                format!("routing-bench-{i}").as_str().into(),
                o,
                FieldTable::default(),
            )
            .await
            .expect("declare");
        }
        let t = Instant::now();
        for (i, p) in topic_patterns(n).iter().enumerate() {
            let q = format!("routing-bench-{}", i % QUEUES);
            let o = QueueBindOptions::default();
            ch.queue_bind(
                q.as_str().into(),
                "amq.topic".into(),
                p.as_str().into(),
                o,
                FieldTable::default(),
            )
            .await
            .expect("bind");
        }
        println!(
            "bound {n} patterns to amq.topic in {:.3} s",
            t.elapsed().as_secs_f64()
        );
        let _ = conn.close(200, "done".into()).await;
    });
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--setup-topic") {
        let uri = args.get(i + 1).expect("--setup-topic URI N");
        let n = args
            .get(i + 2)
            .and_then(|n| n.parse().ok())
            .unwrap_or(10_000);
        setup_topic(uri, n);
        return;
    }
    if let Some(i) = args.iter().position(|a| a == "--bind-churn") {
        let n = |j: usize| args.get(i + j).and_then(|n| n.parse().ok());
        match (n(1), n(2)) {
            (Some(queues), channels) => bind_churn(queues, channels.unwrap_or(1)),
            _ => {
                bind_churn(100, 1);
                bind_churn(100, 8);
                bind_churn(1, 1);
            }
        }
        return;
    }
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5))
        .configure_from_args();
    // A name filter (as for criterion) also skips the other group's setup and CPU-time run.
    let filter = args
        .iter()
        .skip(1)
        .find(|a| !a.starts_with('-') && a.as_str() != "bench");
    let wants = |group: &str| filter.is_none_or(|f| group.contains(f.as_str()));
    if wants("topic_100k_bindings") {
        bench_topic(&mut c);
    }
    if wants("headers_10k_bindings") {
        bench_headers(&mut c);
    }
    c.final_summary();
}
