//! Connections between nodes. Each node listens on its cluster address; a node sending
//! RPCs to another keeps one connection to it, made on first use and again after a
//! failure, and every group's requests share it, pipelined by request id (a writer task
//! coalesces frames into as few writes as the socket takes). Requests arriving on an
//! accepted connection are answered by the group they name, each in its own task, so a
//! long snapshot install never holds up a heartbeat.
//!
//! Nothing is read from a peer before it proved the cluster secret (`secret`), and no
//! frame longer than `max_frame` is read at all: the connection is dropped instead.

use super::secret::{self, Secret};
use super::wire::{self, Kind, RemoteFailure};
use crate::raft::{NodeId, TypeConfig};
use dashmap::DashMap;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};

/// How long connecting to a peer may take before it counts as unreachable.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Frames queued for one connection's writer before senders wait.
const WRITE_QUEUE: usize = 1024;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What answers a group's RPCs on this node (its Raft instance).
pub trait Group: Send + Sync + 'static {
    fn vote(
        &self,
        r: VoteRequest<NodeId>,
    ) -> BoxFuture<'_, Result<VoteResponse<NodeId>, RemoteFailure>>;
    fn append(
        &self,
        r: AppendEntriesRequest<TypeConfig>,
    ) -> BoxFuture<'_, Result<AppendEntriesResponse<NodeId>, RemoteFailure>>;
    fn snapshot(
        &self,
        r: InstallSnapshotRequest<TypeConfig>,
    ) -> BoxFuture<'_, Result<InstallSnapshotResponse<NodeId>, RemoteFailure>>;

    /// The cluster group's "are you in a cluster?" (other groups have no such question).
    fn status(&self) -> BoxFuture<'_, Result<wire::Status, RemoteFailure>> {
        Box::pin(async { Err(RemoteFailure::NoGroup) })
    }

    /// The cluster group's "let me in".
    fn join(&self, _r: wire::JoinRequest) -> BoxFuture<'_, Result<wire::Joined, RemoteFailure>> {
        Box::pin(async { Err(RemoteFailure::NoGroup) })
    }

    /// The cluster group's "remove that node".
    fn forget(&self, _r: wire::JoinRequest) -> BoxFuture<'_, Result<wire::Joined, RemoteFailure>> {
        Box::pin(async { Err(RemoteFailure::NoGroup) })
    }
}

impl Group for crate::raft::Raft {
    fn vote(
        &self,
        r: VoteRequest<NodeId>,
    ) -> BoxFuture<'_, Result<VoteResponse<NodeId>, RemoteFailure>> {
        Box::pin(async move { self.vote(r).await.map_err(|_| RemoteFailure::Stopped) })
    }

    fn append(
        &self,
        r: AppendEntriesRequest<TypeConfig>,
    ) -> BoxFuture<'_, Result<AppendEntriesResponse<NodeId>, RemoteFailure>> {
        Box::pin(async move {
            self.append_entries(r)
                .await
                .map_err(|_| RemoteFailure::Stopped)
        })
    }

    fn snapshot(
        &self,
        r: InstallSnapshotRequest<TypeConfig>,
    ) -> BoxFuture<'_, Result<InstallSnapshotResponse<NodeId>, RemoteFailure>> {
        Box::pin(async move {
            self.install_snapshot(r).await.map_err(|e| match e {
                openraft::error::RaftError::APIError(
                    openraft::error::InstallSnapshotError::SnapshotMismatch(m),
                ) => RemoteFailure::Mismatch(m),
                _ => RemoteFailure::Stopped,
            })
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("cannot connect to {addr}: {reason}")]
    Connect { addr: String, reason: String },
    #[error("the connection to {0} closed before the answer came")]
    Closed(String),
    #[error("no answer from {0} in time")]
    Timeout(String),
    #[error("{0} sent a malformed answer")]
    Malformed(String),
    #[error("{addr}: {failure}")]
    Remote {
        addr: String,
        failure: RemoteFailure,
    },
}

/// This node's side of the cluster: identity, secret, the groups it answers for and its
/// connections to peers.
pub struct Cluster {
    pub me: NodeId,
    pub name: String,
    secret: Secret,
    /// Longest frame read or sent; longer is a broken or hostile peer.
    pub max_frame: usize,
    groups: DashMap<u64, Arc<dyn Group>>,
    links: DashMap<String, Arc<Link>>,
    /// Where the listener is bound.
    pub addr: SocketAddr,
    stop: tokio::sync::watch::Sender<bool>,
    /// Peers whose handshake failed (a wrong secret, garbage): shown in `/api/nodes`.
    pub refused: AtomicU64,
}

impl Cluster {
    /// Bind the cluster listener and start accepting peers.
    pub async fn start(
        me: NodeId,
        name: &str,
        secret: Secret,
        addr: SocketAddr,
        max_frame: usize,
    ) -> std::io::Result<Arc<Cluster>> {
        let listener = TcpListener::bind(addr).await?;
        let cluster = Arc::new(Cluster {
            me,
            name: name.to_string(),
            secret,
            max_frame,
            groups: DashMap::new(),
            links: DashMap::new(),
            addr: listener.local_addr()?,
            stop: tokio::sync::watch::channel(false).0,
            refused: AtomicU64::new(0),
        });
        let weak = Arc::downgrade(&cluster);
        let mut stop = cluster.stop.subscribe();
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    a = listener.accept() => a,
                    _ = stop.changed() => return,
                };
                let Some(cluster) = weak.upgrade() else {
                    return;
                };
                match accepted {
                    Ok((stream, peer)) => {
                        let _ = stream.set_nodelay(true);
                        tokio::spawn(async move { cluster.serve(stream, peer).await });
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cluster listener accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        });
        Ok(cluster)
    }

    /// Stop accepting peers and drop the connections to them.
    pub fn stop(&self) {
        let _ = self.stop.send(true);
        self.links.clear();
    }

    /// Answer `group`'s RPCs with `handler` from now on.
    pub fn register(&self, group: u64, handler: Arc<dyn Group>) {
        self.groups.insert(group, handler);
    }

    pub fn unregister(&self, group: u64) {
        self.groups.remove(&group);
    }

    /// An accepted connection: handshake, then answer requests until it closes.
    async fn serve(self: Arc<Self>, mut stream: TcpStream, peer: SocketAddr) {
        let hello = match secret::accept(&mut stream, &self.secret, self.me, &self.name).await {
            Ok(h) => h,
            Err(e) => {
                self.refused.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%peer, error = %e, "cluster peer refused");
                return;
            }
        };
        tracing::debug!(%peer, node = %hello.name, "cluster peer connected");
        let (mut read, write) = stream.into_split();
        let (tx, rx) = mpsc::channel::<Vec<u8>>(WRITE_QUEUE);
        tokio::spawn(write_frames(write, rx));
        let mut stop = self.stop.subscribe();
        loop {
            let frame = tokio::select! {
                f = read_frame(&mut read, self.max_frame) => f,
                _ = stop.changed() => return,
            };
            let frame = match frame {
                Ok(f) => f,
                Err(e) => {
                    if e.kind() != std::io::ErrorKind::UnexpectedEof {
                        tracing::warn!(%peer, error = %e, "cluster connection dropped");
                    }
                    return;
                }
            };
            let mut b = &frame[..];
            let Some((kind, id, group)) = wire::header(&mut b).filter(|h| h.0.is_request()) else {
                tracing::warn!(%peer, "malformed cluster frame: connection dropped");
                return;
            };
            let handler = self.groups.get(&group).map(|g| g.clone());
            let tx = tx.clone();
            let max_frame = self.max_frame;
            tokio::spawn(async move {
                let answer = answer(handler, kind, id, group, &frame[wire::HEADER..]).await;
                match answer {
                    Some(a) if a.len() <= max_frame + 4 => {
                        let _ = tx.send(a).await;
                    }
                    Some(_) => tracing::error!(group, "an answer exceeds the frame limit"),
                    None => tracing::warn!(group, "malformed cluster request ignored"),
                }
            });
        }
    }

    /// Send one request to the node at `addr` and wait for its answer (the answer's kind
    /// and body).
    pub async fn call(
        &self,
        addr: &str,
        kind: Kind,
        group: u64,
        body: impl FnOnce(&mut Vec<u8>),
        timeout: Duration,
    ) -> Result<(Kind, Vec<u8>), CallError> {
        let link = self
            .links
            .entry(addr.to_string())
            .or_insert_with(|| {
                Arc::new(Link {
                    addr: addr.to_string(),
                    conn: tokio::sync::Mutex::new(None),
                })
            })
            .clone();
        let conn = link.connected(self).await?;
        let id = conn.next.fetch_add(1, Ordering::Relaxed);
        let frame = wire::frame(kind, id, group, body);
        let (tx, rx) = oneshot::channel();
        conn.pending.lock().insert(id, tx);
        let closed = || CallError::Closed(addr.to_string());
        if conn.tx.send(frame).await.is_err() {
            conn.pending.lock().remove(&id);
            return Err(closed());
        }
        let answer = match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(a)) => a,
            Ok(Err(_)) => return Err(closed()),
            Err(_) => {
                conn.pending.lock().remove(&id);
                return Err(CallError::Timeout(addr.to_string()));
            }
        };
        let mut b = &answer[..];
        match wire::header(&mut b) {
            Some((Kind::Error, _, _)) => Err(match wire::get_failure(&mut b) {
                Some(failure) => CallError::Remote {
                    addr: addr.to_string(),
                    failure,
                },
                None => CallError::Malformed(addr.to_string()),
            }),
            Some((k, _, _)) => Ok((k, answer[wire::HEADER..].to_vec())),
            None => Err(CallError::Malformed(addr.to_string())),
        }
    }
}

impl Cluster {
    /// Ask the node at `addr` about its cluster group.
    pub async fn status(
        &self,
        addr: &str,
        group: u64,
        timeout: Duration,
    ) -> Result<wire::Status, CallError> {
        let (kind, body) = self
            .call(addr, Kind::Status, group, |_| {}, timeout)
            .await?;
        match kind {
            Kind::StatusOk => wire::get_status(&mut &body[..]),
            _ => None,
        }
        .ok_or_else(|| CallError::Malformed(addr.to_string()))
    }

    /// Ask the node at `addr` to admit `r.node` to its cluster group (`Kind::Join`) or to
    /// remove it (`Kind::Forget`).
    pub async fn membership_change(
        &self,
        addr: &str,
        kind: Kind,
        group: u64,
        r: &wire::JoinRequest,
        timeout: Duration,
    ) -> Result<wire::Joined, CallError> {
        let (kind, body) = self
            .call(addr, kind, group, |b| wire::put_join_request(b, r), timeout)
            .await?;
        match kind {
            Kind::Joined => wire::get_joined(&mut &body[..]),
            _ => None,
        }
        .ok_or_else(|| CallError::Malformed(addr.to_string()))
    }
}

/// A request's answer frame (None: the request did not decode).
async fn answer(
    handler: Option<Arc<dyn Group>>,
    kind: Kind,
    id: u64,
    group: u64,
    mut body: &[u8],
) -> Option<Vec<u8>> {
    let failure =
        |f: RemoteFailure| wire::frame(Kind::Error, id, group, |b| wire::put_failure(b, &f));
    Some(match kind {
        Kind::Vote => {
            let r = wire::get_vote_request(&mut body)?;
            let Some(h) = handler else {
                return Some(failure(RemoteFailure::NoGroup));
            };
            match h.vote(r).await {
                Ok(a) => wire::frame(Kind::VoteOk, id, group, |b| wire::put_vote_response(b, &a)),
                Err(f) => failure(f),
            }
        }
        Kind::Append => {
            let r = wire::get_append_request(&mut body)?;
            let Some(h) = handler else {
                return Some(failure(RemoteFailure::NoGroup));
            };
            match h.append(r).await {
                Ok(a) => wire::frame(Kind::AppendOk, id, group, |b| {
                    wire::put_append_response(b, &a)
                }),
                Err(f) => failure(f),
            }
        }
        Kind::Snapshot => {
            let r = wire::get_snapshot_request(&mut body)?;
            let Some(h) = handler else {
                return Some(failure(RemoteFailure::NoGroup));
            };
            match h.snapshot(r).await {
                Ok(a) => wire::frame(Kind::SnapshotOk, id, group, |b| {
                    wire::put_snapshot_response(b, &a)
                }),
                Err(f) => failure(f),
            }
        }
        Kind::Status => {
            let Some(h) = handler else {
                return Some(failure(RemoteFailure::NoGroup));
            };
            match h.status().await {
                Ok(a) => wire::frame(Kind::StatusOk, id, group, |b| wire::put_status(b, &a)),
                Err(f) => failure(f),
            }
        }
        Kind::Join | Kind::Forget => {
            let r = wire::get_join_request(&mut body)?;
            let Some(h) = handler else {
                return Some(failure(RemoteFailure::NoGroup));
            };
            let answer = match kind {
                Kind::Join => h.join(r).await,
                _ => h.forget(r).await,
            };
            match answer {
                Ok(a) => wire::frame(Kind::Joined, id, group, |b| wire::put_joined(b, &a)),
                Err(f) => failure(f),
            }
        }
        _ => return None,
    })
}

/// The connection to one peer address, made when first needed.
struct Link {
    addr: String,
    conn: tokio::sync::Mutex<Option<Arc<Conn>>>,
}

struct Conn {
    tx: mpsc::Sender<Vec<u8>>,
    pending: Arc<parking_lot::Mutex<HashMap<u64, oneshot::Sender<Vec<u8>>>>>,
    next: AtomicU64,
    alive: Arc<std::sync::atomic::AtomicBool>,
}

impl Link {
    async fn connected(&self, cluster: &Cluster) -> Result<Arc<Conn>, CallError> {
        let mut slot = self.conn.lock().await;
        if let Some(c) = slot.as_ref().filter(|c| c.alive.load(Ordering::Acquire)) {
            return Ok(c.clone());
        }
        let fail = |reason: String| CallError::Connect {
            addr: self.addr.clone(),
            reason,
        };
        let mut stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&self.addr))
            .await
            .map_err(|_| fail("timed out".into()))?
            .map_err(|e| fail(e.to_string()))?;
        let _ = stream.set_nodelay(true);
        secret::connect(&mut stream, &cluster.secret, cluster.me, &cluster.name)
            .await
            .map_err(|e| fail(e.to_string()))?;
        let (mut read, write) = stream.into_split();
        let (tx, rx) = mpsc::channel(WRITE_QUEUE);
        let conn = Arc::new(Conn {
            tx,
            pending: Default::default(),
            next: AtomicU64::new(1),
            alive: Arc::new(true.into()),
        });
        tokio::spawn(write_frames(write, rx));
        let (pending, alive, max_frame) =
            (conn.pending.clone(), conn.alive.clone(), cluster.max_frame);
        let addr = self.addr.clone();
        tokio::spawn(async move {
            loop {
                match read_frame(&mut read, max_frame).await {
                    Ok(frame) => {
                        let mut b = &frame[..];
                        let Some((_, id, _)) = wire::header(&mut b) else {
                            break;
                        };
                        if let Some(tx) = pending.lock().remove(&id) {
                            let _ = tx.send(frame);
                        }
                    }
                    Err(e) => {
                        tracing::debug!(%addr, error = %e, "cluster connection closed");
                        break;
                    }
                }
            }
            alive.store(false, Ordering::Release);
            // Every waiting call learns the connection is gone.
            pending.lock().clear();
        });
        *slot = Some(conn.clone());
        Ok(conn)
    }
}

/// One frame: its length (checked against `max`), then that many bytes.
async fn read_frame<R: AsyncRead + Unpin>(r: &mut R, max: usize) -> std::io::Result<Vec<u8>> {
    let len = r.read_u32().await? as usize;
    if len < wire::HEADER || len > max {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("frame of {len} bytes (limit {max})"),
        ));
    }
    let mut frame = vec![0u8; len];
    r.read_exact(&mut frame).await?;
    Ok(frame)
}

/// Write queued frames, as many per flush as are waiting.
async fn write_frames<W: AsyncWrite + Unpin>(w: W, mut rx: mpsc::Receiver<Vec<u8>>) {
    let mut w = BufWriter::with_capacity(64 * 1024, w);
    while let Some(f) = rx.recv().await {
        if w.write_all(&f).await.is_err() {
            return;
        }
        while let Ok(f) = rx.try_recv() {
            if w.write_all(&f).await.is_err() {
                return;
            }
        }
        if w.flush().await.is_err() {
            return;
        }
    }
}
