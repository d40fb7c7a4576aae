//! AMQP 0-9-1 on a plain tokio `TcpStream`, for `rawgen`.
//!
//! Two speeds on purpose:
//!
//! - [`Conn`]: the handshake and the control methods (declare, qos, consume,
//!   confirm.select, close) go through amq-protocol's `gen_frame` /
//!   `parse_frame`. They are rare, so correctness beats speed.
//! - [`Scanner`]: the per-message traffic a generator receives (deliveries,
//!   publisher confirms) is scanned incrementally by hand: only the delivery
//!   tag of `basic.deliver`, the body size of the content header and the first
//!   16 body bytes are looked at; everything else is skipped without copying.
//!
//! Malformed input from the broker is reported as an error string, never a
//! panic.

use std::time::Duration;

use amq_protocol::frame::{gen_frame, parse_frame, AMQPFrame, ProtocolVersion, WriteContext};
use amq_protocol::protocol::{channel, connection, AMQPClass};
use amq_protocol::types::{AMQPValue, FieldTable, LongString, ShortString};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub const FRAME_METHOD: u8 = 1;
pub const FRAME_HEADER: u8 = 2;
pub const FRAME_BODY: u8 = 3;
pub const FRAME_HEARTBEAT: u8 = 8;
pub const FRAME_END: u8 = 0xCE;
/// Every connection uses exactly one channel.
pub const CHANNEL: u16 = 1;
/// Frame size asked for; brokers usually offer 128 KiB.
const FRAME_MAX: u32 = 131_072;
/// Largest frame the control path accepts, so a broken peer cannot make the
/// tool buffer without bound.
const MAX_CONTROL_FRAME: usize = 16 << 20;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);

/// Where to connect, from an `amqp://user:pass@host:port/vhost` URI.
#[derive(Clone, Debug)]
pub struct Target {
    addr: String,
    user: String,
    pass: String,
    vhost: String,
}

impl Target {
    pub fn parse(uri: &str) -> Result<Target, String> {
        let u: amq_protocol::uri::AMQPUri = uri.parse().map_err(|e| format!("bad --uri: {e}"))?;
        if !uri.starts_with("amqp://") {
            return Err("bad --uri: rawgen speaks plain amqp:// only".into());
        }
        // amq-protocol-uri only keeps domain names (an IP address becomes
        // "localhost"), so the host is taken from the URI text itself.
        let rest = &uri["amqp://".len()..];
        let hostport = rest.split(['/', '?']).next().unwrap_or("");
        let hostport = hostport.rsplit_once('@').map_or(hostport, |(_, h)| h);
        let host = if let Some(v6) = hostport.strip_prefix('[') {
            format!("[{}]", v6.split(']').next().unwrap_or(""))
        } else {
            hostport.split(':').next().unwrap_or("").to_string()
        };
        let host = if host.is_empty() {
            "127.0.0.1".to_string()
        } else {
            host
        };
        Ok(Target {
            addr: format!("{host}:{}", u.authority.port),
            user: u.authority.userinfo.username,
            pass: u.authority.userinfo.password,
            vhost: u.vhost,
        })
    }
}

/// Encode one method frame with amq-protocol's generator and append it.
pub fn encode_method(out: &mut Vec<u8>, channel: u16, m: AMQPClass) -> Result<(), String> {
    let frame = AMQPFrame::Method(channel, m);
    let ctx = gen_frame(&frame)(WriteContext::from(Vec::with_capacity(128)))
        .map_err(|e| format!("encoding a method frame: {e}"))?;
    out.extend_from_slice(&ctx.into_inner().0);
    Ok(())
}

/// Text of a broker-initiated close, for error messages.
fn close_text(m: &AMQPClass) -> Option<String> {
    match m {
        AMQPClass::Connection(connection::AMQPMethod::Close(c)) => Some(format!(
            "connection closed by broker: {} {} (method {}.{})",
            c.reply_code, c.reply_text, c.class_id, c.method_id
        )),
        AMQPClass::Channel(channel::AMQPMethod::Close(c)) => Some(format!(
            "channel closed by broker: {} {} (method {}.{})",
            c.reply_code, c.reply_text, c.class_id, c.method_id
        )),
        _ => None,
    }
}

/// Parse a complete method frame (as delivered by the [`Scanner`]) and turn a
/// broker close into an error.
pub fn check_close(frame: &[u8]) -> Result<(), String> {
    if let Ok((_, AMQPFrame::Method(_, m))) = parse_frame(frame) {
        if let Some(e) = close_text(&m) {
            return Err(e);
        }
    }
    Ok(())
}

/// A connection with channel 1 open, driven one control method at a time.
pub struct Conn {
    pub stream: TcpStream,
    /// Bytes read but not parsed yet (handed to the [`Scanner`] afterwards).
    pub rbuf: Vec<u8>,
    /// Negotiated frame size; bodies are split to fit it.
    pub frame_max: u32,
    pub what: String,
}

impl Conn {
    /// TCP connect, protocol header, start/tune/open, channel.open.
    pub async fn open(t: &Target, what: &str) -> Result<Conn, String> {
        tokio::time::timeout(CONNECT_TIMEOUT, Self::open_inner(t, what))
            .await
            .map_err(|_| format!("{what}: connect to {}: timed out", t.addr))?
    }

    async fn open_inner(t: &Target, what: &str) -> Result<Conn, String> {
        let stream = TcpStream::connect(&t.addr)
            .await
            .map_err(|e| format!("{what}: connect to {}: {e}", t.addr))?;
        // Small control frames and acks must not wait for Nagle.
        let _ = stream.set_nodelay(true);
        let mut c = Conn {
            stream,
            rbuf: Vec::with_capacity(64 * 1024),
            frame_max: FRAME_MAX,
            what: what.to_string(),
        };
        let mut out = Vec::new();
        let hdr = AMQPFrame::ProtocolHeader(ProtocolVersion::amqp_0_9_1());
        let ctx = gen_frame(&hdr)(WriteContext::from(Vec::new()))
            .map_err(|e| format!("{what}: encoding the protocol header: {e}"))?;
        out.extend_from_slice(&ctx.into_inner().0);
        c.write(&out).await?;

        let start = match c.recv_method().await? {
            AMQPClass::Connection(connection::AMQPMethod::Start(s)) => s,
            other => return Err(c.unexpected("connection.start", &other)),
        };
        let mechs = String::from_utf8_lossy(start.mechanisms.as_bytes()).to_string();
        if !mechs.split_whitespace().any(|m| m == "PLAIN") {
            return Err(format!("{what}: broker offers no PLAIN auth ({mechs})"));
        }
        let mut caps = FieldTable::default();
        for cap in ["publisher_confirms", "basic.nack", "consumer_cancel_notify"] {
            caps.insert(ShortString::from(cap), AMQPValue::Boolean(true));
        }
        let mut props = FieldTable::default();
        props.insert(
            "product".into(),
            AMQPValue::LongString(LongString::from("rawgen")),
        );
        props.insert("capabilities".into(), AMQPValue::FieldTable(caps));
        let response = format!("\0{}\0{}", t.user, t.pass);
        c.send(
            0,
            AMQPClass::Connection(connection::AMQPMethod::StartOk(connection::StartOk {
                client_properties: props,
                mechanism: "PLAIN".into(),
                response: LongString::from(response),
                locale: "en_US".into(),
            })),
        )
        .await?;

        let tune = match c.recv_method().await? {
            AMQPClass::Connection(connection::AMQPMethod::Tune(t)) => t,
            other => return Err(c.unexpected("connection.tune", &other)),
        };
        c.frame_max = match tune.frame_max {
            0 => FRAME_MAX,
            n => n.min(FRAME_MAX),
        };
        // Heartbeats off: the tool's connections live for one run and are
        // always busy; answering heartbeats would only cost a timer per
        // connection.
        c.send(
            0,
            AMQPClass::Connection(connection::AMQPMethod::TuneOk(connection::TuneOk {
                channel_max: tune.channel_max,
                frame_max: c.frame_max,
                heartbeat: 0,
            })),
        )
        .await?;
        c.rpc0(AMQPClass::Connection(connection::AMQPMethod::Open(
            connection::Open {
                virtual_host: t.vhost.as_str().into(),
            },
        )))
        .await?;
        c.rpc(AMQPClass::Channel(channel::AMQPMethod::Open(
            channel::Open {},
        )))
        .await?;
        Ok(c)
    }

    fn unexpected(&self, want: &str, got: &AMQPClass) -> String {
        format!("{}: expected {want}, got {got:?}", self.what)
    }

    async fn write(&mut self, b: &[u8]) -> Result<(), String> {
        self.stream
            .write_all(b)
            .await
            .map_err(|e| format!("{}: write: {e}", self.what))
    }

    /// Send one method on `channel`.
    pub async fn send(&mut self, channel: u16, m: AMQPClass) -> Result<(), String> {
        let mut out = Vec::with_capacity(128);
        encode_method(&mut out, channel, m).map_err(|e| format!("{}: {e}", self.what))?;
        self.write(&out).await
    }

    /// Next frame, parsed by amq-protocol.
    async fn recv(&mut self) -> Result<AMQPFrame, String> {
        loop {
            if !self.rbuf.is_empty() {
                match parse_frame(self.rbuf.as_slice()) {
                    Ok((rest, f)) => {
                        let used = self.rbuf.len() - rest.len();
                        self.rbuf.drain(..used);
                        return Ok(f);
                    }
                    Err(nom::Err::Incomplete(_)) => {}
                    Err(e) => return Err(format!("{}: bad frame from broker: {e:?}", self.what)),
                }
            }
            if self.rbuf.len() > MAX_CONTROL_FRAME {
                return Err(format!("{}: oversized frame from broker", self.what));
            }
            self.rbuf.reserve(64 * 1024);
            let n = self
                .stream
                .read_buf(&mut self.rbuf)
                .await
                .map_err(|e| format!("{}: read: {e}", self.what))?;
            if n == 0 {
                return Err(format!("{}: connection closed by broker", self.what));
            }
        }
    }

    /// Next method frame; heartbeats and content frames are skipped, a close
    /// from the broker is an error.
    pub async fn recv_method(&mut self) -> Result<AMQPClass, String> {
        loop {
            if let AMQPFrame::Method(_, m) = self.recv().await? {
                if let Some(e) = close_text(&m) {
                    return Err(format!("{}: {e}", self.what));
                }
                return Ok(m);
            }
        }
    }

    /// Send a method on channel 1 and return the reply.
    pub async fn rpc(&mut self, m: AMQPClass) -> Result<AMQPClass, String> {
        self.send(CHANNEL, m).await?;
        self.recv_method().await
    }

    async fn rpc0(&mut self, m: AMQPClass) -> Result<AMQPClass, String> {
        self.send(0, m).await?;
        self.recv_method().await
    }

    /// connection.close and wait (briefly) for close-ok; errors are ignored
    /// because the run's result is already known.
    pub async fn close(mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(3), async {
            self.send(0, close_method()).await?;
            loop {
                if let AMQPFrame::Method(
                    _,
                    AMQPClass::Connection(connection::AMQPMethod::CloseOk(_)),
                ) = self.recv().await?
                {
                    return Ok::<(), String>(());
                }
            }
        })
        .await;
    }
}

/// connection.close with reply 200.
pub fn close_method() -> AMQPClass {
    AMQPClass::Connection(connection::AMQPMethod::Close(connection::Close {
        reply_code: 200,
        reply_text: "bye".into(),
        class_id: 0,
        method_id: 0,
    }))
}

// ---------------------------------------------------------------------------
// Incremental scanner for the hot receive path
// ---------------------------------------------------------------------------

/// What the [`Scanner`] reports.
pub enum Event<'a> {
    /// The content of a `basic.deliver` is complete: its delivery tag and the
    /// first (up to 16) body bytes.
    Delivery { tag: u64, head: &'a [u8] },
    /// `basic.ack` / `basic.nack` from the broker (publisher confirms).
    Confirm {
        tag: u64,
        multiple: bool,
        nack: bool,
    },
    /// Any other method: class id, method id and the whole frame (parse it
    /// with `parse_frame` if it matters, e.g. [`check_close`]).
    Method {
        class: u16,
        method: u16,
        frame: &'a [u8],
    },
}

enum State {
    /// At a frame boundary.
    Frame,
    /// Skipping the rest of a frame's payload, then its end octet.
    Skip(u64),
    /// Expecting the frame-end octet.
    End,
}

/// Reads frames from a socket into one buffer and walks them in place.
pub struct Scanner {
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// Contiguous bytes needed at `start` before the next step can be taken.
    need: usize,
    state: State,
    /// Tag of the `basic.deliver` whose content is being received.
    tag: Option<u64>,
    /// Body bytes still to come in the current content.
    body_left: u64,
    head: [u8; 16],
    head_len: usize,
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes(b.get(at..at + 2)?.try_into().ok()?))
}
fn be32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
}
fn be64(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_be_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

impl Scanner {
    /// `initial`: bytes already read past the last control reply.
    pub fn new(initial: &[u8]) -> Self {
        let cap = (256 * 1024).max(initial.len());
        let mut buf = vec![0u8; cap];
        buf[..initial.len()].copy_from_slice(initial);
        Scanner {
            buf,
            start: 0,
            end: initial.len(),
            need: 1,
            state: State::Frame,
            tag: None,
            body_left: 0,
            head: [0; 16],
            head_len: 0,
        }
    }

    /// Read more bytes from `r` (cancel-safe: nothing is consumed before the
    /// read returns). Errors on EOF.
    pub async fn fill<R: AsyncRead + Unpin>(&mut self, r: &mut R) -> Result<(), String> {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
        if self.buf.len() - self.start < self.need || self.end == self.buf.len() {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
            if self.buf.len() < self.need {
                self.buf.resize(self.need, 0);
            }
        }
        let n = r
            .read(&mut self.buf[self.end..])
            .await
            .map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Err("connection closed by broker".into());
        }
        self.end += n;
        Ok(())
    }

    /// Walk every complete step in the buffer, calling `f` for each event.
    pub fn process<F>(&mut self, mut f: F) -> Result<(), String>
    where
        F: FnMut(Event<'_>) -> Result<(), String>,
    {
        loop {
            let avail = self.end - self.start;
            match self.state {
                State::Skip(n) => {
                    let k = n.min(avail as u64);
                    self.start += k as usize;
                    if k < n {
                        self.state = State::Skip(n - k);
                        self.need = 1;
                        return Ok(());
                    }
                    self.state = State::End;
                }
                State::End => {
                    if avail == 0 {
                        self.need = 1;
                        return Ok(());
                    }
                    if self.buf[self.start] != FRAME_END {
                        return Err("frame does not end with 0xCE".into());
                    }
                    self.start += 1;
                    self.state = State::Frame;
                }
                State::Frame => {
                    if avail < 7 {
                        self.need = 7;
                        return Ok(());
                    }
                    let b = &self.buf[self.start..self.end];
                    let ty = b[0];
                    let size = be32(b, 3).unwrap_or(0) as usize;
                    match ty {
                        FRAME_METHOD => {
                            if size > MAX_CONTROL_FRAME {
                                return Err(format!("method frame of {size} bytes"));
                            }
                            if avail < size + 8 {
                                self.need = size + 8;
                                return Ok(());
                            }
                            let frame = &b[..size + 8];
                            if frame[size + 7] != FRAME_END {
                                return Err("frame does not end with 0xCE".into());
                            }
                            self.start += size + 8;
                            let p = &frame[7..7 + size];
                            let bad = || "truncated method frame".to_string();
                            let class = be16(p, 0).ok_or_else(bad)?;
                            let method = be16(p, 2).ok_or_else(bad)?;
                            match (class, method) {
                                (60, 60) => {
                                    // basic.deliver: consumer-tag (shortstr), delivery-tag, ...
                                    let ctag_len = *p.get(4).ok_or_else(bad)? as usize;
                                    self.tag = Some(be64(p, 5 + ctag_len).ok_or_else(bad)?);
                                }
                                (60, 80) | (60, 120) => {
                                    // basic.ack / basic.nack: delivery-tag, bits (multiple first)
                                    let tag = be64(p, 4).ok_or_else(bad)?;
                                    let bits = *p.get(12).ok_or_else(bad)?;
                                    f(Event::Confirm {
                                        tag,
                                        multiple: bits & 1 != 0,
                                        nack: method == 120,
                                    })?;
                                }
                                _ => {
                                    // basic.return / get-ok content is not ours to count
                                    self.tag = None;
                                    f(Event::Method {
                                        class,
                                        method,
                                        frame,
                                    })?;
                                }
                            }
                        }
                        FRAME_HEADER => {
                            // class-id, weight, body-size, then properties (skipped)
                            if size < 12 {
                                return Err("content header frame too short".into());
                            }
                            if avail < 7 + 12 {
                                self.need = 7 + 12;
                                return Ok(());
                            }
                            self.body_left = be64(b, 7 + 4).unwrap_or(0);
                            self.head_len = 0;
                            self.start += 7 + 12;
                            self.state = State::Skip((size - 12) as u64);
                            if self.body_left == 0 {
                                self.content_done(&mut f)?;
                            }
                        }
                        FRAME_BODY => {
                            let take = size.min(16 - self.head_len);
                            if avail < 7 + take {
                                self.need = 7 + take;
                                return Ok(());
                            }
                            if size as u64 > self.body_left {
                                return Err("body frame beyond the announced body size".into());
                            }
                            self.head[self.head_len..self.head_len + take]
                                .copy_from_slice(&b[7..7 + take]);
                            self.head_len += take;
                            self.body_left -= size as u64;
                            self.start += 7 + take;
                            self.state = State::Skip((size - take) as u64);
                            if self.body_left == 0 {
                                self.content_done(&mut f)?;
                            }
                        }
                        FRAME_HEARTBEAT => {
                            self.start += 7;
                            self.state = State::Skip(size as u64);
                        }
                        other => return Err(format!("unknown frame type {other}")),
                    }
                }
            }
        }
    }

    fn content_done<F>(&mut self, f: &mut F) -> Result<(), String>
    where
        F: FnMut(Event<'_>) -> Result<(), String>,
    {
        if let Some(tag) = self.tag.take() {
            let head = self.head;
            f(Event::Delivery {
                tag,
                head: &head[..self.head_len],
            })?;
        }
        Ok(())
    }
}
