//! The operator's console (`/console` on the worker's ops listener): off without
//! `CONSOLE_USERS`, login, roles, CSRF, security headers, masked bodies and audited reveals,
//! and dead letters replayed and dropped through it with their audit log.

use std::{collections::BTreeMap, time::Duration};

use sea_orm::{ConnectionTrait, DbBackend, Statement};
use testkit::{TestBroker, TestDb, eventually};

use crate::helpers::{
    row, spawn_worker, user_created, wait_for_count, wait_for_users, worker_settings,
};

const OPERATOR_KEY: &str = "operator-key-0123456789abcdef0123456789";
const VIEWER_KEY: &str = "viewer-key-0123456789abcdef0123456789ab";
const CSP: &str = "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'";

fn users_setting() -> String {
    format!("ops:operator:{OPERATOR_KEY},watcher:viewer:{VIEWER_KEY}")
}

/// A browser without a browser: one session cookie kept by hand, no redirects followed.
struct Browser {
    base: String,
    http: reqwest::Client,
    cookie: Option<String>,
}

struct Page {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: String,
}

fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

impl Browser {
    fn new(port: u16) -> Self {
        Self {
            base: format!("http://127.0.0.1:{port}"),
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap(),
            cookie: None,
        }
    }

    async fn page(&mut self, response: reqwest::Response) -> Page {
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        if let Some(set) = headers.get("set-cookie") {
            let set = set.to_str().unwrap();
            self.cookie = Some(set.split(';').next().unwrap().to_owned());
        }
        Page {
            status,
            headers,
            body: response.text().await.unwrap(),
        }
    }

    async fn get(&mut self, path: &str) -> Page {
        let mut request = self.http.get(format!("{}{path}", self.base));
        if let Some(cookie) = &self.cookie {
            request = request.header("cookie", cookie);
        }
        let response = request.send().await.unwrap();
        self.page(response).await
    }

    async fn post(&mut self, path: &str, fields: &[(&str, &str)]) -> Page {
        let body = fields
            .iter()
            .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
            .collect::<Vec<_>>()
            .join("&");
        let mut request = self
            .http
            .post(format!("{}{path}", self.base))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body);
        if let Some(cookie) = &self.cookie {
            request = request.header("cookie", cookie);
        }
        let response = request.send().await.unwrap();
        self.page(response).await
    }

    /// Logs in; the session's CSRF token (read from a page's hidden field).
    async fn login(&mut self, name: &str, key: &str) -> String {
        let page = self
            .post("/console/login", &[("name", name), ("key", key)])
            .await;
        assert_eq!(page.status, 303, "{}", page.body);
        assert_eq!(page.headers["location"], "/console");
        let cookie = page.headers["set-cookie"].to_str().unwrap();
        for attribute in ["HttpOnly", "SameSite=Strict", "Path=/console"] {
            assert!(cookie.contains(attribute), "{cookie}");
        }
        let overview = self.get("/console").await;
        assert_eq!(overview.status, 200, "{}", overview.body);
        csrf_of(&overview.body)
    }
}

fn csrf_of(html: &str) -> String {
    let start = html.find("name=\"csrf\" value=\"").expect("a CSRF field") + 19;
    html[start..start + 64].to_owned()
}

/// The value of the hidden input `name` in a page.
fn hidden_value(html: &str, name: &str) -> String {
    let marker = format!("name=\"{name}\" value=\"");
    let start = html
        .find(&marker)
        .unwrap_or_else(|| panic!("no {name} in {html}"))
        + marker.len();
    html[start..].split('"').next().unwrap().to_owned()
}

fn assert_secure_headers(page: &Page) {
    assert_eq!(page.headers["content-security-policy"], CSP);
    assert_eq!(page.headers["x-frame-options"], "DENY");
}

#[tokio::test]
async fn without_console_users_there_is_no_console() {
    let db = TestDb::migrated().await;
    let broker = TestBroker::new().await;
    let worker = spawn_worker(&db, &broker, &[]).await;
    let mut browser = Browser::new(worker.port);
    for path in ["/console", "/console/login", "/console/style.css"] {
        assert_eq!(browser.get(path).await.status, 404, "{path}");
    }
    let login = browser
        .post("/console/login", &[("name", "ops"), ("key", OPERATOR_KEY)])
        .await;
    assert_eq!(login.status, 404);
    assert_eq!(browser.get("/healthz").await.status, 200);
    worker.stop().await;
}

#[tokio::test]
async fn login_roles_csrf_and_security_headers() {
    let db = TestDb::migrated().await;
    let broker = TestBroker::new().await;
    let users = users_setting();
    let worker = spawn_worker(&db, &broker, &[("CONSOLE_USERS", &users)]).await;
    let mut browser = Browser::new(worker.port);

    let anonymous = browser.get("/console").await;
    assert_eq!(anonymous.status, 303);
    assert_eq!(anonymous.headers["location"], "/console/login");
    assert_secure_headers(&anonymous);
    let form = browser.get("/console/login").await;
    assert_eq!(form.status, 200);
    assert_secure_headers(&form);
    assert!(!form.body.contains("<script"), "no JavaScript");
    let css = browser.get("/console/style.css").await;
    assert_eq!(css.status, 200);
    assert!(
        css.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/css")
    );

    // A wrong key, a viewer's key under the operator's name, an unknown name: refused.
    for (name, key) in [
        ("ops", "operator-key-0123456789abcdef0123456788"),
        ("ops", VIEWER_KEY),
        ("nobody", OPERATOR_KEY),
    ] {
        let refused = browser
            .post("/console/login", &[("name", name), ("key", key)])
            .await;
        assert_eq!(refused.status, 401, "{name}");
        assert!(!refused.headers.contains_key("set-cookie"));
        assert!(refused.body.contains("wrong key"), "{}", refused.body);
    }
    assert_eq!(
        browser.get("/console").await.status,
        303,
        "still logged out"
    );

    // A viewer reads every page and sees no action forms; their action POSTs are refused.
    let csrf = browser.login("watcher", VIEWER_KEY).await;
    let overview = browser.get("/console").await;
    assert_secure_headers(&overview);
    assert!(
        overview.body.contains(&broker.topology.dead_queue()),
        "{}",
        overview.body
    );
    assert!(overview.body.contains(&broker.topology.main_queue()));
    for path in [
        "/console/dead-letters",
        "/console/dead-letters?type=user.created&page=3",
        "/console/events?svix_id=msg_nope",
        "/console/events?clerk_user_id=user_nope",
        "/console/audit",
    ] {
        let page = browser.get(path).await;
        assert_eq!(page.status, 200, "{path}: {}", page.body);
        assert_secure_headers(&page);
        for action in ["/replay", "/drop", "/reveal"] {
            assert!(
                !page.body.contains(action),
                "{path} shows {action} to a viewer"
            );
        }
    }
    // Searching bodies would reveal what masking hides: operators only.
    let searched = browser.get("/console/dead-letters?body=example.com").await;
    assert_eq!(searched.status, 403, "{}", searched.body);
    for path in [
        "/console/dead-letter/replay",
        "/console/dead-letter/drop",
        "/console/dead-letter/reveal",
        "/console/dead-letters/replay",
    ] {
        let refused = browser
            .post(
                path,
                &[("csrf", &csrf), ("id", "msg_x"), ("confirm", "yes")],
            )
            .await;
        assert_eq!(refused.status, 403, "{path}");
        assert_secure_headers(&refused);
    }

    // An operator's POST without the CSRF token, or with another session's, is refused.
    let mut operator = Browser::new(worker.port);
    let operator_csrf = operator.login("ops", OPERATOR_KEY).await;
    assert_ne!(operator_csrf, csrf);
    for fields in [
        vec![("id", "msg_x"), ("confirm", "yes")],
        vec![("csrf", csrf.as_str()), ("id", "msg_x"), ("confirm", "yes")],
    ] {
        let refused = operator.post("/console/dead-letter/drop", &fields).await;
        assert_eq!(refused.status, 403, "{fields:?}");
        assert!(refused.body.contains("CSRF"), "{}", refused.body);
    }
    assert_eq!(
        operator.post("/console/logout", &[]).await.status,
        403,
        "logging out needs the token too"
    );
    // The dead-letter listing shows operators the way to act.
    let listing = operator.get("/console/dead-letters").await;
    assert!(
        listing.body.contains("0</strong> dead letter(s)"),
        "{}",
        listing.body
    );

    // Logging out ends the session.
    let out = browser.post("/console/logout", &[("csrf", &csrf)]).await;
    assert_eq!(out.status, 303);
    assert_eq!(browser.get("/console").await.status, 303);
    assert!(
        db.conn
            .query_one_raw(Statement::from_string(
                DbBackend::Postgres,
                "SELECT count(*) AS n FROM console_audit"
            ))
            .await
            .unwrap()
            .unwrap()
            .try_get::<i64>("", "n")
            .unwrap()
            == 0,
        "refused actions did nothing"
    );
    worker.stop().await;
}

/// Every write of `user_poison…` fails with a retryable error until dropped.
async fn fail_every_write_of_poison_users(db: &TestDb) {
    db.conn
        .execute_unprepared(
            "CREATE FUNCTION poison() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN \
               IF NEW.clerk_user_id LIKE 'user_poison%' THEN \
                 RAISE EXCEPTION 'simulated outage for this user' USING ERRCODE = '40001'; \
               END IF; RETURN NEW; END $$; \
             CREATE TRIGGER poison BEFORE INSERT OR UPDATE ON users FOR EACH ROW EXECUTE FUNCTION poison();",
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn an_operator_reveals_replays_and_drops_dead_letters_and_the_audit_log_lists_it() {
    let db = TestDb::migrated().await;
    let broker = TestBroker::new().await;
    fail_every_write_of_poison_users(&db).await;
    let users = users_setting();
    let worker = spawn_worker(
        &db,
        &broker,
        &[
            ("MAX_ATTEMPTS", "3"),
            ("IN_PROCESS_RETRIES", "1"),
            ("CONSOLE_USERS", &users),
        ],
    )
    .await;
    for n in 1..=3 {
        user_created(
            &format!("user_poison_{n}"),
            Some(&format!("poison{n}@example.com")),
            "Poison",
            n,
        )
        .publish(&broker, &format!("msg_p{n}"))
        .await;
    }
    broker.publish_event("msg_garbage", b"{not json").await;
    eventually(Duration::from_secs(40), "4 dead letters", || async {
        (broker.count(&broker.topology.dead_queue()).await == 4).then_some(())
    })
    .await;

    // The CLI filters with the same code.
    let settings = worker_settings(&db, &broker, &[]);
    let (ok, out, err) = crate::helpers::worker_cli(
        settings.clone(),
        &[
            "dlq",
            "list",
            "--json",
            "--type",
            "user.created",
            "--reason",
            "SIMULATED",
        ],
    );
    assert!(ok, "{err}");
    let listed: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 3, "{out}");
    let mut listed_users: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["clerk_user_id"].as_str().unwrap())
        .collect();
    listed_users.sort_unstable();
    assert_eq!(
        listed_users,
        ["user_poison_1", "user_poison_2", "user_poison_3"]
    );
    let (ok, out, _) = crate::helpers::worker_cli(
        settings.clone(),
        &[
            "dlq",
            "replay",
            "--clerk-user-id",
            "user_poison_2",
            "--dry-run",
        ],
    );
    assert!(
        ok && out.contains("would replay 1") && out.contains("msg_p2"),
        "{out}"
    );
    let (ok, _, err) =
        crate::helpers::worker_cli(settings.clone(), &["dlq", "replay", "--all", "--type", "x"]);
    assert!(!ok && err.contains("cannot be combined"), "{err}");
    wait_for_count(&broker, &broker.topology.dead_queue(), 4).await;

    let mut browser = Browser::new(worker.port);
    let csrf = browser.login("ops", OPERATOR_KEY).await;
    // The overview: rates over the last minutes (samples every 10 s: collecting at first) and
    // the age and id of the oldest dead letter.
    let overview = browser.get("/console").await;
    for expected in [
        "Events a minute, this worker",
        "<td>15 min</td>",
        "newest applied event",
    ] {
        assert!(
            overview.body.contains(expected),
            "{expected}: {}",
            overview.body
        );
    }
    let oldest = overview
        .body
        .split("<td>oldest dead letter</td><td>")
        .nth(1)
        .and_then(|rest| rest.split("</td>").next())
        .unwrap_or_default();
    assert!(
        oldest.contains(" s (msg_"),
        "the oldest dead letter's age and id: {oldest:?}"
    );
    let listing = browser.get("/console/dead-letters?type=user.created").await;
    assert_eq!(listing.status, 200);
    assert!(
        listing.body.contains("<strong>3</strong> dead letter(s)"),
        "{}",
        listing.body
    );
    for id in ["msg_p1", "msg_p2", "msg_p3"] {
        assert!(listing.body.contains(id), "{id}");
    }
    assert!(!listing.body.contains("msg_garbage"));
    assert!(listing.body.contains("Replay all 3 matching"));
    // Payload search: the body holds the address; the description does not echo it.
    let searched = browser
        .get("/console/dead-letters?body=poison2%40example.com")
        .await;
    assert_eq!(searched.status, 200, "{}", searched.body);
    assert!(
        searched
            .body
            .contains("<strong>1</strong> dead letter(s) match body~(19 chars)"),
        "{}",
        searched.body
    );
    assert!(searched.body.contains("msg_p2") && !searched.body.contains("msg_p1"));
    let searches = "SELECT count(*) FROM console_audit WHERE action = 'search' \
                    AND target = 'body~(19 chars)' AND count = 1 AND done = 1 AND actor = 'ops'";
    assert_eq!(
        crate::helpers::scalar(&db.conn, searches).await,
        1,
        "the search is audited (who, how many matched), its text is not stored"
    );
    let all = browser.get("/console/dead-letters").await;
    assert!(
        all.body.contains("<strong>4</strong> dead letter(s)"),
        "{}",
        all.body
    );

    // Masked until revealed; the reveal is audited.
    let masked = browser.get("/console/dead-letter?id=msg_p1").await;
    assert_eq!(masked.status, 200);
    assert!(masked.body.contains("simulated outage"), "{}", masked.body);
    assert!(
        !masked.body.contains("poison1@example.com"),
        "{}",
        masked.body
    );
    assert!(masked.body.contains("masked"));
    assert!(masked.body.contains("/console/dead-letter/reveal"));
    // Times as times (the milliseconds in a tooltip), RabbitMQ's delivery count said for what
    // it is.
    assert!(
        masked
            .body
            .contains("<th>clerk-sync-first-failure-at</th><td><span title=\""),
        "{}",
        masked.body
    );
    assert!(
        masked.body.contains("not apply attempts"),
        "{}",
        masked.body
    );
    let revealed = browser
        .post(
            "/console/dead-letter/reveal",
            &[("csrf", &csrf), ("id", "msg_p1")],
        )
        .await;
    assert_eq!(revealed.status, 200, "{}", revealed.body);
    assert!(
        revealed.body.contains("poison1@example.com"),
        "{}",
        revealed.body
    );
    assert_eq!(
        browser.get("/console/dead-letter?id=msg_nope").await.status,
        404
    );

    // The cause is fixed: replay one (confirmation first), drop the garbage, replay the rest.
    db.conn
        .execute_unprepared("DROP TRIGGER poison ON users")
        .await
        .unwrap();
    let confirm = browser
        .post(
            "/console/dead-letter/replay",
            &[("csrf", &csrf), ("id", "msg_p1")],
        )
        .await;
    assert!(
        confirm.body.contains("replay <strong>1</strong>"),
        "{}",
        confirm.body
    );
    wait_for_count(&broker, &broker.topology.dead_queue(), 4).await;
    let done = browser
        .post(
            "/console/dead-letter/replay",
            &[("csrf", &csrf), ("id", "msg_p1"), ("confirm", "yes")],
        )
        .await;
    assert!(
        done.body.contains("Replayed <strong>1</strong>"),
        "{}",
        done.body
    );
    wait_for_users(
        &db.conn,
        &BTreeMap::from([(
            "user_poison_1".to_string(),
            row(Some("poison1@example.com"), "Poison", 1),
        )]),
        Duration::from_secs(20),
    )
    .await;
    let dropped = browser
        .post(
            "/console/dead-letter/drop",
            &[("csrf", &csrf), ("id", "msg_garbage"), ("confirm", "yes")],
        )
        .await;
    assert!(
        dropped.body.contains("Dropped <strong>1</strong>"),
        "{}",
        dropped.body
    );
    let confirm = browser
        .post(
            "/console/dead-letters/replay",
            &[("csrf", &csrf), ("type", "user.created")],
        )
        .await;
    assert!(
        confirm.body.contains("replay <strong>2</strong>"),
        "{}",
        confirm.body
    );
    assert!(confirm.body.contains("name=\"confirm\" value=\"yes\""));
    let selection = hidden_value(&confirm.body, "selection");
    let done = browser
        .post(
            "/console/dead-letters/replay",
            &[
                ("csrf", &csrf),
                ("type", "user.created"),
                ("selection", &selection),
                ("confirm", "yes"),
            ],
        )
        .await;
    assert!(
        done.body.contains("Replayed <strong>2</strong>"),
        "{}",
        done.body
    );
    wait_for_users(
        &db.conn,
        &(1..=3)
            .map(|n| {
                (
                    format!("user_poison_{n}"),
                    row(Some(&format!("poison{n}@example.com")), "Poison", n),
                )
            })
            .collect(),
        Duration::from_secs(20),
    )
    .await;
    wait_for_count(&broker, &broker.topology.dead_queue(), 0).await;

    // The event lookup sees them processed.
    let lookup = browser.get("/console/events?svix_id=msg_p2").await;
    assert!(lookup.body.contains("user.created"), "{}", lookup.body);
    let user = browser
        .get("/console/events?clerk_user_id=user_poison_2")
        .await;
    assert!(user.body.contains("No tombstone"), "{}", user.body);
    assert!(
        user.body.contains("<td>1970-01-01 00:00:00.002 UTC</td>"),
        "clerk_updated_at as a time: {}",
        user.body
    );
    assert!(!user.body.contains("No row in users"), "{}", user.body);

    // The audit log: who, role, what, target and how many, in order.
    let rows = db
        .conn
        .query_all_raw(Statement::from_string(
            DbBackend::Postgres,
            "SELECT actor, role, action, target, count FROM console_audit WHERE done = count ORDER BY id",
        ))
        .await
        .unwrap();
    let audit: Vec<(String, String, String, String, i64)> = rows
        .iter()
        .map(|r| {
            (
                r.try_get("", "actor").unwrap(),
                r.try_get("", "role").unwrap(),
                r.try_get("", "action").unwrap(),
                r.try_get("", "target").unwrap(),
                r.try_get("", "count").unwrap(),
            )
        })
        .collect();
    let expected = [
        ("search", "body~(19 chars)", 1),
        ("reveal", "msg_p1", 1),
        ("replay", "msg_p1", 1),
        ("drop", "msg_garbage", 1),
        ("replay_matching", "type=user.created", 2),
    ];
    assert_eq!(audit.len(), expected.len(), "{audit:?}");
    for (row, (action, target, count)) in audit.iter().zip(expected) {
        assert_eq!(
            (
                row.0.as_str(),
                row.1.as_str(),
                row.2.as_str(),
                row.3.as_str(),
                row.4
            ),
            ("ops", "operator", action, target, count)
        );
    }
    let page = browser.get("/console/audit").await;
    for text in [
        "reveal",
        "replay_matching",
        "type=user.created",
        "msg_garbage",
    ] {
        assert!(page.body.contains(text), "{text}: {}", page.body);
    }
    worker.stop().await;
}

#[tokio::test]
async fn dead_letters_are_paged_fifty_at_a_time() {
    let db = TestDb::migrated().await;
    let broker = TestBroker::new().await;
    let users = users_setting();
    let worker = spawn_worker(&db, &broker, &[("CONSOLE_USERS", &users)]).await;
    for n in 0..120 {
        broker
            .publish_event(&format!("msg_garbage_{n:03}"), b"{not json <b>")
            .await;
    }
    eventually(Duration::from_secs(30), "120 dead letters", || async {
        (broker.count(&broker.topology.dead_queue()).await == 120).then_some(())
    })
    .await;
    let mut browser = Browser::new(worker.port);
    browser.login("watcher", VIEWER_KEY).await;
    let rows = |html: &str| html.matches("href=\"/console/dead-letter?id=").count();
    let first = browser.get("/console/dead-letters?reason=envelope").await;
    assert!(
        first.body.contains("<strong>120</strong> dead letter(s)"),
        "{}",
        first.body
    );
    assert!(first.body.contains("page 1 of 3"), "{}", first.body);
    assert_eq!(rows(&first.body), 50);
    assert!(
        first.body.contains("reason=envelope&amp;page=2"),
        "{}",
        first.body
    );
    let last = browser
        .get("/console/dead-letters?reason=envelope&page=3")
        .await;
    assert!(last.body.contains("page 3 of 3"), "{}", last.body);
    assert_eq!(rows(&last.body), 20);
    let one = browser.get("/console/dead-letter?id=msg_garbage_007").await;
    assert!(
        !one.body.contains("<b>"),
        "a body that is not JSON stays hidden and escaped"
    );
    wait_for_count(&broker, &broker.topology.dead_queue(), 120).await;
    worker.stop().await;
}

#[tokio::test]
async fn an_action_or_a_search_that_cannot_be_audited_is_not_done() {
    let db = TestDb::migrated().await;
    let broker = TestBroker::new().await;
    let users = users_setting();
    let worker = spawn_worker(&db, &broker, &[("CONSOLE_USERS", &users)]).await;
    broker.publish_event("msg_bad_1", b"{not json").await;
    wait_for_count(&broker, &broker.topology.dead_queue(), 1).await;
    let mut browser = Browser::new(worker.port);
    let csrf = browser.login("ops", OPERATOR_KEY).await;

    // The audit log cannot be written.
    db.conn
        .execute_unprepared("ALTER TABLE console_audit RENAME TO console_audit_away")
        .await
        .unwrap();
    let refused = browser
        .post(
            "/console/dead-letter/drop",
            &[("csrf", &csrf), ("id", "msg_bad_1"), ("confirm", "yes")],
        )
        .await;
    assert_eq!(refused.status, 503, "{}", refused.body);
    assert!(
        refused
            .body
            .contains("could not be recorded in the audit log"),
        "{}",
        refused.body
    );
    let searched = browser.get("/console/dead-letters?body=not%20json").await;
    assert_eq!(searched.status, 502, "{}", searched.body);
    assert!(!searched.body.contains("msg_bad_1"), "{}", searched.body);
    wait_for_count(&broker, &broker.topology.dead_queue(), 1).await;

    // Recorded again: the drop happens, with what it did.
    db.conn
        .execute_unprepared("ALTER TABLE console_audit_away RENAME TO console_audit")
        .await
        .unwrap();
    let dropped = browser
        .post(
            "/console/dead-letter/drop",
            &[("csrf", &csrf), ("id", "msg_bad_1"), ("confirm", "yes")],
        )
        .await;
    assert!(
        dropped.body.contains("Dropped <strong>1</strong>"),
        "{}",
        dropped.body
    );
    wait_for_count(&broker, &broker.topology.dead_queue(), 0).await;
    assert_eq!(
        crate::helpers::scalar(
            &db.conn,
            "SELECT count(*) FROM console_audit WHERE action = 'drop' AND count = 1 AND done = 1"
        )
        .await,
        1
    );
    worker.stop().await;
}

#[tokio::test]
async fn a_refused_login_never_logs_a_name_that_is_no_user_s() {
    let db = TestDb::migrated().await;
    let broker = TestBroker::new().await;
    let users = users_setting();
    let (logs, _guard) = crate::secrets::capture_logs();
    let worker = spawn_worker(&db, &broker, &[("CONSOLE_USERS", &users)]).await;
    let mut browser = Browser::new(worker.port);
    // The key typed into the name field, and a forged log line.
    for (name, key) in [
        (OPERATOR_KEY, "x"),
        ("evil\nINFO console login user=ops", "x"),
        ("ops", "wrong-key"),
    ] {
        let page = browser
            .post("/console/login", &[("name", name), ("key", key)])
            .await;
        assert_eq!(page.status, 401, "{}", page.body);
    }
    worker.stop().await;
    let text = logs.text();
    assert!(text.contains("console login refused"), "{text}");
    assert!(!text.contains(OPERATOR_KEY), "{text}");
    assert!(!text.contains("evil"), "{text}");
    assert!(
        text.contains("user=ops") || text.contains("\"user\":\"ops\""),
        "a configured user's name is logged: {text}"
    );
}

#[tokio::test]
async fn a_confirmed_replay_of_all_matching_acts_on_what_its_preview_listed() {
    let db = TestDb::migrated().await;
    let broker = TestBroker::new().await;
    let users = users_setting();
    let worker = spawn_worker(&db, &broker, &[("CONSOLE_USERS", &users)]).await;
    for n in 1..=2 {
        broker
            .publish_event(&format!("msg_prev_{n}"), b"{not json")
            .await;
    }
    wait_for_count(&broker, &broker.topology.dead_queue(), 2).await;
    let mut browser = Browser::new(worker.port);
    let csrf = browser.login("ops", OPERATOR_KEY).await;
    let preview = browser
        .post(
            "/console/dead-letters/replay",
            &[("csrf", &csrf), ("reason", "envelope")],
        )
        .await;
    assert!(
        preview.body.contains("replay <strong>2</strong>"),
        "{}",
        preview.body
    );
    let selection = hidden_value(&preview.body, "selection");
    // Meanwhile: one previewed letter is dropped, and a new one that matches arrives.
    let dropped = browser
        .post(
            "/console/dead-letter/drop",
            &[("csrf", &csrf), ("id", "msg_prev_1"), ("confirm", "yes")],
        )
        .await;
    assert!(
        dropped.body.contains("Dropped <strong>1</strong>"),
        "{}",
        dropped.body
    );
    broker.publish_event("msg_prev_3", b"{not json").await;
    wait_for_count(&broker, &broker.topology.dead_queue(), 2).await;

    let done = browser
        .post(
            "/console/dead-letters/replay",
            &[
                ("csrf", &csrf),
                ("reason", "envelope"),
                ("selection", &selection),
                ("confirm", "yes"),
            ],
        )
        .await;
    assert!(
        done.body.contains("Replayed <strong>1</strong>"),
        "{}",
        done.body
    );
    assert!(
        done.body.contains("1 of the 2 previewed were no longer"),
        "{}",
        done.body
    );
    // msg_prev_3 was not previewed: it was not replayed (it is still the oldest there).
    let audit = crate::helpers::scalar(
        &db.conn,
        "SELECT count(*) FROM console_audit WHERE action = 'replay_matching' AND count = 1 AND done = 1",
    )
    .await;
    assert_eq!(audit, 1);
    // A confirmation is used once.
    let again = browser
        .post(
            "/console/dead-letters/replay",
            &[
                ("csrf", &csrf),
                ("reason", "envelope"),
                ("selection", &selection),
                ("confirm", "yes"),
            ],
        )
        .await;
    assert_eq!(again.status, 409, "{}", again.body);
    worker.stop().await;
}

/// Stores `clerk_user_id` (with an email the page must never show) and one calendar connection
/// of `provider` in `status` / `reason`, its status changed `minutes_ago`.
async fn store_connection(
    db: &TestDb,
    clerk_user_id: &str,
    provider: &str,
    status: &str,
    reason: Option<&str>,
    minutes_ago: i64,
) {
    db.conn
        .execute_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "WITH u AS (INSERT INTO users (id, clerk_user_id, clerk_updated_at, email) \
               VALUES (gen_random_uuid(), $1, 1, $1 || '@mail.example') \
               ON CONFLICT (clerk_user_id) DO UPDATE SET clerk_updated_at = users.clerk_updated_at \
               RETURNING id) \
             INSERT INTO user_calendar_connections (id, user_id, provider, external_account_id, \
               provider_user_id, email, scopes, status, status_reason, status_changed_at, \
               status_checked_at) \
             SELECT gen_random_uuid(), u.id, $2, 'eac_' || $1 || $2, 'p_' || $1, \
               $1 || '@calendar.example', 'calendar', $3, $4, \
               now() - make_interval(mins => $5::int), now() FROM u",
            [
                clerk_user_id.into(),
                provider.into(),
                status.into(),
                reason.map(str::to_owned).into(),
                i32::try_from(minutes_ago).unwrap().into(),
            ],
        ))
        .await
        .unwrap();
}

#[tokio::test]
async fn the_connections_page_counts_connections_and_lists_who_must_reconnect_to_viewers_and_operators()
 {
    let db = TestDb::migrated().await;
    let broker = TestBroker::new().await;
    store_connection(
        &db,
        "user_rc_old",
        "microsoft",
        "needs_reconnect",
        Some("grant_revoked"),
        120,
    )
    .await;
    store_connection(
        &db,
        "user_rc_new",
        "google",
        "needs_reconnect",
        Some("account_unverified"),
        1,
    )
    .await;
    store_connection(
        &db,
        "user_rc_<b>x</b>",
        "google",
        "needs_reconnect",
        Some("missing_scopes"),
        30,
    )
    .await;
    store_connection(&db, "user_rc_fine", "google", "connected", None, 5).await;
    store_connection(&db, "user_rc_fine", "microsoft", "connected", None, 5).await;
    store_connection(
        &db,
        "user_rc_down",
        "microsoft",
        "unavailable",
        Some("clerk_unavailable"),
        2,
    )
    .await;
    let users = users_setting();
    let worker = spawn_worker(&db, &broker, &[("CONSOLE_USERS", &users)]).await;

    for (name, key) in [("watcher", VIEWER_KEY), ("ops", OPERATOR_KEY)] {
        let mut browser = Browser::new(worker.port);
        browser.login(name, key).await;
        let overview = browser.get("/console").await;
        assert!(
            overview
                .body
                .contains("<a href=\"/console/connections\">Calendar connections</a>"),
            "{}",
            overview.body
        );
        let page = browser.get("/console/connections").await;
        assert_eq!(page.status, 200, "{name}: {}", page.body);
        assert_secure_headers(&page);
        let body = &page.body;
        for counted in [
            "<td>google</td><td>connected</td><td>-</td><td>1</td>",
            "<td>google</td><td>needs_reconnect</td><td>account_unverified</td><td>1</td>",
            "<td>google</td><td>needs_reconnect</td><td>missing_scopes</td><td>1</td>",
            "<td>microsoft</td><td>connected</td><td>-</td><td>1</td>",
            "<td>microsoft</td><td>needs_reconnect</td><td>grant_revoked</td><td>1</td>",
            "<td>microsoft</td><td>unavailable</td><td>clerk_unavailable</td><td>1</td>",
        ] {
            assert!(body.contains(counted), "{name}: no {counted} in {body}");
        }
        assert!(
            body.contains("3 connection(s) need reconnecting, newest first."),
            "{body}"
        );
        // Newest first; escaped; only those needing reconnecting; never an email.
        let at = |needle: &str| {
            body.find(needle)
                .unwrap_or_else(|| panic!("no {needle} in {body}"))
        };
        let (new, odd, old) = (
            at("<td>user_rc_new</td><td>google</td><td>account_unverified</td>"),
            at("<td>user_rc_&lt;b&gt;x&lt;/b&gt;</td><td>google</td><td>missing_scopes</td>"),
            at("<td>user_rc_old</td><td>microsoft</td><td>grant_revoked</td>"),
        );
        assert!(new < odd && odd < old, "newest first: {body}");
        assert!(!body.contains("<b>x</b>"), "escaped: {body}");
        assert!(
            !body.contains("user_rc_fine") && !body.contains("user_rc_down"),
            "{body}"
        );
        assert!(!body.contains("example"), "no email: {body}");
        assert!(
            !body.contains("/replay") && !body.contains("/drop"),
            "no actions: {body}"
        );
    }

    // Many: the newest 200 are listed, and the page says how many there are.
    db.conn
        .execute_unprepared(
            "WITH u AS (INSERT INTO users (id, clerk_user_id, clerk_updated_at) \
               SELECT gen_random_uuid(), 'user_rc_many_' || n, 1 FROM generate_series(1, 250) n \
               RETURNING id, clerk_user_id) \
             INSERT INTO user_calendar_connections (id, user_id, provider, external_account_id, \
               provider_user_id, scopes, status, status_reason, status_changed_at) \
             SELECT gen_random_uuid(), id, 'google', 'eac_' || clerk_user_id, 'p', 'calendar', \
               'needs_reconnect', 'grant_revoked', \
               now() - make_interval(days => 1, secs => substr(clerk_user_id, 14)::int) FROM u",
        )
        .await
        .unwrap();
    let mut browser = Browser::new(worker.port);
    browser.login("watcher", VIEWER_KEY).await;
    let page = browser.get("/console/connections").await;
    assert_eq!(page.status, 200, "{}", page.body);
    let body = &page.body;
    assert!(
        body.contains(
            "253 connection(s) need reconnecting; the newest 200 are listed, newest first."
        ),
        "{body}"
    );
    assert!(
        body.contains("<td>google</td><td>needs_reconnect</td><td>grant_revoked</td><td>250</td>"),
        "{body}"
    );
    assert_eq!(body.matches("<td>user_rc_").count(), 200, "{body}");
    // The three recent ones, then the many from newest (1 s older than a day) on.
    assert!(body.contains("<td>user_rc_many_197</td>"), "{body}");
    assert!(!body.contains("<td>user_rc_many_198</td>"), "{body}");
    assert!(body.find("<td>user_rc_old</td>") < body.find("<td>user_rc_many_1</td>"));
    assert!(body.find("<td>user_rc_many_1</td>") < body.find("<td>user_rc_many_2</td>"));
    worker.stop().await;
}

#[tokio::test]
async fn a_dead_letter_s_trace_id_links_to_the_tracing_ui_and_one_without_a_trace_shows_a_dash() {
    let db = TestDb::migrated().await;
    let broker = TestBroker::new().await;
    let users = users_setting();
    let template = "https://tempo.example.com/explore?traceId={trace_id}&from=now-1h";
    let worker = spawn_worker(
        &db,
        &broker,
        &[("CONSOLE_USERS", &users), ("TRACE_URL_TEMPLATE", template)],
    )
    .await;
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    broker
        .publish_event_with_headers(
            "msg_traced",
            b"{not json",
            &[("traceparent", &format!("00-{trace_id}-00f067aa0ba902b7-01"))],
        )
        .await;
    broker.publish_event("msg_untraced", b"{not json").await;
    broker
        .publish_event_with_headers(
            "msg_bad_trace",
            b"{not json",
            &[("traceparent", "00-<script>-00f067aa0ba902b7-01")],
        )
        .await;
    wait_for_count(&broker, &broker.topology.dead_queue(), 3).await;
    let mut browser = Browser::new(worker.port);
    browser.login("watcher", VIEWER_KEY).await;

    let traced = browser.get("/console/dead-letter?id=msg_traced").await;
    let untraced = browser.get("/console/dead-letter?id=msg_untraced").await;
    let bad = browser.get("/console/dead-letter?id=msg_bad_trace").await;

    assert_eq!(traced.status, 200, "{}", traced.body);
    assert!(
        traced.body.contains(&format!(
            "<tr><th>trace</th><td><a href=\"https://tempo.example.com/explore?traceId={trace_id}&amp;from=now-1h\" \
             rel=\"noreferrer\" target=\"_blank\">{trace_id}</a></td></tr>"
        )),
        "{}",
        traced.body
    );
    for page in [&untraced, &bad] {
        assert_eq!(page.status, 200, "{}", page.body);
        assert!(
            page.body.contains("<tr><th>trace</th><td>-</td></tr>"),
            "{}",
            page.body
        );
        assert!(!page.body.contains("tempo.example.com"), "{}", page.body);
    }
    assert!(
        !bad.body.contains("<script>"),
        "a malformed traceparent is shown escaped in the headers"
    );
    wait_for_count(&broker, &broker.topology.dead_queue(), 3).await;
    worker.stop().await;
}
