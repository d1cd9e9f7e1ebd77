//! The API's settings, read from the environment (or any lookup, in tests). Secrets are parsed
//! into types whose `Debug` redacts them; errors name the variable, never its value.

use std::{net::SocketAddr, time::Duration};

use clerk_api::ClerkClient;
use http::HeaderValue;
use settings::{InvalidSetting, flag, list, log_format, present, server_limits, socket_addr};
use store::crypto::{KeyError, TokenCipher};
use telemetry::{LogFormat, ops::ServerLimits};

use crate::auth::{Authenticator, JwtKeyError, JwtVerifier, ServiceKeyError, ServiceKeys};

pub use settings::{DEFAULT_DATABASE_URL, DatabaseSettings, ReadReplicaSettings, redact_url};

/// Everything the API needs to run.
#[derive(Debug)]
pub struct Config {
    /// `API_ADDR`: where to listen (default `127.0.0.1:8081`).
    pub addr: SocketAddr,
    /// `DATABASE_URL`, `DATABASE_MAX_CONNECTIONS` and `DATABASE_POOLER`.
    pub database: DatabaseSettings,
    /// `DATABASE_READ_URL` and `DATABASE_READ_MAX_LAG` (default `5s`): a streaming replica for
    /// reads ([`crate::reads`]), behind the same kind of pooler as `DATABASE_URL`. `None`:
    /// every read goes to `DATABASE_URL`.
    pub read_replica: Option<ReadReplicaSettings>,
    /// `CLERK_JWT_KEY`, `CLERK_AUTHORIZED_PARTIES`, `CLERK_ISSUER` and `API_SERVICE_KEYS`: who
    /// may call.
    pub auth: Authenticator,
    /// `API_CORS_ORIGINS`: browser origins allowed to call (comma separated; none: no CORS
    /// headers at all).
    pub cors_origins: Vec<HeaderValue>,
    /// `TOKEN_ENCRYPTION_KEY`, `CLERK_SECRET_KEY`, `CLERK_API_URL`, `CLERK_API_TIMEOUT` (default
    /// `10s`): what the token endpoint needs.
    /// `None` when the first two are not both set (the endpoint then answers 503).
    pub calendar: Option<CalendarSettings>,
    /// `API_LAZY_SYNC` (default: on when `CLERK_SECRET_KEY` is set): a signed-in user's first read
    /// before the worker stored them fetches them from Clerk ([`crate::lazy`]). `None`: off.
    pub lazy: Option<LazySettings>,
    /// `API_HEADER_TIMEOUT` (default `10s`) and `API_MAX_CONNECTIONS` (default 1024).
    pub limits: ServerLimits,
    /// How long a request may take before `408`: longer than two calls to Clerk
    /// (`2 × CLERK_API_TIMEOUT + 5s`, at least 10 s), so that a slow Clerk is answered `503`
    /// by the handler rather than cut off.
    pub request_timeout: Duration,
    /// `LOG_FORMAT`: `plain` (default) or `json`.
    pub log_format: LogFormat,
}

/// What `GET /users/{id}/calendar-connections/{provider}/token` needs.
#[derive(Debug)]
pub struct CalendarSettings {
    /// Decrypts stored tokens and encrypts refreshed ones (`TOKEN_ENCRYPTION_KEY`).
    pub cipher: TokenCipher,
    /// Asks Clerk for a fresh token when the stored one expired (`CLERK_SECRET_KEY`,
    /// `CLERK_API_URL`).
    pub clerk: ClerkClient,
}

/// What lazy sync needs: Clerk's Backend API, and the token cipher when set (calendar
/// connections are then stored with tokens, as the worker stores them).
#[derive(Debug)]
pub struct LazySettings {
    pub clerk: ClerkClient,
    pub cipher: Option<TokenCipher>,
    /// `SYNC_PRIVATE_METADATA` (default `false`): whether the users it stores keep their private
    /// and unsafe metadata, as the worker's setting of the same name.
    pub sync_private_metadata: bool,
}

/// A setting that cannot be used; the message names the variable, never a secret's value.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "neither CLERK_JWT_KEY nor API_SERVICE_KEYS is set, so nobody could call the API: set CLERK_JWT_KEY to the PEM public key from the Clerk dashboard (API keys > JWT public key) and/or API_SERVICE_KEYS to comma separated keys for trusted backends"
    )]
    NoCallers,
    #[error(transparent)]
    JwtKey(#[from] JwtKeyError),
    #[error(transparent)]
    ServiceKey(#[from] ServiceKeyError),
    #[error(transparent)]
    TokenKey(#[from] KeyError),
    #[error(transparent)]
    Invalid(#[from] InvalidSetting),
}

impl Config {
    /// Reads the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads settings through `lookup`; tests pass a map.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let auth = authenticator(&lookup)?;
        let cors_origins = cors_origins(&lookup)?;
        let (calendar, lazy, clerk_timeout) = clerk_settings(&lookup)?;
        Ok(Self {
            addr: socket_addr(&lookup, "API_ADDR", "127.0.0.1:8081")?,
            database: settings::database(&lookup)?,
            read_replica: settings::read_replica(&lookup)?,
            auth,
            cors_origins,
            calendar,
            lazy,
            limits: server_limits(&lookup, "API_HEADER_TIMEOUT", "API_MAX_CONNECTIONS")?,
            request_timeout: (clerk_timeout * 2 + Duration::from_secs(5))
                .max(Duration::from_secs(10)),
            log_format: log_format(&lookup)?,
        })
    }
}

/// `CLERK_JWT_KEY`, `CLERK_AUTHORIZED_PARTIES`, `CLERK_ISSUER` and `API_SERVICE_KEYS`.
fn authenticator(lookup: &impl Fn(&str) -> Option<String>) -> Result<Authenticator, ConfigError> {
    let authorized_parties = list(lookup, "CLERK_AUTHORIZED_PARTIES");
    let issuer = present(lookup, "CLERK_ISSUER")
        .map(|iss| {
            let trimmed = iss.trim();
            if trimmed.starts_with("https://") || trimmed.starts_with("http://") {
                Ok(trimmed.to_owned())
            } else {
                Err(InvalidSetting::new(
                    "CLERK_ISSUER",
                    format!(
                        "{trimmed:?} is not a URL: use the instance's Frontend API URL, e.g. https://clerk.example.com"
                    ),
                ))
            }
        })
        .transpose()?;
    let jwt = present(lookup, "CLERK_JWT_KEY")
        .map(|pem| JwtVerifier::from_pem(&pem, authorized_parties, issuer))
        .transpose()?;
    let service_keys = ServiceKeys::parse(list(lookup, "API_SERVICE_KEYS"))?;
    if jwt.is_none() && service_keys.is_empty() {
        return Err(ConfigError::NoCallers);
    }

    Ok(Authenticator::new(jwt, service_keys))
}

/// `API_CORS_ORIGINS`.
fn cors_origins(lookup: &impl Fn(&str) -> Option<String>) -> Result<Vec<HeaderValue>, ConfigError> {
    let origins = list(lookup, "API_CORS_ORIGINS")
        .into_iter()
        .map(|origin| {
            let trimmed = origin.trim_end_matches('/');
            if !(trimmed.starts_with("http://") || trimmed.starts_with("https://")) {
                return Err(InvalidSetting::new(
                    "API_CORS_ORIGINS",
                    format!("{origin:?} is not an origin such as https://app.example.com"),
                ));
            }
            HeaderValue::from_str(trimmed).map_err(|_| {
                InvalidSetting::new("API_CORS_ORIGINS", format!("{origin:?} is not an origin"))
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(origins)
}

/// `CLERK_SECRET_KEY`, `CLERK_API_URL`, `CLERK_API_TIMEOUT`, `TOKEN_ENCRYPTION_KEY`,
/// `API_LAZY_SYNC` and `SYNC_PRIVATE_METADATA`: what the token endpoint and lazy sync need, and
/// Clerk's timeout.
fn clerk_settings(
    lookup: &impl Fn(&str) -> Option<String>,
) -> Result<(Option<CalendarSettings>, Option<LazySettings>, Duration), ConfigError> {
    let clerk_timeout = clerk_api::client::api_timeout(lookup)?;
    let clerk = ClerkClient::from_lookup(lookup)?;
    let cipher = TokenCipher::from_lookup(lookup)?;
    let calendar = match (&cipher, &clerk) {
        (Some(cipher), Some(clerk)) => Some(CalendarSettings {
            cipher: cipher.clone(),
            clerk: clerk.clone(),
        }),
        _ => None,
    };
    let lazy_sync = flag(lookup, "API_LAZY_SYNC")?.unwrap_or(clerk.is_some());
    let sync_private_metadata = flag(lookup, "SYNC_PRIVATE_METADATA")?.unwrap_or(false);
    let lazy = match (lazy_sync, clerk) {
        (false, _) => None,
        (true, Some(clerk)) => Some(LazySettings {
            clerk,
            cipher,
            sync_private_metadata,
        }),
        (true, None) => {
            return Err(InvalidSetting::new(
                "API_LAZY_SYNC",
                "is on, but CLERK_SECRET_KEY is not set: lazy sync reads users from Clerk's Backend API",
            )
            .into());
        }
    };

    Ok((calendar, lazy, clerk_timeout))
}

#[cfg(test)]
mod tests {
    use settings::lookup_from as lookup;

    use super::*;

    /// A service key long enough to be accepted.
    const K1: &str = "k1-0123456789abcdef0123456789abcdef";

    /// An RSA public key (2048 bits), for parsing only.
    const PEM: &str = "-----BEGIN PUBLIC KEY-----\nMIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAx0tAuSX7apyNlbyaz3Gm\nBsToYpAMHLkD88T55SV0mmqQbm7D3kjlsbzqCxdOkI4PxevJeHuhyI9kif+DQYLU\nkbrIu1crr0FiaMzfHzzCfDxgsAgsczk7Nj1yut7QtCLhUvwbDdvXg8KUjjjFMGHr\nYCFxIZx9zKuRx1XClnyZzkPLtELaZAeLoLSKk/OUURQhoFTTdoBmSRCZCb5L+ecu\nH9xn0a2R+CMQ9p3y0TDD9FsC5Xfbi5cdvrczV27/pazpCFG6+o/aN/VqmB4RzrTH\n1addSomIjMhCOv6Ds2WVEYnRp82squB49P+haeIfaKEfmGW/KyW42kIqxcOHDNgB\nNQIDAQAB\n-----END PUBLIC KEY-----\n";

    #[test]
    fn reads_only_settings_of_the_catalog() {
        let values = [
            ("API_SERVICE_KEYS", K1),
            ("CLERK_JWT_KEY", PEM),
            ("CLERK_SECRET_KEY", "sk_test_x"),
            (
                "TOKEN_ENCRYPTION_KEY",
                "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=",
            ),
        ];
        let unlisted = settings::catalog::unlisted_reads(&values, |lookup| {
            Config::from_lookup(lookup).expect("valid");
        });
        assert!(unlisted.is_empty(), "not in the catalog: {unlisted:?}");
    }

    #[test]
    fn defaults_apply_when_only_a_service_key_is_set() {
        let config = Config::from_lookup(lookup(&[("API_SERVICE_KEYS", K1)])).expect("valid");
        assert_eq!(config.addr.to_string(), "127.0.0.1:8081");
        assert_eq!(config.database.url.expose(), DEFAULT_DATABASE_URL);
        assert_eq!(config.database.max_connections, 10);
        assert!(config.cors_origins.is_empty());
        assert!(config.calendar.is_none());
    }

    #[test]
    fn server_limits_default_and_can_be_set() {
        let config = Config::from_lookup(lookup(&[("API_SERVICE_KEYS", K1)])).expect("valid");
        assert_eq!(config.limits.header_read_timeout, Duration::from_secs(10));
        assert_eq!(config.limits.max_connections, 1024);
        let config = Config::from_lookup(lookup(&[
            ("API_SERVICE_KEYS", K1),
            ("API_HEADER_TIMEOUT", "3s"),
            ("API_MAX_CONNECTIONS", "64"),
        ]))
        .expect("valid");
        assert_eq!(config.limits.header_read_timeout, Duration::from_secs(3));
        assert_eq!(config.limits.max_connections, 64);
        for (name, bad) in [("API_MAX_CONNECTIONS", "0"), ("API_HEADER_TIMEOUT", "soon")] {
            let err = Config::from_lookup(lookup(&[("API_SERVICE_KEYS", K1), (name, bad)]))
                .expect_err("invalid");
            assert!(err.to_string().contains(name), "{err}");
        }
    }

    #[test]
    fn without_jwt_key_and_service_keys_the_api_refuses_to_start() {
        let err = Config::from_lookup(lookup(&[("API_SERVICE_KEYS", " , ")])).expect_err("none");
        let message = err.to_string();
        assert!(message.contains("CLERK_JWT_KEY"), "{message}");
        assert!(message.contains("API_SERVICE_KEYS"), "{message}");
    }

    #[test]
    fn a_jwt_key_with_literal_backslash_n_sequences_is_accepted() {
        let escaped = PEM.replace('\n', "\\n");
        Config::from_lookup(lookup(&[("CLERK_JWT_KEY", &escaped)])).expect("escaped PEM");
        Config::from_lookup(lookup(&[("CLERK_JWT_KEY", PEM)])).expect("plain PEM");
    }

    #[test]
    fn a_bad_jwt_key_is_refused_without_echoing_it() {
        let bad = "-----BEGIN PUBLIC KEY-----\nbm90IGEga2V5\n-----END PUBLIC KEY-----";
        let err = Config::from_lookup(lookup(&[("CLERK_JWT_KEY", bad)])).expect_err("bad");
        let message = err.to_string();
        assert!(message.contains("CLERK_JWT_KEY"), "{message}");
        assert!(!message.contains("bm90IGEga2V5"), "{message}");
    }

    #[test]
    fn the_config_debug_output_hides_secrets() {
        let config = Config::from_lookup(lookup(&[
            (
                "API_SERVICE_KEYS",
                "svc-hunter2-0123456789abcdef0123456789,read:svc-swordfish-0123456789abcdef012345",
            ),
            ("CLERK_JWT_KEY", PEM),
            ("DATABASE_URL", "postgres://app:pa55word@db:5432/clerk_sync"),
            (
                "DATABASE_READ_URL",
                "postgres://reader:r3plicapw@replica:5432/clerk_sync",
            ),
            (
                "TOKEN_ENCRYPTION_KEY",
                "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=",
            ),
            ("CLERK_SECRET_KEY", "sk_test_supersecret"),
        ]))
        .expect("valid");
        let debug = format!("{config:?}");
        for secret in [
            "hunter2",
            "swordfish",
            "pa55word",
            "r3plicapw",
            "sk_test_supersecret",
            "AAECAwQF",
            "x0tAuSX7",
        ] {
            assert!(!debug.contains(secret), "{secret} in {debug}");
        }
        assert!(debug.contains("db:5432"), "{debug}");
        assert!(debug.contains("replica:5432"), "{debug}");
        assert!(config.calendar.is_some());
    }

    #[test]
    fn lazy_sync_is_on_with_a_clerk_secret_key_unless_turned_off() {
        let config = Config::from_lookup(lookup(&[("API_SERVICE_KEYS", K1)])).expect("valid");
        assert!(config.lazy.is_none());
        let with_key = [("API_SERVICE_KEYS", K1), ("CLERK_SECRET_KEY", "sk_test_x")];
        assert!(
            Config::from_lookup(lookup(&with_key))
                .expect("valid")
                .lazy
                .is_some()
        );
        let off = [
            ("API_SERVICE_KEYS", K1),
            ("CLERK_SECRET_KEY", "sk_test_x"),
            ("API_LAZY_SYNC", "false"),
        ];
        assert!(
            Config::from_lookup(lookup(&off))
                .expect("valid")
                .lazy
                .is_none()
        );
        for bad in [
            [("API_SERVICE_KEYS", K1), ("API_LAZY_SYNC", "true")],
            [("API_SERVICE_KEYS", K1), ("API_LAZY_SYNC", "sometimes")],
        ] {
            let err = Config::from_lookup(lookup(&bad)).expect_err("invalid");
            assert!(err.to_string().contains("API_LAZY_SYNC"), "{err}");
        }
    }

    #[test]
    fn lazy_sync_stores_private_metadata_only_when_asked() {
        let with_key = [("API_SERVICE_KEYS", K1), ("CLERK_SECRET_KEY", "sk_test_x")];
        let lazy = Config::from_lookup(lookup(&with_key))
            .expect("valid")
            .lazy
            .expect("on");
        assert!(!lazy.sync_private_metadata);
        let on = [
            ("API_SERVICE_KEYS", K1),
            ("CLERK_SECRET_KEY", "sk_test_x"),
            ("SYNC_PRIVATE_METADATA", "true"),
        ];
        let lazy = Config::from_lookup(lookup(&on))
            .expect("valid")
            .lazy
            .expect("on");
        assert!(lazy.sync_private_metadata);
        let bad = [
            ("API_SERVICE_KEYS", K1),
            ("SYNC_PRIVATE_METADATA", "sometimes"),
        ];
        let err = Config::from_lookup(lookup(&bad)).expect_err("invalid");
        assert!(err.to_string().contains("SYNC_PRIVATE_METADATA"), "{err}");
    }

    #[test]
    fn the_request_timeout_outlasts_two_clerk_calls() {
        let config = Config::from_lookup(lookup(&[("API_SERVICE_KEYS", K1)])).expect("valid");
        assert_eq!(config.request_timeout, Duration::from_secs(25));
        let config = Config::from_lookup(lookup(&[
            ("API_SERVICE_KEYS", K1),
            ("CLERK_API_TIMEOUT", "1s"),
        ]))
        .expect("valid");
        assert_eq!(config.request_timeout, Duration::from_secs(10));
    }

    #[test]
    fn a_short_or_placeholder_service_key_stops_the_start() {
        for bad in ["short-key", "replace_with_a_long_random_key"] {
            let err = Config::from_lookup(lookup(&[("API_SERVICE_KEYS", bad)])).expect_err(bad);
            let message = err.to_string();
            assert!(message.contains("API_SERVICE_KEYS"), "{message}");
            assert!(!message.contains(bad), "{message}");
        }
    }

    #[test]
    fn clerk_issuer_must_be_a_url() {
        let err = Config::from_lookup(lookup(&[("CLERK_JWT_KEY", PEM), ("CLERK_ISSUER", "clerk")]))
            .expect_err("not a URL");
        assert!(err.to_string().contains("CLERK_ISSUER"), "{err}");
        Config::from_lookup(lookup(&[
            ("CLERK_JWT_KEY", PEM),
            ("CLERK_ISSUER", "https://clerk.example.com/"),
        ]))
        .expect("valid");
    }

    #[test]
    fn cors_origins_must_be_origins() {
        let err = Config::from_lookup(lookup(&[
            ("API_SERVICE_KEYS", K1),
            ("API_CORS_ORIGINS", "app.example.com"),
        ]))
        .expect_err("no scheme");
        assert!(err.to_string().contains("API_CORS_ORIGINS"), "{err}");
        let config = Config::from_lookup(lookup(&[
            ("API_SERVICE_KEYS", K1),
            (
                "API_CORS_ORIGINS",
                "https://app.example.com/, http://localhost:5173",
            ),
        ]))
        .expect("valid");
        assert_eq!(config.cors_origins.len(), 2);
        assert_eq!(config.cors_origins[0], "https://app.example.com");
    }
}
