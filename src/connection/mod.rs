//! One client connection: the handshake, the read loop that hands frames to channels,
//! heartbeats, error handling (channel vs connection errors) and cleanup on close.

mod handshake;
mod writer;

use crate::auth::Access;
use crate::broker::client::{ConnShared, TlsInfo};
use crate::broker::vhost::VHost;
use crate::broker::Broker;
use crate::channel::{Channel, ChannelCtx};
use crate::error::{AmqpError, ReplyCode};
use crate::protocol::codec::{read_frame, InFrame, ReadLimits, READ_CHUNK};
use crate::protocol::{short, AMQPClass};
use amq_protocol::protocol::{channel as chan, connection as conn};
use bytes::BytesMut;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::sync::watch;

/// Why the connection ends.
enum Exit {
    /// The peer closed, vanished, or timed out: nothing more to say.
    Gone,
    /// We must close with this error (connection.close sent, await close-ok).
    Error(AmqpError),
    /// The client asked to close and got close-ok.
    ClosedByClient,
    /// Broker shutdown.
    Shutdown,
}

/// Read buffer of a new connection: enough for the handshake and a few small methods.
/// 10,000 idle connections then hold 10,000 small buffers instead of 64 KB pages each.
const FIRST_READ_BUFFER: usize = 1024;

pub(crate) struct Connection<R> {
    broker: Arc<Broker>,
    shared: Arc<ConnShared>,
    reader: R,
    buf: BytesMut,
    /// The last read filled the buffer's free space: more was probably waiting.
    filled_last_read: bool,
    /// The client sent connection.close: its close-ok goes out once the connection's
    /// channels and exclusive queues are released, as RabbitMQ's does, so that a client
    /// which saw close-ok finds its unacked messages requeued and its exclusive queues gone.
    close_ok_owed: bool,
    limits: ReadLimits,
    channel_max: u16,
    heartbeat: Duration,
    vhost: Option<Arc<VHost>>,
    user: String,
    /// Permission checks for the user in the vhost (set by connection.open).
    access: Access,
    channels: HashMap<u16, Channel>,
    /// The store's flushed write epoch: wakes the connection to send held confirms.
    flushed: Option<watch::Receiver<u64>>,
    /// Bumped when a quorum queue applies entries: wakes held quorum confirms.
    quorum_applied: Option<watch::Receiver<u64>>,
}

/// Where a connection is in an alarm episode.
#[derive(Debug, Default)]
struct Throttle {
    /// Socket reads are paused until every alarm has cleared.
    blocked: bool,
    /// connection.blocked went out this episode, so connection.unblocked must follow.
    notified: bool,
}

fn is_publish(frame: &InFrame) -> bool {
    matches!(
        frame,
        InFrame::Method {
            class_id: 60,
            method_id: 40,
            ..
        }
    )
}

/// Resolves when the flushed epoch moves (never, without a store).
async fn flushed_changed(rx: &mut Option<watch::Receiver<u64>>) {
    match rx {
        Some(rx) => {
            if rx.changed().await.is_err() {
                std::future::pending::<()>().await
            }
        }
        None => std::future::pending::<()>().await,
    }
}

/// Serve one accepted socket until it closes.
pub async fn serve<S>(
    broker: Arc<Broker>,
    socket: S,
    peer: SocketAddr,
    mut shutdown: watch::Receiver<bool>,
    tls: Option<TlsInfo>,
) where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (reader, writer) = tokio::io::split(socket);
    let id = broker.next_connection_id();
    let shared = ConnShared::new(id, peer, broker.config.outbound_high_watermark);
    shared.info.write().tls = tls;
    let writer_task = tokio::spawn(writer::run_writer(
        shared.out.clone(),
        writer,
        shared.heartbeat_ms.clone(),
    ));
    let mut c = Connection {
        limits: ReadLimits {
            frame_max: broker.config.frame_max,
            max_table_depth: broker.config.max_table_depth,
        },
        broker: broker.clone(),
        shared: shared.clone(),
        reader,
        buf: BytesMut::with_capacity(FIRST_READ_BUFFER),
        filled_last_read: false,
        close_ok_owed: false,
        channel_max: broker.config.channel_max,
        heartbeat: Duration::ZERO,
        vhost: None,
        user: String::new(),
        access: Access::new(broker.auth.clone(), "", ""),
        channels: HashMap::new(),
        flushed: broker.store.as_ref().map(|s| s.subscribe_flushed()),
        quorum_applied: broker
            .store
            .as_ref()
            .and_then(|s| s.quorum())
            .map(|q| q.applied.subscribe()),
    };
    let exit = match c.handshake(&mut shutdown).await {
        Ok(true) => {
            broker.register_connection(shared.clone());
            c.run(&mut shutdown).await
        }
        Ok(false) => Exit::Gone,
        Err(e) => Exit::Error(e),
    };
    // A close the client started: keep the socket open until the client closes it, as
    // RabbitMQ does. A close the broker started: the client's close-ok ends the connection,
    // so our FIN goes at once (RabbitMQ terminates then too), and we read on only so that
    // late bytes cannot turn the close into a reset.
    let (linger_open, linger_after_fin) = (
        matches!(exit, Exit::ClosedByClient),
        matches!(exit, Exit::Error(_)),
    );
    match exit {
        Exit::Error(e) => {
            tracing::warn!(peer = %peer, code = e.code as u16, "closing connection: {}", e.reply_text());
            c.close_with(e).await;
        }
        Exit::Shutdown => {
            c.close_with(AmqpError::new(
                ReplyCode::ConnectionForced,
                "broker shutdown",
            ))
            .await;
        }
        Exit::Gone | Exit::ClosedByClient => {}
    }
    c.cleanup();
    broker.unregister_connection(id);
    if c.close_ok_owed {
        shared.send(
            0,
            AMQPClass::Connection(conn::AMQPMethod::CloseOk(conn::CloseOk {})),
        );
    }
    if linger_open {
        c.linger().await;
    }
    shared.out.close();
    let _ = tokio::time::timeout(Duration::from_secs(5), writer_task).await;
    if linger_after_fin {
        c.linger().await;
    }
}

/// How long a closed connection keeps reading, at most, for the client to close its side.
const LINGER: Duration = Duration::from_secs(2);

impl<R: AsyncRead + Unpin> Connection<R> {
    /// Read more bytes, bounded by the heartbeat timeout. Ok(false) on EOF or timeout.
    ///
    /// The buffer starts at [`FIRST_READ_BUFFER`] so that idle connections stay cheap,
    /// and grows to [`READ_CHUNK`] the first time a read fills it: a busy publisher then
    /// gets many frames per syscall.
    async fn fill(&mut self) -> Result<bool, AmqpError> {
        let room = self.buf.capacity() - self.buf.len();
        if room < READ_CHUNK && self.filled_last_read {
            self.buf.reserve(READ_CHUNK);
        }
        let read = self.reader.read_buf(&mut self.buf);
        let n = if self.heartbeat.is_zero() {
            read.await
        } else {
            match tokio::time::timeout(self.heartbeat * 2, read).await {
                Ok(r) => r,
                Err(_) => {
                    tracing::warn!(peer = %self.shared.peer, "missed heartbeats; closing connection");
                    return Ok(false);
                }
            }
        };
        match n {
            Ok(0) | Err(_) => Ok(false),
            Ok(n) => {
                self.filled_last_read = n >= room;
                self.shared.received(n);
                Ok(true)
            }
        }
    }

    async fn run(&mut self, shutdown: &mut watch::Receiver<bool>) -> Exit {
        let shared = self.shared.clone();
        let mut alarms = self.broker.alarms.subscribe();
        let mut throttle = Throttle::default();
        loop {
            // Handle every complete frame already buffered, then flush batched confirms.
            loop {
                match read_frame(&mut self.buf, self.limits) {
                    Ok(Some(frame)) => {
                        let publish = is_publish(&frame);
                        match self.handle_frame(frame) {
                            Ok(true) => {}
                            Ok(false) => return Exit::ClosedByClient,
                            Err(e) => return Exit::Error(e),
                        }
                        // As RabbitMQ: a connection is blocked when it publishes during an
                        // alarm; consumers-only connections keep reading (acks drain queues).
                        let state = *alarms.borrow_and_update();
                        if publish && !throttle.blocked && state.any() {
                            self.block(&mut throttle, &state.reason());
                        }
                    }
                    Ok(None) => break,
                    Err(fe) => return Exit::Error(fe.error),
                }
            }
            self.settle_durability().await;
            self.shared.out.room().await;
            // A busy publisher finds its next read ready at once and would run for a whole
            // scheduler budget (megabytes of frames) before the consumers' acks get a
            // turn; every prefetch-limited consumer would then slow to that pace.
            if self.filled_last_read {
                tokio::task::yield_now().await;
            }
            // Ack timeouts are checked at a quarter of the shortest one in use.
            let tick = self
                .channels
                .values()
                .filter_map(|c| c.shortest_ack_timeout())
                .min()
                .map(|t| (t / 4).clamp(Duration::from_millis(10), Duration::from_secs(5)));
            let awaiting_flush = self.channels.values().any(|c| c.awaiting_flush());
            let awaiting_quorum = self.channels.values().any(|c| c.awaiting_quorum());
            let mut flushed = self.flushed.take();
            let mut quorum_applied = self.quorum_applied.take();
            tokio::select! {
                // Not read while blocked: the publisher stalls on TCP backpressure, and the
                // heartbeat timeout (which lives in `fill`) is suspended meanwhile.
                r = self.fill(), if !throttle.blocked => match r {
                    Ok(true) => {}
                    Ok(false) => return Exit::Gone,
                    Err(e) => return Exit::Error(e),
                },
                _ = shutdown.changed() => return Exit::Shutdown,
                // Closed from outside: management or vhost deletion.
                reason = shared.kill_requested() => {
                    return Exit::Error(AmqpError::new(ReplyCode::ConnectionForced, reason));
                }
                _ = flushed_changed(&mut flushed), if awaiting_flush => {}
                _ = flushed_changed(&mut quorum_applied), if awaiting_quorum => {}
                changed = alarms.changed(), if throttle.blocked => {
                    if changed.is_err() || !alarms.borrow_and_update().any() {
                        self.unblock(&mut throttle);
                    }
                }
                _ = tokio::time::sleep(tick.unwrap_or(Duration::MAX)), if tick.is_some() => {
                    if let Err(e) = self.check_ack_timeouts() {
                        return Exit::Error(e);
                    }
                }
            }
            self.flushed = flushed;
            self.quorum_applied = quorum_applied;
        }
    }

    /// Pause reads for this alarm episode, telling the client once if it asked to be told.
    fn block(&self, throttle: &mut Throttle, reason: &str) {
        throttle.blocked = true;
        self.shared.blocked.store(true, Ordering::Relaxed);
        if !throttle.notified && self.shared.caps.connection_blocked.load(Ordering::Relaxed) {
            self.shared.send(
                0,
                AMQPClass::Connection(conn::AMQPMethod::Blocked(conn::Blocked {
                    reason: short(reason),
                })),
            );
            throttle.notified = true;
        }
        tracing::info!(peer = %self.shared.peer, reason, "connection blocked by a resource alarm");
    }

    /// Every alarm cleared: resume reads, and send connection.unblocked if blocked was sent.
    fn unblock(&self, throttle: &mut Throttle) {
        if throttle.notified {
            self.shared.send(
                0,
                AMQPClass::Connection(conn::AMQPMethod::Unblocked(conn::Unblocked {})),
            );
        }
        *throttle = Throttle::default();
        self.shared.blocked.store(false, Ordering::Relaxed);
        tracing::info!(peer = %self.shared.peer, "connection unblocked");
    }

    /// Send what waited for the store: tx.commit-ok once its messages are flushed, and the
    /// publisher confirms that are due.
    async fn settle_durability(&mut self) {
        let store = self.broker.store.clone();
        for (id, ch) in self.channels.iter_mut() {
            if let Some(epoch) = ch.deferred_commit.take() {
                if let Some(store) = &store {
                    store.wait_flushed(epoch).await;
                }
            }
            if ch.commits_owed > 0 && ch.quorum_commit_done() {
                for _ in 0..std::mem::take(&mut ch.commits_owed) {
                    self.shared.send(
                        *id,
                        AMQPClass::Tx(amq_protocol::protocol::tx::AMQPMethod::CommitOk(
                            amq_protocol::protocol::tx::CommitOk {},
                        )),
                    );
                }
            }
        }
        let flushed = store
            .as_ref()
            .map(|s| s.flushed_epoch())
            .unwrap_or(u64::MAX);
        for ch in self.channels.values_mut() {
            ch.flush_confirms(flushed);
        }
    }

    fn check_ack_timeouts(&mut self) -> Result<(), AmqpError> {
        let Some(vhost) = self.vhost.clone() else {
            return Ok(());
        };
        let now = tokio::time::Instant::now();
        let ids: Vec<u16> = self.channels.keys().copied().collect();
        for id in ids {
            let res = match self.channels.get_mut(&id) {
                Some(ch) if !ch.is_closing() => ch.check_ack_timeouts(&self.shared, &vhost, now),
                _ => Ok(()),
            };
            self.channel_result(id, res)?;
        }
        Ok(())
    }

    /// Ok(false) when the client closed the connection.
    fn handle_frame(&mut self, frame: InFrame) -> Result<bool, AmqpError> {
        match frame {
            InFrame::Heartbeat => Ok(true),
            InFrame::Method {
                channel: 0,
                class_id,
                method_id,
                method,
            } => self
                .connection_method(*method)
                .map_err(|e| e.at(class_id, method_id)),
            InFrame::Method {
                channel,
                class_id,
                method_id,
                method,
            } => {
                self.channel_method(channel, class_id, method_id, *method)?;
                Ok(true)
            }
            InFrame::Header { channel: 0, .. } | InFrame::Body { channel: 0, .. } => {
                Err(AmqpError::command_invalid("content frame on channel 0"))
            }
            InFrame::Header {
                channel,
                class_id,
                body_size,
                properties,
                raw_properties,
            } => {
                let max = self.broker.config.max_message_size;
                self.on_content(channel, |ch, ctx| {
                    ch.on_header(ctx, class_id, body_size, properties, raw_properties, max)
                })
            }
            InFrame::Body { channel, payload } => {
                self.on_content(channel, |ch, ctx| ch.on_body(ctx, payload))
            }
        }
    }

    /// Hand a content frame to its channel (ignored while the channel is closing).
    fn on_content(
        &mut self,
        id: u16,
        f: impl FnOnce(&mut Channel, &ChannelCtx<'_>) -> Result<(), AmqpError>,
    ) -> Result<bool, AmqpError> {
        let res = {
            let ch = self
                .channels
                .get_mut(&id)
                .ok_or_else(|| unknown_channel(id))?;
            if ch.is_closing() {
                return Ok(true);
            }
            let ctx = ChannelCtx {
                broker: &self.broker,
                vhost: self
                    .vhost
                    .as_ref()
                    .ok_or_else(|| AmqpError::internal("no vhost"))?,
                conn: &self.shared,
                user: &self.user,
                access: &self.access,
            };
            f(ch, &ctx)
        };
        self.channel_result(id, res)
    }

    /// A soft error closes the channel; a hard one propagates to close the connection.
    fn channel_result(
        &mut self,
        channel: u16,
        res: Result<(), AmqpError>,
    ) -> Result<bool, AmqpError> {
        match res {
            Ok(()) => Ok(true),
            Err(e) if e.code.is_hard() => Err(e),
            Err(e) => {
                tracing::debug!(channel, "channel error: {}", e.reply_text());
                if let (Some(ch), Some(vhost)) = (self.channels.get_mut(&channel), &self.vhost) {
                    ch.close_on_error(&self.shared, vhost, &e);
                }
                Ok(true)
            }
        }
    }

    fn connection_method(&mut self, method: AMQPClass) -> Result<bool, AmqpError> {
        match method {
            AMQPClass::Connection(conn::AMQPMethod::Close(_)) => {
                self.close_ok_owed = true;
                Ok(false)
            }
            AMQPClass::Connection(conn::AMQPMethod::CloseOk(_)) => Ok(false),
            AMQPClass::Connection(conn::AMQPMethod::UpdateSecret(_)) => {
                // Credentials here are static passwords: accept the new secret as RabbitMQ does
                // for backends without expiring tokens.
                self.shared.send(
                    0,
                    AMQPClass::Connection(conn::AMQPMethod::UpdateSecretOk(
                        conn::UpdateSecretOk {},
                    )),
                );
                Ok(true)
            }
            AMQPClass::Connection(
                conn::AMQPMethod::Blocked(_) | conn::AMQPMethod::Unblocked(_),
            ) => Ok(true),
            AMQPClass::Connection(_) => Err(AmqpError::command_invalid(
                "connection method not allowed after the handshake",
            )),
            _ => Err(AmqpError::command_invalid(
                "non-connection method on channel 0",
            )),
        }
    }

    fn channel_method(
        &mut self,
        id: u16,
        class_id: u16,
        method_id: u16,
        method: AMQPClass,
    ) -> Result<(), AmqpError> {
        if let AMQPClass::Channel(chan::AMQPMethod::Open(_)) = method {
            if self.channels.contains_key(&id) {
                return Err(AmqpError::channel_error(format!(
                    "second 'channel.open' seen on channel {id}"
                ))
                .at(class_id, method_id));
            }
            // channel_max bounds how many channels are open at once, not their numbers: as
            // in RabbitMQ, channel 65535 may be opened while fewer than channel_max are.
            let open = self.channels.len();
            if self.channel_max != 0 && open >= self.channel_max as usize {
                return Err(AmqpError::not_allowed(format!(
                    "number of channels opened ({open}) has reached the negotiated channel_max ({})",
                    self.channel_max
                )));
            }
            self.check_channel_limit()
                .map_err(|e| e.at(class_id, method_id))?;
            let ch = Channel::new(id, self.shared.clone());
            self.shared.channels.lock().insert(id, ch.shared.clone());
            self.channels.insert(id, ch);
            self.shared.send(
                id,
                AMQPClass::Channel(chan::AMQPMethod::OpenOk(chan::OpenOk {})),
            );
            return Ok(());
        }
        let Some(ch) = self.channels.get_mut(&id) else {
            return Err(unknown_channel(id).at(class_id, method_id));
        };
        match method {
            // Both sides closed at once: answer the client's close, and stay closing until
            // its close-ok for ours arrives (RabbitMQ's reader does the same).
            AMQPClass::Channel(chan::AMQPMethod::Close(_)) if ch.is_closing() => {
                self.shared.send(
                    id,
                    AMQPClass::Channel(chan::AMQPMethod::CloseOk(chan::CloseOk {})),
                );
                Ok(())
            }
            AMQPClass::Channel(chan::AMQPMethod::Close(_)) => {
                let mut ch = self
                    .channels
                    .remove(&id)
                    .ok_or_else(|| unknown_channel(id))?;
                self.shared.channels.lock().remove(&id);
                if let Some(vhost) = &self.vhost {
                    ch.release(vhost);
                }
                self.shared.send(
                    id,
                    AMQPClass::Channel(chan::AMQPMethod::CloseOk(chan::CloseOk {})),
                );
                Ok(())
            }
            AMQPClass::Channel(chan::AMQPMethod::CloseOk(_)) => {
                if ch.is_closing() {
                    self.channels.remove(&id);
                    self.shared.channels.lock().remove(&id);
                }
                Ok(())
            }
            _ if ch.is_closing() => Ok(()),
            method => {
                let res = {
                    let ctx = ChannelCtx {
                        broker: &self.broker,
                        vhost: self
                            .vhost
                            .as_ref()
                            .ok_or_else(|| AmqpError::internal("no vhost"))?,
                        conn: &self.shared,
                        user: &self.user,
                        access: &self.access,
                    };
                    let ch = self
                        .channels
                        .get_mut(&id)
                        .ok_or_else(|| unknown_channel(id))?;
                    ch.handle_method(&ctx, class_id, method_id, method)
                        .map_err(|e| e.at(class_id, method_id))
                };
                self.channel_result(id, res).map(|_| ())
            }
        }
    }

    /// Send connection.close and wait (bounded) for close-ok.
    async fn close_with(&mut self, e: AmqpError) {
        self.shared.send(
            0,
            AMQPClass::Connection(conn::AMQPMethod::Close(conn::Close {
                reply_code: e.code as u16,
                reply_text: short(&e.reply_text()),
                class_id: e.class_id,
                method_id: e.method_id,
            })),
        );
        let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
        loop {
            loop {
                match read_frame(
                    &mut self.buf,
                    ReadLimits {
                        frame_max: 0,
                        ..self.limits
                    },
                ) {
                    Ok(Some(InFrame::Method {
                        channel: 0, method, ..
                    })) => {
                        if matches!(
                            *method,
                            AMQPClass::Connection(
                                conn::AMQPMethod::CloseOk(_) | conn::AMQPMethod::Close(_)
                            )
                        ) {
                            return;
                        }
                    }
                    Ok(Some(_)) => {}
                    Ok(None) => break,
                    Err(_) => return,
                }
            }
            match tokio::time::timeout_at(deadline, self.reader.read_buf(&mut self.buf)).await {
                Ok(Ok(n)) if n > 0 => {}
                _ => return,
            }
        }
    }

    /// After the close handshake: read until the client closes its side (bounded by
    /// [`LINGER`]), answering any further connection.close with close-ok while our side
    /// is still open. Closing a socket with unread bytes in it sends a TCP
    /// reset: a client whose publishes were still queued behind its connection.close would
    /// lose our close-ok to it. And a client that sent several closes at once (amqp091-go
    /// from many goroutines) waits for a close-ok to each, not for an EOF.
    async fn linger(&mut self) {
        let deadline = tokio::time::Instant::now() + LINGER;
        loop {
            loop {
                match read_frame(&mut self.buf, self.limits) {
                    Ok(Some(InFrame::Method {
                        channel: 0, method, ..
                    })) if matches!(*method, AMQPClass::Connection(conn::AMQPMethod::Close(_))) => {
                        self.shared.send(
                            0,
                            AMQPClass::Connection(conn::AMQPMethod::CloseOk(conn::CloseOk {})),
                        );
                    }
                    Ok(Some(_)) => {}
                    Ok(None) => break,
                    Err(_) => {
                        self.buf.clear();
                        break;
                    }
                }
            }
            match tokio::time::timeout_at(deadline, self.reader.read_buf(&mut self.buf)).await {
                Ok(Ok(n)) if n > 0 => {}
                _ => return,
            }
        }
    }

    /// Release everything the connection held: channels (requeue unacked, cancel
    /// consumers) and exclusive queues.
    fn cleanup(&mut self) {
        self.shared.channels.lock().clear();
        if let Some(vhost) = self.vhost.clone() {
            for (_, mut ch) in self.channels.drain() {
                ch.release(&vhost);
            }
            vhost.drop_exclusive_queues(self.shared.id);
        }
    }
}

impl<R> Connection<R> {
    /// The user's `max-channels` limit, counted over all its connections (only when set).
    fn check_channel_limit(&self) -> Result<(), AmqpError> {
        let Some(max) = self
            .broker
            .auth
            .user(&self.user)
            .and_then(|u| crate::broker::vhosts::limit_of(&u.limits, "max-channels"))
        else {
            return Ok(());
        };
        let open: u64 = self
            .broker
            .connections
            .iter()
            .filter(|c| c.info.read().user == self.user)
            .map(|c| c.channels.lock().len() as u64)
            .sum();
        if open >= max {
            return Err(AmqpError::not_allowed(format!(
                "number of channels opened for user '{}' has reached the maximum allowed user \
                 limit of ({max})",
                self.user
            )));
        }
        Ok(())
    }
}

fn unknown_channel(id: u16) -> AmqpError {
    AmqpError::channel_error(format!("expected 'channel.open' on channel {id}"))
}
