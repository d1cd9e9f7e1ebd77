//! Svix signature verification against one or more webhook secrets (rotation: any may match).

use base64::{Engine, engine::general_purpose::STANDARD};
use http::HeaderMap;
use settings::secret::Redacted;
use svix::webhooks::{Webhook, WebhookError};

/// A secret in `CLERK_WEBHOOK_SECRET` that cannot be used. Never carries the secret itself.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error(
        "{variable}: secret {position} of {count} does not start with `whsec_`; copy the signing secret from the Clerk dashboard as it is"
    )]
    MissingPrefix {
        variable: &'static str,
        position: usize,
        count: usize,
    },
    #[error(
        "{variable}: secret {position} of {count} is not valid base64 after `whsec_`; copy it again from the Clerk dashboard"
    )]
    BadBase64 {
        variable: &'static str,
        position: usize,
        count: usize,
    },
}

/// The webhook secrets, ready to verify. `Debug` shows each as `[redacted]`.
#[derive(Debug)]
pub struct Secrets {
    webhooks: Vec<Redacted<Webhook>>,
}

/// Why a delivery was not accepted.
#[derive(Debug, PartialEq, Eq)]
pub enum Rejection {
    /// `svix-id`, `svix-timestamp` or `svix-signature` is absent.
    MissingHeaders,
    /// A header is present but unusable (timestamp not a number, not visible ASCII), or the body
    /// is not UTF-8.
    Malformed(&'static str),
    /// The timestamp is more than five minutes away from now.
    StaleTimestamp,
    /// No `v1` signature matches any secret.
    BadSignature,
}

/// The Svix header triples, branded and unbranded (Svix libraries accept both).
const ID: [&str; 2] = ["svix-id", "webhook-id"];
const TIMESTAMP: [&str; 2] = ["svix-timestamp", "webhook-timestamp"];
const SIGNATURE: [&str; 2] = ["svix-signature", "webhook-signature"];

/// Longest signature header considered; Svix sends a handful of 50-byte entries at most.
const MAX_SIGNATURE_HEADER: usize = 4096;

/// The value of the first present header among `names`.
pub fn header<'a>(headers: &'a HeaderMap, names: &[&str; 2]) -> Option<&'a http::HeaderValue> {
    names.iter().find_map(|name| headers.get(*name))
}

/// The Svix message id of a delivery, if it sent one as visible ASCII.
pub fn message_id(headers: &HeaderMap) -> Option<&str> {
    header(headers, &ID).and_then(|v| v.to_str().ok())
}

/// The Svix headers (id, timestamp, signature) as sent, for forwarding.
pub fn svix_headers(headers: &HeaderMap) -> [(&'static str, Option<&str>); 3] {
    [
        (ID[0], header(headers, &ID).and_then(|v| v.to_str().ok())),
        (
            TIMESTAMP[0],
            header(headers, &TIMESTAMP).and_then(|v| v.to_str().ok()),
        ),
        (
            SIGNATURE[0],
            header(headers, &SIGNATURE).and_then(|v| v.to_str().ok()),
        ),
    ]
}

/// Checks that the three headers are present before anything else is read.
pub fn check_headers_present(headers: &HeaderMap) -> Result<(), Rejection> {
    for names in [&ID, &TIMESTAMP, &SIGNATURE] {
        if header(headers, names).is_none() {
            return Err(Rejection::MissingHeaders);
        }
    }
    match header(headers, &SIGNATURE) {
        Some(v) if v.len() > MAX_SIGNATURE_HEADER => Err(Rejection::Malformed("svix-signature")),
        _ => Ok(()),
    }
}

impl Secrets {
    /// Parses a space-separated list of `whsec_…` secrets; `variable` names the setting in errors.
    pub fn parse(variable: &'static str, value: &str) -> Result<Self, SecretError> {
        let parts: Vec<&str> = value.split_whitespace().collect();
        let count = parts.len();
        let mut webhooks = Vec::with_capacity(count);
        for (i, part) in parts.iter().enumerate() {
            let position = i + 1;
            let Some(encoded) = part.strip_prefix("whsec_") else {
                return Err(SecretError::MissingPrefix {
                    variable,
                    position,
                    count,
                });
            };
            let key = STANDARD
                .decode(encoded)
                .ok()
                .filter(|k| !k.is_empty())
                .ok_or(SecretError::BadBase64 {
                    variable,
                    position,
                    count,
                })?;
            let webhook = Webhook::from_bytes(key).map_err(|_| SecretError::BadBase64 {
                variable,
                position,
                count,
            })?;
            webhooks.push(Redacted::new(webhook));
        }
        Ok(Self { webhooks })
    }

    /// Verifies the raw body against every secret; any match accepts.
    pub fn verify(&self, body: &[u8], headers: &HeaderMap) -> Result<(), Rejection> {
        check_headers_present(headers)?;
        let mut rejection = Rejection::BadSignature;
        for webhook in &self.webhooks {
            match webhook.expose().verify(body, headers) {
                Ok(()) => return Ok(()),
                Err(error) => {
                    rejection = match error {
                        WebhookError::MissingHeader(_) => Rejection::MissingHeaders,
                        WebhookError::InvalidHeader(_) => Rejection::Malformed("svix headers"),
                        WebhookError::InvalidTimestamp => Rejection::Malformed("svix-timestamp"),
                        WebhookError::InvalidPayload => Rejection::Malformed("body (not UTF-8)"),
                        WebhookError::TimestampTooOldError | WebhookError::FutureTimestampError => {
                            Rejection::StaleTimestamp
                        }
                        WebhookError::InvalidSignature
                        | WebhookError::InvalidSecret(_)
                        | WebhookError::EmptySecret => Rejection::BadSignature,
                    };
                    // Only the signature depends on the secret: other failures are final.
                    if rejection != Rejection::BadSignature {
                        return Err(rejection);
                    }
                }
            }
        }
        Err(rejection)
    }
}

/// One fuzz case for the signature handling (used by `fuzz/` and its corpus regression test):
/// the input is split on `\n` into svix-id, svix-timestamp, svix-signature and body; when the first
/// byte is odd, the body is also signed properly so that the accepting path is exercised. Never
/// panics on any input; that is the property checked.
#[doc(hidden)]
pub fn fuzz_case(data: &[u8]) {
    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let Ok(secrets) = Secrets::parse("FUZZ", SECRET) else {
        return;
    };
    let mut parts = data.splitn(4, |b| *b == b'\n');
    let id = parts.next().unwrap_or_default();
    let timestamp = parts.next().unwrap_or_default();
    let signature = parts.next().unwrap_or_default();
    let body = parts.next().unwrap_or_default();
    let mut headers = HeaderMap::new();
    for (name, value) in [
        ("svix-id", id),
        ("svix-timestamp", timestamp),
        ("svix-signature", signature),
    ] {
        if let Ok(value) = http::HeaderValue::from_bytes(value) {
            headers.insert(name, value);
        }
    }
    let _ = secrets.verify(body, &headers);
    if data.first().is_some_and(|b| b % 2 == 1)
        && let (Ok(id), Ok(ts)) = (std::str::from_utf8(id), std::str::from_utf8(timestamp))
        && let Ok(ts) = ts.parse::<i64>()
        && let Ok(webhook) = Webhook::new(SECRET)
        && let Ok(sig) = webhook.sign(id, ts, body)
        && let Ok(value) = http::HeaderValue::from_str(&sig)
    {
        headers.insert("svix-signature", value);
        let _ = secrets.verify(body, &headers);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const B: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";

    fn signed(secret: &str, ts: i64, body: &[u8]) -> HeaderMap {
        let sig = Webhook::new(secret)
            .expect("secret")
            .sign("msg_1", ts, body)
            .expect("sign");
        let mut h = HeaderMap::new();
        h.insert("svix-id", "msg_1".parse().expect("hv"));
        h.insert("svix-timestamp", ts.to_string().parse().expect("hv"));
        h.insert("svix-signature", sig.parse().expect("hv"));
        h
    }

    fn now() -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or_default()
    }

    #[test]
    fn any_of_several_secrets_verifies() {
        let secrets = Secrets::parse("S", &format!("{A} {B}")).expect("valid");
        let body = br#"{"type":"user.created"}"#;
        assert_eq!(secrets.verify(body, &signed(B, now(), body)), Ok(()));
        assert_eq!(secrets.verify(body, &signed(A, now(), body)), Ok(()));
        let other = "whsec_dGhpcyBpcyBhbm90aGVyIHNlY3JldA==";
        assert_eq!(
            secrets.verify(body, &signed(other, now(), body)),
            Err(Rejection::BadSignature)
        );
    }

    #[test]
    fn the_timestamp_window_is_five_minutes_each_way() {
        let secrets = Secrets::parse("S", A).expect("valid");
        let body = b"{}";
        assert_eq!(secrets.verify(body, &signed(A, now() - 299, body)), Ok(()));
        assert_eq!(
            secrets.verify(body, &signed(A, now() - 360, body)),
            Err(Rejection::StaleTimestamp)
        );
        assert_eq!(
            secrets.verify(body, &signed(A, now() + 360, body)),
            Err(Rejection::StaleTimestamp)
        );
    }

    #[test]
    fn hostile_headers_and_bodies_are_rejected_not_panicked_on() {
        let secrets = Secrets::parse("S", A).expect("valid");
        let mut h = signed(A, now(), b"{}");
        h.insert("svix-timestamp", "soon".parse().expect("hv"));
        assert!(matches!(
            secrets.verify(b"{}", &h),
            Err(Rejection::Malformed(_))
        ));
        let mut h = signed(A, now(), b"{}");
        h.insert("svix-signature", "v9,abc ".repeat(400).parse().expect("hv"));
        assert!(secrets.verify(b"{}", &h).is_err());
        let h = signed(A, now(), b"{}");
        assert!(secrets.verify(&[0xff, 0xfe], &h).is_err());
        assert_eq!(
            secrets.verify(b"{}", &HeaderMap::new()),
            Err(Rejection::MissingHeaders)
        );
    }

    #[test]
    fn the_debug_output_hides_the_secrets() {
        let secrets = Secrets::parse("S", A).expect("valid");
        assert_eq!(format!("{secrets:?}"), "Secrets { webhooks: [[redacted]] }");
    }
}
