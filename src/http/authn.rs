//! HTTP Basic authentication against the broker's users, the loopback rule for guest, and
//! RabbitMQ's management tags:
//!
//! - `management`: their own vhosts (those they have permissions in), their own connections;
//! - `policymaker`: management, plus policies in their vhosts;
//! - `monitoring`: management, plus every vhost, connection and channel, and node data;
//! - `administrator`: everything, including users, vhosts and permissions.
//!
//! A user with none of these may not use the API (403). Operations on the AMQP model
//! (declare, delete, bind, publish, get, purge) also need the vhost permissions the same
//! AMQP operation needs, as in RabbitMQ.

use super::error::{ApiError, ApiResult};
use super::Ctx;
use crate::auth::permissions::{self, Kind, Perm};
use crate::auth::User;
use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use base64::Engine;
use bytes::Bytes;
use std::net::SocketAddr;
use std::sync::Arc;

/// The authenticated user of a request.
pub struct Authed(pub Arc<User>);

const MGMT_TAGS: &[&str] = &["management", "policymaker", "monitoring", "administrator"];

impl FromRequestParts<Arc<Ctx>> for Authed {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, ctx: &Arc<Ctx>) -> ApiResult<Self> {
        let Some(value) = parts.headers.get(header::AUTHORIZATION) else {
            let mut e = ApiError::unauthorized("Not authorized");
            e.challenge = true;
            return Err(e);
        };
        let (user, pass) = basic_credentials(value.as_bytes())
            .ok_or_else(|| ApiError::unauthorized("Invalid authorization header"))?;
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip())
            .unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST));
        let user = match ctx.broker.auth.check_password(&user, &pass, peer) {
            Ok(u) => u,
            Err(why) => {
                tracing::info!(%peer, "HTTP API login failed: {why}");
                // As on AMQP: a password guesser gets one answer per delay per request;
                // the wait is a timer, it holds no thread and no lock.
                let delay = ctx.broker.config.auth_failure_delay;
                tokio::time::sleep(std::time::Duration::from_millis(delay)).await;
                return Err(ApiError::unauthorized("Login failed"));
            }
        };
        if !MGMT_TAGS.iter().any(|t| user.has_tag(t)) {
            return Err(ApiError::forbidden("Not management user"));
        }
        Ok(Authed(user))
    }
}

fn basic_credentials(value: &[u8]) -> Option<(String, String)> {
    let s = std::str::from_utf8(value).ok()?;
    let encoded = s
        .strip_prefix("Basic ")
        .or_else(|| s.strip_prefix("basic "))?;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let raw = String::from_utf8(raw).ok()?;
    let (u, p) = raw.split_once(':')?;
    Some((u.to_string(), p.to_string()))
}

impl Authed {
    pub fn name(&self) -> &str {
        &self.0.name
    }

    pub fn is_admin(&self) -> bool {
        self.0.has_tag("administrator")
    }

    /// administrator or monitoring: sees everything.
    pub fn is_monitor(&self) -> bool {
        self.is_admin() || self.0.has_tag("monitoring")
    }

    pub fn is_policymaker(&self) -> bool {
        self.is_admin() || self.0.has_tag("policymaker")
    }

    pub fn require_admin(&self) -> ApiResult<()> {
        if self.is_admin() {
            Ok(())
        } else {
            Err(ApiError::forbidden("Not administrator user"))
        }
    }

    pub fn require_monitor(&self) -> ApiResult<()> {
        if self.is_monitor() {
            Ok(())
        } else {
            Err(ApiError::forbidden("Not monitor user"))
        }
    }

    /// May this user see what is in `vhost`?
    pub fn sees_vhost(&self, ctx: &Ctx, vhost: &str) -> bool {
        self.is_monitor() || ctx.broker.auth.can_access_vhost(self.name(), vhost)
    }

    /// May this user see a connection of `user` in `vhost`?
    pub fn sees_connection(&self, owner: &str) -> bool {
        self.is_monitor() || owner == self.name()
    }

    /// The vhost exists (404 otherwise) and this user may see it (403 otherwise).
    pub fn vhost(&self, ctx: &Ctx, vhost: &str) -> ApiResult<Arc<crate::broker::vhost::VHost>> {
        let v = ctx.broker.vhost(vhost).ok_or_else(ApiError::not_found)?;
        if !self.sees_vhost(ctx, vhost) {
            return Err(ApiError::forbidden(format!(
                "access to vhost '{vhost}' refused for user '{}'",
                self.name()
            )));
        }
        Ok(v)
    }

    /// The AMQP permission an operation needs (403 with RabbitMQ's text otherwise).
    pub fn check(
        &self,
        ctx: &Ctx,
        vhost: &str,
        perm: Perm,
        kind: Kind,
        name: &str,
    ) -> ApiResult<()> {
        let p = ctx.broker.auth.permission(vhost, self.name());
        permissions::check(p.as_deref(), perm, kind, name, vhost, self.name())
            .map_err(|e| ApiError::forbidden(e.text))
    }
}

/// A JSON request body, within the configured size limit: 413 when too large, 400 when
/// not JSON. An empty body reads as `{}`.
pub struct JsonBody(pub serde_json::Value);

impl<S: Send + Sync> FromRequest<S> for JsonBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> ApiResult<Self> {
        let bytes = Bytes::from_request(req, state).await.map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "bad_request",
                    "request body too large",
                )
            } else {
                ApiError::bad_request(e.body_text())
            }
        })?;
        if bytes.iter().all(|b| b.is_ascii_whitespace()) {
            return Ok(JsonBody(serde_json::json!({})));
        }
        serde_json::from_slice(&bytes)
            .map(JsonBody)
            .map_err(|e| ApiError::bad_request(format!("failed to parse JSON: {e}")))
    }
}

impl JsonBody {
    pub fn str(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.as_str())
    }

    /// A boolean field; RabbitMQ also accepts the strings "true"/"false".
    pub fn bool(&self, key: &str) -> ApiResult<Option<bool>> {
        match self.0.get(key) {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(serde_json::Value::Bool(b)) => Ok(Some(*b)),
            Some(serde_json::Value::String(s)) if s == "true" => Ok(Some(true)),
            Some(serde_json::Value::String(s)) if s == "false" => Ok(Some(false)),
            Some(v) => Err(ApiError::bad_request(format!(
                "{key}: expected a boolean, got {v}"
            ))),
        }
    }
}
