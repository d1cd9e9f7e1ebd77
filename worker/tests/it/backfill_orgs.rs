//! `worker backfill --organizations` against the fake Clerk Backend API.

use sea_orm::ConnectionTrait;
use serde_json::Value;
use testkit::{
    TestBroker, TestDb,
    events::{self, MembershipState, OrgState},
    fake_clerk::FakeClerk,
};

use crate::helpers::scalar;

fn org(i: usize, version: i64) -> OrgState {
    OrgState {
        id: format!("org_bf_{i}"),
        name: format!("Agency {i}"),
        slug: format!("agency-{i}"),
        updated_at: version,
    }
}

/// A membership object as Clerk's API lists it (the `data` of a membership event).
fn membership(id: &str, user: &str, role: &str, org: &OrgState) -> Value {
    events::membership_object(&MembershipState {
        id: id.into(),
        user_id: user.into(),
        role: role.into(),
        updated_at: 500,
        organization: org.clone(),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backfill_of_organizations_pages_through_them_and_their_memberships() {
    let db = TestDb::migrated().await;
    let broker = TestBroker::new().await;
    let clerk = FakeClerk::start().await;
    // Three organizations over two pages; the first has three memberships over two pages.
    let orgs: Vec<OrgState> = (0..3).map(|i| org(i, 100)).collect();
    clerk.set_organizations(orgs.iter().map(events::organization_object).collect());
    clerk.set_memberships(
        "org_bf_0",
        vec![
            membership("orgmem_bf_1", "user_bf_a", "org:admin", &orgs[0]),
            membership("orgmem_bf_2", "user_bf_b", "org:member", &orgs[0]),
            membership("orgmem_bf_3", "user_bf_c", "org:member", &orgs[0]),
        ],
    );
    clerk.set_memberships(
        "org_bf_2",
        vec![membership(
            "orgmem_bf_4",
            "user_bf_a",
            "org:member",
            &orgs[2],
        )],
    );
    // Already here: user a's row, a newer state of organization 1 and the deletion of
    // organization 2 (from webhooks).
    db.conn
        .execute_unprepared(
            "INSERT INTO users (id, clerk_user_id, clerk_updated_at) \
               VALUES (gen_random_uuid(), 'user_bf_a', 1); \
             INSERT INTO organizations (id, clerk_organization_id, name, slug, clerk_updated_at) \
               VALUES (gen_random_uuid(), 'org_bf_1', 'Renamed', 'renamed', 900)",
        )
        .await
        .unwrap();
    broker
        .publish_event(
            "msg_bf_org_del",
            &events::organization_deleted("org_bf_2", 1),
        )
        .await;
    let worker = crate::helpers::spawn_worker(&db, &broker, &[]).await;
    testkit::eventually(
        std::time::Duration::from_secs(20),
        "deletion applied",
        || async {
            (scalar(&db.conn, "SELECT count(*) FROM deleted_organizations").await == 1)
                .then_some(())
        },
    )
    .await;
    worker.stop().await;

    let settings = crate::helpers::settings_with_clerk(&db, &broker, &clerk);
    let (ok, stdout, stderr) = crate::helpers::worker_cli(
        settings,
        &["backfill", "--organizations", "--page-size", "2"],
    );
    assert!(ok, "{stdout} {stderr}");
    assert!(
        stdout.contains("3 organizations seen, 1 applied, 1 already newer, 1 deleted, 0 failed"),
        "{stdout}"
    );
    assert!(
        stdout.contains("4 memberships seen, 3 applied, 0 already newer, 1 deleted, 0 failed"),
        "{stdout}"
    );
    assert_eq!(
        scalar(
            &db.conn,
            "SELECT count(*) FROM organizations WHERE clerk_organization_id = 'org_bf_1' AND name = 'Renamed'"
        )
        .await,
        1,
        "the newer state stays"
    );
    assert_eq!(
        scalar(
            &db.conn,
            "SELECT count(*) FROM organizations WHERE clerk_organization_id = 'org_bf_2'"
        )
        .await,
        0,
        "a deleted organization is not brought back"
    );
    assert_eq!(
        scalar(&db.conn, "SELECT count(*) FROM organization_memberships").await,
        3
    );
    assert_eq!(
        scalar(
            &db.conn,
            "SELECT count(*) FROM organization_memberships m JOIN users u ON u.id = m.user_id \
             WHERE u.clerk_user_id = 'user_bf_a' AND m.role = 'org:admin'"
        )
        .await,
        1,
        "linked to the user's row"
    );
}
