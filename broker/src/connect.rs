//! Connecting to one of several RabbitMQ nodes, with exponential backoff, and noticing when the
//! connection is gone.

use std::{future::Future, time::Duration};

use backon::{BackoffBuilder, ExponentialBuilder};
use futures_util::StreamExt;
use lapin::{Channel, Connection, ConnectionProperties, Event};

use settings::secret::SecretUrl;

use crate::BrokerVersion;

/// Where and how to connect. `Debug` shows the URLs with their passwords redacted.
#[derive(Clone, Debug)]
pub struct BrokerConfig {
    /// AMQP URLs, one per cluster node; tried in turn.
    pub urls: Vec<SecretUrl>,
    /// Shown in the RabbitMQ management UI.
    pub connection_name: String,
    /// First delay between reconnect attempts; it doubles up to `max_backoff`.
    pub min_backoff: Duration,
    /// Longest delay between reconnect attempts.
    pub max_backoff: Duration,
    /// The nodes' RabbitMQ release, asked once (see [`BrokerConfig::server_version`]).
    version: std::sync::Arc<std::sync::OnceLock<BrokerVersion>>,
}

impl BrokerConfig {
    /// The default URL of the contract.
    pub const DEFAULT_URL: &'static str = "amqp://guest:guest@localhost:5672/%2f";

    /// Parses `AMQP_URL`: one URL, or several separated by commas (one per cluster node).
    pub fn parse_urls(value: &str) -> Result<Vec<String>, BrokerError> {
        let urls: Vec<String> = value
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .map(str::to_owned)
            .collect();
        if urls.is_empty() {
            return Err(BrokerError::BadUrl {
                url: String::new(),
                reason: "no URL given".into(),
            });
        }
        for url in &urls {
            url.parse::<lapin::uri::AMQPUri>()
                .map_err(|reason| BrokerError::BadUrl {
                    url: redact_url(url),
                    reason,
                })?;
        }
        Ok(urls)
    }

    /// Reads `AMQP_URL` (default [`Self::DEFAULT_URL`]) through `lookup`.
    pub fn from_lookup(
        lookup: &impl Fn(&str) -> Option<String>,
        connection_name: &str,
    ) -> Result<Self, BrokerError> {
        let value = lookup("AMQP_URL").unwrap_or_else(|| Self::DEFAULT_URL.into());
        Ok(Self::new(Self::parse_urls(&value)?, connection_name))
    }

    /// A configuration for these URLs with the default backoff (100 ms doubling to 5 s).
    pub fn new(urls: Vec<String>, connection_name: impl Into<String>) -> Self {
        Self {
            urls: urls.into_iter().map(SecretUrl::new).collect(),
            connection_name: connection_name.into(),
            min_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            version: std::sync::Arc::default(),
        }
    }

    /// The RabbitMQ release of the first node that tells it (all nodes of a cluster run one),
    /// remembered once known; `None` when no node can be asked (TLS, all down).
    pub async fn server_version(&self) -> Option<BrokerVersion> {
        if let Some(version) = self.version.get() {
            return Some(*version);
        }
        for url in &self.urls {
            if let Some(version) = crate::version::detect(url.expose()).await {
                let _ = self.version.set(version);
                return Some(version);
            }
        }
        None
    }
}

/// What can go wrong talking to RabbitMQ.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// An `AMQP_URL` entry does not parse.
    #[error(
        "AMQP_URL entry {url:?} is not a valid AMQP URL ({reason}); expected amqp://user:pass@host:5672/vhost"
    )]
    BadUrl { url: String, reason: String },
    /// Declaring a queue or exchange failed, typically because it exists with other arguments.
    #[error(
        "declaring {name} failed: {source}; if it exists with other arguments, delete it or change the queue prefix"
    )]
    Declare {
        name: String,
        #[source]
        source: lapin::Error,
    },
    /// A setting has a value that cannot be used.
    #[error("{name}: {reason}")]
    BadSetting { name: &'static str, reason: String },
    /// No node accepted a connection.
    #[error(
        "cannot connect to RabbitMQ at {urls}: {reason}; check AMQP_URL and that the broker is up"
    )]
    Connect { urls: String, reason: String },
    /// Any other AMQP failure.
    #[error("RabbitMQ: {0}")]
    Amqp(#[from] lapin::Error),
}

impl BrokerError {
    pub(crate) fn setting(name: &'static str, reason: &str) -> Self {
        Self::BadSetting {
            name,
            reason: reason.to_owned(),
        }
    }

    pub(crate) fn declare(name: &str, source: lapin::Error) -> Self {
        Self::Declare {
            name: name.to_owned(),
            source,
        }
    }
}

pub use settings::redact_url;

/// How long one node is given to accept a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// One pass over the nodes: a connection to the first that accepts one (each given 10 s),
/// shown in RabbitMQ's management UI as `config.connection_name` and `purpose`. The error is the
/// last node's, naming every node tried. What every connect of clerk-sync goes through: the
/// long-running processes loop over it ([`connect_with_backoff`]), the ops commands call it once.
pub async fn connect_first(
    config: &BrokerConfig,
    purpose: &str,
) -> Result<Connection, BrokerError> {
    let name = if purpose.is_empty() {
        config.connection_name.clone()
    } else {
        format!("{} {purpose}", config.connection_name)
    };
    let mut last = None;
    for url in &config.urls {
        let props = ConnectionProperties::default().with_connection_name(name.clone().into());
        match tokio::time::timeout(CONNECT_TIMEOUT, Connection::connect(url.expose(), props)).await
        {
            Ok(Ok(connection)) => {
                tracing::info!(node = %url, "connected to RabbitMQ");
                return Ok(connection);
            }
            Ok(Err(error)) => {
                tracing::debug!(node = %url, error.message = %error, "cannot connect to RabbitMQ");
                last = Some(error.to_string());
            }
            Err(_) => {
                tracing::debug!(node = %url, "connecting to RabbitMQ timed out");
                last = Some(format!("no answer within {}s", CONNECT_TIMEOUT.as_secs()));
            }
        }
    }
    Err(BrokerError::Connect {
        urls: config
            .urls
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", "),
        reason: last.unwrap_or_else(|| "no URL given".into()),
    })
}

/// Connects to the first node that answers, cycling through the URLs with exponential backoff and
/// jitter until one does ([`connect_first`] again and again). Returns `None` only if `shutdown`
/// completes first.
pub async fn connect_with_backoff(
    config: &BrokerConfig,
    shutdown: impl Future<Output = ()>,
) -> Option<Connection> {
    tokio::pin!(shutdown);
    let mut delays = backoff(config);
    let mut attempt: u64 = 0;
    loop {
        let result = tokio::select! {
            () = &mut shutdown => return None,
            r = connect_first(config, "") => r,
        };
        match result {
            Ok(connection) => return Some(connection),
            Err(error) => {
                tracing::warn!(attempt, error.message = %error, "cannot connect to RabbitMQ; retrying")
            }
        }
        attempt += 1;
        let delay = delays.next().unwrap_or(config.max_backoff);
        tokio::select! {
            () = &mut shutdown => return None,
            () = tokio::time::sleep(delay) => {}
        }
    }
}

/// Messages ready and consumers of `queue` (a passive declare: nothing is created), or `None`
/// when it does not exist. A miss closes the channel (AMQP's rule): use a channel of its own.
pub async fn queue_depth(
    channel: &Channel,
    queue: &str,
) -> Result<Option<QueueDepth>, lapin::Error> {
    let options = lapin::options::QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    match channel
        .queue_declare(queue.into(), options, lapin::types::FieldTable::default())
        .await
    {
        Ok(queue) => Ok(Some(QueueDepth {
            messages: queue.message_count(),
            consumers: queue.consumer_count(),
        })),
        // A missing queue is a channel error (404 NOT_FOUND): the broker closes the channel.
        Err(error) if !channel.status().connected() => {
            tracing::debug!(queue, error.message = %error, "passive declare closed the channel");
            Ok(None)
        }
        Err(error) => Err(error),
    }
}

/// What [`queue_depth`] reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueDepth {
    /// Messages ready for delivery.
    pub messages: u32,
    /// Consumers attached.
    pub consumers: u32,
}

fn backoff(config: &BrokerConfig) -> impl Iterator<Item = Duration> {
    ExponentialBuilder::new()
        .with_min_delay(config.min_backoff)
        .with_max_delay(config.max_backoff)
        .with_jitter()
        .without_max_times()
        .build()
}

/// How long each close in [`close_gracefully`] may take.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// Closes `channels`, then `connection`, each waiting at most two seconds for the broker.
///
/// The channels first, and explicitly: a lapin `Channel` dropped while still open queues a close
/// of its own, which then runs after the connection's close has begun and fails; lapin logs that
/// as `ERROR Connection error … invalid channel state: Closing` on every clean shutdown.
pub async fn close_gracefully(connection: &Connection, channels: &[Channel], reason: &str) {
    close_channels(channels, reason).await;
    if connection.status().connected() {
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, connection.close(200, reason.into())).await;
    }
}

/// Closes the channels that are still open, each waiting at most two seconds for the broker (see
/// [`close_gracefully`] for why before the connection).
pub async fn close_channels(channels: &[Channel], reason: &str) {
    for channel in channels {
        if channel.status().connected() {
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, channel.close(200, reason.into())).await;
        }
    }
}

/// Resolves when the connection reports an error or stops being connected.
pub async fn wait_until_closed(connection: &Connection) {
    let mut events = Box::pin(connection.events_listener());
    let mut poll = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            event = events.next() => match event {
                Some(Event::Error(error)) => {
                    tracing::warn!(error.message = %error, "RabbitMQ connection failed");
                    return;
                }
                Some(_) => {}
                None => return,
            },
            _ = poll.tick() => {
                if !connection.status().connected() {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact_url("amqp://guest:s3cret@localhost:5672/%2f"),
            "amqp://guest:***@localhost:5672/%2f"
        );
        assert_eq!(redact_url("amqp://localhost"), "amqp://localhost");
    }

    #[test]
    fn several_urls_are_split_on_commas() {
        let urls = BrokerConfig::parse_urls("amqp://a:1@h1:5672/%2f, amqp://a:1@h2:5673/%2f")
            .expect("valid");
        assert_eq!(urls.len(), 2);
        assert!(BrokerConfig::parse_urls(" , ").is_err());
    }

    #[test]
    fn a_bad_url_is_refused_without_its_password() {
        let err = BrokerConfig::parse_urls("http://u:topsecret@h").expect_err("invalid");
        assert!(!err.to_string().contains("topsecret"), "{err}");
    }
}
