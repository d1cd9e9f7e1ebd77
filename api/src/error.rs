//! The one place where API failures become HTTP statuses and `{"error", "message"}` bodies.
//! Details (database errors, Clerk's answers) go to the log, not the body.

use axum::{
    Json,
    extract::rejection::{JsonRejection, PathRejection, QueryRejection},
    response::{IntoResponse, Response},
};
use http::{HeaderValue, StatusCode, header};
use sea_orm::DbErr;
use serde::Serialize;
use store::connections::TokenError;
use utoipa::ToSchema;

use crate::{auth::AuthFailure, lazy::LazyError};

/// The body of every error response.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// A stable machine-readable code, e.g. `not_found`, `unauthenticated`.
    #[schema(example = "not_found")]
    pub error: String,
    /// What went wrong, for a human.
    #[schema(example = "no such user")]
    pub message: String,
    /// With `needs_reconnect`: why only the user can fix the calendar connection
    /// (`grant_revoked`, `missing_refresh_token`, `missing_scopes`, `account_unverified`,
    /// `provider_disabled`).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(example = "grant_revoked")]
    pub reason: Option<String>,
}

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    Unauthenticated(AuthFailure),
    #[error("{0}")]
    Forbidden(&'static str),
    #[error("{0}")]
    NotFound(&'static str),
    #[error("{message}")]
    InvalidRequest {
        status: StatusCode,
        code: &'static str,
        message: String,
    },
    #[error("{0}")]
    Conflict(String),
    #[error("database: {0}")]
    Database(#[from] DbErr),
    #[error("calendar token: {0}")]
    Token(#[from] TokenError),
    #[error(
        "the token endpoint is not configured: set TOKEN_ENCRYPTION_KEY and CLERK_SECRET_KEY on the API"
    )]
    TokensNotConfigured,
    #[error("lazy sync: {0}")]
    LazySync(std::sync::Arc<crate::lazy::LazyError>),
}

impl ApiError {
    /// A 400 with this code and message.
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::InvalidRequest {
            status: StatusCode::BAD_REQUEST,
            code,
            message: message.into(),
        }
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::InvalidRequest { status, .. } => *status,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::Database(e) => {
                if db_unavailable(e) {
                    StatusCode::SERVICE_UNAVAILABLE
                } else {
                    StatusCode::INTERNAL_SERVER_ERROR
                }
            }
            Self::Token(e) => match e {
                _ if e.is_transient() => StatusCode::SERVICE_UNAVAILABLE,
                TokenError::NeedsReconnect(_) => StatusCode::CONFLICT,
                TokenError::Clerk(_) => StatusCode::BAD_GATEWAY,
                TokenError::Db(_) | TokenError::Crypto(_) => StatusCode::INTERNAL_SERVER_ERROR,
            },
            Self::TokensNotConfigured => StatusCode::SERVICE_UNAVAILABLE,
            Self::LazySync(e) => match **e {
                LazyError::NotFound => StatusCode::NOT_FOUND,
                LazyError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
                LazyError::Failed(_) => StatusCode::BAD_GATEWAY,
            },
        }
    }

    /// A stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Unauthenticated(_) => "unauthenticated",
            Self::Forbidden(_) => "forbidden",
            Self::NotFound(_) => "not_found",
            Self::InvalidRequest { code, .. } => code,
            Self::Conflict(_) => "conflict",
            Self::Database(e) if db_unavailable(e) => "database_unavailable",
            Self::Database(_) => "internal_error",
            Self::Token(e) if e.is_transient() => "token_temporarily_unavailable",
            Self::Token(TokenError::NeedsReconnect(_)) => "needs_reconnect",
            Self::Token(TokenError::Clerk(_)) => "clerk_error",
            Self::Token(TokenError::Crypto(_)) => "stored_token_invalid",
            Self::Token(_) => "internal_error",
            Self::TokensNotConfigured => "tokens_not_configured",
            Self::LazySync(e) => match **e {
                LazyError::NotFound => "not_found",
                LazyError::Unavailable(_) => "clerk_unavailable",
                LazyError::Failed(_) => "clerk_error",
            },
        }
    }

    /// What the caller is told. Database and Clerk details stay in the log.
    pub fn public_message(&self) -> String {
        match self {
            Self::Database(e) if db_unavailable(e) => {
                "the database is not reachable right now; retry later".into()
            }
            Self::Database(_) => "internal error; see the API's log (by request id)".into(),
            Self::Token(e) if e.is_transient() => {
                "a fresh token cannot be had right now (Clerk or the database is unavailable); retry later"
                    .into()
            }
            Self::Token(TokenError::NeedsReconnect(reason)) => format!(
                "the user must reconnect this calendar in the app (Clerk's reauthorize) before a token can be had: {}",
                reason.as_str()
            ),
            Self::Token(TokenError::Clerk(_)) => {
                "Clerk refused to hand out a fresh token; see the API's log (by request id)".into()
            }
            Self::Token(TokenError::Crypto(_)) => {
                "the stored token does not decrypt for this connection (altered, or moved from another row in the database) and was not served; see the API's log (by request id)"
                    .into()
            }
            Self::Token(_) => "internal error; see the API's log (by request id)".into(),
            Self::LazySync(e) => match **e {
                LazyError::NotFound => "no such user".into(),
                LazyError::Unavailable(_) => {
                    "the user is not synced yet and Clerk cannot be asked right now; retry shortly"
                        .into()
                }
                LazyError::Failed(_) => {
                    "the user is not synced yet and Clerk's answer could not be used; see the API's log (by request id)"
                        .into()
                }
            },
            other => other.to_string(),
        }
    }
}

/// Whether the database error is one that can pass (unreachable, timed out, a conflict between
/// concurrent transactions): 503 and "retry later" rather than 500.
fn db_unavailable(error: &DbErr) -> bool {
    entity::db_errors::is_transient(error)
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::error!(
                error.cause_chain = ?self,
                error.message = %self,
                status = status.as_u16(),
                "request failed"
            );
        }
        let body = ErrorBody {
            error: self.code().to_owned(),
            message: self.public_message(),
            reason: match &self {
                Self::Token(TokenError::NeedsReconnect(reason)) => Some(reason.as_str().to_owned()),
                _ => None,
            },
        };
        let mut response = (status, Json(body)).into_response();
        if status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
        }
        response
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        Self::InvalidRequest {
            status: rejection.status(),
            code: "invalid_body",
            message: rejection.body_text(),
        }
    }
}

impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> Self {
        Self::bad_request("invalid_path", rejection.body_text())
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        Self::bad_request("invalid_query", rejection.body_text())
    }
}
