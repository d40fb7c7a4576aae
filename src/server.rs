//! The AMQP listener: accept loop with back-off on errors, a connection limit, and an
//! orderly shutdown (stop accepting, close every connection with 320, flush the store).

use crate::broker::Broker;
use crate::config::Config;
use crate::store::StoreError;
use std::net::SocketAddr;
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
}

/// A running broker.
pub struct ServerHandle {
    /// Where the AMQP listener is bound (useful with port 0).
    pub amqp_addr: SocketAddr,
    pub broker: Arc<Broker>,
    shutdown: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl ServerHandle {
    /// Stop accepting, close every connection with 320 CONNECTION_FORCED, flush, and wait.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        let _ = self.task.await;
    }
}

/// Open the store, bind the listener and start accepting.
pub async fn start(config: Config) -> Result<ServerHandle, ServerError> {
    let addr = config.amqp_addr;
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| ServerError::Bind { addr, source })?;
    let amqp_addr = listener
        .local_addr()
        .map_err(|source| ServerError::Bind { addr, source })?;
    let broker = Broker::open(config)?;
    let (tx, rx) = watch::channel(false);
    let task = tokio::spawn(accept_loop(listener, broker.clone(), rx));
    tracing::info!(%amqp_addr, "AMQP listener started");
    Ok(ServerHandle {
        amqp_addr,
        broker,
        shutdown: tx,
        task,
    })
}

async fn accept_loop(
    listener: TcpListener,
    broker: Arc<Broker>,
    mut shutdown: watch::Receiver<bool>,
) {
    let max = broker.config.max_connections.min(Semaphore::MAX_PERMITS) as u32;
    let limit = Arc::new(Semaphore::new(max as usize));
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
                    tokio::spawn(async move {
                        crate::connection::serve(broker, socket, peer, rx).await;
                        drop(permit);
                    });
                }
                Err(e) => {
                    // EMFILE and friends: keep the listener, wait, try again.
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
