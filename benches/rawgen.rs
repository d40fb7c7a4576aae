//! `rawgen`: the `loadgen` load generator without a client library.
//!
//! Same options, same measurements, same output as `loadgen` (both include
//! `loadgen/common.rs` and `loadgen/driver.rs`), but AMQP is spoken directly on
//! tokio TCP sockets, so that the generator costs much less CPU per message
//! than the broker it measures and a second, independent implementation can
//! cross-check loadgen's numbers:
//!
//! - control methods (handshake, declares, qos, consume, confirm.select) use
//!   amq-protocol's codec (`wire::Conn`);
//! - a publisher encodes one message (basic.publish + content header + body
//!   frames) once, then copies it up to `--pipeline` times into one buffer,
//!   stamps the publish time and sends the whole batch with one write;
//! - consumers (and publishers waiting for confirms) scan the received bytes
//!   in place (`wire::Scanner`): delivery tag, body size, first 16 body bytes.
//!
//! Run with e.g.
//!
//! ```text
//! cargo bench --bench rawgen -- --uri amqp://guest:guest@127.0.0.1:5672/%2f \
//!     --publishers 1 --consumers 1 --size 16 --auto-ack --duration 10
//! ```

use std::collections::VecDeque;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use amq_protocol::protocol::{basic, confirm, exchange, queue, AMQPClass};
use amq_protocol::types::FieldTable;
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::OwnedReadHalf;
use tokio::sync::Notify;
use tokio::time::Instant;

#[path = "loadgen/common.rs"]
mod common;
#[path = "loadgen/driver.rs"]
mod driver;
#[path = "rawgen/wire.rs"]
mod wire;

use common::{now_nanos, Opts};
use driver::{Generator, SetupConn, Worker};
use wire::{Conn, Event, Scanner, Target, CHANNEL, FRAME_BODY, FRAME_END, FRAME_HEADER};

fn main() {
    driver::main_with::<Raw>(
        "rawgen",
        "PerfTest-like AMQP 0-9-1 load generator on raw sockets (throughput and end-to-end latency)",
    );
}

/// The generator on raw sockets.
struct Raw;

impl Generator for Raw {
    type Setup = Conn;
    async fn connect_setup(o: &Opts) -> Result<Conn, String> {
        Conn::open(&Target::parse(&o.uri)?, "setup").await
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
    type Idle = Conn;
    async fn idle(o: Arc<Opts>, id: usize) -> Result<Conn, String> {
        let mut c = Conn::open(&Target::parse(&o.uri)?, &format!("idle {id}")).await?;
        // Held, not read: no reason to keep a 64 KB read buffer each.
        c.rbuf = Vec::new();
        Ok(c)
    }
    fn close_idle(c: Conn) -> impl Future<Output = ()> + Send + 'static {
        c.close()
    }
}

// ---------------------------------------------------------------------------
// Setup connection
// ---------------------------------------------------------------------------

impl SetupConn for Conn {
    async fn declare_exchange(
        &mut self,
        name: &str,
        kind: &str,
        durable: bool,
    ) -> Result<(), String> {
        let m = AMQPClass::Exchange(exchange::AMQPMethod::Declare(exchange::Declare {
            exchange: name.into(),
            kind: kind.into(),
            durable,
            ..Default::default()
        }));
        match self.rpc(m).await? {
            AMQPClass::Exchange(exchange::AMQPMethod::DeclareOk(_)) => Ok(()),
            other => Err(format!("unexpected reply {other:?}")),
        }
    }

    async fn declare_queue(
        &mut self,
        name: &str,
        durable: bool,
        auto_delete: bool,
        args: &FieldTable,
    ) -> Result<String, String> {
        let m = AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
            queue: name.into(),
            durable,
            auto_delete,
            arguments: args.clone(),
            ..Default::default()
        }));
        match self.rpc(m).await? {
            AMQPClass::Queue(queue::AMQPMethod::DeclareOk(ok)) => Ok(ok.queue.as_str().to_string()),
            other => Err(format!("unexpected reply {other:?}")),
        }
    }

    async fn bind_queue(
        &mut self,
        queue_name: &str,
        exchange: &str,
        routing_key: &str,
    ) -> Result<(), String> {
        let m = AMQPClass::Queue(queue::AMQPMethod::Bind(queue::Bind {
            queue: queue_name.into(),
            exchange: exchange.into(),
            routing_key: routing_key.into(),
            ..Default::default()
        }));
        match self.rpc(m).await? {
            AMQPClass::Queue(queue::AMQPMethod::BindOk(_)) => Ok(()),
            other => Err(format!("unexpected reply {other:?}")),
        }
    }

    async fn delete_queues(&mut self, queues: &[String]) -> usize {
        // Pipelined: all deletes in one write, then the replies in order.
        let mut out = Vec::new();
        for q in queues {
            let m = AMQPClass::Queue(queue::AMQPMethod::Delete(queue::Delete {
                queue: q.as_str().into(),
                ..Default::default()
            }));
            if wire::encode_method(&mut out, CHANNEL, m).is_err() {
                return 0;
            }
        }
        if self.stream.write_all(&out).await.is_err() {
            return 0;
        }
        let mut deleted = 0;
        while deleted < queues.len() {
            match self.recv_method().await {
                Ok(AMQPClass::Queue(queue::AMQPMethod::DeleteOk(_))) => deleted += 1,
                Ok(_) => {}
                // a failed delete closes the channel; the rest are lost
                Err(_) => break,
            }
        }
        deleted
    }

    async fn delete_exchange(&mut self, name: &str) {
        let m = AMQPClass::Exchange(exchange::AMQPMethod::Delete(exchange::Delete {
            exchange: name.into(),
            ..Default::default()
        }));
        let _ = self.rpc(m).await;
    }

    async fn close(self) {
        Conn::close(self).await;
    }
}

// ---------------------------------------------------------------------------
// Consumer
// ---------------------------------------------------------------------------

/// basic.ack frame for `tag` on channel 1 (21 bytes).
fn put_ack(out: &mut Vec<u8>, tag: u64, multiple: bool) {
    out.extend_from_slice(&[
        wire::FRAME_METHOD,
        0,
        CHANNEL as u8,
        0,
        0,
        0,
        13,
        0,
        60,
        0,
        80,
    ]);
    out.extend_from_slice(&tag.to_be_bytes());
    out.push(multiple as u8);
    out.push(FRAME_END);
}

async fn run_consumer(mut w: Worker, queue_name: String) -> Result<(), String> {
    let (o, shared, id) = (w.o.clone(), w.shared.clone(), w.id);
    let what = format!("consumer {id}");
    let setup = async {
        let mut c = Conn::open(&Target::parse(&o.uri)?, &what).await?;
        if o.prefetch > 0 {
            let m = AMQPClass::Basic(basic::AMQPMethod::Qos(basic::Qos {
                prefetch_count: o.prefetch,
                global: false,
            }));
            match c.rpc(m).await? {
                AMQPClass::Basic(basic::AMQPMethod::QosOk(_)) => {}
                other => return Err(format!("{what}: basic.qos: unexpected reply {other:?}")),
            }
        }
        let m = AMQPClass::Basic(basic::AMQPMethod::Consume(basic::Consume {
            queue: queue_name.as_str().into(),
            consumer_tag: format!("rawgen-{id}").into(),
            no_ack: o.auto_ack,
            ..Default::default()
        }));
        match c.rpc(m).await {
            Ok(AMQPClass::Basic(basic::AMQPMethod::ConsumeOk(_))) => Ok(c),
            Ok(other) => Err(format!(
                "{what}: basic.consume {queue_name:?}: unexpected reply {other:?}"
            )),
            Err(e) => Err(format!("{e} (basic.consume {queue_name:?})")),
        }
    };
    let (mut c, deadline) = w.started(setup.await).await?;

    let ack_every = w.ack_every();
    let multiple = ack_every > 1;
    let check_run = o.size >= 16;
    let run_id = shared.run_id;
    let auto_ack = o.auto_ack;
    let mut scanner = Scanner::new(&c.rbuf);
    let mut unacked = 0u64;
    let mut acks: Vec<u8> = Vec::with_capacity(4096);
    let stop = tokio::time::sleep_until(deadline);
    tokio::pin!(stop);
    let mut clean = true;
    let result: Result<(), String> = loop {
        tokio::select! {
            biased;
            _ = &mut stop => break Ok(()),
            r = scanner.fill(&mut c.stream) => if let Err(e) = r {
                break Err(format!("{what}: {e}"));
            },
        }
        // One clock read per chunk: every message in it arrived by now.
        let now = now_nanos();
        let mut got = 0u64;
        acks.clear();
        let r = scanner.process(|ev| match ev {
            Event::Delivery { tag, head } => {
                if head.len() >= 8 {
                    let ts = u64::from_le_bytes(head[0..8].try_into().unwrap_or_default());
                    let ours = !check_run
                        || (head.len() >= 16
                            && u64::from_le_bytes(head[8..16].try_into().unwrap_or_default())
                                == run_id);
                    if ours {
                        shared.hist.record(now.saturating_sub(ts));
                    }
                }
                got += 1;
                if !auto_ack {
                    unacked += 1;
                    if unacked >= ack_every {
                        unacked = 0;
                        put_ack(&mut acks, tag, multiple);
                    }
                }
                Ok(())
            }
            Event::Method {
                class: 60,
                method: 30,
                ..
            } => Err("consumer cancelled by broker".into()),
            Event::Method { frame, .. } => wire::check_close(frame),
            Event::Confirm { .. } => Ok(()),
        });
        shared.counters.consumed.0.fetch_add(got, Ordering::Relaxed);
        if let Err(e) = r {
            break Err(format!("{what}: {e}"));
        }
        if !acks.is_empty() {
            tokio::select! {
                biased;
                _ = &mut stop => {
                    clean = false;
                    break Ok(());
                }
                r = c.stream.write_all(&acks) => if let Err(e) = r {
                    break Err(format!("{what}: write: {e}"));
                },
            }
        }
    };
    if clean && result.is_ok() {
        close_scanning(c, scanner).await;
    }
    result
}

/// connection.close, then read (skipping deliveries still in flight) until
/// close-ok or 3 s.
async fn close_scanning(mut c: Conn, mut scanner: Scanner) {
    let _ = tokio::time::timeout(Duration::from_secs(3), async {
        let mut out = Vec::new();
        wire::encode_method(&mut out, 0, wire::close_method())?;
        c.stream.write_all(&out).await.map_err(|e| e.to_string())?;
        let mut done = false;
        while !done {
            scanner.fill(&mut c.stream).await?;
            scanner.process(|ev| {
                if let Event::Method {
                    class: 10,
                    method: 51,
                    ..
                } = ev
                {
                    done = true;
                }
                Ok(())
            })?;
        }
        Ok::<(), String>(())
    })
    .await;
}

// ---------------------------------------------------------------------------
// Publisher
// ---------------------------------------------------------------------------

/// One message as it goes on the wire, and where its body's first bytes are.
struct Template {
    bytes: Vec<u8>,
    /// Offset of body byte 0 (the timestamp), if the body is not empty.
    body_at: Option<usize>,
}

/// basic.publish + content header + body frames (split at `frame_max`).
fn message_template(
    exchange: &str,
    routing_key: &str,
    size: usize,
    persistent: bool,
    run_id: u64,
    frame_max: u32,
) -> Result<Template, String> {
    if exchange.len() > 255 || routing_key.len() > 255 {
        return Err("exchange or routing key longer than 255 bytes".into());
    }
    let mut b = Vec::with_capacity(64 + exchange.len() + routing_key.len() + size);
    let frame = |b: &mut Vec<u8>, ty: u8, payload: &[u8]| {
        b.push(ty);
        b.extend_from_slice(&CHANNEL.to_be_bytes());
        b.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        b.extend_from_slice(payload);
        b.push(FRAME_END);
    };
    // basic.publish: reserved short, exchange, routing key, mandatory/immediate bits
    let mut p = vec![0, 60, 0, 40, 0, 0];
    p.push(exchange.len() as u8);
    p.extend_from_slice(exchange.as_bytes());
    p.push(routing_key.len() as u8);
    p.extend_from_slice(routing_key.as_bytes());
    p.push(0);
    frame(&mut b, wire::FRAME_METHOD, &p);
    // content header: class 60, weight 0, body size, property flags (+ delivery-mode)
    let mut h = vec![0, 60, 0, 0];
    h.extend_from_slice(&(size as u64).to_be_bytes());
    if persistent {
        h.extend_from_slice(&0x1000u16.to_be_bytes());
        h.push(2);
    } else {
        h.extend_from_slice(&[0, 0]);
    }
    frame(&mut b, FRAME_HEADER, &h);
    let mut body = vec![0u8; size];
    if size >= 16 {
        body[8..16].copy_from_slice(&run_id.to_le_bytes());
    }
    let chunk = (frame_max as usize).saturating_sub(8).max(1);
    let body_at = if size > 0 { Some(b.len() + 7) } else { None };
    for part in body.chunks(chunk) {
        frame(&mut b, FRAME_BODY, part);
    }
    Ok(Template { bytes: b, body_at })
}

/// Publisher-confirm bookkeeping shared by the publisher and its reader task.
struct Confirms {
    /// Messages acked or nacked so far.
    settled: AtomicU64,
    /// Woken when `settled` grows.
    wake: Notify,
    /// Set before our connection.close, so EOF/close-ok is not an error.
    closing: AtomicBool,
}

/// Settled/unsettled state of the tags from `base` on (index 0 = `base`), so
/// single and `multiple` acks/nacks in any order count each message once.
struct Window {
    base: u64,
    done: VecDeque<bool>,
}

impl Window {
    /// Settle `tag` (and all below it if `multiple`); returns how many newly.
    fn settle(&mut self, tag: u64, multiple: bool) -> Result<u64, String> {
        if tag < self.base {
            return Ok(0);
        }
        let idx = (tag - self.base) as usize;
        if idx > 100_000_000 {
            return Err(format!("confirm for tag {tag} far beyond any publish"));
        }
        if self.done.len() <= idx {
            self.done.resize(idx + 1, false);
        }
        let mut n = 0;
        let range = if multiple { 0..=idx } else { idx..=idx };
        for i in range {
            if !self.done[i] {
                self.done[i] = true;
                n += 1;
            }
        }
        while self.done.front() == Some(&true) {
            self.done.pop_front();
            self.base += 1;
        }
        Ok(n)
    }
}

/// Reads everything the broker sends a publisher: confirms, closes, and the
/// close-ok that ends the run.
async fn publisher_reader(
    mut rd: OwnedReadHalf,
    mut scanner: Scanner,
    conf: Arc<Confirms>,
    shared: Arc<common::Shared>,
) -> Result<(), String> {
    let mut window = Window {
        base: 1,
        done: VecDeque::new(),
    };
    loop {
        if let Err(e) = scanner.fill(&mut rd).await {
            if conf.closing.load(Ordering::Relaxed) {
                return Ok(());
            }
            return Err(e);
        }
        let mut closed = false;
        let (mut acked, mut nacked) = (0, 0);
        let r = scanner.process(|ev| match ev {
            Event::Confirm {
                tag,
                multiple,
                nack,
            } => {
                let n = window.settle(tag, multiple)?;
                if nack {
                    nacked += n;
                } else {
                    acked += n;
                }
                Ok(())
            }
            Event::Method {
                class: 10,
                method: 51,
                ..
            } => {
                closed = true;
                Ok(())
            }
            Event::Method { frame, .. } => wire::check_close(frame),
            Event::Delivery { .. } => Ok(()),
        });
        if acked + nacked > 0 {
            shared
                .counters
                .confirmed
                .0
                .fetch_add(acked, Ordering::Relaxed);
            shared
                .counters
                .nacked
                .0
                .fetch_add(nacked, Ordering::Relaxed);
            conf.settled.fetch_add(acked + nacked, Ordering::Release);
            conf.wake.notify_one();
        }
        r?;
        if closed {
            return Ok(());
        }
    }
}

/// Why the reader stopped during the run (it only stops early on trouble).
fn reader_error(what: &str, r: Result<Result<(), String>, tokio::task::JoinError>) -> String {
    match r {
        Ok(Err(e)) => format!("{what}: {e}"),
        Ok(Ok(())) => format!("{what}: connection closed by broker"),
        Err(e) => format!("{what}: reader task: {e}"),
    }
}

async fn run_publisher(
    mut w: Worker,
    exchange_name: String,
    routing_key: String,
) -> Result<(), String> {
    let (o, shared, id) = (w.o.clone(), w.shared.clone(), w.id);
    let what = format!("publisher {id}");
    let setup = async {
        let mut c = Conn::open(&Target::parse(&o.uri)?, &what).await?;
        if o.confirm > 0 {
            let m = AMQPClass::Confirm(confirm::AMQPMethod::Select(confirm::Select {
                nowait: false,
            }));
            match c.rpc(m).await? {
                AMQPClass::Confirm(confirm::AMQPMethod::SelectOk(_)) => {}
                other => {
                    return Err(format!(
                        "{what}: confirm.select: unexpected reply {other:?}"
                    ))
                }
            }
        }
        let t = message_template(
            &exchange_name,
            &routing_key,
            o.size,
            o.persistent,
            shared.run_id,
            c.frame_max,
        )
        .map_err(|e| format!("{what}: {e}"))?;
        Ok((c, t))
    };
    let ((c, tmpl), deadline) = w.started(setup.await).await?;

    let conf = Arc::new(Confirms {
        settled: AtomicU64::new(0),
        wake: Notify::new(),
        closing: AtomicBool::new(false),
    });
    let scanner = Scanner::new(&c.rbuf);
    let (rd, mut wr) = c.stream.into_split();
    let mut reader = tokio::spawn(publisher_reader(rd, scanner, conf.clone(), shared.clone()));

    // Messages per write: --pipeline, but about 1 MiB at most (at least one).
    let batch_max = o.pipeline.max(1).min((1 << 20) / tmpl.bytes.len()).max(1);
    let mut buf: Vec<u8> = Vec::with_capacity(batch_max * tmpl.bytes.len());
    let interval = (o.rate > 0.0).then(|| Duration::from_secs_f64(1.0 / o.rate));
    let mut next_send = Instant::now();
    let window = o.confirm as u64;
    let mut published = 0u64;
    let stop = tokio::time::sleep_until(deadline);
    tokio::pin!(stop);
    let mut interrupted = false;

    let result: Result<(), String> = 'run: loop {
        if Instant::now() >= deadline {
            break Ok(());
        }
        if reader.is_finished() {
            break Err(reader_error(&what, (&mut reader).await));
        }
        let mut n = batch_max;
        if o.pmessages > 0 {
            if published >= o.pmessages {
                break Ok(());
            }
            n = n.min((o.pmessages - published) as usize);
        }
        if let Some(iv) = interval {
            let now = Instant::now();
            if next_send > now {
                tokio::select! {
                    biased;
                    _ = &mut stop => break 'run Ok(()),
                    _ = tokio::time::sleep_until(next_send) => {}
                }
                continue;
            }
            if now.duration_since(next_send) > Duration::from_millis(100) {
                // do not try to catch up on more than 100 ms of backlog
                next_send = now - Duration::from_millis(100);
            }
            let due = 1 + (now.duration_since(next_send).as_secs_f64() / iv.as_secs_f64()) as u64;
            n = n.min(due as usize);
            next_send += iv * n as u32;
        }
        if window > 0 {
            // saturating: a broken broker could ack tags never published
            let outstanding = published.saturating_sub(conf.settled.load(Ordering::Acquire));
            if outstanding >= window {
                tokio::select! {
                    biased;
                    _ = &mut stop => break 'run Ok(()),
                    _ = conf.wake.notified() => {}
                    r = &mut reader => break 'run Err(reader_error(&what, r)),
                }
                continue;
            }
            n = n.min((window - outstanding) as usize);
        }

        buf.clear();
        for _ in 0..n {
            buf.extend_from_slice(&tmpl.bytes);
        }
        if let (Some(at), true) = (tmpl.body_at, o.size >= 8) {
            // One clock read per batch: all of it leaves in the same write.
            let ts = now_nanos().to_le_bytes();
            let step = tmpl.bytes.len();
            for m in buf.chunks_exact_mut(step) {
                m[at..at + 8].copy_from_slice(&ts);
            }
        }
        tokio::select! {
            biased;
            _ = &mut stop => {
                interrupted = true;
                break 'run Ok(());
            }
            r = wr.write_all(&buf) => if let Err(e) = r {
                break 'run Err(format!("{what}: write: {e}"));
            },
        }
        published += n as u64;
        shared
            .counters
            .published
            .0
            .fetch_add(n as u64, Ordering::Relaxed);
    };

    // A write cut off mid-frame leaves nothing to close cleanly; a finished
    // reader has nothing left to wait for (and must not be polled again).
    if !interrupted && !reader.is_finished() {
        conf.closing.store(true, Ordering::Relaxed);
        let mut out = Vec::new();
        if wire::encode_method(&mut out, 0, wire::close_method()).is_ok()
            && wr.write_all(&out).await.is_ok()
        {
            let _ = tokio::time::timeout(Duration::from_secs(3), &mut reader).await;
        }
    }
    reader.abort();
    result
}
