use std::time::Duration;

use testkit::{amqp_url, eventually, proxy::TcpProxy};

use crate::helpers::spawn_app;

#[tokio::test]
async fn while_the_broker_is_cut_webhooks_get_503_and_after_it_returns_the_same_process_accepts_again()
 {
    let upstream = amqp_url();
    let hostport = upstream
        .split('@')
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .unwrap()
        .to_owned();
    let proxy = TcpProxy::start(&hostport).await;
    let via_proxy = format!("amqp://guest:guest@{}/%2f", proxy.addr());
    let app = spawn_app(&[("AMQP_URL", &via_proxy), ("PUBLISH_TIMEOUT", "1s")]).await;
    app.wait_ready().await;
    let body = testkit::events::user_deleted("user_outage01", 1);
    assert_eq!(
        app.post_signed("msg_outage_before", &body).await.status(),
        200
    );

    proxy.cut();
    let during = app.post_signed("msg_outage_during", &body).await;
    assert_eq!(during.status(), 503);
    eventually(Duration::from_secs(10), "readyz to fail", || async {
        (app.get("/readyz").await.status() == 503).then_some(())
    })
    .await;

    proxy.restore();
    eventually(
        Duration::from_secs(30),
        "a webhook accepted after restore",
        || async {
            (app.post_signed("msg_outage_after", &body).await.status() == 200).then_some(())
        },
    )
    .await;
    assert_eq!(app.get("/readyz").await.status(), 200);

    let ids: Vec<String> = app
        .broker
        .drain(&app.main_queue())
        .await
        .iter()
        .filter_map(|m| {
            m.delivery
                .properties
                .message_id()
                .as_ref()
                .map(|s| s.to_string())
        })
        .collect();
    assert!(ids.contains(&"msg_outage_before".to_string()), "{ids:?}");
    assert!(ids.contains(&"msg_outage_after".to_string()), "{ids:?}");
    app.stop().await;
}
