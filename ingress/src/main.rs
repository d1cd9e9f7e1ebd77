//! `ingress`: receives Clerk webhooks and publishes them to RabbitMQ.

use std::io::IsTerminal as _;

use anyhow::Context;
use ingress::{Application, Config};

/// mimalloc instead of glibc's malloc: a request allocates and frees dozens of small buffers
/// across threads, where glibc's allocator was a large share of the ingress's CPU under load
/// (measured in BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::from_env().context("invalid ingress configuration")?;
    let _traces = telemetry::init_service_subscriber(
        "clerk-sync-ingress",
        "info",
        config.log_format,
        std::io::stdout,
        std::io::stdout().is_terminal(),
    )
    .context("invalid tracing configuration")?;
    let addr = config.addr;
    let app = Application::build(config)
        .await
        .with_context(|| format!("cannot listen on {addr} (INGRESS_ADDR)"))?;
    app.run_until_stopped(telemetry::ops::shutdown_signal())
        .await;
    Ok(())
}
