use std::{collections::BTreeMap, time::Duration};

use sea_orm::ConnectionTrait;
use testkit::{TestBroker, TestDb, eventually};

use crate::helpers::{
    row, spawn_worker, user_created, wait_for_count, wait_for_users, worker_settings,
};

/// Runs the worker binary with the test's settings.
fn worker_cli(db: &TestDb, broker: &TestBroker, args: &[&str]) -> (bool, String, String) {
    crate::helpers::worker_cli(worker_settings(db, broker, &[]), args)
}

/// The "bug": a trigger that fails every write of one user with a retryable error.
async fn fail_every_write_of_user_poison(db: &TestDb) {
    db.conn
        .execute_unprepared(
            "CREATE FUNCTION poison() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN \
               IF NEW.clerk_user_id = 'user_poison' THEN \
                 RAISE EXCEPTION 'simulated outage for this user' USING ERRCODE = '40001'; \
               END IF; RETURN NEW; END $$; \
             CREATE TRIGGER poison BEFORE INSERT OR UPDATE ON users FOR EACH ROW EXECUTE FUNCTION poison();",
        )
        .await
        .unwrap();
}

/// The fix.
async fn let_user_poison_be_written_again(db: &TestDb) {
    db.conn
        .execute_unprepared("DROP TRIGGER poison ON users")
        .await
        .unwrap();
}

/// `dlq list --json` shows the one dead letter: its id, type, attempts, reason, failure times
/// and the body byte for byte.
fn assert_listed_with_attempts_reason_and_body(db: &TestDb, broker: &TestBroker, body: &[u8]) {
    let (ok, stdout, stderr) = worker_cli(db, broker, &["dlq", "list", "--json"]);
    assert!(ok, "{stderr}");
    let letters: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(letters.as_array().unwrap().len(), 1, "{stdout}");
    assert_eq!(letters[0]["id"], "msg_poison_1");
    assert_eq!(letters[0]["event_type"], "user.created");
    assert_eq!(letters[0]["attempts"], 3);
    assert!(
        letters[0]["reason"]
            .as_str()
            .unwrap()
            .contains("simulated outage"),
        "{stdout}"
    );
    assert!(
        letters[0]["first_failure_at"].as_i64().unwrap()
            <= letters[0]["last_failure_at"].as_i64().unwrap()
    );
    assert_eq!(
        letters[0]["body"].as_str().unwrap().as_bytes(),
        body,
        "the body is kept byte for byte"
    );
}

/// Listing consumed nothing, and the table listing shows the letter too.
async fn assert_listing_consumed_nothing(db: &TestDb, broker: &TestBroker) {
    wait_for_count(broker, &broker.topology.dead_queue(), 1).await;
    let (ok, table, _) = worker_cli(db, broker, &["dlq", "list"]);
    assert!(
        ok && table.contains("msg_poison_1") && table.contains("1 dead letter(s)"),
        "{table}"
    );
}

/// A dry run first (it leaves the letter where it is), then the replay.
async fn replay_msg_poison_1(db: &TestDb, broker: &TestBroker) {
    let (ok, dry, _) = worker_cli(
        db,
        broker,
        &["dlq", "replay", "--id", "msg_poison_1", "--dry-run"],
    );
    assert!(ok && dry.contains("would replay 1"), "{dry}");
    wait_for_count(broker, &broker.topology.dead_queue(), 1).await;
    let (ok, out, err) = worker_cli(db, broker, &["dlq", "replay", "--id", "msg_poison_1"]);
    assert!(ok, "{out} {err}");
}

#[tokio::test]
async fn a_poison_event_is_dead_lettered_after_the_attempt_limit_and_replays_once_fixed() {
    let db = TestDb::migrated().await;
    let broker = TestBroker::new().await;
    fail_every_write_of_user_poison(&db).await;
    let worker = spawn_worker(
        &db,
        &broker,
        &[("MAX_ATTEMPTS", "3"), ("IN_PROCESS_RETRIES", "1")],
    )
    .await;
    let poison = user_created("user_poison", Some("p@example.com"), "Poison", 7).body();
    broker.publish_event("msg_poison_1", &poison).await;
    user_created("user_fine", None, "Fine", 1)
        .publish(&broker, "msg_fine_1")
        .await;

    eventually(
        Duration::from_secs(30),
        "the poison event in the DLQ",
        || async { (broker.count(&broker.topology.dead_queue()).await == 1).then_some(()) },
    )
    .await;
    assert_listed_with_attempts_reason_and_body(&db, &broker, &poison);
    assert_listing_consumed_nothing(&db, &broker).await;

    let_user_poison_be_written_again(&db).await;
    replay_msg_poison_1(&db, &broker).await;
    wait_for_users(
        &db.conn,
        &BTreeMap::from([
            ("user_fine".to_string(), row(None, "Fine", 1)),
            (
                "user_poison".to_string(),
                row(Some("p@example.com"), "Poison", 7),
            ),
        ]),
        Duration::from_secs(20),
    )
    .await;
    wait_for_count(&broker, &broker.topology.dead_queue(), 0).await;
    worker.stop().await;
}

#[tokio::test]
async fn an_unparseable_event_is_dead_lettered_at_once_and_can_be_dropped() {
    let db = TestDb::migrated().await;
    let broker = TestBroker::new().await;
    let worker = spawn_worker(&db, &broker, &[]).await;
    broker.publish_event("msg_garbage", b"{not json").await;
    broker
        .publish_event(
            "msg_noversion",
            br#"{"type":"user.updated","data":{"id":"user_x"}}"#,
        )
        .await;

    eventually(Duration::from_secs(20), "both in the DLQ", || async {
        (broker.count(&broker.topology.dead_queue()).await == 2).then_some(())
    })
    .await;
    let (ok, stdout, _) = worker_cli(&db, &broker, &["dlq", "list", "--json"]);
    assert!(ok);
    let letters: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let ids: Vec<&str> = letters
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 2);
    for letter in letters.as_array().unwrap() {
        assert_eq!(letter["attempts"], 1, "permanent failures are not retried");
    }
    let garbage = letters
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["id"] == "msg_garbage")
        .unwrap();
    assert!(
        garbage["reason"]
            .as_str()
            .unwrap()
            .contains("not a Clerk event envelope"),
        "{garbage}"
    );
    // Listing twice shows the same order: nothing was consumed or reordered.
    let (_, again, _) = worker_cli(&db, &broker, &["dlq", "list", "--json"]);
    let again: serde_json::Value = serde_json::from_str(&again).unwrap();
    let again_ids: Vec<&str> = again
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, again_ids);

    let (ok, shown, _) = worker_cli(&db, &broker, &["dlq", "show", "msg_garbage"]);
    assert!(ok && shown.contains("{not json"), "{shown}");
    let (ok, _, err) = worker_cli(&db, &broker, &["dlq", "show", "msg_nope"]);
    assert!(!ok && err.contains("no dead letter with id"), "{err}");
    let (ok, out, _) = worker_cli(&db, &broker, &["dlq", "drop", "--id", "msg_garbage"]);
    assert!(ok && out.contains("dropped 1"), "{out}");
    wait_for_count(&broker, &broker.topology.dead_queue(), 1).await;
    let (ok, _, err) = worker_cli(&db, &broker, &["dlq", "replay", "--id", "msg_garbage"]);
    assert!(!ok && err.contains("no dead letter with id"), "{err}");
    wait_for_count(&broker, &broker.topology.dead_queue(), 1).await;
    worker.stop().await;
}

#[tokio::test]
async fn a_listing_window_keeps_only_its_page_reads_no_further_than_its_bound_and_takes_nothing() {
    let db = TestDb::migrated().await;
    let broker = TestBroker::new().await;
    let worker = crate::helpers::spawn_worker(&db, &broker, &[]).await;
    for n in 0..6 {
        broker
            .publish_event(&format!("msg_win_{n}"), b"{not json")
            .await;
    }
    wait_for_count(&broker, &broker.topology.dead_queue(), 6).await;
    worker.stop().await;
    let settings: std::collections::HashMap<String, String> =
        broker.settings().into_iter().collect();
    let lookup = |name: &str| settings.get(name).cloned();
    let config = broker::BrokerConfig::from_lookup(&lookup, "test").unwrap();
    let topology = broker::Topology::from_lookup(&lookup).unwrap();
    let scan = |window| {
        let (config, topology) = (config.clone(), topology.clone());
        async move {
            worker::ops::dlq::scan(
                &config,
                topology,
                &worker::ops::dlq::Filter::default(),
                window,
            )
            .await
            .unwrap()
        }
    };

    // Page 2 of 2-letter pages, reading at most 4: letters 3 and 4 kept, 4 counted.
    let bounded = scan(worker::ops::dlq::Window {
        skip: 2,
        take: 2,
        scan_at_most: 4,
        count_all: true,
    })
    .await;
    let ids: Vec<&str> = bounded.letters.iter().map(|l| l.id.as_str()).collect();
    assert_eq!(ids, ["msg_win_2", "msg_win_3"]);
    assert_eq!(
        (bounded.matched, bounded.read, bounded.complete),
        (4, 4, false)
    );
    // Unbounded: every letter counted, still two kept, the queue read to its end.
    let whole = scan(worker::ops::dlq::Window {
        skip: 0,
        take: 2,
        scan_at_most: usize::MAX,
        count_all: true,
    })
    .await;
    assert_eq!(
        (whole.letters.len(), whole.matched, whole.complete),
        (2, 6, true)
    );
    // Nothing was taken, and the order is kept.
    wait_for_count(&broker, &broker.topology.dead_queue(), 6).await;
    let again = scan(worker::ops::dlq::Window {
        skip: 0,
        take: 1,
        scan_at_most: usize::MAX,
        count_all: false,
    })
    .await;
    assert_eq!(again.letters[0].id, "msg_win_0");
    assert_eq!(
        again.read, 1,
        "without count_all, reading stops at the page"
    );
}

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

/// Dead-letters `msg_traced` (published with W3C trace context) and `msg_untraced` (without).
async fn dead_letter_a_traced_and_an_untraced_event(broker: &TestBroker) {
    let traceparent = format!("00-{TRACE_ID}-00f067aa0ba902b7-01");
    broker
        .publish_event_with_headers(
            "msg_traced",
            b"{not json",
            &[("traceparent", &traceparent), ("tracestate", "vendor=x")],
        )
        .await;
    broker.publish_event("msg_untraced", b"{not json").await;
    wait_for_count(broker, &broker.topology.dead_queue(), 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn show_prints_a_dead_letter_s_trace_id_and_its_url_and_a_dash_without_a_trace() {
    let db = TestDb::migrated().await;
    let broker = TestBroker::new().await;
    let worker = spawn_worker(&db, &broker, &[]).await;
    dead_letter_a_traced_and_an_untraced_event(&broker).await;
    worker.stop().await;
    let with_template = worker_settings(
        &db,
        &broker,
        &[("TRACE_URL_TEMPLATE", "http://jaeger:16686/trace/{trace_id}")],
    );
    let cli = |settings: &std::collections::HashMap<String, String>, args: &[&str]| {
        crate::helpers::worker_cli(settings.clone(), args)
    };

    let (ok, traced, err) = cli(&with_template, &["dlq", "show", "msg_traced"]);
    assert!(ok, "{err}");
    assert!(
        traced.contains(&format!(
            "\ntrace:      {TRACE_ID} http://jaeger:16686/trace/{TRACE_ID}\n"
        )),
        "{traced}"
    );
    let (ok, untraced, err) = cli(&with_template, &["dlq", "show", "msg_untraced"]);
    assert!(ok, "{err}");
    assert!(untraced.contains("\ntrace:      -\n"), "{untraced}");
    assert!(!untraced.contains("jaeger"), "{untraced}");
    let (ok, unlinked, _) = worker_cli(&db, &broker, &["dlq", "show", "msg_traced"]);
    assert!(
        ok && unlinked.contains(&format!("\ntrace:      {TRACE_ID}\n")),
        "{unlinked}"
    );
    let (ok, listed, _) = worker_cli(&db, &broker, &["dlq", "list", "--json"]);
    assert!(ok);
    let listed: serde_json::Value = serde_json::from_str(&listed).unwrap();
    let trace_of = |id: &str| {
        listed
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["id"] == id)
            .map(|l| l["trace_id"].clone())
    };
    assert_eq!(trace_of("msg_traced"), Some(serde_json::json!(TRACE_ID)));
    assert_eq!(trace_of("msg_untraced"), Some(serde_json::Value::Null));

    let bad = worker_settings(
        &db,
        &broker,
        &[("TRACE_URL_TEMPLATE", "jaeger:16686/trace")],
    );
    let (ok, _, err) = cli(&bad, &["dlq", "show", "msg_traced"]);
    assert!(!ok && err.contains("TRACE_URL_TEMPLATE"), "{err}");
    wait_for_count(&broker, &broker.topology.dead_queue(), 2).await;
}
