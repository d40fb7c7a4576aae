//! A channel: its state machine (open → closing), content assembly for publishes, confirm
//! and transaction modes, and dispatch of methods to one handler file per AMQP class.

mod basic;
mod confirm_tx;
pub mod content;
mod exchange;
mod queue;

pub use queue::generated_name;

use crate::broker::client::ConnShared;
use crate::broker::delivery::{ChannelShared, Consumer, Unacked};
use crate::broker::message::QueuedMessage;
use crate::broker::queue::Queue;
use crate::broker::vhost::VHost;
use crate::broker::Broker;
use crate::error::{AmqpError, AmqpResult};
use crate::protocol::{encode, short, AMQPClass, BasicProperties};
use amq_protocol::protocol::{access, channel as chan};
use bytes::Bytes;
use content::ContentAssembler;
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// What a channel handler can reach.
pub struct ChannelCtx<'a> {
    pub broker: &'a Arc<Broker>,
    pub vhost: &'a Arc<VHost>,
    pub conn: &'a Arc<ConnShared>,
    /// The authenticated user (checked against the `user_id` property).
    pub user: &'a str,
    /// Permission checks of the connection's user in its vhost.
    pub access: &'a crate::auth::Access,
}

impl ChannelCtx<'_> {
    /// Topic permissions on a binding or unbinding: its key must match the user's `read`
    /// pattern when the source is a topic exchange (as RabbitMQ checks them).
    fn check_binding_key(&self, exchange: &str, key: &str) -> AmqpResult<()> {
        self.access
            .topic(crate::auth::Perm::Read, exchange, key, || {
                self.vhost.is_topic_exchange(exchange)
            })
    }
}

/// A basic.publish waiting for its content.
struct PendingPublish {
    exchange: String,
    routing_key: String,
    mandatory: bool,
}

/// Publisher confirm bookkeeping: acks are batched and sent as one `multiple` ack per read
/// batch.
#[derive(Default)]
struct Confirms {
    /// Sequence number of the last publish.
    last_seq: u64,
    /// Highest sequence number already acked or nacked to the client.
    reported: u64,
    /// Publishes that cannot simply be acked with the rest, in order. A publish that
    /// reached several quorum queues has one entry per queue, all with its seq.
    pending: std::collections::VecDeque<PendingConfirm>,
}

/// What one publisher confirm waits for.
struct PendingConfirm {
    seq: u64,
    /// Store write epoch that must be flushed first (0 = none).
    epoch: u64,
    /// A quorum queue's applied ticket that must reach this one.
    quorum: Option<QuorumWait>,
    /// Nack instead of ack.
    nack: bool,
}

/// A quorum queue's applied-ticket counter and the ticket to wait for.
pub(crate) type QuorumWait = (Arc<std::sync::atomic::AtomicU64>, u64);

fn quorum_done((applied, ticket): &QuorumWait) -> bool {
    applied.load(Ordering::Acquire) >= *ticket
}

impl Confirms {
    /// Ack everything up to `upto` that is not yet reported, as one `multiple` ack.
    fn ack_upto(&mut self, shared: &ChannelShared, upto: u64) {
        if upto > self.reported {
            let multiple = upto > self.reported + 1;
            let id = shared.id;
            self.reported = upto;
            shared
                .conn
                .out
                .write(|buf| encode::confirm_ack(buf, id, upto, multiple));
        }
    }
}

/// A message published inside a transaction, routed at commit.
struct TxPublish {
    publish: PendingPublish,
    msg: Arc<crate::broker::message::Message>,
}

enum Mode {
    Normal,
    Confirm(Confirms),
    Tx {
        publishes: Vec<TxPublish>,
        acks: Vec<TxAck>,
    },
}

/// An ack, nack or reject held until tx.commit.
struct TxAck {
    taken: Vec<Unacked>,
    /// None for ack; Some(requeue) for nack/reject.
    reject: Option<bool>,
}

pub struct Channel {
    pub shared: Arc<ChannelShared>,
    /// We sent channel.close and wait for close-ok; everything else is ignored.
    closing: bool,
    content: ContentAssembler<PendingPublish>,
    /// The last queue declared on this channel, for the empty-name shortcut.
    last_queue: Option<String>,
    consumers: HashMap<String, (Arc<Consumer>, Arc<Queue>)>,
    /// basic.qos global=false: the prefetch given to consumers created from now on.
    consumer_prefetch: u32,
    mode: Mode,
    /// Scratch buffer for routing results, reused by every publish.
    route_buf: Vec<Arc<Queue>>,
    /// tx.commit-ok held until the store has flushed this write epoch.
    pub deferred_commit: Option<u64>,
    /// tx.commit-ok also held until these quorum queues applied the commit's publishes.
    pub deferred_quorum: Vec<QuorumWait>,
    /// tx.commit-oks owed, sent once both waits are over (a commit pipelined behind one
    /// still waiting adds its waits and is answered with it, in order).
    pub commits_owed: u32,
    /// What the publish being routed must wait for in quorum queues (reused buffer).
    quorum_waits: Vec<QuorumWait>,
    /// The direct reply-to consumer, if this channel has one (at most one per channel).
    reply: Option<Arc<crate::broker::reply_to::ReplyConsumer>>,
}

impl Channel {
    pub fn new(id: u16, conn: Arc<ConnShared>) -> Self {
        Channel {
            shared: ChannelShared::new(id, conn),
            closing: false,
            content: ContentAssembler::new(),
            last_queue: None,
            consumers: HashMap::new(),
            consumer_prefetch: 0,
            mode: Mode::Normal,
            route_buf: Vec::new(),
            deferred_commit: None,
            deferred_quorum: Vec::new(),
            commits_owed: 0,
            quorum_waits: Vec::new(),
            reply: None,
        }
    }

    pub fn id(&self) -> u16 {
        self.shared.id
    }

    pub fn is_closing(&self) -> bool {
        self.closing
    }

    fn send(&self, ctx: &ChannelCtx<'_>, method: AMQPClass) {
        ctx.conn.send(self.id(), method);
    }

    /// Queue name from a method, applying the "last declared queue" rule for "".
    fn queue_name(&self, name: &str) -> AmqpResult<String> {
        if !name.is_empty() {
            return Ok(name.to_string());
        }
        self.last_queue
            .clone()
            .ok_or_else(|| AmqpError::not_found("no previously declared queue"))
    }

    pub fn handle_method(
        &mut self,
        ctx: &ChannelCtx<'_>,
        class_id: u16,
        method_id: u16,
        method: AMQPClass,
    ) -> AmqpResult<()> {
        self.content.check_method(self.id(), class_id, method_id)?;
        match method {
            AMQPClass::Exchange(m) => self.exchange_method(ctx, m),
            AMQPClass::Queue(m) => self.queue_method(ctx, m),
            AMQPClass::Basic(m) => self.basic_method(ctx, m),
            AMQPClass::Confirm(m) => self.confirm_method(ctx, m),
            AMQPClass::Tx(m) => self.tx_method(ctx, m),
            // RabbitMQ never lets a client pause its deliveries this way (basic.qos is the
            // tool for that): active=false is a connection error 540, and clients such as
            // amqp091-go expect exactly that.
            AMQPClass::Channel(chan::AMQPMethod::Flow(f)) if !f.active => {
                Err(AmqpError::not_implemented("active=false"))
            }
            AMQPClass::Channel(chan::AMQPMethod::Flow(_)) => {
                self.send(
                    ctx,
                    AMQPClass::Channel(chan::AMQPMethod::FlowOk(chan::FlowOk { active: true })),
                );
                Ok(())
            }
            AMQPClass::Channel(chan::AMQPMethod::FlowOk(_)) => Ok(()),
            AMQPClass::Access(access::AMQPMethod::Request(_)) => {
                self.send(
                    ctx,
                    AMQPClass::Access(access::AMQPMethod::RequestOk(access::RequestOk {})),
                );
                Ok(())
            }
            _ => Err(AmqpError::command_invalid(format!(
                "method {class_id}.{method_id} not allowed here"
            ))),
        }
    }

    pub fn on_header(
        &mut self,
        ctx: &ChannelCtx<'_>,
        class_id: u16,
        body_size: u64,
        properties: Box<BasicProperties>,
        raw_properties: Bytes,
        max_size: u64,
    ) -> AmqpResult<()> {
        let id = self.id();
        match self.content.on_header(
            id,
            class_id,
            body_size,
            properties,
            raw_properties,
            max_size,
        )? {
            Some(m) => self.publish(ctx, m.publish, m.properties, m.raw_properties, m.body),
            None => Ok(()),
        }
    }

    pub fn on_body(&mut self, ctx: &ChannelCtx<'_>, payload: Bytes) -> AmqpResult<()> {
        let id = self.id();
        match self.content.on_body(id, payload)? {
            Some(m) => self.publish(ctx, m.publish, m.properties, m.raw_properties, m.body),
            None => Ok(()),
        }
    }

    /// Send the batched publisher confirms that are due: everything up to the first
    /// publish still waiting for a store flush (`flushed` is the flushed write epoch).
    pub fn flush_confirms(&mut self, flushed: u64) {
        let Mode::Confirm(c) = &mut self.mode else {
            return;
        };
        let shared = &self.shared;
        loop {
            let front = c.pending.front().map(|p| {
                (
                    p.seq,
                    p.epoch <= flushed && p.quorum.as_ref().is_none_or(quorum_done),
                    p.nack,
                )
            });
            match front {
                Some((seq, true, nack)) => {
                    c.pending.pop_front();
                    if nack && c.reported < seq {
                        c.ack_upto(shared, seq - 1);
                        let id = shared.id;
                        c.reported = seq;
                        shared
                            .conn
                            .out
                            .write(|buf| encode::confirm_nack(buf, id, seq, false));
                    }
                }
                Some((seq, false, _)) => {
                    c.ack_upto(shared, seq - 1);
                    break;
                }
                None => {
                    let last = c.last_seq;
                    c.ack_upto(shared, last);
                    break;
                }
            }
        }
        shared
            .unconfirmed
            .store(c.last_seq - c.reported, Ordering::Relaxed);
    }

    /// Mirror the size of the open transaction for the management API.
    fn note_uncommitted(&self) {
        let (messages, acks) = match &self.mode {
            Mode::Tx { publishes, acks } => (
                publishes.len(),
                acks.iter()
                    .filter(|a| a.reject.is_none())
                    .map(|a| a.taken.len())
                    .sum(),
            ),
            _ => (0, 0),
        };
        let s = &self.shared;
        s.uncommitted_messages
            .store(messages as u32, Ordering::Relaxed);
        s.uncommitted_acks.store(acks as u32, Ordering::Relaxed);
    }

    /// Confirms are held until the store flushes.
    pub fn awaiting_flush(&self) -> bool {
        matches!(&self.mode, Mode::Confirm(c) if c.pending.iter().any(|p| p.epoch > 0))
    }

    /// Confirms or a tx.commit-ok are held until a quorum queue applies them.
    pub fn awaiting_quorum(&self) -> bool {
        !self.deferred_quorum.is_empty()
            || matches!(&self.mode, Mode::Confirm(c) if c.pending.iter().any(|p| p.quorum.is_some()))
    }

    /// The tx.commit-ok is due: every quorum queue it published to applied its messages.
    pub fn quorum_commit_done(&mut self) -> bool {
        self.deferred_quorum.retain(|w| !quorum_done(w));
        self.deferred_quorum.is_empty()
    }

    /// Dispatch every queue this channel consumes from (credit was freed or flow resumed).
    fn dispatch_consumed_queues(&self) {
        let mut seen: Vec<&Arc<Queue>> = Vec::new();
        for (_, q) in self.consumers.values() {
            if !seen.iter().any(|x| Arc::ptr_eq(x, q)) {
                seen.push(q);
                q.dispatch();
            }
        }
    }

    /// The shortest ack timeout among this channel's consumers.
    pub fn shortest_ack_timeout(&self) -> Option<std::time::Duration> {
        self.consumers.values().filter_map(|(c, _)| c.timeout).min()
    }

    /// Enforce consumer ack timeouts: consumers of clients that understand
    /// consumer_cancel_notify are cancelled and their deliveries requeued; otherwise the
    /// channel is closed with 406, as RabbitMQ does.
    pub fn check_ack_timeouts(
        &mut self,
        conn: &ConnShared,
        vhost: &VHost,
        now: tokio::time::Instant,
    ) -> AmqpResult<()> {
        let Some(shortest) = self.shortest_ack_timeout() else {
            return Ok(());
        };
        let late = self.shared.timed_out_consumers(now, shortest);
        let Some(first) = late.first() else {
            return Ok(());
        };
        if !conn.caps.consumer_cancel_notify.load(Ordering::Relaxed) {
            let ms = first.timeout.map(|t| t.as_millis()).unwrap_or(0);
            return Err(AmqpError::precondition(format!(
                "delivery acknowledgement on channel {} timed out. Timeout value used: {ms} ms. \
                 This timeout value can be configured, see consumers doc guide to learn more",
                self.id()
            )));
        }
        for c in late {
            tracing::info!(channel = self.id(), consumer = %c.tag, "ack timeout: cancelling consumer");
            if let Some((consumer, q)) = self.consumers.remove(&c.tag) {
                if q.remove_consumer(&consumer) {
                    vhost.remove_queue(&q);
                }
            }
            conn.notify_consumer_cancelled(self.id(), &c.tag);
            requeue_grouped(self.shared.take_consumer(&c));
        }
        self.dispatch_consumed_queues();
        Ok(())
    }

    /// A soft error: send channel.close and ignore everything until close-ok.
    pub fn close_on_error(&mut self, conn: &ConnShared, vhost: &VHost, e: &AmqpError) {
        self.closing = true;
        self.content.reset();
        conn.send(
            self.id(),
            AMQPClass::Channel(chan::AMQPMethod::Close(chan::Close {
                reply_code: e.code as u16,
                reply_text: short(&e.reply_text()),
                class_id: e.class_id,
                method_id: e.method_id,
            })),
        );
        self.release(vhost);
    }

    /// The channel is gone (closed by either side or with its connection): cancel its
    /// consumers, requeue what it had unacked, and auto-delete queues that lost their last
    /// consumer.
    pub fn release(&mut self, vhost: &VHost) {
        // Its reply-to name dies with the channel: later replies to it are dropped.
        if let Some(r) = self.reply.take() {
            vhost.reply_consumers.remove(&r.name);
        }
        let auto_deletes = self.release_delivery_state();
        for q in auto_deletes {
            vhost.remove_queue(&q);
        }
    }

    fn release_delivery_state(&mut self) -> Vec<Arc<Queue>> {
        self.shared.closed.store(true, Ordering::Release);
        self.shared.flow_active.store(false, Ordering::Relaxed);
        let mut auto_delete = Vec::new();
        for (_, (consumer, q)) in self.consumers.drain() {
            if q.remove_consumer(&consumer) {
                auto_delete.push(q);
            }
        }
        if let Mode::Tx { acks, .. } = &mut self.mode {
            // Acks held by an uncommitted transaction are still unacked.
            let held: Vec<Unacked> = acks.drain(..).flat_map(|a| a.taken).collect();
            requeue_grouped(held);
        }
        requeue_grouped(self.shared.take_all());
        auto_delete
    }
}

/// Requeue unacked messages, one lock per queue, each at its original position.
pub(crate) fn requeue_grouped(unacked: Vec<Unacked>) {
    let mut groups: Vec<(Arc<Queue>, Vec<QueuedMessage>)> = Vec::new();
    for u in unacked {
        match groups.iter_mut().find(|(q, _)| Arc::ptr_eq(q, &u.queue)) {
            Some((_, msgs)) => msgs.push(u.msg),
            None => groups.push((u.queue, vec![u.msg])),
        }
    }
    for (q, msgs) in groups {
        q.requeue(msgs);
    }
}
