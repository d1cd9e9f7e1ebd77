//! Seeded, reproducible property test: random Clerk histories (creates, updates that move email
//! addresses between users as Clerk allows, deletes, pairs of different states with the same
//! Clerk `updated_at`; organizations created, renamed and deleted mid-history, memberships
//! created, changing role, left and joined again, of users that may come later or never),
//! every event delivered 1 to 3 times in a random order to 3 workers at once. The tables must
//! equal the model's answer.
//!
//! `CONVERGENCE_SEEDS` (default 3) seeds are run, starting at `CONVERGENCE_SEED_START` (default 1),
//! with `CONVERGENCE_USERS` (default 50) users each.

use std::{
    collections::{BTreeMap, HashMap},
    time::Duration,
};

use rand::{Rng, SeedableRng, rngs::StdRng, seq::SliceRandom};
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, Statement};
use testkit::{
    TestBroker, TestDb,
    events::{self, MembershipState, OrgState, UserState},
};

use crate::helpers::{Row, TestWorker, scalar, spawn_worker, users, wait_for_users};

/// (svix id, body) pairs.
type Events = Vec<(String, Vec<u8>)>;

/// An organization's expected row: name and version.
type OrgRow = (String, i64);

/// A membership's expected row, by (organization, user): membership id, role, and whether it is
/// linked to the user's row.
type MemberRow = (String, String, bool);

struct History {
    /// (svix id, body), in Clerk's order.
    events: Events,
    expected: BTreeMap<String, Row>,
    organizations: BTreeMap<String, OrgRow>,
    members: BTreeMap<(String, String), MemberRow>,
    /// Role changes, memberships ended and joined again, organizations deleted with members.
    role_changes: usize,
    rejoins: usize,
    deleted_with_members: usize,
    /// How many times an address moved from one user to another.
    moved_addresses: usize,
    /// How many updates have a twin: another state with the same Clerk `updated_at`.
    ties: usize,
}

/// Clerk's side while a random history is written: who is live, who holds which address, and
/// the events sent so far. The draws from `rng` decide everything, so a seed gives one history.
struct Clerk {
    seed: u64,
    rng: StdRng,
    /// Clerk's clock (`updated_at` and event timestamps).
    t: i64,
    live: HashMap<usize, UserState>,
    deleted: Vec<usize>,
    /// Which user holds an address.
    holder: HashMap<String, usize>,
    /// Addresses some user gave up (another may take one if nobody holds it again).
    released: Vec<String>,
    /// Bodies in Clerk's order; the nth one's svix id is `msg_{seed}_{n}`.
    history: Vec<Vec<u8>>,
    moved_addresses: usize,
    ties: usize,
    orgs: HashMap<usize, OrgState>,
    deleted_orgs: Vec<usize>,
    /// Current memberships by (organization, user).
    memberships: HashMap<(usize, usize), MembershipState>,
    /// (organization, user) pairs whose membership ended at least once.
    left: Vec<(usize, usize)>,
    next_membership: usize,
    role_changes: usize,
    rejoins: usize,
    deleted_with_members: usize,
}

fn generate(seed: u64, user_count: usize) -> History {
    let mut clerk = Clerk::new(seed);
    for _ in 0..user_count * 5 {
        clerk.next_event(user_count);
    }
    clerk.into_history()
}

impl Clerk {
    fn new(seed: u64) -> Self {
        Self {
            seed,
            rng: StdRng::seed_from_u64(seed),
            t: 1_000,
            live: HashMap::new(),
            deleted: Vec::new(),
            holder: HashMap::new(),
            released: Vec::new(),
            history: Vec::new(),
            moved_addresses: 0,
            ties: 0,
            orgs: HashMap::new(),
            deleted_orgs: Vec::new(),
            memberships: HashMap::new(),
            left: Vec::new(),
            next_membership: 0,
            role_changes: 0,
            rejoins: 0,
            deleted_with_members: 0,
        }
    }

    fn svix_id(&self, n: usize) -> String {
        format!("msg_{}_{n}", self.seed)
    }

    /// A random user (never one deleted) is created, deleted or updated; or an organization
    /// event happens.
    fn next_event(&mut self, user_count: usize) {
        if self.rng.random_bool(0.35) {
            self.next_organization_event(user_count);
            return;
        }
        let i = self.rng.random_range(0..user_count);
        if self.deleted.contains(&i) {
            return;
        }
        self.t += self.rng.random_range(1..=3);
        match self.live.get(&i).cloned() {
            None => self.create(i),
            Some(_) if self.rng.random_bool(0.12) => self.delete(i),
            Some(previous) => self.update(i, previous),
        }
    }

    fn create(&mut self, i: usize) {
        let t = self.t;
        let email = self.choose_email(i, None);
        let state = UserState {
            id: format!("user_{}_{i}", self.seed),
            email,
            first_name: Some(format!("First{t}")),
            last_name: Some(format!("Last{i}")),
            updated_at: t,
        };
        self.history
            .push(events::user_event("user.created", &state));
        self.live.insert(i, state);
    }

    fn delete(&mut self, i: usize) {
        // The user's memberships end with them (no event of their own).
        self.memberships.retain(|(_, user), _| *user != i);
        if let Some(email) = self.live.remove(&i).and_then(|state| state.email) {
            self.holder.remove(&email);
            self.released.push(email);
        }
        self.deleted.push(i);
        let id = format!("user_{}_{i}", self.seed);
        self.history.push(events::user_deleted(&id, self.t));
    }

    /// A new state of user `i`; sometimes a twin with the same `updated_at` follows it.
    fn update(&mut self, i: usize, previous: UserState) {
        let t = self.t;
        let email = self.choose_email(i, previous.email.clone());
        let state = UserState {
            email,
            first_name: Some(format!("First{t}")),
            updated_at: t,
            ..previous
        };
        self.history
            .push(events::user_event("user.updated", &state));
        let latest = if self.rng.random_bool(0.15) {
            self.send_a_twin_of(state)
        } else {
            state
        };
        self.live.insert(i, latest);
    }

    /// Sends a second, different state with the same Clerk `updated_at` as `state` (the event
    /// just sent), with an event timestamp equal or later: the later event timestamp wins, then
    /// the greater Svix id, whatever the arrival order. Returns the winner.
    fn send_a_twin_of(&mut self, state: UserState) -> UserState {
        let t = self.t;
        let twin = UserState {
            first_name: Some(format!("Twin{t}")),
            ..state.clone()
        };
        let first_stamp = t;
        let twin_stamp = t + self.rng.random_range(0..=1);
        let first_id = self.svix_id(self.history.len() - 1);
        let twin_id = self.svix_id(self.history.len());
        self.history.push(
            serde_json::to_vec(&events::envelope(
                "user.updated",
                events::user_object(&twin),
                twin_stamp,
            ))
            .unwrap(),
        );
        self.ties += 1;
        let key = |stamp: i64, id: &str| format!("{stamp:020}/{id}");
        if key(twin_stamp, &twin_id) > key(first_stamp, &first_id) {
            twin
        } else {
            state
        }
    }

    /// User `i`'s next address: the same, a new one, one another user released, or none. The
    /// holders follow.
    fn choose_email(&mut self, i: usize, current: Option<String>) -> Option<String> {
        let t = self.t;
        let roll: f64 = self.rng.random();
        let free: Vec<String> = self
            .released
            .iter()
            .filter(|e| !self.holder.contains_key(*e))
            .cloned()
            .collect();
        let next = if roll < 0.45 && current.is_some() {
            current.clone()
        } else if roll < 0.70 {
            Some(format!("u{i}-{t}@example.com"))
        } else if roll < 0.92 && !free.is_empty() {
            let taken = free[self.rng.random_range(0..free.len())].clone();
            if !taken.starts_with(&format!("u{i}-")) {
                self.moved_addresses += 1;
            }
            Some(taken)
        } else if roll < 0.92 {
            Some(format!("u{i}-{t}@example.com"))
        } else {
            None
        };
        if next != current {
            if let Some(old) = &current {
                self.holder.remove(old);
                self.released.push(old.clone());
            }
            if let Some(new) = &next {
                self.holder.insert(new.clone(), i);
            }
        }
        next
    }

    /// A random organization (never one deleted) is created, renamed or deleted, or one of
    /// its memberships is created, changes role or ends.
    fn next_organization_event(&mut self, user_count: usize) {
        let j = self.rng.random_range(0..(user_count / 10).max(2));
        if self.deleted_orgs.contains(&j) {
            return;
        }
        self.t += self.rng.random_range(1..=3);
        match self.orgs.get(&j).cloned() {
            None => {
                let org = OrgState {
                    id: format!("org_{}_{j}", self.seed),
                    name: format!("Org{}", self.t),
                    slug: format!("org-{}-{j}", self.seed),
                    updated_at: self.t,
                };
                self.history
                    .push(events::organization_event("organization.created", &org));
                self.orgs.insert(j, org);
            }
            Some(_) if self.rng.random_bool(0.04) => self.delete_organization(j),
            Some(org) if self.rng.random_bool(0.2) => {
                let renamed = OrgState {
                    name: format!("Org{}", self.t),
                    updated_at: self.t,
                    ..org
                };
                self.history
                    .push(events::organization_event("organization.updated", &renamed));
                self.orgs.insert(j, renamed);
            }
            Some(org) => self.membership_event(j, org, user_count),
        }
    }

    fn delete_organization(&mut self, j: usize) {
        let before = self.memberships.len();
        self.memberships.retain(|(org, _), _| *org != j);
        if self.memberships.len() < before {
            self.deleted_with_members += 1;
        }
        let org = self.orgs.remove(&j).map(|o| o.id).unwrap_or_default();
        self.deleted_orgs.push(j);
        self.history
            .push(events::organization_deleted(&org, self.t));
    }

    /// User `i` (who may not exist yet, or ever) joins `org`, changes role or leaves it.
    fn membership_event(&mut self, j: usize, org: OrgState, user_count: usize) {
        // Members come from a quarter of the users, so that pairs meet again (role changes,
        // leaving and joining again).
        let i = self.rng.random_range(0..(user_count / 4).max(1));
        if self.deleted.contains(&i) {
            return;
        }
        let t = self.t;
        match self.memberships.get(&(j, i)).cloned() {
            None => {
                if self.left.contains(&(j, i)) {
                    self.rejoins += 1;
                }
                self.next_membership += 1;
                let membership = MembershipState {
                    id: format!("orgmem_{}_{}", self.seed, self.next_membership),
                    user_id: format!("user_{}_{i}", self.seed),
                    role: if self.rng.random_bool(0.3) {
                        "org:admin"
                    } else {
                        "org:member"
                    }
                    .into(),
                    updated_at: t,
                    organization: org,
                };
                self.history.push(events::membership_event(
                    "organizationMembership.created",
                    &membership,
                ));
                self.memberships.insert((j, i), membership);
            }
            Some(current) if self.rng.random_bool(0.3) => {
                let ended = MembershipState {
                    updated_at: t,
                    organization: org,
                    ..current
                };
                self.history.push(events::membership_event(
                    "organizationMembership.deleted",
                    &ended,
                ));
                self.memberships.remove(&(j, i));
                self.left.push((j, i));
            }
            Some(current) => {
                let role = if current.role == "org:admin" {
                    "org:member"
                } else {
                    "org:admin"
                };
                let changed = MembershipState {
                    role: role.into(),
                    updated_at: t,
                    organization: org,
                    ..current
                };
                self.history.push(events::membership_event(
                    "organizationMembership.updated",
                    &changed,
                ));
                self.memberships.insert((j, i), changed);
                self.role_changes += 1;
            }
        }
    }

    /// The events with their svix ids, and the rows of the users still live.
    fn into_history(self) -> History {
        let expected = self
            .live
            .values()
            .map(|s| {
                (
                    s.id.clone(),
                    Row {
                        email: s.email.clone(),
                        first_name: s.first_name.clone(),
                        last_name: s.last_name.clone(),
                        version: s.updated_at,
                    },
                )
            })
            .collect();
        let organizations = self
            .orgs
            .values()
            .map(|o| (o.id.clone(), (o.name.clone(), o.updated_at)))
            .collect();
        let members = self
            .memberships
            .iter()
            .map(|(&(j, i), m)| {
                (
                    (self.orgs[&j].id.clone(), m.user_id.clone()),
                    (m.id.clone(), m.role.clone(), self.live.contains_key(&i)),
                )
            })
            .collect();
        let seed = self.seed;
        History {
            organizations,
            members,
            role_changes: self.role_changes,
            rejoins: self.rejoins,
            deleted_with_members: self.deleted_with_members,
            events: self
                .history
                .into_iter()
                .enumerate()
                .map(|(n, body)| (format!("msg_{seed}_{n}"), body))
                .collect(),
            expected,
            moved_addresses: self.moved_addresses,
            ties: self.ties,
        }
    }
}

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn random_histories_delivered_duplicated_and_shuffled_to_three_workers_converge_to_the_model()
{
    let seeds = env_number("CONVERGENCE_SEEDS", 3);
    let start = env_number("CONVERGENCE_SEED_START", 1);
    let user_count = env_number("CONVERGENCE_USERS", 50) as usize;
    // Role changes, memberships ended and joined again, organizations deleted with members:
    // each seed has some of them, the run must have all.
    let mut organization_histories = [0; 3];
    for seed in start..start + seeds {
        let counts = run_seed(seed, user_count).await;
        for (total, count) in organization_histories.iter_mut().zip(counts) {
            *total += count;
        }
        eprintln!("convergence seed {seed}: ok");
    }
    if user_count >= 50 {
        assert!(
            organization_histories.iter().all(|count| *count > 0),
            "role changes, joined again, organizations deleted with members: {organization_histories:?}"
        );
    }
}

/// Runs one seed; returns how many role changes, memberships joined again and organizations
/// deleted with members its history has.
async fn run_seed(seed: u64, user_count: usize) -> [usize; 3] {
    let history = generate(seed, user_count);
    eprintln!(
        "convergence seed {seed}: {} events, {} organizations and {} memberships left, {} role changes, {} joined again, {} organizations deleted with members",
        history.events.len(),
        history.organizations.len(),
        history.members.len(),
        history.role_changes,
        history.rejoins,
        history.deleted_with_members
    );
    if user_count >= 50 {
        assert_the_history_moves_addresses_and_has_ties(seed, &history);
    }
    let deliveries = each_one_to_three_times_shuffled(seed, &history.events);
    // An empty database: the three workers race to apply the migrations at start.
    let db = TestDb::empty().await;
    let broker = TestBroker::new().await;
    // Half of the deliveries wait in the queue before the workers start (so that they are
    // taken in full batches), the rest arrive while they run.
    let (backlog, live) = deliveries.split_at(deliveries.len() / 2);
    publish(&broker, backlog).await;
    let workers = spawn_three_batching_workers(&db, &broker).await;
    publish(&broker, live).await;

    wait_until_every_event_settled(&db, &broker, &history).await;
    assert_eq!(users(&db.conn).await, history.expected, "seed {seed}");
    assert_eq!(
        organizations(&db.conn).await,
        history.organizations,
        "seed {seed}: organizations"
    );
    assert_eq!(
        members(&db.conn).await,
        history.members,
        "seed {seed}: memberships"
    );
    assert_eq!(
        broker.count(&broker.topology.dead_queue()).await,
        0,
        "seed {seed}: dead letters"
    );
    assert_the_batch_path_did_the_work(seed, &workers).await;
    let [a, b, c] = workers;
    tokio::join!(a.stop(), b.stop(), c.stop());
    [
        history.role_changes,
        history.rejoins,
        history.deleted_with_members,
    ]
}

fn assert_the_history_moves_addresses_and_has_ties(seed: u64, history: &History) {
    assert!(
        history.moved_addresses > 0,
        "seed {seed}: the history never moves an address between users"
    );
    assert!(
        history.ties > 0,
        "seed {seed}: no two states share a version"
    );
}

/// The organizations table: Clerk id → (name, version).
async fn organizations(db: &DatabaseConnection) -> BTreeMap<String, OrgRow> {
    db.query_all_raw(Statement::from_string(
        DbBackend::Postgres,
        "SELECT clerk_organization_id, name, clerk_updated_at FROM organizations",
    ))
    .await
    .unwrap()
    .into_iter()
    .map(|row| {
        (
            row.try_get("", "clerk_organization_id").unwrap(),
            (
                row.try_get("", "name").unwrap(),
                row.try_get("", "clerk_updated_at").unwrap(),
            ),
        )
    })
    .collect()
}

/// The memberships table: (organization, user) → (membership id, role, linked).
async fn members(db: &DatabaseConnection) -> BTreeMap<(String, String), MemberRow> {
    db.query_all_raw(Statement::from_string(
        DbBackend::Postgres,
        "SELECT o.clerk_organization_id, m.clerk_user_id, m.clerk_membership_id, m.role, \
           m.user_id IS NOT NULL AS linked \
         FROM organization_memberships m JOIN organizations o ON o.id = m.organization_id",
    ))
    .await
    .unwrap()
    .into_iter()
    .map(|row| {
        (
            (
                row.try_get("", "clerk_organization_id").unwrap(),
                row.try_get("", "clerk_user_id").unwrap(),
            ),
            (
                row.try_get("", "clerk_membership_id").unwrap(),
                row.try_get("", "role").unwrap(),
                row.try_get("", "linked").unwrap(),
            ),
        )
    })
    .collect()
}

/// Every event delivered 1 to 3 times, all in a random order.
fn each_one_to_three_times_shuffled(seed: u64, events: &Events) -> Events {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed);
    let mut deliveries = Vec::new();
    for (svix_id, body) in events {
        for _ in 0..rng.random_range(1..=3) {
            deliveries.push((svix_id.clone(), body.clone()));
        }
    }
    deliveries.shuffle(&mut rng);
    deliveries
}

async fn publish(broker: &TestBroker, deliveries: &[(String, Vec<u8>)]) {
    for (svix_id, body) in deliveries {
        broker.publish_event(svix_id, body).await;
    }
}

async fn spawn_three_batching_workers(db: &TestDb, broker: &TestBroker) -> [TestWorker; 3] {
    let settings = [
        ("WORKER_CONCURRENCY", "3"),
        ("WORKER_PREFETCH", "48"),
        ("WORKER_BATCH_SIZE", "16"),
    ];
    let (a, b, c) = tokio::join!(
        spawn_worker(db, broker, &settings),
        spawn_worker(db, broker, &settings),
        spawn_worker(db, broker, &settings),
    );
    [a, b, c]
}

/// The users table reaches the model's answer, every distinct event is recorded and no queue
/// holds anything.
async fn wait_until_every_event_settled(db: &TestDb, broker: &TestBroker, history: &History) {
    wait_for_users(&db.conn, &history.expected, Duration::from_secs(90)).await;
    let distinct = history.events.len() as i64;
    testkit::eventually(Duration::from_secs(60), "every event settled", || async {
        (scalar(&db.conn, "SELECT count(*) FROM processed_events").await == distinct
            && broker.total_ready().await == 0)
            .then_some(())
    })
    .await;
}

/// A good share of the events were committed in batches of several. (How many arrive together
/// depends on timing: three workers share the backlog as the broker streams it, so the mean
/// batch can be small on a fast worker.)
async fn assert_the_batch_path_did_the_work(seed: u64, workers: &[TestWorker]) {
    let (mut batched_events, mut batches, mut single) = (0.0, 0.0, 0.0);
    for worker in workers {
        let metrics = worker.metrics().await;
        batched_events += metric(&metrics, "clerk_sync_batch_size_sum");
        batches += metric(&metrics, "clerk_sync_batch_size_count");
        single += metric(&metrics, "clerk_sync_batch_size_bucket{le=\"1.0\"}");
    }
    let in_multi = batched_events - single;
    eprintln!(
        "convergence seed {seed}: {batched_events} events in {batches} batches, {single} alone"
    );
    assert!(
        batches > 0.0 && in_multi >= batched_events / 4.0,
        "seed {seed}: {batched_events} events in {batches} batches, {single} of them alone"
    );
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or(0.0)
}
