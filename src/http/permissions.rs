//! Permissions (administrator only): list, set (PUT configure/write/read), clear.

use super::authn::{Authed, JsonBody};
use super::error::{ApiError, ApiResult};
use super::list::{respond_values, ListParams, Params};
use super::{Ctx, State};
use crate::auth::PermissionRecord;
use axum::extract::Path;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};
use std::sync::Arc;

pub fn routes() -> Router<Arc<Ctx>> {
    Router::new().route("/api/permissions", get(list)).route(
        "/api/permissions/{vhost}/{user}",
        get(get_one).put(put).delete(delete),
    )
}

pub fn permission_json(p: &PermissionRecord) -> Value {
    json!({"user": p.user, "vhost": p.vhost, "configure": p.configure, "write": p.write, "read": p.read})
}

async fn list(
    axum::extract::State(ctx): State,
    user: Authed,
    q: Params,
) -> ApiResult<axum::response::Response> {
    user.require_admin()?;
    let p = ListParams::parse(&q)?;
    let rows = ctx
        .broker
        .auth
        .permission_records(None, None)
        .iter()
        .map(permission_json)
        .collect();
    respond_values(rows, &p)
}

async fn get_one(
    axum::extract::State(ctx): State,
    user: Authed,
    Path((vhost, name)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    user.require_admin()?;
    ctx.broker
        .auth
        .permission_record(&vhost, &name)
        .map(|p| Json(permission_json(&p)))
        .ok_or_else(ApiError::not_found)
}

/// Set a permission from a PUT or definitions body.
pub fn set_from_json(ctx: &Ctx, vhost: &str, user: &str, body: &Value) -> ApiResult<()> {
    if ctx.broker.vhost(vhost).is_none() || ctx.broker.auth.user(user).is_none() {
        return Err(ApiError::not_found());
    }
    let field = |k: &str| {
        body.get(k)
            .and_then(|v| v.as_str())
            .map(str::to_string)
            .ok_or_else(|| ApiError::bad_request(format!("{k} is required")))
    };
    ctx.broker
        .auth
        .set_permission(PermissionRecord {
            user: user.to_string(),
            vhost: vhost.to_string(),
            configure: field("configure")?,
            write: field("write")?,
            read: field("read")?,
        })
        .map_err(|e| ApiError::bad_request(format!("invalid regular expression: {e}")))
}

async fn put(
    axum::extract::State(ctx): State,
    user: Authed,
    Path((vhost, name)): Path<(String, String)>,
    body: JsonBody,
) -> ApiResult<StatusCode> {
    user.require_admin()?;
    let existed = ctx.broker.auth.permission_record(&vhost, &name).is_some();
    set_from_json(&ctx, &vhost, &name, &body.0)?;
    Ok(if existed {
        StatusCode::NO_CONTENT
    } else {
        StatusCode::CREATED
    })
}

async fn delete(
    axum::extract::State(ctx): State,
    user: Authed,
    Path((vhost, name)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    user.require_admin()?;
    if ctx.broker.auth.clear_permission(&vhost, &name) {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found())
    }
}
