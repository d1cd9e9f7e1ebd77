//! Repairing what webhooks missed, by asking Clerk: the backfill of users who signed up before
//! the webhook ([`backfill`]), and the reconcile of users ([`users`]) and of organizations and
//! memberships ([`organizations`]), and the calendar connection health check ([`health`]).
//! Every call to Clerk goes through the paced caller (`clerk_api::paced`); where a run stopped
//! is checkpointed ([`checkpoint`]); scheduled runs go one worker at a time ([`scheduled`]).

pub mod backfill;
pub mod checkpoint;
pub mod health;
pub mod options;
pub mod organizations;
pub mod report;
pub mod scheduled;
pub mod users;

pub use options::{DEFAULT_REQUESTS_PER_SECOND, MaxDeletes, ReconcileError, ReconcileOptions};
pub use report::{Drift, Kinds, OrgReport, Report, organizations_summary, summary};
