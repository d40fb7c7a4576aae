//! Binary encoding of Raft entries (the body of a log record) and of the parts snapshots
//! share with them. Every decoder is bounded by the bytes it was given and returns None
//! on anything malformed: log records are CRC-checked first, so None means a bug or a
//! format from elsewhere, reported as damage by the caller.
//!
//! ```text
//! entry:      [term u64][leader node u64][index u64][kind u8] payload
//! blank:      (nothing)
//! command:    [origin u64][ticket u64][n u32]{[len u32][message]}* then settle, returned,
//!             delivered: each [n u32][id u64]*, then dead: [n u32]{[id u64][reason u8]}*
//!             (absent in entries written before at-least-once dead-lettering)
//! membership: [configs u32]{[n u32][node u64]*}* [nodes u32]{[node u64][addr: len u16, bytes]}*
//! ```

use super::{Entry, LogId, Membership, NodeId, QueueCommand, Vote};
use crate::broker::message::QueuedMessage;
use crate::store::messages;
use bytes::{Buf, BufMut};
use openraft::{BasicNode, CommittedLeaderId, EntryPayload};
use std::collections::{BTreeMap, BTreeSet};

const BLANK: u8 = 0;
const NORMAL: u8 = 1;
const MEMBERSHIP: u8 = 2;

pub fn put_log_id(b: &mut Vec<u8>, id: &LogId) {
    b.put_u64(id.leader_id.term);
    b.put_u64(id.leader_id.node_id);
    b.put_u64(id.index);
}

pub fn get_log_id(b: &mut &[u8]) -> Option<LogId> {
    if b.len() < 24 {
        return None;
    }
    let term = b.get_u64();
    let node = b.get_u64();
    let index = b.get_u64();
    Some(LogId::new(CommittedLeaderId::new(term, node), index))
}

pub fn put_opt_log_id(b: &mut Vec<u8>, id: Option<&LogId>) {
    match id {
        Some(id) => {
            b.put_u8(1);
            put_log_id(b, id);
        }
        None => b.put_u8(0),
    }
}

pub fn get_opt_log_id(b: &mut &[u8]) -> Option<Option<LogId>> {
    match get_u8(b)? {
        0 => Some(None),
        1 => Some(Some(get_log_id(b)?)),
        _ => None,
    }
}

pub fn put_vote(b: &mut Vec<u8>, v: &Vote) {
    b.put_u64(v.leader_id.term);
    b.put_u64(v.leader_id.node_id);
    b.put_u8(v.committed as u8);
}

pub fn get_vote(b: &mut &[u8]) -> Option<Vote> {
    if b.len() < 17 {
        return None;
    }
    let term = b.get_u64();
    let node = b.get_u64();
    let committed = b.get_u8() == 1;
    Some(if committed {
        Vote::new_committed(term, node)
    } else {
        Vote::new(term, node)
    })
}

pub fn get_u8(b: &mut &[u8]) -> Option<u8> {
    if b.is_empty() {
        return None;
    }
    Some(b.get_u8())
}

pub fn get_u32(b: &mut &[u8]) -> Option<u32> {
    if b.len() < 4 {
        return None;
    }
    Some(b.get_u32())
}

fn put_ids(b: &mut Vec<u8>, ids: &[u64]) {
    b.put_u32(ids.len() as u32);
    for id in ids {
        b.put_u64(*id);
    }
}

fn get_ids(b: &mut &[u8]) -> Option<Vec<u64>> {
    let n = get_u32(b)? as usize;
    if b.len() < n.checked_mul(8)? {
        return None;
    }
    Some((0..n).map(|_| b.get_u64()).collect())
}

/// A message as the classic store encodes it, length first.
pub fn put_message(b: &mut Vec<u8>, qm: &QueuedMessage) {
    let at = b.len();
    b.put_u32(0);
    messages::encode_into(qm, b);
    let len = (b.len() - at - 4) as u32;
    b[at..at + 4].copy_from_slice(&len.to_be_bytes());
}

pub fn get_message(b: &mut &[u8], seq: u64) -> Option<QueuedMessage> {
    let len = get_u32(b)? as usize;
    let qm = messages::decode(seq, b.get(..len)?)?;
    b.advance(len);
    Some(qm)
}

pub fn put_membership(b: &mut Vec<u8>, m: &Membership) {
    let configs = m.get_joint_config();
    b.put_u32(configs.len() as u32);
    for c in configs {
        b.put_u32(c.len() as u32);
        for n in c {
            b.put_u64(*n);
        }
    }
    let nodes: Vec<_> = m.nodes().collect();
    b.put_u32(nodes.len() as u32);
    for (id, node) in nodes {
        b.put_u64(*id);
        let addr = node.addr.as_bytes();
        let len = addr.len().min(u16::MAX as usize);
        b.put_u16(len as u16);
        b.extend_from_slice(&addr[..len]);
    }
}

pub fn get_membership(b: &mut &[u8]) -> Option<Membership> {
    let nconfigs = get_u32(b)? as usize;
    let mut configs = Vec::new();
    for _ in 0..nconfigs {
        let n = get_u32(b)? as usize;
        if b.len() < n.checked_mul(8)? {
            return None;
        }
        configs.push((0..n).map(|_| b.get_u64()).collect::<BTreeSet<NodeId>>());
    }
    let nnodes = get_u32(b)? as usize;
    let mut nodes = BTreeMap::new();
    for _ in 0..nnodes {
        if b.len() < 10 {
            return None;
        }
        let id = b.get_u64();
        let len = b.get_u16() as usize;
        let addr = std::str::from_utf8(b.get(..len)?).ok()?.to_string();
        b.advance(len);
        nodes.insert(id, BasicNode { addr });
    }
    Some(Membership::new(configs, nodes))
}

pub fn encode_entry(e: &Entry, b: &mut Vec<u8>) {
    put_log_id(b, &e.log_id);
    match &e.payload {
        EntryPayload::Blank => b.put_u8(BLANK),
        EntryPayload::Normal(c) => {
            b.put_u8(NORMAL);
            b.put_u64(c.origin);
            b.put_u64(c.ticket);
            b.put_u32(c.enqueue.len() as u32);
            for qm in &c.enqueue {
                put_message(b, qm);
            }
            put_ids(b, &c.settle);
            put_ids(b, &c.returned);
            put_ids(b, &c.delivered);
            b.put_u32(c.dead.len() as u32);
            for (id, reason) in &c.dead {
                b.put_u64(*id);
                b.put_u8(*reason);
            }
        }
        EntryPayload::Membership(m) => {
            b.put_u8(MEMBERSHIP);
            put_membership(b, m);
        }
    }
}

pub fn decode_entry(raw: &[u8]) -> Option<Entry> {
    let mut b = raw;
    let log_id = get_log_id(&mut b)?;
    let payload = match get_u8(&mut b)? {
        BLANK => EntryPayload::Blank,
        NORMAL => {
            if b.len() < 16 {
                return None;
            }
            let origin = b.get_u64();
            let ticket = b.get_u64();
            let n = get_u32(&mut b)? as usize;
            let mut enqueue = Vec::with_capacity(n.min(4096));
            for _ in 0..n {
                enqueue.push(get_message(&mut b, 0)?);
            }
            let settle = get_ids(&mut b)?;
            let returned = get_ids(&mut b)?;
            let delivered = get_ids(&mut b)?;
            // Entries written before at-least-once dead-lettering end here.
            let mut dead = Vec::new();
            if !b.is_empty() {
                let n = get_u32(&mut b)? as usize;
                if b.len() != n * 9 {
                    return None;
                }
                for _ in 0..n {
                    dead.push((b.get_u64(), b.get_u8()));
                }
            }
            EntryPayload::Normal(QueueCommand {
                origin,
                ticket,
                enqueue,
                settle,
                returned,
                delivered,
                dead,
            })
        }
        MEMBERSHIP => EntryPayload::Membership(get_membership(&mut b)?),
        _ => return None,
    };
    Some(Entry { log_id, payload })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::message::{Message, QueuedMessage};
    use crate::protocol::BasicProperties;

    fn msg(body: &'static [u8]) -> QueuedMessage {
        QueuedMessage {
            seq: 0,
            msg: Message::new(
                "x".into(),
                "k".into(),
                BasicProperties::default().with_priority(7),
                bytes::Bytes::from_static(body),
            ),
            redelivered: false,
            deadline: None,
            delivery_count: 3,
            stored: None,
        }
    }

    #[test]
    fn entries_round_trip_and_truncations_are_refused() {
        let id = LogId::new(CommittedLeaderId::new(4, 1), 99);
        let cmd = QueueCommand {
            origin: 7,
            ticket: 12,
            enqueue: vec![msg(b"one"), msg(b"")],
            settle: vec![1, 2],
            returned: vec![3],
            delivered: vec![],
            dead: vec![(5, 1), (6, 3)],
        };
        let members = Membership::new(
            vec![BTreeSet::from([1])],
            BTreeMap::from([(1, BasicNode::new("a"))]),
        );
        for payload in [
            EntryPayload::Blank,
            EntryPayload::Normal(cmd),
            EntryPayload::Membership(members),
        ] {
            let e = Entry {
                log_id: id,
                payload,
            };
            let mut b = Vec::new();
            encode_entry(&e, &mut b);
            let back = decode_entry(&b).expect("decodes");
            assert_eq!(back.log_id, id);
            match (&e.payload, &back.payload) {
                (EntryPayload::Normal(a), EntryPayload::Normal(b)) => {
                    assert_eq!((a.origin, a.ticket), (b.origin, b.ticket));
                    assert_eq!(a.settle, b.settle);
                    assert_eq!(a.returned, b.returned);
                    assert_eq!(a.dead, b.dead);
                    assert_eq!(b.enqueue.len(), 2);
                    assert_eq!(&b.enqueue[0].msg.body[..], b"one");
                    assert_eq!(b.enqueue[0].delivery_count, 3);
                    assert_eq!(b.enqueue[0].msg.priority(), 7);
                }
                (EntryPayload::Membership(a), EntryPayload::Membership(b)) => {
                    assert_eq!(a, b)
                }
                (EntryPayload::Blank, EntryPayload::Blank) => {}
                _ => panic!("payload kind changed"),
            }
            // A command cut just before its dead list reads as the older format (the log's
            // record CRC catches real truncation); every other cut is refused.
            let old_format_end = match &e.payload {
                EntryPayload::Normal(c) => Some(b.len() - 4 - 9 * c.dead.len()),
                _ => None,
            };
            for cut in 0..b.len() {
                if Some(cut) == old_format_end {
                    assert!(decode_entry(&b[..cut]).is_some());
                    continue;
                }
                assert!(decode_entry(&b[..cut]).is_none(), "cut at {cut} decoded");
            }
        }
    }
}
