//! Who may use the console: `CONSOLE_USERS` (`name:role:key`, comma separated), and the
//! server-side sessions a login opens.
//!
//! Keys are kept in `secrecy` types (their `Debug` shows nothing) and compared in constant time,
//! every user's key on every login, as the api does with `API_SERVICE_KEYS`. A session is 32
//! random bytes (hex) held only in this process's memory, for [`SESSION_LIFETIME`]; the map is
//! keyed by the SHA-256 of the token, so a lookup's timing says nothing about a valid token.
//! Each session has its own CSRF token, which every POST form carries.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use rand::RngCore;
use secrecy::{ExposeSecret, SecretSlice};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The shortest key accepted.
pub const MIN_KEY_LEN: usize = 32;

/// The placeholder `.env.example` ships; a copy left unedited must not open the console.
const PLACEHOLDER_KEY: &str = "replace_with_a_long_random_key";

/// How long a session lasts after login.
pub const SESSION_LIFETIME: Duration = Duration::from_secs(8 * 3600);

/// What a console user may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Reads every page; no actions, no reveal.
    Viewer,
    /// Also replays and drops dead letters and reveals personal fields (all audited).
    Operator,
}

impl Role {
    /// The role's name in `CONSOLE_USERS` and in the audit log.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Viewer => "viewer",
            Self::Operator => "operator",
        }
    }

    /// Whether this role may act (replay, drop, reveal).
    pub fn may_act(self) -> bool {
        self == Self::Operator
    }
}

#[derive(Debug)]
struct ConsoleUser {
    name: String,
    role: Role,
    key: SecretSlice<u8>,
}

/// The parsed `CONSOLE_USERS`. `Debug` shows names and roles, never keys.
#[derive(Debug)]
pub struct ConsoleUsers(Vec<ConsoleUser>);

impl ConsoleUsers {
    /// Parses `name:role:key, …` (blank entries dropped). The error names the entry by position
    /// and name and never contains a key.
    pub fn parse(value: &str) -> Result<Self, String> {
        let mut users: Vec<ConsoleUser> = Vec::new();
        for (i, entry) in value
            .split(',')
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .enumerate()
        {
            let position = i + 1;
            let mut parts = entry.splitn(3, ':');
            let (Some(name), Some(role), Some(key)) = (parts.next(), parts.next(), parts.next())
            else {
                return Err(format!("entry {position} is not name:role:key"));
            };
            let name = name.trim();
            if name.is_empty()
                || name.len() > 64
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._@-".contains(c))
            {
                return Err(format!(
                    "entry {position}: the name must be 1 to 64 letters, digits, '.', '_', '@' or '-'"
                ));
            }
            let role = match role.trim() {
                "viewer" => Role::Viewer,
                "operator" => Role::Operator,
                _ => {
                    return Err(format!(
                        "entry {position} ({name}): the role must be viewer or operator"
                    ));
                }
            };
            let key = key.trim();
            if key == PLACEHOLDER_KEY {
                return Err(format!(
                    "entry {position} ({name}): the key is the placeholder from .env.example; generate one with `openssl rand -base64 32`"
                ));
            }
            if key.chars().count() < MIN_KEY_LEN {
                return Err(format!(
                    "entry {position} ({name}): the key is shorter than {MIN_KEY_LEN} characters; generate one with `openssl rand -base64 32`"
                ));
            }
            if users.iter().any(|u| u.name == name) {
                return Err(format!("entry {position}: {name} is named twice"));
            }
            users.push(ConsoleUser {
                name: name.to_owned(),
                role,
                key: key.as_bytes().to_vec().into(),
            });
        }
        if users.is_empty() {
            return Err("is set but names no user".into());
        }
        Ok(Self(users))
    }

    /// Whether `name` is a configured user's name.
    pub fn knows(&self, name: &str) -> bool {
        self.0.iter().any(|user| user.name == name)
    }

    /// The role of `name` if `key` is theirs. Every user's name and key are compared, each in
    /// constant time, whoever matches.
    pub fn check(&self, name: &str, key: &str) -> Option<(String, Role)> {
        let mut found = None;
        for user in &self.0 {
            let name_eq = user.name.as_bytes().ct_eq(name.as_bytes());
            let key_eq = user.key.expose_secret().ct_eq(key.as_bytes());
            if bool::from(name_eq & key_eq) {
                found = Some((user.name.clone(), user.role));
            }
        }
        found
    }
}

/// A logged-in console user.
#[derive(Debug, Clone)]
pub struct Session {
    pub user: String,
    pub role: Role,
    /// The token every POST form of this session carries.
    pub csrf: String,
    expires: Instant,
}

/// The sessions of this worker process (a restart logs everyone out).
#[derive(Debug, Default)]
pub struct Sessions {
    map: Mutex<HashMap<String, Session>>,
}

impl Sessions {
    /// Opens a session; returns its token (the cookie's value). Expired sessions are dropped.
    pub fn create(&self, user: String, role: Role) -> String {
        let token = random_hex();
        let session = Session {
            user,
            role,
            csrf: random_hex(),
            expires: Instant::now() + SESSION_LIFETIME,
        };
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        map.retain(|_, s| s.expires > now);
        map.insert(digest(&token), session);
        token
    }

    /// The live session of `token`.
    pub fn get(&self, token: &str) -> Option<Session> {
        let map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        map.get(&digest(token))
            .filter(|s| s.expires > Instant::now())
            .cloned()
    }

    /// Ends the session of `token`.
    pub fn remove(&self, token: &str) {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        map.remove(&digest(token));
    }
}

/// 32 random bytes from the thread-local CSPRNG, as hex.
pub fn random_hex() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    hex(&bytes)
}

fn digest(token: &str) -> String {
    hex(&Sha256::digest(token.as_bytes()))
}

fn hex(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        out.push(char::from(HEX[usize::from(byte >> 4)]));
        out.push(char::from(HEX[usize::from(byte & 0x0f)]));
    }
    out
}

/// Whether two tokens are equal, in constant time.
pub fn same_token(a: &str, b: &str) -> bool {
    bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY_A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const KEY_B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

    #[test]
    fn users_parse_and_keys_are_checked_per_user() {
        let users = ConsoleUsers::parse(&format!("alice:operator:{KEY_A}, bob:viewer:{KEY_B},"))
            .expect("ok");
        assert_eq!(
            users.check("alice", KEY_A),
            Some(("alice".into(), Role::Operator))
        );
        assert_eq!(
            users.check("bob", KEY_B),
            Some(("bob".into(), Role::Viewer))
        );
        assert_eq!(users.check("bob", KEY_A), None, "alice's key is not bob's");
        assert_eq!(users.check("carol", KEY_A), None);
        assert!(!format!("{users:?}").contains(KEY_A));
    }

    #[test]
    fn short_placeholder_and_malformed_entries_are_refused_without_echoing_keys() {
        for (value, expected) in [
            ("alice:operator:short", "shorter than 32"),
            (
                "alice:operator:replace_with_a_long_random_key",
                ".env.example",
            ),
            (
                &format!("alice:admin:{KEY_A}") as &str,
                "viewer or operator",
            ),
            ("alice", "name:role:key"),
            (&format!("a:viewer:{KEY_A},a:viewer:{KEY_B}"), "twice"),
            (" , ", "names no user"),
        ] {
            let err = ConsoleUsers::parse(value).expect_err(value);
            assert!(err.contains(expected), "{value}: {err}");
            assert!(!err.contains(KEY_A) && !err.contains("short,"), "{err}");
        }
    }

    #[test]
    fn sessions_live_until_removed_and_have_their_own_csrf_token() {
        let sessions = Sessions::default();
        let token = sessions.create("alice".into(), Role::Operator);
        let session = sessions.get(&token).expect("live");
        assert_eq!(session.user, "alice");
        assert_eq!(session.csrf.len(), 64);
        assert_ne!(session.csrf, token);
        assert!(sessions.get("nope").is_none());
        sessions.remove(&token);
        assert!(sessions.get(&token).is_none());
    }
}
