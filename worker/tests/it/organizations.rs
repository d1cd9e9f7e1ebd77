//! Organizations and memberships through a running worker: any order ends applied (never
//! dead-lettered), the newest role wins, leaving and joining again, and deletes are final.

use std::time::Duration;

use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, Statement};
use testkit::{
    TestBroker, TestDb,
    events::{self, MembershipState, OrgState},
};

use crate::helpers::{TestWorker, scalar, spawn_worker, user_created};

fn org(id: &str, name: &str, version: i64) -> OrgState {
    OrgState {
        id: id.into(),
        name: name.into(),
        slug: format!("slug-{id}"),
        updated_at: version,
    }
}

fn membership(id: &str, user: &str, role: &str, version: i64, org: &OrgState) -> MembershipState {
    MembershipState {
        id: id.into(),
        user_id: user.into(),
        role: role.into(),
        updated_at: version,
        organization: org.clone(),
    }
}

/// `(clerk_membership_id, role, linked to a user row)` of every membership of `org`, by
/// membership id.
async fn members(db: &DatabaseConnection, org: &str) -> Vec<(String, String, bool)> {
    db.query_all_raw(Statement::from_sql_and_values(
        DbBackend::Postgres,
        "SELECT m.clerk_membership_id, m.role, m.user_id IS NOT NULL AS linked \
         FROM organization_memberships m JOIN organizations o ON o.id = m.organization_id \
         WHERE o.clerk_organization_id = $1 ORDER BY 1",
        [org.into()],
    ))
    .await
    .unwrap()
    .into_iter()
    .map(|row| {
        (
            row.try_get("", "clerk_membership_id").unwrap(),
            row.try_get("", "role").unwrap(),
            row.try_get("", "linked").unwrap(),
        )
    })
    .collect()
}

/// Waits until `count` events are recorded as processed.
async fn settled(db: &DatabaseConnection, count: i64) {
    testkit::eventually(Duration::from_secs(30), "events settled", || async {
        (scalar(db, "SELECT count(*) FROM processed_events").await >= count).then_some(())
    })
    .await;
}

async fn publish(broker: &TestBroker, svix_id: &str, body: Vec<u8>) {
    broker.publish_event(svix_id, &body).await;
}

async fn no_dead_letters(broker: &TestBroker, worker: TestWorker) {
    assert_eq!(broker.count(&broker.topology.dead_queue()).await, 0);
    worker.stop().await;
}

#[tokio::test]
async fn a_membership_before_its_organization_and_user_ends_applied_and_linked() {
    let db = TestDb::empty().await;
    let broker = TestBroker::new().await;
    let worker = spawn_worker(&db, &broker, &[]).await;
    let acme = org("org_a1", "Acme Lettings", 10);
    let joined = membership("orgmem_a1", "user_a1", "org:member", 100, &acme);

    // The membership first: the organization comes with it, the user is not there yet.
    publish(
        &broker,
        "msg_a_1",
        events::membership_event("organizationMembership.created", &joined),
    )
    .await;
    settled(&db.conn, 1).await;
    assert_eq!(
        members(&db.conn, "org_a1").await,
        vec![("orgmem_a1".into(), "org:member".into(), false)]
    );
    assert_eq!(
        scalar(&db.conn, "SELECT members_count::bigint FROM organizations").await,
        3,
        "the count the membership's organization carries"
    );
    // The organization's own, older event changes nothing; the user's links the membership.
    publish(
        &broker,
        "msg_a_2",
        events::organization_event("organization.created", &org("org_a1", "Old name", 5)),
    )
    .await;
    user_created("user_a1", Some("a1@example.com"), "Ada", 50)
        .publish(&broker, "msg_a_3")
        .await;
    settled(&db.conn, 3).await;
    assert_eq!(
        members(&db.conn, "org_a1").await,
        vec![("orgmem_a1".into(), "org:member".into(), true)]
    );
    assert_eq!(
        scalar(
            &db.conn,
            "SELECT count(*) FROM organizations WHERE name = 'Acme Lettings'"
        )
        .await,
        1
    );

    // A role change, then a late older one: the newest role stays.
    let promoted = membership("orgmem_a1", "user_a1", "org:admin", 300, &acme);
    let demoted_before = membership("orgmem_a1", "user_a1", "org:member", 200, &acme);
    publish(
        &broker,
        "msg_a_4",
        events::membership_event("organizationMembership.updated", &promoted),
    )
    .await;
    publish(
        &broker,
        "msg_a_5",
        events::membership_event("organizationMembership.updated", &demoted_before),
    )
    .await;
    // A duplicate delivery of the promotion changes nothing either.
    publish(
        &broker,
        "msg_a_4",
        events::membership_event("organizationMembership.updated", &promoted),
    )
    .await;
    settled(&db.conn, 5).await;
    testkit::eventually(Duration::from_secs(20), "the duplicate settled", || async {
        worker
            .metrics()
            .await
            .lines()
            .any(|l| l.contains("outcome=\"duplicate\""))
            .then_some(())
    })
    .await;
    assert_eq!(
        members(&db.conn, "org_a1").await,
        vec![("orgmem_a1".into(), "org:admin".into(), true)]
    );
    assert_eq!(
        scalar(&db.conn, "SELECT count(*) FROM organizations WHERE public_metadata->>'plan' = 'team' AND NOT public_metadata ? 'billing'").await,
        1,
        "public metadata kept, private metadata not stored"
    );
    no_dead_letters(&broker, worker).await;
}

#[tokio::test]
async fn leaving_and_joining_again_in_any_order_keeps_the_newest_membership() {
    let db = TestDb::empty().await;
    let broker = TestBroker::new().await;
    let worker = spawn_worker(&db, &broker, &[]).await;
    let team = org("org_b1", "Bee Homes", 10);
    user_created("user_b1", None, "Bo", 1)
        .publish(&broker, "msg_b_0")
        .await;
    // Clerk's history: joined as m1 (20), left (30), joined again as m2 (40) as admin.
    let m1 = membership("orgmem_b1", "user_b1", "org:member", 20, &team);
    let m1_left = membership("orgmem_b1", "user_b1", "org:member", 30, &team);
    let m2 = membership("orgmem_b2", "user_b1", "org:admin", 40, &team);
    // Delivered newest first.
    publish(
        &broker,
        "msg_b_3",
        events::membership_event("organizationMembership.created", &m2),
    )
    .await;
    publish(
        &broker,
        "msg_b_2",
        events::membership_event("organizationMembership.deleted", &m1_left),
    )
    .await;
    publish(
        &broker,
        "msg_b_1",
        events::membership_event("organizationMembership.created", &m1),
    )
    .await;
    settled(&db.conn, 4).await;
    assert_eq!(
        members(&db.conn, "org_b1").await,
        vec![("orgmem_b2".into(), "org:admin".into(), true)]
    );
    // The same history delivered oldest first ends the same.
    let other = org("org_b2", "Bee Offices", 10);
    let n1 = membership("orgmem_b3", "user_b1", "org:member", 20, &other);
    let n1_left = membership("orgmem_b3", "user_b1", "org:member", 30, &other);
    let n2 = membership("orgmem_b4", "user_b1", "org:admin", 40, &other);
    publish(
        &broker,
        "msg_b_4",
        events::membership_event("organizationMembership.created", &n1),
    )
    .await;
    publish(
        &broker,
        "msg_b_5",
        events::membership_event("organizationMembership.deleted", &n1_left),
    )
    .await;
    publish(
        &broker,
        "msg_b_6",
        events::membership_event("organizationMembership.created", &n2),
    )
    .await;
    settled(&db.conn, 7).await;
    assert_eq!(
        members(&db.conn, "org_b2").await,
        vec![("orgmem_b4".into(), "org:admin".into(), true)]
    );
    // A late update of the ended membership does not bring it back.
    let n1_late = membership("orgmem_b3", "user_b1", "org:admin", 25, &other);
    publish(
        &broker,
        "msg_b_7",
        events::membership_event("organizationMembership.updated", &n1_late),
    )
    .await;
    settled(&db.conn, 8).await;
    assert_eq!(members(&db.conn, "org_b2").await.len(), 1);
    no_dead_letters(&broker, worker).await;
}

#[tokio::test]
async fn deleted_organizations_and_users_take_their_memberships_and_stay_deleted() {
    let db = TestDb::empty().await;
    let broker = TestBroker::new().await;
    let worker = spawn_worker(&db, &broker, &[]).await;
    let doomed = org("org_c1", "Closing Down", 10);
    let kept = org("org_c2", "Going On", 10);
    user_created("user_c1", None, "Cy", 1)
        .publish(&broker, "msg_c_0")
        .await;
    publish(
        &broker,
        "msg_c_1",
        events::membership_event(
            "organizationMembership.created",
            &membership("orgmem_c1", "user_c1", "org:admin", 20, &doomed),
        ),
    )
    .await;
    publish(
        &broker,
        "msg_c_2",
        events::membership_event(
            "organizationMembership.created",
            &membership("orgmem_c2", "user_c1", "org:member", 20, &kept),
        ),
    )
    .await;
    publish(
        &broker,
        "msg_c_3",
        events::membership_event(
            "organizationMembership.created",
            &membership("orgmem_c3", "user_c9", "org:member", 20, &kept),
        ),
    )
    .await;
    settled(&db.conn, 4).await;

    // The organization is deleted mid-history: late events of it and its memberships change
    // nothing.
    publish(
        &broker,
        "msg_c_4",
        events::organization_deleted("org_c1", 50),
    )
    .await;
    publish(
        &broker,
        "msg_c_5",
        events::organization_event("organization.updated", &org("org_c1", "Back Again", 60)),
    )
    .await;
    publish(
        &broker,
        "msg_c_6",
        events::membership_event(
            "organizationMembership.updated",
            &membership("orgmem_c1", "user_c1", "org:member", 70, &doomed),
        ),
    )
    .await;
    settled(&db.conn, 7).await;
    assert_eq!(
        scalar(
            &db.conn,
            "SELECT count(*) FROM organizations WHERE clerk_organization_id = 'org_c1'"
        )
        .await,
        0
    );
    assert!(members(&db.conn, "org_c1").await.is_empty());
    assert_eq!(
        scalar(&db.conn, "SELECT count(*) FROM deleted_organizations WHERE clerk_organization_id_sha256 LIKE 'org_%'").await,
        0,
        "tombstones hold a hash, not the id"
    );

    // A deleted user's memberships go; one of a user never stored stays until its user comes.
    publish(&broker, "msg_c_7", events::user_deleted("user_c1", 80)).await;
    settled(&db.conn, 8).await;
    assert_eq!(
        members(&db.conn, "org_c2").await,
        vec![("orgmem_c3".into(), "org:member".into(), false)]
    );
    // A late membership of the deleted user does not come back.
    publish(
        &broker,
        "msg_c_8",
        events::membership_event(
            "organizationMembership.updated",
            &membership("orgmem_c2", "user_c1", "org:admin", 90, &kept),
        ),
    )
    .await;
    settled(&db.conn, 9).await;
    assert_eq!(members(&db.conn, "org_c2").await.len(), 1);
    // A user deleted before their row ever came takes their waiting membership along.
    publish(&broker, "msg_c_9", events::user_deleted("user_c9", 95)).await;
    settled(&db.conn, 10).await;
    assert!(members(&db.conn, "org_c2").await.is_empty());
    no_dead_letters(&broker, worker).await;
}

#[tokio::test]
async fn a_membership_tombstone_stops_events_up_to_its_version_and_no_newer_one() {
    let db = TestDb::empty().await;
    let broker = TestBroker::new().await;
    let worker = spawn_worker(&db, &broker, &[]).await;
    let team = org("org_t1", "Tee Lets", 10);
    user_created("user_t1", None, "Tia", 1)
        .publish(&broker, "msg_t_0")
        .await;
    let ended = membership("orgmem_t1", "user_t1", "org:member", 30, &team);
    publish(
        &broker,
        "msg_t_1",
        events::membership_event("organizationMembership.deleted", &ended),
    )
    .await;
    // Older than the tombstone, or at its version: stays ended.
    for (svix_id, version) in [("msg_t_2", 20), ("msg_t_3", 30)] {
        let late = membership("orgmem_t1", "user_t1", "org:admin", version, &team);
        publish(
            &broker,
            svix_id,
            events::membership_event("organizationMembership.updated", &late),
        )
        .await;
    }
    settled(&db.conn, 4).await;
    assert!(members(&db.conn, "org_t1").await.is_empty());
    // Newer than what the tombstone ended: Clerk still has the member, so it is applied.
    let newer = membership("orgmem_t1", "user_t1", "org:admin", 40, &team);
    publish(
        &broker,
        "msg_t_4",
        events::membership_event("organizationMembership.updated", &newer),
    )
    .await;
    settled(&db.conn, 5).await;
    assert_eq!(
        members(&db.conn, "org_t1").await,
        vec![("orgmem_t1".into(), "org:admin".into(), true)]
    );
    no_dead_letters(&broker, worker).await;
}
