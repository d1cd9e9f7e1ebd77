//! Why an event body can never be applied.

/// Why a body can never be applied. Permanent: retrying cannot help.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("body is not a Clerk event envelope: {0}")]
    NotAnEnvelope(String),
    #[error("{event_type} data is not a Clerk user object: {reason}")]
    BadUser { event_type: String, reason: String },
    #[error("{event_type} data is not the Clerk object it should carry: {reason}")]
    BadObject { event_type: String, reason: String },
}
