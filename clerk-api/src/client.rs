//! A small client for Clerk's Backend API: OAuth access tokens of a user's connected accounts,
//! and the user list (for backfills). The secret key never appears in `Debug`, logs or errors.

use std::time::Duration;

use chrono::{DateTime, Utc};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::Value;

use telemetry::traces;
use tracing::{Instrument as _, field::Empty};

use crate::Provider;

/// The default `CLERK_API_URL`.
pub const DEFAULT_API_URL: &str = "https://api.clerk.com";

/// A failed call to Clerk.
#[derive(Debug, thiserror::Error)]
pub enum ClerkError {
    #[error("CLERK_API_URL {0:?} is not an http(s) URL")]
    BadUrl(String),
    #[error("Clerk rate-limited the request (retry after {retry_after:?})")]
    RateLimited { retry_after: Option<Duration> },
    #[error("Clerk answered {status}: {message}")]
    Status { status: u16, message: String },
    #[error("Clerk did not answer in time")]
    Timeout,
    #[error("cannot reach Clerk: {0}")]
    Network(String),
    #[error("Clerk's answer could not be read: {0}")]
    Decode(String),
}

impl ClerkError {
    /// Clerk's error code (`oauth_token_retrieval_error`, …) of an error answer, when it gave one.
    pub fn code(&self) -> Option<&str> {
        match self {
            Self::Status { message, .. }
                if !message.is_empty()
                    && message
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_') =>
            {
                Some(message)
            }
            _ => None,
        }
    }

    /// A short, fixed name of the kind of failure (the `error.type` of a trace span): never
    /// the message, which may quote what Clerk said.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::BadUrl(_) => "bad_url",
            Self::RateLimited { .. } => "rate_limited",
            Self::Status { .. } => "status",
            Self::Timeout => "timeout",
            Self::Network(_) => "network",
            Self::Decode(_) => "decode",
        }
    }

    /// Whether trying again later can succeed: rate limits, 5xx, timeouts, network trouble, and
    /// 401/403 (a secret key being fixed by ops).
    pub fn is_transient(&self) -> bool {
        match self {
            Self::RateLimited { .. } | Self::Timeout | Self::Network(_) => true,
            Self::Status { status, .. } => *status >= 500 || *status == 401 || *status == 403,
            Self::BadUrl(_) | Self::Decode(_) => false,
        }
    }
}

/// An OAuth access token as Clerk hands it out. `Debug` never shows the token.
#[derive(Clone, Debug)]
pub struct OAuthToken {
    pub token: SecretString,
    pub expires_at: Option<DateTime<Utc>>,
    pub external_account_id: Option<String>,
    pub provider_user_id: Option<String>,
    pub scopes: Vec<String>,
}

#[derive(Deserialize)]
struct RawToken {
    token: String,
    #[serde(default)]
    expires_at: Option<i64>,
    #[serde(default)]
    external_account_id: Option<String>,
    #[serde(default)]
    provider_user_id: Option<String>,
    #[serde(default)]
    scopes: Option<Vec<String>>,
}

/// Clerk's `expires_at` has no documented unit: values above 1e12 are milliseconds.
fn timestamp(value: i64) -> Option<DateTime<Utc>> {
    if value > 1_000_000_000_000 {
        DateTime::from_timestamp_millis(value)
    } else {
        DateTime::from_timestamp(value, 0)
    }
}

/// The Backend API client. `Debug` never shows the secret key.
#[derive(Clone, Debug)]
pub struct ClerkClient {
    http: reqwest::Client,
    base: String,
    secret_key: SecretString,
}

/// The default `CLERK_API_TIMEOUT`.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// `CLERK_API_TIMEOUT` (default 10 s): how long one call to Clerk may take.
pub fn api_timeout(
    lookup: &impl Fn(&str) -> Option<String>,
) -> Result<Duration, settings::InvalidSetting> {
    settings::duration(lookup, "CLERK_API_TIMEOUT", DEFAULT_TIMEOUT)
}

impl ClerkClient {
    /// The client the settings ask for: `CLERK_SECRET_KEY` (unset or blank: none),
    /// `CLERK_API_URL` (default [`DEFAULT_API_URL`]) and `CLERK_API_TIMEOUT`. The same rules for
    /// every process that calls Clerk.
    pub fn from_lookup(
        lookup: &impl Fn(&str) -> Option<String>,
    ) -> Result<Option<Self>, settings::InvalidSetting> {
        let timeout = api_timeout(lookup)?;
        let Some(secret) = lookup("CLERK_SECRET_KEY").filter(|k| !k.trim().is_empty()) else {
            return Ok(None);
        };
        let base = lookup("CLERK_API_URL")
            .filter(|u| !u.trim().is_empty())
            .unwrap_or_else(|| DEFAULT_API_URL.to_owned());
        Self::new(base.trim(), secret.trim(), timeout)
            .map(Some)
            .map_err(|e| settings::InvalidSetting::new("CLERK_API_URL", e.to_string()))
    }

    /// A client for `base_url` (e.g. `https://api.clerk.com`) authenticating with `secret_key`.
    pub fn new(base_url: &str, secret_key: &str, timeout: Duration) -> Result<Self, ClerkError> {
        let base = base_url.trim_end_matches('/').to_owned();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(ClerkError::BadUrl(base));
        }
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .build()
            .map_err(|e| ClerkError::Network(e.to_string()))?;
        Ok(Self {
            http,
            base,
            secret_key: SecretString::from(secret_key.to_owned()),
        })
    }

    /// `GET {base}/v1{path}`; `template` is the path with its ids as placeholders (the span's
    /// `url.template`: a trace names no user).
    async fn get(
        &self,
        template: &'static str,
        path: &str,
        query: &[(&str, String)],
    ) -> Result<Value, ClerkError> {
        let span = self.client_span(template);
        let result = self
            .get_in_span(path, query, &span)
            .instrument(span.clone())
            .await;
        if !span.is_disabled() {
            if let Err(ClerkError::Status { status, .. }) = &result {
                span.record("http.response.status_code", status);
            } else if let Err(ClerkError::RateLimited { .. }) = &result {
                span.record("http.response.status_code", 429);
            }
            if let Err(error) = &result {
                span.record("error.type", error.kind());
            }
            traces::record_result(&span, &result);
        }
        result
    }

    /// The client span of one call (OpenTelemetry HTTP client conventions), when traces are
    /// exported.
    fn client_span(&self, template: &'static str) -> tracing::Span {
        if !traces::enabled() {
            return tracing::Span::none();
        }
        let host = self
            .base
            .split_once("://")
            .map_or(self.base.as_str(), |(_, rest)| rest);
        let host = host.split(['/', '@']).next().unwrap_or_default();
        let host = host.rsplit_once(':').map_or(host, |(name, _)| name);
        tracing::info_span!(
            "clerk_api",
            otel.name = "GET",
            otel.kind = "client",
            otel.status_code = Empty,
            http.request.method = "GET",
            url.template = format!("/v1{template}"),
            server.address = host,
            http.response.status_code = Empty,
            error.type = Empty,
        )
    }

    async fn get_in_span(
        &self,
        path: &str,
        query: &[(&str, String)],
        span: &tracing::Span,
    ) -> Result<Value, ClerkError> {
        let mut context = reqwest::header::HeaderMap::new();
        traces::inject(span, |name, value| {
            if let Ok(value) = reqwest::header::HeaderValue::from_str(&value) {
                context.insert(name, value);
            }
        });
        let response = self
            .http
            .get(format!("{}/v1{path}", self.base))
            .query(query)
            .bearer_auth(self.secret_key.expose_secret())
            .header("Clerk-API-Version", "2025-11-10")
            .headers(context)
            .send()
            .await
            // Errors are described without their URL: it holds user ids, and a proxy URL
            // could hold credentials.
            .map_err(|e| {
                if e.is_timeout() {
                    ClerkError::Timeout
                } else {
                    ClerkError::Network(e.without_url().to_string())
                }
            })?;
        let status = response.status();
        span.record("http.response.status_code", status.as_u16());
        if status.as_u16() == 429 {
            let retry_after = response
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_secs);
            return Err(ClerkError::RateLimited { retry_after });
        }
        let body = response.bytes().await.map_err(|e| {
            if e.is_timeout() {
                ClerkError::Timeout
            } else {
                ClerkError::Network(e.without_url().to_string())
            }
        })?;
        if !status.is_success() {
            return Err(ClerkError::Status {
                status: status.as_u16(),
                message: error_message(&body),
            });
        }
        serde_json::from_slice(&body).map_err(|e| ClerkError::Decode(e.to_string()))
    }

    /// The user's access tokens for `provider` (one per connected account of that provider).
    /// A user or account Clerk does not know gives an empty list.
    pub async fn oauth_tokens(
        &self,
        clerk_user_id: &str,
        provider: Provider,
    ) -> Result<Vec<OAuthToken>, ClerkError> {
        let path = format!(
            "/users/{}/oauth_access_tokens/{}",
            encode_segment(clerk_user_id),
            provider.clerk_name()
        );
        let value = match self
            .get(
                "/users/{user_id}/oauth_access_tokens/{provider}",
                &path,
                &[],
            )
            .await
        {
            // The user is gone (its deletion is on its way); a provider turned off is not that.
            Err(error @ ClerkError::Status { status: 404, .. })
                if error.code() != Some("oauth_token_provider_not_enabled") =>
            {
                return Ok(Vec::new());
            }
            other => other?,
        };
        // A bare array, or `{"data": [...]}` when paginated.
        let items = match value {
            Value::Array(items) => items,
            Value::Object(mut map) => match map.remove("data") {
                Some(Value::Array(items)) => items,
                _ => return Err(ClerkError::Decode("no token list in the answer".into())),
            },
            _ => return Err(ClerkError::Decode("no token list in the answer".into())),
        };
        items
            .into_iter()
            .map(|item| {
                // The error names the field only: a token object holds the token itself.
                let raw: RawToken = telemetry::json_errors::from_value(item)
                    .map_err(|e| ClerkError::Decode(e.to_string()))?;
                Ok(OAuthToken {
                    token: SecretString::from(raw.token),
                    expires_at: raw.expires_at.and_then(timestamp),
                    external_account_id: raw.external_account_id,
                    provider_user_id: raw.provider_user_id,
                    scopes: raw.scopes.unwrap_or_default(),
                })
            })
            .collect()
    }

    /// One page of users (`GET /v1/users?limit=&offset=`), newest first, as raw user objects.
    pub async fn list_users(&self, limit: u32, offset: u64) -> Result<Vec<Value>, ClerkError> {
        let value = self
            .get(
                "/users",
                "/users",
                &[
                    ("limit", limit.min(500).to_string()),
                    ("offset", offset.to_string()),
                    ("order_by", "+created_at".into()),
                ],
            )
            .await?;
        list(value, "user")
    }
}

impl ClerkClient {
    /// One page of organizations (`GET /v1/organizations?limit=&offset=`), oldest first, as raw
    /// organization objects.
    pub async fn list_organizations(
        &self,
        limit: u32,
        offset: u64,
    ) -> Result<Vec<Value>, ClerkError> {
        let query = [
            ("limit", limit.min(500).to_string()),
            ("offset", offset.to_string()),
            ("order_by", "+created_at".into()),
        ];
        list(
            self.get("/organizations", "/organizations", &query).await?,
            "organization",
        )
    }

    /// One organization as a raw organization object (`GET /v1/organizations/{id}`); `None`
    /// when Clerk does not know it.
    pub async fn get_organization(
        &self,
        clerk_organization_id: &str,
    ) -> Result<Option<Value>, ClerkError> {
        let path = format!("/organizations/{}", encode_segment(clerk_organization_id));
        match self
            .get("/organizations/{organization_id}", &path, &[])
            .await
        {
            Ok(value) => Ok(Some(value)),
            Err(ClerkError::Status { status: 404, .. }) => Ok(None),
            Err(error) => Err(error),
        }
    }

    /// One page of an organization's memberships
    /// (`GET /v1/organizations/{id}/memberships?limit=&offset=`), as raw membership objects.
    pub async fn list_memberships(
        &self,
        clerk_organization_id: &str,
        limit: u32,
        offset: u64,
    ) -> Result<Vec<Value>, ClerkError> {
        let query = [
            ("limit", limit.min(500).to_string()),
            ("offset", offset.to_string()),
            ("order_by", "+created_at".into()),
        ];
        self.memberships(clerk_organization_id, &query).await
    }

    /// The memberships of one user in one organization
    /// (`GET /v1/organizations/{id}/memberships?user_id=`), as raw membership objects: asked
    /// by user, not by offset, so a listing that shifted while it was read cannot hide one.
    pub async fn memberships_of_user(
        &self,
        clerk_organization_id: &str,
        clerk_user_id: &str,
    ) -> Result<Vec<Value>, ClerkError> {
        let query = [
            ("user_id", clerk_user_id.to_owned()),
            ("limit", "10".into()),
        ];
        self.memberships(clerk_organization_id, &query).await
    }

    /// `GET /v1/organizations/{id}/memberships` with `query`.
    async fn memberships(
        &self,
        clerk_organization_id: &str,
        query: &[(&str, String)],
    ) -> Result<Vec<Value>, ClerkError> {
        let path = format!(
            "/organizations/{}/memberships",
            encode_segment(clerk_organization_id)
        );
        let template = "/organizations/{organization_id}/memberships";
        list(self.get(template, &path, query).await?, "membership")
    }

    /// One user as a raw user object (`GET /v1/users/{id}`); `None` when Clerk does not know it.
    pub async fn get_user(&self, clerk_user_id: &str) -> Result<Option<Value>, ClerkError> {
        let path = format!("/users/{}", encode_segment(clerk_user_id));
        match self.get("/users/{user_id}", &path, &[]).await {
            Ok(value) => Ok(Some(value)),
            Err(ClerkError::Status { status: 404, .. }) => Ok(None),
            Err(error) => Err(error),
        }
    }

    /// How many users the instance has (`GET /v1/users/count`).
    pub async fn count_users(&self) -> Result<u64, ClerkError> {
        let value = self.get("/users/count", "/users/count", &[]).await?;
        value
            .get("total_count")
            .and_then(Value::as_u64)
            .ok_or_else(|| ClerkError::Decode("no total_count in the answer".into()))
    }
}

/// The items of a list answer: a bare array, or `{"data": [...], "total_count"}`.
fn list(value: Value, what: &str) -> Result<Vec<Value>, ClerkError> {
    match value {
        Value::Array(items) => Ok(items),
        Value::Object(mut map) => match map.remove("data") {
            Some(Value::Array(items)) => Ok(items),
            _ => Err(ClerkError::Decode(format!("no {what} list in the answer"))),
        },
        _ => Err(ClerkError::Decode(format!("no {what} list in the answer"))),
    }
}

/// The token for one account among a provider's tokens: the one whose external account id, or
/// else provider user id, is the account's. A token that names another account is never used
/// for this one; a token that names no account at all is used only when it is the only one.
pub fn token_for<'a>(
    tokens: &'a [OAuthToken],
    external_account_id: &str,
    provider_user_id: &str,
) -> Option<&'a OAuthToken> {
    let names_another = |t: &OAuthToken| {
        t.external_account_id
            .as_deref()
            .is_some_and(|id| id != external_account_id)
            || t.provider_user_id
                .as_deref()
                .is_some_and(|id| id != provider_user_id)
    };
    tokens
        .iter()
        .find(|t| {
            t.external_account_id.as_deref() == Some(external_account_id) && !names_another(t)
        })
        .or_else(|| {
            tokens.iter().find(|t| {
                t.provider_user_id.as_deref() == Some(provider_user_id) && !names_another(t)
            })
        })
        .or_else(|| {
            let [only] = tokens else { return None };
            (only.external_account_id.is_none() && only.provider_user_id.is_none()).then_some(only)
        })
}

/// Clerk's `{"errors":[{"message","long_message","code"}]}`, shortened; never echoes tokens
/// since Clerk's error bodies carry none.
fn error_message(body: &[u8]) -> String {
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    parsed
        .as_ref()
        .and_then(|v| v.get("errors"))
        .and_then(|e| e.get(0))
        .and_then(|e| e.get("code").or_else(|| e.get("message")))
        .and_then(Value::as_str)
        .map(|s| s.chars().take(200).collect())
        .unwrap_or_else(|| "no error details".into())
}

fn encode_segment(value: &str) -> String {
    value
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expires_at_in_seconds_or_milliseconds_is_read_right() {
        assert_eq!(
            timestamp(1_735_689_600),
            DateTime::from_timestamp(1_735_689_600, 0)
        );
        assert_eq!(
            timestamp(1_735_689_600_000),
            DateTime::from_timestamp(1_735_689_600, 0)
        );
    }

    #[test]
    fn transient_errors_are_the_ones_a_retry_can_fix() {
        assert!(ClerkError::RateLimited { retry_after: None }.is_transient());
        assert!(
            ClerkError::Status {
                status: 503,
                message: String::new()
            }
            .is_transient()
        );
        assert!(
            !ClerkError::Status {
                status: 422,
                message: String::new()
            }
            .is_transient()
        );
        assert!(!ClerkError::Decode(String::new()).is_transient());
    }

    #[test]
    fn the_secret_key_is_not_in_debug_output() {
        let client = ClerkClient::new(
            "http://127.0.0.1:1",
            "sk_test_hunter2",
            Duration::from_secs(1),
        )
        .expect("client");
        assert!(!format!("{client:?}").contains("hunter2"));
        let token = OAuthToken {
            token: "ya29.abc".into(),
            expires_at: None,
            external_account_id: None,
            provider_user_id: None,
            scopes: vec![],
        };
        assert!(!format!("{token:?}").contains("ya29"));
    }

    fn token(external: Option<&str>, provider_user: Option<&str>) -> OAuthToken {
        OAuthToken {
            token: format!("tok-{external:?}-{provider_user:?}").into(),
            expires_at: None,
            external_account_id: external.map(str::to_owned),
            provider_user_id: provider_user.map(str::to_owned),
            scopes: vec![],
        }
    }

    #[test]
    fn a_token_of_another_account_is_never_used() {
        let other = [token(Some("eac_other"), Some("200"))];
        assert_eq!(
            token_for(&other, "eac_mine", "100").map(|t| t.token.expose_secret()),
            None,
            "the only token, but not ours"
        );
        let half = [token(Some("eac_other"), Some("100"))];
        assert_eq!(
            token_for(&half, "eac_mine", "100").map(|t| t.token.expose_secret()),
            None,
            "ids disagree"
        );
        let mine = [
            token(Some("eac_other"), Some("200")),
            token(Some("eac_mine"), None),
        ];
        assert_eq!(
            token_for(&mine, "eac_mine", "100").map(|t| t.token.expose_secret()),
            Some(mine[1].token.expose_secret())
        );
        let by_user = [token(None, Some("100"))];
        assert_eq!(
            token_for(&by_user, "eac_mine", "100").map(|t| t.token.expose_secret()),
            Some(by_user[0].token.expose_secret())
        );
        let anonymous = [token(None, None)];
        assert_eq!(
            token_for(&anonymous, "eac_mine", "100").map(|t| t.token.expose_secret()),
            Some(anonymous[0].token.expose_secret())
        );
        let two_anonymous = [token(None, None), token(None, None)];
        assert_eq!(
            token_for(&two_anonymous, "eac_mine", "100").map(|t| t.token.expose_secret()),
            None
        );
    }

    #[test]
    fn path_segments_are_encoded() {
        assert_eq!(encode_segment("user_2abc"), "user_2abc");
        assert_eq!(encode_segment("a/../b"), "a%2F%2E%2E%2Fb");
    }
}
