//! What every handler shares.

use std::sync::Mutex;

use prometheus_client::registry::Registry;
use sea_orm::DatabaseConnection;

use crate::{auth::Authenticator, config::CalendarSettings, lazy::LazySync};

/// The application state behind an `Arc`.
pub struct AppState {
    /// The Postgres pool (connects lazily: the API starts while the database is down).
    pub db: DatabaseConnection,
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
