//! Vhosts: list (those the user may see), create or update (PUT), delete (administrator).

use super::authn::{Authed, JsonBody};
use super::error::{ApiError, ApiResult};
use super::list::{respond, ListParams, Params};
use super::permissions::permission_json;
use super::{Ctx, State};
use crate::auth::{parse_tags, PermissionRecord};
use crate::broker::vhost::VHost;
use crate::broker::vhosts::VhostRecord;
use axum::extract::Path;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};
use std::sync::Arc;

pub fn routes() -> Router<Arc<Ctx>> {
    Router::new()
        .route("/api/vhosts", get(list))
        .route("/api/vhosts/{name}", get(get_one).put(put).delete(delete))
        .route("/api/vhosts/{name}/permissions", get(permissions))
}

fn vhost_json(ctx: &Ctx, v: &VHost) -> Value {
    let rec = v.settings.read().record.clone();
    let (mut ready, mut unacked) = (0u64, 0u64);
    for q in v.queues.iter() {
        ready += q.depth().0;
        unacked += q.stats.unacked();
    }
    json!({
        "name": v.name,
        "description": rec.description,
        "tags": rec.tags,
        "default_queue_type": ctx.broker.default_queue_type(v),
        "metadata": {"description": rec.description, "tags": rec.tags},
        "tracing": false,
        "cluster_state": {ctx.node.clone(): "running"},
        "messages": ready + unacked,
        "messages_ready": ready,
        "messages_unacknowledged": unacked,
    })
}

async fn list(
    axum::extract::State(ctx): State,
    user: Authed,
    q: Params,
) -> ApiResult<axum::response::Response> {
    let p = ListParams::parse(&q)?;
    let rows: Vec<Arc<VHost>> = ctx
        .broker
        .vhosts
        .iter()
        .filter(|v| user.sees_vhost(&ctx, &v.name))
        .map(|v| v.clone())
        .collect();
    respond(rows, &p, |v| ("", v.name.as_str()), |v| vhost_json(&ctx, v))
}

async fn get_one(
    axum::extract::State(ctx): State,
    user: Authed,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    let v = user.vhost(&ctx, &name)?;
    Ok(Json(vhost_json(&ctx, &v)))
}

async fn put(
    axum::extract::State(ctx): State,
    user: Authed,
    Path(name): Path<String>,
    body: JsonBody,
) -> ApiResult<StatusCode> {
    user.require_admin()?;
    if name.is_empty() {
        return Err(ApiError::bad_request("vhost names must not be empty"));
    }
    let meta = body.0.get("metadata");
    let description = body
        .str("description")
        .or_else(|| {
            meta.and_then(|m| m.get("description"))
                .and_then(|d| d.as_str())
        })
        .unwrap_or("")
        .to_string();
    let tags = parse_tags(
        body.0
            .get("tags")
            .or_else(|| meta.and_then(|m| m.get("tags"))),
    );
    let current = ctx
        .broker
        .vhost(&name)
        .map(|v| v.settings.read().record.clone());
    let limits = current
        .as_ref()
        .map(|r| r.limits.clone())
        .unwrap_or_default();
    // RabbitMQ 3.13 takes it at the top level or in the metadata; a PUT without it keeps
    // the vhost's current one.
    let default_queue_type = match body.str("default_queue_type").or_else(|| {
        meta.and_then(|m| m.get("default_queue_type"))
            .and_then(|d| d.as_str())
    }) {
        Some(t) if crate::broker::vhosts::QUEUE_TYPES.contains(&t) => Some(t.to_string()),
        Some(t) => {
            return Err(ApiError::bad_request(format!(
                "default_queue_type must be one of {}, not '{t}'",
                crate::broker::vhosts::QUEUE_TYPES.join(", ")
            )))
        }
        None => current.and_then(|r| r.default_queue_type),
    };
    let vhost_name = name.clone();
    let created = ctx.broker.put_vhost(VhostRecord {
        name,
        description,
        tags,
        default_queue_type,
        limits,
    });
    if created {
        // As RabbitMQ's management API: whoever creates a vhost may use it at once.
        ctx.broker
            .auth
            .set_permission(PermissionRecord {
                user: user.0.name.clone(),
                vhost: vhost_name,
                configure: ".*".into(),
                write: ".*".into(),
                read: ".*".into(),
            })
            .map_err(|e| ApiError::internal(e.to_string()))?;
    }
    Ok(if created {
        StatusCode::CREATED
    } else {
        StatusCode::NO_CONTENT
    })
}

async fn delete(
    axum::extract::State(ctx): State,
    user: Authed,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    user.require_admin()?;
    if ctx.broker.delete_vhost(&name) {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found())
    }
}

async fn permissions(
    axum::extract::State(ctx): State,
    user: Authed,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    user.require_admin()?;
    ctx.broker.vhost(&name).ok_or_else(ApiError::not_found)?;
    Ok(Json(Value::Array(
        ctx.broker
            .auth
            .permission_records(Some(&name), None)
            .iter()
            .map(permission_json)
            .collect(),
    )))
}
