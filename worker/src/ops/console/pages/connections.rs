//! `GET /console/connections`: how the calendar connections stand (counts by provider, status
//! and reason), and the users whose connection needs reconnecting, newest first. Only ids,
//! codes and times: no token, no email.

use std::fmt::Write as _;

use http::StatusCode;
use sea_orm::DbErr;

use super::super::{
    Console, Outcome,
    auth::Session,
    html::{escape, page},
};
use super::common::{at, db_error, rows, table};

/// Connections needing reconnecting listed at most.
pub const LIST_LIMIT: usize = 200;

/// `GET /console/connections`, for viewers and operators alike.
pub async fn connections(console: &Console, session: &Session) -> Outcome {
    match body(console).await {
        Ok(body) => Outcome::Html(
            StatusCode::OK,
            page("Calendar connections", Some(session), &body),
        ),
        Err(error) => db_error(session, error),
    }
}

async fn body(console: &Console) -> Result<String, DbErr> {
    let count_cols = ["provider", "status", "reason", "connections"];
    let counts = rows(
        console,
        "SELECT provider, status, COALESCE(status_reason, '-') AS reason, \
         count(*)::text AS connections \
         FROM user_calendar_connections GROUP BY 1, 2, 3 ORDER BY 1, 2, 3",
        vec![],
        &count_cols,
    )
    .await?;
    let needing: u64 = counts
        .iter()
        .filter(|row| row[1] == store::health::NEEDS_RECONNECT)
        .filter_map(|row| row[3].parse::<u64>().ok())
        .sum();
    let list_cols = [
        "clerk_user_id",
        "provider",
        "reason",
        "needs reconnecting since",
        "last checked",
    ];
    let list = rows(
        console,
        &format!(
            "SELECT u.clerk_user_id, c.provider, COALESCE(c.status_reason, '-') AS reason, \
             {} AS \"needs reconnecting since\", {} AS \"last checked\" \
             FROM user_calendar_connections c JOIN users u ON u.id = c.user_id \
             WHERE c.status = $1 ORDER BY c.status_changed_at DESC, c.id LIMIT {LIST_LIMIT}",
            at("c.status_changed_at"),
            at("c.status_checked_at")
        ),
        vec![store::health::NEEDS_RECONNECT.into()],
        &list_cols,
    )
    .await?;

    let mut body = String::from(
        "<p>Each calendar connection's status: <code>connected</code>, \
         <code>needs_reconnect</code> (only the user can fix it, by reconnecting the account) or \
         <code>unavailable</code> (Clerk could not be asked lately).</p><h2>By provider, status and reason</h2>",
    );
    body.push_str(&table(&count_cols, &counts, "No calendar connections."));
    let _ = write!(
        body,
        "<h2>Needing reconnecting</h2><p>{}</p>",
        escape(&summary(needing, list.len()))
    );
    body.push_str(&table(&list_cols, &list, ""));
    Ok(body)
}

/// What the list shows of the `needing` connections that need reconnecting.
fn summary(needing: u64, listed: usize) -> String {
    match needing {
        0 if listed == 0 => "No connection needs reconnecting.".into(),
        n if n > listed as u64 && listed == LIST_LIMIT => format!(
            "{n} connection(s) need reconnecting; the newest {LIST_LIMIT} are listed, newest first."
        ),
        _ => format!("{listed} connection(s) need reconnecting, newest first."),
    }
}

#[cfg(test)]
mod tests {
    use super::{LIST_LIMIT, summary};

    #[test]
    fn the_summary_says_when_the_list_is_cut() {
        assert_eq!(summary(0, 0), "No connection needs reconnecting.");
        assert_eq!(
            summary(3, 3),
            "3 connection(s) need reconnecting, newest first."
        );
        assert_eq!(
            summary(250, LIST_LIMIT),
            "250 connection(s) need reconnecting; the newest 200 are listed, newest first."
        );
        // Counted and listed a moment apart: what is listed is what is said.
        assert_eq!(
            summary(4, 5),
            "5 connection(s) need reconnecting, newest first."
        );
        assert_eq!(
            summary(6, 5),
            "5 connection(s) need reconnecting, newest first."
        );
    }
}
