//! The HTTP load: C tasks, each owning one keep-alive HTTP/1.1 connection to the ingress, take
//! the next pre-signed event from a shared index until none is left. Connections are opened
//! before the clock starts; every response's latency is recorded.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, client::conn::http1, header::HeaderValue};
use hyper_util::rt::TokioIo;
use tokio::{net::TcpStream, sync::Barrier};

use super::events::Signed;

/// A request that takes longer than this counts as a transport error.
pub(super) const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// What one load run measured.
#[derive(Debug, Clone)]
pub struct LoadResult {
    pub connections: usize,
    /// Events to send.
    pub events: usize,
    /// Responses 200.
    pub accepted: u64,
    /// Other responses, by status.
    pub statuses: BTreeMap<u16, u64>,
    /// Events not answered: connection failures, timeouts, and events left unsent because
    /// every connection failed.
    pub transport_errors: u64,
    /// Connections that could not be (re)opened.
    pub connect_failures: u64,
    /// The first transport error, to say what went wrong.
    pub first_error: Option<String>,
    /// From the first request to the last response.
    pub wall: Duration,
    pub latency: Latency,
}

impl LoadResult {
    /// 200 responses per second of wall time.
    pub fn accepted_per_s(&self) -> f64 {
        per_second(self.accepted, self.wall)
    }

    /// Every event was answered 200.
    pub fn all_accepted(&self) -> bool {
        self.accepted == self.events as u64
    }

    /// Non-200 answers and transport errors.
    pub fn errors(&self) -> u64 {
        self.statuses.values().sum::<u64>() + self.transport_errors
    }
}

/// `count` per second of `wall`.
pub fn per_second(count: u64, wall: Duration) -> f64 {
    if wall.is_zero() {
        0.0
    } else {
        count as f64 / wall.as_secs_f64()
    }
}

/// Latency percentiles (nearest rank) of every answered request.
#[derive(Debug, Clone, Copy, Default)]
pub struct Latency {
    pub p50: Duration,
    pub p99: Duration,
    pub max: Duration,
    pub mean: Duration,
}

impl Latency {
    pub(super) fn of(mut samples: Vec<Duration>) -> Self {
        if samples.is_empty() {
            return Self::default();
        }
        samples.sort_unstable();
        let rank = |p: f64| {
            let index = ((p * samples.len() as f64).ceil() as usize).clamp(1, samples.len()) - 1;
            samples[index]
        };
        let total: Duration = samples.iter().sum();
        Self {
            p50: rank(0.50),
            p99: rank(0.99),
            max: samples[samples.len() - 1],
            mean: total / u32::try_from(samples.len()).unwrap_or(u32::MAX),
        }
    }
}

/// What one task (connection) saw.
#[derive(Default)]
pub(super) struct TaskResult {
    pub(super) latencies: Vec<Duration>,
    pub(super) accepted: u64,
    pub(super) statuses: BTreeMap<u16, u64>,
    pub(super) transport_errors: u64,
    pub(super) connect_failures: u64,
    pub(super) first_error: Option<String>,
}

impl TaskResult {
    /// An event got no answer.
    pub(super) fn error(&mut self, message: String) {
        self.transport_errors += 1;
        self.first_error.get_or_insert(message);
    }

    /// A response with `status`, `latency` after the request started.
    pub(super) fn answered(&mut self, status: u16, latency: Duration) {
        self.latencies.push(latency);
        if status == 200 {
            self.accepted += 1;
        } else {
            *self.statuses.entry(status).or_default() += 1;
        }
    }
}

impl LoadResult {
    /// The tasks' results added up; `events` requests were to be sent, `wall` is the time they
    /// took.
    pub(super) fn merge(
        connections: usize,
        events: usize,
        tasks: Vec<TaskResult>,
        wall: Duration,
    ) -> Self {
        let mut latencies = Vec::with_capacity(events);
        let mut out = Self {
            connections,
            events,
            accepted: 0,
            statuses: BTreeMap::new(),
            transport_errors: 0,
            connect_failures: 0,
            first_error: None,
            wall,
            latency: Latency::default(),
        };
        for result in tasks {
            latencies.extend(result.latencies);
            out.accepted += result.accepted;
            for (status, count) in result.statuses {
                *out.statuses.entry(status).or_default() += count;
            }
            out.transport_errors += result.transport_errors;
            out.connect_failures += result.connect_failures;
            if out.first_error.is_none() {
                out.first_error = result.first_error;
            }
        }
        out.latency = Latency::of(latencies);
        out
    }
}

pub(super) type Sender = http1::SendRequest<Full<Bytes>>;

/// Opens a keep-alive HTTP/1.1 connection.
pub(super) async fn connect(addr: SocketAddr) -> anyhow::Result<Sender> {
    let stream = TcpStream::connect(addr)
        .await
        .with_context(|| format!("cannot connect to the ingress at {addr}"))?;
    stream.set_nodelay(true).context("cannot set TCP_NODELAY")?;
    let (sender, connection) = http1::handshake(TokioIo::new(stream))
        .await
        .context("HTTP/1.1 handshake failed")?;
    tokio::spawn(async move {
        // Ends when the sender is dropped or the server closes the connection.
        let _ = connection.await;
    });
    Ok(sender)
}

/// The ingress's webhook request carrying `event` (no `host` header: [`send`] adds it).
pub(super) fn webhook(event: &Signed) -> anyhow::Result<Request<Full<Bytes>>> {
    Request::builder()
        .method(Method::POST)
        .uri("/webhooks/clerk")
        .header("content-type", "application/json")
        .header("svix-id", event.svix_id.clone())
        .header("svix-timestamp", event.timestamp.clone())
        .header("svix-signature", event.signature.clone())
        .body(Full::new(event.body.clone()))
        .context("cannot build the request")
}

/// Sends `request` (with a `host` header of `host` unless it has one) and reads the whole
/// answer; returns its status.
pub(super) async fn send(
    sender: &mut Sender,
    host: &HeaderValue,
    mut request: Request<Full<Bytes>>,
) -> anyhow::Result<u16> {
    request
        .headers_mut()
        .entry(hyper::header::HOST)
        .or_insert_with(|| host.clone());
    sender.ready().await.context("connection closed")?;
    let response = sender
        .send_request(request)
        .await
        .context("request failed")?;
    let status = response.status().as_u16();
    // Read the body to the end, or the connection cannot carry the next request.
    response
        .into_body()
        .collect()
        .await
        .context("reading the response failed")?;
    Ok(status)
}

/// One connection's loop.
async fn task(
    addr: SocketAddr,
    events: Arc<Vec<Signed>>,
    next: Arc<AtomicUsize>,
    start: Arc<Barrier>,
) -> TaskResult {
    let mut result = TaskResult::default();
    let host = match HeaderValue::from_str(&addr.to_string()) {
        Ok(host) => host,
        Err(error) => {
            result.error(format!("{error}"));
            return result;
        }
    };
    closed_loop(addr, &host, &start, result, || {
        let index = next.fetch_add(1, Ordering::Relaxed);
        events.get(index).map(webhook)
    })
    .await
}

/// One connection's closed loop: once every task is ready (`start`), sends the requests `next`
/// gives one after the other (`None`: done), each after the answer to the last, reconnecting
/// after a failure; adds what it measured to `result`. A connection that cannot be opened stops
/// it (the other tasks take the remaining requests).
pub(super) async fn closed_loop(
    addr: SocketAddr,
    host: &HeaderValue,
    start: &Barrier,
    mut result: TaskResult,
    mut next: impl FnMut() -> Option<anyhow::Result<Request<Full<Bytes>>>>,
) -> TaskResult {
    let mut sender = connect(addr).await;
    start.wait().await;
    loop {
        let mut current = match sender {
            Ok(sender) => sender,
            Err(error) => {
                result.connect_failures += 1;
                result.first_error.get_or_insert(format!("{error:#}"));
                return result;
            }
        };
        let request = match next() {
            None => return result,
            Some(Ok(request)) => request,
            Some(Err(error)) => {
                result.error(format!("{error:#}"));
                sender = Ok(current);
                continue;
            }
        };
        sender = match exchange(&mut current, host, request, &mut result).await {
            Some(_) => Ok(current),
            None => connect(addr).await,
        };
    }
}

/// Sends `request` over `current` within [`REQUEST_TIMEOUT`] and records the answer (its
/// latency) or the failure in `result`: the status, or `None` when the connection cannot be
/// used any more.
pub(super) async fn exchange(
    current: &mut Sender,
    host: &HeaderValue,
    request: Request<Full<Bytes>>,
    result: &mut TaskResult,
) -> Option<u16> {
    let started = Instant::now();
    match tokio::time::timeout(REQUEST_TIMEOUT, send(current, host, request)).await {
        Ok(Ok(status)) => {
            result.answered(status, started.elapsed());
            Some(status)
        }
        Ok(Err(error)) => {
            result.error(format!("{error:#}"));
            None
        }
        Err(_) => {
            result.error(format!("no answer within {REQUEST_TIMEOUT:?}"));
            None
        }
    }
}

/// Sends every event to the ingress at `addr` over `connections` connections, from a thread of
/// its own (see [`on_own_thread`]).
pub async fn run(
    addr: SocketAddr,
    events: Arc<Vec<Signed>>,
    connections: usize,
) -> anyhow::Result<LoadResult> {
    on_own_thread(move || run_here(addr, events, connections)).await
}

/// Runs a client (the load generator, the broker ceiling's publisher) on a single-threaded
/// runtime in a thread of its own. On a box this small every hand-off between the threads of a
/// multi-threaded runtime (a request task waking its connection task on the other worker) costs a
/// futex wake and CPU that the ingress and the broker need: the load generator used 15–16 µs of
/// CPU per request on the bench's multi-threaded runtime and 11–13 µs on one thread, which also
/// keeps up with 200 connections.
pub async fn on_own_thread<F, Fut, T>(client: F) -> anyhow::Result<T>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = anyhow::Result<T>>,
    T: Send + 'static,
{
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("bench-client".into())
        .spawn(move || {
            let result = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("cannot start the client's runtime")
                .and_then(|runtime| runtime.block_on(client()));
            let _ = tx.send(result);
        })
        .context("cannot start the client's thread")?;
    rx.await.context("the client's thread panicked")?
}

async fn run_here(
    addr: SocketAddr,
    events: Arc<Vec<Signed>>,
    connections: usize,
) -> anyhow::Result<LoadResult> {
    let next = Arc::new(AtomicUsize::new(0));
    let start = Arc::new(Barrier::new(connections + 1));
    let tasks: Vec<_> = (0..connections)
        .map(|_| {
            tokio::spawn(task(
                addr,
                Arc::clone(&events),
                Arc::clone(&next),
                Arc::clone(&start),
            ))
        })
        .collect();
    start.wait().await;
    let started = Instant::now();
    let mut results = Vec::with_capacity(connections);
    for task in tasks {
        results.push(task.await.context("a load task panicked")?);
    }
    let mut out = LoadResult::merge(connections, events.len(), results, started.elapsed());
    // Events no task got to send (every connection failed) are errors too.
    let taken = next.load(Ordering::Relaxed).min(events.len());
    out.transport_errors += (events.len() - taken) as u64;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let samples: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        let latency = Latency::of(samples);
        assert_eq!(latency.p50, Duration::from_millis(50));
        assert_eq!(latency.p99, Duration::from_millis(99));
        assert_eq!(latency.max, Duration::from_millis(100));
        assert_eq!(Latency::of(vec![]).max, Duration::ZERO);
    }
}
