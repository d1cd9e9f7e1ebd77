//! Starting the real API on port 0 against a fresh migrated database, signing session tokens
//! with key pairs made here, and planting rows.

use std::{
    collections::HashMap,
    io::Write,
    sync::{Arc, LazyLock, Mutex, Once},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rsa::{
    RsaPrivateKey,
    pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding},
    rand_core::OsRng,
};
use sea_orm::{ConnectionTrait, DbBackend, Statement};
use serde_json::{Value, json};
use store::crypto::{Binding, TokenCipher, TokenColumn};
use testkit::TestDb;
use uuid::Uuid;

/// The service key every test app accepts.
pub const SERVICE_KEY: &str = "svc-test-key-0123456789abcdef0123456789";
/// A second accepted service key (rotation).
pub const SERVICE_KEY_2: &str = "svc-test-key-second-0123456789abcdef";
/// A service key with the `read` scope (`read:<key>` in `API_SERVICE_KEYS`).
pub const READ_KEY: &str = "svc-read-only-key-0123456789abcdef0123";
/// A service key with the `tokens` scope.
pub const TOKENS_KEY: &str = "svc-tokens-key-0123456789abcdef0123456";
/// A base64 32-byte `TOKEN_ENCRYPTION_KEY`.
pub const TOKEN_KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

/// An RSA key pair in PEM form.
pub struct KeyPair {
    pub private_pem: String,
    pub public_pem: String,
}

impl KeyPair {
    fn generate() -> Self {
        let private = RsaPrivateKey::new(&mut OsRng, 2048).expect("RSA key");
        Self {
            private_pem: private
                .to_pkcs8_pem(LineEnding::LF)
                .expect("private PEM")
                .to_string(),
            public_pem: private
                .to_public_key()
                .to_public_key_pem(LineEnding::LF)
                .expect("public PEM"),
        }
    }
}

/// The Clerk instance's key pair (the API trusts its public key).
pub static CLERK_KEYS: LazyLock<KeyPair> = LazyLock::new(KeyPair::generate);
/// Another key pair, which the API does not trust.
pub static OTHER_KEYS: LazyLock<KeyPair> = LazyLock::new(KeyPair::generate);

/// Seconds since the epoch.
pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Claims like Clerk's for `sub`, valid now for a minute.
pub fn claims(sub: &str) -> Value {
    let now = now();
    json!({
        "sub": sub, "sid": "sess_test", "iss": "https://clerk.example.test",
        "azp": "http://localhost:3000", "exp": now + 60, "nbf": now - 10, "iat": now - 10,
        "jti": "jti_test", "v": 2,
    })
}

/// `claims` signed RS256 with `keys`.
pub fn sign_with(claims: &Value, keys: &KeyPair) -> String {
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some("ins_test".into());
    jsonwebtoken::encode(
        &header,
        claims,
        &EncodingKey::from_rsa_pem(keys.private_pem.as_bytes()).unwrap(),
    )
    .unwrap()
}

/// A valid session token of the Clerk user `sub`.
pub fn session_token(sub: &str) -> String {
    sign_with(&claims(sub), &CLERK_KEYS)
}

/// A JWT assembled by hand from a header and claims, with this signature part.
pub fn raw_jwt(header: &Value, claims: &Value, signature: &str) -> String {
    format!(
        "{}.{}.{signature}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    )
}

/// A running API and its database.
pub struct TestApp {
    pub address: String,
    pub db: TestDb,
    pub client: reqwest::Client,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// Every log line the test process wrote (JSON, one per line).
static LOGS: LazyLock<Arc<Mutex<Vec<u8>>>> = LazyLock::new(Arc::default);

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

/// Sends the process's logs to [`logs`] (once).
fn capture_logs() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        telemetry::init_subscriber(
            "info",
            telemetry::LogFormat::Json,
            || Capture(LOGS.clone()),
            false,
        );
    });
}

/// What the process logged so far.
pub fn logs() -> String {
    String::from_utf8_lossy(&LOGS.lock().unwrap()).into_owned()
}

/// The settings every test app starts from.
/// The database through its PgBouncer when it has one (see [`TestDb`]).
pub fn base_settings(db: &TestDb) -> HashMap<String, String> {
    let mut settings = HashMap::from([
        ("API_ADDR".into(), "127.0.0.1:0".into()),
        ("DATABASE_MAX_CONNECTIONS".into(), "4".into()),
        (
            "API_SERVICE_KEYS".into(),
            format!("{SERVICE_KEY}, {SERVICE_KEY_2}, read:{READ_KEY}, tokens:{TOKENS_KEY}"),
        ),
        // As env files hold it: one line with literal \n sequences.
        (
            "CLERK_JWT_KEY".into(),
            CLERK_KEYS.public_pem.replace('\n', "\\n"),
        ),
    ]);
    settings.extend(
        db.service_settings()
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v)),
    );
    settings
}

/// The API with default test settings.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(&[]).await
}

/// The API with these settings on top of the defaults (an empty value removes a setting).
pub async fn spawn_app_with(overrides: &[(&str, &str)]) -> TestApp {
    capture_logs();
    let db = TestDb::migrated().await;
    let mut settings = base_settings(&db);
    for (name, value) in overrides {
        if value.is_empty() {
            settings.remove(*name);
        } else {
            settings.insert((*name).to_owned(), (*value).to_owned());
        }
    }
    let config = api::Config::from_lookup(move |name| settings.get(name).cloned()).unwrap();
    let app = api::Application::build(config).await.unwrap();
    let address = format!("http://127.0.0.1:{}", app.port());
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(app.run_until_stopped(async move {
        let _ = rx.await;
    }));
    TestApp {
        address,
        db,
        client: reqwest::Client::builder()
            .timeout(Duration::from_secs(20))
            .build()
            .unwrap(),
        shutdown: Some(tx),
    }
}

impl TestApp {
    /// `GET path` with `Authorization: Bearer token` when given.
    pub async fn get(&self, path: &str, token: Option<&str>) -> reqwest::Response {
        let mut request = self.client.get(format!("{}{path}", self.address));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send().await.unwrap()
    }

    /// `PATCH path` with a JSON body.
    pub async fn patch(&self, path: &str, token: Option<&str>, body: &Value) -> reqwest::Response {
        let mut request = self
            .client
            .patch(format!("{}{path}", self.address))
            .json(body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send().await.unwrap()
    }

    /// Inserts a user and returns its id.
    pub async fn insert_user(&self, clerk_user_id: &str, email: Option<&str>) -> Uuid {
        let id = Uuid::new_v4();
        self.db
            .conn
            .execute_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                "INSERT INTO users (id, clerk_user_id, email, first_name, last_name, \
                   clerk_updated_at) VALUES ($1, $2, $3, 'Ada', 'Lovelace', 1)",
                [
                    id.into(),
                    clerk_user_id.into(),
                    email.map(str::to_owned).into(),
                ],
            ))
            .await
            .unwrap();
        id
    }

    /// Inserts a calendar connection with these token bytes and returns its id.
    pub async fn insert_connection(&self, row: Connection<'_>) -> Uuid {
        let id = row.id.unwrap_or_else(Uuid::new_v4);
        self.db
            .conn
            .execute_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                "INSERT INTO user_calendar_connections (id, user_id, provider, \
                   external_account_id, provider_user_id, email, scopes, access_token, \
                   refresh_token, token_key_id, expires_at, status) \
                 VALUES ($1, $2, $3, $4, $5, 'ada@calendar.test', $6, $7, $8, $9, \
                   now() + make_interval(secs => $10), $11)",
                [
                    id.into(),
                    row.user_id.into(),
                    row.provider.into(),
                    format!("eac_{}", &id.simple().to_string()[..8]).into(),
                    row.provider_user_id.into(),
                    row.scopes.into(),
                    row.access_token.map(<[u8]>::to_vec).into(),
                    row.refresh_token.map(<[u8]>::to_vec).into(),
                    row.token_key_id.map(str::to_owned).into(),
                    (row.expires_in_secs as f64).into(),
                    row.status.into(),
                ],
            ))
            .await
            .unwrap();
        id
    }

    /// Plants a connected account of `provider` whose access token `token` is sealed to its row
    /// with [`TOKEN_KEY`], as the worker stores it; returns the connection's id.
    pub async fn plant_token(
        &self,
        user_id: Uuid,
        provider: &str,
        token: &str,
        expires_in_secs: i64,
    ) -> Uuid {
        let id = Uuid::new_v4();
        let binding = Binding {
            connection_id: id,
            user_id,
            provider: store::Provider::parse(provider).unwrap(),
            column: TokenColumn::AccessToken,
        };
        let sealed = TokenCipher::from_setting(TOKEN_KEY)
            .unwrap()
            .seal(token, &binding)
            .unwrap();
        self.insert_connection(Connection {
            id: Some(id),
            provider,
            token_key_id: Some(&sealed.key_id),
            expires_in_secs,
            ..Connection::google(user_id, &sealed.blob.0)
        })
        .await
    }

    /// Sets the `external_account_id` of a connection (to match what the fake Clerk serves).
    pub async fn set_external_account_id(&self, connection: Uuid, external_account_id: &str) {
        self.db
            .conn
            .execute_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                "UPDATE user_calendar_connections SET external_account_id = $2 WHERE id = $1",
                [connection.into(), external_account_id.into()],
            ))
            .await
            .unwrap();
    }

    /// How many connections of this provider the user has.
    pub async fn count_connections(&self, user_id: Uuid, provider: &str) -> i64 {
        let row = self
            .db
            .conn
            .query_one_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                "SELECT count(*) AS n FROM user_calendar_connections \
                 WHERE user_id = $1 AND provider = $2",
                [user_id.into(), provider.into()],
            ))
            .await
            .unwrap()
            .unwrap();
        row.try_get("", "n").unwrap()
    }
}

/// A connection row to plant.
pub struct Connection<'a> {
    /// The row's id (a new one when not given).
    pub id: Option<Uuid>,
    pub user_id: Uuid,
    pub provider: &'a str,
    pub provider_user_id: &'a str,
    pub scopes: &'a str,
    pub access_token: Option<&'a [u8]>,
    pub refresh_token: Option<&'a [u8]>,
    pub token_key_id: Option<&'a str>,
    pub expires_in_secs: i64,
    pub status: &'a str,
}

impl<'a> Connection<'a> {
    /// A connected Google account with these (ciphertext) token bytes.
    pub fn google(user_id: Uuid, access_token: &'a [u8]) -> Self {
        Self {
            id: None,
            user_id,
            provider: "google",
            provider_user_id: "google-user-1",
            scopes: "openid email https://www.googleapis.com/auth/calendar",
            access_token: Some(access_token),
            refresh_token: None,
            token_key_id: Some("0011223344556677"),
            expires_in_secs: 3600,
            status: "connected",
        }
    }
}

/// The body as JSON.
pub async fn json_body(response: reqwest::Response) -> Value {
    let text = response.text().await.unwrap();
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// Asserts the status and an error body with this code; returns the message.
pub async fn assert_error(response: reqwest::Response, status: u16, code: &str) -> String {
    let actual = response.status().as_u16();
    let body = json_body(response).await;
    assert_eq!(actual, status, "body: {body}");
    assert_eq!(body["error"], code, "body: {body}");
    body["message"].as_str().unwrap().to_owned()
}
