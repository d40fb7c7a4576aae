//! The frames nodes exchange after the handshake: openraft's three RPCs for any group,
//! their answers, and errors. Entries are encoded as the log stores them (`raft::codec`),
//! so a message's body is copied once, into the frame. Decoders are bounded by the frame
//! and return None on anything malformed (the connection is then dropped).
//!
//! ```text
//! frame:    [len u32] [kind u8] [request id u64] [group u64] body      (len counts from kind)
//! vote:     [vote] [last log id?]
//! append:   [vote] [prev log id?] [leader commit?] [n u32] {[len u32] [entry]}*
//! snapshot: [vote] [last log id?] [membership log id?] [membership] [id len u16] [id]
//!           [offset u64] [done u8] [len u32] [data]
//! status:   (nothing)
//! join:     [node u64] [member: len u16, bytes]    (forget: the same, for the node to remove)
//! answers:  vote [vote] [granted u8] [last log id?]; append [tag u8] ([log id?] | [vote]);
//!           snapshot [vote]; error [code u8] (mismatch: [expect id, offset] [got id, offset]);
//!           status [node u64] [name] [member u8] [initialised u8] [leader: 0 | 1 node u64]
//!           [n u32] {[node u64] [member]}* [figures: 9 × u64, alarms u8];
//!           joined [joined u8] [leader member] [message]
//! ```
//!
//! Status and join are the cluster group's own: how a starting node learns whether its
//! peers are in a cluster already, and how it asks the leader to be let in.

use crate::raft::codec::{
    decode_entry, encode_entry, get_membership, get_opt_log_id, get_u32, get_u8, get_vote,
    put_membership, put_opt_log_id, put_vote,
};
use crate::raft::{NodeId, StoredMembership, TypeConfig};
use bytes::{Buf, BufMut};
use openraft::error::SnapshotMismatch;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{SnapshotMeta, SnapshotSegmentId};

/// Bytes before a frame's body: kind, request id, group.
pub const HEADER: usize = 1 + 8 + 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    Vote = 1,
    Append = 2,
    Snapshot = 3,
    Status = 4,
    Join = 5,
    Forget = 6,
    VoteOk = 0x81,
    AppendOk = 0x82,
    SnapshotOk = 0x83,
    StatusOk = 0x84,
    Joined = 0x85,
    Error = 0xFF,
}

impl Kind {
    pub fn from_u8(k: u8) -> Option<Kind> {
        Some(match k {
            1 => Kind::Vote,
            2 => Kind::Append,
            3 => Kind::Snapshot,
            4 => Kind::Status,
            5 => Kind::Join,
            6 => Kind::Forget,
            0x81 => Kind::VoteOk,
            0x82 => Kind::AppendOk,
            0x83 => Kind::SnapshotOk,
            0x84 => Kind::StatusOk,
            0x85 => Kind::Joined,
            0xFF => Kind::Error,
            _ => return None,
        })
    }

    pub fn is_request(self) -> bool {
        (self as u8) < 0x80
    }
}

/// Why a request got no answer from the remote group.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RemoteFailure {
    #[error("the peer has no such group (not created there yet, or deleted)")]
    NoGroup,
    #[error("the peer's group is stopping")]
    Stopped,
    #[error(transparent)]
    Mismatch(SnapshotMismatch),
}

/// A whole frame: header, then the body written by `body`.
pub fn frame(kind: Kind, id: u64, group: u64, body: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut b = Vec::with_capacity(64);
    b.put_u32(0);
    b.put_u8(kind as u8);
    b.put_u64(id);
    b.put_u64(group);
    body(&mut b);
    let len = (b.len() - 4) as u32;
    b[..4].copy_from_slice(&len.to_be_bytes());
    b
}

/// The header of a frame whose length prefix was already read.
pub fn header(b: &mut &[u8]) -> Option<(Kind, u64, u64)> {
    if b.len() < HEADER {
        return None;
    }
    let kind = Kind::from_u8(b.get_u8())?;
    Some((kind, b.get_u64(), b.get_u64()))
}

pub fn put_vote_request(b: &mut Vec<u8>, r: &VoteRequest<NodeId>) {
    put_vote(b, &r.vote);
    put_opt_log_id(b, r.last_log_id.as_ref());
}

pub fn get_vote_request(b: &mut &[u8]) -> Option<VoteRequest<NodeId>> {
    Some(VoteRequest {
        vote: get_vote(b)?,
        last_log_id: get_opt_log_id(b)?,
    })
}

pub fn put_vote_response(b: &mut Vec<u8>, r: &VoteResponse<NodeId>) {
    put_vote(b, &r.vote);
    b.put_u8(r.vote_granted as u8);
    put_opt_log_id(b, r.last_log_id.as_ref());
}

pub fn get_vote_response(b: &mut &[u8]) -> Option<VoteResponse<NodeId>> {
    Some(VoteResponse {
        vote: get_vote(b)?,
        vote_granted: get_u8(b)? == 1,
        last_log_id: get_opt_log_id(b)?,
    })
}

/// Entries are written until `budget` bytes are used (at least one): the number written.
pub fn put_append_request(
    b: &mut Vec<u8>,
    r: &AppendEntriesRequest<TypeConfig>,
    budget: usize,
) -> usize {
    put_vote(b, &r.vote);
    put_opt_log_id(b, r.prev_log_id.as_ref());
    put_opt_log_id(b, r.leader_commit.as_ref());
    let count_at = b.len();
    b.put_u32(0);
    let start = b.len();
    let mut n = 0;
    for e in &r.entries {
        if n > 0 && b.len() - start >= budget {
            break;
        }
        let at = b.len();
        b.put_u32(0);
        encode_entry(e, b);
        let len = (b.len() - at - 4) as u32;
        b[at..at + 4].copy_from_slice(&len.to_be_bytes());
        n += 1;
    }
    b[count_at..count_at + 4].copy_from_slice(&(n as u32).to_be_bytes());
    n
}

pub fn get_append_request(b: &mut &[u8]) -> Option<AppendEntriesRequest<TypeConfig>> {
    let vote = get_vote(b)?;
    let prev_log_id = get_opt_log_id(b)?;
    let leader_commit = get_opt_log_id(b)?;
    let n = get_u32(b)? as usize;
    // Every entry takes at least its length and a log id: no allocation beyond the frame.
    if b.len() < n.checked_mul(4 + 24)? {
        return None;
    }
    let mut entries = Vec::with_capacity(n);
    for _ in 0..n {
        let len = get_u32(b)? as usize;
        entries.push(decode_entry(b.get(..len)?)?);
        b.advance(len);
    }
    Some(AppendEntriesRequest {
        vote,
        prev_log_id,
        entries,
        leader_commit,
    })
}

const SUCCESS: u8 = 0;
const PARTIAL: u8 = 1;
const CONFLICT: u8 = 2;
const HIGHER: u8 = 3;

pub fn put_append_response(b: &mut Vec<u8>, r: &AppendEntriesResponse<NodeId>) {
    match r {
        AppendEntriesResponse::Success => b.put_u8(SUCCESS),
        AppendEntriesResponse::PartialSuccess(id) => {
            b.put_u8(PARTIAL);
            put_opt_log_id(b, id.as_ref());
        }
        AppendEntriesResponse::Conflict => b.put_u8(CONFLICT),
        AppendEntriesResponse::HigherVote(v) => {
            b.put_u8(HIGHER);
            put_vote(b, v);
        }
    }
}

pub fn get_append_response(b: &mut &[u8]) -> Option<AppendEntriesResponse<NodeId>> {
    Some(match get_u8(b)? {
        SUCCESS => AppendEntriesResponse::Success,
        PARTIAL => AppendEntriesResponse::PartialSuccess(get_opt_log_id(b)?),
        CONFLICT => AppendEntriesResponse::Conflict,
        HIGHER => AppendEntriesResponse::HigherVote(get_vote(b)?),
        _ => return None,
    })
}

fn put_str(b: &mut Vec<u8>, s: &str) {
    let bytes = &s.as_bytes()[..s.len().min(u16::MAX as usize)];
    b.put_u16(bytes.len() as u16);
    b.extend_from_slice(bytes);
}

fn get_str(b: &mut &[u8]) -> Option<String> {
    if b.len() < 2 {
        return None;
    }
    let len = b.get_u16() as usize;
    let s = std::str::from_utf8(b.get(..len)?).ok()?.to_string();
    b.advance(len);
    Some(s)
}

pub fn put_snapshot_request(b: &mut Vec<u8>, r: &InstallSnapshotRequest<TypeConfig>) {
    put_vote(b, &r.vote);
    put_opt_log_id(b, r.meta.last_log_id.as_ref());
    put_opt_log_id(b, r.meta.last_membership.log_id().as_ref());
    put_membership(b, r.meta.last_membership.membership());
    put_str(b, &r.meta.snapshot_id);
    b.put_u64(r.offset);
    b.put_u8(r.done as u8);
    b.put_u32(r.data.len() as u32);
    b.extend_from_slice(&r.data);
}

pub fn get_snapshot_request(b: &mut &[u8]) -> Option<InstallSnapshotRequest<TypeConfig>> {
    let vote = get_vote(b)?;
    let last_log_id = get_opt_log_id(b)?;
    let membership_log_id = get_opt_log_id(b)?;
    let membership = get_membership(b)?;
    let snapshot_id = get_str(b)?;
    if b.len() < 9 {
        return None;
    }
    let offset = b.get_u64();
    let done = b.get_u8() == 1;
    let len = get_u32(b)? as usize;
    let data = b.get(..len)?.to_vec();
    b.advance(len);
    Some(InstallSnapshotRequest {
        vote,
        meta: SnapshotMeta {
            last_log_id,
            last_membership: StoredMembership::new(membership_log_id, membership),
            snapshot_id,
        },
        offset,
        data,
        done,
    })
}

pub fn put_snapshot_response(b: &mut Vec<u8>, r: &InstallSnapshotResponse<NodeId>) {
    put_vote(b, &r.vote);
}

pub fn get_snapshot_response(b: &mut &[u8]) -> Option<InstallSnapshotResponse<NodeId>> {
    Some(InstallSnapshotResponse { vote: get_vote(b)? })
}

/// A node's answer to "are you in a cluster?".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    pub node: NodeId,
    pub name: String,
    /// This node is a voter or learner of the cluster group.
    pub member: bool,
    /// The cluster group has a membership here (it was formed, or this node was added).
    pub initialised: bool,
    pub leader: Option<NodeId>,
    /// The members as the membership names them (`cluster::member`).
    pub members: Vec<(NodeId, String)>,
    /// The node's own figures, for every member's `/api/nodes`.
    pub figures: Figures,
}

/// What `/api/nodes` shows of a node: its resources and alarms.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Figures {
    pub mem_used: u64,
    pub mem_limit: u64,
    pub disk_free: u64,
    pub disk_free_limit: u64,
    pub fd_used: u64,
    pub fd_total: u64,
    pub sockets_used: u64,
    pub uptime_ms: u64,
    pub os_pid: u64,
    pub mem_alarm: bool,
    pub disk_free_alarm: bool,
}

impl Figures {
    fn numbers(&self) -> [u64; 9] {
        [
            self.mem_used,
            self.mem_limit,
            self.disk_free,
            self.disk_free_limit,
            self.fd_used,
            self.fd_total,
            self.sockets_used,
            self.uptime_ms,
            self.os_pid,
        ]
    }

    fn put(&self, b: &mut Vec<u8>) {
        for n in self.numbers() {
            b.put_u64(n);
        }
        b.put_u8(self.mem_alarm as u8 | (self.disk_free_alarm as u8) << 1);
    }

    fn get(b: &mut &[u8]) -> Option<Figures> {
        let mut n = [0u64; 9];
        for v in n.iter_mut() {
            *v = get_u64(b)?;
        }
        let alarms = get_u8(b)?;
        Some(Figures {
            mem_used: n[0],
            mem_limit: n[1],
            disk_free: n[2],
            disk_free_limit: n[3],
            fd_used: n[4],
            fd_total: n[5],
            sockets_used: n[6],
            uptime_ms: n[7],
            os_pid: n[8],
            mem_alarm: alarms & 1 != 0,
            disk_free_alarm: alarms & 2 != 0,
        })
    }
}

/// "Let me in": the joiner's id and member string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinRequest {
    pub node: NodeId,
    pub member: String,
}

/// The answer to a join or forget: done, or not (then, where the leader is).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Joined {
    pub joined: bool,
    /// The leader's member string, when this node is not the leader and knows it.
    pub leader: Option<String>,
    pub message: String,
}

pub fn put_status(b: &mut Vec<u8>, s: &Status) {
    b.put_u64(s.node);
    put_str(b, &s.name);
    b.put_u8(s.member as u8);
    b.put_u8(s.initialised as u8);
    match s.leader {
        Some(l) => {
            b.put_u8(1);
            b.put_u64(l);
        }
        None => b.put_u8(0),
    }
    b.put_u32(s.members.len() as u32);
    for (id, m) in &s.members {
        b.put_u64(*id);
        put_str(b, m);
    }
    s.figures.put(b);
}

fn get_u64(b: &mut &[u8]) -> Option<u64> {
    if b.len() < 8 {
        return None;
    }
    Some(b.get_u64())
}

pub fn get_status(b: &mut &[u8]) -> Option<Status> {
    let node = get_u64(b)?;
    let name = get_str(b)?;
    let member = get_u8(b)? == 1;
    let initialised = get_u8(b)? == 1;
    let leader = match get_u8(b)? {
        0 => None,
        1 => Some(get_u64(b)?),
        _ => return None,
    };
    let n = get_u32(b)? as usize;
    // Each member takes at least an id and a length: nothing allocated beyond the frame.
    if b.len() < n.checked_mul(8 + 2)? {
        return None;
    }
    let mut members = Vec::with_capacity(n);
    for _ in 0..n {
        members.push((get_u64(b)?, get_str(b)?));
    }
    Some(Status {
        node,
        name,
        member,
        initialised,
        leader,
        members,
        figures: Figures::get(b)?,
    })
}

pub fn put_join_request(b: &mut Vec<u8>, r: &JoinRequest) {
    b.put_u64(r.node);
    put_str(b, &r.member);
}

pub fn get_join_request(b: &mut &[u8]) -> Option<JoinRequest> {
    Some(JoinRequest {
        node: get_u64(b)?,
        member: get_str(b)?,
    })
}

pub fn put_joined(b: &mut Vec<u8>, j: &Joined) {
    b.put_u8(j.joined as u8);
    put_str(b, j.leader.as_deref().unwrap_or(""));
    put_str(b, &j.message);
}

pub fn get_joined(b: &mut &[u8]) -> Option<Joined> {
    let joined = get_u8(b)? == 1;
    let leader = Some(get_str(b)?).filter(|l| !l.is_empty());
    Some(Joined {
        joined,
        leader,
        message: get_str(b)?,
    })
}

pub fn put_failure(b: &mut Vec<u8>, f: &RemoteFailure) {
    match f {
        RemoteFailure::NoGroup => b.put_u8(1),
        RemoteFailure::Stopped => b.put_u8(2),
        RemoteFailure::Mismatch(m) => {
            b.put_u8(3);
            for s in [&m.expect, &m.got] {
                put_str(b, &s.id);
                b.put_u64(s.offset);
            }
        }
    }
}

pub fn get_failure(b: &mut &[u8]) -> Option<RemoteFailure> {
    Some(match get_u8(b)? {
        1 => RemoteFailure::NoGroup,
        2 => RemoteFailure::Stopped,
        3 => {
            let mut seg = || -> Option<SnapshotSegmentId> {
                let id = get_str(b)?;
                if b.len() < 8 {
                    return None;
                }
                Some(SnapshotSegmentId {
                    id,
                    offset: b.get_u64(),
                })
            };
            let expect = seg()?;
            let got = seg()?;
            RemoteFailure::Mismatch(SnapshotMismatch { expect, got })
        }
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::{Entry, LogId, Membership, QueueCommand, Vote};
    use openraft::{CommittedLeaderId, EntryPayload};

    fn log_id(term: u64, index: u64) -> LogId {
        LogId::new(CommittedLeaderId::new(term, 2), index)
    }

    fn entry(index: u64, body: &[u8]) -> Entry {
        let qm = crate::broker::message::QueuedMessage {
            seq: 0,
            msg: crate::broker::message::Message::new(
                "x".into(),
                "k".into(),
                crate::protocol::BasicProperties::default(),
                bytes::Bytes::copy_from_slice(body),
            ),
            redelivered: false,
            deadline: None,
            delivery_count: 0,
            stored: None,
        };
        Entry {
            log_id: log_id(3, index),
            payload: EntryPayload::Normal(QueueCommand {
                origin: 9,
                ticket: index,
                enqueue: vec![qm],
                settle: vec![1, 2],
                ..Default::default()
            }),
        }
    }

    fn body_of(frame: &[u8]) -> &[u8] {
        &frame[4 + HEADER..]
    }

    #[test]
    fn every_rpc_and_answer_comes_back_as_it_was_sent() {
        let vote = Vote::new_committed(3, 2);
        let f = frame(Kind::Vote, 1, 5, |b| {
            put_vote_request(
                b,
                &VoteRequest {
                    vote,
                    last_log_id: Some(log_id(2, 7)),
                },
            )
        });
        let mut h = &f[4..];
        assert_eq!(header(&mut h), Some((Kind::Vote, 1, 5)));
        let r = get_vote_request(&mut h).unwrap();
        assert_eq!((r.vote, r.last_log_id), (vote, Some(log_id(2, 7))));

        let req = AppendEntriesRequest::<TypeConfig> {
            vote,
            prev_log_id: Some(log_id(3, 9)),
            entries: (10..14).map(|i| entry(i, &[i as u8; 100])).collect(),
            leader_commit: None,
        };
        let mut b = Vec::new();
        assert_eq!(put_append_request(&mut b, &req, usize::MAX), 4);
        let back = get_append_request(&mut &b[..]).unwrap();
        assert_eq!(back.entries.len(), 4);
        assert_eq!(back.prev_log_id, req.prev_log_id);
        match &back.entries[3].payload {
            EntryPayload::Normal(c) => {
                assert_eq!(&c.enqueue[0].msg.body[..], &[13u8; 100][..]);
                assert_eq!(c.settle, vec![1, 2]);
            }
            _ => panic!("normal entry"),
        }
        // A budget sends a prefix, never nothing.
        let mut one = Vec::new();
        assert_eq!(put_append_request(&mut one, &req, 0), 1);
        let mut none = Vec::new();
        put_append_request(
            &mut none,
            &AppendEntriesRequest {
                entries: vec![],
                ..req.clone()
            },
            0,
        );
        let entry_len = one.len() - none.len();
        let mut b = Vec::new();
        assert_eq!(put_append_request(&mut b, &req, entry_len + 1), 2);

        for r in [
            AppendEntriesResponse::Success,
            AppendEntriesResponse::PartialSuccess(Some(log_id(3, 11))),
            AppendEntriesResponse::Conflict,
            AppendEntriesResponse::HigherVote(Vote::new(4, 1)),
        ] {
            let mut b = Vec::new();
            put_append_response(&mut b, &r);
            assert_eq!(get_append_response(&mut &b[..]), Some(r));
        }

        let members = Membership::new(
            vec![[1, 2, 3].into()],
            std::collections::BTreeMap::from([(1, openraft::BasicNode::new("10.0.0.1:25672"))]),
        );
        let snap = InstallSnapshotRequest::<TypeConfig> {
            vote,
            meta: SnapshotMeta {
                last_log_id: Some(log_id(3, 40)),
                last_membership: StoredMembership::new(Some(log_id(1, 1)), members.clone()),
                snapshot_id: "3-40-x".into(),
            },
            offset: 4096,
            data: vec![7; 300],
            done: true,
        };
        let mut b = Vec::new();
        put_snapshot_request(&mut b, &snap);
        let back = get_snapshot_request(&mut &b[..]).unwrap();
        assert_eq!(back.meta, snap.meta);
        assert_eq!(
            (back.offset, back.done, back.data),
            (4096, true, vec![7; 300])
        );

        let m = RemoteFailure::Mismatch(SnapshotMismatch {
            expect: SnapshotSegmentId {
                id: "a".into(),
                offset: 0,
            },
            got: SnapshotSegmentId {
                id: "b".into(),
                offset: 8,
            },
        });
        let mut b = Vec::new();
        put_failure(&mut b, &m);
        assert_eq!(get_failure(&mut &b[..]), Some(m));
    }

    #[test]
    fn status_and_join_come_back_as_sent_and_truncations_fail() {
        let s = Status {
            node: 7,
            name: "warrenmq@a".into(),
            member: true,
            initialised: true,
            leader: Some(9),
            members: vec![(7, "127.0.0.1:1 warrenmq@a".into()), (9, "h:2 b".into())],
            figures: Figures {
                mem_used: 1,
                disk_free: 3,
                os_pid: 9,
                disk_free_alarm: true,
                ..Default::default()
            },
        };
        let mut b = Vec::new();
        put_status(&mut b, &s);
        assert_eq!(get_status(&mut &b[..]), Some(s));
        for cut in 0..b.len() {
            assert!(get_status(&mut &b[..cut]).is_none(), "cut at {cut}");
        }
        let j = JoinRequest {
            node: 3,
            member: "x:1 c".into(),
        };
        let mut b = Vec::new();
        put_join_request(&mut b, &j);
        assert_eq!(get_join_request(&mut &b[..]), Some(j));
        for answer in [
            Joined {
                joined: false,
                leader: Some("h:2 b".into()),
                message: "not the leader".into(),
            },
            Joined {
                joined: true,
                leader: None,
                message: String::new(),
            },
        ] {
            let mut b = Vec::new();
            put_joined(&mut b, &answer);
            assert_eq!(get_joined(&mut &b[..]), Some(answer));
        }
    }

    #[test]
    fn truncated_or_lying_frames_decode_to_none() {
        let req = AppendEntriesRequest::<TypeConfig> {
            vote: Vote::new(1, 1),
            prev_log_id: None,
            entries: vec![entry(1, b"x")],
            leader_commit: None,
        };
        let mut b = Vec::new();
        put_append_request(&mut b, &req, usize::MAX);
        for cut in 0..b.len() {
            assert!(get_append_request(&mut &b[..cut]).is_none(), "cut at {cut}");
        }
        // A count far beyond the bytes is refused before anything is allocated.
        let mut lying = b.clone();
        let at = 17 + 1 + 1;
        lying[at..at + 4].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(get_append_request(&mut &lying[..]).is_none());
        let _ = body_of(&frame(Kind::Error, 0, 0, |_| {}));
    }
}
