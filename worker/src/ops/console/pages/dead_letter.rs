//! `GET /console/dead-letter?id=…`: one dead letter, masked, or as received after a reveal.

use std::fmt::Write as _;

use http::StatusCode;

use super::super::{
    Console, Outcome,
    auth::Session,
    html::{Form, csrf_field, escape, hidden, page, time_ms},
    mask,
};
use super::common::{age, dlq_error, error_page};
use crate::ops::{
    dlq::{self, DeadLetter, DlqError},
    trace_url::TraceUrlTemplate,
};

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
            &letter_body(session, &letter, console.trace_url.as_ref(), revealed),
        ),
    )
}

fn letter_body(
    session: &Session,
    l: &DeadLetter,
    trace_url: Option<&TraceUrlTemplate>,
    revealed: bool,
) -> String {
    let mut body = format!(
        "<table><tr><th>type</th><td>{}</td></tr><tr><th>Clerk user</th><td>{}</td></tr>\
         <tr><th>reason</th><td>{}</td></tr><tr><th>attempts</th><td>{}</td></tr>\
         <tr><th>first failure</th><td>{}</td></tr><tr><th>last failure</th><td>{}</td></tr>\
         <tr><th>age</th><td>{}</td></tr><tr><th>trace</th><td>{}</td></tr></table>",
        escape(l.event_type.as_deref().unwrap_or("-")),
        escape(l.clerk_user_id.as_deref().unwrap_or("-")),
        escape(&reason_text(l.reason.as_deref())),
        l.attempts,
        time_ms(l.first_failure_at),
        time_ms(l.last_failure_at),
        age(l.age_seconds),
        trace_cell(l.trace_id.as_deref(), trace_url),
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

/// A dead letter's trace id as the page shows it (escaped HTML): a link to the tracing UI when
/// `TRACE_URL_TEMPLATE` is set, the bare id when not, `-` without a trace.
fn trace_cell(trace_id: Option<&str>, trace_url: Option<&TraceUrlTemplate>) -> String {
    match (trace_id, trace_url) {
        (Some(id), Some(template)) => format!(
            "<a href=\"{}\" rel=\"noreferrer\" target=\"_blank\">{}</a>",
            escape(&template.url(id)),
            escape(id)
        ),
        (Some(id), None) => escape(id),
        (None, _) => "-".into(),
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

    #[test]
    fn a_trace_id_links_to_the_tracing_ui_escaped_and_no_trace_is_a_dash() {
        let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
        let template =
            TraceUrlTemplate::parse("https://tempo.example.com/explore?traceId={trace_id}&x=\"<y>")
                .expect("valid");
        assert_eq!(
            trace_cell(Some(trace), Some(&template)),
            format!(
                "<a href=\"https://tempo.example.com/explore?traceId={trace}&amp;x=&quot;&lt;y&gt;\" \
                 rel=\"noreferrer\" target=\"_blank\">{trace}</a>"
            )
        );
        assert_eq!(trace_cell(Some(trace), None), trace);
        assert_eq!(trace_cell(None, Some(&template)), "-");
        assert_eq!(trace_cell(None, None), "-");
    }
}
