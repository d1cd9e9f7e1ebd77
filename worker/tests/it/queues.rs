//! Delivery limits: no count of returns (listings, crashed workers) drops or dead-letters a
//! message, and queues declared by an older release keep working and are rebuilt by
//! `worker migrate-queues` without losing a message.

use broker::lapin::{
    options::{BasicGetOptions, QueueBindOptions, QueueDeleteOptions},
    types::{AMQPValue, FieldTable},
};
use testkit::TestBroker;

use crate::helpers::{user_created, wait_for_count, worker_settings_at};

fn worker_cli(broker: &TestBroker, args: &[&str]) -> (bool, String, String) {
    let settings = worker_settings_at("postgres://127.0.0.1:1/unused", broker, &[]);
    crate::helpers::worker_cli(settings, args)
}

async fn dead_letter(broker: &TestBroker, id: &str) {
    let body = user_created(id, None, "Dead", 1).body();
    let properties = broker::lapin::BasicProperties::default().with_message_id(id.into());
    broker::publish_confirmed(
        &broker.confirm_channel,
        broker.topology.exchange(),
        broker::DEAD_ROUTING_KEY,
        &body,
        properties,
    )
    .await
    .unwrap();
}

/// Takes the oldest message of `queue` on a channel of its own and closes the channel without
/// acking, as a crashed consumer does: the broker takes it back and counts a delivery.
async fn take_and_crash(broker: &TestBroker, queue: &str) {
    let channel = broker.connection.create_channel().await.unwrap();
    let got = channel
        .basic_get(queue.into(), BasicGetOptions { no_ack: false })
        .await
        .unwrap();
    assert!(got.is_some(), "{queue} is empty");
    channel.close(200, "crash".into()).await.unwrap();
}

#[tokio::test]
async fn thirty_listings_in_a_row_keep_every_dead_letter() {
    let broker = TestBroker::new().await;
    for n in 0..5 {
        dead_letter(&broker, &format!("msg_dead_{n}")).await;
    }
    for round in 0..30 {
        let (ok, stdout, stderr) = worker_cli(&broker, &["dlq", "list", "--json"]);
        assert!(ok, "{stderr}");
        let letters: serde_json::Value = serde_json::from_str(&stdout).unwrap();
        assert_eq!(letters.as_array().unwrap().len(), 5, "listing {round}");
    }
    wait_for_count(&broker, &broker.topology.dead_queue(), 5).await;
    // `--limit` reads only the oldest ones.
    let (ok, stdout, _) = worker_cli(&broker, &["dlq", "list", "--json", "--limit", "2"]);
    assert!(ok);
    let letters: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(letters[0]["id"], "msg_dead_0");
    assert_eq!(letters.as_array().unwrap().len(), 2);
    wait_for_count(&broker, &broker.topology.dead_queue(), 5).await;
}

#[tokio::test]
async fn sixty_crashed_consumers_do_not_dead_letter_a_healthy_event() {
    let broker = TestBroker::new().await;
    user_created("user_crashy", None, "C", 1)
        .publish(&broker, "msg_crashy")
        .await;
    let main = broker.topology.main_queue();
    for _ in 0..60 {
        take_and_crash(&broker, &main).await;
        wait_for_count(&broker, &main, 1).await;
    }
    assert_eq!(broker.count(&broker.topology.dead_queue()).await, 0);
}

#[tokio::test]
async fn a_main_queue_from_an_older_release_keeps_working_and_is_rebuilt_without_loss() {
    let broker = TestBroker::new().await;
    let main = broker.topology.main_queue();
    // As the first releases declared it: with a delivery limit of 50.
    broker
        .channel
        .queue_delete(main.as_str().into(), QueueDeleteOptions::default())
        .await
        .unwrap();
    let version = broker::detect_version(&testkit::amqp_url()).await;
    let (_, _, mut old_args) = broker
        .topology
        .queue_declarations(version)
        .into_iter()
        .find(|(queue, _, _)| *queue == main)
        .unwrap();
    old_args.insert("x-delivery-limit".into(), AMQPValue::LongUInt(50));
    broker::declare_queue(&broker.channel, &main, old_args, false)
        .await
        .unwrap();
    broker
        .channel
        .queue_bind(
            main.as_str().into(),
            broker.topology.exchange().into(),
            broker::EVENTS_ROUTING_KEY.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    for n in 0..3 {
        user_created(&format!("user_old_{n}"), None, "O", 1)
            .publish(&broker, &format!("msg_old_{n}"))
            .await;
    }

    // Every process still declares the topology (a warning, no failure).
    broker
        .topology
        .declare(&broker.connection, version)
        .await
        .unwrap();

    let (ok, stdout, stderr) = worker_cli(&broker, &["migrate-queues"]);
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains(&format!("{main}: rebuilt, 3 message(s) carried over")),
        "{stdout}"
    );
    wait_for_count(&broker, &main, 3).await;
    // Today's declaration is accepted as is: the arguments changed.
    let (_, _, new_args) = broker
        .topology
        .queue_declarations(version)
        .into_iter()
        .find(|(queue, _, _)| *queue == main)
        .unwrap();
    let probe = broker.connection.create_channel().await.unwrap();
    broker::declare_queue(&probe, &main, new_args, false)
        .await
        .unwrap();
    // New events still reach it, and a second run has nothing to do.
    user_created("user_new", None, "N", 1)
        .publish(&broker, "msg_new")
        .await;
    wait_for_count(&broker, &main, 4).await;
    let (ok, stdout, _) = worker_cli(&broker, &["migrate-queues"]);
    assert!(
        ok && stdout.contains(&format!("{main}: already current")),
        "{stdout}"
    );
    assert_eq!(broker.count(&broker.topology.dead_queue()).await, 0);
}
