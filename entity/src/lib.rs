//! sea-orm entities for clerk-sync's tables, one module per table.

pub mod backfill_checkpoints;
pub mod calendar_disconnects;
pub mod ciphertext;
pub mod db_errors;
pub mod deleted_memberships;
pub mod deleted_organizations;
pub mod deleted_users;
pub mod organization_memberships;
pub mod organizations;
pub mod prelude;
pub mod processed_events;
pub mod user_calendar_connections;
pub mod users;

pub use ciphertext::Ciphertext;
