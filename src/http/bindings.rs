//! Bindings: list all or per vhost, between an exchange and a queue or two exchanges,
//! create (POST, answered with a `Location`) and delete by properties key.

use super::authn::{Authed, JsonBody};
use super::error::{ApiError, ApiResult};
use super::json::{json_to_table, table_to_json};
use super::list::{respond_values, ListParams, Params};
use super::{Ctx, State};
use crate::auth::{Kind, Perm};
use crate::broker::exchange::Destination;
use crate::broker::vhost::VHost;
use crate::protocol::FieldTable;
use axum::extract::Path;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};
use sha2::Digest;
use std::sync::Arc;

pub fn routes() -> Router<Arc<Ctx>> {
    Router::new()
        .route("/api/bindings", get(list_all))
        .route("/api/bindings/{vhost}", get(list_vhost))
        .route(
            "/api/bindings/{vhost}/e/{source}/{kind}/{destination}",
            get(list_between).post(create),
        )
        .route(
            "/api/bindings/{vhost}/e/{source}/{kind}/{destination}/{props}",
            get(get_one).delete(delete_one),
        )
}

/// RabbitMQ's properties key: the routing key ("~" when empty) when there are no
/// arguments, else `key~hash`.
pub fn properties_key(routing_key: &str, args: &FieldTable) -> String {
    if args.inner().is_empty() {
        return if routing_key.is_empty() {
            "~".into()
        } else {
            routing_key.to_string()
        };
    }
    let canonical = serde_json::to_string(&table_to_json(args)).unwrap_or_default();
    let digest = sha2::Sha256::digest(canonical.as_bytes());
    let hash: String = digest[..6].iter().map(|b| format!("{b:02x}")).collect();
    format!("{routing_key}~{hash}")
}

pub fn binding_json(
    vhost: &str,
    source: &str,
    destination: &str,
    destination_type: &str,
    routing_key: &str,
    args: &FieldTable,
) -> Value {
    json!({
        "source": source,
        "vhost": vhost,
        "destination": destination,
        "destination_type": destination_type,
        "routing_key": routing_key,
        "arguments": table_to_json(args),
        "properties_key": properties_key(routing_key, args),
    })
}

/// Every binding of a vhost, the implicit default-exchange ones first (as RabbitMQ lists
/// them).
pub fn vhost_bindings(v: &VHost) -> Vec<Value> {
    let mut out = Vec::new();
    let mut queues: Vec<String> = v.queues.iter().map(|q| q.name().to_string()).collect();
    queues.sort();
    for q in &queues {
        out.push(binding_json(
            &v.name,
            "",
            q,
            "queue",
            q,
            &FieldTable::default(),
        ));
    }
    let mut exchanges: Vec<_> = v.exchanges.iter().map(|e| e.clone()).collect();
    exchanges.sort_by(|a, b| a.name().cmp(b.name()));
    for e in exchanges {
        for b in e.bindings() {
            let (dest, kind) = match &b.destination {
                Destination::Queue(q) => (q.name().to_string(), "queue"),
                Destination::Exchange(x) => (x.clone(), "exchange"),
            };
            out.push(binding_json(
                &v.name,
                e.name(),
                &dest,
                kind,
                &b.routing_key,
                &b.arguments,
            ));
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
    let mut rows = Vec::new();
    for v in ctx.broker.vhosts.iter() {
        if user.sees_vhost(&ctx, &v.name) {
            rows.extend(vhost_bindings(&v));
        }
    }
    respond_values(rows, &p)
}

async fn list_vhost(
    axum::extract::State(ctx): State,
    user: Authed,
    Path(vhost): Path<String>,
    q: Params,
) -> ApiResult<axum::response::Response> {
    let p = ListParams::parse(&q)?;
    let v = user.vhost(&ctx, &vhost)?;
    respond_values(vhost_bindings(&v), &p)
}

/// `q` or `e` in the path.
fn dest_kind(kind: &str) -> ApiResult<&'static str> {
    match kind {
        "q" => Ok("queue"),
        "e" => Ok("exchange"),
        _ => Err(ApiError::not_found()),
    }
}

/// The bindings from `source` to `destination` (both must exist: 404).
fn between(v: &VHost, source: &str, kind: &str, destination: &str) -> ApiResult<Vec<Value>> {
    let src = v.exchange(source).map_err(|_| ApiError::not_found())?;
    let is_queue = kind == "queue";
    let exists = if is_queue {
        v.queues.contains_key(destination)
    } else {
        v.exchanges.contains_key(destination)
    };
    if !exists {
        return Err(ApiError::not_found());
    }
    Ok(vhost_bindings(v)
        .into_iter()
        .filter(|b| {
            b["source"] == src.name()
                && b["destination"] == destination
                && b["destination_type"] == kind
        })
        .collect())
}

async fn list_between(
    axum::extract::State(ctx): State,
    user: Authed,
    Path((vhost, source, kind, destination)): Path<(String, String, String, String)>,
) -> ApiResult<Json<Value>> {
    let v = user.vhost(&ctx, &vhost)?;
    let kind = dest_kind(&kind)?;
    Ok(Json(Value::Array(between(
        &v,
        &source,
        kind,
        &destination,
    )?)))
}

fn encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

async fn create(
    axum::extract::State(ctx): State,
    user: Authed,
    Path((vhost, source, kind, destination)): Path<(String, String, String, String)>,
    body: JsonBody,
) -> ApiResult<Response> {
    let v = user.vhost(&ctx, &vhost)?;
    let kind = dest_kind(&kind)?;
    let source = super::exchanges::path_name(&source).to_string();
    let rk = body.str("routing_key").unwrap_or("").to_string();
    let args = json_to_table(body.0.get("arguments")).map_err(ApiError::bad_request)?;
    if kind == "queue" {
        user.check(&ctx, &vhost, Perm::Write, Kind::Queue, &destination)?;
        user.check(&ctx, &vhost, Perm::Read, Kind::Exchange, &source)?;
        v.bind_queue(&destination, &source, &rk, args.clone(), 0)?;
    } else {
        user.check(&ctx, &vhost, Perm::Write, Kind::Exchange, &destination)?;
        user.check(&ctx, &vhost, Perm::Read, Kind::Exchange, &source)?;
        v.bind_exchange(&destination, &source, &rk, args.clone())?;
    }
    let location = format!(
        "/api/bindings/{}/e/{}/{}/{}/{}",
        encode(&vhost),
        encode(&source),
        if kind == "queue" { "q" } else { "e" },
        encode(&destination),
        encode(&properties_key(&rk, &args))
    );
    Ok((StatusCode::CREATED, [(header::LOCATION, location)]).into_response())
}

fn find_one(
    v: &VHost,
    source: &str,
    kind: &str,
    destination: &str,
    props: &str,
) -> ApiResult<Value> {
    between(v, source, kind, destination)?
        .into_iter()
        .find(|b| b["properties_key"] == props)
        .ok_or_else(ApiError::not_found)
}

async fn get_one(
    axum::extract::State(ctx): State,
    user: Authed,
    Path((vhost, source, kind, destination, props)): Path<(String, String, String, String, String)>,
) -> ApiResult<Json<Value>> {
    let v = user.vhost(&ctx, &vhost)?;
    let kind = dest_kind(&kind)?;
    find_one(&v, &source, kind, &destination, &props).map(Json)
}

async fn delete_one(
    axum::extract::State(ctx): State,
    user: Authed,
    Path((vhost, source, kind, destination, props)): Path<(String, String, String, String, String)>,
) -> ApiResult<StatusCode> {
    let v = user.vhost(&ctx, &vhost)?;
    let kind = dest_kind(&kind)?;
    find_one(&v, &source, kind, &destination, &props)?;
    // The binding's own arguments (their wire types matter for equality), not the JSON.
    let (rk, args) = v
        .exchange(&source)
        .map_err(|_| ApiError::not_found())?
        .bindings()
        .into_iter()
        .find(|b| {
            let dest = match &b.destination {
                Destination::Queue(q) => kind == "queue" && q.name() == destination,
                Destination::Exchange(x) => kind == "exchange" && *x == destination,
            };
            dest && properties_key(&b.routing_key, &b.arguments) == props
        })
        .map(|b| (b.routing_key, b.arguments))
        .ok_or_else(ApiError::not_found)?;
    if kind == "queue" {
        user.check(&ctx, &vhost, Perm::Write, Kind::Queue, &destination)?;
        user.check(&ctx, &vhost, Perm::Read, Kind::Exchange, &source)?;
        v.unbind_queue(&destination, &source, &rk, args, 0)?;
    } else {
        user.check(&ctx, &vhost, Perm::Write, Kind::Exchange, &destination)?;
        user.check(&ctx, &vhost, Perm::Read, Kind::Exchange, &source)?;
        v.unbind_exchange(&destination, &source, &rk, args)?;
    }
    Ok(StatusCode::NO_CONTENT)
}
