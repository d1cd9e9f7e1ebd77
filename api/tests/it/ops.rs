//! Health, readiness, metrics, request ids, CORS and the fallback.

use crate::helpers::{SERVICE_KEY, TestApp, assert_error, spawn_app, spawn_app_with};

#[tokio::test]
async fn health_and_readiness_answer_200_with_the_database_up() {
    let app = spawn_app().await;
    let health = app.get("/healthz", None).await;
    assert_eq!(health.status(), 200);
    let ready = app.get("/readyz", None).await;
    assert_eq!(ready.status(), 200);
}

#[tokio::test]
async fn readiness_answers_503_when_the_database_is_unreachable_and_the_api_still_starts() {
    // Nothing listens on port 1.
    let app =
        spawn_app_with(&[("DATABASE_URL", "postgres://postgres:pw@127.0.0.1:1/nothing")]).await;
    assert_eq!(app.get("/healthz", None).await.status(), 200);
    assert_eq!(app.get("/readyz", None).await.status(), 503);
    let response = app
        .get(
            &format!("/users/{}", uuid::Uuid::new_v4()),
            Some(SERVICE_KEY),
        )
        .await;
    let message = assert_error(response, 503, "database_unavailable").await;
    assert!(!message.contains("pw"), "{message}");
}

#[tokio::test]
async fn every_response_carries_a_request_id_the_callers_when_sane() {
    let app = spawn_app().await;
    let response = app
        .client
        .get(format!("{}/healthz", app.address))
        .header("x-request-id", "caller-id-123")
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["x-request-id"], "caller-id-123");

    for path in ["/healthz", "/me", "/nowhere"] {
        let response = app.get(path, None).await;
        let id = response.headers()["x-request-id"].to_str().unwrap();
        assert_eq!(id.len(), 36, "{path}: {id}");
    }
    let response = app
        .client
        .get(format!("{}/healthz", app.address))
        .header("x-request-id", "x".repeat(300))
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["x-request-id"].len(), 36);
}

#[tokio::test]
async fn metrics_count_requests_by_route_template_and_status() {
    let app = spawn_app().await;
    let id = uuid::Uuid::new_v4();
    app.get(&format!("/users/{id}"), Some(SERVICE_KEY)).await;
    app.get(&format!("/users/{id}"), None).await;

    let response = app.get("/metrics", None).await;
    assert_eq!(response.status(), 200);
    let text = response.text().await.unwrap();
    assert!(text.contains("clerk_sync_api_requests_total"), "{text}");
    let line_404 = text
        .lines()
        .find(|l| l.contains("route=\"/users/{id}\"") && l.contains("status=\"404\""))
        .unwrap_or_else(|| panic!("no 404 line for /users/{{id}}: {text}"));
    assert!(line_404.contains("method=\"GET\""), "{line_404}");
    assert!(
        text.lines()
            .any(|l| l.contains("route=\"/users/{id}\"") && l.contains("status=\"401\"")),
        "{text}"
    );
    assert!(!text.contains(&id.to_string()), "raw path in metrics");
}

/// Lines of `/metrics`.
async fn metrics_lines(app: &TestApp) -> usize {
    app.get("/metrics", None)
        .await
        .text()
        .await
        .unwrap()
        .lines()
        .count()
}

/// Random request methods and paths, as anyone on the network can send them.
async fn send_random_requests(app: &TestApp, count: usize, seed: u64) {
    use rand::{Rng, SeedableRng, distr::Alphanumeric, rngs::StdRng};
    let mut rng = StdRng::seed_from_u64(seed);
    for _ in 0..count {
        let len = rng.random_range(1..12);
        let token: String = (&mut rng)
            .sample_iter(&Alphanumeric)
            .take(len)
            .map(char::from)
            .collect();
        let method = reqwest::Method::from_bytes(token.to_uppercase().as_bytes()).unwrap();
        let path = match rng.random_range(0..3) {
            0 => format!("/{token}/{}", rng.random::<u64>()),
            1 => format!("/users/{}", uuid::Uuid::new_v4()),
            _ => format!("/users/by-clerk-id/user_{}", rng.random::<u64>()),
        };
        let response = app
            .client
            .request(method, format!("{}{path}", app.address))
            .send()
            .await
            .unwrap();
        assert!(response.status().is_client_error(), "{}", response.status());
    }
}

#[tokio::test]
async fn random_methods_and_paths_do_not_grow_the_metrics() {
    let app = spawn_app().await;
    // The series these requests can make (method `other`, route `unmatched` or a template, a
    // 4xx status) exist after a first round.
    // The first read of `/metrics` makes its own series.
    send_random_requests(&app, 200, 1).await;
    metrics_lines(&app).await;
    let before = metrics_lines(&app).await;

    send_random_requests(&app, 2_000, 2).await;

    let after = metrics_lines(&app).await;
    assert!(
        after.abs_diff(before) <= 3,
        "/metrics grew from {before} to {after} lines after 2,000 random requests"
    );
    let text = app.get("/metrics", None).await.text().await.unwrap();
    assert!(text.contains("method=\"other\""), "{text}");
}

#[tokio::test]
async fn unknown_routes_and_methods_answer_json_errors() {
    let app = spawn_app().await;
    assert_error(
        app.get("/nowhere", Some(SERVICE_KEY)).await,
        404,
        "not_found",
    )
    .await;
    let response = app
        .client
        .delete(format!("{}/me", app.address))
        .send()
        .await
        .unwrap();
    assert_error(response, 405, "method_not_allowed").await;
}

#[tokio::test]
async fn cors_allows_the_configured_origins_only() {
    let app = spawn_app_with(&[(
        "API_CORS_ORIGINS",
        "https://app.example.test,http://localhost:5173",
    )])
    .await;
    let preflight = |origin: &'static str| {
        app.client
            .request(reqwest::Method::OPTIONS, format!("{}/me", app.address))
            .header("origin", origin)
            .header("access-control-request-method", "PATCH")
            .header(
                "access-control-request-headers",
                "authorization, content-type",
            )
            .send()
    };

    let response = preflight("https://app.example.test").await.unwrap();
    assert!(response.status().is_success(), "{}", response.status());
    let headers = response.headers();
    assert_eq!(
        headers["access-control-allow-origin"],
        "https://app.example.test"
    );
    let methods = headers["access-control-allow-methods"].to_str().unwrap();
    for method in ["GET", "PATCH", "OPTIONS"] {
        assert!(methods.contains(method), "{methods}");
    }
    let allowed = headers["access-control-allow-headers"]
        .to_str()
        .unwrap()
        .to_ascii_lowercase();
    assert!(allowed.contains("authorization") && allowed.contains("content-type"));
    assert!(headers.contains_key("x-request-id"));

    let response = preflight("https://evil.example.test").await.unwrap();
    assert!(
        !response
            .headers()
            .contains_key("access-control-allow-origin")
    );

    let response = app
        .client
        .get(format!("{}/me", app.address))
        .header("origin", "http://localhost:5173")
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.headers()["access-control-allow-origin"],
        "http://localhost:5173"
    );
}

#[tokio::test]
async fn without_cors_origins_there_are_no_cors_headers() {
    let app = spawn_app().await;
    let response = app
        .client
        .get(format!("{}/healthz", app.address))
        .header("origin", "https://app.example.test")
        .send()
        .await
        .unwrap();
    assert!(
        !response
            .headers()
            .contains_key("access-control-allow-origin")
    );
}

#[tokio::test]
async fn request_log_lines_carry_the_request_id_and_never_credentials() {
    let app = spawn_app().await;
    let id = app.insert_user("user_ada", None).await;
    let session = crate::helpers::session_token("user_ada");
    let request_id = format!("log-test-{}", uuid::Uuid::new_v4().simple());
    let response = app
        .client
        .get(format!("{}/users/{id}", app.address))
        .bearer_auth(&session)
        .header("x-request-id", &request_id)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    app.get("/me", Some("wrong-service-key-in-log-test")).await;
    app.get(&format!("/users/{id}"), Some(SERVICE_KEY)).await;

    let line = testkit::eventually(
        std::time::Duration::from_secs(5),
        "the request's log line",
        || async {
            crate::helpers::logs()
                .lines()
                .find(|l| l.contains(&request_id) && l.contains("request finished"))
                .map(str::to_owned)
        },
    )
    .await;
    assert!(line.contains("/users/{id}"), "{line}");
    assert!(line.contains("200"), "{line}");
    let logs = crate::helpers::logs();
    for secret in [
        session.as_str(),
        SERVICE_KEY,
        "wrong-service-key-in-log-test",
    ] {
        assert!(!logs.contains(secret), "credential in the log");
    }
}

#[tokio::test]
async fn run_until_stopped_returns_once_shutdown_fires() {
    let db = testkit::TestDb::migrated().await;
    let (url, pooler) = (db.service_url(), db.pooler());
    let config = api::Config::from_lookup(move |name| match name {
        "API_ADDR" => Some("127.0.0.1:0".into()),
        "DATABASE_URL" => Some(url.clone()),
        "DATABASE_POOLER" => Some(pooler.as_str().into()),
        "API_SERVICE_KEYS" => Some(SERVICE_KEY.into()),
        _ => None,
    })
    .unwrap();
    let app = api::Application::build(config).await.unwrap();
    let address = format!("http://127.0.0.1:{}", app.port());
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until_stopped(async move {
        let _ = rx.await;
    }));
    let client = reqwest::Client::new();
    assert_eq!(
        client
            .get(format!("{address}/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );

    tx.send(()).unwrap();
    let result = tokio::time::timeout(std::time::Duration::from_secs(10), server)
        .await
        .expect("stopped within 10 s")
        .unwrap();
    assert!(result.is_ok());
    assert!(
        reqwest::Client::new()
            .get(format!("{address}/healthz"))
            .send()
            .await
            .is_err(),
        "still accepting after shutdown"
    );
}

#[tokio::test]
async fn a_client_that_never_finishes_its_headers_is_disconnected_after_api_header_timeout() {
    let app = spawn_app_with(&[("API_HEADER_TIMEOUT", "1s")]).await;
    let (closed, after) =
        testkit::slow_client_is_disconnected(&app.address, std::time::Duration::from_secs(10))
            .await;
    assert!(closed, "the slow client was not disconnected");
    // The default is 10 s: a disconnect this early comes from the setting.
    assert!(after < std::time::Duration::from_secs(5), "took {after:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_process_writes_every_request_s_line_whole_and_the_last_ones_when_stopped() {
    use testkit::process::{ServiceProcess, free_port};

    // The api as users run it (its `main`): a process of its own logging JSON lines to a file.
    let db = testkit::TestDb::migrated().await;
    let port = free_port();
    let mut settings = crate::helpers::base_settings(&db);
    settings.insert("API_ADDR".into(), format!("127.0.0.1:{port}"));
    settings.insert("LOG_FORMAT".into(), "json".into());
    let mut api = ServiceProcess::start(env!("CARGO_BIN_EXE_api").as_ref(), &[], settings);
    api.wait_ready(&format!("http://127.0.0.1:{port}/readyz"))
        .await;
    let client = reqwest::Client::new();
    let run = uuid::Uuid::new_v4().simple().to_string();
    let send = |i: usize| {
        let (client, run) = (client.clone(), run.clone());
        async move {
            let response = client
                .get(format!(
                    "http://127.0.0.1:{port}/users/by-clerk-id/user_none_{i}"
                ))
                .bearer_auth(SERVICE_KEY)
                .header("x-request-id", format!("{run}-{i}"))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 404);
        }
    };
    // Lines reach the log while the api runs.
    send(0).await;
    testkit::eventually(
        std::time::Duration::from_secs(5),
        "the first request's line",
        || async { api.output().contains(&format!("{run}-0")).then_some(()) },
    )
    .await;
    // 300 requests at once, then a stop straight after their answers: every line is written, each
    // whole, once, and so are the lines of the shutdown.
    futures_util::future::join_all((1..=300).map(send)).await;
    let output = tokio::task::spawn_blocking(move || api.stop())
        .await
        .unwrap();
    let mut seen = std::collections::HashSet::new();
    for line in output.lines().filter(|l| l.contains(&run)) {
        let line: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: a broken line {line}"));
        if line["message"] == "request finished" {
            let id = line["span"]["request_id"].as_str().unwrap().to_owned();
            assert_eq!(line["status"], 404, "{line}");
            assert!(seen.insert(id), "a line written twice: {line}");
        }
    }
    let missing: Vec<usize> = (0..=300)
        .filter(|i| !seen.contains(&format!("{run}-{i}")))
        .collect();
    assert!(missing.is_empty(), "no line for requests {missing:?}");
    // The line logged as `main` ends, milliseconds before the process exits.
    assert!(
        output
            .lines()
            .last()
            .is_some_and(|l| l.contains("\"api stopped\"")),
        "the last line is not the api's stop:\n{}",
        output.lines().rev().take(3).collect::<Vec<_>>().join("\n")
    );
}
