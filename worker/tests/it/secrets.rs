//! Drives failures through ingress and worker while capturing every log line, and checks that no
//! secret, key or token appears in them.

use std::{
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
use tracing::subscriber::DefaultGuard;
use tracing_subscriber::fmt::MakeWriter;

use crate::helpers::{TestIngress, TestWorker, scalar, spawn_ingress, spawn_worker_at, state};

#[derive(Clone, Default)]
pub(crate) struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Capture {
    pub(crate) fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
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

/// Captures every log line of this thread, at debug, from here until the guard is dropped.
pub(crate) fn capture_logs() -> (Capture, DefaultGuard) {
    let capture = Capture::default();
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter("debug")
        .with_writer(capture.clone())
        .with_ansi(false)
        .finish();
    (capture, tracing::subscriber::set_default(subscriber))
}

/// A worker that reaches Postgres through `proxy` with a password, asks the fake Clerk for
/// tokens, encrypts them with `TOKEN_KEY` and logs JSON.
async fn spawn_worker_with_secrets(
    db: &TestDb,
    broker: &TestBroker,
    proxy: &TcpProxy,
    clerk: &FakeClerk,
) -> TestWorker {
    // Postgres trusts local connections, so the password is accepted and only has to stay secret.
    let db_url = format!(
        "postgres://postgres:{DB_PASSWORD}@{}/{}",
        proxy.addr(),
        db.name
    );
    let clerk_url = clerk.url();
    spawn_worker_at(
        &db_url,
        broker,
        &[
            ("CLERK_SECRET_KEY", SECRET_KEY),
            ("CLERK_API_URL", &clerk_url),
            ("TOKEN_ENCRYPTION_KEY", TOKEN_KEY),
            ("LOG_FORMAT", "json"),
        ],
    )
    .await
}

async fn post(ingress: &TestIngress, headers: http::HeaderMap, body: &[u8]) -> reqwest::StatusCode {
    reqwest::Client::new()
        .post(ingress.webhook_url())
        .headers(headers)
        .body(body.to_vec())
        .send()
        .await
        .unwrap()
        .status()
}

/// A forged delivery (wrong secret) and a stale one are both refused.
async fn forged_and_stale_deliveries_are_rejected(ingress: &TestIngress, body: &[u8]) {
    let forged = svix_headers(
        "whsec_dGhpcyBpcyBhbm90aGVyIHNlY3JldA==",
        "msg_s1",
        now_secs(),
        body,
    );
    assert_eq!(post(ingress, forged, body).await, 401);
    let stale = svix_headers(SECRET, "msg_s2", now_secs() - 3600, body);
    assert_eq!(post(ingress, stale, body).await, 401);
}

/// Clerk failing (500, then 429), then the database cut while the event is retried, then
/// everything healthy: the event lands.
async fn a_delivery_survives_clerk_failures_and_a_database_cut(
    ingress: &TestIngress,
    body: &[u8],
    clerk: &FakeClerk,
    proxy: &TcpProxy,
    capture: &Capture,
    db: &TestDb,
) {
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
    let good = svix_headers(SECRET, "msg_s3", now_secs(), body);
    assert_eq!(post(ingress, good, body).await, 200);
    // The database stays cut until the worker has logged a retry (a fixed pause was too short
    // when the machine was busy: the event then came after the cut and nothing failed).
    eventually(
        Duration::from_secs(30),
        "a transient failure logged while the database is cut",
        || async { capture.text().contains("transient failure").then_some(()) },
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
}

/// The failures were logged, and no secret appears anywhere in the lines.
fn assert_failures_logged_without_a_secret(logs: &str) {
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

// A current-thread runtime: every task runs on this thread, so the scoped subscriber sees them.
#[tokio::test]
async fn failures_in_ingress_and_worker_never_log_a_secret_key_or_token() {
    let (capture, _guard) = capture_logs();
    let db = TestDb::migrated().await;
    let broker = TestBroker::new().await;
    let clerk = FakeClerk::start().await;
    let proxy = TcpProxy::start("127.0.0.1:5432").await;
    let worker = spawn_worker_with_secrets(&db, &broker, &proxy, &clerk).await;
    let ingress = spawn_ingress(broker.settings()).await;
    let body = user_event_with_accounts(
        "user.updated",
        &state("user_secret01", Some("s@example.com"), "Sec", 10),
        vec![google_calendar_account("g-1", "eac_g1")],
    );

    forged_and_stale_deliveries_are_rejected(&ingress, &body).await;
    a_delivery_survives_clerk_failures_and_a_database_cut(
        &ingress, &body, &clerk, &proxy, &capture, &db,
    )
    .await;
    ingress.stop().await;
    worker.stop().await;

    assert_failures_logged_without_a_secret(&capture.text());
}
