//! The read API: users synced from Clerk and their calendar connections, served as JSON to the
//! product's frontend (Clerk session JWTs: the caller's own user only) and to trusted backends
//! (service keys: any user, plus fresh calendar access tokens). Also `/healthz`, `/readyz`,
//! `/metrics` and a generated `/openapi.json`. The API reads the database the worker writes; it
//! never runs migrations.

pub mod auth;
pub mod config;
pub mod error;
pub mod lazy;
pub mod metrics;
pub mod openapi;
pub mod reads;
pub mod routes;
pub mod state;

use std::{
    future::Future,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::middleware;
use http::{HeaderName, Method, header};
use prometheus_client::registry::Registry;
use store::pool::connect_lazily;
use tokio::net::TcpListener;
use tower_http::cors::{AllowOrigin, CorsLayer};

pub use config::{Config, ConfigError};
pub use error::ApiError;

use crate::{config::redact_url, metrics::Metrics, state::AppState};

/// Why the API could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr} (API_ADDR): {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    /// The database error is left out: it may quote the URL, password included.
    #[error(
        "DATABASE_URL ({0}) cannot be used: expected postgres://user:password@host:port/database"
    )]
    DatabaseUrl(String),
    /// The same for the replica.
    #[error(
        "DATABASE_READ_URL ({0}) cannot be used: expected postgres://user:password@host:port/database"
    )]
    ReadUrl(String),
    #[error("cannot serialize the OpenAPI document: {0}")]
    OpenApi(#[from] serde_json::Error),
}

/// A bound, not yet running API.
pub struct Application {
    listener: TcpListener,
    router: axum::Router,
    state: Arc<AppState>,
    limits: telemetry::ops::ServerLimits,
}

impl Application {
    /// Binds the listener and sets up the database pool. The pool connects lazily, so the API
    /// starts while Postgres is down (`/readyz` answers 503 until it is reachable).
    pub async fn build(config: Config) -> Result<Self, StartError> {
        let database = &config.database;
        let db = connect_lazily(
            database.url.expose(),
            database.max_connections,
            database.pooler,
        )
        .await
        .map_err(|_| StartError::DatabaseUrl(redact_url(database.url.expose())))?;
        let replica = match &config.read_replica {
            Some(replica) => Some((
                connect_lazily(
                    replica.url.expose(),
                    database.max_connections,
                    database.pooler,
                )
                .await
                .map_err(|_| StartError::ReadUrl(redact_url(replica.url.expose())))?,
                replica.max_lag,
            )),
            None => None,
        };

        if config.calendar.is_none() {
            tracing::warn!(
                "TOKEN_ENCRYPTION_KEY and CLERK_SECRET_KEY are not both set: the token endpoint answers 503"
            );
        }

        let (router, doc) = routes::router();
        let mut registry = Registry::default();
        let metrics = Arc::new(Metrics::register(&mut registry));
        let reads = reads::Reads::new(db.clone(), replica, &mut registry);
        let lazy = config
            .lazy
            .map(|lazy| lazy::LazySync::new(db.clone(), lazy, &mut registry));
        let state = Arc::new(AppState {
            db,
            reads,
            auth: config.auth,
            calendar: config.calendar,
            lazy,
            registry: Mutex::new(registry),
            openapi: doc.to_json()?,
        });

        let mut router = router;
        if !config.cors_origins.is_empty() {
            router = router.layer(
                CorsLayer::new()
                    .allow_origin(AllowOrigin::list(config.cors_origins))
                    .allow_methods([Method::GET, Method::PATCH, Method::OPTIONS])
                    .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE])
                    .expose_headers([HeaderName::from_static("x-request-id")])
                    // Lets the browser send the `__session` cookie; only to the listed origins.
                    .allow_credentials(true)
                    .max_age(Duration::from_secs(600)),
            );
        }
        let router = router
            // Slow bodies (slowloris) end with 408; headers are guarded by the server loop. Longer
            // than the handlers' own calls to Clerk, which answer 503 when Clerk is slow.
            .layer(tower_http::timeout::TimeoutLayer::with_status_code(
                http::StatusCode::REQUEST_TIMEOUT,
                config.request_timeout,
            ))
            .layer(middleware::from_fn_with_state(metrics, metrics::observe))
            .with_state(state.clone());

        let listener = TcpListener::bind(config.addr)
            .await
            .map_err(|source| StartError::Bind {
                addr: config.addr,
                source,
            })?;
        Ok(Self {
            listener,
            router,
            state,
            limits: config.limits,
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

    /// Serves until `shutdown` completes, then stops accepting, lets in-flight requests finish
    /// and closes the database pools. The read replica, when set, is checked in the background
    /// meanwhile.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        tracing::info!(addr = ?self.listener.local_addr().ok(), "api listening");
        let (watched, watch_stop) = tokio::sync::oneshot::channel::<()>();
        let watcher = {
            let state = self.state.clone();
            tokio::spawn(async move {
                state
                    .reads
                    .watch_replica(async move {
                        let _ = watch_stop.await;
                    })
                    .await;
            })
        };
        // Our own accept loop rather than `axum::serve`: it adds the header read timeout, the
        // connection cap and the header size limit that face slow or greedy clients.
        let router = self.router;
        let handler = move |request: http::Request<hyper::body::Incoming>, _id| {
            let router = router.clone();
            async move {
                match tower::ServiceExt::oneshot(router, request.map(axum::body::Body::new)).await {
                    Ok(response) => response,
                    Err(never) => match never {},
                }
            }
        };
        telemetry::ops::serve(
            self.listener,
            handler,
            self.limits,
            shutdown,
            Duration::from_secs(20),
        )
        .await;
        let _ = watched.send(());
        let _ = watcher.await;
        close(&self.state).await;
        tracing::info!("api stopped");
        Ok(())
    }
}

/// Closes the pools (the replica's too); handlers still holding the state see closed pools.
async fn close(state: &AppState) {
    let _ = state.db.clone().close().await;
    if let Some(replica) = state.reads.replica_pool() {
        let _ = replica.clone().close().await;
    }
}
