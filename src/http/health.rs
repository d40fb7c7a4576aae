//! Health checks: `/api/health/checks/*`, the older `/api/healthchecks/node[/NODE]` and
//! `/api/aliveness-test/VHOST`, answered as RabbitMQ's management API answers them.

use super::authn::Authed;
use super::error::{ApiError, ApiResult};
use super::{Ctx, State};
use crate::auth::{Kind, Perm};
use crate::broker::message::Message;
use crate::broker::queue::inspect::GetMode;
use crate::broker::vhost::QueueDeclare;
use crate::protocol::{BasicProperties, FieldTable};
use axum::extract::Path;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};
use std::sync::Arc;

pub fn routes() -> Router<Arc<Ctx>> {
    Router::new()
        .route("/api/health/checks/alarms", get(alarms))
        .route("/api/health/checks/local-alarms", get(local_alarms))
        .route("/api/health/checks/virtual-hosts", get(ok))
        .route(
            "/api/health/checks/node-is-quorum-critical",
            get(quorum_critical),
        )
        .route(
            "/api/health/checks/node-is-mirror-sync-critical",
            get(mirror_sync_critical),
        )
        .route(
            "/api/health/checks/port-listener/{port}",
            get(port_listener),
        )
        .route(
            "/api/health/checks/storage",
            get(storage).delete(clear_storage),
        )
        .route("/api/healthchecks/node", get(ok))
        // RabbitMQ's route is `/healthchecks/node/[:node]`: an empty segment is this node.
        .route("/api/healthchecks/node/", get(ok))
        .route("/api/healthchecks/node/{node}", get(node))
        .route("/api/aliveness-test/{vhost}", get(aliveness_test))
}

async fn ok(_: Authed) -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// A node that is not clustered, or the only member of its cluster: RabbitMQ's answer
/// to the replica checks.
fn single_node(ctx: &Ctx) -> Option<Json<Value>> {
    let members = ctx.broker.cluster.get().map_or(1, |c| c.members().len());
    (members <= 1).then(|| Json(json!({"status": "ok", "reason": "single node cluster"})))
}

/// Whether stopping this node would cost a quorum queue its majority, as RabbitMQ answers
/// it: 503 listing those queues. A quorum queue's group has its one member on the node that
/// declared it (replicas on other nodes are still to come), so in a cluster every quorum
/// queue of this node is critical.
async fn quorum_critical(axum::extract::State(ctx): State, _: Authed) -> Response {
    if let Some(ok) = single_node(&ctx) {
        return ok.into_response();
    }
    let queues: Vec<Value> = ctx
        .broker
        .vhosts
        .iter()
        .flat_map(|v| {
            v.queues
                .iter()
                .filter(|q| q.raft_group().is_some())
                .map(|q| {
                    json!({
                        "name": q.name(),
                        "readable_name": format!("queue '{}' in vhost '{}'", q.name(), v.name),
                        "virtual_host": v.name,
                        "type": "quorum",
                    })
                })
                .collect::<Vec<_>>()
        })
        .collect();
    if queues.is_empty() {
        return Json(json!({"status": "ok"})).into_response();
    }
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(json!({
            "status": "failed",
            "reason": "There are quorum queues that would lose their quorum if the target node is shut down",
            "queues": queues,
        })),
    )
        .into_response()
}

/// Classic queues are never mirrored here: nothing waits for a mirror to sync.
async fn mirror_sync_critical(axum::extract::State(ctx): State, _: Authed) -> Json<Value> {
    single_node(&ctx).unwrap_or_else(|| Json(json!({"status": "ok"})))
}

async fn node(
    axum::extract::State(ctx): State,
    _: Authed,
    Path(node): Path<String>,
) -> ApiResult<Json<Value>> {
    if node != ctx.node {
        return Err(ApiError::not_found());
    }
    Ok(Json(json!({"status": "ok"})))
}

/// 200 while no damage to stored data is known; 503 with each damaged stretch (file,
/// offset, length, records lost, quarantine copy) until an operator clears it.
async fn storage(axum::extract::State(ctx): State, _: Authed) -> Response {
    let Some(store) = &ctx.broker.store else {
        return Json(json!({"status": "ok"})).into_response();
    };
    let h = store.storage_health();
    if h.open.is_empty() {
        return Json(json!({
            "status": "ok",
            "damaged_records": h.damaged_records,
            "torn_bytes": h.torn_bytes,
        }))
        .into_response();
    }
    let lost: u64 = h.open.iter().map(|d| d.records).sum();
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(json!({
            "status": "failed",
            "reason": format!(
                "damaged stored data found at start: {} stretch(es), {lost} record(s) known lost; \
                 the bytes are kept under messages/quarantine/; DELETE this path to clear",
                h.open.len()
            ),
            "damage": h.open,
        })),
    )
        .into_response()
}

/// The operator has seen the damage: the check passes again, also after restarts.
async fn clear_storage(axum::extract::State(ctx): State, user: Authed) -> ApiResult<StatusCode> {
    user.require_admin()?;
    if let Some(store) = &ctx.broker.store {
        store
            .clear_storage_damage()
            .map_err(|e| ApiError::internal(format!("could not record the clearing: {e}")))?;
    }
    Ok(StatusCode::NO_CONTENT)
}

/// The queue the aliveness test declares and leaves behind, as RabbitMQ's.
const ALIVENESS_QUEUE: &str = "aliveness-test";

/// Declare `aliveness-test` (non-durable), publish one message to it through the default
/// exchange and get it back: the path every message takes, checked end to end.
async fn aliveness_test(
    axum::extract::State(ctx): State,
    user: Authed,
    Path(vhost): Path<String>,
) -> ApiResult<Response> {
    let v = user.vhost(&ctx, &vhost)?;
    for perm in [Perm::Configure, Perm::Write, Perm::Read] {
        user.check(&ctx, &vhost, perm, Kind::Queue, ALIVENESS_QUEUE)?;
    }
    let (q, _) = v.declare_queue(
        QueueDeclare {
            name: ALIVENESS_QUEUE.to_string(),
            passive: false,
            durable: false,
            exclusive: false,
            auto_delete: false,
            arguments: FieldTable::default(),
            server_named: false,
        },
        0,
    )?;
    let payload = "test_message";
    let msg = Message::new(
        String::new(),
        ALIVENESS_QUEUE.to_string(),
        BasicProperties::default(),
        bytes::Bytes::from_static(payload.as_bytes()),
    );
    q.publish(msg);
    let got = q.fetch(1, GetMode::Ack);
    if got
        .first()
        .is_some_and(|(qm, _)| &qm.msg.body[..] == payload.as_bytes())
    {
        Ok(Json(json!({"status": "ok"})).into_response())
    } else {
        Ok((
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "failed", "reason": "the test message did not come back"})),
        )
            .into_response())
    }
}

/// 200 while no alarm is in effect; 503 with the alarms listed, as RabbitMQ answers.
fn alarm_check(ctx: &Ctx, reason: &str) -> Response {
    let state = ctx.broker.alarms.state();
    if !state.any() {
        return Json(json!({"status": "ok"})).into_response();
    }
    let alarms: Vec<Value> = state
        .resources()
        .into_iter()
        .map(|r| json!({"resource": r.name(), "node": ctx.node}))
        .collect();
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(json!({"status": "failed", "reason": reason, "alarms": alarms})),
    )
        .into_response()
}

async fn alarms(axum::extract::State(ctx): State, _: Authed) -> Response {
    alarm_check(&ctx, "There are alarms in effect in the cluster")
}

async fn local_alarms(axum::extract::State(ctx): State, _: Authed) -> Response {
    alarm_check(&ctx, "There are alarms in effect on the node")
}

async fn port_listener(
    axum::extract::State(ctx): State,
    _: Authed,
    Path(port): Path<String>,
) -> ApiResult<Response> {
    let port: u16 = port
        .parse()
        .map_err(|_| ApiError::bad_request(format!("invalid port '{port}'")))?;
    let ports: Vec<u16> = [
        Some(ctx.amqp_addr),
        ctx.amqps_addr,
        Some(ctx.http_addr),
        ctx.https_addr,
        Some(ctx.metrics_addr),
    ]
    .into_iter()
    .flatten()
    .map(|a| a.port())
    .collect();
    Ok(if ports.contains(&port) {
        Json(json!({"status": "ok", "port": port})).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "failed", "reason": "No active listener", "missing": port, "ports": ports})),
        )
            .into_response()
    })
}
