//! API errors, in Trove's shape: `{"<faultName>": {"code": N, "message": "..."}}`.
//!
//! Policy: a handler returns `ApiError`. The 4xx variants carry a message
//! written for the user: it says what was wrong with the request and changes
//! nothing. Everything unexpected (database down, a bug) becomes `Internal`,
//! which is logged with its full cause chain and answered with a generic
//! message, so no detail of the deployment (URLs, SQL) leaks to a client.

use axum::{
    Json,
    http::StatusCode,
    response::{IntoResponse, Response},
};
use serde_json::json;

/// What went wrong with a request.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The request cannot be understood (400 `badRequest`).
    #[error("{0}")]
    BadRequest(String),
    /// No token, or one that is malformed, unknown, wrong or revoked (401
    /// `unauthorized`). The message never repeats what was presented.
    #[error("{0}")]
    Unauthorized(String),
    /// The token is valid but not for this project or this action (403
    /// `forbidden`).
    #[error("{0}")]
    Forbidden(String),
    /// The named object does not exist in this project (404 `itemNotFound`).
    #[error("{0}")]
    NotFound(String),
    /// The object is not in a state that allows this (409 `conflict`).
    #[error("{0}")]
    Conflict(String),
    /// Well-formed but breaks a rule (422 `unprocessableEntity`).
    #[error("{0}")]
    Unprocessable(String),
    /// The request is too large (413 `overLimit`).
    #[error("{0}")]
    OverLimit(String),
    /// A failure of the service itself (500).
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl From<sea_orm::DbErr> for ApiError {
    fn from(e: sea_orm::DbErr) -> Self {
        Self::Internal(e.into())
    }
}

impl ApiError {
    fn parts(&self) -> (StatusCode, &'static str) {
        match self {
            Self::BadRequest(_) => (StatusCode::BAD_REQUEST, "badRequest"),
            Self::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
            Self::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            Self::NotFound(_) => (StatusCode::NOT_FOUND, "itemNotFound"),
            Self::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            Self::Unprocessable(_) => (StatusCode::UNPROCESSABLE_ENTITY, "unprocessableEntity"),
            Self::OverLimit(_) => (StatusCode::PAYLOAD_TOO_LARGE, "overLimit"),
            Self::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "computeFault"),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, fault) = self.parts();
        let message = match &self {
            Self::Internal(e) => {
                tracing::error!(error = format!("{e:#}"), "request failed");
                "The server has either erred or is incapable of performing the requested operation.".to_owned()
            }
            other => other.to_string(),
        };
        (status, Json(json!({ fault: { "code": status.as_u16(), "message": message } }))).into_response()
    }
}

/// Shorthand for handlers.
pub type ApiResult<T> = Result<T, ApiError>;
