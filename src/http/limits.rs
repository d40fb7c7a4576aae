//! User and vhost limits (RabbitMQ 3.8+): `/api/user-limits` (`max-connections`,
//! `max-channels`) and `/api/vhost-limits` (`max-connections`, `max-queues`). A negative
//! value means no limit, 0 allows none. They are enforced at connection.open,
//! channel.open and queue.declare (see `connection::handshake`, `broker::vhost`).

use super::authn::{Authed, JsonBody};
use super::error::{ApiError, ApiResult};
use super::{Ctx, State};
use axum::extract::Path;
use axum::http::StatusCode;
use axum::routing::{get, put};
use axum::{Json, Router};
use serde_json::{json, Map, Value};
use std::sync::Arc;

const USER_LIMITS: &[&str] = &["max-connections", "max-channels"];
const VHOST_LIMITS: &[&str] = &["max-connections", "max-queues"];

pub fn routes() -> Router<Arc<Ctx>> {
    Router::new()
        .route("/api/user-limits", get(user_limits))
        .route("/api/user-limits/{user}", get(one_user_limits))
        .route(
            "/api/user-limits/{user}/{name}",
            put(put_user_limit).delete(delete_user_limit),
        )
        .route("/api/vhost-limits", get(vhost_limits))
        .route("/api/vhost-limits/{vhost}", get(one_vhost_limits))
        .route(
            "/api/vhost-limits/{vhost}/{name}",
            put(put_vhost_limit).delete(delete_vhost_limit),
        )
}

/// `{"value": N}` with N an integer, for a limit RabbitMQ knows.
fn limit_value(known: &[&str], name: &str, body: &JsonBody) -> ApiResult<i64> {
    if !known.contains(&name) {
        return Err(ApiError::bad_request(format!(
            "Validation failed\n\nUnrecognised terms [{{<<\"{name}\">>,...}}] in limits\n"
        )));
    }
    body.0
        .get("value")
        .and_then(Value::as_i64)
        .ok_or_else(|| ApiError::bad_request("value must be an integer"))
}

fn user_rows(ctx: &Ctx, only: Option<&str>) -> Vec<Value> {
    ctx.broker
        .auth
        .users()
        .iter()
        .filter(|u| !u.limits.is_empty() && only.is_none_or(|n| n == u.name))
        .map(|u| json!({"user": u.name, "value": u.limits}))
        .collect()
}

async fn user_limits(axum::extract::State(ctx): State, user: Authed) -> ApiResult<Json<Value>> {
    user.require_admin()?;
    Ok(Json(Value::Array(user_rows(&ctx, None))))
}

async fn one_user_limits(
    axum::extract::State(ctx): State,
    user: Authed,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    user.require_admin()?;
    ctx.broker
        .auth
        .user(&name)
        .ok_or_else(ApiError::not_found)?;
    Ok(Json(Value::Array(user_rows(&ctx, Some(&name)))))
}

/// Change one user limit (`value` None removes it).
fn update_user(ctx: &Ctx, name: &str, key: &str, value: Option<i64>) -> ApiResult<()> {
    let mut u = (*ctx.broker.auth.user(name).ok_or_else(ApiError::not_found)?).clone();
    match value {
        Some(v) => u.limits.insert(key.to_string(), json!(v)),
        None => u.limits.remove(key),
    };
    ctx.broker.auth.put_user(u);
    Ok(())
}

async fn put_user_limit(
    axum::extract::State(ctx): State,
    user: Authed,
    Path((name, key)): Path<(String, String)>,
    body: JsonBody,
) -> ApiResult<StatusCode> {
    user.require_admin()?;
    let value = limit_value(USER_LIMITS, &key, &body)?;
    update_user(&ctx, &name, &key, Some(value))?;
    Ok(StatusCode::NO_CONTENT)
}

async fn delete_user_limit(
    axum::extract::State(ctx): State,
    user: Authed,
    Path((name, key)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    user.require_admin()?;
    update_user(&ctx, &name, &key, None)?;
    Ok(StatusCode::NO_CONTENT)
}

fn vhost_rows(ctx: &Ctx, user: &Authed, only: Option<&str>) -> Vec<Value> {
    let mut rows: Vec<(String, Map<String, Value>)> = ctx
        .broker
        .vhosts
        .iter()
        .filter(|v| only.is_none_or(|n| n == v.name) && user.sees_vhost(ctx, &v.name))
        .map(|v| (v.name.clone(), v.settings.read().record.limits.clone()))
        .filter(|(_, l)| !l.is_empty())
        .collect();
    rows.sort_by(|a, b| a.0.cmp(&b.0));
    rows.into_iter()
        .map(|(vhost, limits)| json!({"vhost": vhost, "value": limits}))
        .collect()
}

async fn vhost_limits(axum::extract::State(ctx): State, user: Authed) -> ApiResult<Json<Value>> {
    Ok(Json(Value::Array(vhost_rows(&ctx, &user, None))))
}

async fn one_vhost_limits(
    axum::extract::State(ctx): State,
    user: Authed,
    Path(vhost): Path<String>,
) -> ApiResult<Json<Value>> {
    user.vhost(&ctx, &vhost)?;
    Ok(Json(Value::Array(vhost_rows(&ctx, &user, Some(&vhost)))))
}

fn update_vhost(ctx: &Ctx, vhost: &str, key: &str, value: Option<i64>) -> ApiResult<()> {
    let v = ctx.broker.vhost(vhost).ok_or_else(ApiError::not_found)?;
    let mut limits = v.settings.read().record.limits.clone();
    match value {
        Some(n) => limits.insert(key.to_string(), json!(n)),
        None => limits.remove(key),
    };
    ctx.broker.set_vhost_limits(vhost, limits);
    Ok(())
}

async fn put_vhost_limit(
    axum::extract::State(ctx): State,
    user: Authed,
    Path((vhost, key)): Path<(String, String)>,
    body: JsonBody,
) -> ApiResult<StatusCode> {
    user.require_admin()?;
    let value = limit_value(VHOST_LIMITS, &key, &body)?;
    update_vhost(&ctx, &vhost, &key, Some(value))?;
    Ok(StatusCode::NO_CONTENT)
}

async fn delete_vhost_limit(
    axum::extract::State(ctx): State,
    user: Authed,
    Path((vhost, key)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    user.require_admin()?;
    update_vhost(&ctx, &vhost, &key, None)?;
    Ok(StatusCode::NO_CONTENT)
}
