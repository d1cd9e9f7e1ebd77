//! The ingress: a thin hyper server that verifies Clerk's (Svix) webhook signatures and publishes
//! each raw body, byte for byte, to RabbitMQ, answering 2xx only once the broker confirmed the
//! persistent publish. It has no database.

pub mod config;
pub mod error;
mod handler;
pub mod metrics;
pub mod verify;

use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

use broker::Publisher;
use tokio::net::TcpListener;

pub use config::{Config, ConfigError};
pub use error::IngressError;

/// A bound, not yet running ingress.
pub struct Application {
    listener: TcpListener,
    state: Arc<handler::State>,
    config_limits: telemetry::ops::ServerLimits,
}

impl Application {
    /// Binds the listener and starts the broker supervisor (which connects in the background:
    /// `/readyz` answers 503 and webhooks 503 until RabbitMQ is reachable).
    pub async fn build(config: Config) -> std::io::Result<Self> {
        let listener = TcpListener::bind(config.addr).await?;
        let publisher = Publisher::start(config.broker, config.topology, config.publisher);
        let state = Arc::new(handler::State::new(
            config.secrets,
            publisher,
            config.body_limit,
            config.body_timeout,
        ));
        Ok(Self {
            listener,
            state,
            config_limits: config.limits,
        })
    }

    /// The bound address (port 0 in tests picks a free port).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The bound port.
    pub fn port(&self) -> u16 {
        self.local_addr().map(|a| a.port()).unwrap_or_default()
    }

    /// Whether the broker connection is up (what `/readyz` reports).
    pub fn is_ready(&self) -> bool {
        self.state.publisher.is_ready()
    }

    /// Serves until `shutdown` completes, then stops accepting, lets in-flight requests finish
    /// (they still get their confirm), and closes the broker connection.
    pub async fn run_until_stopped(self, shutdown: impl Future<Output = ()>) {
        let state = self.state.clone();
        let handler = move |request, request_id| {
            let state = state.clone();
            async move { handler::handle(state, request, request_id).await }
        };
        tracing::info!(addr = ?self.listener.local_addr().ok(), "ingress listening");
        telemetry::ops::serve(
            self.listener,
            handler,
            self.config_limits,
            shutdown,
            Duration::from_secs(20),
        )
        .await;
        self.state.publisher.close().await;
        tracing::info!("ingress stopped");
    }
}
