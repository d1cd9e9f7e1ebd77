//! The Grafana dashboard (`deploy/grafana/clerk-sync.json`) and the Prometheus alerts
//! (`deploy/prometheus/alerts.yml`) only use metric names the processes export: an ingress, a
//! worker and an api run in this process against the machine's Postgres and RabbitMQ (a database
//! and a queue prefix of their own), one event goes through, and every name in a panel's or an
//! alert's expression must be a sample name of their `/metrics`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    collections::{BTreeSet, HashMap},
    path::PathBuf,
    time::Duration,
};

use testkit::{SECRET, TestBroker, TestDb, eventually, fake_clerk::FakeClerk, now_secs};

const API_KEY: &str = "svc-dashboards-test-key-0123456789abcdef";

fn deploy_file(path: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(path);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// PromQL words that are not metric names when not followed by `(`.
const KEYWORDS: [&str; 11] = [
    "and",
    "or",
    "unless",
    "offset",
    "bool",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

/// Clauses whose parenthesised list holds label names, not expressions.
const LABEL_LISTS: [&str; 6] = [
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

/// Skips from `open` (the index of `{` or `[`) past its closing bracket, over quoted strings.
fn skip_bracket(chars: &[char], open: usize, close: char) -> usize {
    let mut i = open + 1;
    while i < chars.len() && chars[i] != close {
        if chars[i] == '"' || chars[i] == '\'' {
            i = skip_string(chars, i);
        } else {
            i += 1;
        }
    }
    i + 1
}

/// Skips a quoted string starting at `start`.
fn skip_string(chars: &[char], start: usize) -> usize {
    let quote = chars[start];
    let mut i = start + 1;
    while i < chars.len() && chars[i] != quote {
        i += if chars[i] == '\\' { 2 } else { 1 };
    }
    i + 1
}

fn is_ident_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_' || c == ':'
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

/// The metric names a PromQL expression selects: identifiers outside label matchers (`{…}`),
/// ranges (`[…]`), strings and label lists (`by (…)`, `on (…)`, …), not followed by `(`
/// (functions, aggregations), not keywords, not Grafana variables (`$__rate_interval`).
fn metric_names(expr: &str) -> BTreeSet<String> {
    let chars: Vec<char> = expr.chars().collect();
    let mut names = BTreeSet::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '{' {
            i = skip_bracket(&chars, i, '}');
        } else if c == '[' {
            i = skip_bracket(&chars, i, ']');
        } else if c == '"' || c == '\'' || c == '`' {
            i = skip_string(&chars, i);
        } else if c == '#' {
            // A comment runs to the end of the line.
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '$' {
            i += 1;
            while i < chars.len() && is_ident(chars[i]) {
                i += 1;
            }
        } else if c.is_ascii_digit() || c == '.' {
            // Numbers and durations (`0.99`, `1e3`, `1d` after offset).
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
        } else if is_ident_start(c) {
            let start = i;
            while i < chars.len() && is_ident(chars[i]) {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let mut next = i;
            while next < chars.len() && chars[next].is_whitespace() {
                next += 1;
            }
            // `sum by (…) (…)`: an aggregation whose clause comes before its argument.
            let rest: String = chars[next..].iter().take(8).collect();
            let clause_first = ["by", "without"].iter().any(|clause| {
                rest.strip_prefix(clause)
                    .is_some_and(|after| after.starts_with(|c: char| !is_ident(c)))
            });
            let call = chars.get(next) == Some(&'(') || clause_first;
            if LABEL_LISTS.contains(&word.as_str()) {
                if chars.get(next) == Some(&'(') {
                    i = skip_bracket(&chars, next, ')');
                }
            } else if !call && !KEYWORDS.contains(&word.as_str()) {
                names.insert(word);
            }
        } else {
            i += 1;
        }
    }
    names
}

/// Every `expr` string anywhere in the dashboard (panels, and panels inside rows).
fn dashboard_exprs(value: &serde_json::Value, out: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, v) in map {
                match (key.as_str(), v) {
                    ("expr", serde_json::Value::String(expr)) => out.push(expr.clone()),
                    _ => dashboard_exprs(v, out),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| dashboard_exprs(v, out)),
        _ => {}
    }
}

/// The `expr:` values of a rules file: single-line, or a block scalar (`|`, `>`) of the lines
/// indented deeper than the key. Enough for `deploy/prometheus/alerts.yml`, which is ours.
fn rule_exprs(yaml: &str) -> Vec<String> {
    let lines: Vec<&str> = yaml.lines().collect();
    let mut exprs = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        let trimmed = line.trim_start();
        i += 1;
        let Some(value) = trimmed.strip_prefix("expr:") else {
            continue;
        };
        let value = value.trim();
        if value.starts_with('|') || value.starts_with('>') {
            let indent = line.len() - trimmed.len();
            let mut block = String::new();
            while i < lines.len() {
                let next = lines[i];
                let next_indent = next.len() - next.trim_start().len();
                if !next.trim().is_empty() && next_indent <= indent {
                    break;
                }
                block.push_str(next);
                block.push('\n');
                i += 1;
            }
            exprs.push(block);
        } else {
            exprs.push(value.trim_matches(['"', '\'']).to_owned());
        }
    }
    exprs
}

/// Sample names an OpenMetrics text exposes: those of its sample lines, and those its `# TYPE`
/// lines promise (a labelled family has no sample before its first observation).
fn exposed_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split_whitespace();
            let (Some(name), Some(kind)) = (parts.next(), parts.next()) else {
                continue;
            };
            let suffixes: &[&str] = match kind {
                "counter" => &["_total", "_created"],
                "histogram" => &["_bucket", "_sum", "_count", "_created"],
                "summary" => &["", "_sum", "_count", "_created"],
                "info" => &["_info"],
                _ => &[""],
            };
            names.extend(suffixes.iter().map(|s| format!("{name}{s}")));
        } else if !line.starts_with('#') && !line.trim().is_empty() {
            let end = line.find(['{', ' ']).unwrap_or(line.len());
            names.insert(line[..end].to_owned());
        }
    }
    names
}

/// Names used in `exprs` that `exposed` lacks, with the expression that uses each.
fn unknown_names(exprs: &[String], exposed: &BTreeSet<String>) -> Vec<(String, String)> {
    exprs
        .iter()
        .flat_map(|expr| {
            metric_names(expr)
                .into_iter()
                .filter(|name| !exposed.contains(name))
                .map(|name| (name, expr.trim().to_owned()))
        })
        .collect()
}

#[test]
fn metric_names_are_read_from_promql() {
    let names = metric_names(
        r#"histogram_quantile(0.99, sum by (le, route) (rate(a_bucket{status=~"5..", x="{"}[$__rate_interval])))
           / on () group_left (kind) (b_total or vector(0)) > 1e-3
           and (time() - max(c > 0)) unless d offset 1d # e_in_a_comment"#,
    );
    let expected: BTreeSet<String> = ["a_bucket", "b_total", "c", "d"]
        .into_iter()
        .map(String::from)
        .collect();
    assert_eq!(names, expected);
    let exprs = rule_exprs(
        "      - alert: A\n        expr: |\n          rate(x_total[5m])\n            > y\n        for: 1m\n      - alert: B\n        expr: z > 0\n",
    );
    assert_eq!(exprs.len(), 2, "{exprs:?}");
    assert_eq!(
        metric_names(&exprs.join(" ")),
        ["x_total", "y", "z"]
            .into_iter()
            .map(String::from)
            .collect()
    );
    let exposed = exposed_names(
        "# TYPE f counter\n# TYPE h histogram\nh_bucket{le=\"1\"} 0\n# TYPE g gauge\ng 0\n# EOF\n",
    );
    for name in ["f_total", "h_bucket", "h_sum", "h_count", "g"] {
        assert!(exposed.contains(name), "{name} in {exposed:?}");
    }
    assert!(!exposed.contains("f"));
}

#[test]
fn the_dashboard_is_a_grafana_import_with_a_prometheus_input() {
    let dashboard: serde_json::Value =
        serde_json::from_str(&deploy_file("grafana/clerk-sync.json")).unwrap();
    assert!(dashboard["schemaVersion"].as_u64().unwrap() >= 36);
    assert_eq!(dashboard["__inputs"][0]["name"], "DS_PROMETHEUS");
    assert_eq!(dashboard["__inputs"][0]["pluginId"], "prometheus");
    let builtin = [
        "row",
        "timeseries",
        "stat",
        "bargauge",
        "text",
        "table",
        "gauge",
    ];
    for panel in dashboard["panels"].as_array().unwrap() {
        let kind = panel["type"].as_str().unwrap();
        assert!(builtin.contains(&kind), "panel type {kind} is a plugin");
        if let Some(targets) = panel["targets"].as_array() {
            assert_eq!(panel["datasource"]["uid"], "${DS_PROMETHEUS}", "{panel}");
            for target in targets {
                assert_eq!(target["datasource"]["uid"], "${DS_PROMETHEUS}", "{target}");
            }
        }
    }
}

async fn get_text(url: &str) -> String {
    reqwest::get(url).await.unwrap().text().await.unwrap()
}

#[tokio::test]
async fn dashboard_and_alerts_use_only_metrics_the_processes_export() {
    let db = TestDb::empty().await;
    let broker = TestBroker::new().await;
    let clerk = FakeClerk::start().await;

    let mut settings: HashMap<String, String> = broker.settings().into_iter().collect();
    settings.insert("DATABASE_URL".into(), db.url.clone());
    settings.insert("WORKER_ADDR".into(), "127.0.0.1:0".into());
    settings.insert("DATABASE_MAX_CONNECTIONS".into(), "3".into());
    settings.insert("CLERK_WEBHOOK_SECRET".into(), SECRET.into());
    settings.insert("INGRESS_ADDR".into(), "127.0.0.1:0".into());
    settings.insert("API_ADDR".into(), "127.0.0.1:0".into());
    settings.insert("API_SERVICE_KEYS".into(), API_KEY.into());
    settings.insert(
        "CLERK_SECRET_KEY".into(),
        testkit::fake_clerk::SECRET_KEY.into(),
    );
    settings.insert("CLERK_API_URL".into(), clerk.url());
    // A scheduled reconcile soon after start: the drift family gets its series (0 each) and the
    // last-success gauge a time.
    settings.insert("RECONCILE_INTERVAL".into(), "2s".into());
    let lookup = |name: &str| settings.get(name).cloned();

    // The worker first: it applies the migrations the api reads through.
    let worker = worker::Application::build(worker::Config::from_lookup(lookup).unwrap())
        .await
        .unwrap();
    let worker_url = format!("http://127.0.0.1:{}", worker.port());
    let ingress = ingress::Application::build(ingress::Config::from_lookup(lookup).unwrap())
        .await
        .unwrap();
    let ingress_url = format!("http://127.0.0.1:{}", ingress.port());
    let api = api::Application::build(api::Config::from_lookup(lookup).unwrap())
        .await
        .unwrap();
    let api_url = format!("http://127.0.0.1:{}", api.port());
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let until_stopped = || {
        let mut stopped = stopped.clone();
        async move {
            let _ = stopped.wait_for(|s| *s).await;
        }
    };
    let tasks = [
        tokio::spawn(worker.run_until_stopped(until_stopped())),
        tokio::spawn(ingress.run_until_stopped(until_stopped())),
        {
            let api_stopped = until_stopped();
            tokio::spawn(async move {
                let _ = api.run_until_stopped(api_stopped).await;
            })
        },
    ];

    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    for url in [&worker_url, &ingress_url, &api_url] {
        eventually(Duration::from_secs(30), "ready", || async {
            let r = client.get(format!("{url}/readyz")).send().await.ok()?;
            (r.status() == 200).then_some(())
        })
        .await;
    }

    // One event through ingress and worker, one api read that syncs lazily (Clerk does not know
    // the user: `not_found`), so that the labelled families have series.
    let user = testkit::events::UserState {
        id: "user_2dashSYNTHuser01".into(),
        email: Some("dash@example.com".into()),
        first_name: Some("Dash".into()),
        last_name: Some("Synth".into()),
        updated_at: 1_735_689_600_100,
    };
    // Clerk lists the user the event brings: the reconcile finds no drift.
    clerk.set_users(vec![testkit::events::user_object(&user)]);
    let body = testkit::events::user_event("user.created", &user);
    let response = client
        .post(format!("{ingress_url}/webhooks/clerk"))
        .headers(testkit::svix_headers(
            SECRET,
            "msg_dashboards_01",
            now_secs(),
            &body,
        ))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let worker_metrics = eventually(
        Duration::from_secs(30),
        "the event applied and a reconcile done",
        || async {
            let text = get_text(&format!("{worker_url}/metrics")).await;
            (text.contains(
                r#"clerk_sync_events_total{event_type="user.created",outcome="applied"} 1"#,
            ) && text.contains(r#"clerk_sync_reconcile_drift_total{kind="membership_gone"} 0"#)
                && !text.contains("clerk_sync_reconcile_last_success_timestamp_seconds 0\n"))
            .then_some(text)
        },
    )
    .await;
    let read = client
        .get(format!("{api_url}/users/by-clerk-id/user_2dashSYNTHnobody"))
        .bearer_auth(API_KEY)
        .send()
        .await
        .unwrap();
    assert!(read.status().is_client_error(), "{}", read.status());
    let ingress_metrics = get_text(&format!("{ingress_url}/metrics")).await;
    let api_metrics = get_text(&format!("{api_url}/metrics")).await;

    let mut exposed = BTreeSet::new();
    for text in [&worker_metrics, &ingress_metrics, &api_metrics] {
        exposed.extend(exposed_names(text));
    }
    // The families whose series only come with an observation have one now.
    for sample in [
        "clerk_sync_webhooks_received_total{",
        "clerk_sync_publish_duration_seconds_bucket{",
        "clerk_sync_api_requests_total{",
        "clerk_sync_api_request_duration_seconds_bucket{",
        "clerk_sync_event_lag_seconds_bucket{",
    ] {
        let all = format!("{worker_metrics}{ingress_metrics}{api_metrics}");
        assert!(
            all.lines().any(|l| l.starts_with(sample)),
            "no {sample} series in\n{all}"
        );
    }

    // prometheus-client leaves a labelled family out of the text, `# TYPE` line included, until
    // its first series. Lazy syncs happen for signed-in users only (`/me`, a Clerk session this
    // test cannot sign): that one family is taken from its registration in the api's source.
    assert!(
        !api_metrics.contains("clerk_sync_api_lazy_syncs"),
        "lazy syncs have a series now: drop the fallback below"
    );
    let lazy = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../api/src/lazy.rs"),
    )
    .unwrap();
    assert!(
        lazy.contains(r#""clerk_sync_api_lazy_syncs","#)
            && lazy.contains("Family::<LazyLabels, Counter>"),
        "the api no longer registers the counter family clerk_sync_api_lazy_syncs"
    );
    exposed.insert("clerk_sync_api_lazy_syncs_total".to_owned());

    let dashboard: serde_json::Value =
        serde_json::from_str(&deploy_file("grafana/clerk-sync.json")).unwrap();
    let mut panel_exprs = Vec::new();
    dashboard_exprs(&dashboard, &mut panel_exprs);
    let alert_exprs = rule_exprs(&deploy_file("prometheus/alerts.yml"));
    assert!(panel_exprs.len() >= 20, "{panel_exprs:?}");
    assert_eq!(alert_exprs.len(), 8, "{alert_exprs:?}");

    let used: BTreeSet<String> = panel_exprs.iter().flat_map(|e| metric_names(e)).collect();
    for documented in [
        "clerk_sync_webhooks_received_total",
        "clerk_sync_events_total",
        "clerk_sync_event_lag_seconds_bucket",
        "clerk_sync_batch_fallbacks_total",
        "clerk_sync_reconcile_drift_total",
        "clerk_sync_reconcile_last_success_timestamp_seconds",
        "clerk_sync_api_requests_total",
        "clerk_sync_api_lazy_syncs_total",
        "clerk_sync_calendar_connections",
        "clerk_sync_calendar_checks_total",
    ] {
        assert!(
            used.contains(documented),
            "the dashboard lacks {documented}"
        );
    }

    let unknown_in_dashboard = unknown_names(&panel_exprs, &exposed);
    let unknown_in_alerts = unknown_names(&alert_exprs, &exposed);
    let _ = stop.send(true);
    for task in tasks {
        tokio::time::timeout(Duration::from_secs(30), task)
            .await
            .unwrap()
            .unwrap();
    }
    assert!(
        unknown_in_dashboard.is_empty() && unknown_in_alerts.is_empty(),
        "names no process exports:\n dashboard: {unknown_in_dashboard:#?}\n alerts: {unknown_in_alerts:#?}\nexported: {exposed:#?}"
    );
}
