//! What the management API reads and does on a queue from outside AMQP: its consumers,
//! byte counts, fetching messages for display (`POST …/get`) and swapping its effective
//! arguments when policies change.

use super::args::{Overflow, QueueArgs};
use super::Queue;
use crate::broker::dead_letter::DeathReason;
use crate::broker::delivery::Consumer;
use crate::broker::message::QueuedMessage;
use crate::protocol::FieldTable;
use std::sync::Arc;

/// What to do with messages fetched through the management API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GetMode {
    /// Put them back (redelivered), as `ack_requeue_false`'s opposite `*_requeue_true`.
    Requeue,
    /// Remove them (`ack_requeue_false`).
    Ack,
    /// Remove them, dead-lettering (`reject_requeue_false`).
    Reject,
}

impl Queue {
    /// The queue's consumers, highest priority first.
    pub fn consumers(&self) -> Vec<Arc<Consumer>> {
        self.inner.lock().consumers.clone()
    }

    /// The bindings that lead to this queue (not the implicit default-exchange one).
    pub fn bindings(&self) -> Vec<super::InboundBinding> {
        self.inner.lock().bindings.clone()
    }

    /// (ready messages, their body bytes, consumers) under one lock.
    /// Ready (messages, body bytes) held in memory rather than paged out.
    pub fn ready_in_memory(&self) -> (usize, u64) {
        self.inner.lock().ready.in_memory()
    }

    pub fn depth(&self) -> (u64, u64, u32) {
        let inner = self.inner.lock();
        (
            inner.ready.len() as u64,
            inner.ready.bytes(),
            inner.consumers.len() as u32,
        )
    }

    /// Take up to `count` messages from the head for display, then requeue, ack or reject
    /// them. Each message comes back with the number of ready messages left behind it.
    pub fn fetch(self: &Arc<Self>, count: usize, mode: GetMode) -> Vec<(QueuedMessage, u64)> {
        let mut taken = Vec::new();
        {
            let mut inner = self.inner.lock();
            let now = tokio::time::Instant::now();
            while taken.len() < count {
                let Some(qm) = inner.ready.pop() else { break };
                if qm.deadline.is_some_and(|d| d < now) {
                    // Expired: leave it to the timer's dead-lettering.
                    inner.ready.requeue(qm);
                    break;
                }
                let left = inner.ready.len() as u64;
                taken.push((qm, left));
            }
        }
        for (qm, _) in &taken {
            self.stats.got(qm.redelivered, false);
        }
        let msgs: Vec<QueuedMessage> = taken.iter().map(|(m, _)| m.clone()).collect();
        match mode {
            GetMode::Requeue => self.requeue(msgs),
            GetMode::Reject => self.reject(msgs),
            GetMode::Ack => {
                for m in &msgs {
                    self.forget(m);
                }
            }
        }
        taken
    }

    /// Apply new effective arguments (declared arguments with the matching policy).
    pub fn set_effective_arguments(self: &Arc<Self>, effective: &FieldTable) {
        let mut args = QueueArgs::from_table(effective);
        // The number of priority levels is fixed when the queue is made.
        args.max_priority = self.args.load().max_priority;
        let expires = args.expires.is_some();
        let drop_head = args.overflow == Overflow::DropHead;
        self.args.store(Arc::new(args));
        if expires {
            self.ensure_timer();
        }
        // A lower limit applies at once: drop-head queues shed (or dead-letter) their oldest.
        let mut dead = Vec::new();
        if drop_head {
            let mut inner = self.inner.lock();
            while self.over_limit(&inner.ready, 0, 0) {
                match inner.ready.pop() {
                    Some(head) => dead.push((head, DeathReason::Maxlen)),
                    None => break,
                }
            }
        }
        self.dead_letter(dead);
        self.dispatch();
    }
}
