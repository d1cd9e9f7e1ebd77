//! `GET /console/dead-letters`: the filter form and the matching dead letters, a page at a time.

use std::fmt::Write as _;

use http::StatusCode;

use super::super::{
    Console, Outcome,
    auth::Session,
    html::{Form, csrf_field, encode, escape, hidden, page},
};
use super::dead_letter::reason_text;
use super::{
    audit::{Act, audit},
    common::{age, db_error, dlq_error, error_page},
};
use crate::ops::dlq::{self, DeadLetter, Filter, Scanned, Window};

/// Dead letters per page.
pub const PAGE_SIZE: usize = 50;

/// Dead letters one listing page reads at most: after an outage the queue may hold far more,
/// and a page keeps only its own fifty in memory whatever it reads.
pub const SCAN_LIMIT: usize = 10_000;

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
pub(super) fn filter_hidden(form: &Form) -> String {
    FILTER_FIELDS
        .iter()
        .filter_map(|f| form.get(f).map(|v| hidden(f, v)))
        .collect()
}

/// The filter's fields as a query string (`a=b&…`).
pub(super) fn filter_query(form: &Form) -> String {
    FILTER_FIELDS
        .iter()
        .filter_map(|f| form.get(f).map(|v| format!("{f}={}", encode(v))))
        .collect::<Vec<_>>()
        .join("&")
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
    let scanned = match read_page(console, session, &filter, page_no).await {
        Ok(scanned) => scanned,
        Err(outcome) => return outcome,
    };
    let pages = scanned.matched.div_ceil(PAGE_SIZE).max(1);
    let mut body = filter_form(session, query);
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
        body.push_str(&replay_all_form(session, query, &scanned));
    }
    body.push_str(&letters_table(&scanned.letters));
    body.push_str(&pager(query, page_no, pages));
    Outcome::Html(StatusCode::OK, page("Dead letters", Some(session), &body))
}

/// Reads one page's dead letters. A body search reveals what masking hides: it is recorded like
/// a reveal (who, when, how many matched; the searched text never), and not shown when it
/// cannot be recorded.
async fn read_page(
    console: &Console,
    session: &Session,
    filter: &Filter,
    page_no: usize,
) -> Result<Scanned, Outcome> {
    let window = Window {
        skip: (page_no - 1) * PAGE_SIZE,
        take: PAGE_SIZE,
        scan_at_most: SCAN_LIMIT,
        count_all: true,
    };
    let scanned = {
        let _one = console.dlq_lock.lock().await;
        dlq::scan(&console.broker, console.topology.clone(), filter, window).await
    }
    .map_err(|error| dlq_error(session, error))?;
    if filter.body_contains.is_some() {
        let matched = scanned.matched;
        audit(
            console,
            session,
            Act::Search,
            &filter.describe(),
            matched,
            Some(matched),
        )
        .await
        .map_err(|error| db_error(session, error))?;
    }
    Ok(scanned)
}

/// The filter form, filled in with the query's values (body search for operators only).
fn filter_form(session: &Session, query: &Form) -> String {
    let value = |name| escape(query.get(name).unwrap_or(""));
    format!(
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
    )
}

/// The operator's "replay all matching" form; the count shows only when the whole queue was
/// read (the confirmation counts anyway).
fn replay_all_form(session: &Session, query: &Form, scanned: &Scanned) -> String {
    format!(
        "<form method=\"post\" action=\"/console/dead-letters/replay\">{}{}\
         <button>Replay all {}matching…</button></form>",
        csrf_field(session),
        filter_hidden(query),
        if scanned.complete {
            format!("{} ", scanned.matched)
        } else {
            String::new()
        },
    )
}

fn letters_table(letters: &[DeadLetter]) -> String {
    let mut out = String::from(
        "<table><tr><th>id</th><th>type</th><th>Clerk user</th><th>attempts</th><th>age</th><th>reason</th></tr>",
    );
    for l in letters {
        let _ = write!(
            out,
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
    out.push_str("</table>");
    out
}

/// Links to the previous and next pages, keeping the filter.
fn pager(query: &Form, page_no: usize, pages: usize) -> String {
    let filters = filter_query(query);
    let sep = if filters.is_empty() { "" } else { "&amp;" };
    let mut out = String::from("<p>");
    if page_no > 1 {
        let _ = write!(
            out,
            "<a href=\"/console/dead-letters?{}{sep}page={}\">← previous</a> ",
            escape(&filters),
            page_no - 1
        );
    }
    if page_no < pages {
        let _ = write!(
            out,
            "<a href=\"/console/dead-letters?{}{sep}page={}\">next →</a>",
            escape(&filters),
            page_no + 1
        );
    }
    out.push_str("</p>");
    out
}
