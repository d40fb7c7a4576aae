//! Exchanges: list, declare (PUT), delete, their bindings, and publishing over HTTP. The
//! default exchange is addressed as `amq.default` in paths, as in RabbitMQ.

use super::authn::{Authed, JsonBody};
use super::bindings::vhost_bindings;
use super::error::{ApiError, ApiResult};
use super::json::{json_to_properties, json_to_table, table_to_json};
use super::list::{respond, ListParams, Params};
use super::{Ctx, State};
use crate::auth::permissions::exchange_declare_needs;
use crate::auth::{Kind, Perm};
use crate::broker::exchange::{Exchange, ExchangeSpec, ExchangeType};
use crate::broker::message::Message;
use crate::broker::queue::Enqueued;
use crate::broker::vhost::VHost;
use axum::extract::Path;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine;
use serde_json::{json, Value};
use std::sync::Arc;

pub fn routes() -> Router<Arc<Ctx>> {
    Router::new()
        .route("/api/exchanges", get(list_all))
        .route("/api/exchanges/{vhost}", get(list_vhost))
        .route(
            "/api/exchanges/{vhost}/{name}",
            get(get_one).put(declare).delete(delete),
        )
        .route(
            "/api/exchanges/{vhost}/{name}/bindings/source",
            get(as_source),
        )
        .route(
            "/api/exchanges/{vhost}/{name}/bindings/destination",
            get(as_destination),
        )
        .route("/api/exchanges/{vhost}/{name}/publish", post(publish))
}

/// `amq.default` in a path means the default exchange `""`.
pub fn path_name(name: &str) -> &str {
    if name == "amq.default" {
        ""
    } else {
        name
    }
}

pub fn exchange_json(v: &VHost, e: &Exchange) -> Value {
    let mut j = json!({
        "name": e.name(),
        "vhost": v.name,
        "type": e.spec.kind.as_str(),
        "durable": e.spec.durable,
        "auto_delete": e.spec.auto_delete,
        "internal": e.spec.internal,
        "arguments": table_to_json(&e.spec.arguments),
        "user_who_performed_action": "",
    });
    if let Some(n) = e.messages_delayed() {
        j["messages_delayed"] = json!(n);
    }
    if let Some(p) = v.policy_name(e.name(), crate::broker::policy::Target::Exchange) {
        j["policy"] = json!(p);
    }
    j
}

fn rows(ctx: &Ctx, user: &Authed, only: Option<&str>) -> Vec<(Arc<VHost>, Arc<Exchange>)> {
    let mut out = Vec::new();
    for v in ctx.broker.vhosts.iter() {
        if only.is_some_and(|o| o != v.name) || !user.sees_vhost(ctx, &v.name) {
            continue;
        }
        for e in v.exchanges.iter() {
            out.push((v.clone(), e.clone()));
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
        |(v, e)| (v.name.as_str(), e.name()),
        |(v, e)| exchange_json(v, e),
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
        |(v, e)| (v.name.as_str(), e.name()),
        |(v, e)| exchange_json(v, e),
    )
}

async fn get_one(
    axum::extract::State(ctx): State,
    user: Authed,
    Path((vhost, name)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    let v = user.vhost(&ctx, &vhost)?;
    let e = v
        .exchange(path_name(&name))
        .map_err(|_| ApiError::not_found())?;
    Ok(Json(exchange_json(&v, &e)))
}

async fn declare(
    axum::extract::State(ctx): State,
    user: Authed,
    Path((vhost, name)): Path<(String, String)>,
    body: JsonBody,
) -> ApiResult<StatusCode> {
    let v = user.vhost(&ctx, &vhost)?;
    let kind = body
        .str("type")
        .ok_or_else(|| ApiError::bad_request("type is required"))?;
    let arguments = json_to_table(body.0.get("arguments")).map_err(ApiError::bad_request)?;
    let kind =
        ExchangeType::declared(kind, &arguments).map_err(|e| ApiError::bad_request(e.text))?;
    for (perm, k, res) in exchange_declare_needs(&name, &arguments) {
        user.check(&ctx, &vhost, perm, k, &res)?;
    }
    let existed = v.exchanges.contains_key(&name);
    v.declare_exchange(
        ExchangeSpec {
            name,
            kind,
            durable: body.bool("durable")?.unwrap_or(true),
            auto_delete: body.bool("auto_delete")?.unwrap_or(false),
            internal: body.bool("internal")?.unwrap_or(false),
            arguments,
        },
        false,
    )?;
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
    q: Params,
) -> ApiResult<StatusCode> {
    let v = user.vhost(&ctx, &vhost)?;
    let name = path_name(&name);
    user.check(&ctx, &vhost, Perm::Configure, Kind::Exchange, name)?;
    if !v.exchanges.contains_key(name) {
        return Err(ApiError::not_found());
    }
    let if_unused = q.get("if-unused").is_some_and(|v| v == "true");
    v.delete_exchange(name, if_unused)?;
    Ok(StatusCode::NO_CONTENT)
}

async fn as_source(
    axum::extract::State(ctx): State,
    user: Authed,
    Path((vhost, name)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    let v = user.vhost(&ctx, &vhost)?;
    let name = path_name(&name);
    v.exchange(name).map_err(|_| ApiError::not_found())?;
    Ok(Json(Value::Array(
        vhost_bindings(&v)
            .into_iter()
            .filter(|b| b["source"] == name)
            .collect(),
    )))
}

async fn as_destination(
    axum::extract::State(ctx): State,
    user: Authed,
    Path((vhost, name)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    let v = user.vhost(&ctx, &vhost)?;
    let name = path_name(&name);
    v.exchange(name).map_err(|_| ApiError::not_found())?;
    Ok(Json(Value::Array(
        vhost_bindings(&v)
            .into_iter()
            .filter(|b| b["destination"] == name && b["destination_type"] == "exchange")
            .collect(),
    )))
}

async fn publish(
    axum::extract::State(ctx): State,
    user: Authed,
    Path((vhost, name)): Path<(String, String)>,
    body: JsonBody,
) -> ApiResult<Json<Value>> {
    let v = user.vhost(&ctx, &vhost)?;
    let name = path_name(&name);
    user.check(&ctx, &vhost, Perm::Write, Kind::Exchange, name)?;
    let e = v.exchange(name).map_err(|_| ApiError::not_found())?;
    if e.spec.internal {
        return Err(ApiError::forbidden(format!(
            "cannot publish to internal exchange '{name}' in vhost '{vhost}'"
        )));
    }
    let routing_key = body
        .str("routing_key")
        .ok_or_else(|| ApiError::bad_request("routing_key is required"))?
        .to_string();
    // Topic permissions apply to HTTP publishes as to AMQP ones.
    if e.spec.kind == crate::broker::exchange::ExchangeType::Topic {
        if let Some(t) = ctx.broker.auth.topic_permissions(&vhost, user.name()) {
            t.check(Perm::Write, name, &routing_key, &vhost, user.name())
                .map_err(|e| ApiError::forbidden(e.text))?;
        }
    }
    let payload = body
        .str("payload")
        .ok_or_else(|| ApiError::bad_request("payload is required"))?;
    let payload = match body.str("payload_encoding").unwrap_or("string") {
        "string" => payload.as_bytes().to_vec(),
        "base64" => base64::engine::general_purpose::STANDARD
            .decode(payload)
            .map_err(|e| ApiError::bad_request(format!("payload is not base64: {e}")))?,
        other => {
            return Err(ApiError::bad_request(format!(
                "payload_encoding must be string or base64, not '{other}'"
            )))
        }
    };
    let properties = json_to_properties(body.0.get("properties")).map_err(ApiError::bad_request)?;
    if let Some(uid) = properties.user_id() {
        if uid.as_str() != user.name() && !user.0.has_tag("impersonator") {
            return Err(ApiError::bad_request(format!(
                "user_id property set to '{}' but authenticated user was '{}'",
                uid.as_str(),
                user.name()
            )));
        }
    }
    crate::broker::message::parse_expiration(&properties).map_err(ApiError::bad_request)?;
    let mut msg = Message::new(name.to_string(), routing_key, properties, payload.into());
    if v.hold_delayed(&e, &msg).is_some() {
        return Ok(Json(json!({"routed": true})));
    }
    let mut queues = Vec::new();
    v.route_publish(&e, &mut msg, &mut queues);
    let mut routed = false;
    for q in &queues {
        routed |= q.publish(msg.clone()) != Enqueued::Gone;
    }
    Ok(Json(json!({"routed": routed})))
}
