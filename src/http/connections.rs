//! Connections (`DELETE` closes one with 320), channels and consumers.

use super::authn::Authed;
use super::error::{ApiError, ApiResult};
use super::json::table_to_json;
use super::list::{respond_values, ListParams, Params};
use super::{Ctx, State};
use crate::broker::client::ConnShared;
use crate::broker::delivery::Consumer;
use axum::extract::Path;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

pub fn routes() -> Router<Arc<Ctx>> {
    Router::new()
        .route("/api/connections", get(list_connections))
        .route(
            "/api/connections/{name}",
            get(get_connection).delete(close_connection),
        )
        .route("/api/connections/{name}/channels", get(connection_channels))
        .route("/api/vhosts/{vhost}/connections", get(vhost_connections))
        .route("/api/channels", get(list_channels))
        .route("/api/channels/{name}", get(get_channel))
        .route("/api/vhosts/{vhost}/channels", get(vhost_channels))
        .route("/api/consumers", get(list_consumers))
        .route("/api/consumers/{vhost}", get(vhost_consumers))
}

/// RabbitMQ's connection name: "peer -> listener".
pub fn connection_name(ctx: &Ctx, c: &ConnShared) -> String {
    format!("{} -> {}", c.peer, ctx.amqp_addr)
}

fn connection_json(ctx: &Ctx, c: &ConnShared) -> Value {
    let info = c.info.read();
    let tls = info.tls.as_ref();
    let (recv_rate, send_rate) = ctx.rates.connection_rates(c.id);
    let listener = match tls {
        Some(_) => ctx.amqps_addr.unwrap_or(ctx.amqp_addr),
        None => ctx.amqp_addr,
    };
    json!({
        "name": connection_name(ctx, c),
        "node": ctx.node,
        "vhost": info.vhost,
        "user": info.user,
        "user_who_performed_action": info.user,
        "state": if c.blocked.load(Ordering::Relaxed) { "blocked" } else { "running" },
        "type": "network",
        "protocol": "AMQP 0-9-1",
        "auth_mechanism": info.auth_mechanism,
        "peer_host": c.peer.ip().to_string(),
        "peer_port": c.peer.port(),
        "host": listener.ip().to_string(),
        "port": listener.port(),
        "ssl": tls.is_some(),
        "ssl_protocol": tls.map(|t| t.protocol.as_str()),
        "ssl_key_exchange": tls.map(|t| t.key_exchange.as_str()),
        "ssl_cipher": tls.map(|t| t.cipher.as_str()),
        "ssl_hash": tls.map(|t| t.hash.as_str()),
        "peer_cert_subject": Value::Null,
        "peer_cert_issuer": Value::Null,
        "peer_cert_validity": Value::Null,
        "channels": c.channels.lock().len(),
        "channel_max": info.channel_max,
        "frame_max": c.frame_max(),
        "timeout": c.heartbeat_ms.load(Ordering::Relaxed) / 1000,
        "client_properties": table_to_json(&info.client_properties),
        "connected_at": info.connected_at,
        "published": c.published.load(Ordering::Relaxed),
        "recv_oct": c.recv_oct.load(Ordering::Relaxed),
        "recv_cnt": c.recv_cnt.load(Ordering::Relaxed),
        "send_oct": c.out.send_oct.load(Ordering::Relaxed),
        "send_cnt": c.out.send_cnt.load(Ordering::Relaxed),
        "send_pend": c.out.pending(),
        "recv_oct_details": {"rate": recv_rate},
        "send_oct_details": {"rate": send_rate},
    })
}

/// Open connections this user may see, optionally in one vhost.
fn visible(ctx: &Ctx, user: &Authed, vhost: Option<&str>) -> Vec<Arc<ConnShared>> {
    ctx.broker
        .connections
        .iter()
        .map(|c| c.clone())
        .filter(|c| {
            let info = c.info.read();
            info.open && user.sees_connection(&info.user) && vhost.is_none_or(|v| v == info.vhost)
        })
        .collect()
}

fn find(ctx: &Ctx, user: &Authed, name: &str) -> ApiResult<Arc<ConnShared>> {
    visible(ctx, user, None)
        .into_iter()
        .find(|c| connection_name(ctx, c) == name)
        .ok_or_else(ApiError::not_found)
}

async fn list_connections(
    axum::extract::State(ctx): State,
    user: Authed,
    q: Params,
) -> ApiResult<axum::response::Response> {
    let p = ListParams::parse(&q)?;
    let rows = visible(&ctx, &user, None)
        .iter()
        .map(|c| connection_json(&ctx, c))
        .collect();
    respond_values(rows, &p)
}

async fn vhost_connections(
    axum::extract::State(ctx): State,
    user: Authed,
    Path(vhost): Path<String>,
    q: Params,
) -> ApiResult<axum::response::Response> {
    let p = ListParams::parse(&q)?;
    user.vhost(&ctx, &vhost)?;
    let rows = visible(&ctx, &user, Some(&vhost))
        .iter()
        .map(|c| connection_json(&ctx, c))
        .collect();
    respond_values(rows, &p)
}

async fn get_connection(
    axum::extract::State(ctx): State,
    user: Authed,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    let c = find(&ctx, &user, &name)?;
    Ok(Json(connection_json(&ctx, &c)))
}

async fn close_connection(
    axum::extract::State(ctx): State,
    user: Authed,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    let c = find(&ctx, &user, &name)?;
    if !user.is_admin() && c.info.read().user != user.name() {
        return Err(ApiError::forbidden("Not administrator user"));
    }
    let reason = headers
        .get("x-reason")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("Closed via management plugin");
    c.force_close(reason);
    Ok(StatusCode::NO_CONTENT)
}

/// Consumers per channel (by the channel's address), counted once over all queues.
fn consumers_by_channel(ctx: &Ctx) -> HashMap<usize, usize> {
    let mut m = HashMap::new();
    for v in ctx.broker.vhosts.iter() {
        for q in v.queues.iter() {
            for c in q.consumers() {
                *m.entry(Arc::as_ptr(&c.channel) as usize).or_insert(0) += 1;
            }
        }
    }
    m
}

fn channels_of(ctx: &Ctx, conns: &[Arc<ConnShared>]) -> Vec<Value> {
    let counts = consumers_by_channel(ctx);
    let mut out = Vec::new();
    for c in conns {
        let conn_name = connection_name(ctx, c);
        let info = c.info.read().clone();
        for (n, ch) in c.channels.lock().iter() {
            out.push(json!({
                "name": format!("{conn_name} ({n})"),
                "number": n,
                "node": ctx.node,
                "vhost": info.vhost,
                "user": info.user,
                "state": "running",
                "connection_details": {"name": conn_name, "peer_host": c.peer.ip().to_string(), "peer_port": c.peer.port()},
                "consumer_count": counts.get(&(Arc::as_ptr(ch) as usize)).copied().unwrap_or(0),
                "messages_unacknowledged": ch.deliveries.lock().unacked.len(),
                "global_prefetch_count": ch.global_prefetch.load(Ordering::Relaxed),
                "confirm": ch.confirm.load(Ordering::Relaxed),
                "transactional": ch.transactional.load(Ordering::Relaxed),
                "prefetch_count": ch.consumer_prefetch.load(Ordering::Relaxed),
                "messages_unconfirmed": ch.unconfirmed.load(Ordering::Relaxed),
                "messages_uncommitted": ch.uncommitted_messages.load(Ordering::Relaxed),
                "acks_uncommitted": ch.uncommitted_acks.load(Ordering::Relaxed),
                "pending_raft_commands": 0,
                "user_who_performed_action": info.user,
            }));
        }
    }
    out
}

async fn list_channels(
    axum::extract::State(ctx): State,
    user: Authed,
    q: Params,
) -> ApiResult<axum::response::Response> {
    let p = ListParams::parse(&q)?;
    respond_values(channels_of(&ctx, &visible(&ctx, &user, None)), &p)
}

async fn vhost_channels(
    axum::extract::State(ctx): State,
    user: Authed,
    Path(vhost): Path<String>,
    q: Params,
) -> ApiResult<axum::response::Response> {
    let p = ListParams::parse(&q)?;
    user.vhost(&ctx, &vhost)?;
    respond_values(channels_of(&ctx, &visible(&ctx, &user, Some(&vhost))), &p)
}

async fn connection_channels(
    axum::extract::State(ctx): State,
    user: Authed,
    Path(name): Path<String>,
    q: Params,
) -> ApiResult<axum::response::Response> {
    let p = ListParams::parse(&q)?;
    let c = find(&ctx, &user, &name)?;
    respond_values(channels_of(&ctx, &[c]), &p)
}

async fn get_channel(
    axum::extract::State(ctx): State,
    user: Authed,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    channels_of(&ctx, &visible(&ctx, &user, None))
        .into_iter()
        .find(|c| c["name"] == name.as_str())
        .map(Json)
        .ok_or_else(ApiError::not_found)
}

fn consumer_json(ctx: &Ctx, vhost: &str, queue: &str, c: &Consumer) -> Value {
    let conn = &c.channel.conn;
    let conn_name = connection_name(ctx, conn);
    json!({
        "consumer_tag": c.tag,
        "queue": {"name": queue, "vhost": vhost},
        "channel_details": {
            "name": format!("{conn_name} ({})", c.channel.id),
            "number": c.channel.id,
            "connection_name": conn_name,
            "peer_host": conn.peer.ip().to_string(),
            "peer_port": conn.peer.port(),
            "user": conn.info.read().user,
        },
        "ack_required": !c.no_ack,
        "exclusive": c.exclusive,
        "prefetch_count": c.prefetch,
        "priority": c.priority,
        "active": c.active.load(Ordering::Relaxed),
        "activity_status": "up",
        "arguments": table_to_json(&c.arguments),
    })
}

fn consumers(ctx: &Ctx, user: &Authed, vhost: Option<&str>) -> Vec<Value> {
    let mut out = Vec::new();
    for v in ctx.broker.vhosts.iter() {
        if vhost.is_some_and(|want| want != v.name) || !user.sees_vhost(ctx, &v.name) {
            continue;
        }
        for q in v.queues.iter() {
            for c in q.consumers() {
                out.push(consumer_json(ctx, &v.name, q.name(), &c));
            }
        }
    }
    out
}

async fn list_consumers(
    axum::extract::State(ctx): State,
    user: Authed,
    q: Params,
) -> ApiResult<axum::response::Response> {
    let p = ListParams::parse(&q)?;
    respond_values(consumers(&ctx, &user, None), &p)
}

async fn vhost_consumers(
    axum::extract::State(ctx): State,
    user: Authed,
    Path(vhost): Path<String>,
    q: Params,
) -> ApiResult<axum::response::Response> {
    let p = ListParams::parse(&q)?;
    user.vhost(&ctx, &vhost)?;
    respond_values(consumers(&ctx, &user, Some(&vhost)), &p)
}
