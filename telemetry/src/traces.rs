//! OpenTelemetry traces, configured the standard way (`OTEL_*` variables) and off unless an OTLP
//! endpoint is set.
//!
//! Spans are the `tracing` spans the services create with an `otel.kind` field, which the
//! `tracing-opentelemetry` layer turns into OpenTelemetry spans, and the ingress's one span per
//! webhook, made through OpenTelemetry's API ([`DirectSpan`]) because it is on the hottest path. Log events never become
//! span events (they may name things a trace must not carry). Finished spans go into a bounded
//! queue that a thread of its own drains in batches to the collector over OTLP/HTTP (protobuf):
//! recording a span never waits on the network, and a full queue or a failed export drops spans
//! and counts them (`clerk_sync_trace_spans_dropped_total`).
//!
//! Context crosses process boundaries as W3C trace context (`traceparent`, `tracestate`): in HTTP
//! headers, and in the AMQP headers of the broker's messages (see the broker crate).

use std::{
    fmt,
    sync::{
        Arc, Condvar, LazyLock, Mutex, MutexGuard, OnceLock, PoisonError,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use opentelemetry::{
    propagation::{Extractor, Injector, TextMapPropagator},
    trace::{Span as _, SpanId, TraceContextExt as _, TraceId, Tracer as _, TracerProvider as _},
};
use opentelemetry_otlp::{SpanExporter, WithExportConfig as _};
use opentelemetry_sdk::{
    Resource,
    error::{OTelSdkError, OTelSdkResult},
    propagation::TraceContextPropagator,
    trace::{Sampler, SdkTracerProvider, SpanData, SpanExporter as _, SpanProcessor},
};
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family},
    registry::Registry,
};
use tracing::{Dispatch, Subscriber, dispatcher::WeakDispatch, span};
use tracing_subscriber::{
    Layer,
    fmt::{FmtContext, FormatEvent, FormatFields, format::Writer},
    layer::Context as LayerContext,
    registry::LookupSpan,
};

pub use opentelemetry::{Context, KeyValue};
pub use tracing_opentelemetry::OpenTelemetrySpanExt;

/// Whether traces are exported by this process. Code on hot paths creates its spans only then:
/// a span costs CPU even when nobody collects it.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

static ENABLED: AtomicBool = AtomicBool::new(false);

/// What the `OTEL_*` variables say, checked.
#[derive(Clone)]
pub struct TraceConfig {
    /// Where spans are sent: `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` as it is, or
    /// `OTEL_EXPORTER_OTLP_ENDPOINT` with `/v1/traces` appended.
    pub endpoint: String,
    /// `service.name` of every span: `OTEL_SERVICE_NAME`, or the process's default.
    pub service_name: String,
    sampler_name: String,
    sampler_arg: Option<f64>,
    /// Spans waiting for export at most (`OTEL_BSP_MAX_QUEUE_SIZE`, 2048); more are dropped.
    pub max_queue: usize,
    /// Spans per export at most (`OTEL_BSP_MAX_EXPORT_BATCH_SIZE`, 512).
    pub max_batch: usize,
    /// How long a span may wait for a batch to fill (`OTEL_BSP_SCHEDULE_DELAY`, 5000 ms).
    pub schedule_delay: Duration,
}

impl fmt::Debug for TraceConfig {
    // The endpoint is printed without its user part (a collector URL may carry credentials).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TraceConfig")
            .field("endpoint", &without_userinfo(&self.endpoint))
            .field("service_name", &self.service_name)
            .field("sampler", &self.sampler_name)
            .field("sampler_arg", &self.sampler_arg)
            .field("max_queue", &self.max_queue)
            .field("max_batch", &self.max_batch)
            .field("schedule_delay", &self.schedule_delay)
            .finish()
    }
}

/// A tracing variable that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TraceConfigError {
    /// The endpoint is not an http(s) URL.
    #[error(
        "{name} must be the http:// or https:// URL of an OTLP/HTTP collector (e.g. http://otel-collector:4318), not {value:?}"
    )]
    Endpoint {
        /// The variable.
        name: &'static str,
        /// What it holds (without credentials).
        value: String,
    },
    /// A protocol other than OTLP over HTTP with protobuf was asked for.
    #[error(
        "{name} is {value:?}, but only http/protobuf is built in: point the endpoint at the collector's OTLP/HTTP port (4318) and unset {name} or set it to http/protobuf"
    )]
    Protocol {
        /// The variable.
        name: &'static str,
        /// What it holds.
        value: String,
    },
    /// An unknown sampler.
    #[error(
        "OTEL_TRACES_SAMPLER must be one of always_on, always_off, traceidratio, parentbased_always_on, parentbased_always_off or parentbased_traceidratio, not {0:?}"
    )]
    Sampler(String),
    /// A sampling ratio out of range.
    #[error(
        "OTEL_TRACES_SAMPLER_ARG must be a number from 0 to 1 (the share of traces kept), not {0:?}"
    )]
    SamplerArg(String),
    /// A count or duration that is not a positive whole number.
    #[error("{name} must be a whole number greater than 0, not {value:?}")]
    Number {
        /// The variable.
        name: &'static str,
        /// What it holds.
        value: String,
    },
    /// The exporter could not be built.
    #[error(
        "the OTLP trace exporter could not be built ({0}); check the OTEL_EXPORTER_OTLP_* variables"
    )]
    Exporter(String),
}

const SAMPLERS: [&str; 6] = [
    "always_on",
    "always_off",
    "traceidratio",
    "parentbased_always_on",
    "parentbased_always_off",
    "parentbased_traceidratio",
];

impl TraceConfig {
    /// Reads the process environment. `Ok(None)`: tracing is off (no endpoint is set, or
    /// `OTEL_SDK_DISABLED=true` or `OTEL_TRACES_EXPORTER=none`).
    pub fn from_env(default_service_name: &str) -> Result<Option<Self>, TraceConfigError> {
        Self::from_lookup(default_service_name, |name| std::env::var(name).ok())
    }

    /// As [`Self::from_env`], from any lookup.
    pub fn from_lookup(
        default_service_name: &str,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<Self>, TraceConfigError> {
        let get = |name: &str| {
            lookup(name)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        if get("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true"))
            || get("OTEL_TRACES_EXPORTER").is_some_and(|v| v.eq_ignore_ascii_case("none"))
        {
            return Ok(None);
        }
        let endpoint = if let Some(url) = get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") {
            check_url("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", &url)?;
            url
        } else if let Some(url) = get("OTEL_EXPORTER_OTLP_ENDPOINT") {
            check_url("OTEL_EXPORTER_OTLP_ENDPOINT", &url)?;
            format!("{}/v1/traces", url.trim_end_matches('/'))
        } else {
            return Ok(None);
        };
        for name in [
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
            "OTEL_EXPORTER_OTLP_PROTOCOL",
        ] {
            if let Some(value) = get(name)
                && value != "http/protobuf"
            {
                return Err(TraceConfigError::Protocol { name, value });
            }
        }
        let sampler_name = get("OTEL_TRACES_SAMPLER")
            .map(|s| s.to_ascii_lowercase())
            .unwrap_or_else(|| "parentbased_always_on".into());
        if !SAMPLERS.contains(&sampler_name.as_str()) {
            return Err(TraceConfigError::Sampler(sampler_name));
        }
        let sampler_arg = match get("OTEL_TRACES_SAMPLER_ARG") {
            None => None,
            Some(text) => match text.parse::<f64>() {
                Ok(ratio) if (0.0..=1.0).contains(&ratio) => Some(ratio),
                _ => return Err(TraceConfigError::SamplerArg(text)),
            },
        };
        let number = |name: &'static str, default: u64| match get(name) {
            None => Ok(default),
            Some(value) => match value.parse::<u64>() {
                Ok(n) if n > 0 => Ok(n),
                _ => Err(TraceConfigError::Number { name, value }),
            },
        };
        let max_queue = number("OTEL_BSP_MAX_QUEUE_SIZE", 2048)?;
        let max_batch = number("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", 512)?.min(max_queue);
        let schedule_delay = Duration::from_millis(number("OTEL_BSP_SCHEDULE_DELAY", 5000)?);
        Ok(Some(Self {
            endpoint,
            service_name: get("OTEL_SERVICE_NAME").unwrap_or_else(|| default_service_name.into()),
            sampler_name,
            sampler_arg,
            max_queue: usize::try_from(max_queue).unwrap_or(usize::MAX),
            max_batch: usize::try_from(max_batch).unwrap_or(usize::MAX),
            schedule_delay,
        }))
    }

    /// The endpoint without credentials, for logs.
    pub fn display_endpoint(&self) -> String {
        without_userinfo(&self.endpoint)
    }

    fn sampler(&self) -> Sampler {
        let ratio = self.sampler_arg.unwrap_or(1.0);
        match self.sampler_name.as_str() {
            "always_on" => Sampler::AlwaysOn,
            "always_off" => Sampler::AlwaysOff,
            "traceidratio" => Sampler::TraceIdRatioBased(ratio),
            "parentbased_always_off" => Sampler::ParentBased(Box::new(Sampler::AlwaysOff)),
            "parentbased_traceidratio" => {
                Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(ratio)))
            }
            _ => Sampler::ParentBased(Box::new(Sampler::AlwaysOn)),
        }
    }
}

fn check_url(name: &'static str, value: &str) -> Result<(), TraceConfigError> {
    let lower = value.to_ascii_lowercase();
    let rest = lower
        .strip_prefix("http://")
        .or_else(|| lower.strip_prefix("https://"));
    if rest.is_some_and(|host| !host.is_empty() && !host.starts_with('/')) {
        Ok(())
    } else {
        Err(TraceConfigError::Endpoint {
            name,
            value: without_userinfo(value),
        })
    }
}

/// A URL with any `user:password@` removed.
fn without_userinfo(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => {
            let authority_end = rest.find('/').unwrap_or(rest.len());
            match rest[..authority_end].rfind('@') {
                Some(at) => format!("{scheme}://{}", &rest[at + 1..]),
                None => url.to_owned(),
            }
        }
        None => url.to_owned(),
    }
}

/// Label of `clerk_sync_trace_spans_dropped_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DropReason {
    /// `queue_full` (spans came faster than they were exported) or `export_failed` (the
    /// collector refused or could not be reached).
    reason: &'static str,
}

static EXPORTED: LazyLock<Counter> = LazyLock::new(Counter::default);
static DROPPED: LazyLock<Family<DropReason, Counter>> = LazyLock::new(|| {
    let family = Family::default();
    // Both series exist from the start, so that a rate() sees the first drop.
    for reason in ["queue_full", "export_failed"] {
        let _ = family.get_or_create(&DropReason { reason });
    }
    family
});

/// Registers the trace export counters in a process's registry (they count whether or not
/// tracing is on; off, they stay at zero).
pub fn register_metrics(registry: &mut Registry) {
    registry.register(
        "clerk_sync_trace_spans_exported",
        "Spans sent to the OTLP collector and accepted by it",
        EXPORTED.clone(),
    );
    registry.register(
        "clerk_sync_trace_spans_dropped",
        "Spans not exported, by reason: queue_full (spans came faster than the collector took them) or export_failed (the collector refused or could not be reached)",
        DROPPED.clone(),
    );
}

fn count_dropped(reason: &'static str, spans: usize) {
    DROPPED
        .get_or_create(&DropReason { reason })
        .inc_by(spans as u64);
}

/// The running trace pipeline. [`Traces::shutdown`] (or dropping it) exports what is queued.
pub struct Traces {
    provider: SdkTracerProvider,
    tracer: opentelemetry_sdk::trace::Tracer,
}

impl fmt::Debug for Traces {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Traces")
    }
}

impl Traces {
    /// Builds the exporter and its thread; spans are exported once the subscriber is installed
    /// with these traces ([`crate::init_subscriber_with_traces`]).
    pub fn start(config: &TraceConfig) -> Result<Self, TraceConfigError> {
        let resource = Resource::builder()
            .with_service_name(config.service_name.clone())
            .build();
        let mut exporter = SpanExporter::builder()
            .with_http()
            .with_endpoint(config.endpoint.clone())
            .build()
            .map_err(|error| TraceConfigError::Exporter(error.to_string()))?;
        exporter.set_resource(&resource);
        let processor = QueueProcessor::start(exporter, config)?;
        let provider = SdkTracerProvider::builder()
            .with_resource(resource)
            .with_sampler(config.sampler())
            .with_span_processor(processor)
            .build();
        let tracer = provider.tracer("clerk-sync");
        Ok(Self { provider, tracer })
    }

    pub(crate) fn tracer(&self) -> opentelemetry_sdk::trace::Tracer {
        self.tracer.clone()
    }

    /// Exports what is queued (waiting at most a few seconds) and stops the export thread.
    pub fn shutdown(&self) {
        ENABLED.store(false, Ordering::Relaxed);
        let _ = self.provider.shutdown_with_timeout(Duration::from_secs(5));
    }
}

impl Drop for Traces {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Turns traces on for this process, with `tracer` for the spans made without `tracing`
/// ([`DirectSpan`]).
pub(crate) fn mark_enabled(tracer: opentelemetry_sdk::trace::Tracer) {
    let _ = DIRECT_TRACER.set(tracer);
    ENABLED.store(true, Ordering::Relaxed);
}

/// The tracer of [`DirectSpan`]s: the one the `tracing` layer uses.
static DIRECT_TRACER: OnceLock<opentelemetry_sdk::trace::Tracer> = OnceLock::new();

/// A server span made straight through OpenTelemetry's API, with no `tracing` span behind it:
/// for the ingress, where one request is a few tens of microseconds and a `tracing` span (the
/// registry, every layer at every poll of the request's future, the log layer formatting its
/// fields) costs a good part of that. Nothing is made when traces are off. Attributes are set
/// only on a sampled span; the context is propagated either way, so that the next service
/// follows the sampling decision. The span ends when dropped.
pub struct DirectSpan(Option<opentelemetry_sdk::trace::Span>);

impl DirectSpan {
    /// A span that records nothing.
    pub const NONE: Self = Self(None);

    /// Starts a server span named `name`, continuing `parent` when it holds a valid remote span
    /// (a root span otherwise).
    pub fn server(name: &'static str, parent: &Context) -> Self {
        if !enabled() {
            return Self::NONE;
        }
        let Some(tracer) = DIRECT_TRACER.get() else {
            return Self::NONE;
        };
        let span = tracer
            .span_builder(name)
            .with_kind(opentelemetry::trace::SpanKind::Server)
            .start_with_context(tracer, parent);
        Self(Some(span))
    }

    /// Whether the span is kept (sampled): attributes are worth computing only then.
    pub fn is_recording(&self) -> bool {
        self.0.as_ref().is_some_and(|span| span.is_recording())
    }

    /// Sets the attributes `attributes` gives, when the span is recording.
    pub fn set_attributes<I>(&mut self, attributes: impl FnOnce() -> I)
    where
        I: IntoIterator<Item = opentelemetry::KeyValue>,
    {
        if let Some(span) = self.0.as_mut().filter(|span| span.is_recording()) {
            span.set_attributes(attributes());
        }
    }

    /// Marks the span as failed.
    pub fn set_error(&mut self) {
        if let Some(span) = self.0.as_mut() {
            span.set_status(opentelemetry::trace::Status::error(""));
        }
    }

    /// Writes the span's context (`traceparent`, and `tracestate` when there is one) through
    /// `set`; nothing when no span was made.
    pub fn inject(&self, set: impl FnMut(&'static str, String)) {
        let Some(span) = &self.0 else {
            return;
        };
        inject_span_context(span.span_context().clone(), set);
    }

    /// Runs `f` with the span's ids on the log lines it writes (JSON lines carry `trace_id` and
    /// `span_id`).
    pub fn in_scope<R>(&self, f: impl FnOnce() -> R) -> R {
        let Some(span) = &self.0 else {
            return f();
        };
        let context = span.span_context();
        let ids = TraceIds {
            trace_id: context.trace_id(),
            span_id: context.span_id(),
        };
        ENTERED.with(|entered| entered.borrow_mut().push(ids));
        struct Pop;
        impl Drop for Pop {
            fn drop(&mut self) {
                ENTERED.with(|entered| entered.borrow_mut().pop());
            }
        }
        let _pop = Pop;
        f()
    }
}

impl fmt::Debug for DirectSpan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Some(span) => write!(f, "DirectSpan({})", span.span_context().span_id()),
            None => f.write_str("DirectSpan(none)"),
        }
    }
}

/// A batch span processor that counts what it drops: a bounded queue filled by `on_end` without
/// ever waiting, drained in batches by a thread of its own that exports through a small runtime.
/// The thread is woken only when a batch is full, a flush or the shutdown is asked for, or the
/// schedule delay has passed: never once per span (a wake-up per span is a system call and a
/// context switch per request, a good part of the ingress's cost).
struct QueueProcessor {
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

/// What `on_end` and the export thread share.
struct Shared {
    state: Mutex<QueueState>,
    wake: Condvar,
    max_queue: usize,
    max_batch: usize,
}

#[derive(Default)]
struct QueueState {
    spans: Vec<SpanData>,
    /// Flushes waiting to be told that everything queued before them was exported.
    flushes: Vec<mpsc::SyncSender<()>>,
    /// Set by the shutdown: the thread exports what is queued, then stops and says so here.
    shutdown: Option<mpsc::SyncSender<()>>,
    /// The thread stopped: spans are dropped.
    stopped: bool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, QueueState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl fmt::Debug for QueueProcessor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("QueueProcessor")
    }
}

impl QueueProcessor {
    fn start(exporter: SpanExporter, config: &TraceConfig) -> Result<Self, TraceConfigError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|error| TraceConfigError::Exporter(error.to_string()))?;
        let shared = Arc::new(Shared {
            state: Mutex::new(QueueState::default()),
            wake: Condvar::new(),
            max_queue: config.max_queue,
            max_batch: config.max_batch.max(1),
        });
        let delay = config.schedule_delay;
        let thread = std::thread::Builder::new()
            .name("otlp-export".into())
            .spawn({
                let shared = shared.clone();
                move || export_loop(&runtime, &exporter, &shared, delay)
            })
            .map_err(|error| TraceConfigError::Exporter(error.to_string()))?;
        Ok(Self {
            shared,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Hands the thread a request (a flush or the shutdown) and waits for its answer.
    fn ask(
        &self,
        put: impl FnOnce(&mut QueueState, mpsc::SyncSender<()>),
        timeout: Duration,
    ) -> OTelSdkResult {
        let (done, wait) = mpsc::sync_channel(1);
        {
            let mut state = self.shared.lock();
            if state.stopped {
                return Err(OTelSdkError::AlreadyShutdown);
            }
            put(&mut state, done);
        }
        self.shared.wake.notify_one();
        wait.recv_timeout(timeout)
            .map_err(|_| OTelSdkError::Timeout(timeout))
    }
}

impl SpanProcessor for QueueProcessor {
    fn on_start(&self, _span: &mut opentelemetry_sdk::trace::Span, _cx: &Context) {}

    fn on_end(&self, span: SpanData) {
        if !span.span_context.is_sampled() {
            return;
        }
        let full_batch = {
            let mut state = self.shared.lock();
            if state.stopped || state.shutdown.is_some() {
                drop(state);
                count_dropped("export_failed", 1);
                return;
            }
            if state.spans.len() >= self.shared.max_queue {
                drop(state);
                count_dropped("queue_full", 1);
                return;
            }
            state.spans.push(span);
            state.spans.len() == self.shared.max_batch
        };
        if full_batch {
            self.shared.wake.notify_one();
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.ask(
            |state, done| state.flushes.push(done),
            Duration::from_secs(15),
        )
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        let result = self.ask(|state, done| state.shutdown = Some(done), timeout);
        if result.is_ok()
            && let Ok(mut thread) = self.thread.lock()
            && let Some(thread) = thread.take()
        {
            let _ = thread.join();
        }
        result
    }
}

impl Drop for QueueProcessor {
    /// A processor dropped without a shutdown still stops its thread (after one last export).
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        if !state.stopped && state.shutdown.is_none() {
            let (done, _) = mpsc::sync_channel(1);
            state.shutdown = Some(done);
            drop(state);
            self.shared.wake.notify_one();
        }
    }
}

/// The export thread: waits for a full batch, a request or the schedule delay, takes what is
/// queued and exports it in batches.
fn export_loop(
    runtime: &tokio::runtime::Runtime,
    exporter: &SpanExporter,
    shared: &Shared,
    delay: Duration,
) {
    let mut failures = FailureLog::default();
    loop {
        let (mut spans, flushes, shutdown) = {
            let deadline = Instant::now() + delay;
            let mut state = shared.lock();
            while state.spans.len() < shared.max_batch
                && state.flushes.is_empty()
                && state.shutdown.is_none()
            {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                state = shared
                    .wake
                    .wait_timeout(state, left)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
            }
            let spans = std::mem::replace(&mut state.spans, Vec::with_capacity(shared.max_batch));
            (
                spans,
                std::mem::take(&mut state.flushes),
                state.shutdown.take(),
            )
        };
        while !spans.is_empty() {
            let rest = spans.split_off(spans.len().min(shared.max_batch));
            export(
                runtime,
                exporter,
                std::mem::replace(&mut spans, rest),
                &mut failures,
            );
        }
        for done in flushes {
            let _ = done.send(());
        }
        if let Some(done) = shutdown {
            let _ = exporter.shutdown();
            shared.lock().stopped = true;
            let _ = done.send(());
            return;
        }
    }
}

/// Logs the first failed export and then at most one line a minute.
#[derive(Default)]
struct FailureLog {
    last: Option<Instant>,
    since: usize,
}

fn export(
    runtime: &tokio::runtime::Runtime,
    exporter: &SpanExporter,
    batch: Vec<SpanData>,
    failures: &mut FailureLog,
) {
    if batch.is_empty() {
        return;
    }
    let spans = batch.len();
    match runtime.block_on(exporter.export(batch)) {
        Ok(()) => {
            EXPORTED.inc_by(spans as u64);
            if failures.last.take().is_some() {
                tracing::info!(dropped = failures.since, "traces reach the collector again");
                failures.since = 0;
            }
        }
        Err(error) => {
            count_dropped("export_failed", spans);
            failures.since += spans;
            if failures
                .last
                .is_none_or(|last| last.elapsed() >= Duration::from_secs(60))
            {
                tracing::warn!(
                    error.message = %error,
                    dropped = failures.since,
                    "traces not exported: the collector at OTEL_EXPORTER_OTLP_ENDPOINT refused them or is unreachable; spans are dropped (clerk_sync_trace_spans_dropped_total) and requests go on"
                );
                failures.last = Some(Instant::now());
            }
        }
    }
}

/// Which `tracing` spans become OpenTelemetry spans: those that declare an `otel.kind`.
pub(crate) fn exported(metadata: &tracing::Metadata<'_>) -> bool {
    metadata.is_span() && metadata.fields().field("otel.kind").is_some()
}

/// The filter of the span layers: [`exported`] spans only, decided once per call site. (A filter
/// decided at every call would make every `trace!` of every dependency reach the subscriber.)
pub(crate) struct Exported;

impl<S> tracing_subscriber::layer::Filter<S> for Exported {
    fn enabled(&self, metadata: &tracing::Metadata<'_>, _: &LayerContext<'_, S>) -> bool {
        exported(metadata)
    }

    fn callsite_enabled(
        &self,
        metadata: &'static tracing::Metadata<'static>,
    ) -> tracing::subscriber::Interest {
        if exported(metadata) {
            tracing::subscriber::Interest::always()
        } else {
            tracing::subscriber::Interest::never()
        }
    }
}

thread_local! {
    /// The ids of the exported spans entered on this thread, innermost last: what a log line
    /// written here carries.
    static ENTERED: std::cell::RefCell<Vec<TraceIds>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The ids a log line written inside a span carries.
#[derive(Clone, Copy, PartialEq)]
struct TraceIds {
    trace_id: TraceId,
    span_id: SpanId,
}

impl TraceIds {
    const NONE: Self = Self {
        trace_id: TraceId::INVALID,
        span_id: SpanId::INVALID,
    };
}

/// What [`TraceIdsLayer`] found for a span: its ids, or `None` when it is not exported.
struct Known(Option<TraceIds>);

/// Remembers, for every span entered, the trace and span ids of the OpenTelemetry span it is or
/// is inside, for the JSON log lines.
#[derive(Default)]
pub(crate) struct TraceIdsLayer {
    /// The subscriber this layer is part of: set by [`Self::set_dispatch`] once it is installed
    /// (a layer behind a per-layer filter is not told it).
    dispatch: std::sync::Arc<OnceLock<WeakDispatch>>,
}

impl TraceIdsLayer {
    /// A handle that [`Self::set_dispatch`] fills once the subscriber is installed.
    pub(crate) fn dispatch_slot(&self) -> std::sync::Arc<OnceLock<WeakDispatch>> {
        self.dispatch.clone()
    }
}

/// Fills a layer's dispatch slot with the global default subscriber.
pub(crate) fn set_dispatch(slot: &OnceLock<WeakDispatch>) {
    tracing::dispatcher::get_default(|dispatch| {
        let _ = slot.set(dispatch.downgrade());
    });
}

impl<S> Layer<S> for TraceIdsLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_register_dispatch(&self, subscriber: &Dispatch) {
        let _ = self.dispatch.set(subscriber.downgrade());
    }

    fn on_enter(&self, id: &span::Id, ctx: LayerContext<'_, S>) {
        let Some(span) = ctx.span(id) else {
            return;
        };
        let known = span.extensions().get::<Known>().map(|known| known.0);
        drop(span);
        let ids = match known {
            Some(ids) => ids,
            None => self.look_up(id, &ctx),
        };
        // Pushed even when invalid (never, for an exported span), so that exits stay paired.
        ENTERED.with(|entered| entered.borrow_mut().push(ids.unwrap_or(TraceIds::NONE)));
    }

    fn on_exit(&self, _id: &span::Id, _ctx: LayerContext<'_, S>) {
        ENTERED.with(|entered| entered.borrow_mut().pop());
    }
}

impl TraceIdsLayer {
    /// The span's ids (this starts its OpenTelemetry span: a parent or link is set before a
    /// span is entered), remembered in the span.
    fn look_up<S>(&self, id: &span::Id, ctx: &LayerContext<'_, S>) -> Option<TraceIds>
    where
        S: Subscriber + for<'a> LookupSpan<'a>,
    {
        let ids = self
            .dispatch
            .get()
            .and_then(WeakDispatch::upgrade)
            .and_then(|dispatch| tracing_opentelemetry::get_otel_context(id, &dispatch))
            .map(|cx| cx.span().span_context().clone())
            .filter(|span_context| span_context.is_valid())
            .map(|span_context| TraceIds {
                trace_id: span_context.trace_id(),
                span_id: span_context.span_id(),
            });
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(Known(ids));
        }
        ids
    }
}

/// The JSON line format with `trace_id` and `span_id` added to every line written inside an
/// exported span.
pub(crate) struct JsonWithTraceIds<F> {
    pub(crate) inner: F,
}

impl<S, N, F> FormatEvent<S, N> for JsonWithTraceIds<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> fmt::Result {
        // The innermost exported span entered on this thread; else (a line written in a span
        // entered without its exported parent, e.g. the api's line after the request) the
        // nearest exported span above the line's own.
        let ids = ENTERED
            .with(|entered| entered.borrow().last().copied())
            .filter(|ids| *ids != TraceIds::NONE)
            .or_else(|| {
                ctx.event_scope().and_then(|scope| {
                    scope
                        .into_iter()
                        .find_map(|span| span.extensions().get::<Known>().and_then(|known| known.0))
                })
            });
        let Some(ids) = ids else {
            return self.inner.format_event(ctx, writer, event);
        };
        let mut line = String::with_capacity(256);
        self.inner
            .format_event(ctx, Writer::new(&mut line), event)?;
        let body = line.trim_end();
        match body.strip_suffix('}') {
            Some(open) => writeln!(
                writer,
                "{open},\"trace_id\":\"{}\",\"span_id\":\"{}\"}}",
                ids.trace_id, ids.span_id
            ),
            None => writeln!(writer, "{body}"),
        }
    }
}

static PROPAGATOR: LazyLock<TraceContextPropagator> = LazyLock::new(TraceContextPropagator::new);

/// The trace context in a message or request's headers (`traceparent`, `tracestate`), read
/// through `get`; an empty context when there is none or it is malformed.
pub fn extract(get: impl Fn(&str) -> Option<String>) -> Context {
    extract_owned(get("traceparent").as_deref(), get("tracestate").as_deref())
}

/// The trace context of a `traceparent` and `tracestate` value.
pub fn extract_owned(traceparent: Option<&str>, tracestate: Option<&str>) -> Context {
    struct Pair<'a>(Option<&'a str>, Option<&'a str>);
    impl Extractor for Pair<'_> {
        fn get(&self, key: &str) -> Option<&str> {
            match key {
                "traceparent" => self.0,
                "tracestate" => self.1,
                _ => None,
            }
        }
        fn keys(&self) -> Vec<&str> {
            vec!["traceparent", "tracestate"]
        }
    }
    PROPAGATOR.extract(&Pair(traceparent, tracestate))
}

/// The trace context of HTTP request headers.
pub fn extract_http(headers: &http::HeaderMap) -> Context {
    extract_owned(
        headers.get("traceparent").and_then(|v| v.to_str().ok()),
        headers.get("tracestate").and_then(|v| v.to_str().ok()),
    )
}

/// Writes the context of `span` (`traceparent`, and `tracestate` when there is one) through
/// `set`. Nothing is written for a span that is not exported or when tracing is off.
pub fn inject(span: &tracing::Span, set: impl FnMut(&'static str, String)) {
    if !enabled() || span.is_disabled() {
        return;
    }
    inject_span_context(span.context().span().span_context().clone(), set);
}

/// Writes `span_context` through `set` (nothing when it is not valid).
fn inject_span_context(
    span_context: opentelemetry::trace::SpanContext,
    mut set: impl FnMut(&'static str, String),
) {
    if !span_context.is_valid() {
        return;
    }
    let cx = Context::new().with_remote_span_context(span_context);
    struct Sink<'a, F>(&'a mut F);
    impl<F: FnMut(&'static str, String)> Injector for Sink<'_, F> {
        fn set(&mut self, key: &str, value: String) {
            match key {
                "traceparent" => (self.0)("traceparent", value),
                "tracestate" if !value.is_empty() => (self.0)("tracestate", value),
                _ => {}
            }
        }
    }
    PROPAGATOR.inject_context(&cx, &mut Sink(&mut set));
}

/// Continues the context `cx` (if it holds a valid remote span) in `span`: its parent, and a
/// link when `link` (a consumer links to the message it processes). Call before the span is
/// entered.
pub fn continue_from(span: &tracing::Span, cx: &Context, link: bool) {
    if span.is_disabled() {
        return;
    }
    let remote = cx.span().span_context().clone();
    if !remote.is_valid() {
        return;
    }
    let _ = span.set_parent(cx.clone());
    if link {
        span.add_link(remote);
    }
}

/// Links `span` to the context `cx` without making it the parent (a batch links to each of its
/// messages).
pub fn link_to(span: &tracing::Span, cx: &Context) {
    if span.is_disabled() {
        return;
    }
    let remote = cx.span().span_context().clone();
    if remote.is_valid() {
        span.add_link(remote);
    }
}

/// A client span for a database round trip or transaction (OpenTelemetry database conventions;
/// the statement itself is not recorded), when traces are exported: e.g. `db_span("SELECT users",
/// "SELECT", Some("users"))`, or `db_span("apply event", "transaction", None)`.
pub fn db_span(name: &str, operation: &str, collection: Option<&str>) -> tracing::Span {
    if !enabled() {
        return tracing::Span::none();
    }
    tracing::info_span!(
        "db",
        otel.name = name,
        otel.kind = "client",
        otel.status_code = tracing::field::Empty,
        db.system.name = "postgresql",
        db.operation.name = operation,
        db.collection.name = collection,
    )
}

/// Marks `span` as failed (its status is an error) when `result` is an error.
pub fn record_result<T, E>(span: &tracing::Span, result: &Result<T, E>) {
    if result.is_err() && !span.is_disabled() {
        span.record("otel.status_code", "ERROR");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(vars: &[(&str, &str)]) -> Result<Option<TraceConfig>, TraceConfigError> {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        TraceConfig::from_lookup("clerk-sync-test", move |name| {
            vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
        })
    }

    #[test]
    fn tracing_is_off_without_an_endpoint_or_when_disabled() {
        assert!(config(&[]).unwrap().is_none());
        assert!(config(&[("OTEL_SERVICE_NAME", "x")]).unwrap().is_none());
        assert!(
            config(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
                ("OTEL_SDK_DISABLED", "true")
            ])
            .unwrap()
            .is_none()
        );
        assert!(
            config(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
                ("OTEL_TRACES_EXPORTER", "none")
            ])
            .unwrap()
            .is_none()
        );
    }

    #[test]
    fn the_generic_endpoint_gets_the_traces_path_and_the_traces_endpoint_is_used_as_it_is() {
        let c = config(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318/")])
            .unwrap()
            .unwrap();
        assert_eq!(c.endpoint, "http://collector:4318/v1/traces");
        assert_eq!(c.service_name, "clerk-sync-test");
        let c = config(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318"),
            (
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                "https://t.example/otlp",
            ),
            ("OTEL_SERVICE_NAME", "crm-webhooks"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(c.endpoint, "https://t.example/otlp");
        assert_eq!(c.service_name, "crm-webhooks");
    }

    #[test]
    fn bad_values_are_refused_with_the_variable_named_and_no_credentials_echoed() {
        let error = config(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4317")])
            .unwrap_err()
            .to_string();
        assert!(error.contains("OTEL_EXPORTER_OTLP_ENDPOINT"), "{error}");
        let error = config(&[(
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "ftp://user:hunter2@collector/",
        )])
        .unwrap_err()
        .to_string();
        assert!(!error.contains("hunter2"), "{error}");
        let base = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318");
        for (name, value, expect) in [
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc", "http/protobuf"),
            ("OTEL_TRACES_SAMPLER", "sometimes", "OTEL_TRACES_SAMPLER"),
            ("OTEL_TRACES_SAMPLER_ARG", "1.5", "OTEL_TRACES_SAMPLER_ARG"),
            ("OTEL_BSP_MAX_QUEUE_SIZE", "0", "OTEL_BSP_MAX_QUEUE_SIZE"),
        ] {
            let error = config(&[base, (name, value)]).unwrap_err().to_string();
            assert!(error.contains(expect), "{name}={value}: {error}");
        }
        assert!(config(&[base, ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")]).is_ok());
    }

    #[test]
    fn samplers_follow_the_standard_names() {
        let base = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318");
        let c = config(&[base]).unwrap().unwrap();
        assert!(matches!(c.sampler(), Sampler::ParentBased(_)));
        let c = config(&[
            base,
            ("OTEL_TRACES_SAMPLER", "traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "0.25"),
        ])
        .unwrap()
        .unwrap();
        assert!(matches!(c.sampler(), Sampler::TraceIdRatioBased(r) if (r - 0.25).abs() < 1e-9));
        let c = config(&[base, ("OTEL_TRACES_SAMPLER", "ALWAYS_OFF")])
            .unwrap()
            .unwrap();
        assert!(matches!(c.sampler(), Sampler::AlwaysOff));
    }

    #[test]
    fn the_debug_form_hides_credentials_in_the_endpoint() {
        let c = config(&[(
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "https://user:s3cret@collector.example:4318",
        )])
        .unwrap()
        .unwrap();
        let shown = format!("{c:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("collector.example"), "{shown}");
    }

    /// A collector that answers every export with 200 and counts the exports and their bytes.
    fn counting_collector() -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
        use std::io::{BufRead as _, BufReader, Read as _, Write as _};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let exports = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = exports.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                let counted = counted.clone();
                std::thread::spawn(move || {
                    let mut reader = BufReader::new(stream.try_clone().unwrap());
                    let mut stream = stream;
                    loop {
                        let mut length = 0usize;
                        let mut line = String::new();
                        loop {
                            line.clear();
                            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                                return;
                            }
                            if let Some(value) =
                                line.to_ascii_lowercase().strip_prefix("content-length:")
                            {
                                length = value.trim().parse().unwrap();
                            }
                            if line == "\r\n" {
                                break;
                            }
                        }
                        let mut body = vec![0; length];
                        reader.read_exact(&mut body).unwrap();
                        counted.fetch_add(1, Ordering::SeqCst);
                        let _ = stream.write_all(
                            b"HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n",
                        );
                    }
                });
            }
        });
        (format!("http://127.0.0.1:{port}"), exports)
    }

    /// A provider exporting through a [`QueueProcessor`] with these limits, and the processor's
    /// queue.
    fn provider(
        endpoint: &str,
        max_queue: &str,
        max_batch: &str,
    ) -> (SdkTracerProvider, Arc<Shared>) {
        let config = config(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint),
            ("OTEL_BSP_MAX_QUEUE_SIZE", max_queue),
            ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", max_batch),
            ("OTEL_BSP_SCHEDULE_DELAY", "3600000"),
        ])
        .unwrap()
        .unwrap();
        let exporter = SpanExporter::builder()
            .with_http()
            .with_endpoint(config.endpoint.clone())
            .build()
            .unwrap();
        let processor = QueueProcessor::start(exporter, &config).unwrap();
        let shared = processor.shared.clone();
        let provider = SdkTracerProvider::builder()
            .with_sampler(Sampler::AlwaysOn)
            .with_span_processor(processor)
            .build();
        (provider, shared)
    }

    fn end_spans(provider: &SdkTracerProvider, spans: usize) {
        use opentelemetry::trace::{Span as _, Tracer as _};
        let tracer = provider.tracer("test");
        for _ in 0..spans {
            tracer.start("unit").end();
        }
    }

    fn dropped(reason: &'static str) -> u64 {
        DROPPED.get_or_create(&DropReason { reason }).get()
    }

    #[test]
    fn a_full_batch_is_exported_at_once_without_waiting_for_the_schedule_delay() {
        let (endpoint, exports) = counting_collector();
        let (provider, shared) = provider(&endpoint, "100", "4");
        end_spans(&provider, 3);
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(
            exports.load(Ordering::SeqCst),
            0,
            "a part batch waits for the delay"
        );
        assert_eq!(shared.lock().spans.len(), 3);
        end_spans(&provider, 1);
        let started = Instant::now();
        while exports.load(Ordering::SeqCst) == 0 {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "the full batch was not exported"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(shared.lock().spans.is_empty());
        // A flush sends what is queued, and the shutdown the rest.
        end_spans(&provider, 2);
        provider.force_flush().unwrap();
        assert_eq!(exports.load(Ordering::SeqCst), 2);
        end_spans(&provider, 1);
        provider.shutdown().unwrap();
        assert_eq!(exports.load(Ordering::SeqCst), 3);
        assert!(shared.lock().stopped);
    }

    #[test]
    fn spans_beyond_the_queue_are_dropped_and_counted_and_never_waited_for() {
        // A collector that takes the connection and answers nothing for 3 s: the export thread
        // is busy with its first batch meanwhile.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                std::thread::spawn(move || {
                    std::thread::sleep(Duration::from_secs(3));
                    drop(stream);
                });
            }
        });
        let (provider, shared) = provider(&endpoint, "2", "2");
        end_spans(&provider, 2);
        let started = Instant::now();
        while !shared.lock().spans.is_empty() {
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "the full batch was not taken"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        let before = dropped("queue_full");
        let ending = Instant::now();
        end_spans(&provider, 3);
        assert!(
            ending.elapsed() < Duration::from_secs(1),
            "ending spans waited for the export"
        );
        assert_eq!(shared.lock().spans.len(), 2);
        assert_eq!(dropped("queue_full") - before, 1);
    }
}
