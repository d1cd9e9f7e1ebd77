//! A local stand-in for Clerk's Backend API (the one fake the tests may use: Clerk cannot be
//! reached from here). Serves OAuth access tokens and the user list, and can be told to fail.

use std::{
    collections::{HashMap, VecDeque},
    convert::Infallible,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
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

#[derive(Default)]
struct State {
    /// (clerk user id, `oauth_google`) -> token objects.
    tokens: HashMap<(String, String), Vec<Value>>,
    /// Statuses to answer before serving normally again.
    failures: VecDeque<u16>,
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
}

/// A running fake; stops when dropped.
pub struct FakeClerk {
    url: String,
    state: Arc<Mutex<State>>,
    requests: Arc<AtomicUsize>,
    /// (requests being answered now, the most at once so far).
    in_flight: Arc<(AtomicUsize, AtomicUsize)>,
    task: tokio::task::JoinHandle<()>,
}

impl FakeClerk {
    /// Starts on a free port.
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let state = Arc::new(Mutex::new(State::default()));
        let requests = Arc::new(AtomicUsize::new(0));
        let in_flight = Arc::new((AtomicUsize::new(0), AtomicUsize::new(0)));
        let task = {
            let state = state.clone();
            let requests = requests.clone();
            let in_flight = in_flight.clone();
            tokio::spawn(async move {
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        continue;
                    };
                    let state = state.clone();
                    let requests = requests.clone();
                    let in_flight = in_flight.clone();
                    tokio::spawn(async move {
                        let service = service_fn(move |request: Request<Incoming>| {
                            requests.fetch_add(1, Ordering::SeqCst);
                            let now = in_flight.0.fetch_add(1, Ordering::SeqCst) + 1;
                            in_flight.1.fetch_max(now, Ordering::SeqCst);
                            let response = answer(&state, &request);
                            let delay = state.lock().unwrap().delay;
                            let in_flight = in_flight.clone();
                            async move {
                                tokio::time::sleep(delay).await;
                                in_flight.0.fetch_sub(1, Ordering::SeqCst);
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
            task,
        }
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
        list.push(json!({
            "object": "oauth_access_token", "external_account_id": external_account_id,
            "provider_user_id": provider_user_id, "token": token, "provider": provider,
            "expires_at": expires_at_ms, "scopes": ["openid", "email"], "label": null,
            "public_metadata": {}
        }));
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

    /// Holds every answer back this long (a slow Clerk; zero heals it).
    pub fn set_delay(&self, delay: std::time::Duration) {
        self.state.lock().unwrap().delay = delay;
    }

    /// Sets the users served by `GET /v1/users` (and one by one by `GET /v1/users/{id}`).
    pub fn set_users(&self, users: Vec<Value>) {
        self.state.lock().unwrap().users = users;
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
            let tokens = state
                .tokens
                .get(&((*user).to_owned(), (*provider).to_owned()))
                .cloned()
                .unwrap_or_default();
            json_response(StatusCode::OK, &Value::Array(tokens))
        }
        ["v1", "users", "count"] => json_response(
            StatusCode::OK,
            &json!({"object": "total_count", "total_count": state.users.len()}),
        ),
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
            json_response(
                StatusCode::OK,
                &Value::Array(page(&state.users, limit, offset)),
            )
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
            let all = state
                .memberships
                .get(*organization)
                .cloned()
                .unwrap_or_default();
            json_response(
                StatusCode::OK,
                &json!({"data": page(&all, limit, offset), "total_count": all.len()}),
            )
        }
        _ => clerk_error(StatusCode::NOT_FOUND, "resource_not_found"),
    }
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
