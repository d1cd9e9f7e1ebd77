//! Types that hold secrets and keep them out of `Debug`, so that structs holding them can
//! `#[derive(Debug)]` safely. Secret strings and byte keys use the `secrecy` crate's
//! `SecretString` / `SecretSlice`; these two cover what `secrecy` cannot hold (values that are
//! not `Zeroize`, such as a ready cipher or verifier) and URLs that should stay recognisable.

/// A value whose `Debug` prints `[redacted]`: ready-made ciphers, verifiers, keys.
#[derive(Clone, Copy, PartialEq, Eq, Default)]
pub struct Redacted<T>(T);

impl<T> Redacted<T> {
    /// Wraps `value`.
    pub const fn new(value: T) -> Self {
        Self(value)
    }

    /// The value itself; never log it.
    pub fn expose(&self) -> &T {
        &self.0
    }
}

impl<T> From<T> for Redacted<T> {
    fn from(value: T) -> Self {
        Self(value)
    }
}

impl<T> std::fmt::Debug for Redacted<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[redacted]")
    }
}

/// A URL that may hold a password (`DATABASE_URL`, `AMQP_URL`): `Debug` and `Display` show it
/// with the password replaced by `***` ([`redact_url`]).
#[derive(Clone, PartialEq, Eq)]
pub struct SecretUrl(String);

impl SecretUrl {
    /// Wraps `url`.
    pub fn new(url: impl Into<String>) -> Self {
        Self(url.into())
    }

    /// The URL itself, to connect with; never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&redact_url(&self.0))
    }
}

impl std::fmt::Display for SecretUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&redact_url(&self.0))
    }
}

/// The URL with any password replaced by `***`, for logs, errors and `Debug`: the one in the
/// user info, and a `password=` query parameter (libpq and sqlx accept both).
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "[unparseable URL]".into();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let tail = redact_query_password(tail);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split(':').next().unwrap_or_default();
            let hidden = if userinfo.contains(':') { ":***" } else { "" };
            format!("{scheme}://{user}{hidden}@{host}{tail}")
        }
        None => format!("{scheme}://{authority}{tail}"),
    }
}

/// `tail` (path, query, fragment) with the value of any `password` query parameter hidden.
fn redact_query_password(tail: &str) -> String {
    let Some((path, query)) = tail.split_once('?') else {
        return tail.to_owned();
    };
    let (query, fragment) = match query.split_once('#') {
        Some((query, fragment)) => (query, Some(fragment)),
        None => (query, None),
    };
    let query: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((key, _)) if key.eq_ignore_ascii_case("password") => format!("{key}=***"),
            _ => pair.to_owned(),
        })
        .collect();
    let fragment = fragment.map(|f| format!("#{f}")).unwrap_or_default();
    format!("{path}?{}{fragment}", query.join("&"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_never_show_the_secret() {
        #[derive(Debug)]
        #[allow(dead_code)]
        struct Holder {
            key: Redacted<Vec<u8>>,
            url: SecretUrl,
        }
        let holder = Holder {
            key: Redacted::new(b"k3y-material".to_vec()),
            url: SecretUrl::new("amqp://guest:s3cret@rabbit:5672/%2f"),
        };
        let shown = format!("{holder:?} {}", holder.url);
        assert!(
            !shown.contains("s3cret") && !shown.contains("k3y"),
            "{shown}"
        );
        assert!(shown.contains("[redacted]"), "{shown}");
        assert!(
            shown.contains("amqp://guest:***@rabbit:5672/%2f"),
            "{shown}"
        );
        assert_eq!(holder.key.expose(), b"k3y-material");
        assert_eq!(holder.url.expose(), "amqp://guest:s3cret@rabbit:5672/%2f");
    }
}
