//! The console's audit log: every action, reveal and body search recorded before it is done
//! ([`audit`], [`audit_done`]), and `GET /console/audit`, the newest 500.

use http::StatusCode;
use sea_orm::{ConnectionTrait, DbBackend, DbErr, Statement, Value};

use super::super::{Console, Outcome, auth::Session, html::page};
use super::common::{at, db_error, rows, table};

/// An operator's action.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Act {
    Reveal,
    ReplayOne,
    DropOne,
    ReplayMatching,
    /// A dead-letter search by body text.
    Search,
}

impl Act {
    /// Its name in the audit log.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Reveal => "reveal",
            Self::ReplayOne => "replay",
            Self::DropOne => "drop",
            Self::ReplayMatching => "replay_matching",
            Self::Search => "search",
        }
    }
}

/// Records an action in `console_audit` before it is carried out: `count` is what it is about
/// to touch, `done` what it did when that is already known (a reveal, a search). Returns the
/// row's id, for [`audit_done`].
pub async fn audit(
    console: &Console,
    session: &Session,
    action: Act,
    target: &str,
    count: usize,
    done: Option<usize>,
) -> Result<i64, DbErr> {
    let as_i64 = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
    console
        .db
        .query_one_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "INSERT INTO console_audit (actor, role, action, target, count, done) \
             VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
            vec![
                Value::from(session.user.clone()),
                Value::from(session.role.as_str()),
                Value::from(action.as_str()),
                Value::from(target.to_owned()),
                Value::from(as_i64(count)),
                Value::from(done.map(as_i64)),
            ],
        ))
        .await?
        .ok_or_else(|| DbErr::RecordNotInserted)?
        .try_get("", "id")
}

/// Records what an action audited by [`audit`] did. A failure here is logged: the action is
/// in the log already, with what it was about to touch.
pub(super) async fn audit_done(console: &Console, id: i64, done: usize) {
    let result = console
        .db
        .execute_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "UPDATE console_audit SET done = $2 WHERE id = $1",
            vec![
                Value::from(id),
                Value::from(i64::try_from(done).unwrap_or(i64::MAX)),
            ],
        ))
        .await;
    if let Err(error) = result {
        tracing::warn!(audit_id = id, done, error.message = %error, "console action done, but its count could not be recorded");
    }
}

/// `GET /console/audit`: the newest 500 entries.
pub async fn audit_log(console: &Console, session: &Session) -> Outcome {
    let cols = ["at", "actor", "role", "action", "target", "count", "done"];
    let found = rows(
        console,
        &format!(
            "SELECT {} AS at, actor, role, action, target, count::text AS count, \
             COALESCE(done::text, 'not recorded') AS done \
             FROM console_audit ORDER BY id DESC LIMIT 500",
            at("at")
        ),
        vec![],
        &cols,
    )
    .await;
    match found {
        Ok(found) => Outcome::Html(
            StatusCode::OK,
            page(
                "Audit log",
                Some(session),
                &table(&cols, &found, "Nothing done through the console yet."),
            ),
        ),
        Err(error) => db_error(session, error),
    }
}
