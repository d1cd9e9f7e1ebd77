//! Reads and writes of `user_calendar_connections`, keeping `users.google_calendar_connected` and
//! `users.microsoft_calendar_connected` in agreement with them.

use chrono::{DateTime, Duration as ChronoDuration, Utc};
use sea_orm::{
    ConnectionTrait, DatabaseConnection, DbBackend, DbErr, Statement, TransactionTrait, Value,
};
use uuid::Uuid;

use crate::{
    Provider,
    accounts::CalendarAccount,
    clerk::{ClerkClient, ClerkError, OAuthToken, token_for},
    crypto::{CryptoError, TokenCipher},
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

/// Makes the user's connections equal `fetched` (inside the caller's transaction): removed or
/// no-longer-calendar accounts are deleted with their tokens, the others upserted with their
/// tokens encrypted, and both flags recomputed.
pub async fn sync_connections<C: ConnectionTrait>(
    conn: &C,
    cipher: Option<&TokenCipher>,
    user_id: Uuid,
    fetched: &[Fetched],
) -> Result<(), StoreError> {
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
    conn.execute_raw(stmt(
        "DELETE FROM user_calendar_connections WHERE user_id = $1 \
         AND NOT (provider || ':' || provider_user_id = ANY($2))",
        vec![user_id.into(), keep.into()],
    ))
    .await?;
    for f in fetched {
        let (status, reason, sealed, expires_at) = match (&f.token, cipher) {
            (Ok(token), Some(cipher)) => (
                CONNECTED,
                None,
                Some(cipher.encrypt(&token.token)?),
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
                 provider_user_id, email, scopes, access_token, token_key_id, expires_at, status, \
                 status_reason) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) \
             ON CONFLICT (user_id, provider, provider_user_id) DO UPDATE SET \
                 external_account_id = EXCLUDED.external_account_id, email = EXCLUDED.email, \
                 scopes = EXCLUDED.scopes, access_token = EXCLUDED.access_token, \
                 token_key_id = EXCLUDED.token_key_id, expires_at = EXCLUDED.expires_at, \
                 status = EXCLUDED.status, status_reason = EXCLUDED.status_reason, \
                 updated_at = now()",
            vec![
                Uuid::new_v4().into(),
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
            ],
        ))
        .await?;
    }
    refresh_flags(conn, user_id).await?;
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

/// A usable access token for a backend.
#[derive(Clone, PartialEq, Eq)]
pub struct FreshToken {
    pub access_token: String,
    pub expires_at: Option<DateTime<Utc>>,
    pub provider_user_id: String,
    pub scopes: String,
}

impl std::fmt::Debug for FreshToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FreshToken")
            .field("access_token", &"[redacted]")
            .field("expires_at", &self.expires_at)
            .field("provider_user_id", &self.provider_user_id)
            .finish()
    }
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

/// The user's access token for `provider`, refreshed through Clerk (which refreshes expired
/// provider tokens on request) when the stored one has expired or is about to. `Ok(None)` when
/// the user has no usable connection of that provider.
pub async fn fresh_access_token(
    db: &DatabaseConnection,
    cipher: &TokenCipher,
    clerk: &ClerkClient,
    user_id: Uuid,
    provider: Provider,
) -> Result<Option<FreshToken>, TokenError> {
    let row = db
        .query_one_raw(stmt(
            "SELECT c.id, c.external_account_id, c.provider_user_id, c.scopes, c.access_token, \
                    c.token_key_id, c.expires_at, u.clerk_user_id \
             FROM user_calendar_connections c JOIN users u ON u.id = c.user_id \
             WHERE c.user_id = $1 AND c.provider = $2 AND c.status = 'connected' \
             ORDER BY c.updated_at DESC LIMIT 1",
            vec![user_id.into(), provider.as_str().into()],
        ))
        .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    let id: Uuid = row.try_get("", "id")?;
    let external_account_id: String = row.try_get("", "external_account_id")?;
    let provider_user_id: String = row.try_get("", "provider_user_id")?;
    let scopes: String = row.try_get("", "scopes")?;
    let blob: Option<Vec<u8>> = row.try_get("", "access_token")?;
    let key_id: Option<String> = row.try_get("", "token_key_id")?;
    let expires_at: Option<DateTime<Utc>> = row.try_get("", "expires_at")?;
    let clerk_user_id: String = row.try_get("", "clerk_user_id")?;

    let still_fresh =
        expires_at.is_none_or(|t| t > Utc::now() + ChronoDuration::seconds(EXPIRY_MARGIN_SECS));
    if still_fresh && let (Some(blob), Some(key_id)) = (&blob, &key_id) {
        return Ok(Some(FreshToken {
            access_token: cipher.decrypt(key_id, blob)?,
            expires_at,
            provider_user_id,
            scopes,
        }));
    }

    let tokens = clerk.oauth_tokens(&clerk_user_id, provider).await?;
    let txn = db.begin().await?;
    let fresh = match token_for(&tokens, &external_account_id, &provider_user_id) {
        Some(token) => {
            let sealed = cipher.encrypt(&token.token)?;
            txn.execute_raw(stmt(
                "UPDATE user_calendar_connections SET access_token = $2, token_key_id = $3, \
                   expires_at = $4, updated_at = now() WHERE id = $1",
                vec![
                    id.into(),
                    sealed.blob.into(),
                    sealed.key_id.into(),
                    token.expires_at.into(),
                ],
            ))
            .await?;
            Some(FreshToken {
                access_token: token.token.clone(),
                expires_at: token.expires_at,
                provider_user_id,
                scopes,
            })
        }
        None => {
            txn.execute_raw(stmt(
                "UPDATE user_calendar_connections SET access_token = NULL, token_key_id = NULL, \
                   status = $2, status_reason = $3, updated_at = now() WHERE id = $1",
                vec![
                    id.into(),
                    TOKEN_UNAVAILABLE.into(),
                    "Clerk returned no access token on refresh".into(),
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

/// Re-encrypts every stored token that is not under the first key. Returns how many were
/// re-encrypted; `progress(done, total)` is called after each.
pub async fn reencrypt_all(
    db: &DatabaseConnection,
    cipher: &TokenCipher,
    mut progress: impl FnMut(usize, usize),
) -> Result<usize, TokenError> {
    let primary = cipher.primary_key_id().to_owned();
    let rows = db
        .query_all_raw(stmt(
            "SELECT id FROM user_calendar_connections \
             WHERE (access_token IS NOT NULL OR refresh_token IS NOT NULL) \
               AND token_key_id IS DISTINCT FROM $1",
            vec![primary.as_str().into()],
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
                "SELECT access_token, refresh_token, token_key_id FROM user_calendar_connections \
                 WHERE id = $1 FOR UPDATE",
                vec![id.into()],
            ))
            .await?;
        if let Some(current) = current {
            let key_id: Option<String> = current.try_get("", "token_key_id")?;
            if key_id.as_deref() != Some(primary.as_str()) {
                let key_id = key_id.unwrap_or_default();
                let reseal = |column: &str| -> Result<Option<Vec<u8>>, TokenError> {
                    let blob: Option<Vec<u8>> = current.try_get("", column)?;
                    match blob {
                        Some(blob) => {
                            let plain = cipher.decrypt(&key_id, &blob)?;
                            Ok(Some(cipher.encrypt(&plain)?.blob))
                        }
                        None => Ok(None),
                    }
                };
                let access = reseal("access_token")?;
                let refresh = reseal("refresh_token")?;
                txn.execute_raw(stmt(
                    "UPDATE user_calendar_connections SET access_token = $2, refresh_token = $3, \
                       token_key_id = $4, updated_at = now() WHERE id = $1",
                    vec![
                        id.into(),
                        access.into(),
                        refresh.into(),
                        primary.as_str().into(),
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
