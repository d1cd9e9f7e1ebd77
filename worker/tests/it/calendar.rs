//! Calendar connections from Clerk's external accounts, with tokens from a fake Clerk Backend API.

use std::{collections::BTreeMap, time::Duration};

use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, Statement};
use store::{
    Provider,
    crypto::{Binding, FORMAT_LEGACY, TokenCipher, TokenColumn},
};
use testkit::{
    TestBroker, TestDb,
    events::{self, google_calendar_account, microsoft_calendar_account, user_event_with_accounts},
    eventually,
    fake_clerk::{FakeClerk, SECRET_KEY},
};

use crate::helpers::{TestWorker, scalar, spawn_worker, state, worker_settings};

const KEY_A: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";
const KEY_B: &str = "ZmVkY2JhOTg3NjU0MzIxMGZlZGNiYTk4NzY1NDMyMTA=";
const USER: &str = "user_cal01";

#[derive(Debug, PartialEq, Eq)]
struct Connection {
    status: String,
    token: Option<String>,
    key_id: Option<String>,
    external_account_id: String,
}

async fn connections(
    db: &DatabaseConnection,
    cipher: &TokenCipher,
) -> BTreeMap<String, Connection> {
    db.query_all_raw(Statement::from_string(
        DbBackend::Postgres,
        "SELECT id, user_id, provider, provider_user_id, status, access_token, token_key_id, \
                token_format, external_account_id \
         FROM user_calendar_connections",
    ))
    .await
    .unwrap()
    .into_iter()
    .map(|row| {
        let blob: Option<Vec<u8>> = row.try_get("", "access_token").unwrap();
        let key_id: Option<String> = row.try_get("", "token_key_id").unwrap();
        let binding = Binding {
            connection_id: row.try_get("", "id").unwrap(),
            user_id: row.try_get("", "user_id").unwrap(),
            provider: Provider::parse(&row.try_get::<String>("", "provider").unwrap()).unwrap(),
            column: TokenColumn::AccessToken,
        };
        let format: i16 = row.try_get("", "token_format").unwrap();
        let token = blob.map(|b| {
            cipher
                .open(key_id.as_deref().unwrap(), &b, format, &binding)
                .unwrap()
        });
        (
            format!(
                "{}:{}",
                row.try_get::<String>("", "provider").unwrap(),
                row.try_get::<String>("", "provider_user_id").unwrap()
            ),
            Connection {
                status: row.try_get("", "status").unwrap(),
                token,
                key_id,
                external_account_id: row.try_get("", "external_account_id").unwrap(),
            },
        )
    })
    .collect()
}

async fn flags(db: &DatabaseConnection) -> (bool, bool) {
    let row = db
        .query_one_raw(Statement::from_string(
            DbBackend::Postgres,
            format!("SELECT google_calendar_connected, microsoft_calendar_connected FROM users WHERE clerk_user_id = '{USER}'"),
        ))
        .await
        .unwrap()
        .unwrap();
    (
        row.try_get("", "google_calendar_connected").unwrap(),
        row.try_get("", "microsoft_calendar_connected").unwrap(),
    )
}

async fn spawn_calendar_worker(
    db: &TestDb,
    broker: &TestBroker,
    clerk: &FakeClerk,
    keys: &str,
) -> TestWorker {
    let url = clerk.url();
    spawn_worker(
        db,
        broker,
        &[
            ("CLERK_SECRET_KEY", SECRET_KEY),
            ("CLERK_API_URL", &url),
            ("TOKEN_ENCRYPTION_KEY", keys),
        ],
    )
    .await
}

/// Runs `worker rotate-token-key` with these keys; returns its standard output.
fn rotate_token_key(db: &TestDb, broker: &TestBroker, keys: &str) -> String {
    let settings = worker_settings(db, broker, &[("TOKEN_ENCRYPTION_KEY", keys)]);
    let (ok, stdout, stderr) = crate::helpers::worker_cli(settings, &["rotate-token-key"]);
    assert!(ok, "{stderr}");
    stdout
}

async fn send(
    broker: &TestBroker,
    db: &DatabaseConnection,
    id: &str,
    version: i64,
    accounts: Vec<serde_json::Value>,
) {
    let before = scalar(db, "SELECT count(*) FROM processed_events").await;
    let body = user_event_with_accounts(
        "user.updated",
        &state(USER, Some("cal@example.com"), "Cal", version),
        accounts,
    );
    broker.publish_event(id, &body).await;
    eventually(Duration::from_secs(30), "the event settled", || async {
        (scalar(db, "SELECT count(*) FROM processed_events").await > before).then_some(())
    })
    .await;
}

/// An hour from now, in ms: when the tokens the fake Clerk serves expire.
fn in_an_hour() -> i64 {
    chrono::Utc::now().timestamp_millis() + 3_600_000
}

/// The fake Clerk serves USER's Google token (account g-100) for this external account.
fn serve_google_token(clerk: &FakeClerk, token: &str, external_account_id: &str, expires: i64) {
    clerk.set_token(
        USER,
        "oauth_google",
        token,
        Some(expires),
        "g-100",
        external_account_id,
    );
}

/// The raw column never holds a token in clear.
async fn assert_no_token_stored_in_clear(db: &DatabaseConnection) {
    let clear = scalar(
        db,
        "SELECT count(*) FROM user_calendar_connections \
         WHERE position(convert_to('EwB-ms-token-1', 'UTF8') in access_token) > 0 \
            OR position(convert_to('ya29', 'UTF8') in access_token) > 0",
    )
    .await;
    assert_eq!(clear, 0);
}

/// Deleting the user deletes the connections.
async fn delete_the_user_and_see_its_connections_go(broker: &TestBroker, db: &DatabaseConnection) {
    broker
        .publish_event("msg_cal_del", &events::user_deleted(USER, 99))
        .await;
    eventually(Duration::from_secs(20), "connections gone", || async {
        (scalar(db, "SELECT count(*) FROM user_calendar_connections").await == 0).then_some(())
    })
    .await;
}

#[tokio::test]
async fn connecting_google_then_microsoft_then_removing_google_keeps_rows_flags_and_tokens_right() {
    let db = TestDb::migrated().await;
    let broker = TestBroker::new().await;
    let clerk = FakeClerk::start().await;
    let cipher = TokenCipher::from_setting(KEY_A).unwrap();
    let worker = spawn_calendar_worker(&db, &broker, &clerk, KEY_A).await;
    let expires = in_an_hour();
    serve_google_token(&clerk, "ya29.google-token-1", "eac_g1", expires);
    clerk.set_token(
        USER,
        "oauth_microsoft",
        "EwB-ms-token-1",
        Some(expires),
        "m-200",
        "eac_m1",
    );
    let google = google_calendar_account("g-100", "eac_g1");
    let microsoft = microsoft_calendar_account("m-200", "eac_m1");

    // Step 1: Google.
    send(&broker, &db.conn, "msg_cal_1", 10, vec![google.clone()]).await;
    let rows = connections(&db.conn, &cipher).await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    let g = &rows["google:g-100"];
    assert_eq!(g.status, "connected");
    assert_eq!(g.token.as_deref(), Some("ya29.google-token-1"));
    assert_eq!(g.external_account_id, "eac_g1");
    assert_eq!(flags(&db.conn).await, (true, false));

    // Step 2: Microsoft too.
    let both = vec![google.clone(), microsoft.clone()];
    send(&broker, &db.conn, "msg_cal_2", 20, both.clone()).await;
    let rows = connections(&db.conn, &cipher).await;
    assert_eq!(rows.len(), 2);
    assert_eq!(
        rows["microsoft:m-200"].token.as_deref(),
        Some("EwB-ms-token-1")
    );
    assert_eq!(flags(&db.conn).await, (true, true));

    // Step 3: Google removed.
    send(&broker, &db.conn, "msg_cal_3", 30, vec![microsoft.clone()]).await;
    let rows = connections(&db.conn, &cipher).await;
    assert_eq!(rows.keys().collect::<Vec<_>>(), vec!["microsoft:m-200"]);
    assert_eq!(flags(&db.conn).await, (false, true));

    // A stale event (still with Google) does not bring the connection back.
    send(&broker, &db.conn, "msg_cal_2b", 25, both).await;
    assert_eq!(connections(&db.conn, &cipher).await.len(), 1);
    assert_eq!(flags(&db.conn).await, (false, true));

    assert_no_token_stored_in_clear(&db.conn).await;
    delete_the_user_and_see_its_connections_go(&broker, &db.conn).await;
    worker.stop().await;
}

#[tokio::test]
async fn clerk_failing_twice_then_answering_still_lands_the_connection_without_dead_letters() {
    let db = TestDb::migrated().await;
    let broker = TestBroker::new().await;
    let clerk = FakeClerk::start().await;
    let cipher = TokenCipher::from_setting(KEY_A).unwrap();
    let worker = spawn_calendar_worker(&db, &broker, &clerk, KEY_A).await;
    clerk.set_token(
        USER,
        "oauth_google",
        "ya29.after-500s",
        None,
        "g-100",
        "eac_g1",
    );
    clerk.fail_next(500, 2);

    send(
        &broker,
        &db.conn,
        "msg_cal_500",
        10,
        vec![google_calendar_account("g-100", "eac_g1")],
    )
    .await;

    let rows = connections(&db.conn, &cipher).await;
    assert_eq!(
        rows["google:g-100"].token.as_deref(),
        Some("ya29.after-500s")
    );
    assert_eq!(flags(&db.conn).await, (true, false));
    assert!(clerk.requests() >= 3);
    assert_eq!(broker.count(&broker.topology.dead_queue()).await, 0);

    // Rate limited (429) then served: retried as well.
    clerk.set_token(
        USER,
        "oauth_google",
        "ya29.after-429",
        None,
        "g-100",
        "eac_g1",
    );
    clerk.fail_next(429, 1);
    send(
        &broker,
        &db.conn,
        "msg_cal_429",
        20,
        vec![google_calendar_account("g-100", "eac_g1")],
    )
    .await;
    assert_eq!(
        connections(&db.conn, &cipher).await["google:g-100"]
            .token
            .as_deref(),
        Some("ya29.after-429")
    );
    assert_eq!(broker.count(&broker.topology.dead_queue()).await, 0);
    worker.stop().await;
}

#[tokio::test]
async fn a_connection_whose_token_clerk_will_not_give_is_recorded_as_needing_a_reconnect_with_a_reason()
 {
    let db = TestDb::migrated().await;
    let broker = TestBroker::new().await;
    let clerk = FakeClerk::start().await;
    let worker = spawn_calendar_worker(&db, &broker, &clerk, KEY_A).await;

    send(
        &broker,
        &db.conn,
        "msg_cal_none",
        10,
        vec![microsoft_calendar_account("m-1", "eac_m")],
    )
    .await;

    let row = db
        .conn
        .query_one_raw(Statement::from_string(
            DbBackend::Postgres,
            "SELECT status, status_reason, status_detail, access_token IS NULL AS no_token \
             FROM user_calendar_connections",
        ))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        row.try_get::<String>("", "status").unwrap(),
        "needs_reconnect"
    );
    assert_eq!(
        row.try_get::<String>("", "status_reason").unwrap(),
        "grant_revoked"
    );
    assert!(
        row.try_get::<String>("", "status_detail")
            .unwrap()
            .contains("no access token")
    );
    assert!(row.try_get::<bool>("", "no_token").unwrap());
    assert_eq!(flags(&db.conn).await, (false, false));

    // Clerk answering 404 (user or account gone) is recorded the same way, not retried forever.
    clerk.fail_next(404, 1);
    send(
        &broker,
        &db.conn,
        "msg_cal_404",
        20,
        vec![google_calendar_account("g-9", "eac_g9")],
    )
    .await;
    let status = db
        .conn
        .query_one_raw(Statement::from_string(
            DbBackend::Postgres,
            "SELECT status FROM user_calendar_connections WHERE provider = 'google'",
        ))
        .await
        .unwrap()
        .unwrap()
        .try_get::<String>("", "status")
        .unwrap();
    assert_eq!(status, "needs_reconnect");
    assert_eq!(broker.count(&broker.topology.dead_queue()).await, 0);
    worker.stop().await;
}

#[tokio::test]
async fn tokens_written_under_key_a_read_back_after_rotating_to_b_and_none_stay_under_a() {
    let db = TestDb::migrated().await;
    let broker = TestBroker::new().await;
    let clerk = FakeClerk::start().await;
    let worker = spawn_calendar_worker(&db, &broker, &clerk, KEY_A).await;
    clerk.set_token(
        USER,
        "oauth_google",
        "ya29.rotate-me",
        None,
        "g-100",
        "eac_g1",
    );
    clerk.set_token(
        USER,
        "oauth_microsoft",
        "EwB-rotate-me",
        None,
        "m-200",
        "eac_m1",
    );
    send(
        &broker,
        &db.conn,
        "msg_rot_1",
        10,
        vec![
            google_calendar_account("g-100", "eac_g1"),
            microsoft_calendar_account("m-200", "eac_m1"),
        ],
    )
    .await;
    worker.stop().await;
    let a = TokenCipher::from_setting(KEY_A).unwrap();
    let rotated = TokenCipher::from_setting(&format!("{KEY_B} {KEY_A}")).unwrap();
    let before = connections(&db.conn, &rotated).await;
    assert!(
        before
            .values()
            .all(|c| c.key_id.as_deref() == Some(a.primary_key_id()))
    );

    let stdout = rotate_token_key(&db, &broker, &format!("{KEY_B} {KEY_A}"));
    assert!(stdout.contains("re-encrypted 2"), "{stdout}");

    let only_b = TokenCipher::from_setting(KEY_B).unwrap();
    let after = connections(&db.conn, &only_b).await;
    assert_eq!(
        after["google:g-100"].token.as_deref(),
        Some("ya29.rotate-me")
    );
    assert_eq!(
        after["microsoft:m-200"].token.as_deref(),
        Some("EwB-rotate-me")
    );
    let under_a = scalar(
        &db.conn,
        &format!(
            "SELECT count(*) FROM user_calendar_connections WHERE token_key_id = '{}'",
            a.primary_key_id()
        ),
    )
    .await;
    assert_eq!(under_a, 0);
}

#[tokio::test]
async fn rotate_token_key_reseals_legacy_unbound_tokens_to_their_rows() {
    let db = TestDb::migrated().await;
    let broker = TestBroker::new().await;
    let clerk = FakeClerk::start().await;
    let worker = spawn_calendar_worker(&db, &broker, &clerk, KEY_A).await;
    clerk.set_token(USER, "oauth_google", "ya29.old", None, "g-100", "eac_g1");
    send(
        &broker,
        &db.conn,
        "msg_legacy_1",
        10,
        vec![google_calendar_account("g-100", "eac_g1")],
    )
    .await;
    worker.stop().await;
    // As a row written before tokens were bound: sealed without associated data, format 1.
    let a = TokenCipher::from_setting(KEY_A).unwrap();
    let legacy = a.seal_legacy_for_tests("ya29.old").unwrap();
    db.conn
        .execute_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "UPDATE user_calendar_connections SET access_token = $1, token_format = $2",
            [legacy.blob.into(), FORMAT_LEGACY.into()],
        ))
        .await
        .unwrap();

    let stdout = rotate_token_key(&db, &broker, KEY_A);
    assert!(stdout.contains("re-encrypted 1"), "{stdout}");
    // `connections` opens bound values only: the row reads back, bound, under the same key.
    let after = connections(&db.conn, &a).await;
    assert_eq!(after["google:g-100"].token.as_deref(), Some("ya29.old"));
    assert_eq!(
        scalar(
            &db.conn,
            "SELECT count(*) FROM user_calendar_connections WHERE token_format <> 2"
        )
        .await,
        0
    );
}

/// The api on the same database, with a service key, asking the fake Clerk.
async fn spawn_api(db: &TestDb, clerk: &FakeClerk) -> String {
    let settings: std::collections::HashMap<&str, String> = [
        ("API_ADDR", "127.0.0.1:0".to_owned()),
        ("API_SERVICE_KEYS", API_KEY.to_owned()),
        ("TOKEN_ENCRYPTION_KEY", KEY_A.to_owned()),
        ("CLERK_SECRET_KEY", SECRET_KEY.to_owned()),
        ("CLERK_API_URL", clerk.url()),
    ]
    .into_iter()
    .chain(db.service_settings())
    .collect();
    let config = api::Config::from_lookup(move |name| settings.get(name).cloned()).unwrap();
    let app = api::Application::build(config).await.unwrap();
    let address = format!("http://127.0.0.1:{}", app.port());
    tokio::spawn(app.run_until_stopped(std::future::pending()));
    address
}

const API_KEY: &str = "svc-worker-test-key-0123456789abcdef";

async fn api_status(client: &reqwest::Client, url: String) -> (u16, serde_json::Value) {
    let response = client.get(url).bearer_auth(API_KEY).send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or_default())
}

async fn set_calendar_status(
    client: &reqwest::Client,
    api: &str,
    user_id: &str,
    connected: bool,
) -> (u16, serde_json::Value) {
    let response = client
        .patch(format!("{api}/users/{user_id}/calendar-status"))
        .bearer_auth(API_KEY)
        .json(&serde_json::json!({"provider": "google", "connected": connected}))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or_default())
}

/// USER's id in the api.
async fn api_user_id(client: &reqwest::Client, api: &str) -> String {
    let (_, user) = api_status(client, format!("{api}/users/by-clerk-id/{USER}")).await;
    user["id"].as_str().unwrap().to_owned()
}

/// The user disconnects Google (or connects it again) through the api, which answers with the
/// new flag.
async fn choose_google(client: &reqwest::Client, api: &str, user_id: &str, connected: bool) {
    let (status, body) = set_calendar_status(client, api, user_id, connected).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["google_calendar_connected"], connected);
}

/// The fake Clerk lists USER again, with this Google account.
fn clerk_lists_the_user_with(clerk: &FakeClerk, google: &serde_json::Value) {
    let mut clerk_user: serde_json::Value = serde_json::from_slice(&user_event_with_accounts(
        "user.updated",
        &state(USER, Some("cal@example.com"), "Cal", 20),
        vec![google.clone()],
    ))
    .unwrap();
    clerk.set_users(vec![clerk_user["data"].take()]);
}

/// Google account g-100 removed and added again in Clerk: a new account (eac_g2), created
/// after the user's choice, with a token of its own.
fn google_added_again(clerk: &FakeClerk, expires: i64) -> serde_json::Value {
    let mut readded = google_calendar_account("g-100", "eac_g2");
    readded["created_at"] = serde_json::json!(chrono::Utc::now().timestamp_millis() + 1_000);
    serve_google_token(clerk, "ya29.readded", "eac_g2", expires);
    readded
}

#[tokio::test]
async fn a_disconnect_lasts_through_later_updates_until_the_user_connects_again() {
    let db = TestDb::migrated().await;
    let broker = TestBroker::new().await;
    let clerk = FakeClerk::start().await;
    let cipher = TokenCipher::from_setting(KEY_A).unwrap();
    let worker = spawn_calendar_worker(&db, &broker, &clerk, KEY_A).await;
    let api = spawn_api(&db, &clerk).await;
    let client = reqwest::Client::new();
    let expires = in_an_hour();
    serve_google_token(&clerk, "ya29.first", "eac_g1", expires);
    let google = google_calendar_account("g-100", "eac_g1");
    send(&broker, &db.conn, "msg_disc_1", 10, vec![google.clone()]).await;
    assert_eq!(flags(&db.conn).await, (true, false));
    let user_id = api_user_id(&client, &api).await;
    let token_url = format!("{api}/users/{user_id}/calendar-connections/google/token");

    // The user disconnects Google.
    choose_google(&client, &api, &user_id, false).await;

    // Clerk still lists the account in the user's next update: the choice holds.
    let requests_before = clerk.requests();
    send(&broker, &db.conn, "msg_disc_2", 20, vec![google.clone()]).await;
    assert!(connections(&db.conn, &cipher).await.is_empty());
    assert_eq!(flags(&db.conn).await, (false, false));
    assert_eq!(api_status(&client, token_url.clone()).await.0, 404);
    assert_eq!(
        clerk.requests(),
        requests_before,
        "no token was fetched for the disconnected account"
    );

    // The user connects again: the account comes back from Clerk, with a fresh token.
    clerk_lists_the_user_with(&clerk, &google);
    serve_google_token(&clerk, "ya29.second", "eac_g1", expires);
    choose_google(&client, &api, &user_id, true).await;
    let (status, token) = api_status(&client, token_url.clone()).await;
    assert_eq!(status, 200, "{token}");
    assert_eq!(token["access_token"], "ya29.second");
    // And later updates keep it.
    send(&broker, &db.conn, "msg_disc_3", 30, vec![google.clone()]).await;
    assert_eq!(flags(&db.conn).await, (true, false));

    // Disconnected again, then the account is removed and added again in Clerk: that one
    // connects.
    assert_eq!(
        set_calendar_status(&client, &api, &user_id, false).await.0,
        200
    );
    let readded = google_added_again(&clerk, expires);
    send(&broker, &db.conn, "msg_disc_4", 40, vec![readded]).await;
    let rows = connections(&db.conn, &cipher).await;
    assert_eq!(rows["google:g-100"].token.as_deref(), Some("ya29.readded"));
    assert_eq!(flags(&db.conn).await, (true, false));
    worker.stop().await;
}
