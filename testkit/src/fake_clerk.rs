//! A local stand-in for Clerk's Backend API (the one fake the tests may use: Clerk cannot be
//! reached from here). Serves OAuth access tokens and the user list, and can be told to fail.
//!
//! Opt-in, it enforces a rate limit modelled on Clerk's ([`RateLimit`]), and it can serve a
//! large generated population of users ([`FakeClerk::generate_users`]) without holding them in
//! memory.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    convert::Infallible,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::{body::Incoming, service::service_fn};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpListener;

/// The secret key the fake expects in `Authorization: Bearer`.
pub const SECRET_KEY: &str = "sk_test_fakeclerkSYNTHkey000000000000";

/// A limit of `requests` per `window` across every endpoint, as Clerk applies per instance.
///
/// The fake's windows are fixed and open on demand: a window opens at the first request after
/// the previous one closed and admits `requests` requests; past that, until it closes, every
/// request is answered `429` with Clerk's error body and `Retry-After:` the whole seconds until
/// it closes (rounded up, at least 1). Rejected requests do not count against the limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    pub requests: usize,
    pub window: Duration,
}

impl RateLimit {
    /// Clerk's documented limit of the Backend API in production: 1,000 requests per 10 s.
    pub const PRODUCTION: Self = Self {
        requests: 1000,
        window: Duration::from_secs(10),
    };

    /// The least time between the first and the last of `n` admitted requests under this limit:
    /// `n` requests need `ceil(n / requests)` windows, and each window opens one `window` after
    /// the previous one at the earliest.
    pub fn minimum_time(&self, n: usize) -> Duration {
        let windows = n.div_ceil(self.requests.max(1));
        self.window * u32::try_from(windows.saturating_sub(1)).unwrap_or(u32::MAX)
    }
}

/// The rate limit's state.
struct Limiter {
    limit: RateLimit,
    /// When the current window opened, and how many requests it admitted.
    window: Option<(Instant, usize)>,
}

impl Limiter {
    /// `None`: admitted. `Some(seconds)`: rejected, for `Retry-After`.
    fn admit(&mut self, now: Instant) -> Option<u64> {
        match &mut self.window {
            Some((opened, used)) if now < *opened + self.limit.window => {
                if *used < self.limit.requests {
                    *used += 1;
                    None
                } else {
                    let left = (*opened + self.limit.window) - now;
                    Some(left.as_secs_f64().ceil().max(1.0) as u64)
                }
            }
            _ => {
                self.window = Some((now, 1));
                None
            }
        }
    }
}

/// A generated population ([`FakeClerk::generate_users`]): how many users have which calendar
/// accounts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Population {
    pub users: usize,
    /// Users with a Google account with a calendar scope (and a token).
    pub google: usize,
    /// Users with a Microsoft account with a calendar scope (and a token).
    pub microsoft: usize,
    /// Users with both (counted in `google` and in `microsoft` too).
    pub both: usize,
}

impl Population {
    /// Calendar connections a sync of every user leaves (one per account).
    pub fn connections(&self) -> usize {
        self.google + self.microsoft
    }

    /// Token requests a sync of every user makes (one per user and provider).
    pub fn token_requests(&self) -> usize {
        self.google + self.microsoft
    }
}

/// The id of generated user `i`.
pub fn generated_user_id(i: usize) -> String {
    format!("user_2gen{i:07}")
}

/// Which calendar accounts generated user `i` has: `(google, microsoft)`. A fixed pseudo-random
/// mix, a CRM's: 20 % of users connect Google, 5 % Microsoft, independently (so about 1 % both).
fn generated_accounts(i: usize) -> (bool, bool) {
    // splitmix64: well spread, and the same on every run.
    let mut z = (i as u64).wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z % 100 < 20, (z >> 32) % 100 < 5)
}

/// Generated user `i`: a realistic user object (two email addresses, names, timestamps) with its
/// calendar accounts.
fn generated_user(i: usize) -> Value {
    const FIRST: [&str; 8] = [
        "Ada", "Grace", "Alan", "Edsger", "Barbara", "Ken", "Radia", "Linus",
    ];
    const LAST: [&str; 5] = ["Synth", "Sample", "Mock", "Fixture", "Stub"];
    let state = crate::events::UserState {
        id: generated_user_id(i),
        email: Some(format!("gen{i}@example.com")),
        first_name: Some(FIRST[i % FIRST.len()].to_owned()),
        last_name: Some(LAST[i % LAST.len()].to_owned()),
        updated_at: 1_735_689_600_000 + i as i64,
    };
    let mut user = crate::events::user_object(&state);
    let (google, microsoft) = generated_accounts(i);
    let mut accounts = Vec::new();
    if google {
        accounts.push(crate::events::google_calendar_account(
            &format!("1{i:020}"),
            &format!("eac_2gen{i:07}g"),
        ));
    }
    if microsoft {
        accounts.push(crate::events::microsoft_calendar_account(
            &format!("00000000-0000-0000-0000-{i:012}"),
            &format!("eac_2gen{i:07}m"),
        ));
    }
    user["external_accounts"] = Value::Array(accounts);
    user["last_sign_in_at"] = json!(1_735_775_000_000_i64 + i as i64);
    user
}

/// The index of a generated user id, if it is one of the first `count`.
fn generated_index(id: &str, count: usize) -> Option<usize> {
    id.strip_prefix("user_2gen")
        .and_then(|n| n.parse::<usize>().ok())
        .filter(|i| *i < count && generated_user_id(*i) == id)
}

/// An access token object as Clerk lists it.
fn token_object(
    provider: &str,
    token: &str,
    expires_at_ms: Option<i64>,
    provider_user_id: &str,
    external_account_id: &str,
) -> Value {
    json!({
        "object": "oauth_access_token", "external_account_id": external_account_id,
        "provider_user_id": provider_user_id, "token": token, "provider": provider,
        "expires_at": expires_at_ms, "scopes": default_scopes(provider), "label": null,
        "public_metadata": {}
    })
}

/// The scopes Clerk lists on a token of an account connected with calendar access.
fn default_scopes(provider: &str) -> Vec<&'static str> {
    match provider {
        "oauth_microsoft" => vec!["openid", "email", "offline_access", "Calendars.ReadWrite"],
        _ => vec![
            "openid",
            "email",
            "https://www.googleapis.com/auth/calendar.events",
        ],
    }
}

/// The token generated user `i` has for `provider`, if it has an account there (valid for an
/// hour from now: Clerk refreshes expired tokens when asked).
fn generated_tokens(i: usize, provider: &str) -> Vec<Value> {
    let (google, microsoft) = generated_accounts(i);
    let in_an_hour = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
        + 3_600_000;
    match provider {
        "oauth_google" if google => vec![token_object(
            provider,
            &format!("ya29.synthetic-google-{i}"),
            Some(in_an_hour),
            &format!("1{i:020}"),
            &format!("eac_2gen{i:07}g"),
        )],
        "oauth_microsoft" if microsoft => vec![token_object(
            provider,
            &format!("EwB.synthetic-microsoft-{i}"),
            Some(in_an_hour),
            &format!("00000000-0000-0000-0000-{i:012}"),
            &format!("eac_2gen{i:07}m"),
        )],
        _ => Vec::new(),
    }
}

#[derive(Default)]
struct State {
    /// (clerk user id, `oauth_google`) -> token objects.
    tokens: HashMap<(String, String), Vec<Value>>,
    /// Statuses to answer before serving normally again.
    failures: VecDeque<u16>,
    /// (clerk user id, provider) -> Clerk errors (status, code) its token requests answer
    /// before serving normally again.
    token_failures: HashMap<(String, String), VecDeque<(u16, String)>>,
    /// User objects served by `GET /v1/users`, in order.
    users: Vec<Value>,
    /// `GET /v1/users` at this offset or beyond answers 500.
    fail_users_from: Option<usize>,
    /// Offsets requested from `GET /v1/users`.
    offsets: Vec<usize>,
    /// How long every answer is held back (a slow Clerk).
    delay: std::time::Duration,
    /// Organization objects served by `GET /v1/organizations`, in order.
    organizations: Vec<Value>,
    /// Clerk organization id -> membership objects (`GET /v1/organizations/{id}/memberships`).
    memberships: HashMap<String, Vec<Value>>,
    /// Membership ids a listing by offset skips (as Clerk's offset pages do when a member
    /// before them leaves mid-listing); asked for by `user_id`, they are still served.
    hidden_from_listing: HashSet<String>,
    /// Users generated on demand instead of `users` (0: none).
    generated: usize,
    /// The rate limit, when on.
    limiter: Option<Limiter>,
    /// Requests answered `429` by the rate limit.
    rate_limited: usize,
}

/// A running fake; stops when dropped.
pub struct FakeClerk {
    url: String,
    state: Arc<Mutex<State>>,
    requests: Arc<AtomicUsize>,
    /// (requests being answered now, the most at once so far).
    in_flight: Arc<(AtomicUsize, AtomicUsize)>,
    /// Requests being answered now by path, the most at once for one path so far, and the
    /// requests by path so far.
    per_path: Arc<Mutex<PerPath>>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Default)]
struct PerPath {
    now: HashMap<String, usize>,
    most: usize,
    seen: HashMap<String, usize>,
    traceparents: Vec<(String, String)>,
}

impl FakeClerk {
    /// Starts on a free port.
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let state = Arc::new(Mutex::new(State::default()));
        let requests = Arc::new(AtomicUsize::new(0));
        let in_flight = Arc::new((AtomicUsize::new(0), AtomicUsize::new(0)));
        let per_path = Arc::new(Mutex::new(PerPath::default()));
        let task = {
            let state = state.clone();
            let requests = requests.clone();
            let in_flight = in_flight.clone();
            let per_path = per_path.clone();
            tokio::spawn(async move {
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        continue;
                    };
                    let state = state.clone();
                    let requests = requests.clone();
                    let in_flight = in_flight.clone();
                    let per_path = per_path.clone();
                    tokio::spawn(async move {
                        let service = service_fn(move |request: Request<Incoming>| {
                            requests.fetch_add(1, Ordering::SeqCst);
                            let now = in_flight.0.fetch_add(1, Ordering::SeqCst) + 1;
                            in_flight.1.fetch_max(now, Ordering::SeqCst);
                            let path = request.uri().path().to_owned();
                            {
                                let mut p = per_path.lock().unwrap();
                                let now = {
                                    let n = p.now.entry(path.clone()).or_default();
                                    *n += 1;
                                    *n
                                };
                                p.most = p.most.max(now);
                                *p.seen.entry(path.clone()).or_default() += 1;
                                if let Some(context) = request
                                    .headers()
                                    .get("traceparent")
                                    .and_then(|v| v.to_str().ok())
                                {
                                    p.traceparents.push((path.clone(), context.to_owned()));
                                }
                            }
                            let response = answer(&state, &request);
                            let delay = state.lock().unwrap().delay;
                            let in_flight = in_flight.clone();
                            let per_path = per_path.clone();
                            async move {
                                tokio::time::sleep(delay).await;
                                in_flight.0.fetch_sub(1, Ordering::SeqCst);
                                if let Some(n) = per_path.lock().unwrap().now.get_mut(&path) {
                                    *n -= 1;
                                }
                                Ok::<_, Infallible>(response)
                            }
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    });
                }
            })
        };
        Self {
            url,
            state,
            requests,
            in_flight,
            per_path,
            task,
        }
    }

    /// The `traceparent` headers of the requests that carried one, with their paths, in order.
    pub fn traceparents(&self) -> Vec<(String, String)> {
        self.per_path.lock().unwrap().traceparents.clone()
    }

    /// The base URL, for `CLERK_API_URL`.
    pub fn url(&self) -> String {
        self.url.clone()
    }

    /// Serves `token` as the access token of this user's account of `provider` (`oauth_google`
    /// or `oauth_microsoft`), replacing any token of the same account.
    pub fn set_token(
        &self,
        clerk_user_id: &str,
        provider: &str,
        token: &str,
        expires_at_ms: Option<i64>,
        provider_user_id: &str,
        external_account_id: &str,
    ) {
        let mut state = self.state.lock().unwrap();
        let list = state
            .tokens
            .entry((clerk_user_id.to_owned(), provider.to_owned()))
            .or_default();
        list.retain(|t| t["external_account_id"] != external_account_id);
        list.push(token_object(
            provider,
            token,
            expires_at_ms,
            provider_user_id,
            external_account_id,
        ));
    }

    /// Lists `scopes` on the tokens this user's accounts of `provider` are served with (as when
    /// the user connected without granting calendar access).
    pub fn set_token_scopes(&self, clerk_user_id: &str, provider: &str, scopes: &[&str]) {
        let mut state = self.state.lock().unwrap();
        if let Some(tokens) = state
            .tokens
            .get_mut(&(clerk_user_id.to_owned(), provider.to_owned()))
        {
            for token in tokens {
                token["scopes"] = json!(scopes);
            }
        }
    }

    /// Stops serving tokens for this user and provider.
    pub fn remove_tokens(&self, clerk_user_id: &str, provider: &str) {
        self.state
            .lock()
            .unwrap()
            .tokens
            .remove(&(clerk_user_id.to_owned(), provider.to_owned()));
    }

    /// Answers the next `times` requests with `status` (429 comes with `Retry-After: 1`).
    pub fn fail_next(&self, status: u16, times: usize) {
        let mut state = self.state.lock().unwrap();
        for _ in 0..times {
            state.failures.push_back(status);
        }
    }

    /// Answers this user's next `times` token requests for `provider` (`oauth_google`,
    /// `oauth_microsoft`) with Clerk's error body of `code` and `status` (429 comes with
    /// `Retry-After: 1`); other requests are served normally.
    pub fn fail_tokens(
        &self,
        clerk_user_id: &str,
        provider: &str,
        status: u16,
        code: &str,
        times: usize,
    ) {
        let mut state = self.state.lock().unwrap();
        let queue = state
            .token_failures
            .entry((clerk_user_id.to_owned(), provider.to_owned()))
            .or_default();
        for _ in 0..times {
            queue.push_back((status, code.to_owned()));
        }
    }

    /// Holds every answer back this long (a slow Clerk; zero heals it).
    pub fn set_delay(&self, delay: std::time::Duration) {
        self.state.lock().unwrap().delay = delay;
    }

    /// Sets the users served by `GET /v1/users` (and one by one by `GET /v1/users/{id}`).
    pub fn set_users(&self, users: Vec<Value>) {
        self.state.lock().unwrap().users = users;
    }

    /// Serves `count` generated users instead of those of [`Self::set_users`] (ids
    /// [`generated_user_id`]`(0..count)`, oldest first), each with its calendar accounts and
    /// their tokens: about 20 % Google, 5 % Microsoft (see [`Population`]). They are built when
    /// asked for, so 100,000 of them cost neither time nor memory up front.
    pub fn generate_users(&self, count: usize) -> Population {
        self.state.lock().unwrap().generated = count;
        let mut population = Population {
            users: count,
            google: 0,
            microsoft: 0,
            both: 0,
        };
        for i in 0..count {
            let (google, microsoft) = generated_accounts(i);
            population.google += usize::from(google);
            population.microsoft += usize::from(microsoft);
            population.both += usize::from(google && microsoft);
        }
        population
    }

    /// Turns the rate limit on (`Some`, with a fresh window) or off (`None`).
    pub fn set_rate_limit(&self, limit: Option<RateLimit>) {
        self.state.lock().unwrap().limiter = limit.map(|limit| Limiter {
            limit,
            window: None,
        });
    }

    /// Requests the rate limit answered `429` so far.
    pub fn rate_limited(&self) -> usize {
        self.state.lock().unwrap().rate_limited
    }

    /// Sets the organizations served by `GET /v1/organizations`.
    pub fn set_organizations(&self, organizations: Vec<Value>) {
        self.state.lock().unwrap().organizations = organizations;
    }

    /// Sets the memberships served by `GET /v1/organizations/{id}/memberships`.
    pub fn set_memberships(&self, clerk_organization_id: &str, memberships: Vec<Value>) {
        self.state
            .lock()
            .unwrap()
            .memberships
            .insert(clerk_organization_id.to_owned(), memberships);
    }

    /// Leaves this membership out of its organization's listing by offset, while a listing
    /// filtered by `user_id` still serves it: what Clerk's offset paging does to one member
    /// when another leaves while the list is read.
    pub fn hide_from_listing(&self, clerk_membership_id: &str) {
        self.state
            .lock()
            .unwrap()
            .hidden_from_listing
            .insert(clerk_membership_id.to_owned());
    }

    /// Makes `GET /v1/users` answer 500 from this offset on (`None` heals it).
    pub fn fail_users_from(&self, offset: Option<usize>) {
        self.state.lock().unwrap().fail_users_from = offset;
    }

    /// The offsets `GET /v1/users` was asked for, in order.
    pub fn user_offsets(&self) -> Vec<usize> {
        self.state.lock().unwrap().offsets.clone()
    }

    /// The most requests it was answering at the same time.
    pub fn max_in_flight(&self) -> usize {
        self.in_flight.1.load(Ordering::SeqCst)
    }

    /// The most requests for one path (e.g. one user's tokens of one provider) it was
    /// answering at the same time.
    pub fn max_in_flight_per_path(&self) -> usize {
        self.per_path.lock().unwrap().most
    }

    /// Token requests so far for this user and provider (`oauth_google`, `oauth_microsoft`).
    pub fn token_requests(&self, clerk_user_id: &str, provider: &str) -> usize {
        let path = format!("/v1/users/{clerk_user_id}/oauth_access_tokens/{provider}");
        self.per_path
            .lock()
            .unwrap()
            .seen
            .get(&path)
            .copied()
            .unwrap_or(0)
    }

    /// Requests received so far.
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

impl Drop for FakeClerk {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn json_response(status: StatusCode, body: &Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    response
}

fn clerk_error(status: StatusCode, code: &str) -> Response<Full<Bytes>> {
    json_response(
        status,
        &json!({"errors": [{"message": code, "long_message": code, "code": code}]}),
    )
}

fn answer(state: &Mutex<State>, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    let authorized = request
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        == Some(&format!("Bearer {SECRET_KEY}"));
    if !authorized {
        return clerk_error(StatusCode::UNAUTHORIZED, "authentication_invalid");
    }
    let mut state = state.lock().unwrap();
    if let Some(retry_after) = state
        .limiter
        .as_mut()
        .and_then(|limiter| limiter.admit(Instant::now()))
    {
        state.rate_limited += 1;
        let mut response = json_response(
            StatusCode::TOO_MANY_REQUESTS,
            &json!({"errors": [{
                "message": "Too many requests",
                "long_message": "Too many requests, please try again later.",
                "code": "too_many_requests"
            }]}),
        );
        response
            .headers_mut()
            .insert("retry-after", retry_after.to_string().parse().unwrap());
        return response;
    }
    if let Some(status) = state.failures.pop_front() {
        let mut response = clerk_error(
            StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            "injected_failure",
        );
        if status == 429 {
            response
                .headers_mut()
                .insert("retry-after", "1".parse().unwrap());
        }
        return response;
    }
    let path = request.uri().path().to_owned();
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    match segments.as_slice() {
        ["v1", "users", user, "oauth_access_tokens", provider] => {
            if let Some((status, code)) = state
                .token_failures
                .get_mut(&((*user).to_owned(), (*provider).to_owned()))
                .and_then(VecDeque::pop_front)
            {
                let mut response = clerk_error(
                    StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                    &code,
                );
                if status == 429 {
                    response
                        .headers_mut()
                        .insert("retry-after", "1".parse().unwrap());
                }
                return response;
            }
            let tokens = match state
                .tokens
                .get(&((*user).to_owned(), (*provider).to_owned()))
            {
                Some(tokens) => tokens.clone(),
                None => generated_index(user, state.generated)
                    .map(|i| generated_tokens(i, provider))
                    .unwrap_or_default(),
            };
            json_response(StatusCode::OK, &Value::Array(tokens))
        }
        ["v1", "users", "count"] => {
            let count = if state.generated > 0 {
                state.generated
            } else {
                state.users.len()
            };
            json_response(
                StatusCode::OK,
                &json!({"object": "total_count", "total_count": count}),
            )
        }
        ["v1", "users", user] if state.generated > 0 => {
            match generated_index(user, state.generated) {
                Some(i) => json_response(StatusCode::OK, &generated_user(i)),
                None => clerk_error(StatusCode::NOT_FOUND, "resource_not_found"),
            }
        }
        ["v1", "users", user] => match state.users.iter().find(|u| u["id"] == *user) {
            Some(found) => json_response(StatusCode::OK, found),
            None => clerk_error(StatusCode::NOT_FOUND, "resource_not_found"),
        },
        ["v1", "users"] => {
            let (limit, offset) = limit_offset(request);
            state.offsets.push(offset);
            if state.fail_users_from.is_some_and(|from| offset >= from) {
                return clerk_error(StatusCode::INTERNAL_SERVER_ERROR, "injected_failure");
            }
            let users = if state.generated > 0 {
                (offset..state.generated.min(offset.saturating_add(limit)))
                    .map(generated_user)
                    .collect()
            } else {
                page(&state.users, limit, offset)
            };
            json_response(StatusCode::OK, &Value::Array(users))
        }
        // Organizations and memberships come as `{data, total_count}`.
        ["v1", "organizations"] => {
            let (limit, offset) = limit_offset(request);
            let data = page(&state.organizations, limit, offset);
            json_response(
                StatusCode::OK,
                &json!({"data": data, "total_count": state.organizations.len()}),
            )
        }
        ["v1", "organizations", organization] => match state
            .organizations
            .iter()
            .find(|o| o["id"] == *organization)
        {
            Some(found) => json_response(StatusCode::OK, found),
            None => clerk_error(StatusCode::NOT_FOUND, "resource_not_found"),
        },
        ["v1", "organizations", organization, "memberships"] => {
            let (limit, offset) = limit_offset(request);
            let user = query_value(request, "user_id");
            let all: Vec<Value> = state
                .memberships
                .get(*organization)
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .filter(|m| match &user {
                    Some(user) => m["public_user_data"]["user_id"] == **user,
                    None => m["id"]
                        .as_str()
                        .is_none_or(|id| !state.hidden_from_listing.contains(id)),
                })
                .collect();
            json_response(
                StatusCode::OK,
                &json!({"data": page(&all, limit, offset), "total_count": all.len()}),
            )
        }
        _ => clerk_error(StatusCode::NOT_FOUND, "resource_not_found"),
    }
}

/// One query parameter of a request, if given.
fn query_value(request: &Request<Incoming>, name: &str) -> Option<String> {
    request
        .uri()
        .query()
        .unwrap_or_default()
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned())
}

/// `limit` (default 10, at most 500) and `offset` (default 0) of a list request.
fn limit_offset(request: &Request<Incoming>) -> (usize, usize) {
    let query: HashMap<String, String> = request
        .uri()
        .query()
        .unwrap_or_default()
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    let number = |name: &str, default: usize| {
        query
            .get(name)
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    (number("limit", 10).min(500), number("offset", 0))
}

fn page(items: &[Value], limit: usize, offset: usize) -> Vec<Value> {
    items.iter().skip(offset).take(limit).cloned().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limiter_admits_a_window_s_worth_then_says_when_it_frees() {
        let limit = RateLimit {
            requests: 3,
            window: Duration::from_secs(10),
        };
        let mut limiter = Limiter {
            limit,
            window: None,
        };
        let start = Instant::now();
        for _ in 0..3 {
            assert_eq!(limiter.admit(start), None);
        }
        assert_eq!(limiter.admit(start + Duration::from_millis(500)), Some(10));
        assert_eq!(limiter.admit(start + Duration::from_millis(9_500)), Some(1));
        // The next window opens at the first request after the last one closed.
        let later = start + Duration::from_millis(12_000);
        assert_eq!(limiter.admit(later), None);
        assert_eq!(limiter.admit(later), None);
        assert_eq!(limiter.admit(later), None);
        assert_eq!(limiter.admit(later + Duration::from_millis(2_000)), Some(8));
    }

    #[test]
    fn the_minimum_time_counts_the_windows_after_the_first() {
        let limit = RateLimit::PRODUCTION;
        assert_eq!(limit.minimum_time(0), Duration::ZERO);
        assert_eq!(limit.minimum_time(1000), Duration::ZERO);
        assert_eq!(limit.minimum_time(1001), Duration::from_secs(10));
        assert_eq!(limit.minimum_time(26_002), Duration::from_secs(260));
    }

    #[test]
    fn a_generated_population_has_a_crm_s_calendar_mix() {
        let mut population = Population {
            users: 100_000,
            google: 0,
            microsoft: 0,
            both: 0,
        };
        for i in 0..100_000 {
            let (google, microsoft) = generated_accounts(i);
            population.google += usize::from(google);
            population.microsoft += usize::from(microsoft);
            population.both += usize::from(google && microsoft);
        }
        assert!(
            (19_000..21_000).contains(&population.google),
            "{population:?}"
        );
        assert!(
            (4_500..5_500).contains(&population.microsoft),
            "{population:?}"
        );
        assert!((700..1_300).contains(&population.both), "{population:?}");
        assert_eq!(generated_index(&generated_user_id(42), 100), Some(42));
        assert_eq!(generated_index(&generated_user_id(142), 100), None);
        let user = generated_user(7);
        assert_eq!(user["id"], generated_user_id(7));
    }
}
