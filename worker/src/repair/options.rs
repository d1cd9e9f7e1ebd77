//! What a reconcile is told (options, the deletion guard) and how it fails.

use clerk_api::ClerkError;
use sea_orm::DbErr;

use super::report::{OrgReport, Report};

/// Clerk's documented production limit is 1,000 requests per 10 s; the scan stays under it.
pub const DEFAULT_REQUESTS_PER_SECOND: u32 = 80;

/// Why a reconcile stopped.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error(
        "Clerk's user list failed at offset {offset}: {source}; run `worker reconcile` again to resume from there"
    )]
    List {
        offset: u64,
        #[source]
        source: ClerkError,
    },
    #[error("asking Clerk for user {id} failed: {source}; run `worker reconcile` again")]
    Lookup {
        id: String,
        #[source]
        source: ClerkError,
    },
    #[error(
        "{candidates} row(s) would be deleted, more than the limit of {limit} (--max-deletes): nothing was deleted. Check that CLERK_SECRET_KEY belongs to this instance; if the deletions are right, run again with a higher --max-deletes"
    )]
    TooManyDeletes {
        candidates: usize,
        limit: usize,
        report: Box<Report>,
    },
    #[error(
        "{candidates} {what} would be deleted, more than the limit of {limit} (--max-deletes): nothing was deleted. Check that CLERK_SECRET_KEY belongs to this instance; if the deletions are right, run again with a higher --max-deletes"
    )]
    TooManyOrganizationDeletes {
        /// `organization(s)` or `membership(s)`.
        what: &'static str,
        candidates: usize,
        limit: usize,
        report: Box<OrgReport>,
    },
    #[error(
        "Clerk's organization list failed at offset {offset}: {source}; run `worker reconcile --organizations` again"
    )]
    ListOrganizations {
        offset: u64,
        #[source]
        source: ClerkError,
    },
    #[error("database: {0}; run `worker reconcile` again to resume")]
    Db(#[from] DbErr),
}

/// How many deletions a run may make.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MaxDeletes {
    Count(usize),
    /// Percent of the rows in `users` when the run starts.
    Percent(u32),
}

impl MaxDeletes {
    /// Reads `N` or `P%`.
    pub fn parse(value: &str) -> Result<Self, String> {
        let value = value.trim();
        match value.strip_suffix('%') {
            Some(p) => p
                .trim()
                .parse::<u32>()
                .ok()
                .filter(|p| *p <= 100)
                .map(Self::Percent)
                .ok_or_else(|| format!("{value:?} is not a percentage from 0% to 100%")),
            None => value.parse::<usize>().map(Self::Count).map_err(|_| {
                format!("{value:?} is not a count (e.g. 25) or a percentage (e.g. 2%)")
            }),
        }
    }

    /// The limit for a table of `rows` rows. The default (`None`) is 1 %, at least 10.
    pub fn limit(setting: Option<Self>, rows: u64) -> usize {
        let rows = usize::try_from(rows).unwrap_or(usize::MAX);
        match setting {
            Some(Self::Count(n)) => n,
            Some(Self::Percent(p)) => rows.saturating_mul(p as usize) / 100,
            None => (rows / 100).max(10),
        }
    }
}

/// Tuning of a reconcile.
#[derive(Debug, Clone)]
pub struct ReconcileOptions {
    /// Report only: nothing is written (not even the checkpoint).
    pub dry_run: bool,
    pub max_deletes: Option<MaxDeletes>,
    /// Users per page (Clerk allows 500 at most).
    pub page_size: u32,
    /// Start from the first page even if an earlier run left a checkpoint.
    pub restart: bool,
    /// Calls to Clerk per second at most.
    pub requests_per_second: u32,
    /// Attempts per call before giving up (transient errors, 429s).
    pub attempts: u32,
}

impl Default for ReconcileOptions {
    fn default() -> Self {
        Self {
            dry_run: false,
            max_deletes: None,
            page_size: 500,
            restart: false,
            requests_per_second: DEFAULT_REQUESTS_PER_SECOND,
            attempts: 6,
        }
    }
}
