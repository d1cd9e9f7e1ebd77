//! Reads and writes of `user_calendar_connections`, keeping `users.google_calendar_connected` and
//! `users.microsoft_calendar_connected` in agreement with them.

use crate::pool::Pool;
use chrono::{DateTime, Duration as ChronoDuration, Utc};
use sea_orm::{ConnectionTrait, DbBackend, DbErr, Statement, TransactionTrait, Value};
use secrecy::{ExposeSecret, SecretString};
use uuid::Uuid;

use clerk_api::{ClerkClient, ClerkError, OAuthToken, client::token_for};

use crate::{
    Provider,
    accounts::CalendarAccount,
    crypto::{Binding, CryptoError, FORMAT_BOUND, FORMAT_LEGACY, TokenCipher, TokenColumn},
    health::{self, Reason, Verdict},
};

pub use crate::health::{CONNECTED, NEEDS_RECONNECT, UNAVAILABLE};

/// Why an account has no usable token, and the words behind it (no token, no personal data).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unusable {
    pub verdict: Verdict,
    pub detail: String,
}

impl Unusable {
    fn new(verdict: Verdict, detail: impl Into<String>) -> Self {
        Self {
            verdict,
            detail: detail.into(),
        }
    }
}

/// A calendar account and what Clerk said about its token, and when it was asked.
#[derive(Debug, Clone)]
pub struct Fetched {
    pub account: CalendarAccount,
    /// The token, or why there is none.
    pub token: Result<OAuthToken, Unusable>,
    /// When Clerk was asked (a later answer never loses to an earlier one).
    pub checked_at: DateTime<Utc>,
}

/// Fetches the access token of each account from Clerk (one call per provider). Transient
/// failures (429, 5xx, timeouts) are errors, so that the event is retried; what Clerk's answer
/// says about each account is recorded ([`crate::health`]): an account whose verification
/// lapsed needs the user without asking Clerk.
pub async fn fetch_tokens(
    clerk: Option<&ClerkClient>,
    clerk_user_id: &str,
    accounts: &[CalendarAccount],
) -> Result<Vec<Fetched>, ClerkError> {
    let checked_at = Utc::now();
    let fetched = |account: &CalendarAccount, token| Fetched {
        account: account.clone(),
        token,
        checked_at,
    };
    let mut out = Vec::with_capacity(accounts.len());
    for provider in Provider::ALL {
        let (lapsed, verified): (Vec<&CalendarAccount>, Vec<&CalendarAccount>) = accounts
            .iter()
            .filter(|a| a.provider == provider)
            .partition(|a| health::of_account(a).is_some());
        for account in lapsed {
            let verdict = health::of_account(account).unwrap_or(Verdict::Unavailable);
            let why =
                "the account's verification expired or failed in Clerk: the user must reconnect it";
            out.push(fetched(account, Err(Unusable::new(verdict, why))));
        }
        if verified.is_empty() {
            continue;
        }
        let Some(clerk) = clerk else {
            let why = "CLERK_SECRET_KEY and TOKEN_ENCRYPTION_KEY are not both set on the worker";
            for account in verified {
                out.push(fetched(
                    account,
                    Err(Unusable::new(Verdict::Unavailable, why)),
                ));
            }
            continue;
        };
        let tokens = match clerk.oauth_tokens(clerk_user_id, provider).await {
            Ok(tokens) => tokens,
            Err(error) if error.is_transient() => return Err(error),
            Err(error) => {
                let verdict = health::of_clerk_error(&error);
                for account in verified {
                    out.push(fetched(
                        account,
                        Err(Unusable::new(verdict, error.to_string())),
                    ));
                }
                continue;
            }
        };
        for account in verified {
            let token = token_for(
                &tokens,
                &account.external_account_id,
                &account.provider_user_id,
            );
            let token = match health::of_token(provider, &account.scopes, token) {
                Verdict::Connected => token.cloned().ok_or_else(|| {
                    Unusable::new(Verdict::NeedsReconnect(Reason::GrantRevoked), NO_TOKEN)
                }),
                verdict => Err(Unusable::new(verdict, detail_of(verdict))),
            };
            out.push(fetched(account, token));
        }
    }
    Ok(out)
}

/// What Clerk answered when it gave no token for the account.
const NO_TOKEN: &str =
    "Clerk returned no access token for this account (consent revoked or expired?)";

/// The words behind a verdict reached from Clerk's answer (not from an error).
fn detail_of(verdict: Verdict) -> &'static str {
    match verdict.reason() {
        Some(Reason::MissingScopes) => {
            "the token Clerk gives has no calendar scope: the user must reconnect granting calendar access"
        }
        Some(Reason::GrantRevoked) => NO_TOKEN,
        _ => "",
    }
}

/// Why connections could not be written.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Db(#[from] DbErr),
    #[error("token encryption: {0}")]
    Crypto(#[from] CryptoError),
}

fn stmt(sql: &str, values: Vec<Value>) -> Statement {
    Statement::from_sql_and_values(DbBackend::Postgres, sql, values)
}

/// Takes the lock under which every change of one user is made (the worker's events, the api's
/// calendar changes and token refreshes), to the end of the caller's transaction.
pub async fn lock_user<C: ConnectionTrait>(conn: &C, clerk_user_id: &str) -> Result<(), DbErr> {
    conn.execute_raw(stmt(
        "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
        vec![clerk_user_id.into()],
    ))
    .await?;
    Ok(())
}

/// A user's choice to disconnect a provider's calendar (`PATCH …/calendar-status` with
/// `connected: false`), which events from Clerk respect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Disconnect {
    pub provider: Provider,
    pub at: DateTime<Utc>,
}

impl Disconnect {
    /// Whether the choice covers this account: same provider, and added in Clerk before the
    /// choice (an account removed and added again in Clerk afterwards is a new connection).
    pub fn covers(&self, account: &CalendarAccount) -> bool {
        account.provider == self.provider
            && account
                .created_at
                .is_none_or(|created| created <= self.at.timestamp_millis())
    }
}

fn disconnects_from(rows: Vec<sea_orm::QueryResult>) -> Result<Vec<Disconnect>, DbErr> {
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        let provider: String = row.try_get("", "provider")?;
        let at: DateTime<Utc> = row.try_get("", "disconnected_at")?;
        if let Some(provider) = Provider::parse(&provider) {
            out.push(Disconnect { provider, at });
        }
    }
    Ok(out)
}

/// The user's recorded disconnects, by the user's Clerk id (none for a user not stored yet).
pub async fn disconnects_of_clerk_user<C: ConnectionTrait>(
    conn: &C,
    clerk_user_id: &str,
) -> Result<Vec<Disconnect>, DbErr> {
    let rows = conn
        .query_all_raw(stmt(
            "SELECT d.provider, d.disconnected_at FROM calendar_disconnects d \
             JOIN users u ON u.id = d.user_id WHERE u.clerk_user_id = $1",
            vec![clerk_user_id.into()],
        ))
        .await?;
    disconnects_from(rows)
}

async fn disconnects_of<C: ConnectionTrait>(
    conn: &C,
    user_id: Uuid,
) -> Result<Vec<Disconnect>, DbErr> {
    let rows = conn
        .query_all_raw(stmt(
            "SELECT provider, disconnected_at FROM calendar_disconnects WHERE user_id = $1",
            vec![user_id.into()],
        ))
        .await?;
    disconnects_from(rows)
}

/// The accounts no recorded disconnect covers.
pub fn not_disconnected(
    accounts: &[CalendarAccount],
    disconnects: &[Disconnect],
) -> Vec<CalendarAccount> {
    accounts
        .iter()
        .filter(|a| !disconnects.iter().any(|d| d.covers(a)))
        .cloned()
        .collect()
}

/// Records that the user disconnected `provider` (inside the caller's transaction, under the
/// user's lock): its connections and their tokens are deleted and later events do not bring
/// them back (see [`Disconnect::covers`]).
pub async fn disconnect<C: ConnectionTrait>(
    conn: &C,
    user_id: Uuid,
    provider: Provider,
) -> Result<(), DbErr> {
    conn.execute_raw(stmt(
        "INSERT INTO calendar_disconnects (user_id, provider, disconnected_at) \
         VALUES ($1, $2, now()) \
         ON CONFLICT (user_id, provider) DO UPDATE SET disconnected_at = now()",
        vec![user_id.into(), provider.as_str().into()],
    ))
    .await?;
    conn.execute_raw(stmt(
        "DELETE FROM user_calendar_connections WHERE user_id = $1 AND provider = $2",
        vec![user_id.into(), provider.as_str().into()],
    ))
    .await?;
    refresh_flags(conn, user_id).await
}

/// Forgets the user's disconnect of `provider` (the user connects again).
pub async fn forget_disconnect<C: ConnectionTrait>(
    conn: &C,
    user_id: Uuid,
    provider: Provider,
) -> Result<(), DbErr> {
    conn.execute_raw(stmt(
        "DELETE FROM calendar_disconnects WHERE user_id = $1 AND provider = $2",
        vec![user_id.into(), provider.as_str().into()],
    ))
    .await?;
    Ok(())
}

/// Which connections [`sync_connections`] makes equal to what was fetched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncScope {
    /// Every provider's (an event from Clerk: the user's whole state).
    All,
    /// One provider's only (the user connecting that provider again).
    Only(Provider),
}

/// Makes the user's connections equal `fetched` (inside the caller's transaction, under the
/// user's lock): removed or no-longer-calendar accounts, and accounts the user disconnected, are
/// deleted with their tokens; the others upserted with their tokens sealed to their row; both
/// flags recomputed.
pub async fn sync_connections<C: ConnectionTrait>(
    conn: &C,
    cipher: Option<&TokenCipher>,
    user_id: Uuid,
    fetched: &[Fetched],
    scope: SyncScope,
) -> Result<(), StoreError> {
    let disconnects = disconnects_of(conn, user_id).await?;
    let fetched: Vec<&Fetched> = fetched
        .iter()
        .filter(|f| !disconnects.iter().any(|d| d.covers(&f.account)))
        .filter(|f| match scope {
            SyncScope::All => true,
            SyncScope::Only(provider) => f.account.provider == provider,
        })
        .collect();
    let keep: Vec<String> = fetched
        .iter()
        .map(|f| {
            format!(
                "{}:{}",
                f.account.provider.as_str(),
                f.account.provider_user_id
            )
        })
        .collect();
    let only: Option<&str> = match scope {
        SyncScope::All => None,
        SyncScope::Only(provider) => Some(provider.as_str()),
    };
    conn.execute_raw(stmt(
        "DELETE FROM user_calendar_connections WHERE user_id = $1 \
         AND ($3::text IS NULL OR provider = $3) \
         AND NOT (provider || ':' || provider_user_id = ANY($2))",
        vec![user_id.into(), keep.into(), only.into()],
    ))
    .await?;
    for f in fetched {
        upsert_connection(conn, cipher, user_id, f).await?;
    }
    refresh_flags(conn, user_id).await?;
    Ok(())
}

/// Upserts one fetched account's connection, its token sealed to the row (an existing row keeps
/// its id: the id is part of what the token is sealed to).
async fn upsert_connection<C: ConnectionTrait>(
    conn: &C,
    cipher: Option<&TokenCipher>,
    user_id: Uuid,
    f: &Fetched,
) -> Result<(), StoreError> {
    // The row's id is part of what the token is sealed to: keep the existing one.
    let existing = conn
        .query_one_raw(stmt(
            "SELECT id FROM user_calendar_connections \
             WHERE user_id = $1 AND provider = $2 AND provider_user_id = $3",
            vec![
                user_id.into(),
                f.account.provider.as_str().into(),
                f.account.provider_user_id.as_str().into(),
            ],
        ))
        .await?;
    let id: Uuid = match existing {
        Some(row) => row.try_get("", "id")?,
        None => Uuid::new_v4(),
    };
    let binding = Binding {
        connection_id: id,
        user_id,
        provider: f.account.provider,
        column: TokenColumn::AccessToken,
    };
    let (verdict, detail, sealed, expires_at) = match (&f.token, cipher) {
        (Ok(token), Some(cipher)) => (
            Verdict::Connected,
            None,
            Some(cipher.seal(token.token.expose_secret(), &binding)?),
            token.expires_at,
        ),
        (Ok(_), None) => (
            Verdict::Unavailable,
            Some("TOKEN_ENCRYPTION_KEY is not set on the worker".to_string()),
            None,
            None,
        ),
        (Err(unusable), _) => (unusable.verdict, Some(unusable.detail.clone()), None, None),
    };
    let (key_id, blob) = match sealed {
        Some(s) => (Some(s.key_id), Some(s.blob)),
        None => (None, None),
    };
    // The account's profile always follows the event; its token and status only when this
    // answer from Clerk is not older than the one stored (a token call of the api may have
    // committed in between).
    conn.execute_raw(stmt(
        "INSERT INTO user_calendar_connections AS c (id, user_id, provider, external_account_id, \
             provider_user_id, email, scopes, access_token, token_key_id, token_format, \
             expires_at, status, status_reason, status_detail, status_checked_at, \
             status_changed_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $13, $10, $11, $12, $14, $15, now()) \
         ON CONFLICT (user_id, provider, provider_user_id) DO UPDATE SET \
             external_account_id = EXCLUDED.external_account_id, email = EXCLUDED.email, \
             scopes = EXCLUDED.scopes, updated_at = now(), \
             refresh_token = CASE WHEN c.status_checked_at > EXCLUDED.status_checked_at \
               THEN c.refresh_token ELSE NULL END, \
             access_token = CASE WHEN c.status_checked_at > EXCLUDED.status_checked_at \
               THEN c.access_token ELSE EXCLUDED.access_token END, \
             token_key_id = CASE WHEN c.status_checked_at > EXCLUDED.status_checked_at \
               THEN c.token_key_id ELSE EXCLUDED.token_key_id END, \
             token_format = CASE WHEN c.status_checked_at > EXCLUDED.status_checked_at \
               THEN c.token_format ELSE EXCLUDED.token_format END, \
             expires_at = CASE WHEN c.status_checked_at > EXCLUDED.status_checked_at \
               THEN c.expires_at ELSE EXCLUDED.expires_at END, \
             status_changed_at = CASE WHEN c.status_checked_at > EXCLUDED.status_checked_at \
                 OR (c.status = EXCLUDED.status \
                     AND c.status_reason IS NOT DISTINCT FROM EXCLUDED.status_reason) \
               THEN c.status_changed_at ELSE now() END, \
             status = CASE WHEN c.status_checked_at > EXCLUDED.status_checked_at \
               THEN c.status ELSE EXCLUDED.status END, \
             status_reason = CASE WHEN c.status_checked_at > EXCLUDED.status_checked_at \
               THEN c.status_reason ELSE EXCLUDED.status_reason END, \
             status_detail = CASE WHEN c.status_checked_at > EXCLUDED.status_checked_at \
               THEN c.status_detail ELSE EXCLUDED.status_detail END, \
             status_checked_at = GREATEST(c.status_checked_at, EXCLUDED.status_checked_at)",
        vec![
            id.into(),
            user_id.into(),
            f.account.provider.as_str().into(),
            f.account.external_account_id.as_str().into(),
            f.account.provider_user_id.as_str().into(),
            f.account.email.clone().into(),
            f.account.scopes.as_str().into(),
            blob.into(),
            key_id.into(),
            expires_at.into(),
            verdict.status().into(),
            verdict.reason().map(Reason::as_str).into(),
            FORMAT_BOUND.into(),
            detail.into(),
            f.checked_at.into(),
        ],
    ))
    .await?;
    Ok(())
}

/// Sets both `*_calendar_connected` flags and `*_calendar_status` from the connections:
/// connected is a connected one, or one nobody could check lately that still holds its token;
/// else `needs_reconnect` if one needs the user; else `not_connected`.
pub async fn refresh_flags<C: ConnectionTrait>(conn: &C, user_id: Uuid) -> Result<(), DbErr> {
    conn.execute_raw(stmt(
        "WITH shown AS ( \
           SELECT p.provider, CASE \
             WHEN EXISTS (SELECT 1 FROM user_calendar_connections c WHERE c.user_id = $1 \
               AND c.provider = p.provider AND (c.status = 'connected' \
                 OR (c.status = 'unavailable' AND c.access_token IS NOT NULL))) THEN 'connected' \
             WHEN EXISTS (SELECT 1 FROM user_calendar_connections c WHERE c.user_id = $1 \
               AND c.provider = p.provider AND c.status = 'needs_reconnect') THEN 'needs_reconnect' \
             ELSE 'not_connected' END AS status \
           FROM (VALUES ('google'), ('microsoft')) AS p(provider)) \
         UPDATE users SET \
           google_calendar_status = (SELECT status FROM shown WHERE provider = 'google'), \
           microsoft_calendar_status = (SELECT status FROM shown WHERE provider = 'microsoft'), \
           google_calendar_connected = (SELECT status = 'connected' FROM shown WHERE provider = 'google'), \
           microsoft_calendar_connected = (SELECT status = 'connected' FROM shown WHERE provider = 'microsoft'), \
           updated_at = now() \
         WHERE id = $1",
        vec![user_id.into()],
    ))
    .await?;
    Ok(())
}

/// A usable access token for a backend. `Debug` never shows the token.
#[derive(Clone, Debug)]
pub struct FreshToken {
    pub access_token: SecretString,
    pub expires_at: Option<DateTime<Utc>>,
    pub provider_user_id: String,
    pub scopes: String,
}

/// Why a fresh token could not be had.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("database: {0}")]
    Db(#[from] DbErr),
    #[error("token encryption: {0}")]
    Crypto(#[from] CryptoError),
    #[error("Clerk: {0}")]
    Clerk(#[from] ClerkError),
    /// Only the user can fix the connection (by reconnecting the account in Clerk).
    #[error("the connection needs the user to reconnect it ({})", .0.as_str())]
    NeedsReconnect(Reason),
}

impl TokenError {
    /// Whether trying again later can succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Db(e) => entity::db_errors::is_transient(e),
            Self::Crypto(_) => false,
            Self::Clerk(e) => e.is_transient(),
            Self::NeedsReconnect(_) => false,
        }
    }
}

/// Tokens closer than this to expiry are refreshed before being handed out.
const EXPIRY_MARGIN_SECS: i64 = 60;

/// A connection row as the token endpoint and the health check read it.
pub struct StoredConnection {
    pub id: Uuid,
    pub user_id: Uuid,
    pub provider: Provider,
    pub clerk_user_id: String,
    external_account_id: String,
    provider_user_id: String,
    scopes: String,
    blob: Option<Vec<u8>>,
    key_id: Option<String>,
    format: i16,
    expires_at: Option<DateTime<Utc>>,
    pub status: String,
    pub status_reason: Option<String>,
}

const STORED_COLUMNS: &str = "c.id, c.user_id, c.provider, c.external_account_id, \
    c.provider_user_id, c.scopes, c.access_token, c.token_key_id, c.token_format, c.expires_at, \
    c.status, c.status_reason, u.clerk_user_id";

fn stored_of(row: &sea_orm::QueryResult) -> Result<StoredConnection, DbErr> {
    let provider: String = row.try_get("", "provider")?;
    Ok(StoredConnection {
        id: row.try_get("", "id")?,
        user_id: row.try_get("", "user_id")?,
        provider: Provider::parse(&provider)
            .ok_or_else(|| DbErr::Type(format!("unknown provider {provider:?}")))?,
        clerk_user_id: row.try_get("", "clerk_user_id")?,
        external_account_id: row.try_get("", "external_account_id")?,
        provider_user_id: row.try_get("", "provider_user_id")?,
        scopes: row.try_get("", "scopes")?,
        blob: row.try_get("", "access_token")?,
        key_id: row.try_get("", "token_key_id")?,
        format: row.try_get("", "token_format")?,
        expires_at: row.try_get("", "expires_at")?,
        status: row.try_get("", "status")?,
        status_reason: row.try_get("", "status_reason")?,
    })
}

/// The user's connection of `provider` (the most recently updated, or exactly `connection_id`),
/// whatever its status.
async fn stored_row<C: ConnectionTrait>(
    conn: &C,
    user_id: Uuid,
    provider: Provider,
    connection_id: Option<Uuid>,
) -> Result<Option<StoredConnection>, DbErr> {
    conn.query_one_raw(stmt(
        &format!(
            "SELECT {STORED_COLUMNS} \
             FROM user_calendar_connections c JOIN users u ON u.id = c.user_id \
             WHERE c.user_id = $1 AND c.provider = $2 AND ($3::uuid IS NULL OR c.id = $3) \
             ORDER BY c.updated_at DESC LIMIT 1"
        ),
        vec![
            user_id.into(),
            provider.as_str().into(),
            connection_id.into(),
        ],
    ))
    .await?
    .map(|row| stored_of(&row))
    .transpose()
}

/// Up to `limit` connections, least recently checked first (never checked before all), for the
/// health check; `clerk_user_id` narrows it to one user.
pub async fn least_recently_checked(
    db: &Pool,
    limit: u64,
    clerk_user_id: Option<&str>,
) -> Result<Vec<StoredConnection>, DbErr> {
    db.query_all_raw(stmt(
        &format!(
            "SELECT {STORED_COLUMNS} \
             FROM user_calendar_connections c JOIN users u ON u.id = c.user_id \
             WHERE ($2::text IS NULL OR u.clerk_user_id = $2) \
             ORDER BY c.status_checked_at ASC NULLS FIRST, c.id LIMIT $1"
        ),
        vec![
            i64::try_from(limit).unwrap_or(i64::MAX).into(),
            clerk_user_id.into(),
        ],
    ))
    .await?
    .iter()
    .map(stored_of)
    .collect()
}

/// The user's access token for `provider`, refreshed through Clerk (which refreshes expired
/// provider tokens on request) when the stored one has expired, is about to, has no known
/// expiry, or is stored in the legacy unbound format. `Ok(None)` when the user has no
/// connection of that provider, also when it was disconnected or deleted while Clerk answered.
/// A connection that needs the user is [`TokenError::NeedsReconnect`] (also when Clerk's answer
/// says so now, which is recorded); Clerk's own trouble is [`TokenError::Clerk`] (transient),
/// recorded as `unavailable` but never as needing the user. A stored token that does not
/// decrypt for its row (moved from another row) is an error, never served.
pub async fn fresh_access_token(
    db: &Pool,
    cipher: &TokenCipher,
    clerk: &ClerkClient,
    user_id: Uuid,
    provider: Provider,
) -> Result<Option<FreshToken>, TokenError> {
    let Some(stored) = stored_row(db, user_id, provider, None).await? else {
        return Ok(None);
    };
    if stored.status == NEEDS_RECONNECT {
        let reason = stored.status_reason.as_deref().and_then(Reason::parse);
        return Err(TokenError::NeedsReconnect(
            reason.unwrap_or(Reason::GrantRevoked),
        ));
    }
    let binding = binding_of(&stored);
    if let Some(token) = stored_token(cipher, &stored, &binding)? {
        return Ok(Some(token));
    }
    match recheck(db, cipher, clerk, &stored).await? {
        Rechecked::Token(token) => Ok(Some(*token)),
        Rechecked::Gone => Ok(None),
        Rechecked::NeedsReconnect(reason) => Err(TokenError::NeedsReconnect(reason)),
        Rechecked::Unavailable(error) => Err(TokenError::Clerk(error)),
    }
}

fn binding_of(stored: &StoredConnection) -> Binding {
    Binding {
        connection_id: stored.id,
        user_id: stored.user_id,
        provider: stored.provider,
        column: TokenColumn::AccessToken,
    }
}

/// The stored token while it is fresh, bound and known to expire later; `None` when it must be
/// refreshed. A token that does not decrypt for its row is an error (logged), never served.
fn stored_token(
    cipher: &TokenCipher,
    stored: &StoredConnection,
    binding: &Binding,
) -> Result<Option<FreshToken>, TokenError> {
    let (user_id, provider) = (binding.user_id, binding.provider);
    let still_fresh = stored
        .expires_at
        .is_some_and(|t| t > Utc::now() + ChronoDuration::seconds(EXPIRY_MARGIN_SECS));
    if still_fresh
        && stored.format != FORMAT_LEGACY
        && let (Some(blob), Some(key_id)) = (&stored.blob, &stored.key_id)
    {
        let access_token = cipher
            .open(key_id, blob, stored.format, binding)
            .inspect_err(|error| {
                tracing::error!(
                    connection_id = %stored.id,
                    %user_id,
                    provider = provider.as_str(),
                    error.message = %error,
                    "stored calendar token refused: it does not belong to this row"
                );
            })?;
        return Ok(Some(FreshToken {
            access_token: SecretString::from(access_token),
            expires_at: stored.expires_at,
            provider_user_id: stored.provider_user_id.clone(),
            scopes: stored.scopes.clone(),
        }));
    }
    Ok(None)
}

/// What asking Clerk again about a connection found (and recorded).
#[derive(Debug)]
pub enum Rechecked {
    /// Connected: the fresh token, stored sealed.
    Token(Box<FreshToken>),
    /// Only the user can fix it.
    NeedsReconnect(Reason),
    /// Clerk could not tell (429, 5xx, timeout…): a connected one is recorded `unavailable` and
    /// keeps its token; one that needs the user still does.
    Unavailable(ClerkError),
    /// The connection was disconnected or deleted while Clerk answered.
    Gone,
}

impl Rechecked {
    /// The verdict it records.
    pub fn verdict(&self) -> Option<Verdict> {
        match self {
            Self::Token(_) => Some(Verdict::Connected),
            Self::NeedsReconnect(reason) => Some(Verdict::NeedsReconnect(*reason)),
            Self::Unavailable(_) => Some(Verdict::Unavailable),
            Self::Gone => None,
        }
    }
}

/// Asks Clerk for the connection's token and records what it says, under the user's lock and
/// only forward in time (an answer older than the one stored changes nothing): the token
/// endpoint's refresh and the scheduled health check both come here.
pub async fn recheck(
    db: &Pool,
    cipher: &TokenCipher,
    clerk: &ClerkClient,
    stored: &StoredConnection,
) -> Result<Rechecked, TokenError> {
    let checked_at = Utc::now();
    let answer = clerk
        .oauth_tokens(&stored.clerk_user_id, stored.provider)
        .await;
    let txn = db.begin().await?;
    // A disconnect or delete that committed while Clerk answered wins.
    lock_user(&txn, &stored.clerk_user_id).await?;
    let Some(current) = stored_row(&txn, stored.user_id, stored.provider, Some(stored.id)).await?
    else {
        txn.rollback().await?;
        return Ok(Rechecked::Gone);
    };
    let binding = binding_of(&current);
    let (outcome, record) = match answer {
        Err(error) => {
            let verdict = health::of_clerk_error(&error);
            let detail = error.to_string();
            let outcome = match verdict {
                Verdict::NeedsReconnect(reason) => Rechecked::NeedsReconnect(reason),
                _ => Rechecked::Unavailable(error),
            };
            (outcome, Record::Status(verdict, detail))
        }
        Ok(tokens) => {
            let token = token_for(
                &tokens,
                &current.external_account_id,
                &current.provider_user_id,
            );
            match (
                health::of_token(current.provider, &current.scopes, token),
                token,
            ) {
                (Verdict::Connected, Some(token)) => {
                    let sealed = cipher.seal(token.token.expose_secret(), &binding)?;
                    let fresh = FreshToken {
                        access_token: token.token.clone(),
                        expires_at: token.expires_at,
                        provider_user_id: current.provider_user_id.clone(),
                        scopes: current.scopes.clone(),
                    };
                    let record = Record::Token(sealed.blob, sealed.key_id, token.expires_at);
                    (Rechecked::Token(Box::new(fresh)), record)
                }
                (verdict, _) => {
                    let reason = verdict.reason().unwrap_or(Reason::GrantRevoked);
                    let detail = detail_of(verdict).to_owned();
                    (
                        Rechecked::NeedsReconnect(reason),
                        Record::Status(Verdict::NeedsReconnect(reason), detail),
                    )
                }
            }
        }
    };
    record_check(&txn, &current, record, checked_at).await?;
    refresh_flags(&txn, current.user_id).await?;
    txn.commit().await?;
    Ok(outcome)
}

/// What a check writes.
enum Record {
    /// Connected, with the new token (sealed), its key and expiry.
    Token(entity::Ciphertext, String, Option<DateTime<Utc>>),
    /// A verdict without a token.
    Status(Verdict, String),
}

/// Writes a check's result, unless a later check was recorded already. Clerk's trouble never
/// takes a connection that needs the user out of that state, and leaves a connected one its
/// token (served while fresh).
async fn record_check<C: ConnectionTrait>(
    conn: &C,
    current: &StoredConnection,
    record: Record,
    checked_at: DateTime<Utc>,
) -> Result<(), DbErr> {
    let guard = "AND (status_checked_at IS NULL OR status_checked_at <= $2)";
    let changed = "status_changed_at = CASE WHEN status = $3 \
                   AND status_reason IS NOT DISTINCT FROM $4 THEN status_changed_at ELSE now() END";
    let statement = match record {
        Record::Token(blob, key_id, expires_at) => stmt(
            &format!(
                "UPDATE user_calendar_connections SET {changed}, status = $3, status_reason = $4, \
                   status_detail = NULL, status_checked_at = $2, access_token = $5, \
                   token_key_id = $6, token_format = $8, refresh_token = NULL, expires_at = $7, \
                   updated_at = now() WHERE id = $1 {guard}"
            ),
            vec![
                current.id.into(),
                checked_at.into(),
                CONNECTED.into(),
                Option::<String>::None.into(),
                blob.into(),
                key_id.into(),
                expires_at.into(),
                FORMAT_BOUND.into(),
            ],
        ),
        Record::Status(Verdict::Unavailable, _) if current.status == NEEDS_RECONNECT => {
            return Ok(());
        }
        Record::Status(verdict, detail) => {
            let drop_token = matches!(verdict, Verdict::NeedsReconnect(_));
            stmt(
                &format!(
                    "UPDATE user_calendar_connections SET {changed}, status = $3, \
                       status_reason = $4, status_detail = $5, status_checked_at = $2, \
                       access_token = CASE WHEN $6 THEN NULL ELSE access_token END, \
                       token_key_id = CASE WHEN $6 THEN NULL ELSE token_key_id END, \
                       updated_at = now() WHERE id = $1 {guard}"
                ),
                vec![
                    current.id.into(),
                    checked_at.into(),
                    verdict.status().into(),
                    verdict.reason().map(Reason::as_str).into(),
                    detail.into(),
                    drop_token.into(),
                ],
            )
        }
    };
    conn.execute_raw(statement).await?;
    Ok(())
}

/// Re-seals every stored token that is not under the first key or not bound to its row (the
/// legacy format). Returns how many rows were re-sealed; `progress(done, total)` is called
/// after each.
pub async fn reencrypt_all(
    db: &Pool,
    cipher: &TokenCipher,
    mut progress: impl FnMut(usize, usize),
) -> Result<usize, TokenError> {
    let primary = cipher.primary_key_id().to_owned();
    let rows = db
        .query_all_raw(stmt(
            "SELECT id FROM user_calendar_connections \
             WHERE (access_token IS NOT NULL OR refresh_token IS NOT NULL) \
               AND (token_key_id IS DISTINCT FROM $1 OR token_format <> $2)",
            vec![primary.as_str().into(), FORMAT_BOUND.into()],
        ))
        .await?;
    let total = rows.len();
    let mut done = 0;
    for row in rows {
        let id: Uuid = row.try_get("", "id")?;
        let txn = db.begin().await?;
        // Re-read under a row lock: the worker may have rewritten the token meanwhile.
        let current = txn
            .query_one_raw(stmt(
                "SELECT user_id, provider, access_token, refresh_token, token_key_id, \
                        token_format FROM user_calendar_connections WHERE id = $1 FOR UPDATE",
                vec![id.into()],
            ))
            .await?;
        if let Some(current) = current {
            let key_id: Option<String> = current.try_get("", "token_key_id")?;
            let format: i16 = current.try_get("", "token_format")?;
            let user_id: Uuid = current.try_get("", "user_id")?;
            let provider: String = current.try_get("", "provider")?;
            let provider = Provider::parse(&provider).ok_or(CryptoError::UnknownFormat(format))?;
            if key_id.as_deref() != Some(primary.as_str()) || format != FORMAT_BOUND {
                let key_id = key_id.unwrap_or_default();
                let place = Binding {
                    connection_id: id,
                    user_id,
                    provider,
                    column: TokenColumn::AccessToken,
                };
                let reseal = |column: TokenColumn| -> Result<Option<Vec<u8>>, TokenError> {
                    let name = match column {
                        TokenColumn::AccessToken => "access_token",
                        TokenColumn::RefreshToken => "refresh_token",
                    };
                    let blob: Option<Vec<u8>> = current.try_get("", name)?;
                    let binding = place.column(column);
                    match blob {
                        Some(blob) => {
                            let plain = if format == FORMAT_LEGACY {
                                cipher.open_legacy(&key_id, &blob)?
                            } else {
                                cipher.open(&key_id, &blob, format, &binding)?
                            };
                            Ok(Some(cipher.seal(&plain, &binding)?.blob.0))
                        }
                        None => Ok(None),
                    }
                };
                let access = reseal(TokenColumn::AccessToken)?;
                let refresh = reseal(TokenColumn::RefreshToken)?;
                txn.execute_raw(stmt(
                    "UPDATE user_calendar_connections SET access_token = $2, refresh_token = $3, \
                       token_key_id = $4, token_format = $5, updated_at = now() WHERE id = $1",
                    vec![
                        id.into(),
                        access.into(),
                        refresh.into(),
                        primary.as_str().into(),
                        FORMAT_BOUND.into(),
                    ],
                ))
                .await?;
            }
        }
        txn.commit().await?;
        done += 1;
        progress(done, total);
    }
    Ok(done)
}
