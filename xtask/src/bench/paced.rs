//! A paced (open-loop) HTTP/1.1 load: requests go out at a fixed rate, whatever the server's
//! speed, over N keep-alive connections, until a stop signal or a count.
//!
//! The unpaced load of [`super::load`] sends as fast as the server answers, which measures
//! throughput; this one sends on a schedule (request `i` is due at `start + i / rate`), which is
//! what a steady stream of webhooks, or a steady read load, looks like. A dispatcher takes the
//! next request from the caller's iterator when it is due and hands it to whichever connection
//! is free; when every connection is busy it waits, falls behind the schedule, and catches up
//! (as fast as the connections allow) once they are free again: how far behind it ever was is
//! reported ([`Paced::max_behind`]), so a run that could not hold its rate says so.
//!
//! The requests come from an iterator, pulled one at a time on the generator's thread, so the
//! stream can be unbounded and built (and signed) on the fly: the soak streams millions of events
//! this way without holding them. [`webhook_requests`] cycles through events signed beforehand
//! (for a short background load: signatures are only accepted for five minutes).
//!
//! Like [`super::load::run`], everything runs on a single-threaded runtime in a thread of its
//! own. [`Progress`] gives running totals while it runs.
//!
//! ```ignore
//! let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
//! let pace = Pace::new(1000.0, 16);
//! let progress = pace.progress.clone();
//! let run = tokio::spawn(paced::run(addr, pace, paced::webhook_requests(signed), async move {
//!     let mut stop_rx = stop_rx;
//!     let _ = stop_rx.wait_for(|stop| *stop).await;
//! }));
//! // … another phase; progress.accepted() meanwhile …
//! let _ = stop_tx.send(true);
//! let (paced, _requests) = run.await??;
//! ```

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context;
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, header::HeaderValue};
use tokio::sync::{Mutex, mpsc};

use super::{
    events::Signed,
    load::{self, LoadResult, Sender, TaskResult},
};

/// A request of a paced run.
pub type HttpRequest = Request<Full<Bytes>>;

/// How a paced run sends.
#[derive(Debug, Clone)]
pub struct Pace {
    /// Requests per second.
    pub rate: f64,
    /// Keep-alive connections (at least 1). Enough of them to absorb a slow answer: at a rate R
    /// and a worst latency L, R × L requests are in flight.
    pub connections: usize,
    /// Stop after this many requests (`None`: until the stop signal or the end of the
    /// iterator).
    pub limit: Option<u64>,
    /// Running totals, shared with the caller.
    pub progress: Arc<Progress>,
}

impl Pace {
    /// `rate` requests per second over `connections` connections, no limit.
    pub fn new(rate: f64, connections: usize) -> Self {
        Self {
            rate,
            connections,
            limit: None,
            progress: Arc::new(Progress::default()),
        }
    }
}

/// Running totals of a paced run, readable while it runs.
#[derive(Debug, Default)]
pub struct Progress {
    sent: AtomicU64,
    accepted: AtomicU64,
    rejected: AtomicU64,
    errors: AtomicU64,
}

impl Progress {
    /// Requests handed to a connection so far.
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// Responses 200 so far.
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }

    /// Other responses so far.
    pub fn rejected(&self) -> u64 {
        self.rejected.load(Ordering::Relaxed)
    }

    /// Requests not answered so far (connection failures, timeouts).
    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }
}

/// What a paced run measured.
#[derive(Debug, Clone)]
pub struct Paced {
    /// Requests sent (`events`), their answers, latencies (from the request being written to
    /// its answer) and the wall time from the first request to the last answer.
    pub load: LoadResult,
    /// The requested rate.
    pub rate: f64,
    /// How late the latest request left compared with its schedule (0 when the rate was held).
    pub max_behind: Duration,
}

/// Sends the requests of `requests` to `addr` at `pace` until `stop` completes, the limit is
/// reached or the iterator ends; then waits for the answers of the requests in flight. Returns
/// what it measured and the iterator (which may hold state the caller needs, e.g. the final
/// state a stream of events leads to). Requests without a `host` header get one. Fails if the
/// iterator yields an error or nothing can be run, not for a failed request (counted).
pub async fn run<I, F>(
    addr: SocketAddr,
    pace: Pace,
    requests: I,
    stop: F,
) -> anyhow::Result<(Paced, I)>
where
    I: Iterator<Item = anyhow::Result<HttpRequest>> + Send + 'static,
    F: Future<Output = ()> + Send + 'static,
{
    if !(pace.rate.is_finite() && pace.rate > 0.0) {
        anyhow::bail!("a paced load needs a rate above 0, not {}", pace.rate);
    }
    if pace.connections == 0 {
        anyhow::bail!("a paced load needs at least one connection");
    }
    load::on_own_thread(move || run_here(addr, pace, requests, stop)).await
}

/// The ingress's webhook request carrying `event`.
pub fn webhook(event: &Signed) -> anyhow::Result<HttpRequest> {
    load::webhook(event)
}

/// Every request of `events`, over and over (an endless iterator): re-sent events are
/// duplicates to the worker, and their signatures expire five minutes after they were made.
pub fn webhook_requests(
    events: Arc<Vec<Signed>>,
) -> impl Iterator<Item = anyhow::Result<HttpRequest>> + Send + 'static {
    let len = events.len();
    (0..usize::MAX)
        .take_while(move |_| len > 0)
        .map(move |i| load::webhook(&events[i % len]))
}

type Queue = Arc<Mutex<mpsc::Receiver<HttpRequest>>>;

async fn run_here<I, F>(
    addr: SocketAddr,
    pace: Pace,
    mut requests: I,
    stop: F,
) -> anyhow::Result<(Paced, I)>
where
    I: Iterator<Item = anyhow::Result<HttpRequest>>,
    F: Future<Output = ()>,
{
    let host = HeaderValue::from_str(&addr.to_string()).context("a bad host header")?;
    // Room for one waiting request per connection: beyond that the dispatcher waits (and falls
    // behind) rather than queueing without bound.
    let (tx, rx) = mpsc::channel::<HttpRequest>(pace.connections);
    let queue: Queue = Arc::new(Mutex::new(rx));
    let mut tasks = Vec::with_capacity(pace.connections);
    for _ in 0..pace.connections {
        let sender = load::connect(addr).await;
        let (host, queue, progress) = (host.clone(), Arc::clone(&queue), &pace.progress);
        let task = connection(addr, host, sender, queue, Arc::clone(progress));
        tasks.push(tokio::spawn(task));
    }
    let started = Instant::now();
    // The connections finish what is queued and in flight once the dispatcher is done.
    let dispatched = dispatch(&pace, &mut requests, tx, stop, started).await;
    let mut results = Vec::with_capacity(tasks.len());
    for task in tasks {
        results.push(task.await.context("a paced load task panicked")?);
    }
    let wall = started.elapsed();
    let sent = dispatched.sent;
    if let Some(error) = dispatched.failure {
        return Err(error);
    }
    let events = usize::try_from(sent).unwrap_or(usize::MAX);
    let mut load = LoadResult::merge(pace.connections, events, results, wall);
    // Requests the dispatcher queued but no connection took (they all failed) are errors too.
    let answered = load.accepted + load.errors();
    load.transport_errors += sent.saturating_sub(answered);
    let paced = Paced {
        load,
        rate: pace.rate,
        max_behind: dispatched.max_behind,
    };
    Ok((paced, requests))
}

/// What the dispatcher did.
struct Dispatched {
    /// Requests handed to the connections.
    sent: u64,
    /// How late the latest left compared with its schedule.
    max_behind: Duration,
    /// The request source's error, if it failed.
    failure: Option<anyhow::Error>,
}

/// Hands the requests of `requests` to the connections through `tx` on the schedule of
/// `pace` from `started`, until `stop` completes, the limit is reached, the iterator ends or
/// every connection has ended.
async fn dispatch<I, F>(
    pace: &Pace,
    requests: &mut I,
    tx: mpsc::Sender<HttpRequest>,
    stop: F,
    started: Instant,
) -> Dispatched
where
    I: Iterator<Item = anyhow::Result<HttpRequest>>,
    F: Future<Output = ()>,
{
    let period = 1.0 / pace.rate;
    let limit = pace.limit.unwrap_or(u64::MAX);
    let mut max_behind = Duration::ZERO;
    let mut sent: u64 = 0;
    let mut failure = None;
    tokio::pin!(stop);
    while sent < limit {
        let due = started + Duration::from_secs_f64(sent as f64 * period);
        if Instant::now() < due {
            tokio::select! {
                () = &mut stop => break,
                () = tokio::time::sleep_until(due.into()) => {}
            }
        }
        let request = match requests.next() {
            None => break,
            Some(Ok(request)) => request,
            Some(Err(error)) => {
                failure = Some(error.context("the paced load's request source failed"));
                break;
            }
        };
        tokio::select! {
            () = &mut stop => break,
            sent_ok = tx.send(request) => {
                if sent_ok.is_err() {
                    // Every connection task ended: nothing can be sent any more.
                    break;
                }
            }
        }
        max_behind = max_behind.max(Instant::now().saturating_duration_since(due));
        sent += 1;
        pace.progress.sent.fetch_add(1, Ordering::Relaxed);
    }
    Dispatched {
        sent,
        max_behind,
        failure,
    }
}

/// One connection: takes the next due request, sends it, records the answer; reconnects after
/// a failure. Ends when the dispatcher is done and the queue is empty.
async fn connection(
    addr: SocketAddr,
    host: HeaderValue,
    first: anyhow::Result<Sender>,
    queue: Queue,
    progress: Arc<Progress>,
) -> TaskResult {
    let mut result = TaskResult::default();
    let mut sender = match first {
        Ok(sender) => Some(sender),
        Err(error) => {
            result.connect_failures += 1;
            result.first_error.get_or_insert(format!("{error:#}"));
            None
        }
    };
    loop {
        let Some(request) = queue.lock().await.recv().await else {
            return result;
        };
        let mut current = match sender.take() {
            Some(current) => current,
            None => match load::connect(addr).await {
                Ok(current) => current,
                Err(error) => {
                    result.connect_failures += 1;
                    result.error(format!("{error:#}"));
                    progress.errors.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
            },
        };
        // Only the time on the wire counts as latency; a wait for a free connection shows in
        // `max_behind`.
        match load::exchange(&mut current, &host, request, &mut result).await {
            Some(status) => {
                let counter = if status == 200 {
                    &progress.accepted
                } else {
                    &progress.rejected
                };
                counter.fetch_add(1, Ordering::Relaxed);
                sender = Some(current);
            }
            None => {
                progress.errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        net::TcpListener,
    };

    use super::*;

    /// A server answering every HTTP/1.1 request 200 (`Content-Length` bodies only).
    async fn server() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buffer = Vec::new();
                    let mut chunk = [0u8; 4096];
                    loop {
                        let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") else {
                            match stream.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buffer.extend_from_slice(&chunk[..n]),
                            }
                            continue;
                        };
                        let head = String::from_utf8_lossy(&buffer[..end]).to_lowercase();
                        let length: usize = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse().ok())
                            .unwrap_or(0);
                        while buffer.len() < end + 4 + length {
                            match stream.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buffer.extend_from_slice(&chunk[..n]),
                            }
                        }
                        buffer.drain(..end + 4 + length);
                        let reply = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                        if stream.write_all(reply).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        addr
    }

    fn get(i: u64) -> anyhow::Result<HttpRequest> {
        Ok(Request::get(format!("/users/{i}")).body(Full::new(Bytes::new()))?)
    }

    #[tokio::test]
    async fn a_limit_is_sent_at_the_rate_and_the_iterator_comes_back() {
        let addr = server().await;
        let mut pace = Pace::new(200.0, 4);
        pace.limit = Some(50);
        let progress = Arc::clone(&pace.progress);
        let started = Instant::now();
        let (paced, mut rest) = run(addr, pace, (0..).map(get), std::future::pending())
            .await
            .expect("run");
        // 50 requests at 200/s: the last is due 245 ms after the first.
        assert!(started.elapsed() >= Duration::from_millis(240));
        assert_eq!(paced.load.events, 50);
        assert_eq!(paced.load.accepted, 50);
        assert_eq!(paced.load.errors(), 0);
        assert_eq!(progress.accepted(), 50);
        assert_eq!(progress.sent(), 50);
        assert!(
            rest.next().is_some(),
            "the iterator is handed back unfinished"
        );
    }

    #[tokio::test]
    async fn a_stop_signal_ends_an_endless_run() {
        let addr = server().await;
        let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
        let stop = async move {
            let _ = stop_rx.wait_for(|stop| *stop).await;
        };
        let pace = Pace::new(1000.0, 2);
        let progress = Arc::clone(&pace.progress);
        let running = tokio::spawn(run(addr, pace, (0..).map(get), stop));
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(progress.accepted() > 0);
        let _ = stop_tx.send(true);
        let (paced, _) = running.await.expect("join").expect("run");
        assert_eq!(paced.load.accepted, paced.load.events as u64);
        // About 300 at 1000/s; a loaded test machine sends fewer, never many more.
        assert!(
            (1..=450).contains(&paced.load.events),
            "{}",
            paced.load.events
        );
    }

    #[tokio::test]
    async fn an_unreachable_server_counts_errors_and_a_bad_rate_is_refused() {
        let addr = load_free_addr();
        let mut pace = Pace::new(500.0, 2);
        pace.limit = Some(5);
        let (paced, _) = run(addr, pace, (0..).map(get), std::future::pending())
            .await
            .expect("run");
        assert_eq!(paced.load.accepted, 0);
        assert_eq!(paced.load.errors(), 5);
        assert!(paced.load.first_error.is_some());
        let bad = run(
            addr,
            Pace::new(0.0, 1),
            (0..).map(get),
            std::future::pending(),
        )
        .await;
        assert!(bad.is_err());
    }

    fn load_free_addr() -> SocketAddr {
        crate::harness::host::free_addr().expect("free port")
    }
}
