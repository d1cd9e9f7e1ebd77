//! `worker reconcile --organizations` against the fake Clerk Backend API.

use sea_orm::ConnectionTrait;
use serde_json::Value;
use testkit::{
    TestBroker, TestDb,
    events::{self, MembershipState, OrgState},
    fake_clerk::FakeClerk,
};

use crate::helpers::{scalar, worker_cli};

fn org(id: &str, version: i64) -> OrgState {
    OrgState {
        id: id.into(),
        name: format!("Name of {id}"),
        slug: format!("slug-{id}"),
        updated_at: version,
    }
}

/// A membership object as Clerk's API lists it.
fn membership(id: &str, user: &str, role: &str, version: i64, org: &OrgState) -> Value {
    events::membership_object(&MembershipState {
        id: id.into(),
        user_id: user.into(),
        role: role.into(),
        updated_at: version,
        organization: org.clone(),
    })
}

fn reconcile(
    db: &TestDb,
    broker: &TestBroker,
    clerk: &FakeClerk,
    args: &[&str],
) -> (bool, String, String) {
    let settings = crate::helpers::settings_with_clerk(db, broker, clerk);
    let args: Vec<&str> = ["reconcile", "--organizations"]
        .into_iter()
        .chain(args.iter().copied())
        .collect();
    worker_cli(settings, &args)
}

fn count(report: &Value, object: &str, kind: &str) -> u64 {
    report[object][kind]["count"].as_u64().unwrap()
}

/// Clerk has organizations A (missing here), B (equal), C (older here) and D (newer here); E is
/// only here. C's membership c1 is older here, c9 only here.
async fn drifted(db: &TestDb, clerk: &FakeClerk) {
    let (a, b, c, d) = (
        org("org_ra", 100),
        org("org_rb", 100),
        org("org_rc", 200),
        org("org_rd", 100),
    );
    clerk.set_organizations(
        [&a, &b, &c, &d]
            .into_iter()
            .map(events::organization_object)
            .collect(),
    );
    clerk.set_memberships(
        "org_ra",
        vec![
            membership("orgmem_ra1", "user_rx", "org:admin", 100, &a),
            membership("orgmem_ra2", "user_ry", "org:member", 100, &a),
        ],
    );
    clerk.set_memberships(
        "org_rc",
        vec![membership("orgmem_rc1", "user_rx", "org:member", 300, &c)],
    );
    db.conn
        .execute_unprepared(
            "INSERT INTO users (id, clerk_user_id, clerk_updated_at) \
               VALUES (gen_random_uuid(), 'user_rx', 1); \
             INSERT INTO organizations (id, clerk_organization_id, name, slug, clerk_updated_at) VALUES \
               (gen_random_uuid(), 'org_rb', 'Name of org_rb', 'slug-org_rb', 100), \
               ('00000000-0000-0000-0000-00000000000c', 'org_rc', 'Old name', 'slug-org_rc', 150), \
               (gen_random_uuid(), 'org_rd', 'Newer here', 'slug-org_rd', 500), \
               (gen_random_uuid(), 'org_re', 'Gone from Clerk', 'slug-org_re', 100); \
             INSERT INTO organization_memberships \
               (id, clerk_membership_id, organization_id, clerk_user_id, role, clerk_updated_at) VALUES \
               (gen_random_uuid(), 'orgmem_rc1', '00000000-0000-0000-0000-00000000000c', 'user_rx', 'org:admin', 250), \
               (gen_random_uuid(), 'orgmem_rc9', '00000000-0000-0000-0000-00000000000c', 'user_rz', 'org:member', 250)",
        )
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconcile_of_organizations_repairs_missing_older_and_gone_and_leaves_newer_alone() {
    let db = TestDb::migrated().await;
    let broker = TestBroker::new().await;
    let clerk = FakeClerk::start().await;
    drifted(&db, &clerk).await;

    let (ok, stdout, stderr) = reconcile(&db, &broker, &clerk, &["--json"]);
    assert!(ok, "{stdout} {stderr}");
    let report: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["scanned_organizations"], 4, "{report}");
    assert_eq!(report["scanned_memberships"], 3, "{report}");
    for (object, kind, expected) in [
        ("organizations", "missing", 1),
        ("organizations", "older", 1),
        ("organizations", "newer_here", 1),
        ("organizations", "gone", 1),
        ("memberships", "missing", 2),
        ("memberships", "older", 1),
        ("memberships", "gone", 1),
    ] {
        assert_eq!(
            count(&report, object, kind),
            expected,
            "{object} {kind}: {report}"
        );
    }
    assert_eq!(report["organizations"]["gone"]["ids"][0], "org_re");
    assert_eq!(report["memberships"]["gone"]["ids"][0], "orgmem_rc9");

    let rows = |sql: &'static str| scalar(&db.conn, sql);
    assert_eq!(
        rows("SELECT count(*) FROM organizations WHERE clerk_organization_id = 'org_re'").await,
        0
    );
    assert_eq!(rows("SELECT count(*) FROM deleted_organizations").await, 1);
    assert_eq!(rows("SELECT count(*) FROM deleted_memberships").await, 1);
    assert_eq!(
        rows("SELECT count(*) FROM organizations WHERE clerk_organization_id = 'org_rd' AND name = 'Newer here'").await,
        1,
        "newer here: untouched"
    );
    assert_eq!(
        rows("SELECT count(*) FROM organizations WHERE clerk_organization_id = 'org_rc' AND name = 'Name of org_rc'").await,
        1
    );
    assert_eq!(
        rows("SELECT count(*) FROM organization_memberships WHERE clerk_membership_id = 'orgmem_rc1' AND role = 'org:member'").await,
        1
    );
    assert_eq!(
        rows("SELECT count(*) FROM organization_memberships m JOIN organizations o ON o.id = m.organization_id \
              WHERE o.clerk_organization_id = 'org_ra' AND (m.user_id IS NOT NULL) = (m.clerk_user_id = 'user_rx')").await,
        2,
        "both of A's memberships, linked where the user is stored"
    );

    // A second run finds nothing to repair.
    let (ok, stdout, stderr) = reconcile(&db, &broker, &clerk, &["--json"]);
    assert!(ok, "{stdout} {stderr}");
    let report: Value = serde_json::from_str(&stdout).unwrap();
    for object in ["organizations", "memberships"] {
        for kind in ["missing", "older", "gone"] {
            assert_eq!(count(&report, object, kind), 0, "{object} {kind}: {report}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_organization_list_deletes_nothing_past_the_limit() {
    let db = TestDb::migrated().await;
    let broker = TestBroker::new().await;
    let clerk = FakeClerk::start().await;
    drifted(&db, &clerk).await;
    clerk.set_organizations(Vec::new());

    for dry_run in [true, false] {
        let mut args = vec!["--max-deletes", "1"];
        if dry_run {
            args.push("--dry-run");
        }
        let (ok, stdout, stderr) = reconcile(&db, &broker, &clerk, &args);
        assert!(!ok, "{stdout}");
        assert!(
            stderr.contains("4 organization(s) would be deleted")
                && stderr.contains("limit of 1")
                && stderr.contains("--max-deletes"),
            "{stderr}"
        );
    }
    assert_eq!(
        scalar(&db.conn, "SELECT count(*) FROM organizations").await,
        4
    );
    assert_eq!(
        scalar(&db.conn, "SELECT count(*) FROM deleted_organizations").await,
        0
    );
}
