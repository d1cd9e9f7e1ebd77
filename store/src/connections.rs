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
};

/// `status` of a usable connection.
pub const CONNECTED: &str = "connected";
/// `status` of a connection whose token Clerk will not give.
pub const TOKEN_UNAVAILABLE: &str = "token_unavailable";
/// `status` when the worker has no `CLERK_SECRET_KEY` / `TOKEN_ENCRYPTION_KEY` to fetch tokens.
pub const NOT_CONFIGURED: &str = "not_configured";

/// A calendar account and what Clerk said about its token.
#[derive(Debug, Clone)]
pub struct Fetched {
    pub account: CalendarAccount,
    /// The token, or why there is none (recorded for ops).
    pub token: Result<OAuthToken, (&'static str, String)>,
}

/// Fetches the access token of each account from Clerk (one call per provider). Transient
/// failures (429, 5xx, timeouts) are errors, so that the event is retried; a token Clerk does not
/// have is recorded as unavailable.
pub async fn fetch_tokens(
    clerk: Option<&ClerkClient>,
    clerk_user_id: &str,
    accounts: &[CalendarAccount],
) -> Result<Vec<Fetched>, ClerkError> {
    let mut out = Vec::with_capacity(accounts.len());
    for provider in Provider::ALL {
        let of_provider: Vec<&CalendarAccount> =
            accounts.iter().filter(|a| a.provider == provider).collect();
        if of_provider.is_empty() {
            continue;
        }
        let Some(clerk) = clerk else {
            for account in of_provider {
                out.push(Fetched {
                    account: account.clone(),
                    token: Err((
                        NOT_CONFIGURED,
                        "CLERK_SECRET_KEY and TOKEN_ENCRYPTION_KEY are not both set on the worker"
                            .into(),
                    )),
                });
            }
            continue;
        };
        let tokens = match clerk.oauth_tokens(clerk_user_id, provider).await {
            Ok(tokens) => tokens,
            Err(error) if !error.is_transient() => {
                for account in &of_provider {
                    out.push(Fetched {
                        account: (*account).clone(),
                        token: Err((TOKEN_UNAVAILABLE, error.to_string())),
                    });
                }
                continue;
            }
            Err(error) => return Err(error),
        };
        for account in of_provider {
            let token = token_for(
                &tokens,
                &account.external_account_id,
                &account.provider_user_id,
            )
            .cloned()
            .ok_or((
                TOKEN_UNAVAILABLE,
                "Clerk returned no access token for this account (consent revoked or expired?)"
                    .to_string(),
            ));
            out.push(Fetched {
                account: account.clone(),
                token,
            });
        }
    }
    Ok(out)
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
    let (status, reason, sealed, expires_at) = match (&f.token, cipher) {
        (Ok(token), Some(cipher)) => (
            CONNECTED,
            None,
            Some(cipher.seal(token.token.expose_secret(), &binding)?),
            token.expires_at,
        ),
        (Ok(_), None) => (
            NOT_CONFIGURED,
            Some("TOKEN_ENCRYPTION_KEY is not set on the worker".to_string()),
            None,
            None,
        ),
        (Err((status, reason)), _) => (*status, Some(reason.clone()), None, None),
    };
    let (key_id, blob) = match sealed {
        Some(s) => (Some(s.key_id), Some(s.blob)),
        None => (None, None),
    };
    conn.execute_raw(stmt(
        "INSERT INTO user_calendar_connections (id, user_id, provider, external_account_id, \
             provider_user_id, email, scopes, access_token, token_key_id, token_format, \
             expires_at, status, status_reason) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $13, $10, $11, $12) \
         ON CONFLICT (user_id, provider, provider_user_id) DO UPDATE SET \
             external_account_id = EXCLUDED.external_account_id, email = EXCLUDED.email, \
             scopes = EXCLUDED.scopes, access_token = EXCLUDED.access_token, \
             refresh_token = NULL, token_key_id = EXCLUDED.token_key_id, \
             token_format = EXCLUDED.token_format, expires_at = EXCLUDED.expires_at, \
             status = EXCLUDED.status, status_reason = EXCLUDED.status_reason, \
             updated_at = now()",
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
            status.into(),
            reason.into(),
            FORMAT_BOUND.into(),
        ],
    ))
    .await?;
    Ok(())
}

/// Sets both `*_calendar_connected` flags from the connections.
pub async fn refresh_flags<C: ConnectionTrait>(conn: &C, user_id: Uuid) -> Result<(), DbErr> {
    conn.execute_raw(stmt(
        "UPDATE users SET \
           google_calendar_connected = EXISTS (SELECT 1 FROM user_calendar_connections c \
             WHERE c.user_id = users.id AND c.provider = 'google' AND c.status = 'connected'), \
           microsoft_calendar_connected = EXISTS (SELECT 1 FROM user_calendar_connections c \
             WHERE c.user_id = users.id AND c.provider = 'microsoft' AND c.status = 'connected'), \
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
}

impl TokenError {
    /// Whether trying again later can succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Db(e) => entity::db_errors::is_transient(e),
            Self::Crypto(_) => false,
            Self::Clerk(e) => e.is_transient(),
        }
    }
}

/// Tokens closer than this to expiry are refreshed before being handed out.
const EXPIRY_MARGIN_SECS: i64 = 60;

/// A connection row as the token endpoint reads it.
struct StoredConnection {
    id: Uuid,
    clerk_user_id: String,
    external_account_id: String,
    provider_user_id: String,
    scopes: String,
    blob: Option<Vec<u8>>,
    key_id: Option<String>,
    format: i16,
    expires_at: Option<DateTime<Utc>>,
}

async fn connected_row<C: ConnectionTrait>(
    conn: &C,
    user_id: Uuid,
    provider: Provider,
    connection_id: Option<Uuid>,
) -> Result<Option<StoredConnection>, DbErr> {
    let row = conn
        .query_one_raw(stmt(
            "SELECT c.id, c.external_account_id, c.provider_user_id, c.scopes, c.access_token, \
                    c.token_key_id, c.token_format, c.expires_at, u.clerk_user_id \
             FROM user_calendar_connections c JOIN users u ON u.id = c.user_id \
             WHERE c.user_id = $1 AND c.provider = $2 AND c.status = 'connected' \
               AND ($3::uuid IS NULL OR c.id = $3) \
             ORDER BY c.updated_at DESC LIMIT 1",
            vec![
                user_id.into(),
                provider.as_str().into(),
                connection_id.into(),
            ],
        ))
        .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    Ok(Some(StoredConnection {
        id: row.try_get("", "id")?,
        clerk_user_id: row.try_get("", "clerk_user_id")?,
        external_account_id: row.try_get("", "external_account_id")?,
        provider_user_id: row.try_get("", "provider_user_id")?,
        scopes: row.try_get("", "scopes")?,
        blob: row.try_get("", "access_token")?,
        key_id: row.try_get("", "token_key_id")?,
        format: row.try_get("", "token_format")?,
        expires_at: row.try_get("", "expires_at")?,
    }))
}

/// The user's access token for `provider`, refreshed through Clerk (which refreshes expired
/// provider tokens on request) when the stored one has expired, is about to, has no known
/// expiry, or is stored in the legacy unbound format. `Ok(None)` when the user has no usable
/// connection of that provider, also when it was disconnected or deleted while Clerk answered.
/// A stored token that does not decrypt for its row (moved from another row) is an error, never
/// served.
pub async fn fresh_access_token(
    db: &Pool,
    cipher: &TokenCipher,
    clerk: &ClerkClient,
    user_id: Uuid,
    provider: Provider,
) -> Result<Option<FreshToken>, TokenError> {
    let Some(stored) = connected_row(db, user_id, provider, None).await? else {
        return Ok(None);
    };
    let binding = Binding {
        connection_id: stored.id,
        user_id,
        provider,
        column: TokenColumn::AccessToken,
    };
    if let Some(token) = stored_token(cipher, &stored, &binding)? {
        return Ok(Some(token));
    }
    refresh_token(db, cipher, clerk, &stored, &binding).await
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

/// A new token from Clerk, stored sealed under the user's lock if the connection is still there.
async fn refresh_token(
    db: &Pool,
    cipher: &TokenCipher,
    clerk: &ClerkClient,
    stored: &StoredConnection,
    binding: &Binding,
) -> Result<Option<FreshToken>, TokenError> {
    let (user_id, provider) = (binding.user_id, binding.provider);
    let tokens = clerk.oauth_tokens(&stored.clerk_user_id, provider).await?;
    let txn = db.begin().await?;
    // Under the user's lock, and only if the connection is still there and connected: a
    // disconnect or delete that committed while Clerk answered wins.
    lock_user(&txn, &stored.clerk_user_id).await?;
    let Some(current) = connected_row(&txn, user_id, provider, Some(stored.id)).await? else {
        txn.rollback().await?;
        return Ok(None);
    };
    let fresh = match token_for(
        &tokens,
        &current.external_account_id,
        &current.provider_user_id,
    ) {
        Some(token) => {
            let sealed = cipher.seal(token.token.expose_secret(), binding)?;
            txn.execute_raw(stmt(
                "UPDATE user_calendar_connections SET access_token = $2, token_key_id = $3, \
                   token_format = $5, refresh_token = NULL, expires_at = $4, updated_at = now() \
                 WHERE id = $1",
                vec![
                    current.id.into(),
                    sealed.blob.into(),
                    sealed.key_id.into(),
                    token.expires_at.into(),
                    FORMAT_BOUND.into(),
                ],
            ))
            .await?;
            Some(FreshToken {
                access_token: token.token.clone(),
                expires_at: token.expires_at,
                provider_user_id: current.provider_user_id,
                scopes: current.scopes,
            })
        }
        None => {
            txn.execute_raw(stmt(
                "UPDATE user_calendar_connections SET access_token = NULL, token_key_id = NULL, \
                   status = $2, status_reason = $3, updated_at = now() WHERE id = $1",
                vec![
                    current.id.into(),
                    TOKEN_UNAVAILABLE.into(),
                    "Clerk returned no access token for this account on refresh".into(),
                ],
            ))
            .await?;
            refresh_flags(&txn, user_id).await?;
            None
        }
    };
    txn.commit().await?;
    Ok(fresh)
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
