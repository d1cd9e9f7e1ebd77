//! The health of a calendar connection: whether the backend can use it (`connected`), only the
//! user can fix it (`needs_reconnect`, with a [`Reason`]), or nobody could tell lately
//! (`unavailable`: Clerk down, rate-limited or not configured). Google and Microsoft end grants
//! without telling anyone; the first sign is Clerk refusing the token, so every token call says
//! what it learnt through [`of_clerk_error`] and [`of_token`], and a webhook's account through
//! [`of_account`]. Decisions only: the rows are written by [`crate::connections`].

use clerk_api::{ClerkError, OAuthToken, Provider};

use crate::accounts::{CalendarAccount, Verification, is_calendar_scope};

/// `status` of a connection the backend can use.
pub const CONNECTED: &str = "connected";
/// `status` of a connection only the user can fix (by reconnecting the account in Clerk).
pub const NEEDS_RECONNECT: &str = "needs_reconnect";
/// `status` when nobody could tell lately (Clerk down, 429, timeout, or not configured); a token
/// stored before stays usable while it is fresh.
pub const UNAVAILABLE: &str = "unavailable";

/// Why a connection needs the user, or why it could not be checked: `status_reason`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    /// The provider refused to refresh the token (a revoked consent, Google's `invalid_grant`,
    /// a grant unused for months, an admin policy): Clerk's `oauth_token_retrieval_error`, or
    /// no token at all for the account.
    GrantRevoked,
    /// The provider gave Clerk no refresh token, so an expired token cannot be renewed.
    MissingRefreshToken,
    /// The account (or the token) lacks a calendar scope.
    MissingScopes,
    /// The account's verification expired or failed in Clerk.
    AccountUnverified,
    /// The instance turned the provider off in Clerk.
    ProviderDisabled,
    /// Clerk could not be asked (down, 429, timeout) or is not configured: `unavailable`.
    ClerkUnavailable,
}

impl Reason {
    /// The stable code stored and served.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::GrantRevoked => "grant_revoked",
            Self::MissingRefreshToken => "missing_refresh_token",
            Self::MissingScopes => "missing_scopes",
            Self::AccountUnverified => "account_unverified",
            Self::ProviderDisabled => "provider_disabled",
            Self::ClerkUnavailable => "clerk_unavailable",
        }
    }

    /// Every reason, for summaries and metrics.
    pub const ALL: [Reason; 6] = [
        Self::GrantRevoked,
        Self::MissingRefreshToken,
        Self::MissingScopes,
        Self::AccountUnverified,
        Self::ProviderDisabled,
        Self::ClerkUnavailable,
    ];

    /// Reads a stored code.
    pub fn parse(code: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == code)
    }
}

/// What one look at a connection found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Connected,
    NeedsReconnect(Reason),
    /// Could not tell: Clerk's trouble, not the user's. Never turns a connection into
    /// `needs_reconnect`.
    Unavailable,
}

impl Verdict {
    /// The `status` it stores.
    pub fn status(self) -> &'static str {
        match self {
            Self::Connected => CONNECTED,
            Self::NeedsReconnect(_) => NEEDS_RECONNECT,
            Self::Unavailable => UNAVAILABLE,
        }
    }

    /// The `status_reason` it stores (none for a connected one).
    pub fn reason(self) -> Option<Reason> {
        match self {
            Self::Connected => None,
            Self::NeedsReconnect(reason) => Some(reason),
            Self::Unavailable => Some(Reason::ClerkUnavailable),
        }
    }

    /// The metric label of a check's outcome.
    pub fn outcome(self) -> &'static str {
        self.status()
    }
}

/// What a failed token call says about the connection. Clerk's own trouble (429, 5xx,
/// timeouts, network, a secret key being fixed) is [`Verdict::Unavailable`]; its error codes
/// about the grant name what the user must do.
pub fn of_clerk_error(error: &ClerkError) -> Verdict {
    if error.is_transient() {
        return Verdict::Unavailable;
    }
    let reason = match error.code() {
        Some("oauth_token_retrieval_error" | "oauth_missing_access_token") => Reason::GrantRevoked,
        Some("oauth_missing_refresh_token" | "external_account_missing_refresh_token") => {
            Reason::MissingRefreshToken
        }
        Some("oauth_token_provider_not_enabled") => Reason::ProviderDisabled,
        // Any other `oauth_…` refusal is about the grant; anything else is not the user's to fix.
        Some(code) if code.starts_with("oauth_") => Reason::GrantRevoked,
        _ => return Verdict::Unavailable,
    };
    Verdict::NeedsReconnect(reason)
}

/// What a successful token call says about one account: no token for it is a revoked grant; a
/// token whose scopes (or, when Clerk names none, the account's) lack a calendar scope cannot
/// book anything.
pub fn of_token(provider: Provider, account_scopes: &str, token: Option<&OAuthToken>) -> Verdict {
    let Some(token) = token else {
        return Verdict::NeedsReconnect(Reason::GrantRevoked);
    };
    let calendar = |scope: &str| is_calendar_scope(provider, scope);
    let calendar = if token.scopes.is_empty() {
        account_scopes.split_whitespace().any(calendar)
    } else {
        token.scopes.iter().map(String::as_str).any(calendar)
    };
    if calendar {
        Verdict::Connected
    } else {
        Verdict::NeedsReconnect(Reason::MissingScopes)
    }
}

/// What a webhook's account says before Clerk is asked: a lapsed verification needs the user.
pub fn of_account(account: &CalendarAccount) -> Option<Verdict> {
    (account.verification == Verification::Lapsed)
        .then_some(Verdict::NeedsReconnect(Reason::AccountUnverified))
}

/// The body's `google_calendar_status` / `microsoft_calendar_status` of a stored connection:
/// `connected`, `needs_reconnect`, or `not_connected` (no connection, or one never usable).
/// An `unavailable` one shows what was last known: connected while it still holds a token.
pub fn shown(status: Option<&str>, has_token: bool) -> &'static str {
    match status {
        Some(CONNECTED) => "connected",
        Some(NEEDS_RECONNECT) => "needs_reconnect",
        Some(UNAVAILABLE) if has_token => "connected",
        _ => "not_connected",
    }
}

/// The provider's name as the metric and the console show it.
pub fn provider_label(provider: Provider) -> &'static str {
    provider.as_str()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::accounts::Verification;
    use secrecy::SecretString;

    fn account(scopes: &str, verification: Verification) -> CalendarAccount {
        CalendarAccount {
            provider: Provider::Google,
            external_account_id: "eac_1".into(),
            provider_user_id: "100".into(),
            email: None,
            scopes: scopes.into(),
            created_at: None,
            verification,
        }
    }

    fn token(scopes: &[&str]) -> OAuthToken {
        OAuthToken {
            token: SecretString::from("ya29.x"),
            expires_at: None,
            external_account_id: Some("eac_1".into()),
            provider_user_id: Some("100".into()),
            scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
        }
    }

    #[test]
    fn clerk_s_error_codes_name_what_the_user_must_do_and_its_own_trouble_names_nothing() {
        let status = |status: u16, code: &str| ClerkError::Status {
            status,
            message: code.into(),
        };
        for (error, verdict) in [
            (
                status(400, "oauth_token_retrieval_error"),
                Verdict::NeedsReconnect(Reason::GrantRevoked),
            ),
            (
                status(422, "oauth_missing_refresh_token"),
                Verdict::NeedsReconnect(Reason::MissingRefreshToken),
            ),
            (
                status(422, "external_account_missing_refresh_token"),
                Verdict::NeedsReconnect(Reason::MissingRefreshToken),
            ),
            (
                status(422, "oauth_missing_access_token"),
                Verdict::NeedsReconnect(Reason::GrantRevoked),
            ),
            (
                status(404, "oauth_token_provider_not_enabled"),
                Verdict::NeedsReconnect(Reason::ProviderDisabled),
            ),
            (
                status(503, "oauth_token_retrieval_error"),
                Verdict::Unavailable,
            ),
            (status(401, "authentication_invalid"), Verdict::Unavailable),
            (status(400, "form_param_missing"), Verdict::Unavailable),
            (
                ClerkError::RateLimited { retry_after: None },
                Verdict::Unavailable,
            ),
            (ClerkError::Timeout, Verdict::Unavailable),
        ] {
            assert_eq!(of_clerk_error(&error), verdict, "{error}");
        }
    }

    #[test]
    fn a_token_without_a_calendar_scope_or_no_token_needs_the_user() {
        let calendar = "https://www.googleapis.com/auth/calendar.events";
        let verified = account(&format!("openid {calendar}"), Verification::Verified);
        let of = |token: Option<&OAuthToken>| of_token(Provider::Google, &verified.scopes, token);
        assert_eq!(of(Some(&token(&[calendar]))), Verdict::Connected);
        assert_eq!(
            of(Some(&token(&[]))),
            Verdict::Connected,
            "the account's scopes"
        );
        assert_eq!(
            of(Some(&token(&["openid", "email"]))),
            Verdict::NeedsReconnect(Reason::MissingScopes)
        );
        assert_eq!(of(None), Verdict::NeedsReconnect(Reason::GrantRevoked));
        assert_eq!(of_account(&verified), None);
        assert_eq!(
            of_account(&account(calendar, Verification::Lapsed)),
            Some(Verdict::NeedsReconnect(Reason::AccountUnverified))
        );
    }

    #[test]
    fn what_the_user_body_shows() {
        assert_eq!(shown(Some(CONNECTED), true), "connected");
        assert_eq!(shown(Some(NEEDS_RECONNECT), false), "needs_reconnect");
        assert_eq!(shown(Some(UNAVAILABLE), true), "connected");
        assert_eq!(shown(Some(UNAVAILABLE), false), "not_connected");
        assert_eq!(shown(None, false), "not_connected");
        for reason in Reason::ALL {
            assert_eq!(Reason::parse(reason.as_str()), Some(reason));
        }
    }
}
