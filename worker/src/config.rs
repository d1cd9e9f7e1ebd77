//! The worker's settings, read from the environment (or any lookup, in tests).

use std::{net::SocketAddr, time::Duration};

use broker::{BrokerConfig, BrokerError, Topology};
use clerk_api::ClerkClient;
use settings::{
    DatabaseSettings, DatabaseUrl, InvalidSetting, count, duration, flag, log_format, number,
    optional_duration, present, socket_addr,
};
use store::{
    ApplierSettings,
    crypto::{KeyError, TokenCipher},
};
use telemetry::LogFormat;

use crate::ops::trace_url::TraceUrlTemplate;

pub use settings::DEFAULT_DATABASE_URL;

/// Everything the worker and its CLI need. `Debug` shows no secret (the database URL's password
/// is redacted, keys and the Clerk secret are hidden by their types).
#[derive(Debug)]
pub struct Config {
    /// `DATABASE_URL` (default [`DEFAULT_DATABASE_URL`]), `DATABASE_MAX_CONNECTIONS` (pool
    /// size, default 10) and `DATABASE_POOLER` (default `none`).
    pub database: DatabaseSettings,
    /// `DATABASE_DIRECT_URL` (optional): where migrations are applied, bypassing the pooler
    /// (else on `DATABASE_URL`).
    pub direct_database_url: Option<DatabaseUrl>,
    /// `AMQP_URL`: one or several comma separated broker URLs.
    pub broker: BrokerConfig,
    /// `QUEUE_PREFIX`, `QUEUE_REPLICAS`, `RETRY_DELAYS`.
    pub topology: Topology,
    /// `WORKER_ADDR`: health, readiness and metrics, and the console when `console_users` is set
    /// (default `127.0.0.1:8082`).
    pub addr: SocketAddr,
    /// `WORKER_PREFETCH`: deliveries the broker sends ahead (default 512).
    pub prefetch: u16,
    /// `WORKER_CONCURRENCY`: batches applied at once (default 3).
    pub concurrency: usize,
    /// `WORKER_BATCH_SIZE`: events applied in one transaction at most (default 128; 1 applies
    /// every event on its own).
    pub batch_size: usize,
    /// `MAX_ATTEMPTS`: failed attempts before an event is dead-lettered (default 10).
    pub max_attempts: u32,
    /// `PROCESSED_EVENTS_RETENTION`: how long Svix ids are kept for duplicate detection (default
    /// `168h`; Svix stops retrying after about 28 h, and replays are harmless anyway).
    pub processed_events_retention: Duration,
    /// `LOG_FORMAT`: `plain` (default) or `json`.
    pub log_format: LogFormat,
    /// How events are applied: `CLERK_SECRET_KEY` + `CLERK_API_URL` (default
    /// `https://api.clerk.com`) + `CLERK_API_TIMEOUT` (default `10s`), Clerk's Backend API for
    /// calendar tokens and backfills; `TOKEN_ENCRYPTION_KEY`, base64 keys of 32 bytes, space
    /// separated, the first encrypts; `IN_PROCESS_RETRIES`, quick retries (50 ms doubling to
    /// 1 s, at least Clerk's `Retry-After`) of a transient failure before the event goes to a
    /// delayed retry queue (default 3); `SYNC_PRIVATE_METADATA` (default `false`), whether
    /// users' private and unsafe metadata are stored (else those columns are NULL).
    pub applier: ApplierSettings,
    /// `RECONCILE_INTERVAL` (off by default; e.g. `24h`): how often `worker run` reconciles the
    /// tables with Clerk in the background (one worker at a time, once per interval across the
    /// workers: [`store::lease::Schedule`]).
    pub reconcile_interval: Option<Duration>,
    /// `CALENDAR_HEALTH_INTERVAL` (off by default; e.g. `1h`) and `CALENDAR_HEALTH_BUDGET`
    /// (calls to Clerk a run at most; default what fits in a tenth of Clerk's production rate
    /// limit over the interval): how often `worker run` asks Clerk about each calendar
    /// connection, least recently checked first, one worker at a time.
    pub calendar_health: Option<HealthSchedule>,
    /// `CONSOLE_USERS` (off by default): `name:role:key, …`; when set, the operator's console is
    /// served under `/console` on `WORKER_ADDR` (see [`crate::ops::console`]). Keys never show in
    /// `Debug`.
    pub console_users: Option<crate::ops::console::auth::ConsoleUsers>,
    /// `TRACE_URL_TEMPLATE` (optional): the tracing UI's URL of a trace, `{trace_id}` where its
    /// id goes; `worker dlq show` and the console link a dead letter's trace id with it.
    pub trace_url_template: Option<TraceUrlTemplate>,
}

/// When and how much the calendar health check runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthSchedule {
    pub interval: Duration,
    pub budget: u64,
}

impl HealthSchedule {
    fn from_lookup(
        lookup: &impl Fn(&str) -> Option<String>,
    ) -> Result<Option<Self>, InvalidSetting> {
        let Some(interval) = optional_duration(lookup, "CALENDAR_HEALTH_INTERVAL", "1h or 30m")?
        else {
            return Ok(None);
        };
        for needed in ["CLERK_SECRET_KEY", "TOKEN_ENCRYPTION_KEY"] {
            if present(lookup, needed).is_none() {
                return Err(InvalidSetting::new(
                    "CALENDAR_HEALTH_INTERVAL",
                    format!(
                        "is set, but {needed} is not: the check asks Clerk for tokens and stores them sealed"
                    ),
                ));
            }
        }
        let budget = number(
            lookup,
            "CALENDAR_HEALTH_BUDGET",
            usize::try_from(crate::repair::health::default_budget(interval)).unwrap_or(usize::MAX),
        )?;
        Ok(Some(Self {
            interval,
            budget: u64::try_from(budget).unwrap_or(u64::MAX),
        }))
    }
}

/// A setting that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(transparent)]
    Invalid(#[from] InvalidSetting),
    #[error(transparent)]
    Broker(#[from] BrokerError),
    #[error(transparent)]
    TokenKey(#[from] KeyError),
}

impl Config {
    /// Reads the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads settings through `lookup`; tests pass a map.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let database = settings::database(&lookup)?;
        let prefetch = number(&lookup, "WORKER_PREFETCH", 512)?;
        let prefetch = u16::try_from(prefetch)
            .map_err(|_| InvalidSetting::new("WORKER_PREFETCH", "must be at most 65535"))?;
        let max_attempts = number(&lookup, "MAX_ATTEMPTS", 10)?;
        let in_process_retries = count(&lookup, "IN_PROCESS_RETRIES", 3)?;
        let reconcile_interval = optional_duration(&lookup, "RECONCILE_INTERVAL", "24h or 30m")?;
        if reconcile_interval.is_some() && present(&lookup, "CLERK_SECRET_KEY").is_none() {
            return Err(InvalidSetting::new(
                "RECONCILE_INTERVAL",
                "is set, but CLERK_SECRET_KEY is not: reconciling reads Clerk's user list",
            )
            .into());
        }
        let broker = BrokerConfig::from_lookup(&lookup, "clerk-sync worker")?;
        let topology = Topology::from_lookup(&lookup)?.with_default_replicas(broker.urls.len());
        Ok(Self {
            database,
            direct_database_url: settings::direct_database_url(&lookup)?,
            broker,
            topology,
            addr: socket_addr(&lookup, "WORKER_ADDR", "127.0.0.1:8082")?,
            prefetch,
            concurrency: number(&lookup, "WORKER_CONCURRENCY", 3)?,
            batch_size: number(&lookup, "WORKER_BATCH_SIZE", 128)?,
            max_attempts: u32::try_from(max_attempts).unwrap_or(u32::MAX),
            processed_events_retention: duration(
                &lookup,
                "PROCESSED_EVENTS_RETENTION",
                Duration::from_secs(7 * 24 * 3600),
            )?,
            log_format: log_format(&lookup)?,
            applier: ApplierSettings {
                clerk: ClerkClient::from_lookup(&lookup)?,
                cipher: TokenCipher::from_lookup(&lookup)?,
                in_process_retries,
                store_private_metadata: flag(&lookup, "SYNC_PRIVATE_METADATA")?.unwrap_or(false),
            },
            reconcile_interval,
            calendar_health: HealthSchedule::from_lookup(&lookup)?,
            console_users: present(&lookup, "CONSOLE_USERS")
                .map(|value| crate::ops::console::auth::ConsoleUsers::parse(&value))
                .transpose()
                .map_err(|reason| InvalidSetting::new("CONSOLE_USERS", reason))?,
            trace_url_template: present(&lookup, "TRACE_URL_TEMPLATE")
                .map(|value| TraceUrlTemplate::parse(&value))
                .transpose()
                .map_err(|reason| InvalidSetting::new("TRACE_URL_TEMPLATE", reason))?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_metadata_is_not_synced_unless_asked() {
        let config = |value: Option<&str>| {
            Config::from_lookup(|name| {
                (name == "SYNC_PRIVATE_METADATA")
                    .then(|| value.map(str::to_owned))
                    .flatten()
            })
        };
        assert!(
            !config(None)
                .expect("defaults")
                .applier
                .store_private_metadata
        );
        assert!(
            !config(Some("false"))
                .expect("valid")
                .applier
                .store_private_metadata
        );
        assert!(
            config(Some("true"))
                .expect("valid")
                .applier
                .store_private_metadata
        );
        let err = config(Some("maybe")).expect_err("not a bool");
        assert!(err.to_string().contains("SYNC_PRIVATE_METADATA"), "{err}");
    }

    #[test]
    fn reconcile_interval_is_off_by_default_and_needs_clerk() {
        assert_eq!(
            Config::from_lookup(|_| None)
                .expect("defaults")
                .reconcile_interval,
            None
        );
        let err = Config::from_lookup(|name| (name == "RECONCILE_INTERVAL").then(|| "24h".into()))
            .expect_err("no Clerk key");
        assert!(err.to_string().contains("CLERK_SECRET_KEY"), "{err}");
        let config = Config::from_lookup(|name| match name {
            "RECONCILE_INTERVAL" => Some("24h".into()),
            "CLERK_SECRET_KEY" => Some("sk_test_x".into()),
            _ => None,
        })
        .expect("valid");
        assert_eq!(config.reconcile_interval, Some(Duration::from_secs(86_400)));
    }

    #[test]
    fn reads_only_settings_of_the_catalog() {
        let values = [
            ("CLERK_SECRET_KEY", "sk_test_x"),
            (
                "TOKEN_ENCRYPTION_KEY",
                "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=",
            ),
            ("RECONCILE_INTERVAL", "24h"),
            (
                "CONSOLE_USERS",
                "alice:operator:0123456789abcdef0123456789abcdef",
            ),
            ("TRACE_URL_TEMPLATE", "http://jaeger:16686/trace/{trace_id}"),
        ];
        let unlisted = settings::catalog::unlisted_reads(&values, |lookup| {
            Config::from_lookup(lookup).expect("valid");
        });
        assert!(unlisted.is_empty(), "not in the catalog: {unlisted:?}");
    }

    #[test]
    fn defaults_match_the_contract() {
        let config = Config::from_lookup(|_| None).expect("defaults");
        assert_eq!(config.database.url.expose(), DEFAULT_DATABASE_URL);
        assert_eq!(config.addr.to_string(), "127.0.0.1:8082");
        assert_eq!(config.max_attempts, 10);
    }

    #[test]
    fn the_database_and_broker_passwords_never_show_in_debug() {
        let config = Config::from_lookup(|name| match name {
            "DATABASE_URL" => Some("postgres://u:hunter2@db/x".to_string()),
            "AMQP_URL" => Some("amqp://u:swordfish@rabbit:5672/%2f".to_string()),
            _ => None,
        })
        .expect("valid");
        let debug = format!("{config:?}");
        assert!(
            !debug.contains("hunter2") && !debug.contains("swordfish"),
            "{debug}"
        );
        assert!(debug.contains("rabbit:5672"), "{debug}");
    }

    #[test]
    fn clerk_and_token_keys_are_optional_but_validated_and_never_printed() {
        let config = Config::from_lookup(|name| match name {
            "CLERK_SECRET_KEY" => Some("sk_live_hunter2".into()),
            "TOKEN_ENCRYPTION_KEY" => Some("MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=".into()),
            _ => None,
        })
        .expect("valid");
        assert!(config.applier.clerk.is_some() && config.applier.cipher.is_some());
        let debug = format!("{config:?}");
        assert!(
            !debug.contains("hunter2") && !debug.contains("MDEyMzQ1"),
            "{debug}"
        );
        let err =
            Config::from_lookup(|name| (name == "TOKEN_ENCRYPTION_KEY").then(|| "short".into()))
                .expect_err("bad key");
        assert!(err.to_string().contains("TOKEN_ENCRYPTION_KEY"), "{err}");
    }

    #[test]
    fn console_users_are_optional_validated_and_their_keys_never_printed() {
        assert!(
            Config::from_lookup(|_| None)
                .expect("defaults")
                .console_users
                .is_none()
        );
        let config = Config::from_lookup(|name| {
            (name == "CONSOLE_USERS")
                .then(|| "alice:operator:hunter2hunter2hunter2hunter2hunter2".into())
        })
        .expect("valid");
        assert!(config.console_users.is_some());
        assert!(!format!("{config:?}").contains("hunter2"));
        let err = Config::from_lookup(|name| {
            (name == "CONSOLE_USERS").then(|| "alice:operator:hunter2".into())
        })
        .expect_err("short key");
        assert!(err.to_string().contains("CONSOLE_USERS"), "{err}");
        assert!(!err.to_string().contains("hunter2"), "{err}");
    }

    #[test]
    fn the_trace_url_template_is_optional_and_must_be_an_http_url_with_the_placeholder() {
        assert!(
            Config::from_lookup(|_| None)
                .expect("defaults")
                .trace_url_template
                .is_none()
        );
        let template = |value: &'static str| {
            Config::from_lookup(move |name| (name == "TRACE_URL_TEMPLATE").then(|| value.into()))
        };
        let config =
            template("https://tempo.example.com/explore?traceId={trace_id}").expect("valid");
        assert_eq!(
            config.trace_url_template.map(|t| t.url("abc")).as_deref(),
            Some("https://tempo.example.com/explore?traceId=abc")
        );
        let err = template("https://tempo.example.com/explore").expect_err("no placeholder");
        let text = err.to_string();
        assert!(
            text.contains("TRACE_URL_TEMPLATE") && text.contains("{trace_id}"),
            "{text}"
        );
        let err = template("tempo.example.com/{trace_id}").expect_err("not a URL");
        assert!(err.to_string().contains("TRACE_URL_TEMPLATE"), "{err}");
    }

    #[test]
    fn bad_values_name_their_variable() {
        let err = Config::from_lookup(|name| (name == "WORKER_PREFETCH").then(|| "70000".into()))
            .expect_err("too big");
        assert!(err.to_string().contains("WORKER_PREFETCH"), "{err}");
        let err = Config::from_lookup(|name| (name == "DATABASE_URL").then(|| "mysql://x".into()))
            .expect_err("wrong scheme");
        assert!(err.to_string().contains("DATABASE_URL"), "{err}");
    }
}
