//! Queues: list (fast paging for many queues), declare (PUT), delete with `if-empty` /
//! `if-unused`, bindings, purge (`DELETE …/contents`) and get (`POST …/get`).

use super::authn::{Authed, JsonBody};
use super::bindings::vhost_bindings;
use super::error::{ApiError, ApiResult};
use super::json::{json_to_table, properties_to_json, table_to_json};
use super::list::{respond, ListParams, Params, Row};
use super::rates::{message_stats, MessageStats, Rate};
use super::{Ctx, State};
use crate::auth::permissions::queue_declare_needs;
use crate::auth::{Kind, Perm};
use crate::broker::queue::inspect::GetMode;
use crate::broker::queue::Queue;
use crate::broker::vhost::{QueueDeclare, VHost};
use axum::extract::Path;
use axum::http::StatusCode;
use axum::routing::{delete as delete_route, get, post};
use axum::{Json, Router};
use base64::Engine;
use serde::Serialize;
use serde_json::{json, Value};
use std::sync::Arc;

pub fn routes() -> Router<Arc<Ctx>> {
    Router::new()
        .route("/api/queues", get(list_all))
        .route("/api/queues/{vhost}", get(list_vhost))
        .route(
            "/api/queues/{vhost}/{name}",
            get(get_one).put(declare).delete(delete),
        )
        .route("/api/queues/{vhost}/{name}/bindings", get(bindings))
        .route("/api/queues/{vhost}/{name}/contents", delete_route(purge))
        .route("/api/queues/{vhost}/{name}/get", post(get_messages))
}

/// A queue as the API shows it, serialized without building a JSON tree (lists of
/// 10,000 queues are rendered in one go).
#[derive(Serialize)]
pub struct QueueRow {
    name: String,
    vhost: String,
    durable: bool,
    auto_delete: bool,
    exclusive: bool,
    arguments: Value,
    node: String,
    state: &'static str,
    #[serde(rename = "type")]
    kind: &'static str,
    consumers: u32,
    messages: u64,
    messages_details: Rate,
    messages_ready: u64,
    messages_ready_details: Rate,
    messages_unacknowledged: u64,
    messages_unacknowledged_details: Rate,
    message_bytes: u64,
    message_bytes_ready: u64,
    /// Where the messages are, with RabbitMQ's names: in memory (ready ones held in memory
    /// plus the unacknowledged, which always are) or paged out to disk. The byte counts are
    /// of the ready messages' bodies.
    messages_ram: u64,
    messages_ready_ram: u64,
    messages_unacknowledged_ram: u64,
    message_bytes_ram: u64,
    messages_paged_out: u64,
    message_bytes_paged_out: u64,
    effective_policy_definition: serde_json::Map<String, Value>,
    message_stats: MessageStats,
    policy: Option<String>,
    operator_policy: Option<String>,
    /// Records of this queue lost to storage damage found at start (see the storage
    /// health check); not a RabbitMQ field.
    storage_lost_records: u64,
    /// Quorum queues: the leader and members of the queue's Raft group, as RabbitMQ shows.
    #[serde(skip_serializing_if = "Option::is_none")]
    leader: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    members: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    online: Option<Vec<String>>,
    /// Quorum queues: Raft log entries kept since the last snapshot (not a RabbitMQ field).
    #[serde(skip_serializing_if = "Option::is_none")]
    raft_log_entries: Option<usize>,
    /// Quorum queues: messages dead-lettered at least once and not yet taken by every
    /// target (kept in the queue until then), and their body bytes, as RabbitMQ shows.
    #[serde(skip_serializing_if = "Option::is_none")]
    messages_dlx: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    message_bytes_dlx: Option<u64>,
}

impl Row for QueueRow {
    fn field(&self, path: &str) -> Option<Value> {
        let rate = |r: &Rate| Some(json!(r.rate));
        match path {
            "name" => Some(json!(self.name)),
            "vhost" => Some(json!(self.vhost)),
            "messages" => Some(json!(self.messages)),
            "messages_ready" => Some(json!(self.messages_ready)),
            "messages_unacknowledged" => Some(json!(self.messages_unacknowledged)),
            "consumers" => Some(json!(self.consumers)),
            "message_bytes" => Some(json!(self.message_bytes)),
            "message_stats.publish_details.rate" => rate(&self.message_stats.publish_details),
            "message_stats.deliver_get_details.rate" => {
                rate(&self.message_stats.deliver_get_details)
            }
            "message_stats.ack_details.rate" => rate(&self.message_stats.ack_details),
            other => serde_json::to_value(self)
                .ok()
                .and_then(|v| other.split('.').try_fold(v, |v, k| v.get(k).cloned())),
        }
    }
}

pub fn queue_row(ctx: &Ctx, v: &VHost, q: &Queue) -> QueueRow {
    let (ready, bytes, consumers) = q.depth();
    let info = q.kind_info();
    let repl = info.replicated.as_ref();
    let (ready_ram, bytes_ram) = q.ready_in_memory();
    let ready_ram = (ready_ram as u64).min(ready);
    let unacked = q.stats.unacked();
    let rates = ctx.rates.queue_rates(&v.name, q.name());
    let depth = ctx.rates.queue_depth_rates(&v.name, q.name());
    let policies = if v.settings.read().no_queue_policies() {
        None
    } else {
        Some(v.queue_policies(q))
    };
    let (policy, operator_policy, effective_policy_definition) = match policies {
        Some(p) => (p.policy, p.operator_policy, p.definition),
        None => Default::default(),
    };
    QueueRow {
        name: q.name().to_string(),
        vhost: v.name.clone(),
        durable: q.spec.durable,
        auto_delete: q.spec.auto_delete,
        exclusive: q.spec.exclusive_owner.is_some(),
        arguments: table_to_json(&q.spec.arguments),
        node: ctx.node.clone(),
        state: if info.down { "down" } else { "running" },
        kind: info.type_name,
        consumers,
        messages: ready + unacked,
        messages_details: Rate::of(depth.ready_rate + depth.unacked_rate),
        messages_ready: ready,
        messages_ready_details: Rate::of(depth.ready_rate),
        messages_unacknowledged: unacked,
        messages_unacknowledged_details: Rate::of(depth.unacked_rate),
        message_bytes: bytes,
        message_bytes_ready: bytes,
        messages_ram: ready_ram + unacked,
        messages_ready_ram: ready_ram,
        messages_unacknowledged_ram: unacked,
        message_bytes_ram: bytes_ram,
        messages_paged_out: ready - ready_ram,
        message_bytes_paged_out: bytes.saturating_sub(bytes_ram),
        effective_policy_definition,
        message_stats: message_stats(&q.stats.counts(), &rates),
        policy,
        operator_policy,
        storage_lost_records: match (&ctx.broker.store, q.spec.store_id) {
            (Some(store), Some(id)) => store.lost_records(id),
            _ => 0,
        },
        leader: repl.map(|r| {
            if r.has_leader {
                ctx.node.clone()
            } else {
                String::new()
            }
        }),
        members: repl.map(|_| vec![ctx.node.clone()]),
        online: repl.map(|_| {
            if info.down {
                Vec::new()
            } else {
                vec![ctx.node.clone()]
            }
        }),
        raft_log_entries: repl.map(|r| r.log_entries),
        messages_dlx: repl.map(|r| r.dead_letter_pending.0),
        message_bytes_dlx: repl.map(|r| r.dead_letter_pending.1),
    }
}

fn rows(ctx: &Ctx, user: &Authed, only: Option<&str>) -> Vec<(Arc<VHost>, Arc<Queue>)> {
    let mut out = Vec::new();
    for v in ctx.broker.vhosts.iter() {
        if only.is_some_and(|o| o != v.name) || !user.sees_vhost(ctx, &v.name) {
            continue;
        }
        out.reserve(v.queues.len());
        for q in v.queues.iter() {
            out.push((v.clone(), q.clone()));
        }
    }
    out
}

async fn list_all(
    axum::extract::State(ctx): State,
    user: Authed,
    q: Params,
) -> ApiResult<axum::response::Response> {
    let p = ListParams::parse(&q)?;
    respond(
        rows(&ctx, &user, None),
        &p,
        |(v, q)| (v.name.as_str(), q.name()),
        |(v, q)| queue_row(&ctx, v, q),
    )
}

async fn list_vhost(
    axum::extract::State(ctx): State,
    user: Authed,
    Path(vhost): Path<String>,
    q: Params,
) -> ApiResult<axum::response::Response> {
    let p = ListParams::parse(&q)?;
    user.vhost(&ctx, &vhost)?;
    respond(
        rows(&ctx, &user, Some(&vhost)),
        &p,
        |(v, q)| (v.name.as_str(), q.name()),
        |(v, q)| queue_row(&ctx, v, q),
    )
}

fn find(v: &VHost, name: &str) -> ApiResult<Arc<Queue>> {
    v.queues
        .get(name)
        .map(|q| q.clone())
        .ok_or_else(ApiError::not_found)
}

async fn get_one(
    axum::extract::State(ctx): State,
    user: Authed,
    Path((vhost, name)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    let v = user.vhost(&ctx, &vhost)?;
    let q = find(&v, &name)?;
    Ok(Json(json!(queue_row(&ctx, &v, &q))))
}

async fn declare(
    axum::extract::State(ctx): State,
    user: Authed,
    Path((vhost, name)): Path<(String, String)>,
    body: JsonBody,
) -> ApiResult<StatusCode> {
    let v = user.vhost(&ctx, &vhost)?;
    if name.is_empty() || name.len() > 255 {
        return Err(ApiError::bad_request("queue names are 1 to 255 bytes"));
    }
    let arguments = json_to_table(body.0.get("arguments")).map_err(ApiError::bad_request)?;
    for (perm, k, res) in queue_declare_needs(&name, &arguments) {
        user.check(&ctx, &vhost, perm, k, &res)?;
    }
    let mut declare = QueueDeclare {
        name,
        passive: false,
        durable: body.bool("durable")?.unwrap_or(true),
        exclusive: false,
        auto_delete: body.bool("auto_delete")?.unwrap_or(false),
        arguments,
        server_named: false,
    };
    ctx.broker.apply_default_queue_type(&v, &mut declare);
    let (_, created) = v.declare_queue(declare, 0)?;
    Ok(if created {
        StatusCode::CREATED
    } else {
        StatusCode::NO_CONTENT
    })
}

async fn delete(
    axum::extract::State(ctx): State,
    user: Authed,
    Path((vhost, name)): Path<(String, String)>,
    q: Params,
) -> ApiResult<StatusCode> {
    let v = user.vhost(&ctx, &vhost)?;
    user.check(&ctx, &vhost, Perm::Configure, Kind::Queue, &name)?;
    find(&v, &name)?;
    let flag = |k: &str| q.get(k).is_some_and(|v| v == "true");
    v.delete_queue(&name, flag("if-unused"), flag("if-empty"), 0)?;
    Ok(StatusCode::NO_CONTENT)
}

async fn bindings(
    axum::extract::State(ctx): State,
    user: Authed,
    Path((vhost, name)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    let v = user.vhost(&ctx, &vhost)?;
    find(&v, &name)?;
    Ok(Json(Value::Array(
        vhost_bindings(&v)
            .into_iter()
            .filter(|b| b["destination"] == name.as_str() && b["destination_type"] == "queue")
            .collect(),
    )))
}

async fn purge(
    axum::extract::State(ctx): State,
    user: Authed,
    Path((vhost, name)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    let v = user.vhost(&ctx, &vhost)?;
    user.check(&ctx, &vhost, Perm::Read, Kind::Queue, &name)?;
    v.queue(&name, 0)?.purge();
    Ok(StatusCode::NO_CONTENT)
}

async fn get_messages(
    axum::extract::State(ctx): State,
    user: Authed,
    Path((vhost, name)): Path<(String, String)>,
    body: JsonBody,
) -> ApiResult<Json<Value>> {
    let v = user.vhost(&ctx, &vhost)?;
    user.check(&ctx, &vhost, Perm::Read, Kind::Queue, &name)?;
    let q = v.queue(&name, 0)?;
    let count = body
        .0
        .get("count")
        .and_then(|c| {
            c.as_u64()
                .or_else(|| c.as_str().and_then(|s| s.parse().ok()))
        })
        .ok_or_else(|| ApiError::bad_request("count is required"))?;
    let mode = match body.str("ackmode") {
        Some("ack_requeue_true" | "reject_requeue_true") => GetMode::Requeue,
        Some("ack_requeue_false") => GetMode::Ack,
        Some("reject_requeue_false") => GetMode::Reject,
        _ => {
            return Err(ApiError::bad_request(
                "ackmode must be ack_requeue_true, ack_requeue_false, reject_requeue_true or reject_requeue_false",
            ))
        }
    };
    let encoding = body.str("encoding").unwrap_or("auto");
    if !matches!(encoding, "auto" | "base64") {
        return Err(ApiError::bad_request("encoding must be auto or base64"));
    }
    let truncate = body
        .0
        .get("truncate")
        .and_then(|t| t.as_u64())
        .map(|t| t as usize);
    let msgs = q.fetch(count.min(10_000) as usize, mode);
    let out = msgs
        .iter()
        .map(|(qm, left)| {
            let m = &qm.msg;
            let body = &m.body[..truncate.map_or(m.body.len(), |t| t.min(m.body.len()))];
            let (payload, enc) = match std::str::from_utf8(body) {
                Ok(s) if encoding == "auto" => (s.to_string(), "string"),
                _ => (
                    base64::engine::general_purpose::STANDARD.encode(body),
                    "base64",
                ),
            };
            json!({
                "payload_bytes": m.body.len(),
                "redelivered": qm.redelivered,
                "exchange": m.exchange,
                "routing_key": m.routing_key,
                "message_count": left,
                "properties": properties_to_json(&m.properties),
                "payload": payload,
                "payload_encoding": enc,
            })
        })
        .collect();
    Ok(Json(Value::Array(out)))
}
