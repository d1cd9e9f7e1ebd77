//! The console's pages and actions. Every value shown goes through [`escape`].

use std::fmt::Write as _;

use broker::lapin::types::FieldTable;
use http::StatusCode;
use sea_orm::{ConnectionTrait, DbBackend, DbErr, Statement, Value};

use super::{
    Console, Outcome,
    auth::Session,
    html::{Form, csrf_field, encode, escape, hidden, page, time_ms},
    mask,
};
use crate::ops::dlq::{self, Action, DeadLetter, DlqError, Filter, Selection, Window};

/// Dead letters per page.
pub const PAGE_SIZE: usize = 50;

/// Dead letters one listing page reads at most: after an outage the queue may hold far more,
/// and a page keeps only its own fifty in memory whatever it reads.
pub const SCAN_LIMIT: usize = 10_000;

/// The login page.
pub fn login_form(error: Option<&str>) -> String {
    let error = error
        .map(|e| format!("<p class=\"error\">{}</p>", escape(e)))
        .unwrap_or_default();
    page(
        "Log in",
        None,
        &format!(
            "{error}<form method=\"post\" action=\"/console/login\">\
             <p><label>Name <input name=\"name\" autocomplete=\"username\" required></label></p>\
             <p><label>Key <input name=\"key\" type=\"password\" autocomplete=\"current-password\" required></label></p>\
             <p><button>Log in</button></p></form>"
        ),
    )
}

fn error_page(session: &Session, status: StatusCode, message: &str) -> Outcome {
    Outcome::Html(
        status,
        page(
            "Error",
            Some(session),
            &format!("<p class=\"error\">{}</p>", escape(message)),
        ),
    )
}

fn dlq_error(session: &Session, error: DlqError) -> Outcome {
    let status = match error {
        DlqError::NotFound(_) => StatusCode::NOT_FOUND,
        DlqError::NotRecorded(_) => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::BAD_GATEWAY,
    };
    error_page(session, status, &error.to_string())
}

fn db_error(session: &Session, error: DbErr) -> Outcome {
    tracing::warn!(error.message = %error, "console database query failed");
    error_page(
        session,
        StatusCode::BAD_GATEWAY,
        &format!("Database query failed: {error}"),
    )
}

/// Depth and consumers of one queue.
struct QueueStats {
    name: String,
    messages: Option<u32>,
    consumers: Option<u32>,
}

/// Passive declares of every queue of the topology (a missing queue shows `-`).
async fn queue_stats(console: &Console) -> Result<Vec<QueueStats>, DlqError> {
    let connection = dlq::connect_first(&console.broker, "console").await?;
    let mut out = Vec::new();
    for name in console.topology.all_queues() {
        let channel = connection.create_channel().await?;
        let declared = channel
            .queue_declare(
                name.as_str().into(),
                broker::lapin::options::QueueDeclareOptions {
                    passive: true,
                    durable: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await;
        let (messages, consumers) = match declared {
            Ok(queue) => (Some(queue.message_count()), Some(queue.consumer_count())),
            Err(_) => (None, None),
        };
        if channel.status().connected() {
            let _ = channel.close(200, "console".into()).await;
        }
        out.push(QueueStats {
            name,
            messages,
            consumers,
        });
    }
    let _ = connection.close(200, "console".into()).await;
    Ok(out)
}

/// Sums of `clerk_sync_events_total` by outcome, and the last reconcile, from this worker's
/// own registry (since it started).
pub(super) fn metric_counts(console: &Console) -> (Vec<(&'static str, f64)>, Option<i64>) {
    let text = console
        .registry
        .lock()
        .map(|r| telemetry::encode_metrics(&r))
        .unwrap_or_default();
    let mut counts = vec![("applied", 0.0), ("retried", 0.0), ("dead_lettered", 0.0)];
    let mut last_reconcile = None;
    for line in text.lines() {
        let value = line
            .rsplit(' ')
            .next()
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0);
        if line.starts_with("clerk_sync_events_total{") {
            for (outcome, sum) in &mut counts {
                if line.contains(&format!("outcome=\"{outcome}\"")) {
                    *sum += value;
                }
            }
        } else if line.starts_with("clerk_sync_reconcile_last_success_timestamp_seconds ")
            && value > 0.0
        {
            last_reconcile = Some(value as i64);
        }
    }
    (counts, last_reconcile)
}

/// `GET /console`.
pub async fn overview(console: &Console, session: &Session) -> Outcome {
    let mut body = String::from("<h2>Queues</h2>");
    match queue_stats(console).await {
        Ok(stats) => {
            body.push_str("<table><tr><th>queue</th><th>messages</th><th>consumers</th></tr>");
            for q in stats {
                let _ = write!(
                    body,
                    "<tr><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td></tr>",
                    escape(&q.name),
                    q.messages.map_or("-".into(), |m| m.to_string()),
                    q.consumers.map_or("-".into(), |c| c.to_string()),
                );
            }
            body.push_str("</table>");
        }
        Err(error) => {
            let _ = write!(
                body,
                "<p class=\"error\">RabbitMQ: {}</p>",
                escape(&error.to_string())
            );
        }
    }
    let (counts, last_reconcile) = metric_counts(console);
    body.push_str(
        "<h2>This worker since it started</h2><table><tr><th>events</th><th>count</th></tr>",
    );
    for (outcome, n) in counts {
        let _ = write!(
            body,
            "<tr><td>{outcome}</td><td class=\"num\">{n}</td></tr>"
        );
    }
    body.push_str("</table>");
    overview_rates(console, &mut body);
    overview_ages(console, &mut body).await;
    let _ = write!(
        body,
        "<p>Last successful scheduled reconcile: {}</p>",
        last_reconcile
            .map(|s| time_ms(Some(s * 1000)))
            .unwrap_or_else(|| "none in this worker".into())
    );
    Outcome::Html(StatusCode::OK, page("Overview", Some(session), &body))
}

/// This worker's events a minute over the last 1, 5 and 15 minutes.
fn overview_rates(console: &Console, body: &mut String) {
    body.push_str(
        "<h2>Events a minute, this worker</h2><table><tr><th>over the last</th>\
         <th>applied</th><th>retried</th><th>dead-lettered</th></tr>",
    );
    for minutes in [1, 5, 15] {
        let cells = match console.rates(std::time::Duration::from_secs(minutes * 60)) {
            Some(rates) => rates
                .iter()
                .map(|r| format!("<td class=\"num\">{r:.1}</td>"))
                .collect::<String>(),
            None => "<td colspan=\"3\">collecting (a sample every 10 s)</td>".into(),
        };
        let _ = write!(body, "<tr><td>{minutes} min</td>{cells}</tr>");
    }
    body.push_str("</table>");
}

/// How old the oldest work is: the lag of the event this worker applied last (the main
/// queue's head is at most about that old while it keeps up), and the oldest dead letter.
async fn overview_ages(console: &Console, body: &mut String) {
    body.push_str("<h2>Ages</h2><table>");
    let now = crate::consume::now_ms();
    let newest = match console.progress.last() {
        Some((lag_ms, at_ms)) => format!(
            "{:.1} s behind the ingress, applied {} s ago",
            lag_ms as f64 / 1000.0,
            (now - at_ms).max(0) / 1000
        ),
        None => "none applied by this worker yet".into(),
    };
    let _ = write!(
        body,
        "<tr><td>newest applied event</td><td>{}</td></tr>",
        escape(&newest)
    );
    let oldest = {
        let _one = console.dlq_lock.lock().await;
        dlq::list(
            &console.broker,
            console.topology.clone(),
            Some(1),
            &Filter::default(),
        )
        .await
    };
    let oldest = match oldest {
        Ok(letters) => match letters.first() {
            Some(letter) => match letter.age_seconds {
                Some(age) => format!("{age} s ({})", letter.id),
                None => format!("unknown ({})", letter.id),
            },
            None => "no dead letters".into(),
        },
        Err(error) => format!("RabbitMQ: {error}"),
    };
    let _ = write!(
        body,
        "<tr><td>oldest dead letter</td><td>{}</td></tr></table>",
        escape(&oldest)
    );
}

/// The filter of a query or form (`type`, `reason`, `clerk_user_id`, `older_than`,
/// `newer_than`; ages like `30s`, `5m`, `2h`), or why it is not one.
pub fn filter_of(form: &Form) -> Result<Filter, String> {
    let age = |name: &str| -> Result<Option<i64>, String> {
        form.get(name)
            .map(|v| {
                settings::parse_duration(v)
                    .and_then(|d| i64::try_from(d.as_secs()).ok())
                    .ok_or_else(|| format!("{name}: {v:?} is not a duration such as 30s, 5m or 2h"))
            })
            .transpose()
    };
    Ok(Filter {
        event_type: form.get("type").map(str::to_owned),
        reason: form.get("reason").map(str::to_owned),
        clerk_user_id: form.get("clerk_user_id").map(str::to_owned),
        older_than_seconds: age("older_than")?,
        newer_than_seconds: age("newer_than")?,
        body_contains: form.get("body").map(str::to_owned),
    })
}

const FILTER_FIELDS: [&str; 6] = [
    "type",
    "reason",
    "clerk_user_id",
    "older_than",
    "newer_than",
    "body",
];

/// The filter's fields as hidden inputs (to carry it into a POST).
fn filter_hidden(form: &Form) -> String {
    FILTER_FIELDS
        .iter()
        .filter_map(|f| form.get(f).map(|v| hidden(f, v)))
        .collect()
}

/// The filter's fields as a query string (`a=b&…`).
fn filter_query(form: &Form) -> String {
    FILTER_FIELDS
        .iter()
        .filter_map(|f| form.get(f).map(|v| format!("{f}={}", encode(v))))
        .collect::<Vec<_>>()
        .join("&")
}

fn age(seconds: Option<i64>) -> String {
    match seconds {
        None => "-".into(),
        Some(s) if s < 120 => format!("{s}s"),
        Some(s) if s < 7200 => format!("{}m", s / 60),
        Some(s) if s < 172_800 => format!("{}h", s / 3600),
        Some(s) => format!("{}d", s / 86_400),
    }
}

/// `GET /console/dead-letters`: the filter form, the matching dead letters a page at a time,
/// and for operators "replay all matching".
pub async fn dead_letters(console: &Console, session: &Session, query: &Form) -> Outcome {
    let filter = match filter_of(query) {
        Ok(filter) => filter,
        Err(why) => return error_page(session, StatusCode::BAD_REQUEST, &why),
    };
    if filter.body_contains.is_some() && !session.role.may_act() {
        return error_page(
            session,
            StatusCode::FORBIDDEN,
            "Searching bodies reveals personal data: operators only.",
        );
    }
    let page_no = query
        .get("page")
        .and_then(|p| p.parse::<usize>().ok())
        .unwrap_or(1)
        .max(1);
    let window = Window {
        skip: (page_no - 1) * PAGE_SIZE,
        take: PAGE_SIZE,
        scan_at_most: SCAN_LIMIT,
        count_all: true,
    };
    let scanned = {
        let _one = console.dlq_lock.lock().await;
        dlq::scan(&console.broker, console.topology.clone(), &filter, window).await
    };
    let scanned = match scanned {
        Ok(scanned) => scanned,
        Err(error) => return dlq_error(session, error),
    };
    // A body search reveals what masking hides: recorded like a reveal (who, when, how many
    // matched; the searched text never), and not shown when it cannot be recorded.
    if filter.body_contains.is_some()
        && let Err(error) = audit(
            console,
            session,
            Act::Search,
            &filter.describe(),
            scanned.matched,
            Some(scanned.matched),
        )
        .await
    {
        return db_error(session, error);
    }
    let pages = scanned.matched.div_ceil(PAGE_SIZE).max(1);
    let value = |name| escape(query.get(name).unwrap_or(""));
    let mut body = format!(
        "<form method=\"get\" action=\"/console/dead-letters\">\
         <label>Type <input name=\"type\" value=\"{}\" placeholder=\"user.created\"></label>\
         <label>Reason contains <input name=\"reason\" value=\"{}\"></label>\
         <label>Clerk user id <input name=\"clerk_user_id\" value=\"{}\"></label>\
         <label>Older than <input name=\"older_than\" value=\"{}\" placeholder=\"1h\" size=\"5\"></label>\
         <label>Newer than <input name=\"newer_than\" value=\"{}\" placeholder=\"48h\" size=\"5\"></label>\
         {}<button>Filter</button></form>",
        value("type"),
        value("reason"),
        value("clerk_user_id"),
        value("older_than"),
        value("newer_than"),
        if session.role.may_act() {
            format!(
                "<label>Body contains <input name=\"body\" value=\"{}\" placeholder=\"an email, a provider id\"></label>",
                value("body")
            )
        } else {
            String::new()
        },
    );
    let _ = write!(
        body,
        "<p><strong>{}</strong> dead letter(s) match {}; page {page_no} of {pages}.</p>",
        scanned.matched,
        escape(&filter.describe())
    );
    if !scanned.complete {
        let _ = write!(
            body,
            "<p class=\"notice\">Only the oldest {} dead letters were read (a page reads at most \
             {SCAN_LIMIT}): narrow the filter (older than, newer than), or list them all with \
             <code>worker dlq list</code>.</p>",
            scanned.read
        );
    }
    if session.role.may_act() && scanned.matched > 0 {
        let _ = write!(
            body,
            "<form method=\"post\" action=\"/console/dead-letters/replay\">{}{}\
             <button>Replay all {}matching…</button></form>",
            csrf_field(session),
            filter_hidden(query),
            // Counted only when the whole queue was read; the confirmation counts anyway.
            if scanned.complete {
                format!("{} ", scanned.matched)
            } else {
                String::new()
            },
        );
    }
    body.push_str(
        "<table><tr><th>id</th><th>type</th><th>Clerk user</th><th>attempts</th><th>age</th><th>reason</th></tr>",
    );
    for l in &scanned.letters {
        let _ = write!(
            body,
            "<tr><td><a href=\"/console/dead-letter?id={}\">{}</a></td><td>{}</td><td>{}</td>\
             <td class=\"num\">{}</td><td>{}</td><td>{}</td></tr>",
            encode(&l.id),
            escape(&l.id),
            escape(l.event_type.as_deref().unwrap_or("-")),
            escape(l.clerk_user_id.as_deref().unwrap_or("-")),
            l.attempts,
            age(l.age_seconds),
            escape(&reason_text(l.reason.as_deref())),
        );
    }
    body.push_str("</table><p>");
    let filters = filter_query(query);
    let sep = if filters.is_empty() { "" } else { "&amp;" };
    if page_no > 1 {
        let _ = write!(
            body,
            "<a href=\"/console/dead-letters?{}{sep}page={}\">← previous</a> ",
            escape(&filters),
            page_no - 1
        );
    }
    if page_no < pages {
        let _ = write!(
            body,
            "<a href=\"/console/dead-letters?{}{sep}page={}\">next →</a>",
            escape(&filters),
            page_no + 1
        );
    }
    body.push_str("</p>");
    Outcome::Html(StatusCode::OK, page("Dead letters", Some(session), &body))
}

/// One dead letter, read with the same code as `worker dlq show`.
async fn find_letter(console: &Console, id: &str) -> Result<DeadLetter, DlqError> {
    let _one = console.dlq_lock.lock().await;
    dlq::show(&console.broker, console.topology.clone(), id).await
}

/// `GET /console/dead-letter?id=…` (masked), and the page a reveal shows.
pub async fn dead_letter(
    console: &Console,
    session: &Session,
    query: &Form,
    revealed: bool,
) -> Outcome {
    let Some(id) = query.get("id") else {
        return error_page(
            session,
            StatusCode::BAD_REQUEST,
            "which dead letter? (?id=…)",
        );
    };
    let letter = match find_letter(console, id).await {
        Ok(letter) => letter,
        Err(error) => return dlq_error(session, error),
    };
    Outcome::Html(
        StatusCode::OK,
        page(
            &format!("Dead letter {}", letter.id),
            Some(session),
            &letter_body(session, &letter, revealed),
        ),
    )
}

fn letter_body(session: &Session, l: &DeadLetter, revealed: bool) -> String {
    let mut body = format!(
        "<table><tr><th>type</th><td>{}</td></tr><tr><th>Clerk user</th><td>{}</td></tr>\
         <tr><th>reason</th><td>{}</td></tr><tr><th>attempts</th><td>{}</td></tr>\
         <tr><th>first failure</th><td>{}</td></tr><tr><th>last failure</th><td>{}</td></tr>\
         <tr><th>age</th><td>{}</td></tr></table>",
        escape(l.event_type.as_deref().unwrap_or("-")),
        escape(l.clerk_user_id.as_deref().unwrap_or("-")),
        escape(&reason_text(l.reason.as_deref())),
        l.attempts,
        time_ms(l.first_failure_at),
        time_ms(l.last_failure_at),
        age(l.age_seconds),
    );
    if session.role.may_act() {
        let id = hidden("id", &l.id);
        let csrf = csrf_field(session);
        let _ = write!(
            body,
            "<p><form class=\"inline\" method=\"post\" action=\"/console/dead-letter/replay\">{csrf}{id}<button>Replay…</button></form> \
             <form class=\"inline\" method=\"post\" action=\"/console/dead-letter/drop\">{csrf}{id}<button class=\"danger\">Drop…</button></form> "
        );
        if !revealed {
            let _ = write!(
                body,
                "<form class=\"inline\" method=\"post\" action=\"/console/dead-letter/reveal\">{csrf}{id}<button>Reveal personal fields (audited)</button></form>"
            );
        }
        body.push_str("</p>");
    }
    body.push_str("<h2>Headers</h2><table>");
    for (name, value) in &l.headers {
        let (name, value) = header_row(name, value);
        let _ = write!(body, "<tr><th>{name}</th><td>{value}</td></tr>");
    }
    body.push_str("</table>");
    if revealed {
        let _ = write!(
            body,
            "<h2>Body (revealed)</h2><p class=\"notice\">This reveal is in the audit log.</p><pre>{}</pre>",
            escape(&mask::pretty_body(&l.body))
        );
    } else {
        let _ = write!(
            body,
            "<h2>Body (personal fields masked)</h2><pre>{}</pre>",
            escape(&mask::masked_body(&l.body))
        );
    }
    body
}

/// A header as the dead-letter page shows it (escaped HTML): times in milliseconds as times
/// (the number in a tooltip), and RabbitMQ's delivery count said for what it is.
fn header_row(name: &str, value: &str) -> (String, String) {
    if name == "x-delivery-count" {
        return (
            format!(
                "{}<br><small>times RabbitMQ handed it out, console listings included; \
                 not apply attempts</small>",
                escape(name)
            ),
            escape(value),
        );
    }
    let time = name
        .ends_with("-at")
        .then(|| value.parse::<i64>().ok())
        .flatten()
        .filter(|ms| *ms > 1_000_000_000_000);
    match time {
        Some(ms) => (
            escape(name),
            format!(
                "<span title=\"{}\">{}</span>",
                escape(value),
                escape(&time_ms(Some(ms)))
            ),
        ),
        None => (escape(name), escape(value)),
    }
}

/// A dead letter's reason in words, for the codes that are not a sentence themselves.
pub fn reason_text(reason: Option<&str>) -> String {
    match reason {
        None => "-".into(),
        Some("email_held_by_other_user") => "Its email address is still stored for another user \
             (that user's own change has not arrived yet, or failed): retried until it is freed \
             (email_held_by_other_user)"
            .into(),
        Some("slug_held_by_other_organization") => "Its slug is still stored for another \
             organization (that organization's own change has not arrived yet, or failed): \
             retried until it is freed (slug_held_by_other_organization)"
            .into(),
        Some(reason) => reason.to_owned(),
    }
}

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
async fn audit_done(console: &Console, id: i64, done: usize) {
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

/// An operator's POST (role and CSRF token already checked): reveal at once (audited first);
/// replay and drop show a confirmation with the count the first time, act on `confirm=yes`.
pub async fn act(console: &Console, session: &Session, action: Act, form: &Form) -> Outcome {
    if action == Act::Reveal {
        let Some(id) = form.get("id") else {
            return error_page(session, StatusCode::BAD_REQUEST, "which dead letter?");
        };
        // Audited before anything is shown: a reveal that cannot be recorded does not happen.
        if let Err(error) = audit(console, session, Act::Reveal, id, 1, Some(1)).await {
            return db_error(session, error);
        }
        tracing::info!(user = %session.user, id, "console reveal");
        return dead_letter(console, session, form, true).await;
    }
    let (selection, target, back) = match action {
        Act::ReplayMatching => match filter_of(form) {
            Ok(filter) => {
                let target = filter.describe();
                let query = filter_query(form);
                (
                    Selection::Matching(filter),
                    target,
                    format!("/console/dead-letters?{query}"),
                )
            }
            Err(why) => return error_page(session, StatusCode::BAD_REQUEST, &why),
        },
        _ => match form.get("id") {
            Some(id) => (
                Selection::Ids(vec![id.to_owned()]),
                id.to_owned(),
                format!("/console/dead-letter?id={}", encode(id)),
            ),
            None => return error_page(session, StatusCode::BAD_REQUEST, "which dead letter?"),
        },
    };
    let verb = if action == Act::DropOne {
        "drop"
    } else {
        "replay"
    };
    let confirmed = form.get("confirm") == Some("yes");
    let dlq_action = match (confirmed, action) {
        (false, _) => Action::Preview,
        (true, Act::DropOne) => Action::Drop,
        (true, _) => Action::Replay,
    };
    // Recorded before anything is changed; not done when it cannot be recorded.
    let audit_id = std::sync::Mutex::new(None);
    let done = std::sync::atomic::AtomicUsize::new(0);
    let result = {
        let _one = console.dlq_lock.lock().await;
        dlq::act_approved(
            &console.broker,
            console.topology.clone(),
            &selection,
            dlq_action,
            |n, _| done.store(n, std::sync::atomic::Ordering::Relaxed),
            async |selected: &[String]| {
                let id = audit(console, session, action, &target, selected.len(), None)
                    .await
                    .map_err(|error| DlqError::NotRecorded(error.to_string()))?;
                *audit_id.lock().unwrap_or_else(|e| e.into_inner()) = Some(id);
                Ok(())
            },
        )
        .await
    };
    let recorded = *audit_id.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(id) = recorded {
        audit_done(console, id, done.load(std::sync::atomic::Ordering::Relaxed)).await;
    }
    let summary = match result {
        Ok(summary) => summary,
        Err(error) => return dlq_error(session, error),
    };
    if !confirmed {
        let mut body = format!(
            "<p class=\"notice\">This will {verb} <strong>{}</strong> dead letter(s) ({}).</p>",
            summary.selected.len(),
            escape(&target)
        );
        if summary.selected.is_empty() {
            let _ = write!(body, "<p><a href=\"{}\">Back</a></p>", escape(&back));
        } else {
            let fields = match action {
                Act::ReplayMatching => filter_hidden(form),
                _ => hidden("id", &target),
            };
            let path = match action {
                Act::ReplayMatching => "/console/dead-letters/replay",
                Act::DropOne => "/console/dead-letter/drop",
                _ => "/console/dead-letter/replay",
            };
            let _ = write!(
                body,
                "<form method=\"post\" action=\"{path}\">{}{fields}{}\
                 <button class=\"danger\">Yes, {verb} {}</button> <a href=\"{}\">Cancel</a></form>",
                csrf_field(session),
                hidden("confirm", "yes"),
                summary.selected.len(),
                escape(&back)
            );
        }
        return Outcome::Html(StatusCode::OK, page("Confirm", Some(session), &body));
    }
    tracing::info!(user = %session.user, action = action.as_str(), target, done = summary.done, "console action");
    let past = if action == Act::DropOne {
        "Dropped"
    } else {
        "Replayed"
    };
    let body = format!(
        "<p class=\"ok\">{past} <strong>{}</strong> dead letter(s) ({}).</p>\
         <p><a href=\"/console/dead-letters\">Dead letters</a> · <a href=\"/console/audit\">Audit log</a></p>",
        summary.done,
        escape(&target)
    );
    Outcome::Html(StatusCode::OK, page("Done", Some(session), &body))
}

/// SQL for a `timestamptz` column shown as the console shows times (UTC, to the second).
fn at(column: &str) -> String {
    format!("to_char({column} AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS \"UTC\"')")
}

/// SQL for a Clerk time in milliseconds (`clerk_updated_at`) shown as a time, to the
/// millisecond (it is the row's version: two versions may be a millisecond apart).
fn at_ms(column: &str) -> String {
    format!(
        "to_char(to_timestamp({column} / 1000.0) AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.MS \"UTC\"')"
    )
}

/// Rows of a raw query, every column read as text.
async fn rows(
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

fn table(columns: &[&str], rows: &[Vec<String>], empty: &str) -> String {
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

/// `GET /console/events?svix_id=…` or `?clerk_user_id=…`: whether an event was processed, and
/// what the tables hold about a user (no personal fields: ids, versions, times, memberships,
/// tombstone).
pub async fn events(console: &Console, session: &Session, query: &Form) -> Outcome {
    let mut body = format!(
        "<form method=\"get\" action=\"/console/events\">\
         <label>Svix id <input name=\"svix_id\" value=\"{}\"></label> or \
         <label>Clerk user id <input name=\"clerk_user_id\" value=\"{}\"></label>\
         <button>Look up</button></form>",
        escape(query.get("svix_id").unwrap_or("")),
        escape(query.get("clerk_user_id").unwrap_or("")),
    );
    let result: Result<(), DbErr> = async {
        if let Some(svix_id) = query.get("svix_id") {
            let cols = ["svix_id", "event_type", "processed_at"];
            let found = rows(
                console,
                &format!(
                    "SELECT svix_id, event_type, {} AS processed_at \
                     FROM processed_events WHERE svix_id = $1",
                    at("processed_at")
                ),
                vec![svix_id.into()],
                &cols,
            )
            .await?;
            let _ = write!(
                body,
                "<h2>Event {}</h2>{}",
                escape(svix_id),
                table(
                    &cols,
                    &found,
                    "Not processed (or processed longer ago than PROCESSED_EVENTS_RETENTION). Look in the dead letters."
                )
            );
        }
        if let Some(user) = query.get("clerk_user_id") {
            let cols = [
                "clerk_user_id",
                "clerk_updated_at",
                "google_calendar_connected",
                "microsoft_calendar_connected",
                "created_at",
                "updated_at",
            ];
            let found = rows(
                console,
                &format!(
                    "SELECT clerk_user_id, {} AS clerk_updated_at, \
                     google_calendar_connected::text AS google_calendar_connected, \
                     microsoft_calendar_connected::text AS microsoft_calendar_connected, \
                     {} AS created_at, {} AS updated_at \
                     FROM users WHERE clerk_user_id = $1",
                    at_ms("clerk_updated_at"),
                    at("created_at"),
                    at("updated_at")
                ),
                vec![user.into()],
                &cols,
            )
            .await?;
            let _ = write!(
                body,
                "<h2>User {}</h2>{}",
                escape(user),
                table(&cols, &found, "No row in users.")
            );
            let tomb_cols = ["deleted_at"];
            let tomb = rows(
                console,
                &format!(
                    "SELECT {} AS deleted_at FROM deleted_users WHERE clerk_user_id_sha256 = $1",
                    at("deleted_at")
                ),
                vec![store::apply::tombstone_key(user).into()],
                &tomb_cols,
            )
            .await?;
            let _ = write!(
                body,
                "<h3>Tombstone</h3>{}",
                table(&tomb_cols, &tomb, "No tombstone: the user was not deleted.")
            );
            let m_cols = ["clerk_organization_id", "clerk_membership_id", "role", "linked", "clerk_updated_at"];
            let memberships = rows(
                console,
                &format!(
                    "SELECT o.clerk_organization_id, m.clerk_membership_id, m.role, \
                     (m.user_id IS NOT NULL)::text AS linked, {} AS clerk_updated_at \
                     FROM organization_memberships m JOIN organizations o ON o.id = m.organization_id \
                     WHERE m.clerk_user_id = $1 ORDER BY 1",
                    at_ms("m.clerk_updated_at")
                ),
                vec![user.into()],
                &m_cols,
            )
            .await?;
            let _ = write!(
                body,
                "<h3>Organization memberships</h3>{}",
                table(&m_cols, &memberships, "None.")
            );
            let o_cols = ["clerk_organization_id", "slug", "members_count", "clerk_updated_at"];
            let orgs = rows(
                console,
                &format!(
                    "SELECT clerk_organization_id, slug, members_count::text AS members_count, \
                     {} AS clerk_updated_at FROM organizations WHERE clerk_organization_id = $1",
                    at_ms("clerk_updated_at")
                ),
                vec![user.into()],
                &o_cols,
            )
            .await?;
            if !orgs.is_empty() {
                let _ = write!(body, "<h3>Organization</h3>{}", table(&o_cols, &orgs, ""));
            }
            let org_tomb = rows(
                console,
                &format!(
                    "SELECT {} AS deleted_at FROM deleted_organizations WHERE clerk_organization_id_sha256 = $1",
                    at("deleted_at")
                ),
                vec![store::apply::tombstone_key(user).into()],
                &tomb_cols,
            )
            .await?;
            if !org_tomb.is_empty() {
                let _ = write!(body, "<h3>Organization tombstone</h3>{}", table(&tomb_cols, &org_tomb, ""));
            }
        }
        Ok(())
    }
    .await;
    if let Err(error) = result {
        return db_error(session, error);
    }
    Outcome::Html(StatusCode::OK, page("Event lookup", Some(session), &body))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_held_email_reads_as_a_sentence_and_other_reasons_as_they_are() {
        let held = reason_text(Some("email_held_by_other_user"));
        assert!(
            held.starts_with("Its email address is still stored for another user")
                && held.ends_with("(email_held_by_other_user)"),
            "{held}"
        );
        assert_eq!(reason_text(Some("database: timeout")), "database: timeout");
        assert_eq!(reason_text(None), "-");
    }

    #[test]
    fn failure_times_show_as_times_and_the_delivery_count_says_what_it_counts() {
        let (name, value) = header_row("clerk-sync-first-failure-at", "1735689600123");
        assert_eq!(name, "clerk-sync-first-failure-at");
        assert_eq!(
            value,
            "<span title=\"1735689600123\">2025-01-01 00:00:00 UTC</span>"
        );
        let (name, value) = header_row("x-delivery-count", "7");
        assert!(name.contains("not apply attempts"), "{name}");
        assert_eq!(value, "7");
        let (_, value) = header_row("clerk-sync-reason", "<b>");
        assert_eq!(value, "&lt;b&gt;");
    }
}
