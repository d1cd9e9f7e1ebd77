//! Clerk's Backend API as clerk-sync calls it: the client ([`client`]: users, organizations,
//! memberships, OAuth access tokens; the secret key never in `Debug`, logs or errors), the
//! calendar providers it names ([`Provider`]), and the paced caller every command that pages
//! Clerk goes through ([`paced`]: a rate, retries, `Retry-After`).

pub mod client;
pub mod paced;

pub use client::{ClerkClient, ClerkError, OAuthToken};

/// A calendar provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Provider {
    Google,
    Microsoft,
}

impl Provider {
    /// `google` or `microsoft`, as stored and served.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Google => "google",
            Self::Microsoft => "microsoft",
        }
    }

    /// Clerk's name of the OAuth provider (`oauth_google`, `oauth_microsoft`).
    pub fn clerk_name(&self) -> &'static str {
        match self {
            Self::Google => "oauth_google",
            Self::Microsoft => "oauth_microsoft",
        }
    }

    /// Parses `google` / `microsoft` (also Clerk's `oauth_…` names), case-insensitively.
    pub fn parse(value: &str) -> Option<Self> {
        match value.trim().to_ascii_lowercase().as_str() {
            "google" | "oauth_google" => Some(Self::Google),
            "microsoft" | "oauth_microsoft" => Some(Self::Microsoft),
            _ => None,
        }
    }

    /// Both providers.
    pub const ALL: [Provider; 2] = [Provider::Google, Provider::Microsoft];
}
