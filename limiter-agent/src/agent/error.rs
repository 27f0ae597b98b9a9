//! The one error type of the agent's API: a code for scripts and a message for a person, turned
//! into the HTTP answer (`{"error": …, "code": …}`) in one place.

use crate::api::{ErrorBody, ErrorCode};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

#[derive(Debug)]
pub struct AgentError {
    pub code: ErrorCode,
    pub message: String,
}

impl AgentError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> AgentError {
        AgentError {
            code,
            message: message.into(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> AgentError {
        AgentError::new(ErrorCode::BadRequest, message)
    }

    pub fn internal(message: impl Into<String>) -> AgentError {
        AgentError::new(ErrorCode::Internal, message)
    }
}

impl std::fmt::Display for AgentError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl IntoResponse for AgentError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.code.http_status())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = ErrorBody {
            error: self.message,
            code: Some(self.code),
        };
        (status, Json(body)).into_response()
    }
}

/// A failure of the kernel or the files (a map, a syscall): the agent could not do it.
impl From<anyhow::Error> for AgentError {
    fn from(err: anyhow::Error) -> AgentError {
        AgentError::internal(format!("{err:#}"))
    }
}

/// A blocking task that panicked or was cancelled.
impl From<tokio::task::JoinError> for AgentError {
    fn from(err: tokio::task::JoinError) -> AgentError {
        AgentError::internal(err.to_string())
    }
}

/// A body the API cannot read: a bad request, said with the same shape as every other error.
impl From<axum::extract::rejection::JsonRejection> for AgentError {
    fn from(rejection: axum::extract::rejection::JsonRejection) -> AgentError {
        AgentError::bad_request(rejection.body_text())
    }
}

/// A query the API cannot read.
impl From<axum::extract::rejection::QueryRejection> for AgentError {
    fn from(rejection: axum::extract::rejection::QueryRejection) -> AgentError {
        AgentError::bad_request(rejection.body_text())
    }
}
