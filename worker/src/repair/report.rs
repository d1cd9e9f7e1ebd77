//! What a reconcile found (and, unless a dry run, repaired), for JSON and for people.

use serde::Serialize;

/// Drift of one kind: how much, and which users.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Drift {
    pub count: u64,
    pub ids: Vec<String>,
}

impl Drift {
    pub(crate) fn add(&mut self, id: &str) {
        self.count += 1;
        self.ids.push(id.to_owned());
    }
}

/// What a reconcile found (and, unless a dry run, repaired).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Report {
    pub dry_run: bool,
    /// Offset the scan resumed from (non-zero when an interrupted run was resumed).
    pub resumed_from: u64,
    /// Users read from Clerk.
    pub scanned: u64,
    /// In Clerk, no row here: applied.
    pub missing: Drift,
    /// Older here than in Clerk: applied.
    pub older: Drift,
    /// Newer here than in Clerk: left alone.
    pub newer_here: Drift,
    /// Same version, other calendar connections: synced.
    pub connections: Drift,
    /// Gone from Clerk: deleted with a tombstone.
    pub gone: Drift,
    /// Users that could not be repaired, with the reason.
    pub failed: Vec<(String, String)>,
}

impl Report {
    /// Whether anything differed (repaired or left alone on purpose is not counted as failure).
    pub fn drift(&self) -> u64 {
        self.missing.count + self.older.count + self.connections.count + self.gone.count
    }
}

/// The report in a few lines, for people.
pub fn summary(report: &Report) -> String {
    let (apply, delete, sync) = if report.dry_run {
        ("would apply", "would delete", "would sync")
    } else {
        ("applied", "deleted", "synced")
    };
    let mut out = format!(
        "reconcile {}: {} Clerk users read{}\n",
        if report.dry_run { "dry run" } else { "done" },
        report.scanned,
        if report.resumed_from > 0 {
            format!(" (resumed at offset {})", report.resumed_from)
        } else {
            String::new()
        }
    );
    out.push_str(&format!(
        "  missing here:        {} ({apply})\n",
        report.missing.count
    ));
    out.push_str(&format!(
        "  older here:          {} ({apply})\n",
        report.older.count
    ));
    out.push_str(&format!(
        "  calendar connections: {} ({sync})\n",
        report.connections.count
    ));
    out.push_str(&format!(
        "  gone from Clerk:     {} ({delete})\n",
        report.gone.count
    ));
    out.push_str(&format!(
        "  newer here:          {} (left alone)\n",
        report.newer_here.count
    ));
    out.push_str(&format!("  failed:              {}", report.failed.len()));
    for (id, reason) in &report.failed {
        out.push_str(&format!("\n    {id}: {reason}"));
    }
    out
}

/// Drift of one kind of object.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Kinds {
    /// In Clerk, no row here: applied.
    pub missing: Drift,
    /// Older here than in Clerk: applied.
    pub older: Drift,
    /// Newer here than in Clerk: left alone.
    pub newer_here: Drift,
    /// Gone from Clerk: deleted with a tombstone.
    pub gone: Drift,
}

impl Kinds {
    fn drift(&self) -> u64 {
        self.missing.count + self.older.count + self.gone.count
    }
}

/// What a reconcile of organizations found (and, unless a dry run, repaired).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct OrgReport {
    pub dry_run: bool,
    /// Organizations and memberships read from Clerk.
    pub scanned_organizations: u64,
    pub scanned_memberships: u64,
    pub organizations: Kinds,
    pub memberships: Kinds,
    /// Objects that could not be repaired, with the reason.
    pub failed: Vec<(String, String)>,
}

impl OrgReport {
    /// How much differed (repaired, or to repair in a dry run).
    pub fn drift(&self) -> u64 {
        self.organizations.drift() + self.memberships.drift()
    }
}

/// The report in a few lines, for people.
pub fn organizations_summary(report: &OrgReport) -> String {
    let (apply, delete) = if report.dry_run {
        ("would apply", "would delete")
    } else {
        ("applied", "deleted")
    };
    let mut out = format!(
        "reconcile {}: {} Clerk organizations and {} memberships read",
        if report.dry_run { "dry run" } else { "done" },
        report.scanned_organizations,
        report.scanned_memberships
    );
    for (what, kinds) in [
        ("organizations", &report.organizations),
        ("memberships", &report.memberships),
    ] {
        out.push_str(&format!(
            "\n  {what}: {} missing here ({apply}), {} older here ({apply}), {} gone from Clerk ({delete}), {} newer here (left alone)",
            kinds.missing.count, kinds.older.count, kinds.gone.count, kinds.newer_here.count
        ));
    }
    out.push_str(&format!("\n  failed: {}", report.failed.len()));
    for (id, reason) in &report.failed {
        out.push_str(&format!("\n    {id}: {reason}"));
    }
    out
}
