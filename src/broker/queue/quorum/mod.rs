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
//! The state machine (`machine`) knows every message not yet settled by its place in the
//! log, with its history; its snapshot (every `SNAPSHOT_EVERY` rounds) is that knowledge,
//! so the log behind it is purged: disk use and restart time follow the queue's depth, not
//! its history. Bodies stay in the log's records: the ready list keeps a memory budget's
//! worth and reads the rest back when their turn comes (`read_message`), so memory does not
//! grow with the queue's depth.
//!
//! With one member, restart applies every entry in the log at once (an entry durable on the
//! only voter is committed), so the queue is whole before the first client connects.
//!
//! - `machine`       — the state machine and its snapshot format
//! - `state_machine` — openraft's state machine and snapshot traits over it

mod machine;
mod state_machine;

use super::at_least_once::DeadPending;
use super::Queue;
use crate::broker::dead_letter::{with_delivery_count, DeathReason};
use crate::broker::message::QueuedMessage;
use crate::raft::log::{EntryLoc, GroupLog};
use crate::raft::node::RaftNode;
use crate::raft::storage::LogStore;
use crate::raft::{QueueCommand, Raft, TypeConfig, THIS_NODE};
use machine::{Body, Machine};
use openraft::EntryPayload;
use parking_lot::Mutex;
use state_machine::StateMachine;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use tokio::sync::Notify;

/// Rounds proposed but not yet answered before the proposer waits for the oldest.
const MAX_IN_FLIGHT: usize = 3;

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
    /// The last round read back from the log (consumers read rounds in order).
    page_cache: Mutex<Option<(u64, Arc<Vec<QueuedMessage>>)>>,
}

impl Quorum {
    /// Open a group: read its snapshot and replay its log (reading each entry back from
    /// its record). `recover` then hands the queue its messages.
    pub fn open(
        group: u64,
        node: Arc<RaftNode>,
        store: Option<&Arc<crate::store::Store>>,
    ) -> Arc<Quorum> {
        let log = node.log.group(group);
        let path = node.snapshot_path(group);
        let mut damaged = log.lock().damaged.clone();
        let report = |what: String, len: u64| {
            if let Some(s) = store {
                s.report_damage(crate::store::damage::Damage {
                    kind: crate::store::damage::DamageKind::RaftLog,
                    file: what,
                    offset: 0,
                    len,
                    records: 0,
                    queue_id: Some(group),
                    quarantine: None,
                });
            }
        };
        let mut machine = match std::fs::read(&path) {
            Ok(raw) => Machine::decode(&raw).unwrap_or_else(|| {
                report(format!("quorum/snapshots/{group}.snap"), raw.len() as u64);
                damaged.get_or_insert(format!("snapshot {} does not check", path.display()));
                Machine::default()
            }),
            Err(_) => Machine::default(),
        };
        let (fresh, written) = {
            let state = log.lock();
            let fresh = state.vote.is_none() && state.is_empty() && machine.applied.is_none();
            if damaged.is_none() && state.purged.is_some_and(|p| Some(p) > machine.applied) {
                damaged = Some("log purged past the snapshot".into());
            }
            let from = machine.applied.map_or(0, |a| a.index + 1);
            let written: Vec<(u64, EntryLoc)> = state
                .locs
                .range(from..)
                .map(|(i, (_, loc))| (*i, *loc))
                .collect();
            (fresh, written)
        };
        // One voter: every durable entry is committed.
        let mut single = machine.membership.membership().voter_ids().eq([THIS_NODE]);
        let mut ignored = Vec::new();
        for (index, loc) in written {
            if damaged.is_some() {
                break;
            }
            match node.log.read_entry(loc) {
                Ok(e) if e.log_id.index == index => {
                    if let EntryPayload::Membership(m) = &e.payload {
                        single = single || m.voter_ids().eq([THIS_NODE]);
                    }
                    if !single {
                        break;
                    }
                    machine.apply(&e, Some(loc), &mut ignored);
                    ignored.clear();
                }
                Ok(_) | Err(_) => {
                    tracing::error!(group, index, "a quorum log entry could not be read back");
                    report(format!("quorum/{:08}.rlog", loc.seg), 0);
                    damaged = Some(format!("log entry {index} could not be read back"));
                }
            }
        }
        for seg in machine.segments() {
            node.log.pin(group, seg);
        }
        machine.pin_changes.clear();
        if let Some(a) = machine.applied {
            log.lock().applied_upto(a.index);
        }
        Arc::new(Quorum {
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
            dlx_count: std::sync::atomic::AtomicUsize::new(0),
            dlx_bytes: AtomicU64::new(0),
            dlx: Mutex::new(Vec::new()),
            dlx_running: AtomicBool::new(false),
            dlx_wake: Notify::new(),
            store: store.cloned(),
            page_cache: Mutex::new(None),
        })
    }

    /// Hand every live message to `restore` in id order (redelivered where delivered
    /// before), one round read back at a time; those waiting for their dead-letter targets
    /// go to the at-least-once worker instead.
    pub fn recover(&self, mut restore: impl FnMut(QueuedMessage)) {
        let mut next = 0u64;
        loop {
            let round = {
                let m = self.machine.lock();
                m.rounds.range(next..).next().map(|(index, r)| {
                    let places: Vec<u32> = r.live_places().collect();
                    (*index, r.body.clone(), places)
                })
            };
            let Some((index, body, places)) = round else {
                break;
            };
            next = index + 1;
            let msgs: Vec<Option<QueuedMessage>> = match body {
                Body::Inline(m) => places.iter().map(|p| m.get(p).cloned()).collect(),
                Body::Log(loc) => match self.read_round(index, loc) {
                    Ok(all) => places
                        .iter()
                        .map(|p| all.get(*p as usize).cloned())
                        .collect(),
                    Err(e) => {
                        tracing::error!(group = self.group, index, error = %e, "quorum queue messages could not be read back; skipped");
                        continue;
                    }
                },
            };
            for qm in msgs.into_iter().flatten() {
                let (mut qm, dead) = self.machine.lock().restore(qm);
                if qm.delivery_count > 0 {
                    qm.msg = with_delivery_count(&qm.msg, qm.delivery_count);
                }
                match dead.and_then(DeathReason::from_code) {
                    Some(reason) => {
                        let p = DeadPending::new(qm, reason);
                        self.dlx_count.fetch_add(1, Ordering::Relaxed);
                        self.dlx_bytes.fetch_add(p.body_len(), Ordering::Relaxed);
                        self.dlx.lock().push(p);
                    }
                    None => restore(qm),
                }
            }
        }
    }

    /// The messages of the round at `index`, read back from its record.
    fn read_round(&self, index: u64, loc: EntryLoc) -> std::io::Result<Vec<QueuedMessage>> {
        let e = self.node.log.read_entry(loc)?;
        match e.payload {
            EntryPayload::Normal(c) if e.log_id.index == index => Ok(c
                .enqueue
                .into_iter()
                .enumerate()
                .map(|(i, mut qm)| {
                    qm.seq = machine::message_id(index, i);
                    qm.stored = None;
                    qm
                })
                .collect()),
            _ => Err(std::io::Error::other("not the entry expected")),
        }
    }

    /// Can a ready message be dropped from memory and read back later?
    pub fn can_page(&self, id: u64) -> bool {
        matches!(
            self.machine
                .lock()
                .rounds
                .get(&machine::round_of(id))
                .map(|r| &r.body),
            Some(Body::Log(_))
        )
    }

    /// A paged-out message, read back from its round's record (the round is cached: its
    /// neighbours are usually next).
    pub fn read_message(&self, id: u64) -> Option<QueuedMessage> {
        let index = machine::round_of(id);
        let place = machine::place_of(id) as usize;
        if let Some((cached, msgs)) = &*self.page_cache.lock() {
            if *cached == index {
                return msgs.get(place).cloned();
            }
        }
        let loc = match &self.machine.lock().rounds.get(&index)?.body {
            Body::Log(loc) => *loc,
            Body::Inline(m) => return m.get(&(place as u32)).cloned(),
        };
        match self.read_round(index, loc) {
            Ok(msgs) => {
                let msgs = Arc::new(msgs);
                *self.page_cache.lock() = Some((index, msgs.clone()));
                msgs.get(place).cloned()
            }
            Err(e) => {
                tracing::error!(group = self.group, index, error = %e, "a quorum queue message could not be read back");
                None
            }
        }
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
            crate::raft::network::Network::new(self.group, None),
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
        self.log.lock().len()
    }
}
