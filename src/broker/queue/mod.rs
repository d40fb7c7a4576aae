//! A queue: the one owner of its ready messages, its consumers and its delivery order.
//!
//! Publishing tasks enqueue and dispatch directly under the queue's lock (no extra task hop
//! per message); dispatch writes deliveries straight into consumers' outbound buffers.
//! Messages to dead-letter are collected under the lock and republished after it is
//! released, so a dead-letter route back into the same queue cannot deadlock.

pub mod args;
mod at_least_once;
pub mod inspect;
pub mod kind;
pub mod quorum;
pub mod ready;
pub mod stats;
mod timer;

use super::dead_letter::DeathReason;
use super::delivery::{ChannelShared, Consumer, Readiness};
use super::message::{Message, QueuedMessage};
use super::vhost::VHost;
use crate::error::{AmqpError, AmqpResult};
use crate::protocol::FieldTable;
use crate::store::Store;
use args::{Overflow, QueueArgs};
use kind::QueueKind;
use parking_lot::Mutex;
use ready::{ReadyList, Return};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;

/// What a queue's declaration says about it.
#[derive(Debug, Clone)]
pub struct QueueSpec {
    pub name: String,
    pub durable: bool,
    /// Owning connection of an exclusive queue.
    pub exclusive_owner: Option<u64>,
    /// Key prefix of its persistent messages in the store (durable, non-exclusive queues).
    pub store_id: Option<u64>,
    pub auto_delete: bool,
    pub arguments: FieldTable,
}

/// A binding that points at this queue, kept so deleting the queue removes it everywhere.
#[derive(Debug, Clone, PartialEq)]
pub struct InboundBinding {
    pub exchange: String,
    pub routing_key: String,
    pub arguments: FieldTable,
}

/// Outcome of offering a message to a queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enqueued {
    Accepted,
    /// Refused by `x-overflow: reject-publish(-dlx)`: the publisher gets a nack.
    Rejected,
    /// The queue was deleted meanwhile.
    Gone,
}

pub struct Queue {
    pub spec: QueueSpec,
    /// Effective arguments: the declared ones with the matching policy applied; swapped
    /// when policies change.
    pub args: arc_swap::ArcSwap<QueueArgs>,
    pub vhost_name: String,
    vhost: Weak<VHost>,
    inner: Mutex<QueueInner>,
    deleted: AtomicBool,
    /// Wakes the queue's timer task (earlier deadline, consumers gone, deletion).
    timer: Arc<Notify>,
    timer_started: AtomicBool,
    /// Message counters for the management API and metrics.
    pub stats: stats::QueueStats,
    /// Its type: classic or quorum (how its messages are kept, what a confirm waits for).
    kind: Box<dyn QueueKind>,
}

/// Is this declaration (or recovered definition) a quorum queue?
pub fn is_quorum(arguments: &FieldTable) -> bool {
    crate::broker::args::get(arguments, "x-queue-type")
        .and_then(crate::broker::args::str_value)
        .as_deref()
        == Some("quorum")
}

/// Dead-letter work collected under the lock, done after it.
pub(crate) type Dead = Vec<(QueuedMessage, DeathReason)>;

struct QueueInner {
    ready: ReadyList,
    next_seq: u64,
    /// Non-SAC queues: ordered by consumer priority, highest first (stable).
    /// SAC queues: registration order; the first is the active one.
    consumers: Vec<Arc<Consumer>>,
    /// Round-robin position among consumers.
    cursor: usize,
    /// Auto-delete applies only once the queue has had a consumer.
    had_consumer: bool,
    bindings: Vec<InboundBinding>,
    /// Last consume/cancel/get/redeclare, for x-expires.
    last_used: Instant,
    /// The wake-up time the timer task is sleeping towards.
    armed: Option<Instant>,
}

impl Queue {
    /// Body bytes of persistent messages a durable queue keeps in memory before paging
    /// further ones out to the store.
    pub const MEMORY_BUDGET: u64 = 8 * 1024 * 1024;
    /// The same for a quorum queue, smaller: its log is read back a whole round at a time
    /// (one read serves the messages after it too), and RabbitMQ's quorum queues keep no
    /// bodies in memory at all.
    pub const QUORUM_MEMORY_BUDGET: u64 = 2 * 1024 * 1024;

    pub fn new(spec: QueueSpec, vhost: &Arc<VHost>, store: Option<Arc<Store>>) -> Arc<Self> {
        let args = QueueArgs::from_table(&spec.arguments);
        let (kind, ready) = kind::for_queue(&spec, &args, store);
        let q = Arc::new(Queue {
            inner: Mutex::new(QueueInner {
                ready,
                next_seq: 0,
                consumers: Vec::new(),
                cursor: 0,
                had_consumer: false,
                bindings: Vec::new(),
                last_used: Instant::now(),
                armed: None,
            }),
            spec,
            args: arc_swap::ArcSwap::from_pointee(args),
            vhost_name: vhost.name.clone(),
            vhost: Arc::downgrade(vhost),
            deleted: AtomicBool::new(false),
            timer: Arc::new(Notify::new()),
            timer_started: AtomicBool::new(false),
            stats: stats::QueueStats::default(),
            kind,
        });
        q.kind.attach(&q);
        if q.args.load().expires.is_some() {
            q.ensure_timer();
        }
        q
    }

    pub fn name(&self) -> &str {
        &self.spec.name
    }

    pub fn is_deleted(&self) -> bool {
        self.deleted.load(Ordering::Acquire)
    }

    pub fn message_count(&self) -> u32 {
        self.inner.lock().ready.len() as u32
    }

    pub fn consumer_count(&self) -> u32 {
        self.inner.lock().consumers.len() as u32
    }

    /// (ready messages, consumers) for declare-ok.
    pub fn counts(&self) -> (u32, u32) {
        let inner = self.inner.lock();
        (inner.ready.len() as u32, inner.consumers.len() as u32)
    }

    /// Redeclare, basic.get: the queue is in use (x-expires).
    pub fn touch(&self) {
        self.inner.lock().last_used = Instant::now();
    }

    fn deadline_for(&self, msg: &Message, now: Instant) -> Option<Instant> {
        let per_message = msg.expiration_ms.map(Duration::from_millis);
        let ttl = match (self.args.load().message_ttl, per_message) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        ttl.map(|t| now + t)
    }

    fn over_limit(&self, ready: &ReadyList, extra_len: usize, extra_bytes: u64) -> bool {
        let args = self.args.load();
        args.max_length
            .is_some_and(|max| (ready.len() + extra_len) as u64 > max)
            || args
                .max_length_bytes
                .is_some_and(|max| ready.bytes() + extra_bytes > max)
    }

    /// Enqueue a routed message (as its type takes it) and deliver what can be delivered.
    pub fn publish(self: &Arc<Self>, msg: Arc<Message>) -> Enqueued {
        self.kind.publish(self, msg)
    }

    /// What the management API shows about its type.
    pub fn kind_info(&self) -> kind::KindInfo {
        self.kind.info()
    }

    /// Clean shutdown: what its type must write first.
    pub fn stop(&self) -> Option<kind::StopFuture> {
        self.kind.stop()
    }

    /// The Raft group its messages live in (quorum queues).
    pub fn raft_group(&self) -> Option<u64> {
        self.kind.raft_group()
    }

    /// A publish taken at once (a classic queue): `persist` keeps it (false: it could not,
    /// the publisher gets a nack).
    fn enqueue_now(
        self: &Arc<Self>,
        msg: Arc<Message>,
        persist: impl FnOnce(&mut QueuedMessage) -> bool,
    ) -> Enqueued {
        let now = Instant::now();
        let mut dead: Dead = Vec::new();
        let result = {
            let mut inner = self.inner.lock();
            if self.is_deleted() {
                return Enqueued::Gone;
            }
            let seq = inner.next_seq;
            inner.next_seq += 1;
            let mut qm = QueuedMessage {
                seq,
                deadline: self.deadline_for(&msg, now),
                msg,
                redelivered: false,
                delivery_count: 0,
                stored: None,
            };
            let len = qm.msg.body.len() as u64;
            if self.args.load().overflow != Overflow::DropHead
                && self.over_limit(&inner.ready, 1, len)
            {
                if self.args.load().overflow == Overflow::RejectPublishDlx {
                    dead.push((qm, DeathReason::Maxlen));
                }
                Enqueued::Rejected
            } else if !persist(&mut qm) {
                // Not stored: the publisher must not get a positive confirm.
                Enqueued::Rejected
            } else {
                self.enqueue_locked(&mut inner, qm, now, &mut dead);
                Enqueued::Accepted
            }
        };
        self.dead_letter(dead);
        result
    }

    /// A message is in the queue for good (stored, or committed by the group): make it
    /// ready, deliver, and apply max-length and TTL.
    fn enqueue_locked(
        self: &Arc<Self>,
        inner: &mut QueueInner,
        qm: QueuedMessage,
        now: Instant,
        dead: &mut Dead,
    ) {
        let deadline = qm.deadline;
        inner.ready.push(qm);
        self.dispatch_locked(inner, now, dead);
        while self.over_limit(&inner.ready, 0, 0) {
            match inner.ready.pop() {
                Some(head) => dead.push((head, DeathReason::Maxlen)),
                None => break,
            }
        }
        if let Some(d) = deadline {
            // TTL 0: delivered above if a consumer could take it, else expired now.
            let mut expired = Vec::new();
            inner.ready.take_expired(now, &mut expired);
            dead.extend(expired.into_iter().map(|m| (m, DeathReason::Expired)));
            self.arm(inner, d);
        }
        self.stats.published();
    }

    /// A quorum queue's publish: checked against its limits (counting what is proposed
    /// and not yet applied), then proposed to the group. It becomes ready when applied.
    fn propose(self: &Arc<Self>, group: &quorum::Quorum, msg: Arc<Message>) -> Enqueued {
        if self.is_deleted() {
            return Enqueued::Gone;
        }
        if self.kind.unavailable().is_some() {
            return Enqueued::Rejected;
        }
        let len = msg.body.len() as u64;
        let overflow = self.args.load().overflow;
        if overflow != Overflow::DropHead {
            // Proposed but not applied yet, and (as RabbitMQ counts them) dead-lettered at
            // least once but not yet taken by every target.
            let pending =
                group.in_flight.load(Ordering::Relaxed) as usize + group.dead_letter_pending();
            let pending_bytes =
                group.in_flight_bytes.load(Ordering::Relaxed) + group.dead_letter_bytes();
            let over = {
                let inner = self.inner.lock();
                self.over_limit(&inner.ready, 1 + pending, len + pending_bytes)
            };
            if over {
                return Enqueued::Rejected;
            }
        }
        let qm = QueuedMessage {
            seq: 0,
            deadline: self.deadline_for(&msg, Instant::now()),
            msg,
            redelivered: false,
            delivery_count: 0,
            stored: None,
        };
        group.enqueue(qm);
        Enqueued::Accepted
    }

    /// Messages the group committed: they join the queue.
    pub fn enqueue_committed(self: &Arc<Self>, msgs: Vec<QueuedMessage>) {
        let now = Instant::now();
        let mut dead = Vec::new();
        {
            let mut inner = self.inner.lock();
            if self.is_deleted() {
                return;
            }
            for qm in msgs {
                self.enqueue_locked(&mut inner, qm, now, &mut dead);
            }
        }
        self.dead_letter(dead);
    }

    /// The group installed a snapshot from its leader: the ready messages are those.
    pub fn replace_ready(self: &Arc<Self>, msgs: Vec<QueuedMessage>) {
        {
            let mut inner = self.inner.lock();
            inner.ready.clear();
            for qm in msgs {
                inner.ready.push(qm);
            }
        }
        self.dispatch();
    }

    /// What a publisher confirm for a message just published here must wait for: the
    /// group applying the latest ticket (quorum queues only).
    pub fn confirm_ticket(&self) -> Option<kind::ConfirmTicket> {
        self.kind.confirm_ticket()
    }

    /// Deliver ready messages to consumers that have room.
    pub fn dispatch(self: &Arc<Self>) {
        let mut dead = Vec::new();
        {
            let mut inner = self.inner.lock();
            self.dispatch_locked(&mut inner, Instant::now(), &mut dead);
        }
        self.dead_letter(dead);
    }

    /// Pick the consumer for the next message: the active one of a single-active-consumer
    /// queue; otherwise round-robin among the highest-priority consumers that have room.
    fn pick_consumer(self: &Arc<Self>, inner: &mut QueueInner) -> Option<usize> {
        let n = inner.consumers.len();
        if n == 0 {
            return None;
        }
        if self.args.load().single_active_consumer {
            return match inner.consumers[0].readiness() {
                Readiness::Ready => Some(0),
                Readiness::Congested => {
                    inner.consumers[0].channel.conn.out.wait_for_drain(self);
                    None
                }
                Readiness::NoCredit => None,
            };
        }
        let mut start = 0;
        while start < n {
            let priority = inner.consumers[start].priority;
            let end = start
                + inner.consumers[start..]
                    .iter()
                    .take_while(|c| c.priority == priority)
                    .count();
            let width = end - start;
            let from = if (start..end).contains(&inner.cursor) {
                inner.cursor - start
            } else {
                0
            };
            for k in 0..width {
                let idx = start + (from + k) % width;
                match inner.consumers[idx].readiness() {
                    Readiness::Ready => return Some(idx),
                    Readiness::Congested => {
                        inner.consumers[idx].channel.conn.out.wait_for_drain(self)
                    }
                    Readiness::NoCredit => {}
                }
            }
            start = end;
        }
        None
    }

    fn dispatch_locked(self: &Arc<Self>, inner: &mut QueueInner, now: Instant, dead: &mut Dead) {
        if inner.consumers.is_empty() {
            return;
        }
        while let Some(head_deadline) = inner.ready.head_deadline() {
            if head_deadline.is_some_and(|d| d < now) {
                if let Some(m) = inner.ready.pop() {
                    dead.push((m, DeathReason::Expired));
                }
                continue;
            }
            let Some(idx) = self.pick_consumer(inner) else {
                break;
            };
            let Some(qm) = inner.ready.pop() else { break };
            inner.cursor = idx + 1;
            let consumer = inner.consumers[idx].clone();
            consumer.deliver(self, qm);
        }
    }

    /// basic.get: hand the head message to `channel`. False when the queue is empty.
    pub fn get(self: &Arc<Self>, channel: &ChannelShared, no_ack: bool) -> bool {
        let now = Instant::now();
        let mut dead = Vec::new();
        let got = {
            let mut inner = self.inner.lock();
            inner.last_used = now;
            loop {
                let Some(qm) = inner.ready.pop() else {
                    break false;
                };
                if qm.deadline.is_some_and(|d| d < now) {
                    dead.push((qm, DeathReason::Expired));
                    continue;
                }
                let remaining = inner.ready.len() as u32;
                channel.deliver_get(self, qm, no_ack, remaining);
                break true;
            }
        };
        self.dead_letter(dead);
        got
    }

    /// Messages returned by a consumer (nack/reject with requeue, channel closed, recover):
    /// marked redelivered and put where the queue type puts them (a classic queue: their
    /// original place); past x-delivery-limit they are dead-lettered instead.
    pub fn requeue(self: &Arc<Self>, msgs: impl IntoIterator<Item = QueuedMessage>) {
        let now = Instant::now();
        let mut dead = Vec::new();
        {
            let mut inner = self.inner.lock();
            if self.is_deleted() {
                return;
            }
            let mut earliest: Option<Instant> = None;
            let delivery_limit = self.args.load().delivery_limit;
            let to = self.kind.return_to(delivery_limit);
            for mut qm in msgs {
                self.kind.returned(&qm);
                qm.redelivered = true;
                qm.delivery_count = qm.delivery_count.saturating_add(1);
                if delivery_limit.is_some_and(|limit| qm.delivery_count as u64 > limit) {
                    dead.push((qm, DeathReason::DeliveryLimit));
                    continue;
                }
                // Queues that place returns themselves (quorum) count them in the header
                // with or without a limit, as RabbitMQ's quorum queues do.
                if delivery_limit.is_some() || to != Return::InPlace {
                    qm.msg = super::dead_letter::with_delivery_count(&qm.msg, qm.delivery_count);
                }
                if let Some(d) = qm.deadline {
                    earliest = Some(earliest.map_or(d, |e| e.min(d)));
                }
                inner.ready.give_back(qm, to);
            }
            self.dispatch_locked(&mut inner, now, &mut dead);
            if let Some(d) = earliest {
                self.arm(&mut inner, d);
            }
        }
        self.dead_letter(dead);
    }

    /// Messages rejected without requeue: dead-lettered (reason `rejected`) or dropped.
    pub fn reject(&self, msgs: Vec<QueuedMessage>) {
        self.dead_letter(
            msgs.into_iter()
                .map(|m| (m, DeathReason::Rejected))
                .collect(),
        );
    }

    /// A quorum queue whose log was found damaged refuses work (every other queue serves).
    pub fn check_available(&self) -> AmqpResult<()> {
        match self.kind.unavailable() {
            Some(why) => Err(AmqpError::not_found(format!(
                "queue '{}' in vhost '{}' is down or inaccessible: {why}",
                self.name(),
                self.vhost_name
            ))),
            None => Ok(()),
        }
    }

    /// Register a consumer (checking exclusivity) and start delivering to it.
    /// `on_added` runs under the queue lock before the first delivery (it sends consume-ok,
    /// which must precede any basic.deliver).
    pub fn add_consumer(
        self: &Arc<Self>,
        consumer: Arc<Consumer>,
        on_added: impl FnOnce(),
    ) -> AmqpResult<()> {
        self.check_available()?;
        let mut dead = Vec::new();
        {
            let mut inner = self.inner.lock();
            if self.is_deleted() {
                return Err(AmqpError::not_found(format!(
                    "no queue '{}' in vhost '{}'",
                    self.name(),
                    self.vhost_name
                )));
            }
            if consumer.exclusive && self.args.load().single_active_consumer {
                return Err(AmqpError::access_refused(format!(
                    "cannot consume exclusively from single active consumer queue '{}' in vhost '{}'",
                    self.name(),
                    self.vhost_name
                )));
            }
            if inner.consumers.iter().any(|c| c.exclusive)
                || (consumer.exclusive && !inner.consumers.is_empty())
            {
                return Err(AmqpError::access_refused(format!(
                    "queue '{}' in vhost '{}' in exclusive use",
                    self.name(),
                    self.vhost_name
                )));
            }
            on_added();
            let pos = if self.args.load().single_active_consumer {
                inner.consumers.len()
            } else {
                inner
                    .consumers
                    .partition_point(|c| c.priority >= consumer.priority)
            };
            inner.consumers.insert(pos, consumer);
            inner.had_consumer = true;
            inner.last_used = Instant::now();
            self.dispatch_locked(&mut inner, Instant::now(), &mut dead);
        }
        self.dead_letter(dead);
        Ok(())
    }

    /// Remove a consumer; true if the queue should now be auto-deleted.
    pub fn remove_consumer(self: &Arc<Self>, consumer: &Arc<Consumer>) -> bool {
        consumer.active.store(false, Ordering::Release);
        let (auto_delete, was_active) = {
            let mut inner = self.inner.lock();
            let was_active = inner
                .consumers
                .first()
                .is_some_and(|c| Arc::ptr_eq(c, consumer));
            inner.consumers.retain(|c| !Arc::ptr_eq(c, consumer));
            if inner.cursor >= inner.consumers.len() {
                inner.cursor = 0;
            }
            if inner.consumers.is_empty() {
                inner.last_used = Instant::now();
                if self.args.load().expires.is_some() {
                    self.timer.notify_one();
                }
            }
            (
                self.spec.auto_delete
                    && inner.had_consumer
                    && inner.consumers.is_empty()
                    && !self.is_deleted(),
                was_active,
            )
        };
        // A single-active-consumer queue hands over to the next consumer.
        if was_active && self.args.load().single_active_consumer {
            self.dispatch();
        }
        auto_delete
    }

    /// Drop all ready messages; returns how many.
    pub fn purge(&self) -> u32 {
        self.kind.purge(&mut self.inner.lock().ready) as u32
    }

    /// Does a message published here need a flush before its confirm?
    pub fn persists(&self, msg: &Message) -> bool {
        self.kind.persists(msg)
    }

    /// A message left the queue for good (acked, dead-lettered, dropped): remove its record.
    pub fn forget(&self, qm: &QueuedMessage) {
        self.kind.settled(qm);
    }

    /// A message goes out unacked: remember it, so that after a restart it comes back
    /// flagged redelivered (and only then) with its delivery count.
    pub fn mark_delivered(&self, qm: &QueuedMessage) {
        self.kind.delivered(qm);
    }

    /// Put back a message recovered from the store at start-up.
    pub fn restore(self: &Arc<Self>, qm: QueuedMessage) {
        let mut inner = self.inner.lock();
        inner.next_seq = inner.next_seq.max(qm.seq + 1);
        let deadline = qm.deadline;
        inner.ready.push(qm);
        if let Some(d) = deadline {
            self.arm(&mut inner, d);
        }
    }

    pub fn has_consumers(&self) -> bool {
        !self.inner.lock().consumers.is_empty()
    }

    pub fn add_binding(&self, b: InboundBinding) {
        let mut inner = self.inner.lock();
        if !inner.bindings.contains(&b) {
            inner.bindings.push(b);
        }
    }

    pub fn remove_binding(&self, b: &InboundBinding) {
        self.inner.lock().bindings.retain(|x| x != b);
    }

    /// Mark deleted and take what must be cleaned up: its bindings, its consumers (to be
    /// cancelled) and the number of ready messages it had.
    pub fn mark_deleted(&self) -> (Vec<InboundBinding>, Vec<Arc<Consumer>>, u32) {
        let mut inner = self.inner.lock();
        self.deleted.store(true, Ordering::Release);
        let n = self.kind.delete(&mut inner.ready) as u32;
        let consumers = std::mem::take(&mut inner.consumers);
        for c in &consumers {
            c.active.store(false, Ordering::Release);
        }
        self.timer.notify_one();
        (std::mem::take(&mut inner.bindings), consumers, n)
    }

    fn dead_letter(&self, dead: Dead) {
        if dead.is_empty() {
            return;
        }
        let Some(dead) = self.kind.dead_letter_later(self, dead) else {
            return;
        };
        for (qm, _) in &dead {
            self.forget(qm);
        }
        if let Some(vhost) = self.vhost.upgrade() {
            super::dead_letter::dead_letter(&vhost, self, dead);
        }
    }
}
