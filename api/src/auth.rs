//! Who is calling: a trusted backend holding one of `API_SERVICE_KEYS`, or a signed-in user
//! presenting a Clerk session JWT (verified without a network call, with `CLERK_JWT_KEY`).
//!
//! The token comes from `Authorization: Bearer …`, or for session JWTs from the `__session`
//! cookie Clerk sets. Session JWTs are accepted only when signed with RS256 by the configured
//! key; `exp`, `nbf` and `iat` are checked with Clerk's 5 s clock skew, and `azp` against
//! `CLERK_AUTHORIZED_PARTIES` when that is set. Clerk's tokens carry no `aud`.

use std::sync::Arc;

use axum::extract::FromRequestParts;
use http::{HeaderMap, header, request::Parts};
use jsonwebtoken::{Algorithm, DecodingKey, Validation, errors::ErrorKind};
use serde::Deserialize;
use subtle::{Choice, ConstantTimeEq};

use crate::{error::ApiError, state::AppState};

/// Clerk's clock skew allowance for `exp`, `nbf` and `iat`.
const CLOCK_SKEW_SECS: i64 = 5;

/// The cookie Clerk's frontend SDKs keep the session JWT in.
const SESSION_COOKIE: &str = "__session";

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// A trusted backend (one of `API_SERVICE_KEYS`): may read any user.
    Service,
    /// A signed-in user: reaches only their own user and connections.
    User {
        /// The session JWT's `sub`: the Clerk user id.
        clerk_user_id: String,
    },
}

impl Caller {
    /// Whether this caller may see the user with this Clerk id.
    pub fn may_see(&self, clerk_user_id: &str) -> bool {
        match self {
            Self::Service => true,
            Self::User { clerk_user_id: own } => own == clerk_user_id,
        }
    }
}

/// Why a request is not authenticated. Never carries the token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthFailure {
    #[error("no credentials: send `Authorization: Bearer <token>`")]
    Missing,
    #[error("the Authorization header is not `Bearer <token>`")]
    NotBearer,
    #[error("the token is neither a service key nor a session JWT this API accepts")]
    Unrecognised,
    #[error("the session token has expired")]
    Expired,
    #[error("the session token is not valid yet")]
    NotYetValid,
    #[error("the session token's signature does not verify")]
    BadSignature,
    #[error("the session token is not signed with RS256")]
    WrongAlgorithm,
    #[error("the session token was issued for an origin that is not authorized")]
    UnauthorizedParty,
    #[error("the session is pending (sign-in not complete)")]
    PendingSession,
    #[error("the session token is malformed")]
    Malformed,
}

/// `CLERK_JWT_KEY` cannot be used. Never carries the key.
#[derive(Debug, thiserror::Error)]
#[error(
    "CLERK_JWT_KEY is not an RSA public key in PEM form (-----BEGIN PUBLIC KEY-----…); copy the JWT public key from the Clerk dashboard (API keys), literal \\n sequences are fine"
)]
pub struct JwtKeyError;

/// The claims of a Clerk session token this API reads.
#[derive(Deserialize)]
struct SessionClaims {
    sub: String,
    exp: i64,
    #[serde(default)]
    nbf: Option<i64>,
    #[serde(default)]
    iat: Option<i64>,
    #[serde(default)]
    azp: Option<String>,
    #[serde(default)]
    sts: Option<String>,
}

/// Verifies Clerk session JWTs with the instance's public key. `Debug` hides the key.
pub struct JwtVerifier {
    key: DecodingKey,
    validation: Validation,
    authorized_parties: Vec<String>,
}

impl std::fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtVerifier")
            .field("key", &"[redacted]")
            .field("authorized_parties", &self.authorized_parties)
            .finish()
    }
}

impl JwtVerifier {
    /// Parses `CLERK_JWT_KEY` (a `BEGIN PUBLIC KEY` PEM; literal `\n` sequences, as env files
    /// often hold them, are turned into line breaks). With `authorized_parties` non-empty, a
    /// token's `azp` must be present and one of them.
    pub fn from_pem(pem: &str, authorized_parties: Vec<String>) -> Result<Self, JwtKeyError> {
        let pem = pem.trim().trim_matches('"').replace("\\n", "\n");
        let key = DecodingKey::from_rsa_pem(pem.as_bytes()).map_err(|_| JwtKeyError)?;
        // RS256 only: the algorithm list is what stops `none`, HS256-with-the-public-key and
        // friends. Time claims are checked below with Clerk's exact rules, too.
        let mut validation = Validation::new(Algorithm::RS256);
        validation.leeway = CLOCK_SKEW_SECS.unsigned_abs();
        validation.validate_exp = true;
        validation.validate_nbf = true;
        // Clerk's session tokens have no `aud`.
        validation.validate_aud = false;
        validation.set_required_spec_claims(&["exp", "sub"]);
        Ok(Self {
            key,
            validation,
            authorized_parties: authorized_parties
                .into_iter()
                .map(|p| p.trim_end_matches('/').to_owned())
                .collect(),
        })
    }

    /// The Clerk user id of a valid session token.
    pub fn verify(&self, token: &str) -> Result<String, AuthFailure> {
        let data = jsonwebtoken::decode::<SessionClaims>(token, &self.key, &self.validation)
            .map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature => AuthFailure::Expired,
                ErrorKind::ImmatureSignature => AuthFailure::NotYetValid,
                ErrorKind::InvalidSignature => AuthFailure::BadSignature,
                ErrorKind::InvalidAlgorithm
                | ErrorKind::InvalidAlgorithmName
                | ErrorKind::UnsupportedAlgorithm => AuthFailure::WrongAlgorithm,
                _ => AuthFailure::Malformed,
            })?;
        let claims = data.claims;
        let now = chrono::Utc::now().timestamp();
        // Clerk's SDK: expired when exp <= now - skew; not valid when nbf or iat > now + skew.
        if claims.exp <= now - CLOCK_SKEW_SECS {
            return Err(AuthFailure::Expired);
        }
        if claims.nbf.is_some_and(|nbf| nbf > now + CLOCK_SKEW_SECS)
            || claims.iat.is_some_and(|iat| iat > now + CLOCK_SKEW_SECS)
        {
            return Err(AuthFailure::NotYetValid);
        }
        if !self.authorized_parties.is_empty() {
            let listed = claims.azp.as_deref().is_some_and(|azp| {
                let azp = azp.trim_end_matches('/');
                self.authorized_parties.iter().any(|p| p == azp)
            });
            if !listed {
                return Err(AuthFailure::UnauthorizedParty);
            }
        }
        // Clerk treats pending sessions (sign-in tasks left) as signed out by default.
        if claims.sts.as_deref() == Some("pending") {
            return Err(AuthFailure::PendingSession);
        }
        if claims.sub.is_empty() {
            return Err(AuthFailure::Malformed);
        }
        Ok(claims.sub)
    }
}

/// The keys of trusted backends. `Debug` shows only how many there are.
pub struct ServiceKeys(Vec<Vec<u8>>);

impl std::fmt::Debug for ServiceKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ServiceKeys({} configured)", self.0.len())
    }
}

impl ServiceKeys {
    /// The given keys (blank ones dropped).
    pub fn new(keys: Vec<String>) -> Self {
        Self(
            keys.into_iter()
                .filter(|k| !k.trim().is_empty())
                .map(String::into_bytes)
                .collect(),
        )
    }

    /// Whether no key is configured.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether `token` is one of the keys. Every key is compared, each in constant time.
    pub fn matches(&self, token: &str) -> bool {
        let token = token.as_bytes();
        let mut found = Choice::from(0);
        for key in &self.0 {
            found |= key.as_slice().ct_eq(token);
        }
        found.into()
    }
}

/// Decides who a request comes from.
#[derive(Debug)]
pub struct Authenticator {
    jwt: Option<JwtVerifier>,
    service_keys: ServiceKeys,
}

impl Authenticator {
    /// Accepts session JWTs when `jwt` is set, and the service keys.
    pub fn new(jwt: Option<JwtVerifier>, service_keys: ServiceKeys) -> Self {
        Self { jwt, service_keys }
    }

    /// The caller of a request with these headers.
    pub fn authenticate(&self, headers: &HeaderMap) -> Result<Caller, AuthFailure> {
        if let Some(value) = headers.get(header::AUTHORIZATION) {
            let token = bearer(value.as_bytes()).ok_or(AuthFailure::NotBearer)?;
            if self.service_keys.matches(token) {
                return Ok(Caller::Service);
            }
            return self.session(token);
        }
        match session_cookie(headers) {
            Some(token) => self.session(&token),
            None => Err(AuthFailure::Missing),
        }
    }

    fn session(&self, token: &str) -> Result<Caller, AuthFailure> {
        let jwt = self.jwt.as_ref().ok_or(AuthFailure::Unrecognised)?;
        // Something that is not even shaped like a JWT was most likely a wrong service key.
        if token.split('.').count() != 3 {
            return Err(AuthFailure::Unrecognised);
        }
        jwt.verify(token)
            .map(|clerk_user_id| Caller::User { clerk_user_id })
    }
}

/// The token of `Bearer <token>` (scheme case-insensitive).
fn bearer(value: &[u8]) -> Option<&str> {
    let value = std::str::from_utf8(value).ok()?.trim();
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// The value of the `__session` cookie, if sent.
fn session_cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == SESSION_COOKIE)
        .map(|(_, value)| value.trim().trim_matches('"').to_owned())
        .filter(|v| !v.is_empty())
}

impl FromRequestParts<Arc<AppState>> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, Self::Rejection> {
        state.auth.authenticate(&parts.headers).map_err(|failure| {
            tracing::info!(reason = %failure, "request not authenticated");
            ApiError::Unauthenticated(failure)
        })
    }
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    #[test]
    fn service_keys_match_exactly() {
        let keys = ServiceKeys::new(vec!["alpha".into(), "".into(), "beta-key".into()]);
        assert!(keys.matches("alpha"));
        assert!(keys.matches("beta-key"));
        assert!(!keys.matches("alph"));
        assert!(!keys.matches("alphaa"));
        assert!(!keys.matches(""));
        assert_eq!(format!("{keys:?}"), "ServiceKeys(2 configured)");
    }

    #[test]
    fn bearer_tokens_and_session_cookies_are_found() {
        assert_eq!(bearer(b"Bearer abc"), Some("abc"));
        assert_eq!(bearer(b"bearer  abc "), Some("abc"));
        assert_eq!(bearer(b"Basic abc"), None);
        assert_eq!(bearer(b"Bearer "), None);
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; __session=tok.en.x; b=2"),
        );
        assert_eq!(session_cookie(&headers).as_deref(), Some("tok.en.x"));
    }

    #[test]
    fn a_service_key_in_the_cookie_is_not_a_service_caller() {
        let auth = Authenticator::new(None, ServiceKeys::new(vec!["svc".into()]));
        let mut headers = HeaderMap::new();
        headers.insert(header::COOKIE, HeaderValue::from_static("__session=svc"));
        assert_eq!(auth.authenticate(&headers), Err(AuthFailure::Unrecognised));
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer svc"),
        );
        assert_eq!(auth.authenticate(&headers), Ok(Caller::Service));
        assert_eq!(
            auth.authenticate(&HeaderMap::new()),
            Err(AuthFailure::Missing)
        );
    }
}
