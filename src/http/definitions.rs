//! Definitions: export (GET) and import (POST) of users, vhosts, permissions, policies,
//! exchanges, queues and bindings in RabbitMQ 3.x's format, for the whole broker or one
//! vhost. Importing a RabbitMQ export recreates everything in it, passwords included (the
//! hashes are in RabbitMQ's format).

use super::authn::{Authed, JsonBody};
use super::error::{ApiError, ApiResult};
use super::json::{json_to_table, table_to_json};
use super::overview::RABBITMQ_VERSION;
use super::permissions::{permission_json, set_from_json};
use super::policies::{policy_json, record_from_json};
use super::users::{user_from_json, user_json};
use super::{Ctx, State};
use crate::auth::parse_tags;
use crate::broker::exchange::{Destination, ExchangeSpec, ExchangeType};
use crate::broker::policy::PolicyKind;
use crate::broker::vhost::{QueueDeclare, VHost};
use crate::broker::vhosts::VhostRecord;
use axum::extract::Path;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Map, Value};
use std::sync::Arc;

pub fn routes() -> Router<Arc<Ctx>> {
    Router::new()
        .route("/api/definitions", get(export_all).post(import_all))
        .route(
            "/api/definitions/{vhost}",
            get(export_vhost).post(import_vhost),
        )
}

/// Durable queues, exchanges (not the predeclared ones) and bindings of a vhost.
fn vhost_objects(v: &VHost, with_vhost: bool) -> (Vec<Value>, Vec<Value>, Vec<Value>) {
    let tag = |mut j: Value| {
        if with_vhost {
            j["vhost"] = json!(v.name);
        }
        j
    };
    let mut queues: Vec<_> = v
        .queues
        .iter()
        .filter(|q| q.spec.durable && q.spec.exclusive_owner.is_none())
        .map(|q| q.clone())
        .collect();
    queues.sort_by(|a, b| a.name().cmp(b.name()));
    let mut exchanges: Vec<_> = v
        .exchanges
        .iter()
        .filter(|e| e.spec.durable && !e.name().is_empty() && !e.name().starts_with("amq."))
        .map(|e| e.clone())
        .collect();
    exchanges.sort_by(|a, b| a.name().cmp(b.name()));
    let q_json = queues
        .iter()
        .map(|q| {
            tag(json!({
                "name": q.name(),
                "durable": true,
                "auto_delete": q.spec.auto_delete,
                "arguments": table_to_json(&q.spec.arguments),
            }))
        })
        .collect();
    let x_json = exchanges
        .iter()
        .map(|e| {
            tag(json!({
                "name": e.name(),
                "type": e.spec.kind.as_str(),
                "durable": true,
                "auto_delete": e.spec.auto_delete,
                "internal": e.spec.internal,
                "arguments": table_to_json(&e.spec.arguments),
            }))
        })
        .collect();
    let mut sources: Vec<_> = v
        .exchanges
        .iter()
        .filter(|e| e.spec.durable && !e.name().is_empty())
        .map(|e| e.clone())
        .collect();
    sources.sort_by(|a, b| a.name().cmp(b.name()));
    let mut b_json = Vec::new();
    for e in sources {
        for b in e.bindings() {
            let (dest, kind) = match &b.destination {
                Destination::Queue(q) if q.spec.durable && q.spec.exclusive_owner.is_none() => {
                    (q.name().to_string(), "queue")
                }
                Destination::Exchange(x) if v.exchanges.get(x).is_some_and(|d| d.spec.durable) => {
                    (x.clone(), "exchange")
                }
                _ => continue,
            };
            b_json.push(tag(json!({
                "source": e.name(),
                "destination": dest,
                "destination_type": kind,
                "routing_key": b.routing_key,
                "arguments": table_to_json(&b.arguments),
            })));
        }
    }
    (q_json, x_json, b_json)
}

fn policies_of(v: &VHost, with_vhost: bool) -> Vec<Value> {
    v.settings
        .read()
        .policies
        .iter()
        .map(|p| {
            let mut j = policy_json(&p.record);
            if !with_vhost {
                if let Some(o) = j.as_object_mut() {
                    o.remove("vhost");
                }
            }
            j
        })
        .collect()
}

/// A vhost's runtime parameters as RabbitMQ exports them: its limits (`vhost-limits`) and
/// its operator policies (`operator_policy`), each naming its vhost even in a per-vhost
/// export.
fn parameters_of(v: &VHost) -> Vec<Value> {
    let s = v.settings.read();
    let limits = (!s.record.limits.is_empty()).then(|| {
        json!({"vhost": v.name, "component": "vhost-limits", "name": "limits",
               "value": s.record.limits})
    });
    let operator = s.operator_policies.iter().map(|p| {
        let r = &p.record;
        json!({"vhost": v.name, "component": PolicyKind::Operator.meta(), "name": r.name,
               "value": {"pattern": r.pattern, "definition": r.definition,
                         "priority": r.priority, "apply-to": r.apply_to.as_str()}})
    });
    limits.into_iter().chain(operator).collect()
}

pub fn export(ctx: &Ctx, vhost: Option<&VHost>) -> Value {
    let mut out = Map::new();
    out.insert("rabbit_version".into(), json!(RABBITMQ_VERSION));
    out.insert("rabbitmq_version".into(), json!(RABBITMQ_VERSION));
    out.insert("product_name".into(), json!("WarrenMQ"));
    out.insert("product_version".into(), json!(env!("CARGO_PKG_VERSION")));
    let (mut queues, mut exchanges, mut bindings, mut policies) = (vec![], vec![], vec![], vec![]);
    match vhost {
        Some(v) => {
            (queues, exchanges, bindings) = vhost_objects(v, false);
            policies = policies_of(v, false);
            out.insert("parameters".into(), Value::Array(parameters_of(v)));
        }
        None => {
            let auth = &ctx.broker.auth;
            out.insert(
                "users".into(),
                Value::Array(auth.users().iter().map(|u| user_json(u)).collect()),
            );
            let mut vhosts: Vec<Arc<VHost>> = ctx.broker.vhosts.iter().map(|v| v.clone()).collect();
            vhosts.sort_by(|a, b| a.name.cmp(&b.name));
            out.insert(
                "vhosts".into(),
                Value::Array(
                    vhosts
                        .iter()
                        .map(|v| {
                            let r = v.settings.read().record.clone();
                            let mut j = json!({
                                "name": v.name,
                                "description": r.description,
                                "tags": r.tags,
                                "metadata": {"description": r.description, "tags": r.tags},
                            });
                            // The vhost's own default only (as RabbitMQ 3.13 exports it), so
                            // that another node's default still applies where none is set.
                            if let Some(t) = &r.default_queue_type {
                                j["default_queue_type"] = json!(t);
                                j["metadata"]["default_queue_type"] = json!(t);
                            }
                            j
                        })
                        .collect(),
                ),
            );
            out.insert(
                "permissions".into(),
                Value::Array(
                    auth.permission_records(None, None)
                        .iter()
                        .map(permission_json)
                        .collect(),
                ),
            );
            out.insert(
                "topic_permissions".into(),
                Value::Array(
                    auth.topic_permission_records(None, None)
                        .iter()
                        .map(super::topic_permissions::topic_permission_json)
                        .collect(),
                ),
            );
            let parameters: Vec<Value> = vhosts.iter().flat_map(|v| parameters_of(v)).collect();
            out.insert("parameters".into(), Value::Array(parameters));
            out.insert(
                "global_parameters".into(),
                json!([{"name": "cluster_name", "value": ctx.broker.cluster_name()}]),
            );
            for v in &vhosts {
                let (q, x, b) = vhost_objects(v, true);
                queues.extend(q);
                exchanges.extend(x);
                bindings.extend(b);
                policies.extend(policies_of(v, true));
            }
        }
    }
    out.insert("policies".into(), Value::Array(policies));
    out.insert("queues".into(), Value::Array(queues));
    out.insert("exchanges".into(), Value::Array(exchanges));
    out.insert("bindings".into(), Value::Array(bindings));
    Value::Object(out)
}

fn items<'a>(defs: &'a Value, key: &str) -> &'a [Value] {
    defs.get(key)
        .and_then(|v| v.as_array())
        .map(|a| a.as_slice())
        .unwrap_or(&[])
}

fn text<'a>(item: &'a Value, key: &str) -> Result<&'a str, String> {
    item.get(key)
        .and_then(|v| v.as_str())
        .ok_or_else(|| format!("{key} missing in {item}"))
}

fn flag(item: &Value, key: &str, default: bool) -> bool {
    item.get(key).and_then(|v| v.as_bool()).unwrap_or(default)
}

/// Import definitions; `only` names the vhost of a per-vhost import (whose items carry no
/// vhost). Stops at the first item that cannot be imported.
pub fn import(ctx: &Ctx, defs: &Value, only: Option<&str>) -> Result<(), String> {
    if !defs.is_object() {
        return Err("definitions must be a JSON object".into());
    }
    let broker = &ctx.broker;
    if only.is_none() {
        for u in items(defs, "users") {
            let name = text(u, "name")?;
            let existing = broker.auth.user(name);
            broker
                .auth
                .put_user(user_from_json(name, u, existing.as_deref())?);
        }
        for v in items(defs, "vhosts") {
            let meta = v.get("metadata");
            broker.put_vhost(VhostRecord {
                name: text(v, "name")?.to_string(),
                description: v
                    .get("description")
                    .or_else(|| meta.and_then(|m| m.get("description")))
                    .and_then(|d| d.as_str())
                    .unwrap_or("")
                    .to_string(),
                tags: parse_tags(v.get("tags").or_else(|| meta.and_then(|m| m.get("tags")))),
                default_queue_type: import_default_queue_type(v),
                limits: broker
                    .vhost(text(v, "name")?)
                    .map(|v| v.settings.read().record.limits.clone())
                    .unwrap_or_default(),
            });
        }
        for p in items(defs, "permissions") {
            set_from_json(ctx, text(p, "vhost")?, text(p, "user")?, p).map_err(|e| e.reason)?;
        }
        for p in items(defs, "topic_permissions") {
            super::topic_permissions::set_from_json(ctx, text(p, "vhost")?, text(p, "user")?, p)
                .map_err(|e| e.reason)?;
        }
        for g in items(defs, "global_parameters") {
            if let ("cluster_name", Some(name)) = (text(g, "name")?, g["value"].as_str()) {
                broker.set_cluster_name(name.to_string());
            }
        }
    }
    let vhost_of = |item: &Value| -> Result<Arc<VHost>, String> {
        let name = match only {
            Some(v) => v,
            None => text(item, "vhost")?,
        };
        broker
            .vhost(name)
            .ok_or_else(|| format!("vhost '{name}' does not exist"))
    };
    // Runtime parameters: vhost limits and operator policies (other components, such as
    // federation or shovel settings, have nothing here to apply to).
    for p in items(defs, "parameters") {
        let v = vhost_of(p)?;
        let value = p
            .get("value")
            .filter(|v| v.is_object())
            .ok_or_else(|| format!("parameter without a value object: {p}"))?;
        match p.get("component").and_then(|c| c.as_str()) {
            Some("vhost-limits") => {
                let limits = value.as_object().cloned().unwrap_or_default();
                broker.set_vhost_limits(&v.name, limits);
            }
            Some("operator_policy") => {
                let rec = record_from_json(&v.name, text(p, "name")?, value)?;
                broker.put_policy(PolicyKind::Operator, rec)?;
            }
            _ => {}
        }
    }
    for p in items(defs, "policies") {
        let v = vhost_of(p)?;
        broker.put_policy(
            PolicyKind::User,
            record_from_json(&v.name, text(p, "name")?, p)?,
        )?;
    }
    for x in items(defs, "exchanges") {
        let v = vhost_of(x)?;
        let name = text(x, "name")?;
        if name.is_empty() || name.starts_with("amq.") {
            continue;
        }
        let arguments = json_to_table(x.get("arguments"))?;
        v.declare_exchange(
            ExchangeSpec {
                name: name.to_string(),
                kind: ExchangeType::declared(text(x, "type")?, &arguments).map_err(|e| e.text)?,
                durable: flag(x, "durable", true),
                auto_delete: flag(x, "auto_delete", false),
                internal: flag(x, "internal", false),
                arguments,
            },
            false,
        )
        .map_err(|e| format!("exchange '{name}': {}", e.text))?;
    }
    for q in items(defs, "queues") {
        let v = vhost_of(q)?;
        let name = text(q, "name")?;
        let mut arguments = json_to_table(q.get("arguments"))?;
        // Stream queues of a RabbitMQ export become classic queues here (quorum queues
        // keep their type).
        if let Some(t) = crate::broker::args::get(&arguments, "x-queue-type")
            .and_then(crate::broker::args::str_value)
            .filter(|t| t == "stream")
        {
            tracing::warn!(queue = name, queue_type = %t, "imported as a classic queue");
            let kept: std::collections::BTreeMap<_, _> = arguments
                .inner()
                .iter()
                .filter(|(k, _)| k.as_str() != "x-queue-type")
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            arguments = kept.into();
        }
        v.declare_queue(
            QueueDeclare {
                name: name.to_string(),
                passive: false,
                durable: flag(q, "durable", true),
                exclusive: false,
                auto_delete: flag(q, "auto_delete", false),
                arguments,
                server_named: false,
            },
            0,
        )
        .map_err(|e| format!("queue '{name}': {}", e.text))?;
    }
    for b in items(defs, "bindings") {
        let v = vhost_of(b)?;
        let (src, dst) = (text(b, "source")?, text(b, "destination")?);
        let rk = b.get("routing_key").and_then(|r| r.as_str()).unwrap_or("");
        let args = json_to_table(b.get("arguments"))?;
        let res = match b.get("destination_type").and_then(|t| t.as_str()) {
            Some("exchange") => v.bind_exchange(dst, src, rk, args),
            _ => v.bind_queue(dst, src, rk, args, 0),
        };
        res.map_err(|e| format!("binding {src} -> {dst}: {}", e.text))?;
    }
    Ok(())
}

async fn export_all(axum::extract::State(ctx): State, user: Authed) -> ApiResult<Json<Value>> {
    user.require_admin()?;
    Ok(Json(export(&ctx, None)))
}

async fn export_vhost(
    axum::extract::State(ctx): State,
    user: Authed,
    Path(vhost): Path<String>,
) -> ApiResult<Json<Value>> {
    user.require_admin()?;
    let v = ctx.broker.vhost(&vhost).ok_or_else(ApiError::not_found)?;
    Ok(Json(export(&ctx, Some(&v))))
}

async fn import_all(
    axum::extract::State(ctx): State,
    user: Authed,
    body: JsonBody,
) -> ApiResult<StatusCode> {
    user.require_admin()?;
    import(&ctx, &body.0, None).map_err(ApiError::bad_request)?;
    Ok(StatusCode::NO_CONTENT)
}

async fn import_vhost(
    axum::extract::State(ctx): State,
    user: Authed,
    Path(vhost): Path<String>,
    body: JsonBody,
) -> ApiResult<StatusCode> {
    user.require_admin()?;
    ctx.broker.vhost(&vhost).ok_or_else(ApiError::not_found)?;
    import(&ctx, &body.0, Some(&vhost)).map_err(ApiError::bad_request)?;
    Ok(StatusCode::NO_CONTENT)
}

/// A vhost's `default_queue_type` from a definitions file: a type this broker does not
/// serve (RabbitMQ exports `stream` or `undefined` too) is left out, so declarations there
/// take the node's default instead of being refused.
fn import_default_queue_type(v: &Value) -> Option<String> {
    let t = v
        .get("default_queue_type")
        .or_else(|| v.get("metadata").and_then(|m| m.get("default_queue_type")))?
        .as_str()?;
    if crate::broker::vhosts::QUEUE_TYPES.contains(&t) {
        Some(t.to_string())
    } else {
        tracing::warn!(
            vhost = v.get("name").and_then(|n| n.as_str()).unwrap_or(""),
            default_queue_type = t,
            "definitions: default queue type not served here; the node's default applies"
        );
        None
    }
}
