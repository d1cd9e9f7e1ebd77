//! Failover on a private 3-node RabbitMQ cluster: the node leading the main queue is killed with
//! SIGKILL in the middle of a stream sent through the ingress to two workers, then restarted.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
    time::Duration,
};

use futures_util::StreamExt;
use rand::{SeedableRng, rngs::StdRng, seq::SliceRandom};
use testkit::{
    SECRET, TestDb, cluster::RabbitCluster, events, eventually, now_secs, svix_headers, unique,
};

use crate::helpers::{Row, spawn_worker_at, state, wait_for_users};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killing_the_queue_leader_mid_stream_loses_no_accepted_event_and_the_node_rejoins() {
    assert!(
        RabbitCluster::available(),
        "RabbitMQ server scripts are needed for this test"
    );
    if std::env::var("CLUSTER_TEST_LOG").is_ok() {
        telemetry::init_subscriber("info", telemetry::LogFormat::Plain, std::io::stderr, false);
    }
    let cluster = Arc::new(
        tokio::task::spawn_blocking(|| RabbitCluster::start(3))
            .await
            .unwrap(),
    );
    let db = TestDb::empty().await;
    let prefix = unique("cs_cluster");
    let urls = cluster.amqp_urls();
    let settings = [
        ("AMQP_URL", urls.as_str()),
        ("QUEUE_PREFIX", prefix.as_str()),
        ("RETRY_DELAYS", "300ms,1s"),
    ];

    // Ingress and two workers, each given every node.
    let mut ingress_settings: HashMap<String, String> = settings
        .iter()
        .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
        .collect();
    ingress_settings.insert("CLERK_WEBHOOK_SECRET".into(), SECRET.into());
    ingress_settings.insert("INGRESS_ADDR".into(), "127.0.0.1:0".into());
    ingress_settings.insert("PUBLISH_TIMEOUT".into(), "5s".into());
    let ingress = ingress::Application::build(
        ingress::Config::from_lookup(|n| ingress_settings.get(n).cloned()).unwrap(),
    )
    .await
    .unwrap();
    let address = format!("http://127.0.0.1:{}", ingress.port());
    let (stop_ingress, stopped) = tokio::sync::oneshot::channel::<()>();
    let ingress_task = tokio::spawn(ingress.run_until_stopped(async move {
        let _ = stopped.await;
    }));
    let broker_for_worker = testkit::TestBroker::new().await; // only for worker_settings' shape
    let worker_a = spawn_worker_at(&db.url, &broker_for_worker, &settings).await;
    let worker_b = spawn_worker_at(&db.url, &broker_for_worker, &settings).await;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    eventually(Duration::from_secs(30), "ingress ready", || async {
        let r = client.get(format!("{address}/readyz")).send().await.ok()?;
        (r.status() == 200).then_some(())
    })
    .await;

    // 400 users × 3 versions = 1,200 events, 800 of them delivered twice: 2,000 deliveries.
    let mut expected = BTreeMap::new();
    let mut distinct = Vec::new();
    for u in 0..400 {
        for v in 1..=3_i64 {
            let id = format!("user_cl_{u}");
            let s = state(
                &id,
                Some(&format!("cl{u}-v{v}@example.com")),
                &format!("V{v}"),
                v,
            );
            let kind = if v == 1 {
                "user.created"
            } else {
                "user.updated"
            };
            distinct.push((format!("msg_cl_{u}_{v}"), events::user_event(kind, &s)));
            expected.insert(
                id,
                Row {
                    email: s.email.clone(),
                    first_name: s.first_name.clone(),
                    last_name: s.last_name.clone(),
                    version: v,
                },
            );
        }
    }
    let mut deliveries: Vec<(String, Vec<u8>)> = distinct.clone();
    deliveries.extend(distinct.iter().take(800).cloned());
    deliveries.shuffle(&mut StdRng::seed_from_u64(10));
    assert_eq!(deliveries.len(), 2000);

    let main_queue = format!("{prefix}.events");
    let leader = cluster
        .leader_of(&main_queue, 1)
        .expect("the main queue has a leader");
    let kill_at = 700;
    let mut sent = 0usize;
    let mut stream = futures_util::stream::iter(deliveries.into_iter().map(|(id, body)| {
        let client = client.clone();
        let address = address.clone();
        async move {
            // Like Svix: retry until a 2xx.
            for _ in 0..60 {
                let response = client
                    .post(format!("{address}/webhooks/clerk"))
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
    }))
    .buffer_unordered(16);
    let mut killed = false;
    while let Some(accepted) = stream.next().await {
        assert!(accepted, "a delivery was never accepted");
        sent += 1;
        if sent == kill_at && !killed {
            killed = true;
            let c = cluster.clone();
            tokio::task::spawn_blocking(move || c.kill(leader))
                .await
                .unwrap();
        }
    }
    assert!(killed);

    // Bring the victim back; it must rejoin as a follower of the main queue.
    let c = cluster.clone();
    tokio::task::spawn_blocking(move || {
        c.launch(leader);
        c.wait_node(leader);
    })
    .await
    .unwrap();
    let via = (leader + 1) % 3;
    let queue = main_queue.clone();
    eventually(
        Duration::from_secs(60),
        "the restarted node to follow",
        || {
            let c = cluster.clone();
            let queue = queue.clone();
            async move {
                tokio::task::spawn_blocking(move || c.is_follower(&queue, leader, via))
                    .await
                    .unwrap()
                    .then_some(())
            }
        },
    )
    .await;

    wait_for_users(&db.conn, &expected, Duration::from_secs(120)).await;
    let dead = cluster
        .tool_output(via, "rabbitmqctl", &["list_queues", "name", "messages"])
        .unwrap_or_default();
    let dead_count: u64 = dead
        .lines()
        .find(|l| l.split_whitespace().next() == Some(format!("{prefix}.dead").as_str()))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .expect("the dead-letter queue is listed");
    assert_eq!(dead_count, 0, "nothing dead-lettered");

    let _ = stop_ingress.send(());
    let _ = tokio::time::timeout(Duration::from_secs(30), ingress_task).await;
    tokio::join!(worker_a.stop(), worker_b.stop());
    let cluster = Arc::try_unwrap(cluster).ok();
    tokio::task::spawn_blocking(move || drop(cluster))
        .await
        .unwrap();
}
