//! The management HTTP API on `--http-addr`: RabbitMQ's `/api` paths, JSON field names and
//! shapes, HTTP Basic auth against the broker's users with RabbitMQ's tag rules, and the
//! dashboard at `/`. One file per resource:
//!
//! - `overview`    — overview, nodes, whoami, health checks
//! - `connections` — connections (DELETE closes), channels, consumers
//! - `exchanges`, `queues`, `bindings` — the AMQP model, HTTP publish and get
//! - `vhosts`, `users`, `permissions`, `policies` — administration
//! - `limits`      — user and vhost limits
//! - `topic_permissions` — topic permissions
//! - `definitions` — export and import (RabbitMQ 3.x format)
//! - `rates`       — counters sampled into message rates
//! - `metrics`     — Prometheus text on `--metrics-addr`
//! - `dashboard`   — the embedded web UI
//! - `tls`         — the same API over TLS on `https_addr`
//!
//! Shared pieces: `error` (`{"error":…,"reason":…}` bodies), `authn` (Basic auth and tags),
//! `json` (field tables and properties as JSON), `list` (page, sort, filter, columns).

mod authn;
mod bindings;
mod connections;
mod dashboard;
pub mod definitions;
mod error;
mod exchanges;
mod health;
mod json;
mod limits;
mod list;
pub mod metrics;
pub mod overview;
mod permissions;
mod policies;
mod queues;
pub mod rates;
pub mod tls;
mod topic_permissions;
mod users;
mod vhosts;

pub use error::ApiError;

use crate::broker::Broker;
use axum::extract::DefaultBodyLimit;
use axum::Router;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// What every handler can reach.
pub struct Ctx {
    pub broker: Arc<Broker>,
    /// The AMQP listener's bound address (listeners in overview, port-listener check).
    pub amqp_addr: SocketAddr,
    /// The amqps listener, when TLS is configured.
    pub amqps_addr: Option<SocketAddr>,
    pub http_addr: SocketAddr,
    /// The management API's TLS listener, when configured.
    pub https_addr: Option<SocketAddr>,
    pub metrics_addr: SocketAddr,
    pub rates: Arc<rates::Rates>,
    /// This node's name (`node_name`, by default `warrenmq@<hostname>`).
    pub node: String,
    /// When the broker started (uptime).
    pub started: std::time::Instant,
}

pub type State = axum::extract::State<Arc<Ctx>>;

/// This host's name (for the node name).
pub fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates on success.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr() as *mut libc::c_char, buf.len()) };
    if rc != 0 {
        return "localhost".into();
    }
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

pub fn router(ctx: Arc<Ctx>) -> Router {
    let max_body = ctx.broker.config.http_max_body;
    Router::new()
        .merge(overview::routes())
        .merge(health::routes())
        .merge(connections::routes())
        .merge(exchanges::routes())
        .merge(queues::routes())
        .merge(bindings::routes())
        .merge(vhosts::routes())
        .merge(users::routes())
        .merge(permissions::routes())
        .merge(policies::routes())
        .merge(limits::routes())
        .merge(topic_permissions::routes())
        .merge(definitions::routes())
        .merge(dashboard::routes())
        .fallback(|| async { ApiError::not_found() })
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(ctx)
}

/// Serve the API until `shutdown` turns true.
pub async fn serve(listener: TcpListener, ctx: Arc<Ctx>, mut shutdown: watch::Receiver<bool>) {
    let app = router(ctx).into_make_service_with_connect_info::<SocketAddr>();
    let res = axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = shutdown.changed().await;
        })
        .await;
    if let Err(e) = res {
        tracing::error!(error = %e, "management HTTP server failed");
    }
}
