//! A quorum queue's state machine: which messages of which log entries are still in the
//! queue, and what happened to each since (returned, delivered, dead-lettered).
//!
//! It holds no message bodies. A round (one log entry's publishes) is known by where its
//! record is in the node's log (`EntryLoc`) and a bitmap of its messages still live, so a
//! million queued messages cost the state machine a few hundred kilobytes; the ready list
//! keeps the bodies it is about to deliver and reads the others back from the log. The
//! segments a round lives in are pinned while it has live messages: purging the log after a
//! snapshot does not delete them.
//!
//! Its snapshot is that description (rounds by place, bitmaps, the few messages with a
//! history), not the messages, so writing one costs little whatever the queue's depth.

use crate::broker::message::QueuedMessage;
use crate::raft::log::EntryLoc;
use crate::raft::{codec, Entry, LogId, StoredMembership};
use bytes::{Buf, BufMut};
use openraft::storage::SnapshotMeta;
use openraft::EntryPayload;
use std::collections::{BTreeMap, HashMap};

/// Message ids: the entry's index, then the message's place in it.
pub const ID_SHIFT: u32 = 20;
const ID_MASK: u64 = (1 << ID_SHIFT) - 1;
/// Snapshots of earlier builds: every message inline.
const SNAPSHOT_V1: &[u8; 8] = b"WMQQSNP1";
const SNAPSHOT_V2: &[u8; 8] = b"WMQQSNP2";

pub fn round_of(id: u64) -> u64 {
    id >> ID_SHIFT
}

pub fn place_of(id: u64) -> u32 {
    (id & ID_MASK) as u32
}

pub fn message_id(index: u64, place: usize) -> u64 {
    (index << ID_SHIFT) | place as u64
}

/// What happened to a live message since it was enqueued (absent: nothing).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Extra {
    /// Returned to the queue this many times (added to the record's delivery count).
    pub returned: u32,
    /// Handed to a consumer: redelivered if it comes back after a restart.
    pub delivered: bool,
    /// Dead-lettered at least once and not yet in every target: the reason's code.
    pub dead: Option<u8>,
}

/// Where a round's messages are.
#[derive(Debug, Clone)]
pub enum Body {
    /// In the entry's record in this node's log.
    Log(EntryLoc),
    /// Held here: a round whose record is not (yet) in this node's log, or one recovered
    /// from an earlier build's snapshot. Only its live messages.
    Inline(BTreeMap<u32, QueuedMessage>),
}

#[derive(Debug, Clone)]
pub struct Round {
    pub body: Body,
    /// Messages in the entry.
    n: u32,
    /// Bit i: message i is still in the queue.
    live: Vec<u64>,
    count: u32,
}

impl Round {
    fn new(body: Body, n: u32) -> Self {
        let mut live = vec![u64::MAX; n.div_ceil(64) as usize];
        if !n.is_multiple_of(64) {
            if let Some(last) = live.last_mut() {
                *last = (1u64 << (n % 64)) - 1;
            }
        }
        Round {
            body,
            n,
            live,
            count: n,
        }
    }

    pub fn is_live(&self, place: u32) -> bool {
        place < self.n && self.live[(place / 64) as usize] & (1 << (place % 64)) != 0
    }

    fn kill(&mut self, place: u32) -> bool {
        if !self.is_live(place) {
            return false;
        }
        self.live[(place / 64) as usize] &= !(1 << (place % 64));
        self.count -= 1;
        if let Body::Inline(m) = &mut self.body {
            m.remove(&place);
        }
        true
    }

    /// Places of the live messages, in order.
    pub fn live_places(&self) -> impl Iterator<Item = u32> + '_ {
        (0..self.n).filter(|p| self.is_live(*p))
    }

    fn seg(&self) -> Option<u32> {
        match &self.body {
            Body::Log(loc) => Some(loc.seg),
            Body::Inline(_) => None,
        }
    }
}

#[derive(Default)]
pub struct Machine {
    /// Rounds with live messages, by entry index.
    pub rounds: BTreeMap<u64, Round>,
    /// Live messages with a history, by id.
    pub extra: HashMap<u64, Extra>,
    pub applied: Option<LogId>,
    pub membership: StoredMembership,
    /// Live rounds per log segment.
    segs: BTreeMap<u32, u32>,
    /// Segments that got their first live round (true) or lost their last (false), for the
    /// log's pins; taken by the caller.
    pub pin_changes: Vec<(u32, bool)>,
    /// Live messages.
    len: u64,
}

impl Machine {
    /// Live messages (a check on the bookkeeping).
    #[cfg(test)]
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_live(&self, id: u64) -> bool {
        self.rounds
            .get(&round_of(id))
            .is_some_and(|r| r.is_live(place_of(id)))
    }

    /// Segments holding live rounds.
    pub fn segments(&self) -> impl Iterator<Item = u32> + '_ {
        self.segs.keys().copied()
    }

    fn add_round(&mut self, index: u64, round: Round) {
        if let Some(seg) = round.seg() {
            let n = self.segs.entry(seg).or_insert(0);
            *n += 1;
            if *n == 1 {
                self.pin_changes.push((seg, true));
            }
        }
        self.len += round.count as u64;
        self.rounds.insert(index, round);
    }

    /// The message leaves the queue for good.
    fn remove(&mut self, id: u64) {
        let index = round_of(id);
        let Some(r) = self.rounds.get_mut(&index) else {
            return;
        };
        if !r.kill(place_of(id)) {
            return;
        }
        self.len -= 1;
        self.extra.remove(&id);
        if r.count == 0 {
            if let Some(seg) = r.seg() {
                if let Some(n) = self.segs.get_mut(&seg) {
                    *n -= 1;
                    if *n == 0 {
                        self.segs.remove(&seg);
                        self.pin_changes.push((seg, false));
                    }
                }
            }
            self.rounds.remove(&index);
        }
    }

    fn extra_mut(&mut self, id: u64) -> Option<&mut Extra> {
        if self.is_live(id) {
            Some(self.extra.entry(id).or_default())
        } else {
            None
        }
    }

    /// Apply one entry whose record is at `loc` (None: not in this node's log yet); the
    /// messages it makes ready are appended to `ready`. Returns (origin, ticket, messages).
    pub fn apply(
        &mut self,
        e: &Entry,
        loc: Option<EntryLoc>,
        ready: &mut Vec<QueuedMessage>,
    ) -> Option<(u64, u64, u64)> {
        self.applied = Some(e.log_id);
        match &e.payload {
            EntryPayload::Blank => None,
            EntryPayload::Membership(m) => {
                self.membership = StoredMembership::new(Some(e.log_id), m.clone());
                None
            }
            EntryPayload::Normal(c) => {
                let index = e.log_id.index;
                if !c.enqueue.is_empty() {
                    let n = c.enqueue.len().min(ID_MASK as usize + 1);
                    let mut inline = BTreeMap::new();
                    for (i, qm) in c.enqueue.iter().take(n).enumerate() {
                        let mut qm = qm.clone();
                        qm.seq = message_id(index, i);
                        qm.stored = None;
                        if loc.is_none() {
                            inline.insert(i as u32, qm.clone());
                        }
                        ready.push(qm);
                    }
                    let body = match loc {
                        Some(l) => Body::Log(l),
                        None => Body::Inline(inline),
                    };
                    self.add_round(index, Round::new(body, n as u32));
                }
                for id in &c.settle {
                    self.remove(*id);
                }
                for id in &c.returned {
                    if let Some(x) = self.extra_mut(*id) {
                        x.returned = x.returned.saturating_add(1);
                    }
                }
                for id in &c.delivered {
                    if let Some(x) = self.extra_mut(*id) {
                        x.delivered = true;
                    }
                }
                for (id, reason) in &c.dead {
                    if let Some(x) = self.extra_mut(*id) {
                        x.dead = Some(*reason);
                    }
                }
                Some((c.origin, c.ticket, c.enqueue.len() as u64))
            }
        }
    }

    /// A message as the queue holds it: `qm` as it was published (read from its round's
    /// entry), with its history here applied; and its dead-letter reason if it is waiting
    /// for its targets.
    pub fn restore(&self, mut qm: QueuedMessage) -> (QueuedMessage, Option<u8>) {
        let x = self.extra.get(&qm.seq).copied().unwrap_or_default();
        qm.delivery_count = qm.delivery_count.saturating_add(x.returned);
        qm.redelivered = x.delivered || qm.delivery_count > 0;
        (qm, x.dead)
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut body = Vec::new();
        codec::put_opt_log_id(&mut body, self.applied.as_ref());
        codec::put_opt_log_id(&mut body, self.membership.log_id().as_ref());
        codec::put_membership(&mut body, self.membership.membership());
        body.put_u64(self.rounds.len() as u64);
        for (index, r) in &self.rounds {
            body.put_u64(*index);
            body.put_u32(r.n);
            match &r.body {
                Body::Log(loc) => {
                    body.put_u8(0);
                    body.put_u32(loc.seg);
                    body.put_u64(loc.off);
                }
                Body::Inline(m) => {
                    body.put_u8(1);
                    body.put_u32(m.len() as u32);
                    for (place, qm) in m {
                        body.put_u32(*place);
                        codec::put_message(&mut body, qm);
                    }
                }
            }
            for w in &r.live {
                body.put_u64(*w);
            }
        }
        body.put_u64(self.extra.len() as u64);
        let mut extra: Vec<_> = self.extra.iter().collect();
        extra.sort_unstable_by_key(|(id, _)| **id);
        for (id, x) in extra {
            body.put_u64(*id);
            body.put_u32(x.returned);
            // Flags: bit 0 delivered, bits 1.. the dead-letter reason's code + 1.
            body.put_u8(x.delivered as u8 | x.dead.map_or(0, |r| (r + 1) << 1));
        }
        let mut out = Vec::with_capacity(body.len() + 20);
        out.extend_from_slice(SNAPSHOT_V2);
        out.put_u64(body.len() as u64);
        out.put_u32(crc32fast::hash(&body));
        out.extend_from_slice(&body);
        out
    }

    pub fn decode(raw: &[u8]) -> Option<Machine> {
        let mut b = raw;
        if b.len() < 20 {
            return None;
        }
        let v1 = match &b[..8] {
            m if m == SNAPSHOT_V1 => true,
            m if m == SNAPSHOT_V2 => false,
            _ => return None,
        };
        b.advance(8);
        let len = b.get_u64() as usize;
        let crc = b.get_u32();
        if b.len() != len || crc32fast::hash(b) != crc {
            return None;
        }
        let applied = codec::get_opt_log_id(&mut b)?;
        let mlog = codec::get_opt_log_id(&mut b)?;
        let membership = StoredMembership::new(mlog, codec::get_membership(&mut b)?);
        let mut m = Machine {
            applied,
            membership,
            ..Default::default()
        };
        if v1 {
            m.decode_v1_messages(b)?;
        } else {
            m.decode_v2_rounds(b)?;
        }
        m.pin_changes.clear();
        Some(m)
    }

    fn decode_v2_rounds(&mut self, mut b: &[u8]) -> Option<()> {
        let nrounds = get_u64(&mut b)?;
        for _ in 0..nrounds {
            let index = get_u64(&mut b)?;
            let n = codec::get_u32(&mut b)?;
            if n as u64 > ID_MASK + 1 {
                return None;
            }
            let body = match codec::get_u8(&mut b)? {
                0 => Body::Log(EntryLoc {
                    seg: codec::get_u32(&mut b)?,
                    off: get_u64(&mut b)?,
                }),
                1 => {
                    let k = codec::get_u32(&mut b)?;
                    let mut msgs = BTreeMap::new();
                    for _ in 0..k {
                        let place = codec::get_u32(&mut b)?;
                        let qm = codec::get_message(&mut b, message_id(index, place as usize))?;
                        msgs.insert(place, qm);
                    }
                    Body::Inline(msgs)
                }
                _ => return None,
            };
            let mut r = Round::new(body, n);
            for w in r.live.iter_mut() {
                *w = get_u64(&mut b)?;
            }
            r.count = r.live.iter().map(|w| w.count_ones()).sum();
            if r.count == 0 || r.live_places().count() as u32 != r.count {
                return None;
            }
            self.add_round(index, r);
        }
        let nextra = get_u64(&mut b)?;
        for _ in 0..nextra {
            let id = get_u64(&mut b)?;
            let returned = codec::get_u32(&mut b)?;
            let flags = codec::get_u8(&mut b)?;
            self.extra.insert(
                id,
                Extra {
                    returned,
                    delivered: flags & 1 == 1,
                    dead: (flags >> 1).checked_sub(1),
                },
            );
        }
        b.is_empty().then_some(())
    }

    /// An earlier build's snapshot: every live message inline, its delivery count whole.
    fn decode_v1_messages(&mut self, mut b: &[u8]) -> Option<()> {
        let n = get_u64(&mut b)?;
        let mut rounds: BTreeMap<u64, BTreeMap<u32, QueuedMessage>> = BTreeMap::new();
        for _ in 0..n {
            let id = get_u64(&mut b)?;
            let flags = codec::get_u8(&mut b)?;
            let qm = codec::get_message(&mut b, id)?;
            let x = Extra {
                returned: 0,
                delivered: flags & 1 == 1,
                dead: (flags >> 1).checked_sub(1),
            };
            if x != Extra::default() {
                self.extra.insert(id, x);
            }
            rounds
                .entry(round_of(id))
                .or_default()
                .insert(place_of(id), qm);
        }
        for (index, msgs) in rounds {
            let n = msgs.keys().next_back().map_or(0, |p| p + 1);
            let mut r = Round::new(Body::Inline(BTreeMap::new()), n);
            for p in 0..n {
                if !msgs.contains_key(&p) {
                    r.kill(p);
                }
            }
            r.body = Body::Inline(msgs);
            self.add_round(index, r);
        }
        b.is_empty().then_some(())
    }

    pub fn meta(&self) -> SnapshotMeta<u64, openraft::BasicNode> {
        SnapshotMeta {
            last_log_id: self.applied,
            last_membership: self.membership.clone(),
            snapshot_id: format!(
                "{}-{}",
                self.applied.map_or(0, |a| a.index),
                rand::random::<u32>()
            ),
        }
    }
}

fn get_u64(b: &mut &[u8]) -> Option<u64> {
    if b.len() < 8 {
        return None;
    }
    Some(b.get_u64())
}
