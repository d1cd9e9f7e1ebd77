//! Which external accounts are calendar connections.
//!
//! A connection is an account of provider Google or Microsoft whose approved scopes include a
//! calendar scope and that is `verified`, or was and lapsed: verification `expired` or
//! `failed`, or a `verification.error` (Clerk's account page says "requires action"), which the
//! user fixes by reconnecting ([`Verification::Lapsed`]). Both Clerk's current shape (`object:
//! "external_account"`, `provider: "oauth_google"`, `provider_user_id`) and the legacy shape
//! (`object: "google_account"`, `google_id`, no `provider`) occur in real payloads.

use serde_json::Value;

use crate::Provider;

/// An external account that is a calendar connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CalendarAccount {
    pub provider: Provider,
    /// Clerk's `eac_…` id when given, else the account's `id`.
    pub external_account_id: String,
    pub provider_user_id: String,
    pub email: Option<String>,
    /// Approved scopes, space separated, as Clerk sends them.
    pub scopes: String,
    /// When the account was added in Clerk (ms since the epoch), if Clerk says.
    pub created_at: Option<i64>,
    /// Whether Clerk still holds the account as verified.
    pub verification: Verification,
}

/// Where an account's verification stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verification {
    Verified,
    /// `expired`, `failed`, or an error code on the verification: only the user can fix it.
    Lapsed,
}

fn text(value: &Value, key: &str) -> Option<String> {
    value
        .get(key)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}

/// Whether `scope` grants calendar access for `provider`.
pub fn is_calendar_scope(provider: Provider, scope: &str) -> bool {
    match provider {
        Provider::Google => scope
            .strip_prefix("https://www.googleapis.com/auth/")
            .is_some_and(|s| s == "calendar" || s.starts_with("calendar.")),
        Provider::Microsoft => {
            let lower = scope.to_ascii_lowercase();
            let bare = lower
                .strip_prefix("https://graph.microsoft.com/")
                .unwrap_or(&lower);
            bare.starts_with("calendars.")
        }
    }
}

/// Reads one external account; `None` if it is not a Google or Microsoft account, or one
/// whose verification never completed.
fn read(account: &Value) -> Option<CalendarAccount> {
    let legacy_google = account.get("object").and_then(Value::as_str) == Some("google_account")
        || (account.get("provider").is_none() && account.get("google_id").is_some());
    let provider = if legacy_google {
        Provider::Google
    } else {
        Provider::parse(account.get("provider")?.as_str()?)?
    };
    let provider_user_id = if legacy_google {
        text(account, "google_id").or_else(|| text(account, "provider_user_id"))?
    } else {
        text(account, "provider_user_id")?
    };
    let external_account_id =
        text(account, "external_account_id").or_else(|| text(account, "id"))?;
    let verification = verification(account, legacy_google)?;
    Some(CalendarAccount {
        provider,
        external_account_id,
        provider_user_id,
        email: text(account, "email_address"),
        scopes: text(account, "approved_scopes").unwrap_or_default(),
        created_at: account.get("created_at").and_then(Value::as_i64),
        verification,
    })
}

/// An account's verification; `None` for one that never completed (`unverified`,
/// `transferable`, none): not a connection yet.
fn verification(account: &Value, legacy_google: bool) -> Option<Verification> {
    let verification = account.get("verification");
    let status = verification
        .and_then(|v| v.get("status"))
        .and_then(Value::as_str);
    let error = verification
        .and_then(|v| v.get("error"))
        .is_some_and(|e| !e.is_null());
    match status {
        _ if error => Some(Verification::Lapsed),
        Some("expired" | "failed") => Some(Verification::Lapsed),
        Some("verified") => Some(Verification::Verified),
        // Legacy accounts predate the verification object; Clerk only stored them once verified.
        None if legacy_google => Some(Verification::Verified),
        _ => None,
    }
}

/// The calendar connections among a user's external accounts.
pub fn calendar_accounts(external_accounts: &[Value]) -> Vec<CalendarAccount> {
    let mut out: Vec<CalendarAccount> = Vec::new();
    for account in external_accounts.iter().filter_map(read) {
        let calendar = account
            .scopes
            .split_whitespace()
            .any(|s| is_calendar_scope(account.provider, s));
        let duplicate = out.iter().any(|a| {
            a.provider == account.provider && a.provider_user_id == account.provider_user_id
        });
        if calendar && !duplicate {
            out.push(account);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn verified_google_and_microsoft_accounts_with_calendar_scopes_are_connections() {
        let accounts = vec![
            json!({"object":"external_account","id":"idn_g","external_account_id":"eac_g","provider":"oauth_google",
                   "provider_user_id":"100","approved_scopes":"email https://www.googleapis.com/auth/calendar.events openid",
                   "email_address":"ada@example.com","verification":{"status":"verified"}}),
            json!({"object":"external_account","id":"idn_m","provider":"oauth_microsoft","provider_user_id":"m-1",
                   "approved_scopes":"https://graph.microsoft.com/Calendars.ReadWrite offline_access",
                   "verification":{"status":"verified"}}),
        ];
        let found = calendar_accounts(&accounts);
        assert_eq!(found.len(), 2);
        assert_eq!(found[0].provider, Provider::Google);
        assert_eq!(found[0].external_account_id, "eac_g");
        assert_eq!(found[1].provider, Provider::Microsoft);
        assert_eq!(found[1].external_account_id, "idn_m");
    }

    #[test]
    fn unverified_accounts_or_accounts_without_calendar_scope_are_not() {
        let accounts = vec![
            json!({"provider":"oauth_google","id":"a","provider_user_id":"1",
                   "approved_scopes":"https://www.googleapis.com/auth/calendar","verification":{"status":"unverified"}}),
            json!({"provider":"oauth_google","id":"b","provider_user_id":"2",
                   "approved_scopes":"email openid profile https://www.googleapis.com/auth/userinfo.email","verification":{"status":"verified"}}),
            json!({"provider":"oauth_github","id":"c","provider_user_id":"3",
                   "approved_scopes":"calendar","verification":{"status":"verified"}}),
        ];
        assert!(calendar_accounts(&accounts).is_empty());
    }

    #[test]
    fn lapsed_accounts_stay_connections_that_need_the_user() {
        let account = |verification: serde_json::Value| {
            json!({"object":"external_account","id":"idn_g","provider":"oauth_google","provider_user_id":"100",
                   "approved_scopes":"https://www.googleapis.com/auth/calendar","verification": verification})
        };
        for lapsed in [
            json!({"status":"expired"}),
            json!({"status":"failed"}),
            json!({"status":"verified","error":{"code":"external_account_missing_refresh_token"}}),
        ] {
            let found = calendar_accounts(&[account(lapsed.clone())]);
            assert_eq!(found.len(), 1, "{lapsed}");
            assert_eq!(found[0].verification, Verification::Lapsed, "{lapsed}");
        }
        let found = calendar_accounts(&[account(json!({"status":"verified","error":null}))]);
        assert_eq!(found[0].verification, Verification::Verified);
        assert!(calendar_accounts(&[account(json!({"status":"transferable"}))]).is_empty());
    }

    #[test]
    fn the_legacy_google_account_shape_is_read_as_google() {
        let accounts = vec![
            json!({"object":"google_account","id":"idn_old","google_id":"g-77",
            "approved_scopes":"https://www.googleapis.com/auth/calendar.readonly","email_address":"old@example.com",
            "given_name":"Ada","family_name":"Synth","picture":"x"}),
        ];
        let found = calendar_accounts(&accounts);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].provider, Provider::Google);
        assert_eq!(found[0].provider_user_id, "g-77");
    }

    #[test]
    fn microsoft_scopes_are_compared_case_insensitively_without_the_graph_prefix() {
        assert!(is_calendar_scope(Provider::Microsoft, "calendars.read"));
        assert!(is_calendar_scope(
            Provider::Microsoft,
            "https://graph.microsoft.com/Calendars.Read.Shared"
        ));
        assert!(!is_calendar_scope(Provider::Microsoft, "User.Read"));
        assert!(!is_calendar_scope(
            Provider::Google,
            "https://www.googleapis.com/auth/calendarx"
        ));
    }
}
