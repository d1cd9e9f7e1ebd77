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
use testkit::{TestBroker, TestDb, events};

use crate::helpers::{Row, scalar, spawn_worker, users, wait_for_users};

struct History {
    /// (svix id, body), in Clerk's order.
    events: Vec<(String, Vec<u8>)>,
    expected: BTreeMap<String, Row>,
    /// How many times an address moved from one user to another.
    moved_addresses: usize,
    /// How many updates have a twin: another state with the same Clerk `updated_at`.
    ties: usize,
}

fn generate(seed: u64, user_count: usize) -> History {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut t: i64 = 1_000;
    let mut live: HashMap<usize, events::UserState> = HashMap::new();
    let mut deleted: Vec<usize> = Vec::new();
    let mut holder: HashMap<String, usize> = HashMap::new();
    let mut released: Vec<String> = Vec::new();
    let mut history = Vec::new();
    let mut moved_addresses = 0;
    let mut ties = 0;

    let choose_email = |rng: &mut StdRng,
                        i: usize,
                        current: Option<String>,
                        holder: &mut HashMap<String, usize>,
                        released: &mut Vec<String>,
                        moved: &mut usize,
                        t: i64| {
        let roll: f64 = rng.random();
        let free: Vec<String> = released
            .iter()
            .filter(|e| !holder.contains_key(*e))
            .cloned()
            .collect();
        let next = if roll < 0.45 && current.is_some() {
            current.clone()
        } else if roll < 0.70 {
            Some(format!("u{i}-{t}@example.com"))
        } else if roll < 0.92 && !free.is_empty() {
            let taken = free[rng.random_range(0..free.len())].clone();
            if !taken.starts_with(&format!("u{i}-")) {
                *moved += 1;
            }
            Some(taken)
        } else if roll < 0.92 {
            Some(format!("u{i}-{t}@example.com"))
        } else {
            None
        };
        if next != current {
            if let Some(old) = &current {
                holder.remove(old);
                released.push(old.clone());
            }
            if let Some(new) = &next {
                holder.insert(new.clone(), i);
            }
        }
        next
    };

    for _ in 0..user_count * 5 {
        let i = rng.random_range(0..user_count);
        if deleted.contains(&i) {
            continue;
        }
        t += rng.random_range(1..=3);
        let id = format!("user_{seed}_{i}");
        match live.get(&i).cloned() {
            None => {
                let email = choose_email(
                    &mut rng,
                    i,
                    None,
                    &mut holder,
                    &mut released,
                    &mut moved_addresses,
                    t,
                );
                let state = events::UserState {
                    id,
                    email,
                    first_name: Some(format!("First{t}")),
                    last_name: Some(format!("Last{i}")),
                    updated_at: t,
                };
                history.push(events::user_event("user.created", &state));
                live.insert(i, state);
            }
            Some(_) if rng.random_bool(0.12) => {
                if let Some(email) = live.remove(&i).and_then(|state| state.email) {
                    holder.remove(&email);
                    released.push(email);
                }
                deleted.push(i);
                history.push(events::user_deleted(&id, t));
            }
            Some(previous) => {
                let email = choose_email(
                    &mut rng,
                    i,
                    previous.email.clone(),
                    &mut holder,
                    &mut released,
                    &mut moved_addresses,
                    t,
                );
                let state = events::UserState {
                    email,
                    first_name: Some(format!("First{t}")),
                    updated_at: t,
                    ..previous
                };
                history.push(events::user_event("user.updated", &state));
                if rng.random_bool(0.15) {
                    // A second, different state with the same Clerk `updated_at` (and an event
                    // timestamp equal or later): the later event timestamp wins, then the
                    // greater Svix id, whatever the arrival order.
                    let twin = events::UserState {
                        first_name: Some(format!("Twin{t}")),
                        ..state.clone()
                    };
                    let first_stamp = t;
                    let twin_stamp = t + rng.random_range(0..=1);
                    let first_id = format!("msg_{seed}_{}", history.len() - 1);
                    let twin_id = format!("msg_{seed}_{}", history.len());
                    history.push(
                        serde_json::to_vec(&events::envelope(
                            "user.updated",
                            events::user_object(&twin),
                            twin_stamp,
                        ))
                        .unwrap(),
                    );
                    ties += 1;
                    let key = |stamp: i64, id: &str| format!("{stamp:020}/{id}");
                    let winner = if key(twin_stamp, &twin_id) > key(first_stamp, &first_id) {
                        twin
                    } else {
                        state
                    };
                    live.insert(i, winner);
                } else {
                    live.insert(i, state);
                }
            }
        }
    }
    let expected = live
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
    History {
        events: history
            .into_iter()
            .enumerate()
            .map(|(n, body)| (format!("msg_{seed}_{n}"), body))
            .collect(),
        expected,
        moved_addresses,
        ties,
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
        assert!(
            history.moved_addresses > 0,
            "seed {seed}: the history never moves an address between users"
        );
        assert!(
            history.ties > 0,
            "seed {seed}: no two states share a version"
        );
    }
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed);
    let mut deliveries = Vec::new();
    for (svix_id, body) in &history.events {
        for _ in 0..rng.random_range(1..=3) {
            deliveries.push((svix_id.clone(), body.clone()));
        }
    }
    deliveries.shuffle(&mut rng);
    // An empty database: the three workers race to apply the migrations at start.
    let db = TestDb::empty().await;
    let broker = TestBroker::new().await;
    // Half of the deliveries wait in the queue before the workers start (so that they are
    // taken in full batches), the rest arrive while they run.
    let (backlog, live) = deliveries.split_at(deliveries.len() / 2);
    for (svix_id, body) in backlog {
        broker.publish_event(svix_id, body).await;
    }
    let settings = [
        ("WORKER_CONCURRENCY", "3"),
        ("WORKER_PREFETCH", "48"),
        ("WORKER_BATCH_SIZE", "16"),
    ];
    let (a, b, c) = tokio::join!(
        spawn_worker(&db, &broker, &settings),
        spawn_worker(&db, &broker, &settings),
        spawn_worker(&db, &broker, &settings),
    );
    for (svix_id, body) in live {
        broker.publish_event(svix_id, body).await;
    }

    wait_for_users(&db.conn, &history.expected, Duration::from_secs(90)).await;
    let distinct = history.events.len() as i64;
    testkit::eventually(Duration::from_secs(60), "every event settled", || async {
        (scalar(&db.conn, "SELECT count(*) FROM processed_events").await == distinct
            && broker.total_ready().await == 0)
            .then_some(())
    })
    .await;
    assert_eq!(users(&db.conn).await, history.expected, "seed {seed}");
    assert_eq!(
        broker.count(&broker.topology.dead_queue()).await,
        0,
        "seed {seed}: dead letters"
    );
    // The batch path did the work: a good share of the events were committed in batches of
    // several. (How many arrive together depends on timing: three workers share the backlog as
    // the broker streams it, so the mean batch can be small on a fast worker.)
    let (mut batched_events, mut batches, mut single) = (0.0, 0.0, 0.0);
    for worker in [&a, &b, &c] {
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
    tokio::join!(a.stop(), b.stop(), c.stop());
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or(0.0)
}
