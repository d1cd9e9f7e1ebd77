//! Traces of the api: a request's server span, its database reads, and lazy sync's call to
//! Clerk as a child that carries the trace to Clerk; nothing secret or personal exported. The
//! api runs as a process of its own (its own tracing settings), exporting to the test kit's
//! OTLP receiver.

use std::time::Duration;

use testkit::{
    TestDb,
    events::{UserState, user_object},
    fake_clerk::{FakeClerk, SECRET_KEY},
    otlp::{OtlpReceiver, RecordedSpan, SpanKind, assert_nothing_private},
    process::{ServiceProcess, free_port},
};

use crate::helpers::{SERVICE_KEY, base_settings, session_token};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lazy_sync_s_call_to_clerk_is_a_child_of_the_request_span_and_carries_its_trace() {
    let receiver = OtlpReceiver::start().await;
    let clerk = FakeClerk::start().await;
    let user = "user_lazy_traced";
    clerk.set_users(vec![user_object(&UserState {
        id: user.into(),
        email: Some("radia.traced@example.com".into()),
        first_name: Some("Radiatraced".into()),
        last_name: Some("Perlmantraced".into()),
        updated_at: 1_000,
    })]);
    let db = TestDb::migrated().await;
    let port = free_port();
    let mut settings = base_settings(&db);
    for (name, value) in [
        ("API_ADDR", format!("127.0.0.1:{port}")),
        ("CLERK_SECRET_KEY", SECRET_KEY.into()),
        ("CLERK_API_URL", clerk.url()),
        ("LOG_FORMAT", "json".into()),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint()),
        ("OTEL_BSP_SCHEDULE_DELAY", "100".into()),
    ] {
        settings.insert(name.into(), value);
    }
    let mut api = ServiceProcess::start(env!("CARGO_BIN_EXE_api").as_ref(), &[], settings);
    api.wait_ready(&format!("http://127.0.0.1:{port}/readyz"))
        .await;

    let token = session_token(user);
    let response = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{port}/me"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.json::<serde_json::Value>().await.unwrap()["first_name"],
        "Radiatraced"
    );

    let is_me = |s: &RecordedSpan| s.kind == SpanKind::Server && s.name == "GET /me";
    let is_clerk_call = |s: &RecordedSpan| {
        s.kind == SpanKind::Client && s.attribute("url.template") == Some("/v1/users/{user_id}")
    };
    let spans = receiver
        .wait_for(
            |spans| spans.iter().any(is_me) && spans.iter().any(is_clerk_call),
            Duration::from_secs(20),
        )
        .await
        .unwrap();
    let server = spans.iter().find(|s| is_me(s)).unwrap();
    assert_eq!(server.service_name, "clerk-sync-api");
    assert_eq!(server.parent_span_id, None);
    assert_eq!(server.attribute("http.request.method"), Some("GET"));
    assert_eq!(server.attribute("http.route"), Some("/me"));
    assert_eq!(server.attribute("http.response.status_code"), Some("200"));

    let call = spans.iter().find(|s| is_clerk_call(s)).unwrap();
    assert!(call.is_child_of(server), "{}", call.summary());
    assert_eq!(call.attribute("http.request.method"), Some("GET"));
    assert_eq!(call.attribute("server.address"), Some("127.0.0.1"));
    assert_eq!(call.attribute("http.response.status_code"), Some("200"));
    // What Clerk received continues the call's span.
    let sent = clerk.traceparents();
    assert!(
        sent.iter()
            .any(|(path, context)| path == &format!("/v1/users/{user}")
                && context == &format!("00-{}-{}-01", call.trace_id, call.span_id)),
        "{sent:?}"
    );
    // The database work of the request: the read and lazy sync's transaction, in its trace.
    let database: Vec<&RecordedSpan> = spans
        .iter()
        .filter(|s| {
            s.trace_id == server.trace_id && s.attribute("db.system.name") == Some("postgresql")
        })
        .collect();
    assert!(
        database
            .iter()
            .any(|s| s.name == "SELECT" && s.is_child_of(server)),
        "{database:#?}"
    );
    assert!(
        database.iter().any(|s| s.name == "apply event"),
        "{database:#?}"
    );

    // A service-key read is traced too, under its route template (no user id in the name).
    let response = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{port}/users/by-clerk-id/{user}"))
        .bearer_auth(SERVICE_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let spans = receiver
        .wait_for(
            |spans| {
                spans.iter().any(|s| {
                    s.kind == SpanKind::Server
                        && s.attribute("http.route")
                            .is_some_and(|r| r.starts_with("/users/by-clerk-id/"))
                })
            },
            Duration::from_secs(20),
        )
        .await
        .unwrap();
    let read = spans
        .iter()
        .find(|s| s.kind == SpanKind::Server && s.name.starts_with("GET /users/by-clerk-id/"))
        .unwrap();
    assert!(!read.name.contains(user), "{}", read.summary());

    let log = api.stop();
    assert!(
        log.lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .any(
                |l| l["message"] == "request finished" && l["trace_id"] == server.trace_id.as_str()
            ),
        "no request line with the trace id:\n{log}"
    );
    assert_nothing_private(
        &receiver.spans(),
        &[
            SECRET_KEY,
            SERVICE_KEY,
            &token,
            "radia.traced@example.com",
            "Radiatraced",
            "Perlmantraced",
        ],
    );
}
