//! Policies: list, set (PUT pattern/definition/priority/apply-to), delete. Reading needs
//! the policymaker or monitoring tag; changing needs policymaker (in a vhost the user has
//! permissions in) or administrator.

use super::authn::{Authed, JsonBody};
use super::error::{ApiError, ApiResult};
use super::list::{respond_values, ListParams, Params};
use super::{Ctx, State};
use crate::broker::policy::{ApplyTo, PolicyRecord};
use axum::extract::Path;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};
use std::sync::Arc;

pub fn routes() -> Router<Arc<Ctx>> {
    Router::new()
        .route("/api/policies", get(list_all))
        .route("/api/policies/{vhost}", get(list_vhost))
        .route(
            "/api/policies/{vhost}/{name}",
            get(get_one).put(put).delete(delete),
        )
}

pub fn policy_json(p: &PolicyRecord) -> Value {
    json!({
        "vhost": p.vhost,
        "name": p.name,
        "pattern": p.pattern,
        "apply-to": p.apply_to.as_str(),
        "definition": p.definition,
        "priority": p.priority,
    })
}

fn may_read(user: &Authed) -> ApiResult<()> {
    if user.is_policymaker() || user.is_monitor() {
        Ok(())
    } else {
        Err(ApiError::forbidden("Not policymaker user"))
    }
}

fn may_write(ctx: &Ctx, user: &Authed, vhost: &str) -> ApiResult<()> {
    if user.is_admin() || (user.is_policymaker() && user.sees_vhost(ctx, vhost)) {
        Ok(())
    } else {
        Err(ApiError::forbidden("Not policymaker user"))
    }
}

fn records(ctx: &Ctx, user: &Authed, only: Option<&str>) -> Vec<Value> {
    let mut out = Vec::new();
    for v in ctx.broker.vhosts.iter() {
        if only.is_some_and(|o| o != v.name) || !user.sees_vhost(ctx, &v.name) {
            continue;
        }
        out.extend(
            v.settings
                .read()
                .policies
                .iter()
                .map(|p| policy_json(&p.record)),
        );
    }
    out
}

async fn list_all(
    axum::extract::State(ctx): State,
    user: Authed,
    q: Params,
) -> ApiResult<axum::response::Response> {
    may_read(&user)?;
    let p = ListParams::parse(&q)?;
    respond_values(records(&ctx, &user, None), &p)
}

async fn list_vhost(
    axum::extract::State(ctx): State,
    user: Authed,
    Path(vhost): Path<String>,
    q: Params,
) -> ApiResult<axum::response::Response> {
    may_read(&user)?;
    let p = ListParams::parse(&q)?;
    user.vhost(&ctx, &vhost)?;
    respond_values(records(&ctx, &user, Some(&vhost)), &p)
}

async fn get_one(
    axum::extract::State(ctx): State,
    user: Authed,
    Path((vhost, name)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    may_read(&user)?;
    let v = user.vhost(&ctx, &vhost)?;
    let s = v.settings.read();
    s.policies
        .iter()
        .find(|p| p.name() == name)
        .map(|p| Json(policy_json(&p.record)))
        .ok_or_else(ApiError::not_found)
}

/// A policy record from a PUT or definitions body.
pub fn record_from_json(vhost: &str, name: &str, body: &Value) -> Result<PolicyRecord, String> {
    let pattern = body
        .get("pattern")
        .and_then(|p| p.as_str())
        .ok_or("pattern is required")?;
    let definition = body
        .get("definition")
        .and_then(|d| d.as_object())
        .ok_or("definition must be an object")?
        .clone();
    let apply_to = match body.get("apply-to").and_then(|a| a.as_str()) {
        None => ApplyTo::All,
        Some(a) => ApplyTo::parse(a).ok_or_else(|| format!("invalid apply-to '{a}'"))?,
    };
    let priority = match body.get("priority") {
        None | Some(Value::Null) => 0,
        Some(p) => p
            .as_i64()
            .or_else(|| p.as_str().and_then(|s| s.parse().ok()))
            .ok_or("priority must be an integer")?,
    };
    Ok(PolicyRecord {
        vhost: vhost.to_string(),
        name: name.to_string(),
        pattern: pattern.to_string(),
        apply_to,
        definition,
        priority,
    })
}

async fn put(
    axum::extract::State(ctx): State,
    user: Authed,
    Path((vhost, name)): Path<(String, String)>,
    body: JsonBody,
) -> ApiResult<StatusCode> {
    user.vhost(&ctx, &vhost)?;
    may_write(&ctx, &user, &vhost)?;
    let rec = record_from_json(&vhost, &name, &body.0).map_err(ApiError::bad_request)?;
    let created = ctx.broker.put_policy(rec).map_err(ApiError::bad_request)?;
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
) -> ApiResult<StatusCode> {
    user.vhost(&ctx, &vhost)?;
    may_write(&ctx, &user, &vhost)?;
    if ctx.broker.delete_policy(&vhost, &name) {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found())
    }
}
