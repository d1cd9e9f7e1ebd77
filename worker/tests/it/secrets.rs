//! Drives failures through ingress and worker while capturing every log line, and checks that no
//! secret, key or token appears in them.

use std::{
    collections::HashMap,
    io::Write,
    sync::{Arc, Mutex},
    time::Duration,
};

use testkit::{
    SECRET, TestBroker, TestDb,
    events::{google_calendar_account, user_event_with_accounts},
    eventually,
    fake_clerk::{FakeClerk, SECRET_KEY},
    now_secs,
    proxy::TcpProxy,
    svix_headers,
};
use tracing_subscriber::fmt::MakeWriter;

use crate::helpers::{scalar, spawn_worker_at, state};

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Capture {
    type Writer = Capture;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

const TOKEN_KEY: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";
const ACCESS_TOKEN: &str = "ya29.SECRET-ACCESS-TOKEN-do-not-log";
const DB_PASSWORD: &str = "pgsecret-hunter2";

// A current-thread runtime: every task runs on this thread, so the scoped subscriber sees them.
#[tokio::test]
async fn failures_in_ingress_and_worker_never_log_a_secret_key_or_token() {
    let capture = Capture::default();
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter("debug")
        .with_writer(capture.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let db = TestDb::migrated().await;
    let broker = TestBroker::new().await;
    let clerk = FakeClerk::start().await;
    // Postgres trusts local connections, so the password is accepted and only has to stay secret.
    let proxy = TcpProxy::start("127.0.0.1:5432").await;
    let db_url = format!(
        "postgres://postgres:{DB_PASSWORD}@{}/{}",
        proxy.addr(),
        db.name
    );
    let clerk_url = clerk.url();
    let worker = spawn_worker_at(
        &db_url,
        &broker,
        &[
            ("CLERK_SECRET_KEY", SECRET_KEY),
            ("CLERK_API_URL", &clerk_url),
            ("TOKEN_ENCRYPTION_KEY", TOKEN_KEY),
            ("LOG_FORMAT", "json"),
        ],
    )
    .await;
    let mut settings: HashMap<String, String> = broker.settings().into_iter().collect();
    settings.insert("CLERK_WEBHOOK_SECRET".into(), SECRET.into());
    settings.insert("INGRESS_ADDR".into(), "127.0.0.1:0".into());
    let ingress = ingress::Application::build(
        ingress::Config::from_lookup(|n| settings.get(n).cloned()).unwrap(),
    )
    .await
    .unwrap();
    let address = format!("http://127.0.0.1:{}/webhooks/clerk", ingress.port());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let ingress_task = tokio::spawn(ingress.run_until_stopped(async move {
        let _ = stopped.await;
    }));
    let client = reqwest::Client::new();
    let body = user_event_with_accounts(
        "user.updated",
        &state("user_secret01", Some("s@example.com"), "Sec", 10),
        vec![google_calendar_account("g-1", "eac_g1")],
    );
    eventually(Duration::from_secs(20), "ingress ready", || async {
        let r = client
            .get(address.replace("/webhooks/clerk", "/readyz"))
            .send()
            .await
            .ok()?;
        (r.status() == 200).then_some(())
    })
    .await;

    // A forged delivery (wrong secret) and a stale one.
    let forged = svix_headers(
        "whsec_dGhpcyBpcyBhbm90aGVyIHNlY3JldA==",
        "msg_s1",
        now_secs(),
        &body,
    );
    assert_eq!(
        client
            .post(&address)
            .headers(forged)
            .body(body.clone())
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    let stale = svix_headers(SECRET, "msg_s2", now_secs() - 3600, &body);
    assert_eq!(
        client
            .post(&address)
            .headers(stale)
            .body(body.clone())
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    // Clerk failing, then the database cut while the event is retried, then everything healthy.
    clerk.set_token(
        "user_secret01",
        "oauth_google",
        ACCESS_TOKEN,
        None,
        "g-1",
        "eac_g1",
    );
    clerk.fail_next(500, 1);
    clerk.fail_next(429, 1);
    proxy.cut();
    let good = svix_headers(SECRET, "msg_s3", now_secs(), &body);
    assert_eq!(
        client
            .post(&address)
            .headers(good)
            .body(body.clone())
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    // The database stays cut until the worker has logged a retry (a fixed pause was too short
    // when the machine was busy: the event then came after the cut and nothing failed).
    eventually(
        Duration::from_secs(30),
        "a transient failure logged while the database is cut",
        || async {
            let logs = capture.0.lock().unwrap();
            String::from_utf8_lossy(&logs)
                .contains("transient failure")
                .then_some(())
        },
    )
    .await;
    proxy.restore();
    eventually(Duration::from_secs(30), "the event applied", || async {
        (scalar(
            &db.conn,
            "SELECT count(*) FROM user_calendar_connections WHERE status = 'connected'",
        )
        .await
            == 1)
            .then_some(())
    })
    .await;
    let _ = stop.send(());
    ingress_task.await.unwrap();
    worker.stop().await;

    let logs = String::from_utf8_lossy(&capture.0.lock().unwrap()).into_owned();
    assert!(
        logs.contains("webhook rejected"),
        "the failures were logged"
    );
    assert!(
        logs.contains("transient failure"),
        "the retries were logged"
    );
    assert!(
        logs.contains("msg_s3"),
        "the worker's and ingress's lines were captured"
    );
    let whsec_key = SECRET.trim_start_matches("whsec_");
    for secret in [
        SECRET,
        whsec_key,
        SECRET_KEY,
        TOKEN_KEY,
        ACCESS_TOKEN,
        DB_PASSWORD,
    ] {
        assert!(
            !logs.contains(secret),
            "a secret appears in the logs: {secret}"
        );
    }
}
