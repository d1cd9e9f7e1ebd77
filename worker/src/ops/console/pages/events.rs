//! `GET /console/events?svix_id=…` or `?clerk_user_id=…`: whether an event was processed, and
//! what the tables hold about a user (no personal fields).

use std::fmt::Write as _;

use http::StatusCode;
use sea_orm::DbErr;

use super::super::{
    Console, Outcome,
    auth::Session,
    html::{Form, escape, page},
};
use super::common::{at, at_ms, db_error, rows, table};

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
            body.push_str(&event_section(console, svix_id).await?);
        }
        if let Some(user) = query.get("clerk_user_id") {
            body.push_str(&user_section(console, user).await?);
        }
        Ok(())
    }
    .await;
    if let Err(error) = result {
        return db_error(session, error);
    }
    Outcome::Html(StatusCode::OK, page("Event lookup", Some(session), &body))
}

/// Whether the event was processed, and when.
async fn event_section(console: &Console, svix_id: &str) -> Result<String, DbErr> {
    let mut out = String::new();
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
        out,
        "<h2>Event {}</h2>{}",
        escape(svix_id),
        table(
            &cols,
            &found,
            "Not processed (or processed longer ago than PROCESSED_EVENTS_RETENTION). Look in the dead letters."
        )
    );
    Ok(out)
}

/// What the tables hold about a user: the row (no personal fields), its tombstone, memberships,
/// and the organization of that id if it is one.
async fn user_section(console: &Console, user: &str) -> Result<String, DbErr> {
    let mut out = String::new();
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
        out,
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
        out,
        "<h3>Tombstone</h3>{}",
        table(&tomb_cols, &tomb, "No tombstone: the user was not deleted.")
    );
    out.push_str(&memberships_section(console, user).await?);
    Ok(out)
}

/// The user's memberships, and the organization of that id (with its tombstone) if it is one.
async fn memberships_section(console: &Console, user: &str) -> Result<String, DbErr> {
    let mut out = String::new();
    let tomb_cols = ["deleted_at"];
    let m_cols = [
        "clerk_organization_id",
        "clerk_membership_id",
        "role",
        "linked",
        "clerk_updated_at",
    ];
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
        out,
        "<h3>Organization memberships</h3>{}",
        table(&m_cols, &memberships, "None.")
    );
    let o_cols = [
        "clerk_organization_id",
        "slug",
        "members_count",
        "clerk_updated_at",
    ];
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
        let _ = write!(out, "<h3>Organization</h3>{}", table(&o_cols, &orgs, ""));
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
        let _ = write!(
            out,
            "<h3>Organization tombstone</h3>{}",
            table(&tomb_cols, &org_tomb, "")
        );
    }
    Ok(out)
}
