//! Users (administrator only): list, create or update with a password or a RabbitMQ
//! password hash, delete, bulk delete, and their permissions.

use super::authn::{Authed, JsonBody};
use super::error::{ApiError, ApiResult};
use super::list::{respond_values, ListParams, Params};
use super::permissions::permission_json;
use super::{Ctx, State};
use crate::auth::{parse_tags, password, User};
use axum::extract::Path;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use std::sync::Arc;

pub fn routes() -> Router<Arc<Ctx>> {
    Router::new()
        .route("/api/users", get(list))
        .route("/api/users/without-permissions", get(without_permissions))
        .route("/api/users/bulk-delete", post(bulk_delete))
        .route("/api/users/{name}", get(get_one).put(put).delete(delete))
        .route("/api/users/{name}/permissions", get(permissions))
}

pub fn user_json(u: &User) -> Value {
    json!({
        "name": u.name,
        "password_hash": u.password_hash,
        "hashing_algorithm": u.hashing_algorithm,
        "tags": u.tags,
        "limits": u.limits,
    })
}

async fn list(
    axum::extract::State(ctx): State,
    user: Authed,
    q: Params,
) -> ApiResult<axum::response::Response> {
    user.require_admin()?;
    let p = ListParams::parse(&q)?;
    respond_values(
        ctx.broker
            .auth
            .users()
            .iter()
            .map(|u| user_json(u))
            .collect(),
        &p,
    )
}

async fn without_permissions(
    axum::extract::State(ctx): State,
    user: Authed,
) -> ApiResult<Json<Value>> {
    user.require_admin()?;
    let perms = ctx.broker.auth.permission_records(None, None);
    Ok(Json(Value::Array(
        ctx.broker
            .auth
            .users()
            .iter()
            .filter(|u| !perms.iter().any(|p| p.user == u.name))
            .map(|u| user_json(u))
            .collect(),
    )))
}

async fn get_one(
    axum::extract::State(ctx): State,
    user: Authed,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    user.require_admin()?;
    let u = ctx
        .broker
        .auth
        .user(&name)
        .ok_or_else(ApiError::not_found)?;
    Ok(Json(user_json(&u)))
}

/// Build a user from a PUT or definitions body: `password` (hashed here) or
/// `password_hash` + `hashing_algorithm`; an existing user keeps its hash otherwise.
pub fn user_from_json(name: &str, body: &Value, existing: Option<&User>) -> Result<User, String> {
    let tags = parse_tags(body.get("tags"));
    let limits = body
        .get("limits")
        .and_then(|l| l.as_object())
        .cloned()
        .unwrap_or_default();
    let (password_hash, hashing_algorithm) = if let Some(p) = body.get("password") {
        let p = p.as_str().ok_or("password must be a string")?;
        (password::hash(p), password::SHA256.to_string())
    } else if let Some(h) = body.get("password_hash") {
        let h = h.as_str().ok_or("password_hash must be a string")?;
        // Without an algorithm (exports from RabbitMQ 3.5 and older, which had only MD5),
        // the digest's length says which it is.
        let algo = body
            .get("hashing_algorithm")
            .and_then(|a| a.as_str())
            .or_else(|| password::infer(h))
            .unwrap_or(password::SHA256);
        if !password::supported(algo) {
            return Err(format!("unsupported hashing algorithm '{algo}'"));
        }
        if !h.is_empty() && !password::valid_hash(algo, h) {
            return Err(format!("password_hash is not a valid {algo} hash"));
        }
        (h.to_string(), algo.to_string())
    } else if let Some(u) = existing {
        (u.password_hash.clone(), u.hashing_algorithm.clone())
    } else {
        return Err("password or password_hash is required".into());
    };
    Ok(User {
        name: name.to_string(),
        password_hash,
        hashing_algorithm,
        tags,
        limits,
    })
}

async fn put(
    axum::extract::State(ctx): State,
    user: Authed,
    Path(name): Path<String>,
    body: JsonBody,
) -> ApiResult<StatusCode> {
    user.require_admin()?;
    if name.is_empty() {
        return Err(ApiError::bad_request("user names must not be empty"));
    }
    let existing = ctx.broker.auth.user(&name);
    let u = user_from_json(&name, &body.0, existing.as_deref()).map_err(ApiError::bad_request)?;
    ctx.broker.auth.put_user(u);
    Ok(if existing.is_some() {
        StatusCode::NO_CONTENT
    } else {
        StatusCode::CREATED
    })
}

async fn delete(
    axum::extract::State(ctx): State,
    user: Authed,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    user.require_admin()?;
    if delete_and_disconnect(&ctx, &name) {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found())
    }
}

/// Delete a user and close its connections with 320, as RabbitMQ does.
fn delete_and_disconnect(ctx: &Ctx, name: &str) -> bool {
    if !ctx.broker.auth.delete_user(name) {
        return false;
    }
    for c in ctx.broker.connections.iter() {
        if c.info.read().user == name {
            c.force_close(&format!("user '{name}' was deleted"));
        }
    }
    true
}

async fn bulk_delete(
    axum::extract::State(ctx): State,
    user: Authed,
    body: JsonBody,
) -> ApiResult<StatusCode> {
    user.require_admin()?;
    let names = body
        .0
        .get("users")
        .and_then(|u| u.as_array())
        .ok_or_else(|| ApiError::bad_request("users must be a list of names"))?;
    for n in names.iter().filter_map(|n| n.as_str()) {
        delete_and_disconnect(&ctx, n);
    }
    Ok(StatusCode::NO_CONTENT)
}

async fn permissions(
    axum::extract::State(ctx): State,
    user: Authed,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    user.require_admin()?;
    ctx.broker
        .auth
        .user(&name)
        .ok_or_else(ApiError::not_found)?;
    Ok(Json(Value::Array(
        ctx.broker
            .auth
            .permission_records(None, Some(&name))
            .iter()
            .map(permission_json)
            .collect(),
    )))
}
