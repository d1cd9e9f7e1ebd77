//! The events a run sends and the state they must leave behind.
//!
//! Every user gets a `user.created`, then `user.updated`s with strictly increasing `updated_at`
//! and a new email and last name each time (`u<i>+<version>@bench.example`, so no two users ever
//! share an address), and one user in twenty ends with a `user.deleted`. Events are interleaved
//! round-robin over the users, as many users changing at once would produce. Bodies are built
//! once; [`sign`] signs a batch right before it is sent, because the ingress refuses a
//! `svix-timestamp` more than five minutes off.

use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use bytes::Bytes;
use hyper::header::HeaderValue;
use testkit::events::{UserState, user_deleted, user_event};

/// One event: its Svix message id and its body.
pub struct Event {
    pub svix_id: String,
    pub body: Bytes,
}

/// An event with its Svix headers, ready to send.
pub struct Signed {
    pub svix_id: HeaderValue,
    pub timestamp: HeaderValue,
    pub signature: HeaderValue,
    pub body: Bytes,
}

/// What one user's row must look like once every event is applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expected {
    pub clerk_user_id: String,
    /// `None`: the user was deleted (no row, a tombstone).
    pub state: Option<UserRow>,
    /// The version of the last event generated for this user.
    version: u32,
    /// Its `updated_at` (ms).
    updated_at: i64,
}

/// The columns the bench checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRow {
    pub email: String,
    pub first_name: String,
    pub last_name: String,
    pub updated_at: i64,
}

/// The events of a run and the final state they lead to.
pub struct Plan {
    pub events: Vec<Event>,
    pub users: Vec<Expected>,
}

/// Every twentieth user (5 %) ends deleted.
fn ends_deleted(user: usize) -> bool {
    user % 20 == 19
}

/// How many users of `users` end deleted.
pub fn deleted_count(users: usize) -> usize {
    (0..users).filter(|&i| ends_deleted(i)).count()
}

/// Milliseconds since the epoch, now.
pub fn now_ms() -> anyhow::Result<i64> {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .context("the system clock is before 1970")?;
    i64::try_from(since.as_millis()).context("the system clock is out of range")
}

fn new_svix_id() -> String {
    format!("msg_{}", uuid::Uuid::new_v4().simple())
}

/// The state of `user` at `version`.
fn state(user: usize, clerk_user_id: &str, version: u32, updated_at: i64) -> UserState {
    UserState {
        id: clerk_user_id.to_owned(),
        email: Some(format!("u{user}+{version}@bench.example")),
        first_name: Some(format!("Bench{user}")),
        last_name: Some(format!("Version{version}")),
        updated_at,
    }
}

fn row(state: &UserState) -> Option<UserRow> {
    Some(UserRow {
        email: state.email.clone()?,
        first_name: state.first_name.clone()?,
        last_name: state.last_name.clone()?,
        updated_at: state.updated_at,
    })
}

/// Fails unless `events` can give each of `users` users a creation (and the deleted ones a
/// deletion).
pub fn validate(events: usize, users: usize) -> anyhow::Result<()> {
    let deleted = deleted_count(users);
    if users == 0 {
        bail!("--users must be at least 1");
    }
    if events < users + deleted {
        bail!(
            "--events {events} is too few for --users {users}: every user needs a user.created and \
             {deleted} of them a user.deleted; use --events {} or more, or fewer --users",
            users + deleted
        );
    }
    Ok(())
}

/// `events` distinct events over `users` users.
pub fn plan(events: usize, users: usize) -> anyhow::Result<Plan> {
    validate(events, users)?;
    let deleted = deleted_count(users);
    // Versions are 1 s apart, starting an hour ago (Clerk's `updated_at` is only a version here).
    let base = now_ms()? - 3_600_000;
    let updates = events - users - deleted;
    let counts: Vec<usize> = (0..users)
        .map(|i| {
            1 + updates / users + usize::from(i < updates % users) + usize::from(ends_deleted(i))
        })
        .collect();
    let mut expected: Vec<Expected> = (0..users)
        .map(|i| Expected {
            clerk_user_id: format!("user_2bench{i:07}"),
            state: None,
            version: 0,
            updated_at: base,
        })
        .collect();
    let mut out = Vec::with_capacity(events);
    let rounds = counts.iter().copied().max().unwrap_or(0);
    for round in 0..rounds {
        for (i, user) in expected.iter_mut().enumerate() {
            if round >= counts[i] {
                continue;
            }
            let version = u32::try_from(round).context("too many events per user")?;
            let updated_at = base + i64::from(version) * 1000;
            let body = if round + 1 == counts[i] && ends_deleted(i) {
                user.state = None;
                user_deleted(&user.clerk_user_id, updated_at)
            } else {
                let kind = if round == 0 {
                    "user.created"
                } else {
                    "user.updated"
                };
                let state = state(i, &user.clerk_user_id, version, updated_at);
                user.state = row(&state);
                user_event(kind, &state)
            };
            user.version = version;
            user.updated_at = updated_at;
            out.push(Event {
                svix_id: new_svix_id(),
                body: Bytes::from(body),
            });
        }
    }
    Ok(Plan {
        events: out,
        users: expected,
    })
}

/// `count` more `user.updated` events, newer than everything so far, for the users still alive
/// (round-robin); `users` is updated to the state they lead to.
pub fn newer_updates(users: &mut [Expected], count: usize) -> anyhow::Result<Vec<Event>> {
    let live: Vec<usize> = (0..users.len())
        .filter(|&i| users[i].state.is_some())
        .collect();
    if live.is_empty() {
        bail!("no live user is left to update");
    }
    let mut out = Vec::with_capacity(count);
    for k in 0..count {
        let i = live[k % live.len()];
        let user = &mut users[i];
        user.version += 1;
        user.updated_at += 1000;
        let state = state(i, &user.clerk_user_id, user.version, user.updated_at);
        user.state = row(&state);
        out.push(Event {
            svix_id: new_svix_id(),
            body: Bytes::from(user_event("user.updated", &state)),
        });
    }
    Ok(out)
}

/// Signs every event with `secret`, timestamped now.
pub fn sign(events: &[Event], secret: &str) -> anyhow::Result<Vec<Signed>> {
    let webhook = svix::webhooks::Webhook::new(secret)
        .map_err(|e| anyhow::anyhow!("the generated webhook secret is not valid: {e}"))?;
    let timestamp = now_ms()? / 1000;
    let timestamp_header = HeaderValue::from(timestamp);
    events
        .iter()
        .map(|event| {
            let signature = webhook
                .sign(&event.svix_id, timestamp, &event.body)
                .map_err(|e| anyhow::anyhow!("cannot sign event {}: {e}", event.svix_id))?;
            Ok(Signed {
                svix_id: HeaderValue::from_str(&event.svix_id)
                    .context("a Svix id is not a valid header value")?,
                timestamp: timestamp_header.clone(),
                signature: HeaderValue::from_str(&signature)
                    .context("a signature is not a valid header value")?,
                body: event.body.clone(),
            })
        })
        .collect()
}

/// A random `whsec_` secret (24 random bytes, base64).
pub fn random_secret() -> String {
    use base64::Engine as _;
    let bytes: [u8; 24] = rand::random();
    format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(bytes)
    )
}

/// The average body size in bytes.
pub fn average_size(events: &[Event]) -> usize {
    if events.is_empty() {
        return 0;
    }
    events.iter().map(|e| e.body.len()).sum::<usize>() / events.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plan_has_the_asked_number_of_distinct_events_and_five_percent_deletes() {
        let plan = plan(2000, 200).expect("plan");
        assert_eq!(plan.events.len(), 2000);
        let ids: std::collections::HashSet<_> = plan.events.iter().map(|e| &e.svix_id).collect();
        assert_eq!(ids.len(), 2000);
        assert_eq!(plan.users.iter().filter(|u| u.state.is_none()).count(), 10);
        let live = plan
            .users
            .iter()
            .find_map(|u| u.state.clone())
            .expect("live");
        assert!(live.email.ends_with("@bench.example"));
    }

    #[test]
    fn too_few_events_are_refused_and_newer_updates_are_newer() {
        assert!(plan(100, 100).is_err());
        let mut plan = plan(300, 100).expect("plan");
        let before = plan.users.clone();
        let more = newer_updates(&mut plan.users, 50).expect("updates");
        assert_eq!(more.len(), 50);
        for (old, new) in before.iter().zip(&plan.users) {
            if let (Some(old), Some(new)) = (&old.state, &new.state) {
                assert!(new.updated_at >= old.updated_at);
            }
        }
        assert!(random_secret().starts_with("whsec_"));
        let signed = sign(&more, &random_secret()).expect("signed");
        assert_eq!(signed.len(), 50);
    }
}
