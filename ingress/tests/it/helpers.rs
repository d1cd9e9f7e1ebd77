use std::{collections::HashMap, time::Duration};

use ingress::{Application, Config};
use testkit::{SECRET, SECRET_2, TestBroker};
use tokio::sync::oneshot;

pub struct TestApp {
    pub address: String,
    pub broker: TestBroker,
    pub client: reqwest::Client,
    stop: Option<oneshot::Sender<()>>,
    pub task: Option<tokio::task::JoinHandle<()>>,
}

/// Starts an ingress on port 0 with its own queue prefix, both secrets configured, and `extra`
/// settings on top; waits until it is ready unless the broker is deliberately unreachable.
pub async fn spawn_app(extra: &[(&str, &str)]) -> TestApp {
    let broker = TestBroker::new().await;
    let mut settings: HashMap<String, String> = broker.settings().into_iter().collect();
    settings.insert(
        "CLERK_WEBHOOK_SECRET".into(),
        format!("{SECRET} {SECRET_2}"),
    );
    settings.insert("INGRESS_ADDR".into(), "127.0.0.1:0".into());
    settings.insert("INGRESS_BODY_LIMIT".into(), "4096".into());
    settings.insert("PUBLISH_TIMEOUT".into(), "2s".into());
    for (k, v) in extra {
        settings.insert((*k).into(), (*v).into());
    }
    let config = Config::from_lookup(|name| settings.get(name).cloned()).unwrap();
    let app = Application::build(config).await.unwrap();
    let address = format!("http://127.0.0.1:{}", app.port());
    let (stop, stopped) = oneshot::channel();
    let task = tokio::spawn(app.run_until_stopped(async move {
        let _ = stopped.await;
    }));
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(15))
        .build()
        .unwrap();
    TestApp {
        address,
        broker,
        client,
        stop: Some(stop),
        task: Some(task),
    }
}

impl TestApp {
    pub async fn wait_ready(&self) {
        testkit::eventually(Duration::from_secs(20), "ingress ready", || async {
            let r = self.get("/readyz").await;
            (r.status() == 200).then_some(())
        })
        .await;
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client
            .get(format!("{}{path}", self.address))
            .send()
            .await
            .unwrap()
    }

    pub async fn post_webhook(&self, headers: http::HeaderMap, body: Vec<u8>) -> reqwest::Response {
        self.post_to("/webhooks/clerk", headers, body).await
    }

    pub async fn post_to(
        &self,
        path: &str,
        headers: http::HeaderMap,
        body: Vec<u8>,
    ) -> reqwest::Response {
        self.client
            .post(format!("{}{path}", self.address))
            .headers(headers)
            .body(body)
            .send()
            .await
            .unwrap()
    }

    /// Signs `body` now with the first secret and posts it.
    pub async fn post_signed(&self, msg_id: &str, body: &[u8]) -> reqwest::Response {
        let headers = testkit::svix_headers(SECRET, msg_id, testkit::now_secs(), body);
        self.post_webhook(headers, body.to_vec()).await
    }

    pub fn main_queue(&self) -> String {
        self.broker.topology.main_queue()
    }

    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(30), task)
                .await
                .unwrap()
                .unwrap();
        }
    }
}
