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

/// Org `org_rs` with three members stored and in Clerk at version 100.
async fn three_members(db: &TestDb, clerk: &FakeClerk) -> OrgState {
    let team = org("org_rs", 100);
    clerk.set_organizations(vec![events::organization_object(&team)]);
    clerk.set_memberships(
        "org_rs",
        ["a", "b", "c"]
            .iter()
            .map(|u| {
                membership(
                    &format!("orgmem_rs{u}"),
                    &format!("user_rs{u}"),
                    "org:member",
                    100,
                    &team,
                )
            })
            .collect(),
    );
    db.conn
        .execute_unprepared(
            "INSERT INTO organizations (id, clerk_organization_id, name, slug, clerk_updated_at) VALUES \
               ('00000000-0000-0000-0000-0000000000a5', 'org_rs', 'Name of org_rs', 'slug-org_rs', 100); \
             INSERT INTO organization_memberships \
               (id, clerk_membership_id, organization_id, clerk_user_id, role, clerk_updated_at) VALUES \
               (gen_random_uuid(), 'orgmem_rsa', '00000000-0000-0000-0000-0000000000a5', 'user_rsa', 'org:member', 100), \
               (gen_random_uuid(), 'orgmem_rsb', '00000000-0000-0000-0000-0000000000a5', 'user_rsb', 'org:member', 100), \
               (gen_random_uuid(), 'orgmem_rsc', '00000000-0000-0000-0000-0000000000a5', 'user_rsc', 'org:member', 100)",
        )
        .await
        .unwrap();
    team
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_a_shifted_listing_skipped_or_that_fails_to_parse_is_asked_for_again_and_kept() {
    let db = TestDb::migrated().await;
    let broker = TestBroker::new().await;
    let clerk = FakeClerk::start().await;
    let team = three_members(&db, &clerk).await;
    // b is left out of the listing by offset (a member before it left mid-listing), c is listed
    // with a field Clerk should not send; both are still members when asked by user.
    clerk.hide_from_listing("orgmem_rsb");
    let mut broken = membership("orgmem_rsc", "user_rsc", "org:member", 100, &team);
    broken["updated_at"] = serde_json::json!("soon");
    clerk.set_memberships(
        "org_rs",
        vec![
            membership("orgmem_rsa", "user_rsa", "org:member", 100, &team),
            membership("orgmem_rsb", "user_rsb", "org:member", 100, &team),
            broken,
        ],
    );

    let (ok, stdout, stderr) = reconcile(&db, &broker, &clerk, &["--json"]);
    assert!(!ok && stderr.contains("could not be repaired"), "{stderr}");
    let report: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(count(&report, "memberships", "gone"), 0, "{report}");
    assert_eq!(
        scalar(&db.conn, "SELECT count(*) FROM organization_memberships").await,
        3,
        "every member Clerk still has keeps their membership"
    );
    assert_eq!(
        scalar(&db.conn, "SELECT count(*) FROM deleted_memberships").await,
        0
    );
    assert_eq!(report["failed"][0][0], "orgmem_rsc", "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_membership_ended_by_reconcile_comes_back_when_clerk_has_a_newer_version() {
    let db = TestDb::migrated().await;
    let broker = TestBroker::new().await;
    let clerk = FakeClerk::start().await;
    let team = three_members(&db, &clerk).await;
    // Clerk says b is no member, listed or asked for by user: b's membership is ended.
    clerk.set_memberships(
        "org_rs",
        vec![
            membership("orgmem_rsa", "user_rsa", "org:member", 100, &team),
            membership("orgmem_rsc", "user_rsc", "org:member", 100, &team),
        ],
    );
    let (ok, stdout, stderr) = reconcile(&db, &broker, &clerk, &["--json"]);
    assert!(ok, "{stdout} {stderr}");
    let report: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(
        report["memberships"]["gone"]["ids"][0], "orgmem_rsb",
        "{report}"
    );
    let b =
        "SELECT count(*) FROM organization_memberships WHERE clerk_membership_id = 'orgmem_rsb'";
    assert_eq!(scalar(&db.conn, b).await, 0);

    // Clerk lists b again at the version it was ended at: the tombstone holds.
    let mut all = vec![
        membership("orgmem_rsa", "user_rsa", "org:member", 100, &team),
        membership("orgmem_rsb", "user_rsb", "org:member", 100, &team),
        membership("orgmem_rsc", "user_rsc", "org:member", 100, &team),
    ];
    clerk.set_memberships("org_rs", all.clone());
    let (ok, stdout, stderr) = reconcile(&db, &broker, &clerk, &["--json"]);
    assert!(ok, "{stdout} {stderr}");
    assert_eq!(scalar(&db.conn, b).await, 0);

    // A newer version of b in Clerk (b is still a member, now an admin): applied.
    all[1] = membership("orgmem_rsb", "user_rsb", "org:admin", 200, &team);
    clerk.set_memberships("org_rs", all);
    let (ok, stdout, stderr) = reconcile(&db, &broker, &clerk, &["--json"]);
    assert!(ok, "{stdout} {stderr}");
    let report: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(count(&report, "memberships", "missing"), 1, "{report}");
    assert_eq!(
        scalar(
            &db.conn,
            "SELECT count(*) FROM organization_memberships \
             WHERE clerk_membership_id = 'orgmem_rsb' AND role = 'org:admin' AND clerk_updated_at = 200"
        )
        .await,
        1
    );
}
