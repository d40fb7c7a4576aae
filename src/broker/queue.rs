//! A queue: the one owner of its ready messages, its consumers and its delivery order.
//!
//! Publishing tasks enqueue and dispatch directly under the queue's lock (no extra task hop
//! per message); dispatch writes deliveries straight into consumers' outbound buffers.

use super::delivery::{ChannelShared, Consumer, Readiness};
use super::message::{Message, QueuedMessage};
use crate::error::{AmqpError, AmqpResult};
use crate::protocol::FieldTable;
use parking_lot::Mutex;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// What a queue's declaration says about it.
#[derive(Debug, Clone)]
pub struct QueueSpec {
    pub name: String,
    pub durable: bool,
    /// Owning connection of an exclusive queue.
    pub exclusive_owner: Option<u64>,
    pub auto_delete: bool,
    pub arguments: FieldTable,
}

pub struct Queue {
    pub spec: QueueSpec,
    pub vhost: String,
    inner: Mutex<QueueInner>,
    deleted: AtomicBool,
}

/// A binding that points at this queue, kept so deleting the queue removes it everywhere.
#[derive(Debug, Clone, PartialEq)]
pub struct InboundBinding {
    pub exchange: String,
    pub routing_key: String,
    pub arguments: FieldTable,
}

struct QueueInner {
    ready: VecDeque<QueuedMessage>,
    ready_bytes: u64,
    next_seq: u64,
    consumers: Vec<Arc<Consumer>>,
    /// Round-robin position among consumers.
    cursor: usize,
    /// Auto-delete applies only once the queue has had a consumer.
    had_consumer: bool,
    bindings: Vec<InboundBinding>,
}

impl Queue {
    pub fn new(spec: QueueSpec, vhost: String) -> Arc<Self> {
        Arc::new(Queue {
            spec,
            vhost,
            inner: Mutex::new(QueueInner {
                ready: VecDeque::new(),
                ready_bytes: 0,
                next_seq: 0,
                consumers: Vec::new(),
                cursor: 0,
                had_consumer: false,
                bindings: Vec::new(),
            }),
            deleted: AtomicBool::new(false),
        })
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

    /// Enqueue a routed message and deliver what can be delivered. False if the queue is gone.
    pub fn publish(self: &Arc<Self>, msg: Arc<Message>) -> bool {
        let mut inner = self.inner.lock();
        if self.is_deleted() {
            return false;
        }
        let seq = inner.next_seq;
        inner.next_seq += 1;
        inner.ready_bytes += msg.body.len() as u64;
        inner.ready.push_back(QueuedMessage {
            seq,
            msg,
            redelivered: false,
        });
        self.dispatch_locked(&mut inner);
        true
    }

    /// Deliver ready messages to consumers that have room.
    pub fn dispatch(self: &Arc<Self>) {
        let mut inner = self.inner.lock();
        self.dispatch_locked(&mut inner);
    }

    fn dispatch_locked(self: &Arc<Self>, inner: &mut QueueInner) {
        let n = inner.consumers.len();
        if n == 0 {
            return;
        }
        while !inner.ready.is_empty() {
            let mut chosen = None;
            for i in 0..n {
                let idx = (inner.cursor + i) % n;
                match inner.consumers[idx].readiness() {
                    Readiness::Ready => {
                        chosen = Some(idx);
                        break;
                    }
                    Readiness::Congested => {
                        inner.consumers[idx].channel.conn.out.wait_for_drain(self);
                    }
                    Readiness::NoCredit => {}
                }
            }
            let Some(idx) = chosen else { break };
            inner.cursor = (idx + 1) % n;
            let Some(qm) = inner.ready.pop_front() else {
                break;
            };
            inner.ready_bytes -= qm.msg.body.len() as u64;
            let consumer = inner.consumers[idx].clone();
            consumer.deliver(self, qm);
        }
    }

    /// basic.get: hand the head message to `channel`. False when the queue is empty.
    pub fn get(self: &Arc<Self>, channel: &ChannelShared, no_ack: bool) -> bool {
        let mut inner = self.inner.lock();
        let Some(qm) = inner.ready.pop_front() else {
            return false;
        };
        inner.ready_bytes -= qm.msg.body.len() as u64;
        let remaining = inner.ready.len() as u32;
        channel.deliver_get(self, qm, no_ack, remaining);
        true
    }

    /// Put messages back at their original place (by publish order), marked redelivered.
    pub fn requeue(self: &Arc<Self>, msgs: impl IntoIterator<Item = QueuedMessage>) {
        let mut inner = self.inner.lock();
        if self.is_deleted() {
            return;
        }
        for mut qm in msgs {
            qm.redelivered = true;
            inner.ready_bytes += qm.msg.body.len() as u64;
            let pos = inner.ready.partition_point(|m| m.seq < qm.seq);
            inner.ready.insert(pos, qm);
        }
        self.dispatch_locked(&mut inner);
    }

    /// Register a consumer (checking exclusivity) and start delivering to it.
    /// `on_added` runs under the queue lock before the first delivery (it sends consume-ok,
    /// which must precede any basic.deliver).
    pub fn add_consumer(
        self: &Arc<Self>,
        consumer: Arc<Consumer>,
        on_added: impl FnOnce(),
    ) -> AmqpResult<()> {
        let mut inner = self.inner.lock();
        if self.is_deleted() {
            return Err(AmqpError::not_found(format!(
                "no queue '{}' in vhost '{}'",
                self.name(),
                self.vhost
            )));
        }
        if inner.consumers.iter().any(|c| c.exclusive)
            || (consumer.exclusive && !inner.consumers.is_empty())
        {
            return Err(AmqpError::access_refused(format!(
                "queue '{}' in vhost '{}' in exclusive use",
                self.name(),
                self.vhost
            )));
        }
        on_added();
        inner.consumers.push(consumer);
        inner.had_consumer = true;
        self.dispatch_locked(&mut inner);
        Ok(())
    }

    /// Remove a consumer; true if the queue should now be auto-deleted.
    pub fn remove_consumer(&self, consumer: &Arc<Consumer>) -> bool {
        consumer.active.store(false, Ordering::Release);
        let mut inner = self.inner.lock();
        inner.consumers.retain(|c| !Arc::ptr_eq(c, consumer));
        if inner.cursor >= inner.consumers.len() {
            inner.cursor = 0;
        }
        self.spec.auto_delete
            && inner.had_consumer
            && inner.consumers.is_empty()
            && !self.is_deleted()
    }

    /// Drop all ready messages; returns how many.
    pub fn purge(&self) -> u32 {
        let mut inner = self.inner.lock();
        let n = inner.ready.len() as u32;
        inner.ready.clear();
        inner.ready_bytes = 0;
        n
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
        let n = inner.ready.len() as u32;
        inner.ready.clear();
        inner.ready_bytes = 0;
        let consumers = std::mem::take(&mut inner.consumers);
        for c in &consumers {
            c.active.store(false, Ordering::Release);
        }
        (std::mem::take(&mut inner.bindings), consumers, n)
    }
}
