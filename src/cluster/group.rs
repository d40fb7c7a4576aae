//! The cluster group: one Raft group whose members are every node of the cluster. Its
//! membership *is* the cluster's: who is in, with which address and name. Its log lives in
//! the node's shared Raft log (group `CLUSTER_GROUP`), its state machine keeps the applied
//! point and the membership, snapshotted to `quorum/snapshots/cluster.snap`.
//!
//! Forming and joining, on start, until this node is a member:
//! - a node with no peers forms a cluster of one;
//! - when every listed peer answers and none is in a cluster yet, the one with the lowest
//!   id makes the cluster of all of them (nodes started with the same list form one
//!   cluster; asking every peer first means two halves of a list can never each form one);
//! - when a peer is in a cluster already, this node asks its leader to be let in: the
//!   leader adds it as a learner, waits until it caught up, then makes it a voter.
//!
//! A node that was a member before finds its membership in its log and does none of that.
//! Which members are up comes from a status call to each, every second.

use super::transport::{BoxFuture, Cluster, Group};
use super::wire::{Figures, JoinRequest, Joined, Kind, RemoteFailure, Status};
use super::{member, member_addr, member_name};
use crate::raft::log::NodeLog;
use crate::raft::network::Network;
use crate::raft::snapshot::{write_durably, SnapshotFile};
use crate::raft::storage::LogStore;
use crate::raft::{
    codec, Entry, LogId, Membership, NodeId, Raft, StorageError, StoredMembership, TypeConfig,
};
use futures_util::future::join_all;
use openraft::storage::{RaftStateMachine, Snapshot, SnapshotMeta};
use openraft::{AnyError, BasicNode, EntryPayload, StorageIOError};
use parking_lot::Mutex;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Cursor;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// The cluster group's id in the node's log and on the wire (queue groups count up from 1).
pub const CLUSTER_GROUP: u64 = u64::MAX;

/// How often each member is asked for its status, and how long it may take to answer.
const STATUS_EVERY: Duration = Duration::from_secs(1);
/// A member is running while it answered a status call this recently.
const RUNNING_WITHIN: Duration = Duration::from_secs(3);
/// How long a leader may take to admit a joiner (catch-up included).
const ADMIT_TIMEOUT: Duration = Duration::from_secs(30);

/// What this node needs to take part in the cluster.
pub struct Settings {
    pub me: NodeId,
    pub name: String,
    /// The cluster address other nodes reach this one at.
    pub advertise: String,
    /// The addresses of the initial members (this node's own may be among them).
    pub peers: Vec<String>,
    /// Raft election timeout, ms.
    pub election_timeout: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("cluster group did not start: {0}")]
    Raft(String),
}

#[derive(Debug, thiserror::Error)]
pub enum ForgetError {
    #[error("no such cluster member")]
    NotAMember,
    #[error("a node cannot forget itself; ask another member")]
    Itself,
    #[error("the cluster could not remove it: {0}")]
    Failed(String),
}

/// One member as this node sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberView {
    pub id: NodeId,
    pub name: String,
    pub addr: String,
    pub voter: bool,
    pub leader: bool,
    pub running: bool,
    pub me: bool,
    /// What the member reported in its last status answer (another member, running).
    pub figures: Option<Figures>,
}

pub struct ClusterGroup {
    pub me: NodeId,
    pub name: String,
    pub advertise: String,
    peers: Vec<String>,
    pub cluster: Arc<Cluster>,
    pub raft: Raft,
    /// When each other member last answered a status call, and its figures then.
    seen: Mutex<HashMap<NodeId, (Instant, Figures)>>,
    /// This node's figures for status answers (set once the management API state exists).
    figures: std::sync::OnceLock<Box<dyn Fn() -> Figures + Send + Sync>>,
    /// Membership changes one at a time: openraft refuses one while another is uncommitted.
    admit: tokio::sync::Mutex<()>,
    stop: watch::Sender<bool>,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

/// The openraft configuration of the cluster group, from the election timeout (ms).
fn config(election_timeout: u64) -> Arc<openraft::Config> {
    let max = election_timeout.max(150);
    let config = openraft::Config {
        cluster_name: "warrenmq-cluster".into(),
        heartbeat_interval: max / 6,
        election_timeout_min: max / 2,
        election_timeout_max: max,
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(1000),
        ..Default::default()
    };
    Arc::new(config.validate().unwrap_or_default())
}

impl ClusterGroup {
    /// Start the group's Raft instance, answer its RPCs, and begin forming or joining.
    pub async fn start(
        settings: Settings,
        cluster: Arc<Cluster>,
        log: Arc<NodeLog>,
        snapshot_dir: PathBuf,
    ) -> Result<Arc<ClusterGroup>, ClusterError> {
        let machine = Machine::open(snapshot_dir.join("cluster.snap"));
        let raft = Raft::new(
            settings.me,
            config(settings.election_timeout),
            Network::new(CLUSTER_GROUP, Some(cluster.clone())),
            LogStore::new(log, CLUSTER_GROUP),
            machine,
        )
        .await
        .map_err(|e| ClusterError::Raft(e.to_string()))?;
        let group = Arc::new(ClusterGroup {
            me: settings.me,
            name: settings.name,
            advertise: settings.advertise,
            peers: settings.peers,
            cluster: cluster.clone(),
            raft,
            seen: Mutex::new(HashMap::new()),
            figures: std::sync::OnceLock::new(),
            admit: tokio::sync::Mutex::new(()),
            stop: watch::channel(false).0,
            tasks: Mutex::new(Vec::new()),
        });
        cluster.register(CLUSTER_GROUP, group.clone());
        let tasks = vec![
            tokio::spawn(group.clone().form_or_join()),
            tokio::spawn(group.clone().watch_members()),
        ];
        *group.tasks.lock() = tasks;
        Ok(group)
    }

    /// Leave the cluster's traffic: stop the tasks and the Raft instance.
    pub async fn shutdown(&self) {
        let _ = self.stop.send(true);
        self.cluster.unregister(CLUSTER_GROUP);
        let tasks = std::mem::take(&mut *self.tasks.lock());
        for t in tasks {
            t.abort();
        }
        let _ = self.raft.shutdown().await;
        self.cluster.stop();
    }

    /// Where status answers take this node's figures from.
    pub fn set_figures(&self, f: Box<dyn Fn() -> Figures + Send + Sync>) {
        let _ = self.figures.set(f);
    }

    fn membership(&self) -> Membership {
        self.raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .clone()
    }

    /// This node is a voter or learner of the cluster group.
    pub fn is_member(&self) -> bool {
        self.membership().get_node(&self.me).is_some()
    }

    /// The members, with who leads and who answered lately.
    pub fn members(&self) -> Vec<MemberView> {
        let metrics = self.raft.metrics().borrow().clone();
        let m = metrics.membership_config.membership();
        let voters: BTreeSet<NodeId> = m.voter_ids().collect();
        let seen = self.seen.lock();
        let mut out: Vec<MemberView> = m
            .nodes()
            .map(|(id, node)| {
                let recent = seen
                    .get(id)
                    .filter(|(t, _)| t.elapsed() < RUNNING_WITHIN)
                    .map(|(_, f)| *f);
                MemberView {
                    id: *id,
                    name: member_name(node).to_string(),
                    addr: member_addr(node).to_string(),
                    voter: voters.contains(id),
                    leader: metrics.current_leader == Some(*id),
                    running: *id == self.me || recent.is_some(),
                    me: *id == self.me,
                    figures: recent.filter(|_| *id != self.me),
                }
            })
            .collect();
        if !out.iter().any(|v| v.me) {
            out.push(MemberView {
                id: self.me,
                name: self.name.clone(),
                addr: self.advertise.clone(),
                voter: false,
                leader: false,
                running: true,
                me: true,
                figures: None,
            });
        }
        out
    }

    fn status_now(&self) -> Status {
        let metrics = self.raft.metrics().borrow().clone();
        let m = metrics.membership_config.membership();
        Status {
            node: self.me,
            name: self.name.clone(),
            member: m.get_node(&self.me).is_some(),
            initialised: m.voter_ids().next().is_some(),
            leader: metrics.current_leader,
            members: m.nodes().map(|(id, n)| (*id, n.addr.clone())).collect(),
            figures: self.figures.get().map(|f| f()).unwrap_or_default(),
        }
    }

    fn stopped(&self) -> bool {
        *self.stop.borrow()
    }

    /// Wait `d`, or less if the group stops.
    async fn pause(&self, d: Duration) {
        let mut stop = self.stop.subscribe();
        let _ = tokio::time::timeout(d, stop.wait_for(|s| *s)).await;
    }

    async fn form_or_join(self: Arc<Self>) {
        let mut logged = Instant::now();
        while !self.stopped() {
            if self.is_member() {
                tracing::info!(node = %self.name, "cluster member");
                return;
            }
            match self.try_form_or_join().await {
                Ok(true) => {}
                Ok(false) => {
                    if logged.elapsed() > Duration::from_secs(10) {
                        tracing::info!(peers = ?self.peers, "waiting for every cluster peer to answer");
                        logged = Instant::now();
                    }
                }
                Err(e) => {
                    if logged.elapsed() > Duration::from_secs(10) {
                        tracing::warn!(error = %e, "cannot join the cluster yet");
                        logged = Instant::now();
                    }
                }
            }
            self.pause(Duration::from_millis(300)).await;
        }
    }

    /// One attempt; true once this node formed a cluster or was admitted to one.
    async fn try_form_or_join(&self) -> Result<bool, String> {
        let peers: Vec<&String> = self
            .peers
            .iter()
            .filter(|p| **p != self.advertise)
            .collect();
        if peers.is_empty() {
            self.initialise(BTreeMap::from([(
                self.me,
                member(&self.advertise, &self.name),
            )]))
            .await;
            return Ok(true);
        }
        let answers = join_all(
            peers
                .iter()
                .map(|p| self.cluster.status(p, CLUSTER_GROUP, STATUS_EVERY)),
        )
        .await;
        let mut fresh = BTreeMap::from([(self.me, member(&self.advertise, &self.name))]);
        for (addr, answer) in peers.iter().zip(answers) {
            match answer {
                Ok(s) if s.initialised => return self.join_via(addr).await,
                Ok(s) => {
                    fresh.insert(s.node, member(addr, &s.name));
                }
                Err(_) => {}
            }
        }
        if fresh.len() == peers.len() + 1 && fresh.keys().next() == Some(&self.me) {
            self.initialise(fresh).await;
            return Ok(true);
        }
        Ok(false)
    }

    async fn initialise(&self, members: BTreeMap<NodeId, BasicNode>) {
        let names: Vec<String> = members.values().map(|n| member_name(n).into()).collect();
        match self.raft.initialize(members).await {
            Ok(()) => tracing::info!(members = ?names, "cluster formed"),
            Err(e) => tracing::debug!(error = %e, "cluster group already initialised"),
        }
    }

    /// Ask the node at `addr` (or the leader it names) to let this node in.
    async fn join_via(&self, addr: &str) -> Result<bool, String> {
        let request = JoinRequest {
            node: self.me,
            member: member(&self.advertise, &self.name).addr,
        };
        let mut target = addr.to_string();
        for _ in 0..3 {
            let answer = self
                .cluster
                .membership_change(&target, Kind::Join, CLUSTER_GROUP, &request, ADMIT_TIMEOUT)
                .await
                .map_err(|e| e.to_string())?;
            if answer.joined {
                tracing::info!(via = %target, "joined the cluster");
                return Ok(true);
            }
            match answer.leader {
                Some(leader) => target = member_addr(&BasicNode::new(leader)).to_string(),
                None => return Err(answer.message),
            }
        }
        Err("no leader admitted this node".into())
    }

    /// Ok while this node leads the cluster group; otherwise the leader's member string,
    /// when one is known.
    fn leading(&self) -> Result<(), Option<String>> {
        let metrics = self.raft.metrics().borrow().clone();
        match metrics.current_leader {
            Some(l) if l == self.me => Ok(()),
            leader => Err(leader.and_then(|l| {
                metrics
                    .membership_config
                    .membership()
                    .get_node(&l)
                    .map(|n| n.addr.clone())
            })),
        }
    }

    /// The leader's side of a join: learner first (it catches up), then voter.
    async fn admit(&self, r: JoinRequest) -> Joined {
        let refuse = |message: String, leader: Option<String>| Joined {
            joined: false,
            leader,
            message,
        };
        let _one_at_a_time = self.admit.lock().await;
        if let Err(leader) = self.leading() {
            return refuse("this node is not the cluster leader".into(), leader);
        }
        let known = self.membership().get_node(&r.node).cloned();
        if let Some(node) = known.filter(|n| n.addr != r.member) {
            // Same name (so same id), another address: the member moved. Its record is
            // updated by removing and adding it again, which needs it down; refuse clearly.
            return refuse(
                format!(
                    "node {} is a member at {}; forget it first",
                    member_name(&node),
                    member_addr(&node)
                ),
                None,
            );
        }
        if self.membership().voter_ids().any(|v| v == r.node) {
            return Joined {
                joined: true,
                leader: None,
                message: "already a member".into(),
            };
        }
        let name = member_name(&BasicNode::new(r.member.clone())).to_string();
        let done = self
            .retry(|| async {
                self.raft
                    .add_learner(r.node, BasicNode::new(r.member.clone()), true)
                    .await
                    .map_err(|e| e.to_string())?;
                self.raft
                    .change_membership(
                        openraft::ChangeMembers::AddVoterIds(BTreeSet::from([r.node])),
                        false,
                    )
                    .await
                    .map_err(|e| e.to_string())
                    .map(|_| ())
            })
            .await;
        match done {
            Ok(()) => {
                tracing::info!(node = %name, "admitted to the cluster");
                Joined {
                    joined: true,
                    leader: None,
                    message: String::new(),
                }
            }
            Err(e) => {
                tracing::warn!(node = %name, error = %e, "join refused");
                refuse(e, None)
            }
        }
    }

    /// A membership change, tried a few times: one still committing (a just-elected
    /// leader's own entry, another change) refuses the next for a moment.
    async fn retry<F, Fut>(&self, step: F) -> Result<(), String>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<(), String>>,
    {
        let mut last = String::new();
        for _ in 0..10 {
            match tokio::time::timeout(ADMIT_TIMEOUT, step()).await {
                Ok(Ok(())) => return Ok(()),
                Ok(Err(e)) => last = e,
                Err(_) => last = "timed out".into(),
            }
            if self.stopped() {
                break;
            }
            self.pause(Duration::from_millis(200)).await;
        }
        Err(last)
    }

    /// Remove a member for good (`ctl cluster forget`): a node that is gone and will not
    /// come back, so that it no longer counts towards majorities. Asked of any member; a
    /// follower passes it to the leader.
    pub async fn forget(&self, name: &str) -> Result<(), ForgetError> {
        let m = self.membership();
        let Some((id, node)) = m
            .nodes()
            .find(|(_, n)| member_name(n) == name)
            .map(|(id, n)| (*id, n.clone()))
        else {
            return Err(ForgetError::NotAMember);
        };
        if id == self.me {
            return Err(ForgetError::Itself);
        }
        let request = JoinRequest {
            node: id,
            member: node.addr.clone(),
        };
        let mut answer = self.remove(request.clone()).await;
        for _ in 0..3 {
            let Some(leader) = answer.leader.clone().filter(|_| !answer.joined) else {
                break;
            };
            let addr = member_addr(&BasicNode::new(leader)).to_string();
            answer = self
                .cluster
                .membership_change(&addr, Kind::Forget, CLUSTER_GROUP, &request, ADMIT_TIMEOUT)
                .await
                .map_err(|e| ForgetError::Failed(e.to_string()))?;
        }
        if answer.joined {
            Ok(())
        } else {
            Err(ForgetError::Failed(answer.message))
        }
    }

    /// The leader's side of a forget.
    async fn remove(&self, r: JoinRequest) -> Joined {
        let _one_at_a_time = self.admit.lock().await;
        if let Err(leader) = self.leading() {
            return Joined {
                joined: false,
                message: match leader {
                    Some(_) => "this node is not the cluster leader".into(),
                    None => "the cluster has no leader (no majority is up)".into(),
                },
                leader,
            };
        }
        let ids = BTreeSet::from([r.node]);
        let done = self
            .retry(|| async {
                let m = self.membership();
                if m.voter_ids().any(|v| v == r.node) {
                    self.raft
                        .change_membership(
                            openraft::ChangeMembers::RemoveVoters(ids.clone()),
                            false,
                        )
                        .await
                        .map_err(|e| e.to_string())?;
                }
                if self.membership().get_node(&r.node).is_some() {
                    self.raft
                        .change_membership(openraft::ChangeMembers::RemoveNodes(ids.clone()), false)
                        .await
                        .map_err(|e| e.to_string())?;
                }
                Ok(())
            })
            .await;
        let name = member_name(&BasicNode::new(r.member.clone())).to_string();
        match done {
            Ok(()) => {
                tracing::info!(node = %name, "forgotten by the cluster");
                self.seen.lock().remove(&r.node);
                Joined {
                    joined: true,
                    leader: None,
                    message: String::new(),
                }
            }
            Err(e) => Joined {
                joined: false,
                leader: None,
                message: e,
            },
        }
    }

    /// Ask every other member for its status, every second: who is running.
    async fn watch_members(self: Arc<Self>) {
        while !self.stopped() {
            let others: Vec<(NodeId, String)> = self
                .membership()
                .nodes()
                .filter(|(id, _)| **id != self.me)
                .map(|(id, n)| (*id, member_addr(n).to_string()))
                .collect();
            let answers = join_all(
                others
                    .iter()
                    .map(|(_, addr)| self.cluster.status(addr, CLUSTER_GROUP, STATUS_EVERY)),
            )
            .await;
            {
                let mut seen = self.seen.lock();
                for ((id, _), answer) in others.iter().zip(answers) {
                    match answer {
                        Ok(s) if s.node == *id => {
                            seen.insert(*id, (Instant::now(), s.figures));
                        }
                        _ => {}
                    }
                }
            }
            self.pause(STATUS_EVERY).await;
        }
    }
}

impl Group for ClusterGroup {
    fn vote(
        &self,
        r: openraft::raft::VoteRequest<NodeId>,
    ) -> BoxFuture<'_, Result<openraft::raft::VoteResponse<NodeId>, RemoteFailure>> {
        Group::vote(&self.raft, r)
    }

    fn append(
        &self,
        r: openraft::raft::AppendEntriesRequest<TypeConfig>,
    ) -> BoxFuture<'_, Result<openraft::raft::AppendEntriesResponse<NodeId>, RemoteFailure>> {
        Group::append(&self.raft, r)
    }

    fn snapshot(
        &self,
        r: openraft::raft::InstallSnapshotRequest<TypeConfig>,
    ) -> BoxFuture<'_, Result<openraft::raft::InstallSnapshotResponse<NodeId>, RemoteFailure>> {
        Group::snapshot(&self.raft, r)
    }

    fn status(&self) -> BoxFuture<'_, Result<Status, RemoteFailure>> {
        Box::pin(async move { Ok(self.status_now()) })
    }

    fn join(&self, r: JoinRequest) -> BoxFuture<'_, Result<Joined, RemoteFailure>> {
        Box::pin(async move { Ok(self.admit(r).await) })
    }

    fn forget(&self, r: JoinRequest) -> BoxFuture<'_, Result<Joined, RemoteFailure>> {
        Box::pin(async move { Ok(self.remove(r).await) })
    }
}

/// The cluster group's state machine: how far it applied, and the membership.
struct Machine {
    applied: Option<LogId>,
    membership: StoredMembership,
    path: PathBuf,
}

/// `cluster.snap`: magic, then the applied log id, the membership's log id and the
/// membership, then a CRC32 of all of it.
const MAGIC: &[u8; 4] = b"WQC1";

impl Machine {
    fn open(path: PathBuf) -> Machine {
        let mut m = Machine {
            applied: None,
            membership: StoredMembership::default(),
            path,
        };
        if let Ok(bytes) = std::fs::read(&m.path) {
            match decode(&bytes) {
                Some((applied, membership)) => {
                    m.applied = applied;
                    m.membership = membership;
                }
                None => {
                    tracing::error!(path = %m.path.display(), "cluster snapshot does not check; ignored (the log or the leader brings the state back)")
                }
            }
        }
        m
    }

    fn encode(&self) -> Vec<u8> {
        encode(self.applied.as_ref(), &self.membership)
    }

    fn meta(&self) -> SnapshotMeta<NodeId, BasicNode> {
        SnapshotMeta {
            last_log_id: self.applied,
            last_membership: self.membership.clone(),
            snapshot_id: match self.applied {
                Some(id) => format!("{}-{}", id.leader_id.term, id.index),
                None => "empty".into(),
            },
        }
    }
}

fn encode(applied: Option<&LogId>, membership: &StoredMembership) -> Vec<u8> {
    let mut b = MAGIC.to_vec();
    codec::put_opt_log_id(&mut b, applied);
    codec::put_opt_log_id(&mut b, membership.log_id().as_ref());
    codec::put_membership(&mut b, membership.membership());
    let crc = crc32fast::hash(&b);
    b.extend_from_slice(&crc.to_be_bytes());
    b
}

fn decode(bytes: &[u8]) -> Option<(Option<LogId>, StoredMembership)> {
    let (body, crc) = bytes.split_at_checked(bytes.len().checked_sub(4)?)?;
    if crc32fast::hash(body).to_be_bytes() != crc || !body.starts_with(MAGIC) {
        return None;
    }
    let mut b = &body[MAGIC.len()..];
    let applied = codec::get_opt_log_id(&mut b)?;
    let membership_id = codec::get_opt_log_id(&mut b)?;
    let membership = codec::get_membership(&mut b)?;
    Some((applied, StoredMembership::new(membership_id, membership)))
}

impl RaftStateMachine<TypeConfig> for Machine {
    type SnapshotBuilder = SnapshotFile;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        Ok((self.applied, self.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<()>, StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let mut out = Vec::new();
        for e in entries {
            if let EntryPayload::Membership(m) = &e.payload {
                self.membership = StoredMembership::new(Some(e.log_id), m.clone());
            }
            self.applied = Some(e.log_id);
            out.push(());
        }
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> SnapshotFile {
        SnapshotFile {
            bytes: self.encode(),
            meta: self.meta(),
            path: self.path.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let bytes = snapshot.into_inner();
        if decode(&bytes).is_none() {
            return Err(StorageIOError::read_snapshot(
                Some(meta.signature()),
                AnyError::error("cluster snapshot does not check"),
            )
            .into());
        }
        // The meta is the truth (openraft's); the bytes are kept as they came.
        let bytes = encode(meta.last_log_id.as_ref(), &meta.last_membership);
        write_durably(&self.path, &bytes).map_err(|e| {
            StorageIOError::write_snapshot(Some(meta.signature()), AnyError::new(&e))
        })?;
        self.applied = meta.last_log_id;
        self.membership = meta.last_membership.clone();
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        let Ok(bytes) = std::fs::read(&self.path) else {
            return Ok(None);
        };
        let Some((applied, membership)) = decode(&bytes) else {
            return Ok(None);
        };
        let m = Machine {
            applied,
            membership,
            path: self.path.clone(),
        };
        Ok(Some(Snapshot {
            meta: m.meta(),
            snapshot: Box::new(Cursor::new(bytes)),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_round_trips_and_damage_is_refused() {
        let members = Membership::new(
            vec![[1, 2].into()],
            BTreeMap::from([
                (1, member("127.0.0.1:1", "a")),
                (2, member("127.0.0.1:2", "b")),
            ]),
        );
        let id = LogId::new(openraft::CommittedLeaderId::new(2, 1), 9);
        let sm = StoredMembership::new(Some(id), members);
        let bytes = encode(Some(&id), &sm);
        assert_eq!(decode(&bytes), Some((Some(id), sm)));
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x40;
            assert!(decode(&bad).is_none(), "flipped byte {i}");
        }
        assert!(decode(&bytes[..3]).is_none());
    }
}
