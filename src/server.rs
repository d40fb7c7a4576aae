//! The AMQP listener: accept loop with back-off on errors, a connection limit, and an
//! orderly shutdown (stop accepting, close every connection with 320, flush the store).

use crate::broker::Broker;
use crate::config::Config;
use crate::store::StoreError;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinHandle;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    #[error(transparent)]
    Secret(#[from] crate::cluster::secret::SecretError),
    #[error(transparent)]
    Cluster(#[from] crate::cluster::group::ClusterError),
}

/// A running broker.
pub struct ServerHandle {
    /// Where the AMQP listener is bound (useful with port 0).
    pub amqp_addr: SocketAddr,
    /// Where the amqps listener is bound, when TLS is configured.
    pub amqps_addr: Option<SocketAddr>,
    /// Where the management API's TLS listener is bound, when configured.
    pub https_addr: Option<SocketAddr>,
    /// Where the management HTTP API is bound.
    pub http_addr: SocketAddr,
    /// Where Prometheus metrics are served.
    pub metrics_addr: SocketAddr,
    /// The management API's state (its rates sampler, for tests).
    pub http: Arc<crate::http::Ctx>,
    pub broker: Arc<Broker>,
    shutdown: watch::Sender<bool>,
    task: JoinHandle<()>,
    tls_task: Option<JoinHandle<()>>,
    /// Accept loops of the [::1] twins of loopback listeners.
    twin_tasks: Vec<JoinHandle<()>>,
}

impl ServerHandle {
    /// Stop accepting, close every connection with 320 CONNECTION_FORCED, flush, and wait.
    /// Returns once the store is closed, so the data dir can be opened again at once.
    pub async fn shutdown(self) {
        let closed = self.broker.store.as_ref().map(|s| s.closed());
        let ServerHandle {
            shutdown,
            task,
            tls_task,
            twin_tasks,
            broker,
            http,
            ..
        } = self;
        broker.stop_quorum_groups().await;
        drop((broker, http));
        let _ = shutdown.send(true);
        let _ = task.await;
        if let Some(t) = tls_task {
            let _ = t.await;
        }
        for t in twin_tasks {
            let _ = t.await;
        }
        // Tasks finishing (an in-flight flush, a closing connection) may hold the store a
        // moment longer, and the last holder then runs its final write: wait, bounded, until
        // the store is dropped completely and sled has released the data dir.
        if let Some(mut closed) = closed {
            let gone = async { while closed.changed().await.is_ok() {} };
            if tokio::time::timeout(Duration::from_secs(10), gone)
                .await
                .is_err()
            {
                tracing::warn!("the store is still in use after shutdown");
            }
        }
    }
}

async fn bind(addr: SocketAddr) -> Result<(TcpListener, SocketAddr), ServerError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| ServerError::Bind { addr, source })?;
    let bound = listener
        .local_addr()
        .map_err(|source| ServerError::Bind { addr, source })?;
    Ok((listener, bound))
}

/// The IPv6 twin of a listener bound to 127.0.0.1 on a fixed port: [::1] on the same port.
///
/// `localhost` resolves to ::1 first on many systems (and Node.js, for one, takes the
/// first answer), so a broker reachable on 127.0.0.1 only looks down to those clients;
/// RabbitMQ listens on both families. Still loopback only. Port 0 (tests) gets no twin, and
/// a machine without IPv6 just has none.
async fn loopback_twin(bound: SocketAddr) -> Option<TcpListener> {
    if bound.ip() != IpAddr::V4(Ipv4Addr::LOCALHOST) || bound.port() == 0 {
        return None;
    }
    let twin = SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), bound.port());
    match TcpListener::bind(twin).await {
        Ok(l) => Some(l),
        Err(e) => {
            tracing::info!(%twin, error = %e, "no IPv6 loopback listener");
            None
        }
    }
}

/// Open the store, bind the AMQP, management and metrics listeners and start serving.
pub async fn start(config: Config) -> Result<ServerHandle, ServerError> {
    // Certificates are read before anything is bound, so a bad file fails startup cleanly.
    let amqps_tls = crate::tls::acceptor(&config, crate::tls::Listener::Amqp)?;
    let https_tls = match config.https_addr {
        Some(_) => crate::tls::acceptor(&config, crate::tls::Listener::Http)?,
        None => None,
    };
    let (listener, amqp_addr) = bind(config.amqp_addr).await?;
    let amqp_twin = loopback_twin(config.amqp_addr).await;
    let amqps = match amqps_tls {
        Some(tls) => Some((bind(config.amqps_addr).await?, tls)),
        None => None,
    };
    let amqps_twin = match &amqps {
        Some(_) => loopback_twin(config.amqps_addr).await,
        None => None,
    };
    let https = match (config.https_addr, https_tls) {
        (Some(addr), Some(tls)) => Some((bind(addr).await?, tls)),
        _ => None,
    };
    let (http_listener, http_addr) = bind(config.http_addr).await?;
    let http_twin = loopback_twin(config.http_addr).await;
    let (metrics_listener, metrics_addr) = bind(config.metrics_addr).await?;
    let metrics_twin = loopback_twin(config.metrics_addr).await;
    let broker = Broker::open(config)?;
    if let Some(addr) = broker.config.cluster_addr {
        join_cluster(&broker, addr).await?;
    }
    let (tx, rx) = watch::channel(false);
    let amqps_addr = amqps.as_ref().map(|((_, a), _)| *a);
    let https_addr = https.as_ref().map(|((_, a), _)| *a);
    let ctx = Arc::new(crate::http::Ctx {
        broker: broker.clone(),
        amqp_addr,
        amqps_addr,
        https_addr,
        http_addr,
        metrics_addr,
        rates: Arc::default(),
        node: broker.config.node_name(),
        started: std::time::Instant::now(),
    });
    if let Some(cluster) = broker.cluster.get() {
        // Weak: the management state holds the broker, which holds the cluster group.
        let weak = Arc::downgrade(&ctx);
        cluster.set_figures(Box::new(move || {
            weak.upgrade()
                .map(|ctx| crate::http::overview::figures(&ctx))
                .unwrap_or_default()
        }));
    }
    crate::http::rates::spawn(broker.clone(), ctx.rates.clone(), rx.clone());
    tokio::spawn(crate::broker::alarms::run_sampler(
        broker.alarms.clone(),
        rx.clone(),
    ));
    for l in std::iter::once(http_listener).chain(http_twin) {
        tokio::spawn(crate::http::serve(l, ctx.clone(), rx.clone()));
    }
    for l in std::iter::once(metrics_listener).chain(metrics_twin) {
        tokio::spawn(crate::http::metrics::serve(l, ctx.clone(), rx.clone()));
    }
    if let Some(((l, _), tls)) = https {
        tokio::spawn(crate::http::tls::serve(l, tls, ctx.clone(), rx.clone()));
    }
    // Both AMQP listeners count against one connection limit.
    let limit = Arc::new(Semaphore::new(connection_limit(&broker)));
    let mut twin_tasks = Vec::new();
    if let (Some(l), Some((_, tls))) = (amqps_twin, &amqps) {
        twin_tasks.push(tokio::spawn(accept_loop(
            l,
            broker.clone(),
            rx.clone(),
            limit.clone(),
            Some(tls.clone()),
        )));
    }
    if let Some(l) = amqp_twin {
        twin_tasks.push(tokio::spawn(accept_loop(
            l,
            broker.clone(),
            rx.clone(),
            limit.clone(),
            None,
        )));
    }
    let tls_task = amqps.map(|((l, _), tls)| {
        tokio::spawn(accept_loop(
            l,
            broker.clone(),
            rx.clone(),
            limit.clone(),
            Some(tls),
        ))
    });
    let task = tokio::spawn(accept_loop(listener, broker.clone(), rx, limit, None));
    tracing::info!(%amqp_addr, ?amqps_addr, %http_addr, ?https_addr, %metrics_addr, "listeners started");
    Ok(ServerHandle {
        amqp_addr,
        amqps_addr,
        https_addr,
        http_addr,
        metrics_addr,
        http: ctx,
        broker,
        shutdown: tx,
        task,
        tls_task,
        twin_tasks,
    })
}

/// Start the cluster listener and the cluster group: this node forms or joins the cluster
/// in the background (a cluster that is not there yet never holds up local service).
async fn join_cluster(broker: &Arc<Broker>, addr: SocketAddr) -> Result<(), ServerError> {
    use crate::cluster::{group, secret::Secret, transport::Cluster};
    let config = &broker.config;
    let secret = Secret::load(config.cluster_secret_file.as_deref(), &config.data_dir)?;
    let name = config.node_name();
    let me = crate::cluster::node_id(&name);
    // A frame carries at least one whole entry: room for the largest message, twice (a
    // round holds several), and the rest of the entry.
    let max_frame = (2 * config.max_message_size as usize).saturating_add(16 << 20);
    let cluster = Cluster::start(me, &name, secret, addr, max_frame)
        .await
        .map_err(|source| ServerError::Bind { addr, source })?;
    let advertise = config
        .cluster_advertise
        .clone()
        .unwrap_or_else(|| cluster.addr.to_string());
    // Broker::open always opens the node's Raft log; without it there is nothing to join with.
    let node = broker
        .store
        .as_ref()
        .and_then(|s| s.quorum())
        .cloned()
        .ok_or_else(|| group::ClusterError::Raft("the node's Raft log is not open".into()))?;
    let settings = group::Settings {
        me,
        name: name.clone(),
        advertise: advertise.clone(),
        peers: config.cluster_peers.clone(),
        election_timeout: config.cluster_election_timeout,
    };
    let g = group::ClusterGroup::start(
        settings,
        cluster,
        node.log.clone(),
        node.snapshot_dir.clone(),
    )
    .await?;
    let _ = broker.cluster.set(g);
    tracing::info!(node = %name, cluster_addr = %advertise, "cluster listener started");
    Ok(())
}

fn connection_limit(broker: &Broker) -> usize {
    broker.config.max_connections.min(Semaphore::MAX_PERMITS)
}

/// Accept AMQP connections; with `tls`, each socket first completes a TLS handshake (in its
/// own task, so a slow handshake never holds up the listener).
async fn accept_loop(
    listener: TcpListener,
    broker: Arc<Broker>,
    mut shutdown: watch::Receiver<bool>,
    limit: Arc<Semaphore>,
    tls: Option<crate::tls::TlsAcceptor>,
) {
    let max = connection_limit(&broker) as u32;
    let mut backoff = Duration::from_millis(5);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((socket, peer)) => {
                    backoff = Duration::from_millis(5);
                    let Ok(permit) = limit.clone().try_acquire_owned() else {
                        tracing::warn!(%peer, max, "connection limit reached; refusing connection");
                        drop(socket);
                        continue;
                    };
                    let _ = socket.set_nodelay(true);
                    let broker = broker.clone();
                    let rx = shutdown.clone();
                    let tls = tls.clone();
                    tokio::spawn(async move {
                        match tls {
                            None => crate::connection::serve(broker, socket, peer, rx, None).await,
                            Some(tls) => crate::tls::serve_amqps(tls, broker, socket, peer, rx).await,
                        }
                        drop(permit);
                    });
                }
                // A connection that went away before it was accepted: nothing to wait for.
                Err(e) if matches!(
                    e.kind(),
                    std::io::ErrorKind::ConnectionAborted | std::io::ErrorKind::ConnectionReset
                ) => {
                    tracing::debug!(error = %e, "connection aborted before accept");
                }
                Err(e) => {
                    // EMFILE, ENFILE, ENOBUFS: keep the listener, wait for descriptors or
                    // memory to be released, try again. Never stop serving.
                    tracing::warn!(error = %e, "accept failed; backing off {:?}", backoff);
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
            },
            _ = shutdown.changed() => break,
        }
    }
    drop(listener);
    // Every connection task holds a permit; wait (bounded) until all are returned.
    let _ = tokio::time::timeout(Duration::from_secs(10), limit.acquire_many(max)).await;
    broker.flush();
    tracing::info!("broker stopped");
}
