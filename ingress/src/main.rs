//! `ingress`: receives Clerk webhooks and publishes them to RabbitMQ.

use anyhow::Context;
use ingress::{Application, Config};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::from_env().context("invalid ingress configuration")?;
    telemetry::init_subscriber("info", config.log_format, std::io::stdout);
    let addr = config.addr;
    let app = Application::build(config)
        .await
        .with_context(|| format!("cannot listen on {addr} (INGRESS_ADDR)"))?;
    app.run_until_stopped(telemetry::ops::shutdown_signal())
        .await;
    Ok(())
}
