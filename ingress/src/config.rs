//! The ingress's settings, read from the environment (or any lookup, in tests).

use std::{net::SocketAddr, time::Duration};

use broker::{BrokerConfig, BrokerError, PublisherOptions, Topology};
use settings::{InvalidSetting, duration, log_format, number, server_limits, socket_addr};
use telemetry::{LogFormat, ops::ServerLimits};

use crate::verify::{SecretError, Secrets};

/// The default `INGRESS_BODY_LIMIT`: 256 KiB. Clerk's largest user payloads (many external
/// accounts, metadata) are a few tens of KB; memory held by bodies is bounded by
/// `INGRESS_MAX_CONNECTIONS` × this limit.
pub const DEFAULT_BODY_LIMIT: usize = 256 * 1024;

/// Everything the ingress needs to run.
#[derive(Debug)]
pub struct Config {
    /// `INGRESS_ADDR`: where to listen (default `127.0.0.1:8080`).
    pub addr: SocketAddr,
    /// `CLERK_WEBHOOK_SECRET`: one or more `whsec_…` secrets, space separated (required).
    pub secrets: Secrets,
    /// `AMQP_URL`: one or several comma separated broker URLs.
    pub broker: BrokerConfig,
    /// `QUEUE_PREFIX`, `QUEUE_REPLICAS`, `RETRY_DELAYS`: the queue topology.
    pub topology: Topology,
    /// `PUBLISH_TIMEOUT` (default `5s`) and `PUBLISH_CHANNELS` (default 2).
    pub publisher: PublisherOptions,
    /// `INGRESS_BODY_LIMIT`: largest accepted body in bytes (default 256 KiB: a Clerk user with many
    /// accounts is a few tens of KB).
    pub body_limit: usize,
    /// `INGRESS_BODY_TIMEOUT`: time a client has to send the body (default `10s`).
    pub body_timeout: Duration,
    /// `INGRESS_MAX_CONNECTIONS` (default 1024) and `INGRESS_HEADER_TIMEOUT` (default `10s`).
    pub limits: ServerLimits,
    /// `LOG_FORMAT`: `plain` (default) or `json`.
    pub log_format: LogFormat,
}

/// A setting that cannot be used; the message names the variable, never a secret's value.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "CLERK_WEBHOOK_SECRET is not set: copy the signing secret (whsec_…) of the endpoint from the Clerk dashboard"
    )]
    MissingSecret,
    #[error(transparent)]
    BadSecret(#[from] SecretError),
    #[error(transparent)]
    Invalid(#[from] InvalidSetting),
    #[error(transparent)]
    Broker(#[from] BrokerError),
}

impl Config {
    /// Reads the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads settings through `lookup`; tests pass a map.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let secrets = lookup("CLERK_WEBHOOK_SECRET")
            .filter(|s| !s.trim().is_empty())
            .ok_or(ConfigError::MissingSecret)?;
        let secrets = Secrets::parse("CLERK_WEBHOOK_SECRET", &secrets)?;
        let broker = BrokerConfig::from_lookup(&lookup, "clerk-sync ingress")?;
        let topology = Topology::from_lookup(&lookup)?.with_default_replicas(broker.urls.len());
        Ok(Self {
            addr: socket_addr(&lookup, "INGRESS_ADDR", "127.0.0.1:8080")?,
            secrets,
            broker,
            topology,
            publisher: PublisherOptions {
                channels: number(&lookup, "PUBLISH_CHANNELS", 2)?,
                publish_timeout: duration(&lookup, "PUBLISH_TIMEOUT", Duration::from_secs(5))?,
            },
            body_limit: number(&lookup, "INGRESS_BODY_LIMIT", DEFAULT_BODY_LIMIT)?,
            body_timeout: duration(&lookup, "INGRESS_BODY_TIMEOUT", Duration::from_secs(10))?,
            limits: server_limits(&lookup, "INGRESS_HEADER_TIMEOUT", "INGRESS_MAX_CONNECTIONS")?,
            log_format: log_format(&lookup)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use settings::lookup_from as lookup;

    use super::*;

    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

    #[test]
    fn reads_only_settings_of_the_catalog() {
        let values = [("CLERK_WEBHOOK_SECRET", SECRET)];
        let unlisted = settings::catalog::unlisted_reads(&values, |lookup| {
            Config::from_lookup(lookup).expect("valid");
        });
        assert!(unlisted.is_empty(), "not in the catalog: {unlisted:?}");
    }

    #[test]
    fn defaults_apply_when_only_the_secret_is_set() {
        let config =
            Config::from_lookup(lookup(&[("CLERK_WEBHOOK_SECRET", SECRET)])).expect("valid config");
        assert_eq!(config.addr.to_string(), "127.0.0.1:8080");
        assert_eq!(config.body_limit, 256 * 1024);
        let urls: Vec<&str> = config.broker.urls.iter().map(|u| u.expose()).collect();
        assert_eq!(urls, vec![BrokerConfig::DEFAULT_URL]);
        assert_eq!(config.topology.main_queue(), "clerk_sync.events");
    }

    #[test]
    fn a_missing_secret_is_refused_with_guidance() {
        let err = Config::from_lookup(lookup(&[])).expect_err("no secret");
        assert!(err.to_string().contains("CLERK_WEBHOOK_SECRET"), "{err}");
    }

    #[test]
    fn a_secret_without_prefix_or_with_bad_base64_is_refused_without_echoing_it() {
        for bad in ["MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "whsec_not*base64!!"] {
            let err = Config::from_lookup(lookup(&[("CLERK_WEBHOOK_SECRET", bad)]))
                .expect_err("bad secret");
            let message = err.to_string();
            assert!(message.contains("CLERK_WEBHOOK_SECRET"), "{message}");
            assert!(!message.contains(bad), "secret echoed: {message}");
            assert!(!format!("{err:?}").contains(bad), "secret in Debug");
        }
    }

    #[test]
    fn the_config_debug_output_hides_secrets() {
        let config = Config::from_lookup(lookup(&[
            ("CLERK_WEBHOOK_SECRET", SECRET),
            ("AMQP_URL", "amqp://user:hunter2@rabbit:5672/%2f"),
        ]))
        .expect("valid");
        let debug = format!("{config:?}");
        assert!(!debug.contains("MfKQ9r8"), "{debug}");
        assert!(!debug.contains("hunter2"), "{debug}");
    }

    #[test]
    fn bad_numbers_and_durations_name_the_variable() {
        let err = Config::from_lookup(lookup(&[
            ("CLERK_WEBHOOK_SECRET", SECRET),
            ("INGRESS_BODY_LIMIT", "lots"),
        ]))
        .expect_err("bad limit");
        assert!(err.to_string().contains("INGRESS_BODY_LIMIT"), "{err}");
        let err = Config::from_lookup(lookup(&[
            ("CLERK_WEBHOOK_SECRET", SECRET),
            ("PUBLISH_TIMEOUT", "soon"),
        ]))
        .expect_err("bad timeout");
        assert!(err.to_string().contains("PUBLISH_TIMEOUT"), "{err}");
    }
}
