//! What a "replay all matching" preview selected, kept until its confirmation: the confirmed
//! action acts on exactly those dead letters (the ones still in the queue), not on whatever
//! matches the filter by then.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use super::auth::random_hex;

/// How long a preview can be confirmed.
pub const PREVIEW_LIFETIME: Duration = Duration::from_secs(15 * 60);
/// Previews kept at most (the oldest go first): a bound on memory whatever operators do.
pub const MAX_PREVIEWS: usize = 64;

struct Preview {
    user: String,
    ids: Vec<String>,
    at: Instant,
}

/// The previews of this worker process, by token.
#[derive(Default)]
pub struct Previews {
    map: Mutex<HashMap<String, Preview>>,
}

impl Previews {
    /// Keeps `user`'s selection; returns the token its confirmation form carries.
    pub fn keep(&self, user: &str, ids: Vec<String>) -> String {
        let token = random_hex();
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        map.retain(|_, p| now.duration_since(p.at) < PREVIEW_LIFETIME);
        while map.len() >= MAX_PREVIEWS {
            let Some(oldest) = map.iter().min_by_key(|(_, p)| p.at).map(|(t, _)| t.clone()) else {
                break;
            };
            map.remove(&oldest);
        }
        map.insert(
            token.clone(),
            Preview {
                user: user.to_owned(),
                ids,
                at: now,
            },
        );
        token
    }

    /// The selection of `token`, once, if it is `user`'s and not expired.
    pub fn take(&self, token: &str, user: &str) -> Option<Vec<String>> {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let preview = map.remove(token)?;
        (preview.user == user && preview.at.elapsed() < PREVIEW_LIFETIME).then_some(preview.ids)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_preview_is_confirmed_once_by_its_own_user_only() {
        let previews = Previews::default();
        let token = previews.keep("ops", vec!["msg_1".into(), "msg_2".into()]);
        assert_eq!(previews.take(&token, "other"), None);
        let token = previews.keep("ops", vec!["msg_1".into()]);
        assert_eq!(
            previews.take(&token, "ops"),
            Some(vec!["msg_1".to_string()])
        );
        assert_eq!(previews.take(&token, "ops"), None, "used once");
        for _ in 0..MAX_PREVIEWS + 5 {
            previews.keep("ops", Vec::new());
        }
        assert!(previews.map.lock().unwrap().len() <= MAX_PREVIEWS);
    }
}
