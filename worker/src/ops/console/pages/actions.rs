//! An operator's POSTs: reveal a dead letter (at once), replay or drop one, replay all that
//! match a filter (a confirmation with the count first). Each is audited before it is done.

use std::fmt::Write as _;

use http::StatusCode;

use super::super::{
    Console, Outcome,
    auth::Session,
    html::{Form, csrf_field, encode, escape, hidden, page},
};
use super::{
    audit::{Act, audit, audit_done},
    common::{db_error, dlq_error, error_page},
    dead_letter::dead_letter,
    dead_letters::{filter_hidden, filter_of, filter_query},
};
use crate::ops::dlq::{self, Action, DlqError, Selection};

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
