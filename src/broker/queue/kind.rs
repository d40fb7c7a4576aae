//! The queue-type seam: what differs between queue types, behind one trait, as RabbitMQ's
//! `rabbit_queue_type` behaviour separates classic, quorum and stream queues.
//!
//! A `Queue` is the engine every type shares: ready list, consumers and their priorities,
//! delivery, TTL, length limits, dead-lettering. Its type (`QueueKind`) decides what a
//! publish takes to be safe and how the queue's messages outlive the process: a classic
//! queue writes persistent messages to the message store and confirms after its flush; a
//! quorum queue proposes them to its Raft group and confirms once the group applied them.
//! Channels, routing, the HTTP API and the broker only call `Queue`, never a type.

use super::args::QueueArgs;
use super::quorum::Quorum;
use super::ready::{PageSource, Pager, ReadyList, Return};
use super::{Dead, Enqueued, Queue, QueueSpec};
use crate::broker::message::{Message, QueuedMessage};
use crate::store::Store;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

/// A publish confirm's wait besides the store's flush: the ticket a counter must reach.
pub type ConfirmTicket = (Arc<AtomicU64>, u64);

/// What the management API shows about a queue's type.
#[derive(Debug, Default)]
pub struct KindInfo {
    /// `"classic"` or `"quorum"` (the API's `type`).
    pub type_name: &'static str,
    /// Refusing work (its log was found damaged): the API's state `down`.
    pub down: bool,
    /// Replicated types: whether a leader is elected, the group's log length since its
    /// last snapshot, and the messages waiting for their dead-letter targets (count, bytes).
    pub replicated: Option<Replicated>,
}

#[derive(Debug, Default)]
pub struct Replicated {
    pub has_leader: bool,
    pub log_entries: usize,
    pub dead_letter_pending: (usize, u64),
}

pub type StopFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

/// The type a queue's declaration asks for, with the ready list it pages into.
pub fn for_queue(
    spec: &QueueSpec,
    args: &QueueArgs,
    store: Option<Arc<Store>>,
) -> (Box<dyn QueueKind>, ReadyList) {
    let store = store.filter(|_| spec.store_id.is_some());
    let quorum = match (&store, spec.store_id) {
        (Some(s), Some(id)) if super::is_quorum(&spec.arguments) => s
            .quorum()
            .map(|node| Quorum::open(id, node.clone(), Some(s))),
        _ => None,
    };
    match quorum {
        Some(q) => {
            let ready = ReadyList::two_levels(Some(Pager {
                source: PageSource::Quorum(q.clone()),
                memory_budget: Queue::QUORUM_MEMORY_BUDGET,
            }));
            (Box::new(QuorumKind(q)), ready)
        }
        None => {
            // Messages in the store: durable, non-exclusive classic queues.
            let classic = Classic {
                stored: store.zip(spec.store_id),
            };
            let pager = classic.page_source().map(|source| Pager {
                source,
                memory_budget: Queue::MEMORY_BUDGET,
            });
            (Box::new(classic), ReadyList::new(args.max_priority, pager))
        }
    }
}

pub trait QueueKind: Send + Sync {
    fn info(&self) -> KindInfo;

    /// The queue is built: recover what this type keeps (a classic queue's messages come
    /// from the store's recovery instead) and start.
    fn attach(&self, _queue: &Arc<Queue>) {}

    /// A routed message: taken now (or once replicated) or refused.
    fn publish(&self, queue: &Arc<Queue>, msg: Arc<Message>) -> Enqueued;

    /// Does a publisher confirm for `msg` wait for the message store's flush?
    fn persists(&self, msg: &Message) -> bool;

    /// What else a publisher confirm for the latest publish here must wait for.
    fn confirm_ticket(&self) -> Option<ConfirmTicket> {
        None
    }

    /// Handed to a consumer unacknowledged (redelivered if it comes back after a restart).
    fn delivered(&self, qm: &QueuedMessage);

    /// Returned to the queue by its consumer (its delivery count goes up).
    fn returned(&self, _qm: &QueuedMessage) {}

    /// Where a returned message goes, given the queue's delivery limit.
    fn return_to(&self, _delivery_limit: Option<u64>) -> Return {
        Return::InPlace
    }

    /// Left the queue for good (acked, dead-lettered, expired, dropped).
    fn settled(&self, qm: &QueuedMessage);

    /// Remove every ready message (purge); returns how many there were.
    fn purge(&self, ready: &mut ReadyList) -> usize;

    /// The queue is deleted: drop its messages and whatever keeps them.
    fn delete(&self, ready: &mut ReadyList) -> usize;

    /// Dead-lettering that outlives a crash (quorum at-least-once) takes the messages and
    /// returns None; otherwise they come back to be dead-lettered at most once now.
    fn dead_letter_later(&self, _queue: &Queue, dead: Dead) -> Option<Dead> {
        Some(dead)
    }

    /// Why the queue refuses work, if it does (a damaged Raft log).
    fn unavailable(&self) -> Option<&str> {
        None
    }

    /// Clean broker shutdown: what must be written first (None: nothing to wait for).
    fn stop(&self) -> Option<StopFuture> {
        None
    }

    /// The Raft group this queue's messages live in (replicated types).
    fn raft_group(&self) -> Option<u64> {
        None
    }
}

/// The classic queue: messages in memory, persistent ones of a durable queue in the
/// message store as well (paged out beyond the queue's memory budget).
pub struct Classic {
    /// The store and the queue's id in it (durable, non-exclusive queues).
    pub stored: Option<(Arc<Store>, u64)>,
}

impl Classic {
    /// Where its ready list pages persistent messages out to.
    pub fn page_source(&self) -> Option<PageSource> {
        self.stored.as_ref().map(|(store, id)| PageSource::Store {
            store: store.clone(),
            queue_id: *id,
        })
    }

    fn forget_all(&self, stored: Vec<crate::store::segments::Loc>) {
        if let Some((store, _)) = &self.stored {
            for loc in stored {
                store.remove_message(loc);
            }
        }
    }
}

impl QueueKind for Classic {
    fn info(&self) -> KindInfo {
        KindInfo {
            type_name: "classic",
            down: false,
            replicated: None,
        }
    }

    fn publish(&self, queue: &Arc<Queue>, msg: Arc<Message>) -> Enqueued {
        queue.enqueue_now(msg, |qm| match &self.stored {
            Some((store, id)) if qm.msg.is_persistent() => {
                qm.stored = store.put_message(*id, qm);
                qm.stored.is_some()
            }
            _ => true,
        })
    }

    fn persists(&self, msg: &Message) -> bool {
        self.stored.is_some() && msg.is_persistent()
    }

    fn delivered(&self, qm: &QueuedMessage) {
        if let (Some((store, _)), Some(loc)) = (&self.stored, qm.stored) {
            store.mark_delivered(loc);
        }
    }

    fn settled(&self, qm: &QueuedMessage) {
        if let (Some((store, _)), Some(loc)) = (&self.stored, qm.stored) {
            store.remove_message(loc);
        }
    }

    fn purge(&self, ready: &mut ReadyList) -> usize {
        let (n, stored) = ready.clear();
        self.forget_all(stored);
        n
    }

    fn delete(&self, ready: &mut ReadyList) -> usize {
        self.purge(ready)
    }
}

/// The quorum queue: its messages are its Raft group's state (`quorum::Quorum`).
pub struct QuorumKind(pub Arc<Quorum>);

impl QueueKind for QuorumKind {
    fn info(&self) -> KindInfo {
        KindInfo {
            type_name: "quorum",
            down: self.0.damaged.is_some(),
            replicated: Some(Replicated {
                has_leader: self.0.leader().is_some(),
                log_entries: self.0.log_entries(),
                dead_letter_pending: (self.0.dead_letter_pending(), self.0.dead_letter_bytes()),
            }),
        }
    }

    /// Its messages from the group's state, then the group starts.
    fn attach(&self, queue: &Arc<Queue>) {
        self.0.recover(|qm| queue.restore(qm));
        self.0
            .start(queue, &format!("{}/{}", queue.vhost_name, queue.spec.name));
    }

    fn publish(&self, queue: &Arc<Queue>, msg: Arc<Message>) -> Enqueued {
        queue.propose(&self.0, msg)
    }

    /// Durable through the group's log, not the message store.
    fn persists(&self, _msg: &Message) -> bool {
        false
    }

    fn confirm_ticket(&self) -> Option<ConfirmTicket> {
        Some((self.0.committed.clone(), self.0.last_ticket()))
    }

    fn delivered(&self, qm: &QueuedMessage) {
        self.0.delivered(qm.seq);
    }

    fn returned(&self, qm: &QueuedMessage) {
        self.0.returned(qm.seq);
    }

    /// RabbitMQ's quorum queue: ahead of the queue while a delivery limit counts returns,
    /// behind it (re-enqueued) when there is none.
    fn return_to(&self, delivery_limit: Option<u64>) -> Return {
        match delivery_limit {
            Some(_) => Return::Head,
            None => Return::Back,
        }
    }

    fn settled(&self, qm: &QueuedMessage) {
        self.0.settle(qm.seq);
    }

    fn purge(&self, ready: &mut ReadyList) -> usize {
        let seqs = ready.clear_seqs();
        let n = seqs.len();
        self.0.settle_all(seqs);
        n
    }

    /// The group and its log go; nothing is settled one by one.
    fn delete(&self, ready: &mut ReadyList) -> usize {
        let (n, _) = ready.clear();
        self.0.delete();
        n
    }

    fn dead_letter_later(&self, queue: &Queue, dead: Dead) -> Option<Dead> {
        if queue.args.load().at_least_once {
            self.0.dead_letter_later(dead);
            return None;
        }
        Some(dead)
    }

    fn unavailable(&self) -> Option<&str> {
        self.0.damaged.as_deref()
    }

    fn stop(&self) -> Option<StopFuture> {
        let q = self.0.clone();
        Some(Box::pin(async move { q.shutdown().await }))
    }

    fn raft_group(&self) -> Option<u64> {
        Some(self.0.group)
    }
}
