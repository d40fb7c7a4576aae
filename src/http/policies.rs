//! Policies and operator policies: list, set (PUT pattern/definition/priority/apply-to),
//! delete. The same handlers serve both, told apart by the `OP` parameter.
//!
//! User policies: reading needs the policymaker or monitoring tag; changing needs
//! policymaker (in a vhost the user has permissions in) or administrator. Operator policies,
//! as RabbitMQ: any management user may list them, one is read, set or deleted by an
//! administrator only.

use super::authn::{Authed, JsonBody};
use super::error::{ApiError, ApiResult};
use super::list::{respond_values, ListParams, Params};
use super::{Ctx, State};
use crate::broker::policy::{ApplyTo, PolicyKind, PolicyRecord};
use axum::extract::Path;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};
use std::sync::Arc;

pub fn routes() -> Router<Arc<Ctx>> {
    Router::new()
        .route("/api/policies", get(list_all::<false>))
        .route("/api/policies/{vhost}", get(list_vhost::<false>))
        .route(
            "/api/policies/{vhost}/{name}",
            get(get_one::<false>)
                .put(put::<false>)
                .delete(delete::<false>),
        )
        .route("/api/operator-policies", get(list_all::<true>))
        .route("/api/operator-policies/{vhost}", get(list_vhost::<true>))
        .route(
            "/api/operator-policies/{vhost}/{name}",
            get(get_one::<true>).put(put::<true>).delete(delete::<true>),
        )
}

fn kind(op: bool) -> PolicyKind {
    if op {
        PolicyKind::Operator
    } else {
        PolicyKind::User
    }
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

/// May list policies of this kind.
fn may_list(user: &Authed, kind: PolicyKind) -> ApiResult<()> {
    match kind {
        PolicyKind::User if !(user.is_policymaker() || user.is_monitor()) => {
            Err(ApiError::forbidden("Not policymaker user"))
        }
        _ => Ok(()),
    }
}

/// May read one policy of this kind.
fn may_read(user: &Authed, kind: PolicyKind) -> ApiResult<()> {
    match kind {
        PolicyKind::Operator if !user.is_admin() => {
            Err(ApiError::forbidden("Not administrator user"))
        }
        _ => may_list(user, kind),
    }
}

fn may_write(ctx: &Ctx, user: &Authed, vhost: &str, kind: PolicyKind) -> ApiResult<()> {
    match kind {
        _ if user.is_admin() => Ok(()),
        PolicyKind::User if user.is_policymaker() && user.sees_vhost(ctx, vhost) => Ok(()),
        PolicyKind::User => Err(ApiError::forbidden("Not policymaker user")),
        PolicyKind::Operator => Err(ApiError::forbidden("Not administrator user")),
    }
}

fn records(ctx: &Ctx, user: &Authed, only: Option<&str>, kind: PolicyKind) -> Vec<Value> {
    let mut out = Vec::new();
    for v in ctx.broker.vhosts.iter() {
        if only.is_some_and(|o| o != v.name) || !user.sees_vhost(ctx, &v.name) {
            continue;
        }
        out.extend(
            v.settings
                .read()
                .policies_of(kind)
                .iter()
                .map(|p| policy_json(&p.record)),
        );
    }
    out
}

async fn list_all<const OP: bool>(
    axum::extract::State(ctx): State,
    user: Authed,
    q: Params,
) -> ApiResult<axum::response::Response> {
    may_list(&user, kind(OP))?;
    let p = ListParams::parse(&q)?;
    respond_values(records(&ctx, &user, None, kind(OP)), &p)
}

async fn list_vhost<const OP: bool>(
    axum::extract::State(ctx): State,
    user: Authed,
    Path(vhost): Path<String>,
    q: Params,
) -> ApiResult<axum::response::Response> {
    may_list(&user, kind(OP))?;
    let p = ListParams::parse(&q)?;
    user.vhost(&ctx, &vhost)?;
    respond_values(records(&ctx, &user, Some(&vhost), kind(OP)), &p)
}

async fn get_one<const OP: bool>(
    axum::extract::State(ctx): State,
    user: Authed,
    Path((vhost, name)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    may_read(&user, kind(OP))?;
    let v = user.vhost(&ctx, &vhost)?;
    let s = v.settings.read();
    s.policies_of(kind(OP))
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

async fn put<const OP: bool>(
    axum::extract::State(ctx): State,
    user: Authed,
    Path((vhost, name)): Path<(String, String)>,
    body: JsonBody,
) -> ApiResult<StatusCode> {
    user.vhost(&ctx, &vhost)?;
    may_write(&ctx, &user, &vhost, kind(OP))?;
    let rec = record_from_json(&vhost, &name, &body.0).map_err(ApiError::bad_request)?;
    let created = ctx
        .broker
        .put_policy(kind(OP), rec)
        .map_err(ApiError::bad_request)?;
    Ok(if created {
        StatusCode::CREATED
    } else {
        StatusCode::NO_CONTENT
    })
}

async fn delete<const OP: bool>(
    axum::extract::State(ctx): State,
    user: Authed,
    Path((vhost, name)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    user.vhost(&ctx, &vhost)?;
    may_write(&ctx, &user, &vhost, kind(OP))?;
    if ctx.broker.delete_policy(kind(OP), &vhost, &name) {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found())
    }
}
