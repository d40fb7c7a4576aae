//! Per-queue message counters for the management API and metrics: plain atomics bumped
//! where a message is published, delivered, fetched, redelivered or acked, read by the
//! sampler that turns them into rates. No lock is taken for them.

use super::super::delivery::Unacked;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

#[derive(Debug, Default)]
pub struct QueueStats {
    /// Messages enqueued.
    pub publish: AtomicU64,
    /// Deliveries to consumers (with or without ack).
    pub deliver: AtomicU64,
    /// basic.get deliveries.
    pub get: AtomicU64,
    /// Deliveries with the redelivered flag set.
    pub redeliver: AtomicU64,
    /// Acknowledged deliveries.
    pub ack: AtomicU64,
    /// Deliveries waiting for an ack.
    pub unacked: AtomicI64,
}

/// A copy of the counters at one moment.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct Counts {
    pub publish: u64,
    pub deliver: u64,
    pub get: u64,
    pub redeliver: u64,
    pub ack: u64,
}

impl Counts {
    pub fn add(&mut self, o: &Counts) {
        self.publish += o.publish;
        self.deliver += o.deliver;
        self.get += o.get;
        self.redeliver += o.redeliver;
        self.ack += o.ack;
    }
}

impl QueueStats {
    pub fn published(&self) {
        self.publish.fetch_add(1, Ordering::Relaxed);
    }

    /// A delivery to a consumer; `acked` when the consumer must ack it.
    pub fn delivered(&self, redelivered: bool, acked: bool) {
        self.deliver.fetch_add(1, Ordering::Relaxed);
        self.count_delivery(redelivered, acked);
    }

    /// A basic.get delivery.
    pub fn got(&self, redelivered: bool, acked: bool) {
        self.get.fetch_add(1, Ordering::Relaxed);
        self.count_delivery(redelivered, acked);
    }

    fn count_delivery(&self, redelivered: bool, acked: bool) {
        if redelivered {
            self.redeliver.fetch_add(1, Ordering::Relaxed);
        }
        if acked {
            self.unacked.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// An unacked delivery left the channel (acked, rejected or requeued).
    pub fn settled(&self) {
        self.unacked.fetch_sub(1, Ordering::Relaxed);
    }

    /// A settled delivery went back to unacked (transaction rolled back).
    pub fn restored(&self) {
        self.unacked.fetch_add(1, Ordering::Relaxed);
    }

    pub fn unacked(&self) -> u64 {
        self.unacked.load(Ordering::Relaxed).max(0) as u64
    }

    pub fn counts(&self) -> Counts {
        Counts {
            publish: self.publish.load(Ordering::Relaxed),
            deliver: self.deliver.load(Ordering::Relaxed),
            get: self.get.load(Ordering::Relaxed),
            redeliver: self.redeliver.load(Ordering::Relaxed),
            ack: self.ack.load(Ordering::Relaxed),
        }
    }
}

/// basic.ack: count each acked delivery against its queue.
pub fn count_acks(taken: &[Unacked]) {
    for u in taken {
        u.queue.stats.ack.fetch_add(1, Ordering::Relaxed);
    }
}
