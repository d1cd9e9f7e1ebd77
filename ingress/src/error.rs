//! The one place where ingress failures become HTTP statuses. Details go to the log; the body
//! says only what the sender can act on.

use http::StatusCode;

use crate::verify::Rejection;

/// Why a webhook was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum IngressError {
    #[error("missing Svix headers (svix-id, svix-timestamp, svix-signature)")]
    MissingHeaders,
    #[error("malformed {0}")]
    Malformed(&'static str),
    #[error("signature does not match any configured secret")]
    BadSignature,
    #[error("svix-timestamp is more than 5 minutes from the server's clock")]
    StaleTimestamp,
    #[error("body larger than {0} bytes")]
    TooLarge(usize),
    #[error("body not received within {0:?}")]
    BodyTimeout(std::time::Duration),
    #[error("could not read the body: {0}")]
    BodyRead(String),
    #[error("the broker did not confirm the publish: {0}")]
    BrokerUnavailable(#[from] broker::PublishError),
    #[error("no such route")]
    NotFound,
    #[error("method not allowed")]
    MethodNotAllowed,
}

impl From<Rejection> for IngressError {
    fn from(rejection: Rejection) -> Self {
        match rejection {
            Rejection::MissingHeaders => Self::MissingHeaders,
            Rejection::Malformed(what) => Self::Malformed(what),
            Rejection::StaleTimestamp => Self::StaleTimestamp,
            Rejection::BadSignature => Self::BadSignature,
        }
    }
}

impl IngressError {
    /// The HTTP status of the contract.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::MissingHeaders | Self::Malformed(_) | Self::BodyRead(_) => {
                StatusCode::BAD_REQUEST
            }
            Self::BadSignature | Self::StaleTimestamp => StatusCode::UNAUTHORIZED,
            Self::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            Self::BrokerUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
        }
    }

    /// A stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::MissingHeaders => "missing_headers",
            Self::Malformed(_) => "malformed_request",
            Self::BadSignature => "bad_signature",
            Self::StaleTimestamp => "stale_timestamp",
            Self::TooLarge(_) => "body_too_large",
            Self::BodyTimeout(_) => "body_timeout",
            Self::BodyRead(_) => "body_unreadable",
            Self::BrokerUnavailable(_) => "broker_unavailable",
            Self::NotFound => "not_found",
            Self::MethodNotAllowed => "method_not_allowed",
        }
    }

    /// What the caller is told. The broker's own error stays in the log.
    pub fn public_message(&self) -> String {
        match self {
            Self::BrokerUnavailable(_) => {
                "the event could not be stored right now; retry later (Svix does this by itself)"
                    .into()
            }
            other => other.to_string(),
        }
    }
}
