//! Who is calling: a trusted backend holding one of `API_SERVICE_KEYS`, or a signed-in user
//! presenting a Clerk session JWT (verified without a network call, with `CLERK_JWT_KEY`).
//!
//! The token comes from `Authorization: Bearer …`, or for session JWTs from the `__session`
//! cookie Clerk sets. Session JWTs are accepted only when signed with RS256 by the configured
//! key; `exp`, `nbf` and `iat` are checked with Clerk's 5 s clock skew, and `azp` against
//! `CLERK_AUTHORIZED_PARTIES` when that is set.
//!
//! Only *session* tokens pass. Clerk signs JWT-template tokens (`getToken({ template })`, custom
//! claims, lifetimes up to years, handed to third parties such as databases) with the same
//! instance key, so the signature alone does not tell them apart. Clerk documents the default
//! session token (v2) as carrying `sub`, `sid` (the session id), `iss` (the instance's Frontend
//! API URL), `azp`, `exp`, `iat`, `nbf`, `v` and optional `sts`, `fva`, `o`, `pla`, `fea`, with a
//! lifetime of 60 seconds and no `aud` (clerk-docs, "Session tokens";
//! `../shared/reference/clerk-webhooks.md` §6 and §10). Template tokens carry no `sid` unless the
//! template copies one in, and usually set `aud`. Newer instances also mark the category in the
//! JOSE header (`cat`; clerk/javascript `packages/backend/src/tokens/jwtCategories.ts`: session
//! `cl_B7d4PD111AAA`, JWT template `cl_B7d4PD222AAA`). So a token is refused when its header
//! names another category, when it has no `sid`,
//! when it has an `aud`, when its `iss` is not `CLERK_ISSUER` (if set), or when it lives longer
//! than [`MAX_SESSION_LIFETIME_SECS`].

use http::{HeaderMap, header};
use jsonwebtoken::{Algorithm, DecodingKey, Validation, errors::ErrorKind};
use secrecy::{ExposeSecret, SecretSlice};
use serde::Deserialize;
use subtle::ConstantTimeEq;

/// Clerk's clock skew allowance for `exp`, `nbf` and `iat`.
const CLOCK_SKEW_SECS: i64 = 5;

/// The longest `exp - iat` a session token may have. Clerk's session tokens live 60 seconds and
/// are refreshed by the frontend SDK; the bound leaves room for that and refuses long-lived
/// template tokens, whose lifetime is set per template (up to years).
pub const MAX_SESSION_LIFETIME_SECS: i64 = 300;

/// The cookie Clerk's frontend SDKs keep the session JWT in.
const SESSION_COOKIE: &str = "__session";

/// What a service key may do (`API_SERVICE_KEYS` entries `read:<key>`, `tokens:<key>`, or a
/// bare `<key>` for everything).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scope {
    /// Read users and calendar connections (never tokens); no changes.
    Read,
    /// `Read`, plus the calendar access tokens (`…/token`).
    Tokens,
    /// Everything: `Tokens`, plus `PATCH …/calendar-status`. What an unscoped key has.
    Full,
}

impl Scope {
    /// The scope's name in `API_SERVICE_KEYS`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Tokens => "tokens",
            Self::Full => "full",
        }
    }
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// A trusted backend (one of `API_SERVICE_KEYS`): may read any user, within its scope.
    Service { scope: Scope },
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
            Self::Service { .. } => true,
            Self::User { clerk_user_id: own } => own == clerk_user_id,
        }
    }

    /// Whether this is a service key (of any scope).
    pub fn is_service(&self) -> bool {
        matches!(self, Self::Service { .. })
    }

    /// `Ok` for a service key with at least `needed`; else `Err(why)`, the reason for the 403.
    pub fn require_service(&self, needed: Scope, why: &'static str) -> Result<(), &'static str> {
        match self {
            Self::Service { scope } if *scope >= needed => Ok(()),
            Self::Service { .. } | Self::User { .. } => Err(why),
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
    #[error(
        "the token is not a Clerk session token (it has no `sid`, or it has an `aud`: a JWT-template token?); send the token of `getToken()` without a template"
    )]
    NotASessionToken,
    #[error("the session token was issued by another Clerk instance (`iss` is not CLERK_ISSUER)")]
    WrongIssuer,
    #[error("the token lives longer than a Clerk session token may (`exp - iat` over the bound)")]
    LifetimeTooLong,
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
    /// The session id: every session token has one.
    #[serde(default)]
    sid: Option<String>,
    /// Session tokens have none; any value (string or list) marks another kind of token.
    #[serde(default)]
    aud: Option<serde_json::Value>,
    #[serde(default)]
    iss: Option<String>,
}

/// Verifies Clerk session JWTs with the instance's public key (`DecodingKey`'s `Debug` hides
/// the key material).
#[derive(Debug)]
pub struct JwtVerifier {
    key: DecodingKey,
    validation: Validation,
    authorized_parties: Vec<String>,
    issuer: Option<String>,
    verified: VerifiedTokens,
}

/// Session tokens verified before, until they expire: a frontend sends the same token with every
/// request for the minute it lives, and an RS256 verification (pure-Rust RSA) costs far more
/// than the rest of a request. Keyed by the SHA-256 of the whole token, so only the very token
/// that passed finds its entry; holds the Clerk user id and `exp`, which is checked again on
/// every hit (every other check depends on the token alone). Failures are never kept. Bounded:
/// when full, expired entries are dropped, and if none has expired the whole map is (the next
/// requests verify again).
struct VerifiedTokens {
    map: std::sync::Mutex<std::collections::HashMap<[u8; 32], (String, i64)>>,
    capacity: usize,
}

/// Tokens kept at most: about 1 MiB, a minute of 10,000 signed-in users.
const VERIFIED_TOKENS: usize = 10_000;

impl std::fmt::Debug for VerifiedTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifiedTokens")
            .field("capacity", &self.capacity)
            .finish_non_exhaustive()
    }
}

impl VerifiedTokens {
    fn new(capacity: usize) -> Self {
        Self {
            map: std::sync::Mutex::new(std::collections::HashMap::new()),
            capacity,
        }
    }

    fn digest(token: &str) -> [u8; 32] {
        use sha2::Digest as _;
        sha2::Sha256::digest(token.as_bytes()).into()
    }

    /// The Clerk user id of `token` if it passed before and has not expired at `now`.
    fn get(&self, digest: &[u8; 32], now: i64) -> Option<String> {
        let map = self.map.lock().ok()?;
        let (sub, exp) = map.get(digest)?;
        (*exp > now - CLOCK_SKEW_SECS).then(|| sub.clone())
    }

    fn insert(&self, digest: [u8; 32], sub: &str, exp: i64, now: i64) {
        let Ok(mut map) = self.map.lock() else {
            return;
        };
        if map.len() >= self.capacity {
            map.retain(|_, (_, exp)| *exp > now - CLOCK_SKEW_SECS);
            if map.len() >= self.capacity {
                map.clear();
            }
        }
        map.insert(digest, (sub.to_owned(), exp));
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.map.lock().map(|m| m.len()).unwrap_or(0)
    }
}

impl JwtVerifier {
    /// Parses `CLERK_JWT_KEY` (a `BEGIN PUBLIC KEY` PEM; literal `\n` sequences, as env files
    /// often hold them, are turned into line breaks). With `authorized_parties` non-empty, a
    /// token's `azp` must be present and one of them; with `issuer` set, its `iss` must be it.
    pub fn from_pem(
        pem: &str,
        authorized_parties: Vec<String>,
        issuer: Option<String>,
    ) -> Result<Self, JwtKeyError> {
        let pem = pem.trim().trim_matches('"').replace("\\n", "\n");
        let key = DecodingKey::from_rsa_pem(pem.as_bytes()).map_err(|_| JwtKeyError)?;
        // RS256 only: the algorithm list is what stops `none`, HS256-with-the-public-key and
        // friends. Time claims are checked below with Clerk's exact rules, too.
        let mut validation = Validation::new(Algorithm::RS256);
        validation.leeway = CLOCK_SKEW_SECS.unsigned_abs();
        validation.validate_exp = true;
        validation.validate_nbf = true;
        // Clerk's session tokens have no `aud`; a token with one is refused below.
        validation.validate_aud = false;
        validation.set_required_spec_claims(&["exp", "sub", "iat"]);
        Ok(Self {
            key,
            validation,
            authorized_parties: authorized_parties
                .into_iter()
                .map(|p| p.trim_end_matches('/').to_owned())
                .collect(),
            issuer: issuer.map(|i| i.trim().trim_end_matches('/').to_owned()),
            verified: VerifiedTokens::new(VERIFIED_TOKENS),
        })
    }

    /// The Clerk user id of a valid session token (from [`VerifiedTokens`] when this token
    /// passed before and has not expired).
    pub fn verify(&self, token: &str) -> Result<String, AuthFailure> {
        let now = chrono::Utc::now().timestamp();
        let digest = VerifiedTokens::digest(token);
        if let Some(sub) = self.verified.get(&digest, now) {
            return Ok(sub);
        }
        let (sub, exp) = self.verify_now(token, now)?;
        self.verified.insert(digest, &sub, exp, now);
        Ok(sub)
    }

    /// Every check of a session token: its Clerk user id and `exp`.
    fn verify_now(&self, token: &str, now: i64) -> Result<(String, i64), AuthFailure> {
        if !session_category(token) {
            return Err(AuthFailure::NotASessionToken);
        }
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
        // Clerk's SDK: expired when exp <= now - skew; not valid when nbf or iat > now + skew.
        if claims.exp <= now - CLOCK_SKEW_SECS {
            return Err(AuthFailure::Expired);
        }
        if claims.nbf.is_some_and(|nbf| nbf > now + CLOCK_SKEW_SECS)
            || claims.iat.is_some_and(|iat| iat > now + CLOCK_SKEW_SECS)
        {
            return Err(AuthFailure::NotYetValid);
        }
        // A session token, not a JWT-template token signed with the same key.
        if claims.aud.is_some() || claims.sid.as_deref().is_none_or(str::is_empty) {
            return Err(AuthFailure::NotASessionToken);
        }
        let iat = claims.iat.ok_or(AuthFailure::Malformed)?;
        if claims.exp.saturating_sub(iat) > MAX_SESSION_LIFETIME_SECS {
            return Err(AuthFailure::LifetimeTooLong);
        }
        if let Some(issuer) = &self.issuer {
            let iss = claims.iss.as_deref().map(|i| i.trim_end_matches('/'));
            if iss != Some(issuer.as_str()) {
                return Err(AuthFailure::WrongIssuer);
            }
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
        Ok((claims.sub, claims.exp))
    }
}

/// The shortest service key accepted: 32 characters (`openssl rand -base64 32` gives 44).
pub const MIN_SERVICE_KEY_LEN: usize = 32;

/// The placeholder `.env.example` ships; a copy left unedited must not open the API.
const PLACEHOLDER_KEY: &str = "replace_with_a_long_random_key";

/// An `API_SERVICE_KEYS` entry that cannot be used. Never carries the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ServiceKeyError {
    #[error(
        "API_SERVICE_KEYS: key {position} is shorter than {MIN_SERVICE_KEY_LEN} characters; generate one with `openssl rand -base64 32`"
    )]
    TooShort { position: usize },
    #[error(
        "API_SERVICE_KEYS: key {position} is the placeholder from .env.example; generate one with `openssl rand -base64 32`"
    )]
    Placeholder { position: usize },
    #[error(
        "API_SERVICE_KEYS: key {position} has an unknown scope {scope:?}; use `read:<key>`, `tokens:<key>` or a bare key (full rights)"
    )]
    UnknownScope { position: usize, scope: String },
}

/// The keys of trusted backends, each with its scope; `Debug` shows the scopes, never a key.
#[derive(Debug)]
pub struct ServiceKeys(Vec<ServiceKey>);

/// One `API_SERVICE_KEYS` entry.
#[derive(Debug)]
struct ServiceKey {
    key: SecretSlice<u8>,
    scope: Scope,
}

impl ServiceKeys {
    /// Parses `API_SERVICE_KEYS` entries (blank ones dropped): `read:<key>`, `tokens:<key>` or a
    /// bare `<key>` (full rights). Keys shorter than [`MIN_SERVICE_KEY_LEN`] and the
    /// `.env.example` placeholder are refused.
    pub fn parse(entries: Vec<String>) -> Result<Self, ServiceKeyError> {
        let mut keys = Vec::new();
        for (i, entry) in entries
            .iter()
            .map(|e| e.trim())
            .filter(|e| !e.is_empty())
            .enumerate()
        {
            let position = i + 1;
            let (scope, key) = match entry.split_once(':') {
                Some(("read", key)) => (Scope::Read, key),
                Some(("tokens", key)) => (Scope::Tokens, key),
                Some((scope, _)) if scope.chars().all(|c| c.is_ascii_alphabetic()) => {
                    return Err(ServiceKeyError::UnknownScope {
                        position,
                        scope: scope.chars().take(20).collect(),
                    });
                }
                _ => (Scope::Full, entry),
            };
            if key == PLACEHOLDER_KEY {
                return Err(ServiceKeyError::Placeholder { position });
            }
            if key.chars().count() < MIN_SERVICE_KEY_LEN {
                return Err(ServiceKeyError::TooShort { position });
            }
            keys.push(ServiceKey {
                key: key.as_bytes().to_vec().into(),
                scope,
            });
        }
        Ok(Self(keys))
    }

    /// Whether no key is configured.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The scope of `token` if it is one of the keys. Every key is compared, each in constant
    /// time, whatever matches.
    pub fn scope_of(&self, token: &str) -> Option<Scope> {
        let token = token.as_bytes();
        let mut found = None;
        for ServiceKey { key, scope } in &self.0 {
            if bool::from(key.expose_secret().ct_eq(token)) {
                found = Some(*scope);
            }
        }
        found
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
            if let Some(scope) = self.service_keys.scope_of(token) {
                return Ok(Caller::Service { scope });
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

/// Clerk's JOSE header `cat` (token category) of session tokens. Newer instances mark every
/// token they sign with its category (session, JWT template, machine); older tokens have none.
const SESSION_CATEGORY: &str = "cl_B7d4PD111AAA";

/// Whether the token's header does not mark it as another category than a session token (a
/// header without `cat` passes: the claims decide).
fn session_category(token: &str) -> bool {
    #[derive(Deserialize)]
    struct CategoryHeader {
        #[serde(default)]
        cat: Option<String>,
    }
    use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
    let Some(header) = token.split('.').next() else {
        return true;
    };
    // A header that cannot be read is refused by the full verification.
    let Ok(bytes) = URL_SAFE_NO_PAD.decode(header.trim_end_matches('=')) else {
        return true;
    };
    serde_json::from_slice::<CategoryHeader>(&bytes)
        .ok()
        .and_then(|h| h.cat)
        .is_none_or(|cat| cat == SESSION_CATEGORY)
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
    telemetry::ops::cookie(headers, SESSION_COOKIE)
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    const ALPHA: &str = "alpha-0123456789abcdef0123456789abcdef";
    const BETA: &str = "beta-0123456789abcdef0123456789abcdef";

    #[test]
    fn verified_tokens_answer_until_exp_and_stay_bounded() {
        let cache = VerifiedTokens::new(3);
        let now = 1_000;
        let a = VerifiedTokens::digest("token-a");
        cache.insert(a, "user_a", now + 60, now);
        assert_eq!(cache.get(&a, now).as_deref(), Some("user_a"));
        // Clerk's skew: still valid until `exp` is 5 s past.
        assert_eq!(cache.get(&a, now + 64).as_deref(), Some("user_a"));
        assert_eq!(cache.get(&a, now + 65), None);
        // Another token (even one differing in a byte) is not found.
        assert_eq!(cache.get(&VerifiedTokens::digest("token-b"), now), None);
        // Full: expired entries go first, then everything.
        cache.insert(
            VerifiedTokens::digest("old"),
            "user_old",
            now - 10,
            now - 70,
        );
        cache.insert(VerifiedTokens::digest("c"), "user_c", now + 60, now);
        assert_eq!(cache.len(), 3);
        cache.insert(VerifiedTokens::digest("d"), "user_d", now + 60, now);
        assert_eq!(cache.len(), 3, "the expired entry made room");
        cache.insert(VerifiedTokens::digest("e"), "user_e", now + 60, now);
        assert_eq!(cache.len(), 1, "nothing expired: cleared");
        assert!(!format!("{cache:?}").contains("user_"));
    }

    #[test]
    fn service_keys_match_exactly_with_their_scope() {
        let keys = ServiceKeys::parse(vec![ALPHA.into(), "".into(), format!("read:{BETA}")])
            .expect("keys");
        assert_eq!(keys.scope_of(ALPHA), Some(Scope::Full));
        assert_eq!(keys.scope_of(BETA), Some(Scope::Read));
        assert_eq!(keys.scope_of(&format!("read:{BETA}")), None);
        assert_eq!(keys.scope_of(&ALPHA[..ALPHA.len() - 1]), None);
        assert_eq!(keys.scope_of(&format!("{ALPHA}a")), None);
        assert_eq!(keys.scope_of(""), None);
        let shown = format!("{keys:?}");
        assert!(
            !shown.contains("0123456789abcdef"),
            "a key in Debug: {shown}"
        );
        assert_eq!(shown.matches("REDACTED").count(), 2, "{shown}");
        let tokens = ServiceKeys::parse(vec![format!("tokens:{ALPHA}")]).expect("keys");
        assert_eq!(tokens.scope_of(ALPHA), Some(Scope::Tokens));
    }

    #[test]
    fn short_placeholder_and_unknown_scope_keys_are_refused_without_echoing_them() {
        let short =
            ServiceKeys::parse(vec![ALPHA.into(), "hunter2-short".into()]).expect_err("short");
        assert_eq!(short, ServiceKeyError::TooShort { position: 2 });
        assert!(!short.to_string().contains("hunter2"), "{short}");
        let scoped_short = ServiceKeys::parse(vec!["read:hunter2".into()]).expect_err("short");
        assert_eq!(scoped_short, ServiceKeyError::TooShort { position: 1 });
        let placeholder =
            ServiceKeys::parse(vec![PLACEHOLDER_KEY.into()]).expect_err("placeholder");
        assert!(
            placeholder.to_string().contains(".env.example"),
            "{placeholder}"
        );
        let unknown = ServiceKeys::parse(vec![format!("admin:{ALPHA}")]).expect_err("scope");
        assert!(unknown.to_string().contains("\"admin\""), "{unknown}");
        assert!(!unknown.to_string().contains(ALPHA), "{unknown}");
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
        let auth = Authenticator::new(None, ServiceKeys::parse(vec![ALPHA.into()]).expect("key"));
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            HeaderValue::from_str(&format!("__session={ALPHA}")).expect("header"),
        );
        assert_eq!(auth.authenticate(&headers), Err(AuthFailure::Unrecognised));
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(&format!("Bearer {ALPHA}")).expect("header"),
        );
        assert_eq!(
            auth.authenticate(&headers),
            Ok(Caller::Service { scope: Scope::Full })
        );
        assert_eq!(
            auth.authenticate(&HeaderMap::new()),
            Err(AuthFailure::Missing)
        );
    }
}
