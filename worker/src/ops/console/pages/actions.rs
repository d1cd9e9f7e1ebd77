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
/// A confirmed "replay all matching" acts on exactly what its preview listed (kept for this
/// session under a token), not on whatever matches by then.
pub async fn act(console: &Console, session: &Session, action: Act, form: &Form) -> Outcome {
    if action == Act::Reveal {
        return reveal(console, session, form).await;
    }
    let confirmed = form.get("confirm") == Some("yes");
    let chosen = match chosen(console, session, action, form, confirmed) {
        Ok(chosen) => chosen,
        Err(outcome) => return outcome,
    };
    let dlq_action = match (confirmed, action) {
        (false, _) => Action::Preview,
        (true, Act::DropOne) => Action::Drop,
        (true, _) => Action::Replay,
    };
    let summary = match run_audited(console, session, action, &chosen, dlq_action).await {
        Ok(summary) => summary,
        Err(error) => return dlq_error(session, error),
    };
    if confirmed {
        done_page(session, action, &chosen, &summary)
    } else {
        confirm_page(console, session, action, form, &chosen, &summary)
    }
}

/// Reveals a dead letter's body, audited before anything is shown: a reveal that cannot be
/// recorded does not happen.
async fn reveal(console: &Console, session: &Session, form: &Form) -> Outcome {
    let Some(id) = form.get("id") else {
        return error_page(session, StatusCode::BAD_REQUEST, "which dead letter?");
    };
    if let Err(error) = audit(console, session, Act::Reveal, id, 1, Some(1)).await {
        return db_error(session, error);
    }
    tracing::info!(user = %session.user, id, "console reveal");
    dead_letter(console, session, form, true).await
}

/// What an action is about: the selection, its description (the audit's target), the page to
/// go back to, and how many the preview showed (confirmations of "replay all matching").
struct Chosen {
    selection: Selection,
    target: String,
    back: String,
    previewed: Option<usize>,
}

fn chosen(
    console: &Console,
    session: &Session,
    action: Act,
    form: &Form,
    confirmed: bool,
) -> Result<Chosen, Outcome> {
    if action != Act::ReplayMatching {
        let id = form
            .get("id")
            .ok_or_else(|| error_page(session, StatusCode::BAD_REQUEST, "which dead letter?"))?;
        return Ok(Chosen {
            selection: Selection::Ids(vec![id.to_owned()]),
            target: id.to_owned(),
            back: format!("/console/dead-letter?id={}", encode(id)),
            previewed: None,
        });
    }
    let filter =
        filter_of(form).map_err(|why| error_page(session, StatusCode::BAD_REQUEST, &why))?;
    let back = format!("/console/dead-letters?{}", filter_query(form));
    let target = filter.describe();
    if !confirmed {
        return Ok(Chosen {
            selection: Selection::Matching(filter),
            target,
            back,
            previewed: None,
        });
    }
    let ids = form
        .get("selection")
        .and_then(|token| console.previews.take(token, &session.user))
        .ok_or_else(|| {
            error_page(
                session,
                StatusCode::CONFLICT,
                "This confirmation has expired or was used already: replay from the list again.",
            )
        })?;
    Ok(Chosen {
        previewed: Some(ids.len()),
        selection: Selection::Previewed(ids),
        target,
        back,
    })
}

/// Runs the action on the dead-letter queue (one read of it), recorded in the audit log before
/// anything is changed and refused when it cannot be; what it did is recorded after.
async fn run_audited(
    console: &Console,
    session: &Session,
    action: Act,
    chosen: &Chosen,
    dlq_action: Action,
) -> Result<dlq::Summary, DlqError> {
    let audit_id = std::sync::Mutex::new(None);
    let done = std::sync::atomic::AtomicUsize::new(0);
    let result = {
        let _one = console.dlq_lock.lock().await;
        dlq::act_approved(
            &console.broker,
            console.topology.clone(),
            &chosen.selection,
            dlq_action,
            |n, _| done.store(n, std::sync::atomic::Ordering::Relaxed),
            async |selected: &[String]| {
                let id = audit(
                    console,
                    session,
                    action,
                    &chosen.target,
                    selected.len(),
                    None,
                )
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
    result
}

fn verb(action: Act) -> &'static str {
    if action == Act::DropOne {
        "drop"
    } else {
        "replay"
    }
}

/// The confirmation: how many would be acted on, and a form that confirms exactly those.
fn confirm_page(
    console: &Console,
    session: &Session,
    action: Act,
    form: &Form,
    chosen: &Chosen,
    summary: &dlq::Summary,
) -> Outcome {
    let verb = verb(action);
    let count = summary.selected.len();
    let mut body = format!(
        "<p class=\"notice\">This will {verb} <strong>{count}</strong> dead letter(s) ({}).</p>",
        escape(&chosen.target)
    );
    if count == 0 {
        let _ = write!(body, "<p><a href=\"{}\">Back</a></p>", escape(&chosen.back));
        return Outcome::Html(StatusCode::OK, page("Confirm", Some(session), &body));
    }
    let (path, fields) = match action {
        Act::ReplayMatching => {
            let token = console
                .previews
                .keep(&session.user, summary.selected.clone());
            (
                "/console/dead-letters/replay",
                format!("{}{}", filter_hidden(form), hidden("selection", &token)),
            )
        }
        Act::DropOne => ("/console/dead-letter/drop", hidden("id", &chosen.target)),
        _ => ("/console/dead-letter/replay", hidden("id", &chosen.target)),
    };
    let _ = write!(
        body,
        "<form method=\"post\" action=\"{path}\">{}{fields}{}\
         <button class=\"danger\">Yes, {verb} {count}</button> <a href=\"{}\">Cancel</a></form>",
        csrf_field(session),
        hidden("confirm", "yes"),
        escape(&chosen.back)
    );
    Outcome::Html(StatusCode::OK, page("Confirm", Some(session), &body))
}

/// What was done, and how many of those previewed were gone by then.
fn done_page(session: &Session, action: Act, chosen: &Chosen, summary: &dlq::Summary) -> Outcome {
    tracing::info!(user = %session.user, action = action.as_str(), target = %chosen.target, done = summary.done, "console action");
    let past = if action == Act::DropOne {
        "Dropped"
    } else {
        "Replayed"
    };
    let gone = chosen
        .previewed
        .map(|n| n.saturating_sub(summary.done))
        .filter(|gone| *gone > 0)
        .map(|gone| {
            format!(
                "<p class=\"notice\">{gone} of the {} previewed were no longer in the \
                 dead-letter queue (replayed or dropped meanwhile).</p>",
                chosen.previewed.unwrap_or_default()
            )
        })
        .unwrap_or_default();
    let body = format!(
        "<p class=\"ok\">{past} <strong>{}</strong> dead letter(s) ({}).</p>{gone}\
         <p><a href=\"/console/dead-letters\">Dead letters</a> · <a href=\"/console/audit\">Audit log</a></p>",
        summary.done,
        escape(&chosen.target)
    );
    Outcome::Html(StatusCode::OK, page("Done", Some(session), &body))
}
