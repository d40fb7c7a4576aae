//! Errors as RabbitMQ's management API writes them: a status and
//! `{"error": "...", "reason": "..."}`.

use crate::error::{AmqpError, ReplyCode};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub error: &'static str,
    pub reason: String,
    /// Ask for Basic credentials (401 to a request that sent none).
    pub challenge: bool,
}

impl ApiError {
    pub fn new(status: StatusCode, error: &'static str, reason: impl Into<String>) -> Self {
        ApiError {
            status,
            error,
            reason: reason.into(),
            challenge: false,
        }
    }

    pub fn not_found() -> Self {
        Self::new(StatusCode::NOT_FOUND, "Object Not Found", "Not Found")
    }

    pub fn bad_request(reason: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", reason)
    }

    pub fn unauthorized(reason: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "not_authorized", reason)
    }

    /// Authenticated, but a tag or permission is missing.
    pub fn forbidden(reason: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "not_authorized", reason)
    }

    pub fn internal(reason: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal_error", reason)
    }
}

/// An AMQP refusal seen through HTTP: 404 for missing objects, 403 for permissions, 400
/// for the rest (inequivalent declarations, locked queues, reserved names…).
impl From<AmqpError> for ApiError {
    fn from(e: AmqpError) -> Self {
        match e.code {
            ReplyCode::NotFound => ApiError::not_found(),
            ReplyCode::AccessRefused => ApiError::forbidden(e.text),
            ReplyCode::InternalError => ApiError::internal(e.text),
            _ => ApiError::bad_request(e.text),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Json(serde_json::json!({"error": self.error, "reason": self.reason}));
        let mut resp = (self.status, body).into_response();
        if self.challenge {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Basic realm=\"WarrenMQ Management\""),
            );
        }
        resp
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
