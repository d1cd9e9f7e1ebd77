//! Reading typed settings through a lookup function (`std::env::var` in production, a map in
//! tests), with errors that name the variable and never echo a secret.

use std::time::Duration;

pub use crate::secret::redact_url;

/// A setting whose value cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{name} has an invalid value: {reason}")]
pub struct InvalidSetting {
    /// The environment variable.
    pub name: &'static str,
    /// What is wrong and what is expected.
    pub reason: String,
}

impl InvalidSetting {
    /// An error for `name`.
    pub fn new(name: &'static str, reason: impl Into<String>) -> Self {
        Self {
            name,
            reason: reason.into(),
        }
    }
}

/// The default `DATABASE_URL`.
pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@localhost:5432/clerk_sync";

/// A database URL, which may hold a password: `Debug` shows it redacted.
pub type DatabaseUrl = crate::secret::SecretUrl;

/// What sits between the services and Postgres: `DATABASE_POOLER`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Pooler {
    /// Direct connections, or a pooler that keeps each client's session (the default).
    #[default]
    None,
    /// A pooler in session mode (PgBouncer `pool_mode = session`, Supavisor's session port):
    /// each client connection keeps one server connection, so session state works; clerk-sync
    /// only leaves out the startup parameters such poolers refuse.
    Session,
    /// A pooler in transaction mode (PgBouncer `pool_mode = transaction`, Supavisor's
    /// transaction port, Neon's pooled endpoint): a server connection per transaction, so
    /// nothing may rely on session state between transactions.
    Transaction,
}

impl Pooler {
    /// The setting's value for this mode.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Session => "session",
            Self::Transaction => "transaction",
        }
    }

    /// Whether a pooler sits in front of Postgres (startup parameters it may refuse are left
    /// out).
    pub fn is_pooled(self) -> bool {
        self != Self::None
    }
}

impl std::fmt::Display for Pooler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Pooler {
    type Err = InvalidSetting;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        match value.trim().to_ascii_lowercase().as_str() {
            "" | "none" => Ok(Self::None),
            "session" => Ok(Self::Session),
            "transaction" => Ok(Self::Transaction),
            _ => Err(InvalidSetting::new(
                "DATABASE_POOLER",
                format!("{value:?} is not one of none, session or transaction"),
            )),
        }
    }
}

/// Where the database is: `DATABASE_URL`, `DATABASE_MAX_CONNECTIONS` and `DATABASE_POOLER`.
#[derive(Debug, Clone)]
pub struct DatabaseSettings {
    /// `DATABASE_URL` (default [`DEFAULT_DATABASE_URL`]).
    pub url: DatabaseUrl,
    /// `DATABASE_MAX_CONNECTIONS` (default 10).
    pub max_connections: u32,
    /// `DATABASE_POOLER` (default `none`): what sits in front of `DATABASE_URL`.
    pub pooler: Pooler,
}

/// Reads `DATABASE_URL` (blank: the default), `DATABASE_MAX_CONNECTIONS` and `DATABASE_POOLER`.
pub fn database(
    lookup: &impl Fn(&str) -> Option<String>,
) -> Result<DatabaseSettings, InvalidSetting> {
    let url = present(lookup, "DATABASE_URL")
        .map(|v| v.trim().to_owned())
        .unwrap_or_else(|| DEFAULT_DATABASE_URL.to_owned());
    let url = postgres_url("DATABASE_URL", url)?;
    let max_connections = u32::try_from(number(lookup, "DATABASE_MAX_CONNECTIONS", 10)?)
        .map_err(|_| InvalidSetting::new("DATABASE_MAX_CONNECTIONS", "is too large"))?;
    let pooler = lookup("DATABASE_POOLER")
        .map(|v| v.parse())
        .transpose()?
        .unwrap_or_default();
    Ok(DatabaseSettings {
        url,
        max_connections,
        pooler,
    })
}

/// `DATABASE_DIRECT_URL` (optional): a connection that bypasses the pooler, for migrations.
pub fn direct_database_url(
    lookup: &impl Fn(&str) -> Option<String>,
) -> Result<Option<DatabaseUrl>, InvalidSetting> {
    present(lookup, "DATABASE_DIRECT_URL")
        .map(|v| postgres_url("DATABASE_DIRECT_URL", v.trim().to_owned()))
        .transpose()
}

/// A read replica of the database: `DATABASE_READ_URL` and `DATABASE_READ_MAX_LAG`.
#[derive(Debug, Clone)]
pub struct ReadReplicaSettings {
    /// `DATABASE_READ_URL`: the replica (or a pooler in front of it).
    pub url: DatabaseUrl,
    /// `DATABASE_READ_MAX_LAG` (default 5 s): reads go to the primary while the replica's last
    /// replayed transaction is older than this.
    pub max_lag: Duration,
}

/// The default `DATABASE_READ_MAX_LAG`.
pub const DEFAULT_READ_MAX_LAG: Duration = Duration::from_secs(5);

/// Reads `DATABASE_READ_URL` (unset or blank: no replica) and `DATABASE_READ_MAX_LAG`.
pub fn read_replica(
    lookup: &impl Fn(&str) -> Option<String>,
) -> Result<Option<ReadReplicaSettings>, InvalidSetting> {
    let max_lag = duration(lookup, "DATABASE_READ_MAX_LAG", DEFAULT_READ_MAX_LAG)?;
    present(lookup, "DATABASE_READ_URL")
        .map(|v| {
            Ok(ReadReplicaSettings {
                url: postgres_url("DATABASE_READ_URL", v.trim().to_owned())?,
                max_lag,
            })
        })
        .transpose()
}

/// `url` if it is a Postgres URL; the error names `name`, never the URL (it may hold a
/// password).
fn postgres_url(name: &'static str, url: String) -> Result<DatabaseUrl, InvalidSetting> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(DatabaseUrl::new(url))
    } else {
        Err(InvalidSetting::new(
            name,
            "must start with postgres:// (e.g. postgres://user:pass@host:5432/db)",
        ))
    }
}

/// Parses a duration such as `250ms`, `5s`, `5m` or `1h` (a bare number is seconds).
pub fn parse_duration(value: &str) -> Option<Duration> {
    let value = value.trim();
    let split = value
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(value.len());
    let (number, unit) = value.split_at(split);
    let number: u64 = number.parse().ok()?;
    let millis = match unit.trim() {
        "ms" => number,
        "" | "s" => number.checked_mul(1_000)?,
        "m" | "min" => number.checked_mul(60_000)?,
        "h" => number.checked_mul(3_600_000)?,
        _ => return None,
    };
    Some(Duration::from_millis(millis))
}

/// A non-zero duration setting, or `default` when unset.
pub fn duration(
    lookup: &impl Fn(&str) -> Option<String>,
    name: &'static str,
    default: Duration,
) -> Result<Duration, InvalidSetting> {
    match lookup(name) {
        None => Ok(default),
        Some(v) => parse_duration(&v).filter(|d| !d.is_zero()).ok_or_else(|| {
            InvalidSetting::new(name, format!("{v:?} is not a duration such as 5s or 250ms"))
        }),
    }
}

/// A whole number above 0, or `default` when unset.
pub fn number(
    lookup: &impl Fn(&str) -> Option<String>,
    name: &'static str,
    default: usize,
) -> Result<usize, InvalidSetting> {
    whole(lookup, name, default, 1, "a whole number above 0")
}

/// A whole number of at least `min` (`expected` says so in the error), or `default` when unset.
fn whole(
    lookup: &impl Fn(&str) -> Option<String>,
    name: &'static str,
    default: usize,
    min: usize,
    expected: &str,
) -> Result<usize, InvalidSetting> {
    match lookup(name) {
        None => Ok(default),
        Some(v) => v
            .trim()
            .parse::<usize>()
            .ok()
            .filter(|n| *n >= min)
            .ok_or_else(|| InvalidSetting::new(name, format!("{v:?} is not {expected}"))),
    }
}

/// A setting that is set and not blank (blank means unset, for every setting).
pub fn present(lookup: &impl Fn(&str) -> Option<String>, name: &str) -> Option<String> {
    lookup(name).filter(|v| !v.trim().is_empty())
}

/// The non-empty items of a comma separated setting, trimmed (unset: none).
pub fn list(lookup: &impl Fn(&str) -> Option<String>, name: &str) -> Vec<String> {
    lookup(name)
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// A non-zero duration setting, or `None` when unset or blank (something that is off by
/// default); `example` shows the expected form in the error.
pub fn optional_duration(
    lookup: &impl Fn(&str) -> Option<String>,
    name: &'static str,
    example: &str,
) -> Result<Option<Duration>, InvalidSetting> {
    present(lookup, name)
        .map(|value| {
            parse_duration(&value)
                .filter(|d| !d.is_zero())
                .ok_or_else(|| {
                    InvalidSetting::new(
                        name,
                        format!("{value:?} is not a duration such as {example}"),
                    )
                })
        })
        .transpose()
}

/// A whole number, 0 included, or `default` when unset.
pub fn count(
    lookup: &impl Fn(&str) -> Option<String>,
    name: &'static str,
    default: usize,
) -> Result<usize, InvalidSetting> {
    whole(lookup, name, default, 0, "a whole number")
}

/// An on/off setting (`true`/`false`, `1`/`0`, `on`/`off`, `yes`/`no`), or `None` when unset or
/// blank.
pub fn flag(
    lookup: &impl Fn(&str) -> Option<String>,
    name: &'static str,
) -> Result<Option<bool>, InvalidSetting> {
    present(lookup, name)
        .map(|value| match value.trim().to_ascii_lowercase().as_str() {
            "true" | "1" | "on" | "yes" => Ok(true),
            "false" | "0" | "off" | "no" => Ok(false),
            _ => Err(InvalidSetting::new(name, "must be true or false")),
        })
        .transpose()
}

/// A socket address, or `default` when unset.
pub fn socket_addr(
    lookup: &impl Fn(&str) -> Option<String>,
    name: &'static str,
    default: &str,
) -> Result<std::net::SocketAddr, InvalidSetting> {
    let value = lookup(name).unwrap_or_else(|| default.to_owned());
    value.parse().map_err(|_| {
        InvalidSetting::new(
            name,
            format!("{value:?} is not host:port such as 127.0.0.1:8080"),
        )
    })
}

/// The HTTP server's limits: `header_timeout` (the time a client has to send its request
/// headers, default 10s) and `max_connections` (connections served at once, default 1024), each
/// the name of its variable.
pub fn server_limits(
    lookup: &impl Fn(&str) -> Option<String>,
    header_timeout: &'static str,
    max_connections: &'static str,
) -> Result<telemetry::ops::ServerLimits, InvalidSetting> {
    let defaults = telemetry::ops::ServerLimits::default();
    Ok(telemetry::ops::ServerLimits {
        header_read_timeout: duration(lookup, header_timeout, defaults.header_read_timeout)?,
        max_connections: number(lookup, max_connections, defaults.max_connections)?,
        ..defaults
    })
}

/// A lookup over fixed pairs, for tests of the `from_lookup` constructors.
pub fn lookup_from(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
    let map: std::collections::HashMap<String, String> = pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    move |name| map.get(name).cloned()
}

/// `LOG_FORMAT`: `plain` (default) or `json`.
pub fn log_format(
    lookup: &impl Fn(&str) -> Option<String>,
) -> Result<telemetry::LogFormat, InvalidSetting> {
    lookup("LOG_FORMAT")
        .unwrap_or_default()
        .parse()
        .map_err(|reason: String| InvalidSetting::new("LOG_FORMAT", reason))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("5s"), Some(Duration::from_secs(5)));
        assert_eq!(parse_duration("5m"), Some(Duration::from_secs(300)));
        assert_eq!(parse_duration("7"), Some(Duration::from_secs(7)));
        assert_eq!(parse_duration("5 parsecs"), None);
        assert_eq!(parse_duration(""), None);
    }

    #[test]
    fn bad_values_name_the_variable() {
        let lookup = |_: &str| Some("nope".to_string());
        let err = number(&lookup, "X_COUNT", 1).expect_err("bad");
        assert!(err.to_string().starts_with("X_COUNT"), "{err}");
        assert!(duration(&lookup, "X_WAIT", Duration::ZERO).is_err());
        assert!(socket_addr(&lookup, "X_ADDR", "127.0.0.1:1").is_err());
        assert!(count(&lookup, "X_TRIES", 3).is_err());
        assert!(flag(&lookup, "X_ON").is_err());
        assert!(optional_duration(&lookup, "X_EVERY", "24h").is_err());
    }

    #[test]
    fn blank_means_unset_and_lists_drop_empty_items() {
        let lookup = lookup_from(&[("BLANK", "  "), ("LIST", " a, ,b ,"), ("ZERO", "0")]);
        assert_eq!(present(&lookup, "BLANK"), None);
        assert_eq!(flag(&lookup, "BLANK").expect("blank"), None);
        assert_eq!(
            optional_duration(&lookup, "BLANK", "24h").expect("blank"),
            None
        );
        assert_eq!(list(&lookup, "LIST"), vec!["a", "b"]);
        assert!(list(&lookup, "UNSET").is_empty());
        assert_eq!(count(&lookup, "ZERO", 3).expect("zero"), 0);
        assert_eq!(count(&lookup, "UNSET", 3).expect("unset"), 3);
        let on = lookup_from(&[("X", "Yes"), ("Y", "off"), ("Z", "30m")]);
        assert_eq!(flag(&on, "X").expect("yes"), Some(true));
        assert_eq!(flag(&on, "Y").expect("off"), Some(false));
        assert_eq!(
            optional_duration(&on, "Z", "24h").expect("30m"),
            Some(Duration::from_secs(1800))
        );
    }
}

#[cfg(test)]
mod database_tests {
    use super::*;

    #[test]
    fn the_pooler_is_none_unless_set_and_bad_values_are_refused() {
        let settings = database(&lookup_from(&[])).expect("defaults");
        assert_eq!(settings.pooler, Pooler::None);
        for (value, pooler) in [
            ("transaction", Pooler::Transaction),
            (" Session ", Pooler::Session),
            ("none", Pooler::None),
            ("", Pooler::None),
        ] {
            let settings =
                database(&lookup_from(&[("DATABASE_POOLER", value)])).expect("valid pooler");
            assert_eq!(settings.pooler, pooler, "{value:?}");
        }
        let err = database(&lookup_from(&[("DATABASE_POOLER", "statement")])).expect_err("bad");
        assert!(err.to_string().contains("DATABASE_POOLER"), "{err}");
    }

    #[test]
    fn direct_and_read_urls_are_optional_postgres_urls_that_never_show_their_password() {
        let lookup = lookup_from(&[]);
        assert!(direct_database_url(&lookup).expect("unset").is_none());
        assert!(read_replica(&lookup).expect("unset").is_none());
        let lookup = lookup_from(&[
            ("DATABASE_DIRECT_URL", "postgres://app:d1rect@db:5432/x"),
            ("DATABASE_READ_URL", "postgres://app:r3plica@replica:5432/x"),
            ("DATABASE_READ_MAX_LAG", "2s"),
        ]);
        let direct = direct_database_url(&lookup).expect("valid").expect("set");
        let replica = read_replica(&lookup).expect("valid").expect("set");
        assert_eq!(replica.max_lag, Duration::from_secs(2));
        let shown = format!("{direct:?} {replica:?} {direct}");
        assert!(
            !shown.contains("d1rect") && !shown.contains("r3plica"),
            "{shown}"
        );
        assert!(shown.contains("replica:5432"), "{shown}");
        assert_eq!(
            replica.url.expose(),
            "postgres://app:r3plica@replica:5432/x"
        );
        let default_lag = read_replica(&lookup_from(&[("DATABASE_READ_URL", "postgres://r/x")]))
            .expect("valid")
            .expect("set");
        assert_eq!(default_lag.max_lag, DEFAULT_READ_MAX_LAG);
        for (name, value) in [
            ("DATABASE_DIRECT_URL", "mysql://x:s3cret@h/db"),
            ("DATABASE_READ_URL", "mysql://x:s3cret@h/db"),
        ] {
            let lookup = lookup_from(&[(name, value)]);
            let err = direct_database_url(&lookup)
                .err()
                .or_else(|| read_replica(&lookup).err())
                .expect("refused");
            assert!(err.to_string().contains(name), "{err}");
            assert!(!err.to_string().contains("s3cret"), "{err}");
        }
        let err = read_replica(&lookup_from(&[
            ("DATABASE_READ_URL", "postgres://r/x"),
            ("DATABASE_READ_MAX_LAG", "soon"),
        ]))
        .expect_err("bad lag");
        assert!(err.to_string().contains("DATABASE_READ_MAX_LAG"), "{err}");
    }
}

#[cfg(test)]
mod url_tests {
    use super::*;

    #[test]
    fn urls_are_redacted_but_stay_recognisable() {
        assert_eq!(
            redact_url("postgres://u:p@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(redact_url("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(redact_url("postgres://h/db?x=@"), "postgres://h/db?x=@");
        assert_eq!(redact_url("nonsense"), "[unparseable URL]");
        assert_eq!(
            redact_url("postgres://h:5432/db?user=u&password=s3cret&sslmode=require"),
            "postgres://h:5432/db?user=u&password=***&sslmode=require"
        );
        assert_eq!(
            redact_url("amqp://guest:s3cret@localhost:5672/%2f"),
            "amqp://guest:***@localhost:5672/%2f"
        );
        let url = database(&|name: &str| {
            (name == "DATABASE_URL").then(|| "postgres://app:pa55@db:5432/x".to_owned())
        })
        .expect("valid")
        .url;
        assert_eq!(format!("{url:?}"), "postgres://app:***@db:5432/x");
        assert_eq!(url.expose(), "postgres://app:pa55@db:5432/x");
    }
}
