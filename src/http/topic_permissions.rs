//! Topic permissions (administrator only): `/api/topic-permissions`, per vhost and user
//! (GET, PUT one exchange's patterns, DELETE all of them), and the per-user and per-vhost
//! lists.

use super::authn::{Authed, JsonBody};
use super::error::{ApiError, ApiResult};
use super::list::{respond_values, ListParams, Params};
use super::{Ctx, State};
use crate::auth::topic::TopicPermissionRecord;
use axum::extract::Path;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use serde_json::{json, Value};
use std::sync::Arc;

pub fn routes() -> Router<Arc<Ctx>> {
    Router::new()
        .route("/api/topic-permissions", get(list))
        .route(
            "/api/topic-permissions/{vhost}/{user}",
            get(get_one).put(put).delete(delete),
        )
        .route("/api/users/{user}/topic-permissions", get(of_user))
        .route("/api/vhosts/{vhost}/topic-permissions", get(of_vhost))
}

pub fn topic_permission_json(p: &TopicPermissionRecord) -> Value {
    json!({"user": p.user, "vhost": p.vhost, "exchange": p.exchange, "write": p.write, "read": p.read})
}

fn rows(ctx: &Ctx, vhost: Option<&str>, user: Option<&str>) -> Vec<Value> {
    ctx.broker
        .auth
        .topic_permission_records(vhost, user)
        .iter()
        .map(topic_permission_json)
        .collect()
}

async fn list(
    axum::extract::State(ctx): State,
    user: Authed,
    q: Params,
) -> ApiResult<axum::response::Response> {
    user.require_admin()?;
    respond_values(rows(&ctx, None, None), &ListParams::parse(&q)?)
}

fn known(ctx: &Ctx, vhost: Option<&str>, user: Option<&str>) -> ApiResult<()> {
    if vhost.is_some_and(|v| ctx.broker.vhost(v).is_none())
        || user.is_some_and(|u| ctx.broker.auth.user(u).is_none())
    {
        return Err(ApiError::not_found());
    }
    Ok(())
}

async fn get_one(
    axum::extract::State(ctx): State,
    user: Authed,
    Path((vhost, name)): Path<(String, String)>,
    q: Params,
) -> ApiResult<axum::response::Response> {
    user.require_admin()?;
    known(&ctx, Some(&vhost), Some(&name))?;
    let found = rows(&ctx, Some(&vhost), Some(&name));
    if found.is_empty() {
        return Err(ApiError::not_found());
    }
    respond_values(found, &ListParams::parse(&q)?)
}

async fn of_user(
    axum::extract::State(ctx): State,
    user: Authed,
    Path(name): Path<String>,
    q: Params,
) -> ApiResult<axum::response::Response> {
    user.require_admin()?;
    known(&ctx, None, Some(&name))?;
    respond_values(rows(&ctx, None, Some(&name)), &ListParams::parse(&q)?)
}

async fn of_vhost(
    axum::extract::State(ctx): State,
    user: Authed,
    Path(vhost): Path<String>,
    q: Params,
) -> ApiResult<axum::response::Response> {
    user.require_admin()?;
    known(&ctx, Some(&vhost), None)?;
    respond_values(rows(&ctx, Some(&vhost), None), &ListParams::parse(&q)?)
}

/// Set one exchange's topic permission from a PUT or definitions body.
pub fn set_from_json(ctx: &Ctx, vhost: &str, user: &str, body: &Value) -> ApiResult<bool> {
    known(ctx, Some(vhost), Some(user))?;
    let field = |k: &str| -> ApiResult<String> {
        body.get(k)
            .and_then(|v| v.as_str())
            .map(str::to_string)
            .ok_or_else(|| ApiError::bad_request(format!("{k} is required")))
    };
    let rec = TopicPermissionRecord {
        user: user.to_string(),
        vhost: vhost.to_string(),
        exchange: field("exchange")?,
        write: field("write")?,
        read: field("read")?,
    };
    let existed = ctx
        .broker
        .auth
        .topic_permission_records(Some(vhost), Some(user))
        .iter()
        .any(|r| r.exchange == rec.exchange);
    ctx.broker
        .auth
        .set_topic_permission(rec)
        .map_err(|e| ApiError::bad_request(format!("invalid pattern: {e}")))?;
    Ok(!existed)
}

async fn put(
    axum::extract::State(ctx): State,
    user: Authed,
    Path((vhost, name)): Path<(String, String)>,
    body: JsonBody,
) -> ApiResult<StatusCode> {
    user.require_admin()?;
    Ok(if set_from_json(&ctx, &vhost, &name, &body.0)? {
        StatusCode::CREATED
    } else {
        StatusCode::NO_CONTENT
    })
}

async fn delete(
    axum::extract::State(ctx): State,
    user: Authed,
    Path((vhost, name)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    user.require_admin()?;
    known(&ctx, Some(&vhost), Some(&name))?;
    if !ctx.broker.auth.clear_topic_permissions(&vhost, &name) {
        return Err(ApiError::not_found());
    }
    Ok(StatusCode::NO_CONTENT)
}
