//! Raft on openraft: the groups this node is a member of (one per quorum queue), their
//! shared log and the commands a group's log carries.
//!
//! - `log`     — the node's one Raft log: every group's entries, votes and commit points
//!   in shared segment files, written by one thread with one fsync per round for all
//!   groups (group commit, as the classic message store); recovery and damage checks
//! - `storage` — openraft's log storage trait for one group, over the shared log
//! - `network` — the transport between members (a single-member group needs none)
//! - `codec`   — the binary encoding of entries and commands
//! - `snapshot` — writing a group's snapshot file (shared by every state machine)
//!
//! The state machine of a group is the queue type's own (`broker::queue::quorum`).

pub mod codec;
pub mod log;
pub mod network;
pub mod node;
pub mod snapshot;
pub mod storage;

use crate::broker::message::QueuedMessage;

openraft::declare_raft_types!(
    /// The type configuration of every group of this node.
    pub TypeConfig:
        D = QueueCommand,
        R = (),
        SnapshotData = std::io::Cursor<Vec<u8>>,
);

pub type NodeId = u64;
pub type Raft = openraft::Raft<TypeConfig>;
pub type Entry = openraft::Entry<TypeConfig>;
pub type LogId = openraft::LogId<NodeId>;
pub type Vote = openraft::Vote<NodeId>;
pub type Membership = openraft::Membership<NodeId, openraft::BasicNode>;
pub type StoredMembership = openraft::StoredMembership<NodeId, openraft::BasicNode>;
pub type StorageError = openraft::StorageError<NodeId>;

/// This node's id in every group it is a member of (one node until the cluster exists).
pub const THIS_NODE: NodeId = 1;

/// One round of a quorum queue's changes, proposed by its leader as one log entry: the
/// messages published since the last round, and the ids of those settled, returned and
/// delivered. One entry per round, never one per message.
#[derive(Debug, Clone, Default)]
pub struct QueueCommand {
    /// The leader process that proposed it (`ticket` means something to it only).
    pub origin: u64,
    /// Highest publish ticket among `enqueue`: publisher confirms up to it may go once this
    /// entry is applied.
    pub ticket: u64,
    pub enqueue: Vec<QueuedMessage>,
    /// Acked, dead-lettered, expired or dropped: gone for good.
    pub settle: Vec<u64>,
    /// Returned to the queue: delivery count + 1.
    pub returned: Vec<u64>,
    /// Handed to a consumer: redelivered if it comes back after a restart.
    pub delivered: Vec<u64>,
    /// Dead-lettered at least once: kept (not ready) until every target has it, with the
    /// reason's code (`DeathReason::code`).
    pub dead: Vec<(u64, u8)>,
}

impl QueueCommand {
    pub fn is_empty(&self) -> bool {
        self.enqueue.is_empty()
            && self.settle.is_empty()
            && self.returned.is_empty()
            && self.delivered.is_empty()
            && self.dead.is_empty()
    }
}

/// The openraft configuration of a quorum queue's group.
pub fn group_config(name: &str) -> std::sync::Arc<openraft::Config> {
    let config = openraft::Config {
        cluster_name: name.to_string(),
        heartbeat_interval: 100,
        election_timeout_min: 300,
        election_timeout_max: 600,
        // The state machine's snapshot replaces the log up to it: disk use and recovery
        // time follow the queue's depth, not its history.
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(SNAPSHOT_EVERY),
        max_in_snapshot_log_to_keep: 0,
        purge_batch_size: 1,
        ..Default::default()
    };
    std::sync::Arc::new(config.validate().unwrap_or_default())
}

/// Entries (rounds) between snapshots of a group.
pub const SNAPSHOT_EVERY: u64 = 2048;
