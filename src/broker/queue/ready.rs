//! The ready messages of a queue: one FIFO per priority level, kept in publish order so a
//! requeued message goes back to its place, plus an index of expiry deadlines.
//!
//! Dequeue looks at the priority levels (at most 256), never at the messages, so its cost
//! does not grow with queue length. A message that expires while not at the head is taken
//! out through the deadline index and left as a tombstone in its FIFO, skipped at dequeue.
//!
//! Only messages with a per-message `expiration` go into the deadline index. Deadlines that
//! come from the queue's x-message-ttl alone grow with publish order, so within a level they
//! are already sorted and the level's head is the next to expire: no index cost for them.

use crate::broker::message::QueuedMessage;
use std::collections::{BTreeSet, HashSet, VecDeque};
use tokio::time::Instant;

pub struct ReadyList {
    /// Index = effective priority.
    levels: Vec<VecDeque<QueuedMessage>>,
    /// Levels that may be non-empty, highest first, is found by scanning `levels` downward.
    len: usize,
    bytes: u64,
    /// (deadline, seq, level) of every ready message with a per-message expiration.
    deadlines: BTreeSet<(Instant, u64, u8)>,
    /// Seqs taken out of the middle of a FIFO (expired): skipped when reached.
    tombstones: HashSet<u64>,
}

impl ReadyList {
    pub fn new(max_priority: u8) -> Self {
        ReadyList {
            levels: (0..=max_priority as usize)
                .map(|_| VecDeque::new())
                .collect(),
            len: 0,
            bytes: 0,
            deadlines: BTreeSet::new(),
            tombstones: HashSet::new(),
        }
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

    fn level_of(&self, qm: &QueuedMessage) -> u8 {
        let max = (self.levels.len() - 1) as u8;
        qm.msg.priority().min(max)
    }

    /// Deadlines from a per-message expiration are indexed; queue-TTL ones are ordered.
    fn indexed(qm: &QueuedMessage) -> Option<Instant> {
        qm.deadline.filter(|_| qm.msg.expiration_ms.is_some())
    }

    fn account_in(&mut self, qm: &QueuedMessage, level: u8) {
        self.len += 1;
        self.bytes += qm.msg.body.len() as u64;
        if let Some(d) = Self::indexed(qm) {
            self.deadlines.insert((d, qm.seq, level));
        }
    }

    fn account_out(&mut self, qm: &QueuedMessage, level: u8) {
        self.len -= 1;
        self.bytes -= qm.msg.body.len() as u64;
        if let Some(d) = Self::indexed(qm) {
            self.deadlines.remove(&(d, qm.seq, level));
        }
    }

    /// The first live message of one level, dropping tombstones in front of it.
    fn live_front(&mut self, level: usize) -> Option<&QueuedMessage> {
        let fifo = &mut self.levels[level];
        while let Some(front) = fifo.front() {
            if self.tombstones.is_empty() || !self.tombstones.remove(&front.seq) {
                break;
            }
            fifo.pop_front();
        }
        self.levels[level].front()
    }

    /// Append a newly published message.
    pub fn push(&mut self, qm: QueuedMessage) {
        let level = self.level_of(&qm);
        self.account_in(&qm, level);
        self.levels[level as usize].push_back(qm);
    }

    /// Put a message back at its place in publish order.
    pub fn requeue(&mut self, qm: QueuedMessage) {
        let level = self.level_of(&qm);
        self.account_in(&qm, level);
        let fifo = &mut self.levels[level as usize];
        let pos = fifo.partition_point(|m| m.seq < qm.seq);
        fifo.insert(pos, qm);
    }

    /// The message that would be delivered next, without taking it.
    pub fn peek(&mut self) -> Option<&QueuedMessage> {
        let level = self.front_level()?;
        self.levels[level].front()
    }

    /// Highest non-empty level, dropping tombstones found at the fronts.
    fn front_level(&mut self) -> Option<usize> {
        if self.len == 0 {
            return None;
        }
        for level in (0..self.levels.len()).rev() {
            let fifo = &mut self.levels[level];
            while let Some(front) = fifo.front() {
                if self.tombstones.is_empty() || !self.tombstones.remove(&front.seq) {
                    return Some(level);
                }
                fifo.pop_front();
            }
        }
        None
    }

    /// Take the next message to deliver.
    pub fn pop(&mut self) -> Option<QueuedMessage> {
        let level = self.front_level()?;
        let qm = self.levels[level].pop_front()?;
        self.account_out(&qm, level as u8);
        Some(qm)
    }

    /// Take every message whose deadline is at or before `now`.
    pub fn take_expired(&mut self, now: Instant, out: &mut Vec<QueuedMessage>) {
        for level in 0..self.levels.len() {
            while self
                .live_front(level)
                .and_then(|m| m.deadline)
                .is_some_and(|d| d <= now)
            {
                if let Some(qm) = self.levels[level].pop_front() {
                    self.account_out(&qm, level as u8);
                    out.push(qm);
                }
            }
        }
        while let Some(&(deadline, seq, level)) = self.deadlines.first() {
            if deadline > now {
                break;
            }
            let fifo = &self.levels[level as usize];
            let idx = fifo.partition_point(|m| m.seq < seq);
            let Some(qm) = fifo.get(idx).filter(|m| m.seq == seq).cloned() else {
                self.deadlines.pop_first();
                continue;
            };
            self.account_out(&qm, level);
            if idx == 0 {
                self.levels[level as usize].pop_front();
            } else {
                self.tombstones.insert(seq);
            }
            out.push(qm);
        }
    }

    /// The earliest deadline of a ready message (a lower bound: a level's head may have an
    /// earlier per-message deadline than the queue-TTL messages behind it).
    pub fn next_deadline(&mut self) -> Option<Instant> {
        let mut next = self.deadlines.first().map(|(d, _, _)| *d);
        for level in 0..self.levels.len() {
            if let Some(d) = self.live_front(level).and_then(|m| m.deadline) {
                next = Some(next.map_or(d, |n| n.min(d)));
            }
        }
        next
    }

    /// Remove everything; returns how many live messages there were.
    pub fn clear(&mut self) -> usize {
        let n = self.len;
        for fifo in &mut self.levels {
            fifo.clear();
        }
        self.len = 0;
        self.bytes = 0;
        self.deadlines.clear();
        self.tombstones.clear();
        n
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
        }
    }

    #[test]
    fn higher_priority_first_fifo_within_and_capped_at_max() {
        let mut r = ReadyList::new(5);
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
        let mut r = ReadyList::new(0);
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
        let mut r = ReadyList::new(0);
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
        let mut r = ReadyList::new(1);
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
}
