//! The sync core: Clerk's users, organizations and calendar connections kept in Postgres.
//! - [`event`]: Clerk's events parsed leniently, keeping only what is stored;
//! - [`apply`]: applying them exactly once in effect, one at a time ([`Applier`]) or many in one
//!   transaction ([`apply::batch`]), organizations and memberships too; tombstones for deletes;
//! - [`accounts`], [`connections`], [`crypto`]: which external accounts are calendar
//!   connections, their rows and their tokens sealed at rest;
//! - [`health`]: whether a calendar connection is usable, needs the user, or could not be told;
//! - [`pool`]: the database pool every process opens, direct or behind a pooler; [`users`]: the
//!   api's read of a user by Clerk id, one statement of fixed text, answered together for the
//!   reads that queue under load;
//! - [`lease`]: one process at a time for jobs such as the scheduled reconcile and health check.
//!
//! The worker (consuming events) and the api (lazy sync, calendar status, tokens) both use it.

pub mod accounts;
pub mod apply;
mod coalesce;
pub mod connections;
pub mod crypto;
pub mod event;
pub mod faults;
pub mod health;
mod kept;
pub mod lease;
pub mod pool;
pub mod users;

pub use apply::{Applier, ApplierSettings};
pub use clerk_api::Provider;
