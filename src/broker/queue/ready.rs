//! The ready messages of a queue: one FIFO per priority level, kept in publish order so a
//! requeued message goes back to its place, plus an index of expiry deadlines.
//!
//! A quorum queue orders them as RabbitMQ 4's does: two levels (priority above 4 is high)
//! served two high to one normal while older normal messages wait, and returned messages
//! either ahead of everything in the order they came back (with a delivery limit) or behind
//! everything (without one); see `Return`.
//!
//! Dequeue looks at the priority levels (at most 256), never at the messages, so its cost
//! does not grow with queue length. A message that expires while not at the head is taken
//! out through the deadline index and left as a tombstone in its FIFO, skipped at dequeue.
//!
//! Persistent messages of a durable queue beyond the queue's memory budget are kept as a
//! few-byte reference and read back from the store when their turn comes (disk-first), so
//! memory does not grow with the backlog. A quorum queue's messages are paged the same way,
//! read back from its group's log.
//!
//! Only messages with a per-message `expiration` go into the deadline index. Deadlines that
//! come from the queue's x-message-ttl alone grow with publish order, so within a level they
//! are already sorted and the level's head is the next to expire: no index cost for them.

use super::quorum::Quorum;
use crate::broker::message::QueuedMessage;
use crate::store::segments::Loc;
use crate::store::Store;
use std::collections::{BTreeSet, HashSet, VecDeque};
use std::sync::Arc;
use tokio::time::Instant;

/// A ready message whose content is only in the store (or the quorum queue's log).
/// 32 bytes: a deep queue costs this per paged-out message (plus the FIFO's slack).
#[derive(Debug, Clone)]
struct DiskRef {
    seq: u64,
    /// Its record in the message store; `BY_ID` for a quorum queue's message, which its
    /// group finds by id.
    loc: Loc,
    /// Nanoseconds after `epoch()` + 1; 0: no deadline.
    deadline: u64,
    /// Body length (records are below 2^30 bytes), then the two flags below.
    len_flags: u32,
    delivery_count: u32,
}

const INDEXED: u32 = 1 << 31;
const REDELIVERED: u32 = 1 << 30;
const LEN_MASK: u32 = REDELIVERED - 1;

/// The place a quorum queue's paged-out message has (none in the store).
const BY_ID: Loc = Loc {
    seg: std::num::NonZeroU32::MAX,
    off: u32::MAX,
};

/// What paged-out deadlines count from.
fn epoch() -> Instant {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn pack_deadline(d: Option<Instant>) -> u64 {
    d.map_or(0, |d| {
        let ns = d.saturating_duration_since(epoch()).as_nanos();
        (ns.min(u64::MAX as u128 - 1) as u64) + 1
    })
}

fn unpack_deadline(d: u64) -> Option<Instant> {
    (d != 0).then(|| epoch() + std::time::Duration::from_nanos(d - 1))
}

impl DiskRef {
    fn deadline(&self) -> Option<Instant> {
        unpack_deadline(self.deadline)
    }

    fn len(&self) -> u32 {
        self.len_flags & LEN_MASK
    }
}

/// One entry of a priority level's FIFO: 32 bytes (the message itself is boxed, as only a
/// memory budget's worth are held).
#[derive(Debug, Clone)]
enum Slot {
    Mem(Box<QueuedMessage>),
    Disk(DiskRef),
}

impl Slot {
    fn seq(&self) -> u64 {
        match self {
            Slot::Mem(m) => m.seq,
            Slot::Disk(d) => d.seq,
        }
    }

    fn deadline(&self) -> Option<Instant> {
        match self {
            Slot::Mem(m) => m.deadline,
            Slot::Disk(d) => d.deadline(),
        }
    }

    fn len(&self) -> u64 {
        match self {
            Slot::Mem(m) => m.msg.body.len() as u64,
            Slot::Disk(d) => d.len() as u64,
        }
    }

    fn indexed(&self) -> Option<Instant> {
        match self {
            Slot::Mem(m) => m.deadline.filter(|_| m.msg.expiration_ms.is_some()),
            Slot::Disk(d) => d.deadline().filter(|_| d.len_flags & INDEXED != 0),
        }
    }
}

/// Where paged-out messages are read back from.
pub enum PageSource {
    /// A classic durable queue's persistent messages: the message store.
    Store { store: Arc<Store>, queue_id: u64 },
    /// A quorum queue's messages: its group's log.
    Quorum(Arc<Quorum>),
}

pub struct Pager {
    pub source: PageSource,
    /// Body bytes kept in memory before further messages are paged out.
    pub memory_budget: u64,
}

impl Pager {
    /// Where the message can be read back from, if it can.
    fn place(&self, qm: &QueuedMessage) -> Option<Loc> {
        match &self.source {
            PageSource::Store { .. } => qm.stored,
            PageSource::Quorum(q) => q.can_page(qm.seq).then_some(BY_ID),
        }
    }

    fn read(&self, d: &DiskRef) -> Option<QueuedMessage> {
        let found = match &self.source {
            PageSource::Store { store, .. } => store.get_message(d.loc, d.seq),
            PageSource::Quorum(q) => q.read_message(d.seq),
        };
        if found.is_none() {
            let queue = match &self.source {
                PageSource::Store { queue_id, .. } => *queue_id,
                PageSource::Quorum(q) => q.group,
            };
            tracing::error!(
                queue_id = queue,
                seq = d.seq,
                "a stored message could not be read back; skipped"
            );
        }
        found
    }
}

/// Where a message a consumer gave back goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Return {
    /// Back to its place in publish order (classic queues).
    InPlace,
    /// Ahead of every ready message, after those returned before it (a quorum queue with a
    /// delivery limit: RabbitMQ's `returns` queue).
    Head,
    /// Behind every ready message, at normal priority (a quorum queue without a delivery
    /// limit: RabbitMQ re-enqueues it).
    Back,
}

/// A two-level list's levels.
const NORMAL: usize = 0;
const HIGH: usize = 1;
const RETURNED: usize = 2;
/// High-priority messages served per normal one while both wait (RabbitMQ 4's weight).
const HIGH_WEIGHT: u8 = 2;

pub struct ReadyList {
    /// Index = effective priority; a two-level list has NORMAL, HIGH and RETURNED.
    levels: Vec<VecDeque<Slot>>,
    /// Quorum queues: two levels, priority above 4 is high (RabbitMQ 4).
    two_level: bool,
    /// Two-level lists: pops from NORMAL or HIGH since the last turn normal messages had.
    served: u8,
    pager: Option<Pager>,
    /// Body bytes of the messages held in memory, and how many they are.
    mem_bytes: u64,
    mem_len: usize,
    /// Levels that may be non-empty, highest first, is found by scanning `levels` downward.
    len: usize,
    bytes: u64,
    /// (deadline, seq, level) of every ready message with a per-message expiration.
    deadlines: BTreeSet<(Instant, u64, u8)>,
    /// Seqs taken out of the middle of a FIFO (expired): skipped when reached.
    tombstones: HashSet<u64>,
}

impl ReadyList {
    pub fn new(max_priority: u8, pager: Option<Pager>) -> Self {
        ReadyList {
            levels: (0..=max_priority as usize)
                .map(|_| VecDeque::new())
                .collect(),
            two_level: false,
            served: 0,
            pager,
            mem_bytes: 0,
            mem_len: 0,
            len: 0,
            bytes: 0,
            deadlines: BTreeSet::new(),
            tombstones: HashSet::new(),
        }
    }

    /// A quorum queue's: normal and high priority (above 4), no `x-max-priority` needed.
    pub fn two_levels(pager: Option<Pager>) -> Self {
        let mut r = ReadyList::new(RETURNED as u8, pager);
        r.two_level = true;
        r
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// (messages, body bytes) held in memory; the rest are paged out.
    pub fn in_memory(&self) -> (usize, u64) {
        (self.mem_len, self.mem_bytes)
    }

    fn level_of(&self, qm: &QueuedMessage) -> u8 {
        if self.two_level {
            return (qm.msg.priority() > 4) as u8;
        }
        let max = (self.levels.len() - 1) as u8;
        qm.msg.priority().min(max)
    }

    fn account_in(&mut self, slot: &Slot, level: u8) {
        self.len += 1;
        self.bytes += slot.len();
        if let Slot::Mem(_) = slot {
            self.mem_bytes += slot.len();
            self.mem_len += 1;
        }
        if let Some(d) = slot.indexed() {
            self.deadlines.insert((d, slot.seq(), level));
        }
    }

    fn account_out(&mut self, slot: &Slot, level: u8) {
        self.len -= 1;
        self.bytes -= slot.len();
        if let Slot::Mem(_) = slot {
            self.mem_bytes -= slot.len();
            self.mem_len -= 1;
        }
        if let Some(d) = slot.indexed() {
            self.deadlines.remove(&(d, slot.seq(), level));
        }
    }

    /// Would a stored message of `len` body bytes pushed now be paged out?
    pub fn would_page(&self, len: u64) -> bool {
        self.pager
            .as_ref()
            .is_some_and(|p| self.mem_bytes + len > p.memory_budget)
    }

    /// Keep a message in memory, or page it out if it can be read back and memory is spent.
    fn slot_for(&self, qm: QueuedMessage) -> Slot {
        let len = qm.msg.body.len() as u64;
        if !self.would_page(len) || len > LEN_MASK as u64 {
            return Slot::Mem(Box::new(qm));
        }
        match self.pager.as_ref().and_then(|p| p.place(&qm)) {
            Some(loc) => {
                let mut len_flags = len as u32;
                if qm.msg.expiration_ms.is_some() {
                    len_flags |= INDEXED;
                }
                if qm.redelivered {
                    len_flags |= REDELIVERED;
                }
                Slot::Disk(DiskRef {
                    seq: qm.seq,
                    loc,
                    deadline: pack_deadline(qm.deadline),
                    len_flags,
                    delivery_count: qm.delivery_count,
                })
            }
            None => Slot::Mem(Box::new(qm)),
        }
    }

    /// Turn a slot back into a message, reading it from the store if it was paged out.
    fn materialize(&self, slot: Slot) -> Option<QueuedMessage> {
        match slot {
            Slot::Mem(m) => Some(*m),
            Slot::Disk(d) => {
                let mut m = self.pager.as_ref()?.read(&d)?;
                m.deadline = d.deadline();
                m.delivery_count = d.delivery_count;
                m.redelivered = d.len_flags & REDELIVERED != 0;
                Some(m)
            }
        }
    }

    /// Append a newly published (or recovered) message.
    pub fn push(&mut self, qm: QueuedMessage) {
        let level = self.level_of(&qm);
        let slot = self.slot_for(qm);
        self.account_in(&slot, level);
        self.levels[level as usize].push_back(slot);
    }

    /// Put a message back at its place in publish order (kept in memory: it is usually
    /// near the head and about to be delivered again).
    pub fn requeue(&mut self, qm: QueuedMessage) {
        self.give_back(qm, Return::InPlace)
    }

    /// Put a message a consumer gave back where `to` says (kept in memory). `Head` and
    /// `Back` are for two-level lists, whose FIFOs are then no longer in seq order.
    pub fn give_back(&mut self, qm: QueuedMessage, to: Return) {
        let level = match to {
            Return::Head if self.two_level => RETURNED as u8,
            Return::Back if self.two_level => NORMAL as u8,
            _ => self.level_of(&qm),
        };
        let slot = Slot::Mem(Box::new(qm));
        self.account_in(&slot, level);
        let fifo = &mut self.levels[level as usize];
        if self.two_level && to != Return::InPlace {
            fifo.push_back(slot);
        } else {
            let seq = slot.seq();
            let pos = fifo.partition_point(|m| m.seq() < seq);
            fifo.insert(pos, slot);
        }
    }

    /// Where the message `seq` is in one level's FIFO. Levels are in seq order except a
    /// two-level list's after messages came back (`Head`/`Back`): then searched.
    fn position(&self, level: usize, seq: u64) -> Option<usize> {
        let fifo = &self.levels[level];
        let idx = fifo.partition_point(|m| m.seq() < seq);
        if fifo.get(idx).is_some_and(|m| m.seq() == seq) {
            return Some(idx);
        }
        if self.two_level {
            return fifo.iter().position(|m| m.seq() == seq);
        }
        None
    }

    /// The deadline of the message that would be delivered next: None if the queue is
    /// empty, Some(None) if it does not expire.
    pub fn head_deadline(&mut self) -> Option<Option<Instant>> {
        let level = self.next_level()?;
        self.levels[level].front().map(Slot::deadline)
    }

    /// The level the next message comes from, dropping tombstones found at the fronts:
    /// the highest non-empty one; in a two-level list returned messages first, then high
    /// ones except every third turn, which goes to an older normal message.
    fn next_level(&mut self) -> Option<usize> {
        if self.len == 0 {
            return None;
        }
        if !self.two_level {
            return (0..self.levels.len())
                .rev()
                .find(|&level| self.live_front(level).is_some());
        }
        if self.live_front(RETURNED).is_some() {
            return Some(RETURNED);
        }
        let high = self.live_front(HIGH).map(Slot::seq);
        let normal = self.live_front(NORMAL).map(Slot::seq);
        match (high, normal) {
            (Some(h), Some(n)) if self.served == HIGH_WEIGHT && n < h => Some(NORMAL),
            (Some(_), _) => Some(HIGH),
            (None, Some(_)) => Some(NORMAL),
            (None, None) => None,
        }
    }

    /// Take the next message to deliver.
    pub fn pop(&mut self) -> Option<QueuedMessage> {
        loop {
            let level = self.next_level()?;
            let slot = self.levels[level].pop_front()?;
            if self.two_level && level != RETURNED {
                self.served = if self.served == HIGH_WEIGHT {
                    0
                } else {
                    self.served + 1
                };
            }
            self.account_out(&slot, level as u8);
            if let Some(m) = self.materialize(slot) {
                return Some(m);
            }
        }
    }

    /// The first live slot of one level, dropping tombstones in front of it.
    fn live_front(&mut self, level: usize) -> Option<&Slot> {
        let fifo = &mut self.levels[level];
        while let Some(front) = fifo.front() {
            if self.tombstones.is_empty() || !self.tombstones.remove(&front.seq()) {
                break;
            }
            fifo.pop_front();
        }
        self.levels[level].front()
    }

    /// Take every message whose deadline is at or before `now`.
    pub fn take_expired(&mut self, now: Instant, out: &mut Vec<QueuedMessage>) {
        let mut slots = Vec::new();
        for level in 0..self.levels.len() {
            while self
                .live_front(level)
                .and_then(Slot::deadline)
                .is_some_and(|d| d <= now)
            {
                if let Some(slot) = self.levels[level].pop_front() {
                    self.account_out(&slot, level as u8);
                    slots.push(slot);
                }
            }
        }
        while let Some(&(deadline, seq, level)) = self.deadlines.first() {
            if deadline > now {
                break;
            }
            let Some(idx) = self.position(level as usize, seq) else {
                self.deadlines.pop_first();
                continue;
            };
            let slot = self.levels[level as usize][idx].clone();
            self.account_out(&slot, level);
            if idx == 0 {
                self.levels[level as usize].pop_front();
            } else {
                self.tombstones.insert(seq);
            }
            slots.push(slot);
        }
        out.extend(slots.into_iter().filter_map(|s| self.materialize(s)));
    }

    /// The earliest deadline of a ready message (a lower bound: a level's head may have an
    /// earlier per-message deadline than the queue-TTL messages behind it).
    pub fn next_deadline(&mut self) -> Option<Instant> {
        let mut next = self.deadlines.first().map(|(d, _, _)| *d);
        for level in 0..self.levels.len() {
            if let Some(d) = self.live_front(level).and_then(Slot::deadline) {
                next = Some(next.map_or(d, |n| n.min(d)));
            }
        }
        next
    }

    /// Remove everything; returns the seqs of the live messages (a queue without paging).
    pub fn clear_seqs(&mut self) -> Vec<u64> {
        let mut seqs = Vec::with_capacity(self.len);
        for fifo in &self.levels {
            seqs.extend(
                fifo.iter()
                    .map(|s| s.seq())
                    .filter(|q| !self.tombstones.contains(q)),
            );
        }
        self.clear();
        seqs
    }

    /// Remove everything; returns how many live messages there were and where the stored
    /// ones are (whose records must go too).
    pub fn clear(&mut self) -> (usize, Vec<Loc>) {
        let n = self.len;
        let mut stored = Vec::new();
        let in_store = matches!(
            self.pager.as_ref().map(|p| &p.source),
            Some(PageSource::Store { .. })
        );
        for fifo in &mut self.levels {
            for slot in fifo.drain(..) {
                if self.tombstones.contains(&slot.seq()) {
                    continue;
                }
                match slot {
                    Slot::Mem(m) => stored.extend(m.stored),
                    Slot::Disk(d) if in_store => stored.push(d.loc),
                    Slot::Disk(_) => {}
                }
            }
        }
        self.len = 0;
        self.bytes = 0;
        self.mem_bytes = 0;
        self.mem_len = 0;
        self.deadlines.clear();
        self.tombstones.clear();
        (n, stored)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::message::Message;
    use crate::protocol::BasicProperties;
    use bytes::Bytes;
    use std::time::Duration;

    /// A message; with a deadline it is treated as a per-message expiration.
    fn qm(seq: u64, priority: u8, deadline: Option<Instant>) -> QueuedMessage {
        let mut props = BasicProperties::default().with_priority(priority);
        if deadline.is_some() {
            props = props.with_expiration("1000".into());
        }
        QueuedMessage {
            seq,
            msg: Message::new(
                String::new(),
                String::new(),
                props,
                Bytes::from(vec![0u8; 10]),
            ),
            redelivered: false,
            deadline,
            delivery_count: 0,
            stored: None,
        }
    }

    #[test]
    fn a_slot_is_32_bytes() {
        assert_eq!(std::mem::size_of::<Slot>(), 32);
    }

    #[test]
    fn paged_deadlines_keep_their_instant() {
        let now = Instant::now();
        for d in [
            None,
            Some(now),
            Some(now + Duration::from_nanos(123_456_789)),
        ] {
            assert_eq!(unpack_deadline(pack_deadline(d)), d.map(|d| d.max(epoch())));
        }
    }

    #[test]
    fn higher_priority_first_fifo_within_and_capped_at_max() {
        let mut r = ReadyList::new(5, None);
        r.push(qm(0, 1, None));
        r.push(qm(1, 9, None)); // above max: counts as 5
        r.push(qm(2, 5, None));
        r.push(qm(3, 0, None));
        let order: Vec<u64> = std::iter::from_fn(|| r.pop().map(|m| m.seq)).collect();
        assert_eq!(order, vec![1, 2, 0, 3]);
        assert_eq!(r.bytes(), 0);
    }

    #[test]
    fn requeue_returns_to_original_place() {
        let mut r = ReadyList::new(0, None);
        for s in 0..4 {
            r.push(qm(s, 0, None));
        }
        let a = r.pop().unwrap();
        let b = r.pop().unwrap();
        r.requeue(b);
        r.requeue(a);
        let order: Vec<u64> = std::iter::from_fn(|| r.pop().map(|m| m.seq)).collect();
        assert_eq!(order, vec![0, 1, 2, 3]);
    }

    #[test]
    fn expiry_takes_messages_from_the_middle() {
        let now = Instant::now();
        let mut r = ReadyList::new(0, None);
        r.push(qm(0, 0, Some(now + Duration::from_secs(60))));
        r.push(qm(1, 0, Some(now + Duration::from_secs(1))));
        r.push(qm(2, 0, None));
        let mut out = Vec::new();
        r.take_expired(now + Duration::from_secs(2), &mut out);
        assert_eq!(out.iter().map(|m| m.seq).collect::<Vec<_>>(), vec![1]);
        assert_eq!(r.len(), 2);
        assert_eq!(r.next_deadline(), Some(now + Duration::from_secs(60)));
        let order: Vec<u64> = std::iter::from_fn(|| r.pop().map(|m| m.seq)).collect();
        assert_eq!(order, vec![0, 2]);
        assert!(r.next_deadline().is_none());
    }

    #[test]
    fn queue_ttl_deadlines_expire_from_the_heads_without_the_index() {
        let now = Instant::now();
        let mut r = ReadyList::new(1, None);
        let plain = |seq, prio, secs| {
            let mut m = qm(seq, prio, None);
            m.deadline = Some(now + Duration::from_secs(secs));
            m
        };
        r.push(plain(0, 0, 1));
        r.push(plain(1, 1, 2));
        r.push(plain(2, 0, 3));
        assert_eq!(r.next_deadline(), Some(now + Duration::from_secs(1)));
        let mut out = Vec::new();
        r.take_expired(now + Duration::from_secs(2), &mut out);
        let mut seqs: Vec<u64> = out.iter().map(|m| m.seq).collect();
        seqs.sort();
        assert_eq!(seqs, vec![0, 1]);
        assert_eq!(r.len(), 1);
        assert_eq!(r.next_deadline(), Some(now + Duration::from_secs(3)));
    }

    fn drain(r: &mut ReadyList) -> Vec<u64> {
        std::iter::from_fn(|| r.pop().map(|m| m.seq)).collect()
    }

    #[test]
    fn two_levels_serve_two_high_per_older_normal() {
        let mut r = ReadyList::two_levels(None);
        for s in 0..4 {
            r.push(qm(s, 0, None));
        }
        for s in 4..10 {
            r.push(qm(s, 5, None)); // above 4: high
        }
        assert_eq!(drain(&mut r), vec![4, 5, 0, 6, 7, 1, 8, 9, 2, 3]);
    }

    #[test]
    fn two_levels_keep_high_first_when_no_older_normal_waits() {
        let mut r = ReadyList::two_levels(None);
        for s in 0..4 {
            r.push(qm(s, 9, None));
        }
        r.push(qm(4, 4, None)); // 4 is normal, and newer than every high one
        assert_eq!(drain(&mut r), vec![0, 1, 2, 3, 4]);
    }

    /// Three normal messages and a high one; the first two out (3, then 0) come back, in
    /// the order given, to `to`: the order of everything after.
    fn order_after_giving_back(to: Return, three_first: bool) -> Vec<u64> {
        let mut r = ReadyList::two_levels(None);
        for s in 0..3 {
            r.push(qm(s, 0, None));
        }
        r.push(qm(3, 9, None));
        let three = r.pop().unwrap();
        let zero = r.pop().unwrap();
        let (a, b) = if three_first {
            (three, zero)
        } else {
            (zero, three)
        };
        r.give_back(a, to);
        r.give_back(b, to);
        drain(&mut r)
    }

    #[test]
    fn returns_to_head_in_return_order_before_any_priority() {
        assert_eq!(
            order_after_giving_back(Return::Head, true),
            vec![3, 0, 1, 2]
        );
    }

    #[test]
    fn returns_to_back_at_normal_priority() {
        assert_eq!(
            order_after_giving_back(Return::Back, false),
            vec![1, 2, 0, 3]
        );
    }

    #[test]
    fn a_returned_message_still_expires_out_of_order() {
        let now = Instant::now();
        let mut r = ReadyList::two_levels(None);
        r.push(qm(0, 0, Some(now + Duration::from_secs(1))));
        r.push(qm(1, 0, None));
        r.push(qm(2, 0, None));
        let zero = r.pop().unwrap();
        r.give_back(zero, Return::Back);
        let mut out = Vec::new();
        r.take_expired(now + Duration::from_secs(2), &mut out);
        assert_eq!(out.iter().map(|m| m.seq).collect::<Vec<_>>(), vec![0]);
        assert_eq!(drain(&mut r), vec![1, 2]);
        assert_eq!(r.len(), 0);
    }
}
