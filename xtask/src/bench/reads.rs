//! The read path: `GET /users/by-clerk-id/{id}` with a service key and `GET /me` with session
//! JWTs, over C keep-alive connections for a fixed time each, against a table of many users,
//! and the ceiling they are judged against: a minimal client running the same select through a
//! pool of the same size, as many at once as there are connections.

use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context;
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, header::HeaderValue};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rsa::{
    RsaPrivateKey,
    pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding},
    rand_core::OsRng,
};
use sea_orm::Database;
use serde::Serialize;
use tokio::sync::Barrier;

use super::{
    load::{self, LoadResult, TaskResult},
    paced::{self, Pace},
    seed,
};
use crate::harness::host;

/// The service key the bench's api accepts.
pub const SERVICE_KEY: &str = "svc-bench-read-key-0123456789abcdef0123";

/// The select the api runs for `GET /users/by-clerk-id/{id}` and `/me` (what it returns of the
/// user, by the unique index), as the ceiling clients send it.
pub const SELECT_USER: &str = store::users::SELECT_BY_CLERK_ID;

/// The instance key pair the bench signs session tokens with (the api gets the public half).
pub struct SessionKeys {
    encoding: EncodingKey,
    /// `CLERK_JWT_KEY` for the api.
    pub public_pem: String,
}

impl SessionKeys {
    pub fn generate() -> anyhow::Result<Self> {
        let private = RsaPrivateKey::new(&mut OsRng, 2048).context("cannot make an RSA key")?;
        let private_pem = private
            .to_pkcs8_pem(LineEnding::LF)
            .context("cannot encode the private key")?;
        let public_pem = private
            .to_public_key()
            .to_public_key_pem(LineEnding::LF)
            .context("cannot encode the public key")?;
        Ok(Self {
            encoding: EncodingKey::from_rsa_pem(private_pem.as_bytes())
                .context("cannot read the private key back")?,
            public_pem,
        })
    }

    /// A session token of `sub` as Clerk issues them: valid for 60 seconds from now.
    pub fn session_token(&self, sub: &str, session: usize) -> anyhow::Result<String> {
        let now = chrono::Utc::now().timestamp();
        let claims = serde_json::json!({
            "sub": sub, "sid": format!("sess_bench{session}"), "iss": ISSUER,
            "azp": "http://localhost:3000", "exp": now + 60, "nbf": now - 5, "iat": now - 5,
            "v": 2,
        });
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some("ins_bench".into());
        jsonwebtoken::encode(&header, &claims, &self.encoding).context("cannot sign a token")
    }
}

/// `CLERK_ISSUER` of the bench's api and `iss` of its tokens.
pub const ISSUER: &str = "https://clerk.bench.example";

/// One measured read load.
#[derive(Debug, Clone, Serialize)]
pub struct ReadRun {
    pub what: String,
    pub connections: usize,
    pub requests: u64,
    pub ok: u64,
    pub errors: u64,
    pub per_s: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// CPU time of the api per request (none for the ceiling).
    pub api_cpu_us_per_request: Option<f64>,
    /// CPU time of the load generator (or ceiling client) per request.
    pub client_cpu_us_per_request: f64,
    /// For a paced run: the rate requests were sent at (none: as fast as answered).
    pub offered_per_s: Option<f64>,
    /// For a paced run: how far the sender ever fell behind its schedule.
    pub max_behind_ms: Option<f64>,
    /// CPU time of every Postgres process per request (the live ingest's share included).
    pub postgres_cpu_us_per_request: Option<f64>,
    /// Blocks Postgres read from outside its shared buffers, per request (the ingest's too).
    pub blocks_read_per_request: Option<f64>,
    /// The 1-minute load average of the box right after the run.
    pub load_average_1m: Option<f64>,
}

impl ReadRun {
    fn of(what: &str, load: &LoadResult, api_cpu: Option<Duration>, client_cpu: Duration) -> Self {
        let per_request = |cpu: Duration| {
            if load.events == 0 {
                0.0
            } else {
                cpu.as_secs_f64() * 1e6 / load.events as f64
            }
        };
        let ms = |d: Duration| (d.as_secs_f64() * 1e5).round() / 100.0;
        Self {
            what: what.to_owned(),
            connections: load.connections,
            requests: load.events as u64,
            ok: load.accepted,
            errors: load.errors(),
            per_s: load.accepted_per_s().round(),
            p50_ms: ms(load.latency.p50),
            p99_ms: ms(load.latency.p99),
            max_ms: ms(load.latency.max),
            api_cpu_us_per_request: api_cpu.map(|c| (per_request(c) * 10.0).round() / 10.0),
            client_cpu_us_per_request: (per_request(client_cpu) * 10.0).round() / 10.0,
            offered_per_s: None,
            max_behind_ms: None,
            postgres_cpu_us_per_request: None,
            blocks_read_per_request: None,
            load_average_1m: None,
        }
    }

    /// " (sent at R/s, at most B ms behind)" for a paced run, else nothing.
    pub fn pacing(&self) -> String {
        match (self.offered_per_s, self.max_behind_ms) {
            (Some(rate), Some(behind)) => {
                format!(" (sent at {rate:.0}/s, at most {behind:.1} ms behind)")
            }
            _ => String::new(),
        }
    }

    pub fn summary(&self) -> String {
        format!(
            "{:.0}/s{}, p50 {:.2} ms, p99 {:.2} ms, max {:.1} ms, {} errors{}",
            self.per_s,
            self.pacing(),
            self.p50_ms,
            self.p99_ms,
            self.max_ms,
            self.errors,
            self.api_cpu_us_per_request
                .map(|c| format!(", api CPU {c:.0} µs/request"))
                .unwrap_or_default()
        ) + &self.database_cost()
    }

    /// ", Postgres CPU P µs/request, B blocks read/request" when measured, else nothing.
    pub fn database_cost(&self) -> String {
        match (
            self.postgres_cpu_us_per_request,
            self.blocks_read_per_request,
        ) {
            (Some(cpu), Some(blocks)) => {
                format!(", Postgres CPU {cpu:.0} µs/request, {blocks:.2} blocks read/request")
            }
            _ => String::new(),
        }
    }
}

/// Index of the `n`th request of connection `task`: spread over `0..len` without a pattern
/// the database could cache (a multiplicative hash).
fn pick(task: usize, n: u64, len: usize) -> usize {
    let x = (task as u64)
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add(n.wrapping_mul(0xBF58_476D_1CE4_E5B9));
    usize::try_from((x ^ (x >> 31)) % len as u64).unwrap_or(0)
}

/// The ceiling: `connections` tasks running [`SELECT_USER`] for random seeded users through a
/// sqlx pool of `pool_size` connections, for `duration`, on a thread of its own.
pub async fn ceiling(
    db_url: &str,
    pool_size: u32,
    users: u64,
    connections: usize,
    duration: Duration,
) -> anyhow::Result<ReadRun> {
    let db_url = db_url.to_owned();
    let cpu_before = host::cpu_time("self")?;
    let load = load::on_own_thread(move || async move {
        // The pool the api makes (the worker's options), of the same size.
        let db = Database::connect(store::pool::pool_options(
            &db_url,
            pool_size,
            store::pool::Pooler::None,
        ))
        .await
        .context("cannot connect the ceiling client")?;
        let pool = db.get_postgres_connection_pool().clone();
        let start = Arc::new(Barrier::new(connections + 1));
        let tasks: Vec<_> = (0..connections)
            .map(|task| {
                let (pool, start) = (pool.clone(), Arc::clone(&start));
                tokio::spawn(async move {
                    let mut result = TaskResult::default();
                    // Warm this connection's prepared statement before the clock starts.
                    let _ = sea_orm::sqlx::query(SELECT_USER)
                        .bind(seed::seeded_user(1))
                        .fetch_optional(&pool)
                        .await;
                    start.wait().await;
                    let deadline = Instant::now() + duration;
                    let mut n = 0u64;
                    while Instant::now() < deadline {
                        let id = seed::seeded_user(pick(task, n, users as usize) as u64 + 1);
                        n += 1;
                        let started = Instant::now();
                        match sea_orm::sqlx::query(SELECT_USER)
                            .bind(id)
                            .fetch_optional(&pool)
                            .await
                        {
                            Ok(Some(_)) => result.answered(200, started.elapsed()),
                            Ok(None) => result.answered(404, started.elapsed()),
                            Err(error) => result.error(format!("{error}")),
                        }
                    }
                    result
                })
            })
            .collect();
        let load = gather(start, tasks).await;
        let _ = db.close().await;
        load
    })
    .await?;
    let client_cpu = host::cpu_time("self")?.saturating_sub(cpu_before);
    Ok(ReadRun::of(
        &format!("ceiling: the select through a pool of {pool_size}"),
        &load,
        None,
        client_cpu,
    ))
}

/// What a read load asks for: the path and the credentials of its `n`th request.
pub trait Reads: Send + Sync + 'static {
    fn request(&self, task: usize, n: u64) -> (String, &HeaderValue);
}

/// The `n`th read of connection `task`, as an HTTP request.
fn read_request(reads: &dyn Reads, task: usize, n: u64) -> anyhow::Result<paced::HttpRequest> {
    let (path, authorization) = reads.request(task, n);
    Request::builder()
        .method(Method::GET)
        .uri(path)
        .header(hyper::header::AUTHORIZATION, authorization.clone())
        .body(Full::new(Bytes::new()))
        .context("cannot build a read request")
}

/// `GET /users/by-clerk-id/{random seeded user}` with the service key.
pub struct ServiceKeyReads {
    pub users: u64,
    pub authorization: HeaderValue,
}

impl Reads for ServiceKeyReads {
    fn request(&self, task: usize, n: u64) -> (String, &HeaderValue) {
        let user = pick(task, n, self.users as usize) as u64 + 1;
        (
            format!("/users/by-clerk-id/{}", seed::seeded_user(user)),
            &self.authorization,
        )
    }
}

/// `GET /me` with the session token of a random one of `sessions` signed-in users (each
/// frontend reuses its token until it is refreshed, every minute).
pub struct SessionReads {
    pub sessions: Vec<HeaderValue>,
}

impl SessionReads {
    /// Tokens of `count` sessions of seeded users spread over the table.
    pub fn sign(keys: &SessionKeys, count: usize, users: u64) -> anyhow::Result<Self> {
        let stride = (users / count.max(1) as u64).max(1);
        let sessions = (0..count)
            .map(|i| {
                let token = keys.session_token(&seed::seeded_user(1 + i as u64 * stride), i)?;
                HeaderValue::from_str(&format!("Bearer {token}"))
                    .context("a token is not a header value")
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(Self { sessions })
    }
}

impl Reads for SessionReads {
    fn request(&self, task: usize, n: u64) -> (String, &HeaderValue) {
        (
            "/me".to_owned(),
            &self.sessions[pick(task, n, self.sessions.len())],
        )
    }
}

/// Sends `reads` to the api at `addr` over `connections` connections for `duration`; the api's
/// CPU time is read from `/proc/<api_pid>`.
pub async fn against_api(
    what: &str,
    addr: SocketAddr,
    api_pid: u32,
    reads: Arc<dyn Reads>,
    connections: usize,
    duration: Duration,
) -> anyhow::Result<ReadRun> {
    let api_before = host::cpu_time(&api_pid.to_string())?;
    let client_before = host::cpu_time("self")?;
    let load = load::on_own_thread(move || async move {
        let host = HeaderValue::from_str(&addr.to_string()).context("bad host")?;
        let start = Arc::new(Barrier::new(connections + 1));
        let tasks: Vec<_> = (0..connections)
            .map(|task| {
                let (reads, start, host) = (Arc::clone(&reads), Arc::clone(&start), host.clone());
                tokio::spawn(read_task(addr, host, reads, task, start, duration))
            })
            .collect();
        gather(start, tasks).await
    })
    .await?;
    let client_cpu = host::cpu_time("self")?.saturating_sub(client_before);
    let api_cpu = host::cpu_time(&api_pid.to_string())?.saturating_sub(api_before);
    Ok(ReadRun::of(what, &load, Some(api_cpu), client_cpu))
}

/// Sends `reads` to the api at `addr` at `rate` per second for `duration` (open loop, over
/// `connections` connections, [`paced`]): the latency a read sees when the api is busy but not
/// saturated. The api's CPU time is read from `/proc/<api_pid>`.
pub async fn paced_against_api(
    what: &str,
    addr: SocketAddr,
    api_pid: u32,
    reads: Arc<dyn Reads>,
    connections: usize,
    rate: f64,
    duration: Duration,
) -> anyhow::Result<ReadRun> {
    let api_before = host::cpu_time(&api_pid.to_string())?;
    let client_before = host::cpu_time("self")?;
    let mut pace = Pace::new(rate, connections);
    pace.limit = Some((rate * duration.as_secs_f64()).ceil() as u64);
    let requests = (0u64..).map(move |n| read_request(reads.as_ref(), 0, n));
    let (paced, _) = paced::run(addr, pace, requests, std::future::pending()).await?;
    let client_cpu = host::cpu_time("self")?.saturating_sub(client_before);
    let api_cpu = host::cpu_time(&api_pid.to_string())?.saturating_sub(api_before);
    let mut run = ReadRun::of(what, &paced.load, Some(api_cpu), client_cpu);
    run.offered_per_s = Some(rate);
    run.max_behind_ms = Some((paced.max_behind.as_secs_f64() * 1e5).round() / 100.0);
    Ok(run)
}

/// One connection's loop: requests back to back until `duration` has passed.
async fn read_task(
    addr: SocketAddr,
    host: HeaderValue,
    reads: Arc<dyn Reads>,
    task: usize,
    start: Arc<Barrier>,
    duration: Duration,
) -> TaskResult {
    // The clock starts once every task is ready.
    let mut deadline = None;
    let mut n = 0u64;
    let result = TaskResult::default();
    load::closed_loop(addr, &host, &start, result, || {
        let deadline = *deadline.get_or_insert_with(|| Instant::now() + duration);
        if Instant::now() >= deadline {
            return None;
        }
        n += 1;
        Some(read_request(reads.as_ref(), task, n - 1))
    })
    .await
}

/// Starts the clock when every task is ready (`start`), waits for them all and adds up what
/// they measured (each counts what it sent: answered or failed).
async fn gather(
    start: Arc<Barrier>,
    tasks: Vec<tokio::task::JoinHandle<TaskResult>>,
) -> anyhow::Result<LoadResult> {
    let connections = tasks.len();
    start.wait().await;
    let started = Instant::now();
    let mut results = Vec::with_capacity(connections);
    for task in tasks {
        results.push(task.await.context("a read task panicked")?);
    }
    let wall = started.elapsed();
    let sent = results
        .iter()
        .map(|r| r.latencies.len() as u64 + r.transport_errors)
        .sum::<u64>();
    Ok(LoadResult::merge(
        connections,
        usize::try_from(sent).unwrap_or(usize::MAX),
        results,
        wall,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_cover_the_range() {
        let mut seen = std::collections::HashSet::new();
        for n in 0..10_000 {
            let i = pick(3, n, 1000);
            assert!(i < 1000);
            seen.insert(i);
        }
        assert!(seen.len() > 990, "{} of 1000", seen.len());
    }
}
