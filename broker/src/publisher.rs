//! A publisher that heals itself: a supervisor task keeps a connection and a few confirm-mode
//! channels open (reconnecting with backoff and redeclaring the topology when the broker comes
//! back), and `publish` succeeds only on a broker confirm of a routed message.

use std::{
    sync::{
        Arc, RwLock,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use lapin::{
    BasicProperties, Channel, Confirmation, Connection,
    options::{BasicPublishOptions, ConfirmSelectOptions},
};
use tokio::{
    sync::{Notify, watch},
    task::JoinHandle,
    time::Instant,
};

use crate::{
    BrokerConfig, BrokerError, Topology, close_gracefully, connect_with_backoff, wait_until_closed,
};

/// Tuning of the publisher.
#[derive(Debug, Clone)]
pub struct PublisherOptions {
    /// Confirm-mode channels shared by all publishes (round robin). One channel already pipelines
    /// many publishes; a few let the broker spread the work.
    pub channels: usize,
    /// How long one `publish` may take in total, retries included, before it gives up.
    pub publish_timeout: Duration,
}

impl Default for PublisherOptions {
    fn default() -> Self {
        Self {
            channels: 2,
            publish_timeout: Duration::from_secs(5),
        }
    }
}

/// Why a publish was not confirmed. Every variant means "not stored": the caller must not report
/// success.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// No connection to RabbitMQ right now (the supervisor is reconnecting).
    #[error("not connected to RabbitMQ")]
    NotConnected,
    /// The broker refused to store the message (e.g. a full queue or a leader election).
    #[error("RabbitMQ nacked the publish")]
    Nacked,
    /// No queue is bound for the routing key: the topology is missing.
    #[error("RabbitMQ returned the message as unroutable")]
    Unroutable,
    /// No confirm arrived within the publish timeout.
    #[error("no publisher confirm within {0:?}")]
    Timeout(Duration),
    /// The channel or connection failed while publishing.
    #[error("publishing failed: {0}")]
    Amqp(#[from] lapin::Error),
}

struct Inner {
    channels: RwLock<Vec<Channel>>,
    next: AtomicUsize,
    /// Woken by a publish that failed in a way that may mean the connection is gone.
    suspect: Notify,
    /// Set by a nacked publish. On RabbitMQ 3.10 a channel whose quorum-queue leader died with
    /// publishes in flight can keep nacking every later publish; fresh channels do not.
    nacked: AtomicBool,
    shutdown: watch::Sender<bool>,
    options: PublisherOptions,
    topology: Topology,
}

/// Cheap to clone; all clones share the connection and channels.
#[derive(Clone)]
pub struct Publisher {
    inner: Arc<Inner>,
    supervisor: Arc<std::sync::Mutex<Option<JoinHandle<()>>>>,
}

impl Publisher {
    /// Starts the supervisor task and returns at once; `is_ready` turns true once connected.
    pub fn start(config: BrokerConfig, topology: Topology, options: PublisherOptions) -> Self {
        let (shutdown, _) = watch::channel(false);
        let inner = Arc::new(Inner {
            channels: RwLock::new(Vec::new()),
            next: AtomicUsize::new(0),
            suspect: Notify::new(),
            nacked: AtomicBool::new(false),
            shutdown,
            options,
            topology,
        });
        let handle = tokio::spawn(supervise(inner.clone(), config));
        Self {
            inner,
            supervisor: Arc::new(std::sync::Mutex::new(Some(handle))),
        }
    }

    /// The topology this publisher declares.
    pub fn topology(&self) -> &Topology {
        &self.inner.topology
    }

    /// True while a connection with open confirm channels is up.
    pub fn is_ready(&self) -> bool {
        self.inner
            .channels
            .read()
            .map(|c| !c.is_empty() && c.iter().all(|ch| ch.status().connected()))
            .unwrap_or(false)
    }

    /// Publishes a persistent, mandatory message to the topology's exchange and waits for the
    /// broker's confirm. Nacks, lost connections and reconnects are retried until the publish
    /// timeout; only a confirmed, routed publish returns `Ok`.
    pub async fn publish(
        &self,
        routing_key: &str,
        payload: &[u8],
        properties: BasicProperties,
    ) -> Result<(), PublishError> {
        let timeout = self.inner.options.publish_timeout;
        let deadline = Instant::now() + timeout;
        let mut delay = Duration::from_millis(20);
        loop {
            let attempt = self.try_publish(routing_key, payload, properties.clone());
            let error = match tokio::time::timeout_at(deadline, attempt).await {
                Ok(Ok(())) => return Ok(()),
                Ok(Err(error)) => error,
                Err(_) => {
                    self.inner.suspect.notify_one();
                    return Err(PublishError::Timeout(timeout));
                }
            };
            if matches!(error, PublishError::Nacked) {
                self.inner.nacked.store(true, Ordering::SeqCst);
            }
            if !matches!(error, PublishError::Unroutable) {
                self.inner.suspect.notify_one();
            }
            if Instant::now() + delay >= deadline {
                return Err(error);
            }
            tracing::debug!(error.message = %error, "publish not confirmed; retrying");
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_millis(500));
        }
    }

    async fn try_publish(
        &self,
        routing_key: &str,
        payload: &[u8],
        properties: BasicProperties,
    ) -> Result<(), PublishError> {
        let channel = self.pick_channel().ok_or(PublishError::NotConnected)?;
        publish_confirmed(
            &channel,
            self.inner.topology.exchange(),
            routing_key,
            payload,
            properties,
        )
        .await
    }

    fn pick_channel(&self) -> Option<Channel> {
        let channels = self.inner.channels.read().ok()?;
        if channels.is_empty() {
            return None;
        }
        let i = self.inner.next.fetch_add(1, Ordering::Relaxed) % channels.len();
        Some(channels[i].clone())
    }

    /// Stops the supervisor and closes the connection. Publishes after this fail.
    pub async fn close(&self) {
        let _ = self.inner.shutdown.send(true);
        let handle = self.supervisor.lock().ok().and_then(|mut h| h.take());
        if let Some(handle) = handle {
            let _ = handle.await;
        }
    }
}

/// Publishes one persistent, mandatory message on a confirm-mode channel and waits for the
/// broker's verdict: `Ok` only for an ack of a routed message.
pub async fn publish_confirmed(
    channel: &Channel,
    exchange: &str,
    routing_key: &str,
    payload: &[u8],
    properties: BasicProperties,
) -> Result<(), PublishError> {
    let confirm = channel
        .basic_publish(
            exchange.into(),
            routing_key.into(),
            BasicPublishOptions {
                // An unroutable message must come back as a failure, not vanish.
                mandatory: true,
                ..BasicPublishOptions::default()
            },
            payload,
            properties.with_delivery_mode(2),
        )
        .await?;
    match confirm.await? {
        Confirmation::Ack(None) => Ok(()),
        Confirmation::Ack(Some(_)) => Err(PublishError::Unroutable),
        Confirmation::Nack(_) | Confirmation::NotRequested => Err(PublishError::Nacked),
    }
}

async fn supervise(inner: Arc<Inner>, config: BrokerConfig) {
    let mut shutdown = inner.shutdown.subscribe();
    loop {
        let stop = {
            let mut rx = shutdown.clone();
            async move {
                let _ = rx.wait_for(|stop| *stop).await;
            }
        };
        let Some(connection) = connect_with_backoff(&config, stop).await else {
            return;
        };
        let version = config.server_version().await;
        let opened = match inner.topology.declare(&connection, version).await {
            Ok(()) => open_channels(&inner, &connection).await,
            Err(error) => Err(error),
        };
        match opened {
            Ok(channels) => {
                if let Ok(mut slot) = inner.channels.write() {
                    *slot = channels;
                }
                tracing::info!(
                    exchange = inner.topology.exchange(),
                    "publisher ready (topology declared, confirms on)"
                );
                let stopped = watch_session(&inner, &connection, &mut shutdown).await;
                let channels = inner
                    .channels
                    .write()
                    .map(|mut slot| std::mem::take(&mut *slot))
                    .unwrap_or_default();
                close_gracefully(&connection, &channels, "clerk-sync closing").await;
                if stopped {
                    return;
                }
                tracing::warn!("publisher lost RabbitMQ; reconnecting");
            }
            Err(error) => {
                tracing::error!(error.message = %error, "cannot set up publishing; retrying");
                close_gracefully(&connection, &[], "clerk-sync closing").await;
                tokio::select! {
                    _ = shutdown.wait_for(|stop| *stop) => return,
                    () = tokio::time::sleep(config.max_backoff) => {}
                }
            }
        }
    }
}

/// Waits until the session is broken (returns false) or shutdown is asked for (returns true).
/// Channels that nacked are replaced by fresh ones, at most once a second.
async fn watch_session(
    inner: &Inner,
    connection: &Connection,
    shutdown: &mut watch::Receiver<bool>,
) -> bool {
    let closed = wait_until_closed(connection);
    tokio::pin!(closed);
    let mut last_recycle = Instant::now();
    loop {
        let stop = async {
            let _ = shutdown.wait_for(|stop| *stop).await;
        };
        tokio::select! {
            () = stop => return true,
            () = &mut closed => return false,
            () = inner.suspect.notified() => {
                let healthy = connection.status().connected()
                    && inner.channels.read().map(|c| c.iter().all(|ch| ch.status().connected())).unwrap_or(false);
                if !healthy {
                    return false;
                }
                if inner.nacked.load(Ordering::SeqCst)
                    && last_recycle.elapsed() >= Duration::from_secs(1)
                {
                    inner.nacked.store(false, Ordering::SeqCst);
                    last_recycle = Instant::now();
                    match open_channels(inner, connection).await {
                        Ok(fresh) => {
                            let old = inner
                                .channels
                                .write()
                                .map(|mut slot| std::mem::replace(&mut *slot, fresh))
                                .unwrap_or_default();
                            tracing::warn!("publishes were nacked; replaced the confirm channels");
                            for channel in old {
                                tokio::spawn(async move {
                                    let _ = channel.close(200, "replaced after nacks".into()).await;
                                });
                            }
                        }
                        Err(error) => {
                            tracing::warn!(error.message = %error, "cannot open fresh channels; reconnecting");
                            return false;
                        }
                    }
                }
            }
        }
    }
}

async fn open_channels(
    inner: &Inner,
    connection: &Connection,
) -> Result<Vec<Channel>, BrokerError> {
    let mut channels = Vec::with_capacity(inner.options.channels.max(1));
    for _ in 0..inner.options.channels.max(1) {
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        channels.push(channel);
    }
    Ok(channels)
}
