//! `api`: the read API. Reads its settings from the environment, logs to stdout (in batches),
//! serves until SIGTERM or Ctrl-C.

use std::io::IsTerminal as _;

use anyhow::Context;
use api::{Application, Config};

/// mimalloc instead of glibc's malloc, as in the ingress and the worker: under read load
/// glibc's malloc and free took about a sixth of the api's CPU (`perf`; every request allocates
/// its headers, row, JSON and log line on one thread and may free them on another).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::from_env().context("invalid api configuration")?;
    // A line per request, written out in batches (one write every few milliseconds under load
    // rather than one per request); `_lines` writes what is left when `main` ends.
    let (lines, _lines) =
        telemetry::lines::BatchedLines::new(std::io::stdout()).context("cannot start logging")?;
    let _traces = telemetry::init_service_subscriber(
        "clerk-sync-api",
        "info",
        config.log_format,
        lines,
        std::io::stdout().is_terminal(),
    )
    .context("invalid tracing configuration")?;
    let app = Application::build(config).await?;
    app.run_until_stopped(telemetry::ops::shutdown_signal())
        .await
        .context("the api server failed")?;
    Ok(())
}
