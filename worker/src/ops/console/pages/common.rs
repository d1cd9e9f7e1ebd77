//! What the pages share: error pages, tables of raw query rows, times and ages as shown.

use std::fmt::Write as _;

use http::StatusCode;
use sea_orm::{ConnectionTrait, DbBackend, DbErr, Statement, Value};

use super::super::{
    Console, Outcome,
    auth::Session,
    html::{escape, page},
};
use crate::ops::dlq::DlqError;

pub(super) fn error_page(session: &Session, status: StatusCode, message: &str) -> Outcome {
    Outcome::Html(
        status,
        page(
            "Error",
            Some(session),
            &format!("<p class=\"error\">{}</p>", escape(message)),
        ),
    )
}

pub(super) fn dlq_error(session: &Session, error: DlqError) -> Outcome {
    let status = match error {
        DlqError::NotFound(_) => StatusCode::NOT_FOUND,
        DlqError::NotRecorded(_) => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::BAD_GATEWAY,
    };
    error_page(session, status, &error.to_string())
}

pub(super) fn db_error(session: &Session, error: DbErr) -> Outcome {
    tracing::warn!(error.message = %error, "console database query failed");
    error_page(
        session,
        StatusCode::BAD_GATEWAY,
        &format!("Database query failed: {error}"),
    )
}

pub(super) fn age(seconds: Option<i64>) -> String {
    match seconds {
        None => "-".into(),
        Some(s) if s < 120 => format!("{s}s"),
        Some(s) if s < 7200 => format!("{}m", s / 60),
        Some(s) if s < 172_800 => format!("{}h", s / 3600),
        Some(s) => format!("{}d", s / 86_400),
    }
}

/// SQL for a `timestamptz` column shown as the console shows times (UTC, to the second).
pub(super) fn at(column: &str) -> String {
    format!("to_char({column} AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS \"UTC\"')")
}

/// SQL for a Clerk time in milliseconds (`clerk_updated_at`) shown as a time, to the
/// millisecond (it is the row's version: two versions may be a millisecond apart).
pub(super) fn at_ms(column: &str) -> String {
    format!(
        "to_char(to_timestamp({column} / 1000.0) AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.MS \"UTC\"')"
    )
}

/// Rows of a raw query, every column read as text.
pub(super) async fn rows(
    console: &Console,
    sql: &str,
    values: Vec<Value>,
    columns: &[&str],
) -> Result<Vec<Vec<String>>, DbErr> {
    let rows = console
        .db
        .query_all_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            sql,
            values,
        ))
        .await?;
    Ok(rows
        .iter()
        .map(|row| {
            columns
                .iter()
                .map(|c| {
                    row.try_get::<Option<String>>("", c)
                        .ok()
                        .flatten()
                        .unwrap_or_else(|| "-".into())
                })
                .collect()
        })
        .collect())
}

pub(super) fn table(columns: &[&str], rows: &[Vec<String>], empty: &str) -> String {
    if rows.is_empty() {
        return format!("<p>{}</p>", escape(empty));
    }
    let mut out = String::from("<table><tr>");
    for c in columns {
        let _ = write!(out, "<th>{}</th>", escape(c));
    }
    out.push_str("</tr>");
    for row in rows {
        out.push_str("<tr>");
        for cell in row {
            let _ = write!(out, "<td>{}</td>", escape(cell));
        }
        out.push_str("</tr>");
    }
    out.push_str("</table>");
    out
}
