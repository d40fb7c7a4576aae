//! `GET /api/overview`, `/api/nodes`, `/api/whoami`, `/api/cluster-name`, and
//! `DELETE /api/cluster/nodes/{node}` (forget a cluster member).

use super::authn::{Authed, JsonBody};
use super::error::{ApiError, ApiResult};
use super::rates::{message_stats, Rate};
use super::{metrics, Ctx, State};
use crate::cluster::wire::Figures;
use axum::extract::Path;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};
use std::sync::Arc;

/// The RabbitMQ release whose management API this one follows (tools key features on it).
pub const RABBITMQ_VERSION: &str = "3.13.7";

pub fn routes() -> Router<Arc<Ctx>> {
    Router::new()
        .route("/api/overview", get(overview))
        .route("/api/nodes", get(nodes))
        .route("/api/nodes/{node}", get(node))
        .route(
            "/api/cluster/nodes/{node}",
            axum::routing::delete(forget_node),
        )
        .route("/api/whoami", get(whoami))
        .route(
            "/api/extensions",
            get(|_: Authed| async { Json(json!([])) }),
        )
        .route("/api/cluster-name", get(cluster_name).put(set_cluster_name))
}

/// Depth totals over the queues a user may see.
pub fn queue_totals(ctx: &Ctx, user: &Authed) -> (u64, u64, usize, usize) {
    let (mut ready, mut unacked, mut queues, mut consumers) = (0, 0, 0, 0);
    for v in ctx.broker.vhosts.iter() {
        if !user.sees_vhost(ctx, &v.name) {
            continue;
        }
        for q in v.queues.iter() {
            let (r, _, c) = q.depth();
            ready += r;
            unacked += q.stats.unacked();
            queues += 1;
            consumers += c as usize;
        }
    }
    (ready, unacked, queues, consumers)
}

async fn overview(axum::extract::State(ctx): State, user: Authed) -> Json<Value> {
    let (ready, unacked, queues, consumers) = queue_totals(&ctx, &user);
    let exchanges: usize = ctx
        .broker
        .vhosts
        .iter()
        .filter(|v| user.sees_vhost(&ctx, &v.name))
        .map(|v| v.exchanges.len())
        .sum();
    let (conns, channels) = ctx
        .broker
        .connections
        .iter()
        .filter(|c| user.sees_connection(&c.info.read().user))
        .fold((0, 0), |(n, ch), c| (n + 1, ch + c.channels.lock().len()));
    let (counts, rates) = ctx.rates.overall(&ctx.broker);
    let depth = ctx.rates.overall_depth_rates();
    let listener = |protocol: &str, addr: std::net::SocketAddr| json!({"node": ctx.node, "protocol": protocol, "ip_address": addr.ip().to_string(), "port": addr.port()});
    let listeners: Vec<Value> = [
        Some(listener("amqp", ctx.amqp_addr)),
        ctx.amqps_addr.map(|a| listener("amqp/ssl", a)),
        Some(listener("http", ctx.http_addr)),
        ctx.https_addr.map(|a| listener("https", a)),
        Some(listener("http/prometheus", ctx.metrics_addr)),
    ]
    .into_iter()
    .flatten()
    .collect();
    Json(json!({
        "management_version": RABBITMQ_VERSION,
        "rabbitmq_version": RABBITMQ_VERSION,
        "product_name": "WarrenMQ",
        "product_version": env!("CARGO_PKG_VERSION"),
        "erlang_version": "n/a",
        "rates_mode": "basic",
        "cluster_name": ctx.broker.cluster_name(),
        "node": ctx.node,
        "exchange_types": [
            {"name": "direct", "description": "AMQP direct exchange", "enabled": true},
            {"name": "fanout", "description": "AMQP fanout exchange", "enabled": true},
            {"name": "headers", "description": "AMQP headers exchange", "enabled": true},
            {"name": "topic", "description": "AMQP topic exchange", "enabled": true},
        ],
        "object_totals": {
            "connections": conns,
            "channels": channels,
            "consumers": consumers,
            "exchanges": exchanges,
            "queues": queues,
        },
        "queue_totals": {
            "messages": ready + unacked,
            "messages_details": Rate::of(depth.ready_rate + depth.unacked_rate),
            "messages_ready": ready,
            "messages_ready_details": Rate::of(depth.ready_rate),
            "messages_unacknowledged": unacked,
            "messages_unacknowledged_details": Rate::of(depth.unacked_rate),
        },
        "message_stats": message_stats(&counts, &rates),
        "listeners": listeners,
        "contexts": [{"node": ctx.node, "description": "WarrenMQ Management", "path": "/", "port": ctx.http_addr.port().to_string()}],
        "statistics_db_event_queue": 0,
    }))
}

/// This node's resources and alarms, as `/api/nodes` shows them and status answers carry
/// them to the other members.
pub fn figures(ctx: &Ctx) -> Figures {
    let alarms = &ctx.broker.alarms;
    let state = alarms.state();
    let (fd_used, fd_total) = file_descriptors();
    Figures {
        mem_used: metrics::rss_bytes(),
        mem_limit: alarms.memory_limit(),
        disk_free: metrics::disk_free(&ctx.broker.config.data_dir),
        disk_free_limit: alarms.disk_free_limit(),
        fd_used,
        fd_total,
        sockets_used: ctx.broker.connections.len() as u64,
        uptime_ms: ctx.started.elapsed().as_millis() as u64,
        os_pid: u64::from(std::process::id()),
        mem_alarm: state.memory,
        disk_free_alarm: state.disk,
    }
}

/// Open descriptors of this process and its limit.
fn file_descriptors() -> (u64, u64) {
    let used = std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count() as u64);
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into the struct it is given.
    let total = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0 {
        lim.rlim_cur
    } else {
        0
    };
    (used, total)
}

/// A node's entry in `/api/nodes`, RabbitMQ's fields.
fn figures_json(name: &str, f: &Figures) -> Value {
    json!({
        "name": name,
        "type": "disc",
        "running": true,
        "os_pid": f.os_pid.to_string(),
        "mem_used": f.mem_used,
        "mem_limit": f.mem_limit,
        "mem_alarm": f.mem_alarm,
        "disk_free": f.disk_free,
        "disk_free_limit": f.disk_free_limit,
        "disk_free_alarm": f.disk_free_alarm,
        "fd_used": f.fd_used,
        "fd_total": f.fd_total,
        "sockets_used": f.sockets_used,
        "uptime": f.uptime_ms,
        "run_queue": 0,
        "partitions": [],
        "applications": [],
    })
}

fn node_json(ctx: &Ctx) -> Value {
    let mut v = figures_json(&ctx.node, &figures(ctx));
    v["processors"] = json!(std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1));
    v
}

/// Every node: this one in full; the other cluster members with the figures of their last
/// status answer (name, address and role only while they do not answer).
fn nodes_json(ctx: &Ctx) -> Vec<Value> {
    let Some(cluster) = ctx.broker.cluster.get() else {
        return vec![node_json(ctx)];
    };
    cluster
        .members()
        .into_iter()
        .map(|m| {
            let mut v = match (&m.figures, m.me) {
                (_, true) => {
                    let mut v = node_json(ctx);
                    v["cluster_peers_refused"] = json!(cluster
                        .cluster
                        .refused
                        .load(std::sync::atomic::Ordering::Relaxed));
                    v
                }
                (Some(f), false) => figures_json(&m.name, f),
                (None, false) => json!({"name": m.name, "type": "disc", "running": false}),
            };
            v["cluster_addr"] = json!(m.addr);
            v["raft_voter"] = json!(m.voter);
            v["raft_leader"] = json!(m.leader);
            v
        })
        .collect()
}

async fn nodes(axum::extract::State(ctx): State, user: Authed) -> ApiResult<Json<Value>> {
    user.require_monitor()?;
    Ok(Json(json!(nodes_json(&ctx))))
}

async fn node(
    axum::extract::State(ctx): State,
    user: Authed,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    user.require_monitor()?;
    nodes_json(&ctx)
        .into_iter()
        .find(|n| n["name"] == name.as_str())
        .map(Json)
        .ok_or_else(ApiError::not_found)
}

/// `DELETE /api/cluster/nodes/{node}` (`ctl cluster forget`): remove a member that is
/// gone for good, so that majorities are counted without it. Administrators only.
async fn forget_node(
    axum::extract::State(ctx): State,
    user: Authed,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    use crate::cluster::group::ForgetError;
    user.require_admin()?;
    let Some(cluster) = ctx.broker.cluster.get() else {
        return Err(ApiError::bad_request("this node is not clustered"));
    };
    match cluster.forget(&name).await {
        Ok(()) => Ok(StatusCode::NO_CONTENT),
        Err(ForgetError::NotAMember) => Err(ApiError::not_found()),
        Err(e @ ForgetError::Itself) => Err(ApiError::bad_request(e.to_string())),
        Err(e) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            e.to_string(),
        )),
    }
}

async fn whoami(user: Authed) -> Json<Value> {
    Json(json!({"name": user.0.name, "tags": user.0.tags}))
}

async fn cluster_name(axum::extract::State(ctx): State, _: Authed) -> Json<Value> {
    Json(json!({"name": ctx.broker.cluster_name()}))
}

/// `PUT /api/cluster-name` `{"name": …}`: administrators only; new connections see it in
/// `connection.start`, as in RabbitMQ.
async fn set_cluster_name(
    axum::extract::State(ctx): State,
    user: Authed,
    body: JsonBody,
) -> ApiResult<StatusCode> {
    user.require_admin()?;
    let name = body
        .str("name")
        .filter(|n| !n.is_empty() && n.len() <= 255)
        .ok_or_else(|| ApiError::bad_request("name must be a string of 1 to 255 bytes"))?;
    ctx.broker.set_cluster_name(name.to_string());
    Ok(StatusCode::NO_CONTENT)
}
