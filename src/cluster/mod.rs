//! The cluster: nodes that know each other by name and address, prove the shared secret to
//! each other, and carry every Raft group's RPCs over one connection per pair of nodes.
//!
//! - `secret`    — the cluster secret and the challenge-response handshake
//! - `wire`      — the frames: openraft's vote, append-entries and install-snapshot
//! - `transport` — the listener, the connections to peers, dispatch to this node's groups
//! - `group`     — the cluster group: one Raft group of every node, its membership is the
//!   cluster's; forming, joining, and which members answer

pub mod group;
pub mod secret;
pub mod transport;
pub mod wire;

use crate::raft::NodeId;
use openraft::BasicNode;

/// A member as Raft memberships record it: `<cluster address> <node name>`, so a member
/// that is down is still known by name.
pub fn member(addr: &str, name: &str) -> BasicNode {
    BasicNode::new(format!("{addr} {name}"))
}

/// Where a member's cluster listener is.
pub fn member_addr(node: &BasicNode) -> &str {
    node.addr.split(' ').next().unwrap_or_default()
}

/// A member's node name (its address when the record has none).
pub fn member_name(node: &BasicNode) -> &str {
    node.addr
        .split_once(' ')
        .map_or(node.addr.as_str(), |(_, name)| name)
}

/// A node's id in every Raft group, from its name: stable across restarts and addresses,
/// the same on every node that knows the name. Never 0, and never `raft::THIS_NODE` (the
/// id of a node that is not clustered).
pub fn node_id(name: &str) -> NodeId {
    // FNV-1a: stable across builds and platforms (std's hasher is not).
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h | (1 << 63)
}

/// `warrenmq@<hostname>`, RabbitMQ's `rabbit@<hostname>` in our name.
pub fn default_node_name() -> String {
    format!("warrenmq@{}", crate::http::hostname())
}
