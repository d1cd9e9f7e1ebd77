//! What every clerk-sync process needs to be observable: the tracing subscriber (plain or JSON
//! logs, `RUST_LOG` overriding the default filter), Prometheus text encoding, request ids, and the
//! HTTP/1 server loop with health/readiness/metrics endpoints, and descriptions of JSON errors
//! that never quote a value. Settings live in the `settings` crate.

pub mod json_errors;
pub mod lines;
pub mod ops;
pub mod request_id;
pub mod traces;

use std::sync::Mutex;

use prometheus_client::registry::Registry;
use tracing_subscriber::{
    EnvFilter, Layer as _, fmt::MakeWriter, layer::SubscriberExt as _, util::SubscriberInitExt as _,
};

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

/// As [`init_subscriber`], and when `traces` is given, spans are exported too and JSON lines
/// written inside an exported span carry its `trace_id` and `span_id`. `RUST_LOG` then filters
/// the log lines only: the exported spans do not depend on it.
pub fn init_subscriber_with_traces<W>(
    default_filter: &str,
    format: LogFormat,
    sink: W,
    sink_is_terminal: bool,
    traces: Option<&traces::Traces>,
) where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    let Some(traces) = traces else {
        return init_subscriber(default_filter, format, sink, sink_is_terminal);
    };
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let colour = sink_is_terminal && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let lines = tracing_subscriber::fmt::layer()
        .with_ansi(colour)
        .with_writer(sink);
    let lines = match format {
        LogFormat::Plain => lines.with_target(false).with_filter(filter).boxed(),
        LogFormat::Json => lines
            .json()
            .flatten_event(true)
            .map_event_format(|inner| traces::JsonWithTraceIds { inner })
            .with_filter(filter)
            .boxed(),
    };
    let spans = tracing_opentelemetry::layer()
        .with_tracer(traces.tracer())
        .with_location(false)
        .with_threads(false)
        .with_target(false)
        .with_level(false)
        // Neither is used, and both cost at every poll of an instrumented future: busy/idle
        // times (two clock reads and two attributes a span) and the OpenTelemetry context made
        // current (spans are asked for their context explicitly).
        .with_tracked_inactivity(false)
        .with_context_activation(false)
        .with_filter(traces::Exported);
    // The ids are for JSON lines only: plain lines do not pay for them.
    let ids = (format == LogFormat::Json).then(traces::TraceIdsLayer::default);
    let slot = ids.as_ref().map(traces::TraceIdsLayer::dispatch_slot);
    let installed = tracing_subscriber::registry()
        .with(spans)
        .with(ids.map(|ids| ids.with_filter(traces::Exported)))
        .with(lines)
        .try_init();
    if installed.is_ok() {
        if let Some(slot) = slot {
            traces::set_dispatch(&slot);
        }
        traces::mark_enabled(traces.tracer());
    }
}

/// What a service's `main` calls: reads the `OTEL_*` variables (tracing is off unless an OTLP
/// endpoint is set), starts the export, and installs the subscriber. Keep the returned value
/// until the process ends: dropping it exports what is still queued.
pub fn init_service_subscriber<W>(
    default_service_name: &str,
    default_filter: &str,
    format: LogFormat,
    sink: W,
    sink_is_terminal: bool,
) -> Result<Option<traces::Traces>, traces::TraceConfigError>
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    let config = traces::TraceConfig::from_env(default_service_name)?;
    let traces = config.as_ref().map(traces::Traces::start).transpose()?;
    init_subscriber_with_traces(
        default_filter,
        format,
        sink,
        sink_is_terminal,
        traces.as_ref(),
    );
    if let Some(config) = &config {
        tracing::info!(
            service = %config.service_name,
            endpoint = %config.display_endpoint(),
            "traces exported over OTLP/HTTP"
        );
    }
    Ok(traces)
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
