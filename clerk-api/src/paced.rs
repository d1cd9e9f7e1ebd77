//! The paced caller: every command that pages Clerk (backfill, reconcile, and whatever comes
//! next) keeps its calls under a rate ([`Pace`]) and retries what can pass, waiting at least
//! Clerk's `Retry-After` on a 429 ([`call`]).

use std::time::Duration;

use tokio::time::Instant;

use crate::ClerkError;

/// Keeps calls to Clerk under a rate, and waits out `Retry-After`.
///
/// Each call is due one `interval` after the one before (`next`, the theoretical time of the
/// next call); a call may go up to `tolerance` early, so a caller that fell behind (busy between
/// calls) catches up with a short burst instead of losing the time. In any span `T`, at most
/// `T / interval + tolerance / interval + 1` calls start.
#[derive(Debug)]
pub struct Pace {
    interval: Duration,
    tolerance: Duration,
    next: Instant,
}

impl Pace {
    /// `per_second` calls a second, evenly spaced (no burst).
    pub fn new(per_second: u32) -> Self {
        Self::with_burst(per_second, Duration::ZERO)
    }

    /// `per_second` calls a second, and up to `burst`'s worth of calls early to catch up.
    pub fn with_burst(per_second: u32, burst: Duration) -> Self {
        let interval = Duration::from_secs(1) / per_second.max(1);
        Self {
            interval,
            tolerance: burst,
            next: Instant::now(),
        }
    }

    /// Waits until the next call may start.
    pub async fn wait(&mut self) {
        let now = Instant::now();
        let earliest = self.next.checked_sub(self.tolerance).unwrap_or(self.next);
        if earliest > now {
            tokio::time::sleep(earliest - now).await;
        }
        self.next = Instant::now().max(self.next) + self.interval;
    }

    /// No call before `wait` from now (Clerk's `Retry-After`), and no burst right after.
    pub fn defer(&mut self, wait: Duration) {
        self.next = self.next.max(Instant::now() + wait + self.tolerance);
    }
}

/// The first wait between attempts when Clerk names none; it doubles up to [`MAX_BACKOFF`].
pub const FIRST_BACKOFF: Duration = Duration::from_millis(250);
/// The longest wait between attempts when Clerk names none.
pub const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// A call to Clerk, paced and tried up to `attempts` times while it fails transiently; after a
/// 429 the next call waits at least Clerk's `Retry-After`, otherwise the backoff's delay.
/// `what` names the call in the retry's log line (no ids of users: they are personal data).
pub async fn call<T, F, Fut>(
    pace: &mut Pace,
    attempts: u32,
    what: &str,
    mut f: F,
) -> Result<T, ClerkError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, ClerkError>>,
{
    let mut delay = FIRST_BACKOFF;
    let mut attempt = 1;
    loop {
        pace.wait().await;
        match f().await {
            Ok(value) => return Ok(value),
            Err(error) if error.is_transient() && attempt < attempts => {
                let wait = match &error {
                    ClerkError::RateLimited {
                        retry_after: Some(after),
                    } => *after,
                    _ => delay,
                };
                tracing::warn!(what, attempt, error.message = %error, ?wait, "Clerk call failed; retrying");
                pace.defer(wait);
                delay = (delay * 2).min(MAX_BACKOFF);
                attempt += 1;
            }
            Err(error) => return Err(error),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_rate_limited_call_waits_out_retry_after_then_succeeds() {
        let mut pace = Pace::new(1_000);
        let calls = AtomicU32::new(0);
        let started = Instant::now();
        let result = call(&mut pace, 3, "a test call", || async {
            match calls.fetch_add(1, Ordering::SeqCst) {
                0 => Err(ClerkError::RateLimited {
                    retry_after: Some(Duration::from_secs(3)),
                }),
                _ => Ok("done"),
            }
        })
        .await;
        assert_eq!(result.ok(), Some("done"));
        assert!(started.elapsed() >= Duration::from_secs(3));
    }

    #[tokio::test(start_paused = true)]
    async fn a_lasting_failure_gives_up_after_the_attempts_and_a_permanent_one_at_once() {
        let mut pace = Pace::new(1_000);
        let calls = AtomicU32::new(0);
        let result: Result<(), _> = call(&mut pace, 3, "a test call", || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err(ClerkError::Timeout)
        })
        .await;
        assert!(matches!(result, Err(ClerkError::Timeout)));
        assert_eq!(calls.swap(0, Ordering::SeqCst), 3);
        let result: Result<(), _> = call(&mut pace, 3, "a test call", || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err(ClerkError::Decode("no".into()))
        })
        .await;
        assert!(matches!(result, Err(ClerkError::Decode(_))));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }
}
