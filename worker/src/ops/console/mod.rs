//! The operator's console: server-rendered HTML pages on the worker's ops listener
//! (`WORKER_ADDR`) under `/console`, enabled only when `CONSOLE_USERS` is set (else every
//! `/console…` path answers 404 like any unknown path).
//!
//! - **Login** (`GET|POST /console/login`): a console user's name and key (see [`auth`]) open a
//!   server-side session held in memory for 8 hours; its random token is the cookie
//!   `clerk_sync_console` (`HttpOnly; SameSite=Strict; Path=/console`). The cookie has no
//!   `Secure` attribute because the ops listener speaks plain HTTP: put the console behind a
//!   TLS-terminating proxy (or an SSH tunnel) anywhere but on localhost.
//! - **CSRF**: every POST form carries the session's CSRF token in a hidden field; a POST
//!   without it, or with another, answers 403.
//! - **Headers**: every console response has a strict `Content-Security-Policy` (no scripts at
//!   all, styles only from `/console/style.css`, forms only to this origin, no framing),
//!   `X-Frame-Options: DENY`, `Cache-Control: no-store` and `Referrer-Policy: no-referrer`.
//! - **Roles**: viewers read every page; operators also replay and drop dead letters and reveal
//!   masked personal fields. Viewers see no action forms, and their POSTs to action URLs answer
//!   403. Every action and reveal is written to `console_audit` ([`pages::audit`]).
//! - **Dead letters** are listed and acted on through [`crate::dlq`], the same code as
//!   `worker dlq`; one console operation on the dead-letter queue runs at a time in a worker
//!   (a listing holds the messages it reads until it is done).

pub mod auth;
pub mod html;
pub mod mask;
pub mod pages;
pub mod previews;

use broker::{BrokerConfig, Topology};
use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use store::pool::Pool;
use telemetry::{SharedRegistry, ops::FullResponse};

use super::trace_url::TraceUrlTemplate;
use auth::{ConsoleUsers, Session, Sessions};
use html::{Form, escape, page};

/// The session cookie's name.
pub const COOKIE: &str = "clerk_sync_console";

/// The largest POST body read.
const BODY_LIMIT: usize = 64 * 1024;

/// The `Content-Security-Policy` of every console response.
pub const CSP: &str = "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'";

/// Everything the console needs.
pub struct Console {
    users: ConsoleUsers,
    sessions: Sessions,
    db: Pool,
    broker: BrokerConfig,
    topology: Topology,
    registry: SharedRegistry,
    /// What "replay all matching" previews selected, until confirmed.
    previews: previews::Previews,
    /// One operation on the dead-letter queue at a time (see the module docs).
    dlq_lock: tokio::sync::Mutex<()>,
    /// How far behind this worker is.
    progress: crate::metrics::Progress,
    /// Samples of this worker's applied / retried / dead-lettered counts, newest last, over the
    /// last [`RATE_HISTORY`] ([`Console::sample_rates`]).
    samples: std::sync::Mutex<std::collections::VecDeque<Sample>>,
    /// `TRACE_URL_TEMPLATE`: links a dead letter's trace id to the tracing UI.
    trace_url: Option<TraceUrlTemplate>,
}

/// This worker's event counts at one instant.
#[derive(Clone, Copy, Debug)]
pub struct Sample {
    pub at: std::time::Instant,
    /// Applied, retried, dead-lettered.
    pub counts: [f64; 3],
}

/// How often the counts are sampled, and how long samples are kept.
pub const SAMPLE_EVERY: std::time::Duration = std::time::Duration::from_secs(10);
pub const RATE_HISTORY: std::time::Duration = std::time::Duration::from_secs(16 * 60);

/// What a page handler returns: the HTML of a page, a redirect, or an error page.
pub enum Outcome {
    Html(StatusCode, String),
    Redirect(String),
}

impl Console {
    pub fn new(
        users: ConsoleUsers,
        db: Pool,
        broker: BrokerConfig,
        topology: Topology,
        registry: SharedRegistry,
        progress: crate::metrics::Progress,
        trace_url: Option<TraceUrlTemplate>,
    ) -> Self {
        Self {
            users,
            sessions: Sessions::default(),
            db,
            broker,
            topology,
            registry,
            previews: previews::Previews::default(),
            dlq_lock: tokio::sync::Mutex::new(()),
            progress,
            samples: std::sync::Mutex::default(),
            trace_url,
        }
    }

    /// Samples this worker's event counts every [`SAMPLE_EVERY`] until `stop`, for the
    /// overview's rates over the last minutes.
    pub async fn sample_rates(self: std::sync::Arc<Self>, mut stop: crate::shutdown::Shutdown) {
        let mut tick = tokio::time::interval(SAMPLE_EVERY);
        loop {
            tokio::select! {
                () = stop.recv() => return,
                _ = tick.tick() => self.sample(),
            }
        }
    }

    /// Records the counts now, forgetting samples older than [`RATE_HISTORY`].
    pub fn sample(&self) {
        let (counts, _) = pages::overview::metric_counts(self);
        let sample = Sample {
            at: std::time::Instant::now(),
            counts: [counts[0].1, counts[1].1, counts[2].1],
        };
        if let Ok(mut samples) = self.samples.lock() {
            samples.push_back(sample);
            while samples
                .front()
                .is_some_and(|s| sample.at.duration_since(s.at) > RATE_HISTORY)
            {
                samples.pop_front();
            }
        }
    }

    /// Events a minute (applied, retried, dead-lettered) over the last `window`, from the
    /// oldest sample inside it to the newest; `None` until two samples span some time.
    pub fn rates(&self, window: std::time::Duration) -> Option<[f64; 3]> {
        let samples = self.samples.lock().ok()?;
        rates_over(&samples, window)
    }

    /// Answers a request whose path is `/console` or below it.
    pub async fn handle(&self, request: Request<hyper::body::Incoming>) -> FullResponse {
        let (parts, body) = request.into_parts();
        let path = parts.uri.path().to_owned();
        let query = Form::parse(parts.uri.query().unwrap_or(""));
        let token = session_cookie(&parts.headers);
        let session = token.as_deref().and_then(|t| self.sessions.get(t));
        let mut response = if parts.method == Method::POST {
            let form = match Limited::new(body, BODY_LIMIT).collect().await {
                Ok(collected) => Form::parse(&String::from_utf8_lossy(&collected.to_bytes())),
                Err(_) => {
                    return secure(html_response(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        page("Too large", None, "<p>The form is too large.</p>"),
                    ));
                }
            };
            self.post(&path, session, token.as_deref(), &form).await
        } else if parts.method == Method::GET || parts.method == Method::HEAD {
            drop(body);
            self.get(&path, session, &query).await
        } else {
            html_response(
                StatusCode::METHOD_NOT_ALLOWED,
                page("Method not allowed", None, ""),
            )
        };
        secure_in_place(&mut response);
        response
    }

    async fn get(&self, path: &str, session: Option<Session>, query: &Form) -> FullResponse {
        match path {
            "/console/style.css" => {
                let mut response =
                    Response::new(Full::new(Bytes::from_static(html::STYLE.as_bytes())));
                response.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/css; charset=utf-8"),
                );
                return response;
            }
            "/console/login" => {
                return html_response(StatusCode::OK, pages::login::login_form(None));
            }
            _ => {}
        }
        let Some(session) = session else {
            return redirect("/console/login");
        };
        let outcome = match path {
            "/console" | "/console/" => pages::overview::overview(self, &session).await,
            "/console/dead-letters" => {
                pages::dead_letters::dead_letters(self, &session, query).await
            }
            "/console/dead-letter" => {
                pages::dead_letter::dead_letter(self, &session, query, false).await
            }
            "/console/events" => pages::events::events(self, &session, query).await,
            "/console/audit" => pages::audit::audit_log(self, &session).await,
            "/console/connections" => pages::connections::connections(self, &session).await,
            _ => Outcome::Html(
                StatusCode::NOT_FOUND,
                page("Not found", Some(&session), "<p>No such page.</p>"),
            ),
        };
        outcome.into_response()
    }

    async fn post(
        &self,
        path: &str,
        session: Option<Session>,
        token: Option<&str>,
        form: &Form,
    ) -> FullResponse {
        if path == "/console/login" {
            return self.login(form);
        }
        let Some(session) = session else {
            return forbidden(None, "You are not logged in (or your session expired).");
        };
        if !form
            .get("csrf")
            .is_some_and(|t| auth::same_token(t, &session.csrf))
        {
            tracing::warn!(user = %session.user, path, "console POST without a valid CSRF token");
            return forbidden(
                Some(&session),
                "The form's CSRF token is missing or wrong: reload the page and try again.",
            );
        }
        if path == "/console/logout" {
            if let Some(token) = token {
                self.sessions.remove(token);
            }
            let mut response = redirect("/console/login");
            response.headers_mut().insert(
                header::SET_COOKIE,
                HeaderValue::from_static(
                    "clerk_sync_console=; HttpOnly; SameSite=Strict; Path=/console; Max-Age=0",
                ),
            );
            return response;
        }
        let action = match path {
            "/console/dead-letter/reveal" => pages::audit::Act::Reveal,
            "/console/dead-letter/replay" => pages::audit::Act::ReplayOne,
            "/console/dead-letter/drop" => pages::audit::Act::DropOne,
            "/console/dead-letters/replay" => pages::audit::Act::ReplayMatching,
            _ => {
                return Outcome::Html(
                    StatusCode::NOT_FOUND,
                    page("Not found", Some(&session), "<p>No such action.</p>"),
                )
                .into_response();
            }
        };
        if !session.role.may_act() {
            tracing::warn!(user = %session.user, path, "console action refused to a viewer");
            return forbidden(Some(&session), "Viewers cannot replay, drop or reveal.");
        }
        pages::actions::act(self, &session, action, form)
            .await
            .into_response()
    }

    fn login(&self, form: &Form) -> FullResponse {
        let name = form.get("name").unwrap_or("");
        let key = form.get("key").unwrap_or("");
        match self.users.check(name, key) {
            Some((user, role)) => {
                tracing::info!(user = %user, role = role.as_str(), "console login");
                let token = self.sessions.create(user, role);
                let mut response = redirect("/console");
                if let Ok(cookie) = HeaderValue::from_str(&format!(
                    "{COOKIE}={token}; HttpOnly; SameSite=Strict; Path=/console; Max-Age={}",
                    auth::SESSION_LIFETIME.as_secs()
                )) {
                    response.headers_mut().insert(header::SET_COOKIE, cookie);
                }
                response
            }
            None => {
                // A name that is no user's is not logged as typed: it may be a key pasted
                // into the wrong field, or a forged log line.
                if self.users.knows(name) {
                    tracing::warn!(user = %name, "console login refused: wrong key");
                } else {
                    tracing::warn!(
                        name_chars = name.chars().count(),
                        "console login refused: unknown name (not logged)"
                    );
                }
                html_response(
                    StatusCode::UNAUTHORIZED,
                    pages::login::login_form(Some("Unknown name or wrong key.")),
                )
            }
        }
    }
}

/// Events a minute between the oldest sample within `window` of the newest and the newest.
fn rates_over(
    samples: &std::collections::VecDeque<Sample>,
    window: std::time::Duration,
) -> Option<[f64; 3]> {
    let newest = samples.back()?;
    let oldest = samples
        .iter()
        .find(|s| newest.at.duration_since(s.at) <= window)?;
    let minutes = newest.at.duration_since(oldest.at).as_secs_f64() / 60.0;
    if minutes <= 0.0 {
        return None;
    }
    let mut rates = [0.0; 3];
    for (i, rate) in rates.iter_mut().enumerate() {
        *rate = (newest.counts[i] - oldest.counts[i]).max(0.0) / minutes;
    }
    Some(rates)
}

impl Outcome {
    fn into_response(self) -> FullResponse {
        match self {
            Self::Html(status, body) => html_response(status, body),
            Self::Redirect(location) => redirect(&location),
        }
    }
}

/// The session token from the `Cookie` header.
fn session_cookie(headers: &http::HeaderMap) -> Option<String> {
    telemetry::ops::cookie(headers, COOKIE)
}

fn html_response(status: StatusCode, body: String) -> FullResponse {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    response
}

fn redirect(location: &str) -> FullResponse {
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = StatusCode::SEE_OTHER;
    if let Ok(location) = HeaderValue::from_str(location) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    response
}

fn forbidden(session: Option<&Session>, why: &str) -> FullResponse {
    html_response(
        StatusCode::FORBIDDEN,
        page(
            "Forbidden",
            session,
            &format!("<p class=\"error\">{}</p>", escape(why)),
        ),
    )
}

fn secure(mut response: FullResponse) -> FullResponse {
    secure_in_place(&mut response);
    response
}

/// The security headers of every console response.
fn secure_in_place(response: &mut FullResponse) {
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
}

#[cfg(test)]
mod rate_tests {
    use std::{
        collections::VecDeque,
        time::{Duration, Instant},
    };

    use super::{Sample, rates_over};

    #[test]
    fn rates_are_per_minute_over_the_samples_inside_the_window() {
        let start = Instant::now();
        let at = |secs: u64, applied: f64| Sample {
            at: start + Duration::from_secs(secs),
            counts: [applied, 2.0, 0.0],
        };
        let mut samples = VecDeque::new();
        assert_eq!(rates_over(&samples, Duration::from_secs(60)), None);
        samples.push_back(at(0, 0.0));
        assert_eq!(
            rates_over(&samples, Duration::from_secs(60)),
            None,
            "one sample"
        );
        samples.push_back(at(240, 400.0));
        samples.push_back(at(300, 460.0));
        // The last minute: 60 more applied in 60 s; retried unchanged.
        assert_eq!(
            rates_over(&samples, Duration::from_secs(60)),
            Some([60.0, 0.0, 0.0])
        );
        // The last five minutes: 460 in 5 minutes.
        assert_eq!(
            rates_over(&samples, Duration::from_secs(300)),
            Some([92.0, 0.0, 0.0])
        );
        // A window longer than the history uses what there is.
        assert_eq!(
            rates_over(&samples, Duration::from_secs(900)),
            Some([92.0, 0.0, 0.0])
        );
    }
}
