//! The transport between the members of a group: openraft's RPCs over the node's cluster
//! connections (`cluster::transport`). A node that is not clustered has no transport; its
//! groups have one member and never send, and any attempt reports the peer unreachable,
//! which openraft treats as a peer to retry later (never as data loss).

use super::{NodeId, TypeConfig};
use crate::cluster::transport::{CallError, Cluster};
use crate::cluster::wire::{self, Kind, RemoteFailure};
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Timeout, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::BasicNode;
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
#[error("node {0} has no transport to it (this node is not clustered)")]
pub struct NoTransport(NodeId);

/// The network of one group.
#[derive(Clone, Default)]
pub struct Network {
    pub group: u64,
    pub cluster: Option<Arc<Cluster>>,
}

impl Network {
    pub fn new(group: u64, cluster: Option<Arc<Cluster>>) -> Network {
        Network { group, cluster }
    }
}

pub struct Peer {
    target: NodeId,
    node: BasicNode,
    group: u64,
    cluster: Option<Arc<Cluster>>,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Peer;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> Peer {
        Peer {
            target,
            node: node.clone(),
            group: self.group,
            cluster: self.cluster.clone(),
        }
    }
}

type Rpc<T, E = openraft::error::Infallible> =
    Result<T, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>>;

impl Peer {
    async fn call(
        &self,
        kind: Kind,
        body: impl FnOnce(&mut Vec<u8>),
        option: &RPCOption,
    ) -> Result<(Kind, Vec<u8>), CallError> {
        let Some(cluster) = &self.cluster else {
            return Err(CallError::Connect {
                addr: self.node.addr.clone(),
                reason: NoTransport(self.target).to_string(),
            });
        };
        cluster
            .call(
                crate::cluster::member_addr(&self.node),
                kind,
                self.group,
                body,
                option.hard_ttl(),
            )
            .await
    }

    /// openraft's view of a failed call: unreachable peers are retried after a back-off,
    /// timeouts and broken connections at once.
    fn rpc_error<E: std::error::Error>(
        &self,
        e: CallError,
        action: openraft::network::RPCTypes,
        option: &RPCOption,
    ) -> RPCError<NodeId, BasicNode, RaftError<NodeId, E>> {
        match e {
            CallError::Connect { .. }
            | CallError::Remote {
                failure: RemoteFailure::NoGroup | RemoteFailure::Stopped,
                ..
            } => RPCError::Unreachable(Unreachable::new(&e)),
            CallError::Timeout(_) => RPCError::Timeout(Timeout {
                action,
                id: self.cluster.as_ref().map_or(0, |c| c.me),
                target: self.target,
                timeout: option.hard_ttl(),
            }),
            _ => RPCError::Network(NetworkError::new(&e)),
        }
    }

    fn malformed<E: std::error::Error>(&self) -> RPCError<NodeId, BasicNode, RaftError<NodeId, E>> {
        RPCError::Network(NetworkError::new(&CallError::Malformed(
            self.node.addr.clone(),
        )))
    }
}

impl RaftNetwork<TypeConfig> for Peer {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Rpc<AppendEntriesResponse<NodeId>> {
        // A frame holds what fits half the limit (at least one entry); the rest goes in
        // the next request, after openraft hears how far this one got.
        let budget = self
            .cluster
            .as_ref()
            .map_or(usize::MAX, |c| c.max_frame / 2);
        let mut sent = 0;
        let (kind, body) = self
            .call(
                Kind::Append,
                |b| sent = wire::put_append_request(b, &rpc, budget),
                &option,
            )
            .await
            .map_err(|e| self.rpc_error(e, openraft::network::RPCTypes::AppendEntries, &option))?;
        let answer = match kind {
            Kind::AppendOk => wire::get_append_response(&mut &body[..]),
            _ => None,
        }
        .ok_or_else(|| self.malformed())?;
        Ok(match answer {
            AppendEntriesResponse::Success if sent < rpc.entries.len() => {
                AppendEntriesResponse::PartialSuccess(Some(rpc.entries[sent - 1].log_id))
            }
            a => a,
        })
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Rpc<InstallSnapshotResponse<NodeId>, InstallSnapshotError> {
        let answer = self
            .call(
                Kind::Snapshot,
                |b| wire::put_snapshot_request(b, &rpc),
                &option,
            )
            .await;
        let (kind, body) = match answer {
            Ok(a) => a,
            // The receiver expected another segment: openraft starts the transfer again.
            Err(CallError::Remote {
                failure: RemoteFailure::Mismatch(m),
                ..
            }) => {
                return Err(RPCError::RemoteError(RemoteError::new(
                    self.target,
                    RaftError::APIError(InstallSnapshotError::SnapshotMismatch(m)),
                )))
            }
            Err(e) => {
                return Err(self.rpc_error(
                    e,
                    openraft::network::RPCTypes::InstallSnapshot,
                    &option,
                ))
            }
        };
        match kind {
            Kind::SnapshotOk => wire::get_snapshot_response(&mut &body[..]),
            _ => None,
        }
        .ok_or_else(|| self.malformed())
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Rpc<VoteResponse<NodeId>> {
        let (kind, body) = self
            .call(Kind::Vote, |b| wire::put_vote_request(b, &rpc), &option)
            .await
            .map_err(|e| self.rpc_error(e, openraft::network::RPCTypes::Vote, &option))?;
        match kind {
            Kind::VoteOk => wire::get_vote_response(&mut &body[..]),
            _ => None,
        }
        .ok_or_else(|| self.malformed())
    }
}
