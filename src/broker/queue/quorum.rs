//! The quorum queue type: a queue whose contents are the state machine of a Raft group
//! (openraft), as RabbitMQ's quorum queues are of their Ra cluster.
//!
//! The leader's queue (`Queue`) does the delivering as a classic queue does. What must
//! survive goes through the group's log first: publishes are batched by a proposer task
//! into one entry per round together with the ids settled, returned and delivered since
//! the last round. A message becomes ready only when its entry is committed and applied
//! here, and that is when its publisher's confirm may go (tickets: every publish takes the
//! next number, every applied entry carries the highest it holds).
//!
//! The state machine keeps every message not yet settled, with its delivery count. Its
//! snapshot (every `SNAPSHOT_EVERY` rounds) is those messages, so the log behind it is
//! purged: disk use and restart time follow the queue's depth, not its history.
//!
//! With one member, restart applies every entry in the log at once (an entry durable on the
//! only voter is committed), so the queue is whole before the first client connects.

use super::at_least_once::DeadPending;
use super::Queue;
use crate::broker::dead_letter::DeathReason;
use crate::broker::message::QueuedMessage;
use crate::raft::log::GroupLog;
use crate::raft::node::RaftNode;
use crate::raft::storage::LogStore;
use crate::raft::{
    codec, Entry, LogId, QueueCommand, Raft, StorageError, StoredMembership, TypeConfig, THIS_NODE,
};
use bytes::{Buf, BufMut};
use openraft::storage::{RaftStateMachine, Snapshot, SnapshotMeta};
use openraft::{AnyError, EntryPayload, RaftSnapshotBuilder, StorageIOError};
use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::io::Cursor;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use tokio::sync::Notify;

/// Message ids: the entry's index, then the message's place in it.
const ID_SHIFT: u32 = 20;
/// Rounds proposed but not yet answered before the proposer waits for the oldest.
const MAX_IN_FLIGHT: usize = 3;
const SNAPSHOT_MAGIC: &[u8; 8] = b"WMQQSNP1";

#[derive(Clone)]
struct Held {
    qm: QueuedMessage,
    delivered: bool,
    /// Dead-lettered at least once and not yet in every target: the reason's code.
    dead: Option<u8>,
}

#[derive(Default)]
struct Machine {
    messages: BTreeMap<u64, Held>,
    applied: Option<LogId>,
    membership: StoredMembership,
}

impl Machine {
    /// Apply one entry; the messages it makes ready are appended to `ready`.
    fn apply(&mut self, e: &Entry, ready: &mut Vec<QueuedMessage>) -> Option<(u64, u64, u64)> {
        self.applied = Some(e.log_id);
        match &e.payload {
            EntryPayload::Blank => None,
            EntryPayload::Membership(m) => {
                self.membership = StoredMembership::new(Some(e.log_id), m.clone());
                None
            }
            EntryPayload::Normal(c) => {
                for (i, qm) in c.enqueue.iter().enumerate() {
                    let mut qm = qm.clone();
                    qm.seq = (e.log_id.index << ID_SHIFT) | i as u64;
                    qm.stored = None;
                    ready.push(qm.clone());
                    self.messages.insert(
                        qm.seq,
                        Held {
                            qm,
                            delivered: false,
                            dead: None,
                        },
                    );
                }
                for id in &c.settle {
                    self.messages.remove(id);
                }
                for id in &c.returned {
                    if let Some(h) = self.messages.get_mut(id) {
                        h.qm.delivery_count = h.qm.delivery_count.saturating_add(1);
                    }
                }
                for id in &c.delivered {
                    if let Some(h) = self.messages.get_mut(id) {
                        h.delivered = true;
                    }
                }
                for (id, reason) in &c.dead {
                    if let Some(h) = self.messages.get_mut(id) {
                        h.dead = Some(*reason);
                    }
                }
                Some((c.origin, c.ticket, c.enqueue.len() as u64))
            }
        }
    }

    fn encode(&self) -> Vec<u8> {
        let mut body = Vec::new();
        codec::put_opt_log_id(&mut body, self.applied.as_ref());
        codec::put_opt_log_id(&mut body, self.membership.log_id().as_ref());
        codec::put_membership(&mut body, self.membership.membership());
        body.put_u64(self.messages.len() as u64);
        for (id, h) in &self.messages {
            body.put_u64(*id);
            // Flags: bit 0 delivered, bits 1.. the dead-letter reason's code + 1.
            body.put_u8(h.delivered as u8 | h.dead.map_or(0, |r| (r + 1) << 1));
            codec::put_message(&mut body, &h.qm);
        }
        let mut out = Vec::with_capacity(body.len() + 20);
        out.extend_from_slice(SNAPSHOT_MAGIC);
        out.put_u64(body.len() as u64);
        out.put_u32(crc32fast::hash(&body));
        out.extend_from_slice(&body);
        out
    }

    fn decode(raw: &[u8]) -> Option<Machine> {
        let mut b = raw;
        if b.len() < 20 || &b[..8] != SNAPSHOT_MAGIC {
            return None;
        }
        b.advance(8);
        let len = b.get_u64() as usize;
        let crc = b.get_u32();
        if b.len() != len || crc32fast::hash(b) != crc {
            return None;
        }
        let applied = codec::get_opt_log_id(&mut b)?;
        let mlog = codec::get_opt_log_id(&mut b)?;
        let membership = StoredMembership::new(mlog, codec::get_membership(&mut b)?);
        if b.len() < 8 {
            return None;
        }
        let n = b.get_u64();
        let mut messages = BTreeMap::new();
        for _ in 0..n {
            if b.len() < 9 {
                return None;
            }
            let id = b.get_u64();
            let flags = b.get_u8();
            let delivered = flags & 1 == 1;
            let dead = (flags >> 1).checked_sub(1);
            let qm = codec::get_message(&mut b, id)?;
            messages.insert(
                id,
                Held {
                    qm,
                    delivered,
                    dead,
                },
            );
        }
        Some(Machine {
            messages,
            applied,
            membership,
        })
    }

    fn meta(&self) -> SnapshotMeta<u64, openraft::BasicNode> {
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

/// What openraft answers a proposed round with.
type RoundAnswer = <openraft::raft::responder::OneshotResponder<TypeConfig> as openraft::raft::responder::Responder<TypeConfig>>::Receiver;

/// A quorum queue's group: its state machine, proposer and confirm tickets.
pub struct Quorum {
    pub group: u64,
    pub(super) node: Arc<RaftNode>,
    pub(super) queue: OnceLock<Weak<Queue>>,
    machine: Mutex<Machine>,
    pending: Mutex<QueueCommand>,
    wake: Notify,
    next_ticket: AtomicU64,
    /// Highest ticket whose entry is applied.
    pub committed: Arc<AtomicU64>,
    /// Messages proposed and not yet applied (max-length checks count them).
    pub in_flight: AtomicU64,
    pub in_flight_bytes: AtomicU64,
    raft: OnceLock<Raft>,
    pub(super) closed: AtomicBool,
    /// Closed because the queue was deleted: what is pending is dropped, not written.
    deleted: AtomicBool,
    /// The group's task (Raft node and proposer), awaited at shutdown.
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Set when the group's log or snapshot was found damaged: the queue refuses work.
    pub damaged: Option<String>,
    /// A group made just now (initialised when its task starts).
    fresh: bool,
    /// At-least-once dead-lettering: messages on their way to the dead-letter targets.
    pub(super) dlx: Mutex<Vec<DeadPending>>,
    pub(super) dlx_running: AtomicBool,
    /// Messages marked dead and not yet settled (those in `dlx` and those in a round).
    pub(super) dlx_count: std::sync::atomic::AtomicUsize,
    pub(super) dlx_bytes: AtomicU64,
    pub(super) dlx_wake: Notify,
    /// The classic store (a dead-lettered message persisted in a classic target is there
    /// once its write epoch is flushed).
    pub(super) store: Option<Arc<crate::store::Store>>,
    log: Arc<Mutex<GroupLog>>,
}

impl Quorum {
    /// Open a group: read its snapshot and replay its log. Returns the group and the
    /// messages the queue holds (in id order, redelivered where delivered before).
    pub fn open(
        group: u64,
        node: Arc<RaftNode>,
        store: Option<&Arc<crate::store::Store>>,
    ) -> (Arc<Quorum>, Vec<QueuedMessage>) {
        let log = node.log.group(group);
        let path = node.snapshot_path(group);
        let mut damaged = log.lock().damaged.clone();
        let mut machine = match std::fs::read(&path) {
            Ok(raw) => Machine::decode(&raw).unwrap_or_else(|| {
                let why = format!("snapshot {} does not check", path.display());
                if let Some(s) = store {
                    s.report_damage(crate::store::damage::Damage {
                        kind: crate::store::damage::DamageKind::RaftLog,
                        file: format!("quorum/snapshots/{group}.snap"),
                        offset: 0,
                        len: raw.len() as u64,
                        records: 0,
                        queue_id: Some(group),
                        quarantine: None,
                    });
                }
                damaged.get_or_insert(why);
                Machine::default()
            }),
            Err(_) => Machine::default(),
        };
        let fresh;
        {
            let state = log.lock();
            fresh = state.vote.is_none() && state.entries.is_empty() && machine.applied.is_none();
            if damaged.is_none() && state.purged.is_some_and(|p| Some(p) > machine.applied) {
                damaged = Some("log purged past the snapshot".into());
            }
            // One voter: every durable entry is committed.
            let single = machine.membership.membership().voter_ids().eq([THIS_NODE])
                || state.entries.values().any(|e| match &e.payload {
                    EntryPayload::Membership(m) => m.voter_ids().eq([THIS_NODE]),
                    _ => false,
                });
            if single {
                let from = machine.applied.map_or(0, |a| a.index + 1);
                let mut ignored = Vec::new();
                for (_, e) in state.entries.range(from..) {
                    machine.apply(e, &mut ignored);
                }
            }
        }
        let mut ready = Vec::new();
        let mut dead = Vec::new();
        for h in machine.messages.values() {
            let mut qm = h.qm.clone();
            qm.redelivered = h.delivered || qm.delivery_count > 0;
            match h.dead.and_then(DeathReason::from_code) {
                Some(reason) => dead.push(DeadPending::new(qm, reason)),
                None => ready.push(qm),
            }
        }
        let q = Arc::new(Quorum {
            group,
            node,
            queue: OnceLock::new(),
            machine: Mutex::new(machine),
            pending: Mutex::new(QueueCommand::default()),
            wake: Notify::new(),
            next_ticket: AtomicU64::new(0),
            committed: Arc::new(AtomicU64::new(0)),
            in_flight: AtomicU64::new(0),
            in_flight_bytes: AtomicU64::new(0),
            raft: OnceLock::new(),
            closed: AtomicBool::new(false),
            deleted: AtomicBool::new(false),
            task: Mutex::new(None),
            damaged,
            fresh,
            log,
            dlx_count: std::sync::atomic::AtomicUsize::new(dead.len()),
            dlx_bytes: AtomicU64::new(dead.iter().map(|p| p.body_len()).sum()),
            dlx: Mutex::new(dead),
            dlx_running: AtomicBool::new(false),
            dlx_wake: Notify::new(),
            store: store.cloned(),
        });
        (q, ready)
    }

    /// Bind to the queue it feeds and start the group (Raft node and proposer task).
    pub fn start(self: &Arc<Self>, queue: &Arc<Queue>, name: &str) {
        let _ = self.queue.set(Arc::downgrade(queue));
        if self.damaged.is_some() {
            return;
        }
        let q = self.clone();
        let name = name.to_string();
        let task = tokio::spawn(async move {
            if let Err(e) = q.run(&name).await {
                tracing::error!(queue = %name, error = %e, "quorum queue group stopped");
            }
        });
        *self.task.lock() = Some(task);
        if !self.dlx.lock().is_empty() {
            self.kick_dlx();
        }
    }

    async fn run(self: Arc<Self>, name: &str) -> Result<(), String> {
        let raft = Raft::new(
            THIS_NODE,
            crate::raft::group_config(name),
            crate::raft::network::Network,
            LogStore::new(self.node.log.clone(), self.group),
            StateMachine(self.clone()),
        )
        .await
        .map_err(|e| e.to_string())?;
        if self.fresh {
            let members =
                std::collections::BTreeMap::from([(THIS_NODE, openraft::BasicNode::default())]);
            if let Err(e) = raft.initialize(members).await {
                tracing::debug!(queue = %name, error = %e, "group already initialised");
            }
        }
        let _ = self.raft.set(raft.clone());
        let leader = raft
            .wait(Some(std::time::Duration::from_secs(60)))
            .state(openraft::ServerState::Leader, "quorum queue leader")
            .await;
        if let Err(e) = leader {
            let _ = raft.shutdown().await;
            return Err(format!("no leader: {e}"));
        }
        let mut in_flight = std::collections::VecDeque::new();
        loop {
            while in_flight.len() >= MAX_IN_FLIGHT {
                if let Some(rx) = in_flight.pop_front() {
                    let _ = rx.await;
                }
            }
            let cmd = loop {
                if self.closed.load(Ordering::Acquire) {
                    self.drain(&raft, in_flight).await;
                    let _ = raft.shutdown().await;
                    return Ok(());
                }
                let cmd = std::mem::take(&mut *self.pending.lock());
                if !cmd.is_empty() {
                    break cmd;
                }
                if let Some(rx) = in_flight.pop_front() {
                    let _ = rx.await;
                    continue;
                }
                self.wake.notified().await;
            };
            match raft.client_write_ff(cmd).await {
                Ok(rx) => in_flight.push_back(rx),
                Err(e) => {
                    let _ = raft.shutdown().await;
                    return Err(e.to_string());
                }
            }
        }
    }

    /// A clean stop: the last round (acks, returns, publishes not yet proposed) is written
    /// and every round in flight answered before the group stops. A deleted queue's
    /// pending work is dropped.
    async fn drain(&self, raft: &Raft, mut in_flight: std::collections::VecDeque<RoundAnswer>) {
        if !self.deleted.load(Ordering::Acquire) {
            let cmd = std::mem::take(&mut *self.pending.lock());
            if !cmd.is_empty() {
                if let Ok(rx) = raft.client_write_ff(cmd).await {
                    in_flight.push_back(rx);
                }
            }
        }
        for rx in in_flight {
            let _ = rx.await;
        }
    }

    pub(super) fn with_pending(&self, f: impl FnOnce(&mut QueueCommand)) {
        f(&mut self.pending.lock());
        self.wake.notify_one();
    }

    /// Propose a published message; returns its confirm ticket.
    pub fn enqueue(&self, qm: QueuedMessage) -> u64 {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.in_flight_bytes
            .fetch_add(qm.msg.body.len() as u64, Ordering::Relaxed);
        let mut p = self.pending.lock();
        let ticket = self.next_ticket.fetch_add(1, Ordering::AcqRel) + 1;
        p.origin = self.node.boot;
        p.ticket = ticket;
        p.enqueue.push(qm);
        drop(p);
        self.wake.notify_one();
        ticket
    }

    /// The ticket of the latest publish (a confirm waiting for it covers every earlier one).
    pub fn last_ticket(&self) -> u64 {
        self.next_ticket.load(Ordering::Acquire)
    }

    pub fn settle(&self, id: u64) {
        self.with_pending(|p| p.settle.push(id));
    }

    pub fn settle_all(&self, ids: Vec<u64>) {
        if !ids.is_empty() {
            self.with_pending(|p| p.settle.extend(ids));
        }
    }

    pub fn returned(&self, id: u64) {
        self.with_pending(|p| p.returned.push(id));
    }

    pub fn delivered(&self, id: u64) {
        self.with_pending(|p| p.delivered.push(id));
    }

    /// Stop the group (broker shutdown): what is pending is written first.
    pub async fn shutdown(&self) {
        self.closed.store(true, Ordering::Release);
        self.wake.notify_one();
        self.join().await;
    }

    /// Wait (bounded) for the group's task to end.
    async fn join(&self) {
        let task = self.task.lock().take();
        if let Some(task) = task {
            if tokio::time::timeout(std::time::Duration::from_secs(10), task)
                .await
                .is_err()
            {
                tracing::warn!(
                    group = self.group,
                    "quorum queue group did not stop in time"
                );
            }
        }
    }

    /// The queue is deleted: stop the group and drop its log and snapshot.
    pub fn delete(self: &Arc<Self>) {
        self.deleted.store(true, Ordering::Release);
        self.closed.store(true, Ordering::Release);
        self.wake.notify_one();
        let q = self.clone();
        tokio::spawn(async move {
            q.join().await;
            q.node.log.drop_group(q.group);
            let _ = std::fs::remove_file(q.node.snapshot_path(q.group));
        });
    }

    /// Members and leader for the management API.
    pub fn leader(&self) -> Option<u64> {
        self.raft
            .get()
            .and_then(|r| r.metrics().borrow().current_leader)
    }

    /// Raft log entries kept (after the last snapshot).
    pub fn log_entries(&self) -> usize {
        self.log.lock().entries.len()
    }
}

/// openraft's view of the group's state machine.
pub struct StateMachine(Arc<Quorum>);

pub struct Builder {
    bytes: Vec<u8>,
    meta: SnapshotMeta<u64, openraft::BasicNode>,
    path: std::path::PathBuf,
}

impl RaftSnapshotBuilder<TypeConfig> for Builder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        write_snapshot(&self.path, &self.bytes)
            .map_err(|e| StorageIOError::write_snapshot(None, AnyError::new(&e)))?;
        Ok(Snapshot {
            meta: self.meta.clone(),
            snapshot: Box::new(Cursor::new(std::mem::take(&mut self.bytes))),
        })
    }
}

fn write_snapshot(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use crate::store::fs::FileSystem;
    crate::store::fs::RealFs.write_durably(path, bytes)
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = Builder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        let m = self.0.machine.lock();
        Ok((m.applied, m.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<()>, StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let q = &self.0;
        let mut out = Vec::new();
        let mut ready = Vec::new();
        let mut ticket = 0;
        let mut applied_here = 0;
        {
            let mut m = q.machine.lock();
            for e in entries {
                out.push(());
                if let Some((origin, t, n)) = m.apply(&e, &mut ready) {
                    if origin == q.node.boot {
                        ticket = ticket.max(t);
                        applied_here += n;
                    }
                }
            }
        }
        if applied_here > 0 {
            let bytes: u64 = ready.iter().map(|m| m.msg.body.len() as u64).sum();
            q.in_flight.fetch_sub(
                applied_here.min(q.in_flight.load(Ordering::Relaxed)),
                Ordering::Relaxed,
            );
            let have = q.in_flight_bytes.load(Ordering::Relaxed);
            q.in_flight_bytes
                .fetch_sub(bytes.min(have), Ordering::Relaxed);
        }
        if !ready.is_empty() {
            if let Some(queue) = q.queue.get().and_then(Weak::upgrade) {
                queue.enqueue_committed(ready);
            }
        }
        if ticket > 0 {
            q.committed.fetch_max(ticket, Ordering::AcqRel);
            q.node.note_applied();
        }
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Builder {
        let m = self.0.machine.lock();
        Builder {
            bytes: m.encode(),
            meta: m.meta(),
            path: self.0.node.snapshot_path(self.0.group),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<u64, openraft::BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let bytes = snapshot.into_inner();
        let Some(mut machine) = Machine::decode(&bytes) else {
            return Err(StorageIOError::read_snapshot(
                Some(meta.signature()),
                AnyError::error("snapshot does not check"),
            )
            .into());
        };
        write_snapshot(&self.0.node.snapshot_path(self.0.group), &bytes).map_err(|e| {
            StorageIOError::write_snapshot(Some(meta.signature()), AnyError::new(&e))
        })?;
        machine.applied = meta.last_log_id;
        machine.membership = meta.last_membership.clone();
        let ready: Vec<QueuedMessage> = machine.messages.values().map(|h| h.qm.clone()).collect();
        *self.0.machine.lock() = machine;
        if let Some(queue) = self.0.queue.get().and_then(Weak::upgrade) {
            queue.replace_ready(ready);
        }
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        let path = self.0.node.snapshot_path(self.0.group);
        let Ok(bytes) = std::fs::read(&path) else {
            return Ok(None);
        };
        let Some(machine) = Machine::decode(&bytes) else {
            return Err(StorageIOError::read_snapshot(
                None,
                AnyError::error("snapshot does not check"),
            )
            .into());
        };
        Ok(Some(Snapshot {
            meta: machine.meta(),
            snapshot: Box::new(Cursor::new(bytes)),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::message::Message;
    use crate::protocol::BasicProperties;

    #[test]
    fn snapshots_round_trip_and_damage_is_refused() {
        let mut m = Machine::default();
        for id in [3u64, 9] {
            m.messages.insert(
                id,
                Held {
                    qm: QueuedMessage {
                        seq: id,
                        msg: Message::new(
                            "".into(),
                            "q".into(),
                            BasicProperties::default(),
                            bytes::Bytes::from(vec![id as u8; 10]),
                        ),
                        redelivered: false,
                        deadline: None,
                        delivery_count: id as u32,
                        stored: None,
                    },
                    delivered: id == 9,
                    dead: (id == 9).then_some(DeathReason::DeliveryLimit.code()),
                },
            );
        }
        m.applied = Some(LogId::new(openraft::CommittedLeaderId::new(1, 1), 40));
        let raw = m.encode();
        let back = Machine::decode(&raw).expect("decodes");
        assert_eq!(back.applied, m.applied);
        assert_eq!(back.messages.len(), 2);
        assert_eq!(back.messages[&9].qm.delivery_count, 9);
        assert!(back.messages[&9].delivered && !back.messages[&3].delivered);
        assert_eq!(back.messages[&9].dead, Some(3));
        assert_eq!(back.messages[&3].dead, None);
        for i in 0..raw.len() {
            let mut bad = raw.clone();
            bad[i] ^= 0x20;
            assert!(Machine::decode(&bad).is_none(), "flip at {i} accepted");
        }
    }
}
