//! What every clerk-sync process needs to be observable: the tracing subscriber (plain or JSON
//! logs, `RUST_LOG` overriding the default filter), Prometheus text encoding, request ids, and the
//! HTTP/1 server loop with health/readiness/metrics endpoints, and descriptions of JSON errors
//! that never quote a value. Settings live in the `settings` crate.

pub mod json_errors;
pub mod ops;
pub mod request_id;

use std::sync::Mutex;

use prometheus_client::registry::Registry;
use tracing_subscriber::{EnvFilter, fmt::MakeWriter};

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// Human-readable lines (the default).
    #[default]
    Plain,
    /// One JSON object per line, for log shippers.
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        match value.trim().to_ascii_lowercase().as_str() {
            "" | "plain" | "text" | "pretty" => Ok(Self::Plain),
            "json" => Ok(Self::Json),
            other => Err(format!(
                "LOG_FORMAT must be `plain` or `json`, not {other:?}"
            )),
        }
    }
}

/// Installs the global subscriber writing to `sink`. `RUST_LOG`, when set, overrides
/// `default_filter`. Plain lines are coloured only when `sink_is_terminal` and `NO_COLOR` is not
/// set: a log file, a pipe or a container's log gets no escape codes. Calling it twice is
/// harmless (the second call does nothing), which keeps tests that start several apps in one
/// process simple.
pub fn init_subscriber<W>(default_filter: &str, format: LogFormat, sink: W, sink_is_terminal: bool)
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let colour = sink_is_terminal && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour)
        .with_writer(sink);
    let _ = match format {
        LogFormat::Plain => builder.with_target(false).try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

/// A Prometheus registry shared by a process's handlers.
pub type SharedRegistry = std::sync::Arc<Mutex<Registry>>;

/// Encodes the registry as Prometheus text exposition format.
pub fn encode_metrics(registry: &Registry) -> String {
    let mut out = String::new();
    if prometheus_client::encoding::text::encode(&mut out, registry).is_err() {
        out.clear();
        out.push_str("# metrics encoding failed\n");
    }
    out
}
