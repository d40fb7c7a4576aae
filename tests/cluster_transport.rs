//! The inter-node transport: openraft's RPCs between two nodes over real TCP, refused
//! without the cluster secret, bounded in frame size, and reconnected after a peer restarts.

mod common;

use common::within;
use openraft::error::RPCError;
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{BasicNode, CommittedLeaderId, EntryPayload};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use warrenmq::cluster::secret::Secret;
use warrenmq::cluster::transport::{BoxFuture, Cluster, Group};
use warrenmq::cluster::wire::RemoteFailure;
use warrenmq::raft::network::Network;
use warrenmq::raft::{Entry, LogId, NodeId, QueueCommand, TypeConfig, Vote};

const SECRET: &[u8] = b"a-cluster-secret-for-tests";

/// A group that answers every RPC the same way and counts what reached it.
#[derive(Default)]
struct Echo {
    calls: AtomicUsize,
    entries: AtomicUsize,
}

impl Group for Echo {
    fn vote(
        &self,
        r: VoteRequest<NodeId>,
    ) -> BoxFuture<'_, Result<VoteResponse<NodeId>, RemoteFailure>> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        Box::pin(async move {
            Ok(VoteResponse {
                vote: r.vote,
                vote_granted: true,
                last_log_id: r.last_log_id,
            })
        })
    }

    fn append(
        &self,
        r: AppendEntriesRequest<TypeConfig>,
    ) -> BoxFuture<'_, Result<AppendEntriesResponse<NodeId>, RemoteFailure>> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.entries.fetch_add(r.entries.len(), Ordering::SeqCst);
        Box::pin(async move { Ok(AppendEntriesResponse::Success) })
    }

    fn snapshot(
        &self,
        r: InstallSnapshotRequest<TypeConfig>,
    ) -> BoxFuture<'_, Result<InstallSnapshotResponse<NodeId>, RemoteFailure>> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        Box::pin(async move { Ok(InstallSnapshotResponse { vote: r.vote }) })
    }
}

async fn node(name: &str, secret: &[u8], addr: &str, max_frame: usize) -> Arc<Cluster> {
    let id = warrenmq::cluster::node_id(name);
    Cluster::start(
        id,
        name,
        Secret::new(secret).unwrap(),
        addr.parse().unwrap(),
        max_frame,
    )
    .await
    .expect("cluster listener binds")
}

fn option() -> RPCOption {
    RPCOption::new(Duration::from_secs(5))
}

fn entry(index: u64, body_len: usize) -> Entry {
    let qm = warrenmq::broker::message::QueuedMessage {
        seq: 0,
        msg: warrenmq::broker::message::Message::new(
            "".into(),
            "q".into(),
            Default::default(),
            bytes::Bytes::from(vec![index as u8; body_len]),
        ),
        redelivered: false,
        deadline: None,
        delivery_count: 0,
        stored: None,
    };
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(1, 7), index),
        payload: EntryPayload::Normal(QueueCommand {
            enqueue: vec![qm],
            ..Default::default()
        }),
    }
}

async fn peer(from: &Arc<Cluster>, group: u64, to: &Arc<Cluster>) -> warrenmq::raft::network::Peer {
    let mut net = Network::new(group, Some(from.clone()));
    net.new_client(to.me, &BasicNode::new(to.addr.to_string()))
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rpc_reaches_the_named_group_on_the_peer_and_its_answer_comes_back() {
    let a = node("warrenmq@a", SECRET, "127.0.0.1:0", 1 << 20).await;
    let b = node("warrenmq@b", SECRET, "127.0.0.1:0", 1 << 20).await;
    let echo = Arc::new(Echo::default());
    b.register(5, echo.clone());
    let mut p = peer(&a, 5, &b).await;

    let vote = Vote::new(3, a.me);
    let r = within(
        "vote",
        p.vote(
            VoteRequest {
                vote,
                last_log_id: None,
            },
            option(),
        ),
    )
    .await
    .unwrap();
    assert!(r.vote_granted);
    assert_eq!(r.vote, vote);

    let r = within(
        "append",
        p.append_entries(
            AppendEntriesRequest {
                vote,
                prev_log_id: None,
                entries: (1..=10).map(|i| entry(i, 1000)).collect(),
                leader_commit: None,
            },
            option(),
        ),
    )
    .await
    .unwrap();
    assert_eq!(r, AppendEntriesResponse::Success);
    assert_eq!(echo.entries.load(Ordering::SeqCst), 10);

    // Many requests at once share the one connection and each gets its own answer.
    let mut handles = Vec::new();
    for i in 0..50u64 {
        let mut p = peer(&a, 5, &b).await;
        handles.push(tokio::spawn(async move {
            p.vote(
                VoteRequest {
                    vote: Vote::new(i, 1),
                    last_log_id: None,
                },
                option(),
            )
            .await
            .map(|r| r.vote.leader_id.term == i)
        }));
    }
    for h in handles {
        assert!(within("pipelined vote", h).await.unwrap().unwrap());
    }

    // A group the peer does not have is unreachable (openraft retries it later).
    let mut none = peer(&a, 6, &b).await;
    let e = within(
        "vote to a missing group",
        none.vote(
            VoteRequest {
                vote,
                last_log_id: None,
            },
            option(),
        ),
    )
    .await
    .unwrap_err();
    assert!(matches!(e, RPCError::Unreachable(_)), "{e:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_beyond_the_frame_budget_go_as_a_partial_success() {
    let a = node("warrenmq@a", SECRET, "127.0.0.1:0", 64 * 1024).await;
    let b = node("warrenmq@b", SECRET, "127.0.0.1:0", 64 * 1024).await;
    let echo = Arc::new(Echo::default());
    b.register(1, echo.clone());
    let mut p = peer(&a, 1, &b).await;
    let entries: Vec<Entry> = (1..=20).map(|i| entry(i, 10_000)).collect();
    let r = within(
        "append",
        p.append_entries(
            AppendEntriesRequest {
                vote: Vote::new(1, 7),
                prev_log_id: None,
                entries,
                leader_commit: None,
            },
            option(),
        ),
    )
    .await
    .unwrap();
    let sent = echo.entries.load(Ordering::SeqCst) as u64;
    assert!((1..20).contains(&sent), "a prefix went: {sent}");
    assert_eq!(
        r,
        AppendEntriesResponse::PartialSuccess(Some(LogId::new(CommittedLeaderId::new(1, 7), sent)))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_without_the_secret_gets_nothing_through() {
    let a = node(
        "warrenmq@a",
        b"not-the-cluster-secret!!",
        "127.0.0.1:0",
        1 << 20,
    )
    .await;
    let b = node("warrenmq@b", SECRET, "127.0.0.1:0", 1 << 20).await;
    let echo = Arc::new(Echo::default());
    b.register(1, echo.clone());
    let mut p = peer(&a, 1, &b).await;
    let e = within(
        "vote",
        p.vote(
            VoteRequest {
                vote: Vote::new(1, 1),
                last_log_id: None,
            },
            option(),
        ),
    )
    .await
    .unwrap_err();
    assert!(matches!(e, RPCError::Unreachable(_)), "{e:?}");
    // A raw client that sends frames without a handshake is dropped, unanswered.
    let mut raw = tokio::net::TcpStream::connect(b.addr).await.unwrap();
    let frame = warrenmq::cluster::wire::frame(warrenmq::cluster::wire::Kind::Vote, 1, 1, |b| {
        warrenmq::cluster::wire::put_vote_request(
            b,
            &VoteRequest {
                vote: Vote::new(1, 1),
                last_log_id: None,
            },
        )
    });
    raw.write_all(&frame).await.unwrap();
    let mut buf = Vec::new();
    let _ = within("raw client dropped", raw.read_to_end(&mut buf)).await;
    assert_eq!(
        echo.calls.load(Ordering::SeqCst),
        0,
        "no RPC reached the group"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_frame_from_an_authenticated_peer_drops_the_connection() {
    let b = node("warrenmq@b", SECRET, "127.0.0.1:0", 4096).await;
    let mut raw = tokio::net::TcpStream::connect(b.addr).await.unwrap();
    let secret = Secret::new(SECRET).unwrap();
    within(
        "handshake",
        warrenmq::cluster::secret::connect(&mut raw, &secret, 42, "warrenmq@raw"),
    )
    .await
    .unwrap();
    // A length far beyond the limit: the node must not try to read (or allocate) it.
    raw.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let n = within("connection dropped", raw.read_to_end(&mut buf))
        .await
        .unwrap_or(0);
    assert_eq!(n, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_was_down_is_reached_again_once_it_is_back() {
    let a = node("warrenmq@a", SECRET, "127.0.0.1:0", 1 << 20).await;
    let b = node("warrenmq@b", SECRET, "127.0.0.1:0", 1 << 20).await;
    let addr = b.addr;
    let target = BasicNode::new(addr.to_string());
    b.register(1, Arc::new(Echo::default()));
    let vote = || VoteRequest {
        vote: Vote::new(1, 1),
        last_log_id: None,
    };
    let mut net = Network::new(1, Some(a.clone()));
    let mut p = net.new_client(b.me, &target).await;
    within("vote", p.vote(vote(), option())).await.unwrap();
    b.stop();
    drop(b);
    // Down: unreachable, or the connection broke under the call; never an answer.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        if within("vote while down", p.vote(vote(), option()))
            .await
            .is_err()
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the peer stopped answering"
        );
        tokio::task::yield_now().await;
    }
    let b = node("warrenmq@b", SECRET, &addr.to_string(), 1 << 20).await;
    b.register(1, Arc::new(Echo::default()));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match within("vote after restart", p.vote(vote(), option())).await {
            Ok(r) => {
                assert!(r.vote_granted);
                break;
            }
            Err(e) => assert!(std::time::Instant::now() < deadline, "never back: {e:?}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
