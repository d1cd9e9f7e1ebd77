//! The entities under short names.

pub use super::backfill_checkpoints::Entity as BackfillCheckpoints;
pub use super::calendar_disconnects::Entity as CalendarDisconnects;
pub use super::deleted_memberships::Entity as DeletedMemberships;
pub use super::deleted_organizations::Entity as DeletedOrganizations;
pub use super::deleted_users::Entity as DeletedUsers;
pub use super::organization_memberships::Entity as OrganizationMemberships;
pub use super::organizations::Entity as Organizations;
pub use super::processed_events::Entity as ProcessedEvents;
pub use super::user_calendar_connections::Entity as UserCalendarConnections;
pub use super::users::Entity as Users;
