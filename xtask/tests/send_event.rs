//! `cargo xtask send-event` against a real ingress.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{collections::HashMap, process::Command};

use testkit::TestBroker;

#[tokio::test]
async fn send_event_signs_a_sample_event_that_the_ingress_accepts() {
    let broker = TestBroker::new().await;
    let secret = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
    let mut settings: HashMap<String, String> = broker.settings().into_iter().collect();
    settings.insert("CLERK_WEBHOOK_SECRET".into(), secret.into());
    settings.insert("INGRESS_ADDR".into(), "127.0.0.1:0".into());
    let app = ingress::Application::build(
        ingress::Config::from_lookup(|n| settings.get(n).cloned()).unwrap(),
    )
    .await
    .unwrap();
    let url = format!("http://127.0.0.1:{}/webhooks/clerk", app.port());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(app.run_until_stopped(async move {
        let _ = stopped.await;
    }));
    testkit::eventually(
        std::time::Duration::from_secs(20),
        "ingress ready",
        || async {
            let r = reqwest::get(url.replace("/webhooks/clerk", "/readyz"))
                .await
                .ok()?;
            (r.status() == 200).then_some(())
        },
    )
    .await;

    let url_for_cli = url.clone();
    let output = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_xtask"))
            .args(["send-event", "user.created", "--url", &url_for_cli])
            .env("CLERK_WEBHOOK_SECRET", secret)
            .output()
            .unwrap()
    })
    .await
    .unwrap();

    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("200 OK"), "{stdout}");
    let messages = broker.drain(&broker.topology.main_queue()).await;
    assert_eq!(messages.len(), 1);
    let body: serde_json::Value = serde_json::from_slice(&messages[0].delivery.data).unwrap();
    assert_eq!(body["type"], "user.created");
    assert_eq!(body["data"]["id"], "user_2abcSYNTHuser01");
    let _ = stop.send(());
    task.await.unwrap();
}
