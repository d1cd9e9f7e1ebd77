//! Failover on a private 3-node RabbitMQ cluster: the node leading the main queue is killed with
//! SIGKILL in the middle of a stream sent through the ingress to two workers, then restarted.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use futures_util::StreamExt;
use rand::{SeedableRng, rngs::StdRng, seq::SliceRandom};
use testkit::{SECRET, TestDb, cluster::RabbitCluster, eventually, now_secs, svix_headers, unique};

use crate::helpers::{Row, UserEvent, row, spawn_ingress, spawn_worker, wait_for_users};

/// (svix id, body) pairs.
type Events = Vec<(String, Vec<u8>)>;

/// 400 users × 3 versions (created, then updated twice): the 1,200 distinct events, and the rows
/// they end in.
fn three_versions_of_400_users() -> (Events, BTreeMap<String, Row>) {
    let mut distinct = Vec::new();
    let mut expected = BTreeMap::new();
    for u in 0..400 {
        for v in 1..=3_i64 {
            let id = format!("user_cl_{u}");
            let email = format!("cl{u}-v{v}@example.com");
            let kind = if v == 1 {
                "user.created"
            } else {
                "user.updated"
            };
            let first = format!("V{v}");
            let body = UserEvent::new(kind, &id, Some(&email), &first, v).body();
            distinct.push((format!("msg_cl_{u}_{v}"), body));
            expected.insert(id, row(Some(&email), &first, v));
        }
    }
    (distinct, expected)
}

/// Every event once and the first 800 of them twice, shuffled: 2,000 deliveries.
fn with_800_redelivered_and_shuffled(distinct: &Events) -> Events {
    let mut deliveries = distinct.clone();
    deliveries.extend(distinct.iter().take(800).cloned());
    deliveries.shuffle(&mut StdRng::seed_from_u64(10));
    assert_eq!(deliveries.len(), 2000);
    deliveries
}

/// Posts a signed delivery to the ingress like Svix: again until a 2xx, 60 tries at most.
async fn deliver_like_svix(
    client: reqwest::Client,
    url: String,
    id: String,
    body: Vec<u8>,
) -> bool {
    for _ in 0..60 {
        let response = client
            .post(&url)
            .headers(svix_headers(SECRET, &id, now_secs(), &body))
            .body(body.clone())
            .send()
            .await;
        if response.is_ok_and(|r| r.status().is_success()) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    false
}

/// Starts the private cluster (logging to stderr when `CLUSTER_TEST_LOG` is set).
async fn start_three_nodes() -> Arc<RabbitCluster> {
    if std::env::var("CLUSTER_TEST_LOG").is_ok() {
        telemetry::init_subscriber("info", telemetry::LogFormat::Plain, std::io::stderr, false);
    }
    Arc::new(
        tokio::task::spawn_blocking(|| RabbitCluster::start(3))
            .await
            .unwrap(),
    )
}

/// Stops the nodes, off the runtime's threads.
async fn stop_the_nodes(cluster: Arc<RabbitCluster>) {
    let cluster = Arc::try_unwrap(cluster).ok();
    tokio::task::spawn_blocking(move || drop(cluster))
        .await
        .unwrap();
}

/// Sends every delivery, 16 at a time, each until it is accepted; kills node `victim` (SIGKILL)
/// when `kill_at` of them have been accepted.
async fn send_all_killing_a_node_midway(
    cluster: &Arc<RabbitCluster>,
    webhook_url: &str,
    deliveries: Events,
    victim: usize,
    kill_at: usize,
) {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    let mut stream = futures_util::stream::iter(
        deliveries
            .into_iter()
            .map(|(id, body)| deliver_like_svix(client.clone(), webhook_url.to_owned(), id, body)),
    )
    .buffer_unordered(16);
    let mut sent = 0usize;
    let mut killed = false;
    while let Some(accepted) = stream.next().await {
        assert!(accepted, "a delivery was never accepted");
        sent += 1;
        if sent == kill_at && !killed {
            killed = true;
            let c = cluster.clone();
            tokio::task::spawn_blocking(move || c.kill(victim))
                .await
                .unwrap();
        }
    }
    assert!(killed);
}

/// Brings node `victim` back and waits until it follows `queue` again (asked through `via`).
async fn restart_and_wait_until_it_follows(
    cluster: &Arc<RabbitCluster>,
    victim: usize,
    via: usize,
    queue: &str,
) {
    let c = cluster.clone();
    tokio::task::spawn_blocking(move || {
        c.launch(victim);
        c.wait_node(victim);
    })
    .await
    .unwrap();
    eventually(
        Duration::from_secs(60),
        "the restarted node to follow",
        || {
            let c = cluster.clone();
            let queue = queue.to_owned();
            async move {
                tokio::task::spawn_blocking(move || c.is_follower(&queue, victim, via))
                    .await
                    .unwrap()
                    .then_some(())
            }
        },
    )
    .await;
}

/// The messages in the dead-letter queue, as node `via` lists them.
fn dead_letters(cluster: &RabbitCluster, via: usize, prefix: &str) -> u64 {
    let dead_queue = format!("{prefix}.dead");
    let listing = cluster
        .tool_output(via, "rabbitmqctl", &["list_queues", "name", "messages"])
        .unwrap_or_default();
    listing
        .lines()
        .find(|l| l.split_whitespace().next() == Some(dead_queue.as_str()))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .expect("the dead-letter queue is listed")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killing_the_queue_leader_mid_stream_loses_no_accepted_event_and_the_node_rejoins() {
    assert!(
        RabbitCluster::available(),
        "RabbitMQ server scripts are needed for this test"
    );
    let cluster = start_three_nodes().await;
    let db = TestDb::empty().await;
    let prefix = unique("cs_cluster");
    let urls = cluster.amqp_urls();
    let settings = [
        ("AMQP_URL", urls.as_str()),
        ("QUEUE_PREFIX", prefix.as_str()),
        ("RETRY_DELAYS", "300ms,1s"),
    ];
    // Ingress and two workers, each given every node.
    let ingress = spawn_ingress(
        settings
            .iter()
            .chain(&[("PUBLISH_TIMEOUT", "5s")])
            .map(|(k, v)| ((*k).to_string(), (*v).to_string())),
    )
    .await;
    let broker_for_worker = testkit::TestBroker::new().await; // only for worker_settings' shape
    let worker_a = spawn_worker(&db, &broker_for_worker, &settings).await;
    let worker_b = spawn_worker(&db, &broker_for_worker, &settings).await;

    let (distinct, expected) = three_versions_of_400_users();
    let deliveries = with_800_redelivered_and_shuffled(&distinct);
    let main_queue = format!("{prefix}.events");
    let leader = cluster
        .leader_of(&main_queue, 1)
        .expect("the main queue has a leader");
    send_all_killing_a_node_midway(&cluster, &ingress.webhook_url(), deliveries, leader, 700).await;
    // The victim must rejoin as a follower of the main queue.
    let via = (leader + 1) % 3;
    restart_and_wait_until_it_follows(&cluster, leader, via, &main_queue).await;

    wait_for_users(&db.conn, &expected, Duration::from_secs(120)).await;
    assert_eq!(
        dead_letters(&cluster, via, &prefix),
        0,
        "nothing dead-lettered"
    );

    let _ = ingress.shut_down().await;
    tokio::join!(worker_a.stop(), worker_b.stop());
    stop_the_nodes(cluster).await;
}
