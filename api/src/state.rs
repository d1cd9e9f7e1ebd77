//! What every handler shares.

use std::sync::Mutex;
use store::pool::Pool;

use prometheus_client::registry::Registry;

use crate::{auth::Authenticator, config::CalendarSettings, lazy::LazySync, reads::Reads};

/// The application state behind an `Arc`.
pub struct AppState {
    /// The primary's pool (connects lazily: the API starts while the database is down): writes,
    /// and reads that must see them.
    pub db: Pool,
    /// Where other reads go: a replica when configured and current, else the primary.
    pub reads: Reads,
    /// Who may call.
    pub auth: Authenticator,
    /// The token endpoint's cipher and Clerk client, when configured.
    pub calendar: Option<CalendarSettings>,
    /// Lazy sync of signed-in users not stored yet, when on.
    pub lazy: Option<LazySync>,
    /// The registry `/metrics` encodes.
    pub registry: Mutex<Registry>,
    /// The OpenAPI document, serialized once at start-up.
    pub openapi: String,
}
