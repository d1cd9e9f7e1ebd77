//! Classifying database errors: worth retrying (connection trouble, timeouts, conflicts between
//! concurrent transactions) or not (bad SQL, type errors). The worker retries on the first kind;
//! the api answers 503 instead of 500 for it.

use sea_orm::{DbErr, RuntimeErr, sqlx};

/// Classifies a database error: connection trouble, timeouts, serialization failures, deadlocks
/// and unique conflicts can succeed later; anything else (bad SQL, type errors) cannot.
pub fn is_transient(error: &DbErr) -> bool {
    match error {
        DbErr::ConnectionAcquire(_) | DbErr::Conn(_) => true,
        DbErr::Exec(runtime) | DbErr::Query(runtime) => match runtime {
            RuntimeErr::SqlxError(sqlx_error) => match sqlx_error.as_ref() {
                sqlx::Error::Database(db) => db.code().is_some_and(|code| {
                    // 40001 serialization failure, 40P01 deadlock, 23505 unique violation,
                    // 55P03 lock not available, 57014 statement timeout / cancel,
                    // class 08 connection exception, 53 insufficient resources, 57P0x shutdown.
                    matches!(
                        code.as_ref(),
                        "40001" | "40P01" | "23505" | "55P03" | "57014"
                    ) || code.starts_with("08")
                        || code.starts_with("53")
                        || code.starts_with("57P")
                }),
                sqlx::Error::Io(_)
                | sqlx::Error::PoolTimedOut
                | sqlx::Error::PoolClosed
                | sqlx::Error::WorkerCrashed
                | sqlx::Error::Protocol(_)
                | sqlx::Error::Tls(_) => true,
                _ => false,
            },
            RuntimeErr::Internal(_) => false,
        },
        DbErr::TryIntoErr { .. }
        | DbErr::ConvertFromU64(_)
        | DbErr::UnpackInsertId
        | DbErr::UpdateGetPrimaryKey
        | DbErr::RecordNotFound(_)
        | DbErr::AttrNotSet(_)
        | DbErr::Custom(_)
        | DbErr::Type(_)
        | DbErr::Json(_)
        | DbErr::Migration(_)
        | DbErr::RecordNotInserted
        | DbErr::RecordNotUpdated
        | DbErr::BackendNotSupported { .. }
        | DbErr::KeyArityMismatch { .. }
        | DbErr::PrimaryKeyNotSet { .. }
        | DbErr::RbacError(_)
        | DbErr::AccessDenied { .. }
        | DbErr::MutexPoisonError => false,
        // DbErr is non_exhaustive: a variant added later is not assumed to be retryable.
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_failures_are_transient_and_logic_errors_are_not() {
        assert!(is_transient(&DbErr::ConnectionAcquire(
            sea_orm::error::ConnAcquireErr::Timeout
        )));
        assert!(is_transient(&DbErr::Conn(RuntimeErr::SqlxError(
            std::sync::Arc::new(sqlx::Error::PoolTimedOut)
        ))));
        assert!(!is_transient(&DbErr::Type("bad".into())));
        assert!(!is_transient(&DbErr::RecordNotFound("x".into())));
    }
}
