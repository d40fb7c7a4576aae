//! The client-independent part of the load generators (`loadgen` on lapin,
//! `rawgen` on raw sockets): topology planning, the start protocol of the
//! publisher/consumer tasks, per-second reporting, clean-up and the summary.
//!
//! Keeping this in one place is what makes the two generators comparable: they
//! differ only in how they speak AMQP, never in what they measure or print.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use amq_protocol::types::{AMQPValue, FieldTable, LongString, ShortString};
use clap::{CommandFactory, FromArgMatches};
use tokio::sync::{mpsc, OnceCell};
use tokio::time::Instant;

use crate::common::{
    now_nanos, percentiles, Counters, Histogram, Opts, Percentiles, Shared, Snap, BUCKETS,
};

// ---------------------------------------------------------------------------
// What a generator plugs in
// ---------------------------------------------------------------------------

/// The setup connection: declares the topology before the run and removes it
/// afterwards. Errors are strings ready to print.
pub trait SetupConn {
    fn declare_exchange(
        &mut self,
        name: &str,
        kind: &str,
        durable: bool,
    ) -> impl Future<Output = Result<(), String>>;
    /// Returns the queue's name (the server's choice for `name == ""`).
    fn declare_queue(
        &mut self,
        name: &str,
        durable: bool,
        auto_delete: bool,
        args: &FieldTable,
    ) -> impl Future<Output = Result<String, String>>;
    fn bind_queue(
        &mut self,
        queue: &str,
        exchange: &str,
        routing_key: &str,
    ) -> impl Future<Output = Result<(), String>>;
    /// Deletes the queues (concurrently or pipelined, as the client allows);
    /// returns how many were deleted.
    fn delete_queues(&mut self, queues: &[String]) -> impl Future<Output = usize>;
    fn delete_exchange(&mut self, name: &str) -> impl Future<Output = ()>;
    fn close(self) -> impl Future<Output = ()>;
}

/// A load generator: how to open the setup connection and what a consumer
/// and a publisher task run. Each task reports its setup through
/// [`Worker::started`] and stops by itself at the deadline it gets from it.
pub trait Generator {
    type Setup: SetupConn;
    fn connect_setup(o: &Opts) -> impl Future<Output = Result<Self::Setup, String>>;
    fn consumer(
        w: Worker,
        queue: String,
    ) -> impl Future<Output = Result<(), String>> + Send + 'static;
    fn publisher(
        w: Worker,
        exchange: String,
        routing_key: String,
    ) -> impl Future<Output = Result<(), String>> + Send + 'static;
    /// An open connection of the idle-connection scenario.
    type Idle: Send + 'static;
    /// One connection with one channel open, for the idle-connection
    /// scenario; it stays open until it is handed to [`Generator::close_idle`].
    fn idle(
        o: Arc<Opts>,
        id: usize,
    ) -> impl Future<Output = Result<Self::Idle, String>> + Send + 'static;
    fn close_idle(c: Self::Idle) -> impl Future<Output = ()> + Send + 'static;
}

/// Handed to every publisher/consumer task.
pub struct Worker {
    pub o: Arc<Opts>,
    pub shared: Arc<Shared>,
    pub id: usize,
    ready: Option<mpsc::Sender<Result<(), String>>>,
    start: Arc<OnceCell<Instant>>,
}

impl Worker {
    fn new(
        o: &Arc<Opts>,
        shared: &Arc<Shared>,
        id: usize,
        ready: &mpsc::Sender<Result<(), String>>,
        start: &Arc<OnceCell<Instant>>,
    ) -> Self {
        Self {
            o: o.clone(),
            shared: shared.clone(),
            id,
            ready: Some(ready.clone()),
            start: start.clone(),
        }
    }

    /// Reports the task's setup result to the driver; on success waits until
    /// every task is set up (so no task starts early) and returns the value
    /// together with the run's deadline.
    pub async fn started<T>(&mut self, setup: Result<T, String>) -> Result<(T, Instant), String> {
        let ready = self.ready.take();
        let v = match setup {
            Ok(v) => v,
            Err(e) => {
                if let Some(r) = ready {
                    let _ = r.send(Err(e.clone())).await;
                }
                return Err(e);
            }
        };
        if let Some(r) = ready {
            let _ = r.send(Ok(())).await;
        }
        let deadline = loop {
            if let Some(d) = self.start.get() {
                break *d;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        };
        Ok((v, deadline))
    }

    /// Messages per (multiple) ack; never more than the prefetch, or the
    /// consumer would stall waiting for deliveries the broker holds back.
    pub fn ack_every(&self) -> u64 {
        let mut n = self.o.multi_ack_every.max(1);
        if self.o.prefetch > 0 && n > self.o.prefetch as u64 {
            n = self.o.prefetch as u64;
        }
        n
    }
}

/// Entry point shared by both binaries: parses the options (under the
/// binary's own name), builds the runtime and runs `G`.
pub fn main_with<G: Generator>(name: &'static str, about: &'static str) -> ! {
    // `cargo bench` appends `--bench` to the arguments; drop it.
    let args = std::env::args().filter(|a| a != "--bench");
    let matches = Opts::command()
        .name(name)
        .about(about)
        .get_matches_from(args);
    let opts = match Opts::from_arg_matches(&matches) {
        Ok(o) => o,
        Err(e) => e.exit(),
    };
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    rt.enable_all();
    if let Some(n) = opts.threads {
        rt.worker_threads(n.max(1));
    }
    let rt = match rt.build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: tokio runtime: {e}");
            std::process::exit(1);
        }
    };
    let code = rt.block_on(run::<G>(opts));
    // Client I/O threads may be detached; do not wait for them.
    std::process::exit(code);
}

// ---------------------------------------------------------------------------
// Topology
// ---------------------------------------------------------------------------

/// What the setup connection declared.
struct Topology {
    exchange: String,
    declared_exchange: bool,
    queues: Vec<String>,
    /// Routing key used by publisher i: routing_keys[i % len].
    routing_keys: Vec<String>,
}

/// `--queue-args` as a field table.
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

async fn declare_topology<S: SetupConn>(ch: &mut S, o: &Opts) -> Result<Topology, String> {
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
        ch.declare_exchange(&exchange, &ex_type, o.durable_queue)
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
        // server-named queues go away with their last consumer
        let auto_delete = o.auto_delete || name.is_empty();
        let q = ch
            .declare_queue(&name, o.durable_queue, auto_delete, &args)
            .await
            .map_err(|e| format!("queue.declare {name:?}: {e}"))?;
        queues.push(q);
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
            ch.bind_queue(q, &exchange, &rk)
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

// ---------------------------------------------------------------------------
// Driver
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

/// The whole run: topology, workers, per-second reporting, clean-up, summary.
/// Returns the process exit status.
/// Scenario (g): `--idle-connections N` connections with one channel each,
/// opened at most [`IDLE_CONCURRENCY`] at a time, held for `--duration`
/// seconds. Prints `idle: all N open` on stderr once they are (the benchmark
/// script samples the broker's memory after that line) and a JSON summary on
/// stdout with `--json`. Exits 1 when any connection failed to open.
async fn run_idle<G: Generator>(o: Arc<Opts>) -> i32 {
    let n = o.idle_connections;
    let t0 = Instant::now();
    let gate = Arc::new(tokio::sync::Semaphore::new(IDLE_CONCURRENCY));
    let mut tasks = tokio::task::JoinSet::new();
    let retries = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    for id in 0..n {
        let (o, gate) = (o.clone(), gate.clone());
        let retries = retries.clone();
        tasks.spawn(async move {
            let _permit = gate.acquire_owned().await;
            // A broker busy accepting thousands of connections may drop a SYN or
            // be slow to answer one handshake; that is not what is measured.
            let mut attempt = 1;
            loop {
                match G::idle(o.clone(), id).await {
                    Err(_) if attempt < IDLE_ATTEMPTS => {
                        retries.fetch_add(1, Ordering::Relaxed);
                        attempt += 1;
                    }
                    r => return r,
                }
            }
        });
    }
    let mut open = Vec::with_capacity(n);
    let mut first_error = None;
    // A broker that stops accepting (at its descriptor limit, say) must not
    // leave the run hanging.
    let give_up = t0 + IDLE_OPEN_LIMIT;
    loop {
        let r = match tokio::time::timeout_at(give_up, tasks.join_next()).await {
            Ok(Some(r)) => r,
            Ok(None) => break,
            Err(_) => {
                first_error.get_or_insert(format!(
                    "{} connections not open after {}s",
                    tasks.len(),
                    IDLE_OPEN_LIMIT.as_secs()
                ));
                tasks.abort_all();
                break;
            }
        };
        match r {
            Ok(Ok(c)) => open.push(c),
            Ok(Err(e)) => {
                first_error.get_or_insert(e);
            }
            Err(e) => {
                first_error.get_or_insert(format!("task: {e}"));
            }
        }
    }
    let open_secs = t0.elapsed().as_secs_f64();
    let opened = open.len();
    if let Some(e) = &first_error {
        eprintln!(
            "error: {} of {n} connections failed; first: {e}",
            n - opened
        );
    } else {
        eprintln!(
            "idle: all {n} open in {open_secs:.1}s ({} retried)",
            retries.load(Ordering::Relaxed)
        );
    }
    tokio::time::sleep(Duration::from_secs_f64(o.duration)).await;
    let mut closing = tokio::task::JoinSet::new();
    for c in open {
        closing.spawn(G::close_idle(c));
    }
    while closing.join_next().await.is_some() {}
    if o.json {
        println!(
            "{{\"idle_connections\":{n},\"opened\":{opened},\"open_seconds\":{open_secs:.3}}}"
        );
    } else {
        println!(
            "{opened} of {n} idle connections opened in {open_secs:.1}s, held {}s",
            o.duration
        );
    }
    i32::from(first_error.is_some())
}

/// Handshakes in flight at once in the idle-connection scenario.
const IDLE_CONCURRENCY: usize = 64;
/// Tries per connection in the idle-connection scenario.
const IDLE_ATTEMPTS: usize = 3;
/// How long opening all idle connections may take.
const IDLE_OPEN_LIMIT: Duration = Duration::from_secs(240);

pub async fn run<G: Generator>(o: Opts) -> i32 {
    if o.duration <= 0.0 {
        eprintln!("--duration must be > 0");
        return 2;
    }
    let o = Arc::new(o);
    if o.idle_connections > 0 {
        return run_idle::<G>(o).await;
    }
    let run_id = now_nanos() ^ ((std::process::id() as u64) << 32) | 1;
    let shared = Arc::new(Shared {
        counters: Counters::default(),
        hist: Histogram::new(),
        run_id,
        failed: AtomicBool::new(false),
    });

    // Topology on its own connection.
    let mut setup = match G::connect_setup(&o).await {
        Ok(v) => v,
        Err(e) => {
            eprintln!("error: {e}");
            return 1;
        }
    };
    let topo = match tokio::time::timeout(Duration::from_secs(30), declare_topology(&mut setup, &o))
        .await
        .unwrap_or_else(|_| Err("declaring queues/exchange timed out".into()))
    {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {e}");
            setup.close().await;
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
        let w = Worker::new(&o, &shared, j, &ready_tx, &start_cell);
        handles.push(tokio::spawn(G::consumer(w, q)));
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
            let w = Worker::new(&o, &shared, i, &ready_tx, &start_cell);
            handles.push(tokio::spawn(G::publisher(w, topo.exchange.clone(), rk)));
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
    if all_done && errors.is_empty() && o.pmessages == 0 {
        errors.push("all publishers and consumers stopped early".into());
    }
    for e in &errors {
        eprintln!("error: {e}");
    }
    if !errors.is_empty() {
        shared.failed.store(true, Ordering::Relaxed);
    }

    // Clean up: delete all queues, then the exchange.
    if !o.keep_queues {
        let deleted =
            tokio::time::timeout(Duration::from_secs(30), setup.delete_queues(&topo.queues))
                .await
                .unwrap_or(0);
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
                setup.delete_exchange(&topo.exchange),
            )
            .await;
        }
    }
    setup.close().await;

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
pub fn redact(uri: &str) -> String {
    if let Some((scheme, rest)) = uri.split_once("://") {
        if let Some((creds, host)) = rest.split_once('@') {
            let user = creds.split(':').next().unwrap_or("");
            return format!("{scheme}://{user}:***@{host}");
        }
    }
    uri.to_string()
}
