//! Seeded, reproducible property test: random Clerk histories (creates, updates that move email
//! addresses between users as Clerk allows, deletes, pairs of different states with the same
//! Clerk `updated_at`), every event delivered 1 to 3 times in a
//! random order to 3 workers at once. The tables must equal the model's answer.
//!
//! `CONVERGENCE_SEEDS` (default 3) seeds are run, starting at `CONVERGENCE_SEED_START` (default 1),
//! with `CONVERGENCE_USERS` (default 50) users each.

use std::{
    collections::{BTreeMap, HashMap},
    time::Duration,
};

use rand::{Rng, SeedableRng, rngs::StdRng, seq::SliceRandom};
use testkit::{
    TestBroker, TestDb,
    events::{self, UserState},
};

use crate::helpers::{Row, TestWorker, scalar, spawn_worker, users, wait_for_users};

/// (svix id, body) pairs.
type Events = Vec<(String, Vec<u8>)>;

struct History {
    /// (svix id, body), in Clerk's order.
    events: Events,
    expected: BTreeMap<String, Row>,
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
        }
    }

    fn svix_id(&self, n: usize) -> String {
        format!("msg_{}_{n}", self.seed)
    }

    /// A random user (never one deleted) is created, deleted or updated.
    fn next_event(&mut self, user_count: usize) {
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
        let seed = self.seed;
        History {
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
    for seed in start..start + seeds {
        run_seed(seed, user_count).await;
        eprintln!("convergence seed {seed}: ok");
    }
}

async fn run_seed(seed: u64, user_count: usize) {
    let history = generate(seed, user_count);
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
        broker.count(&broker.topology.dead_queue()).await,
        0,
        "seed {seed}: dead letters"
    );
    assert_the_batch_path_did_the_work(seed, &workers).await;
    let [a, b, c] = workers;
    tokio::join!(a.stop(), b.stop(), c.stop());
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
