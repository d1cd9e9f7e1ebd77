//! The api's read of one user by Clerk id: a statement of fixed text selecting what the api
//! returns (never the private or unsafe metadata), decoded by column index. The api answers
//! `/me` and `/users/by-clerk-id/{id}` with it; the bench's ceilings run the same text. Reads
//! that arrive while the pool's statements for them are busy are answered together, by one
//! statement for all their ids ([`SELECT_BY_CLERK_IDS`]).

use chrono::{DateTime, Utc};
use sea_orm::{
    DbErr,
    sqlx::{self, Row as _, postgres::PgRow},
};
use uuid::Uuid;

use crate::{coalesce::Statements, pool::Pool};

/// The select of [`UserRow`]'s columns, in its order, with `$condition` after `WHERE`: one text
/// for the single and the coalesced read, so their columns cannot drift apart.
macro_rules! select_user_row {
    ($condition:literal) => {
        concat!(
            "SELECT id, clerk_user_id, email, first_name, last_name, \
             microsoft_calendar_connected, google_calendar_connected, google_calendar_status, \
             microsoft_calendar_status, username, image_url, external_id, primary_phone_number, \
             public_metadata, banned, locked, last_sign_in_at, clerk_created_at, created_at, \
             updated_at FROM users WHERE ",
            $condition
        )
    };
}

/// The select, by the unique index on `clerk_user_id`; the columns in [`UserRow`]'s order.
pub const SELECT_BY_CLERK_ID: &str = select_user_row!("clerk_user_id = $1 LIMIT 1");

/// [`SELECT_BY_CLERK_ID`] for several ids at once (`$1`: `text[]`), in the same column order.
pub const SELECT_BY_CLERK_IDS: &str = select_user_row!("clerk_user_id = ANY($1)");

/// What the api returns of a `users` row (see `entity::users::Model` for the columns).
#[derive(Debug, Clone, PartialEq)]
pub struct UserRow {
    pub id: Uuid,
    pub clerk_user_id: String,
    pub email: Option<String>,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    pub microsoft_calendar_connected: bool,
    pub google_calendar_connected: bool,
    pub google_calendar_status: String,
    pub microsoft_calendar_status: String,
    pub username: Option<String>,
    pub image_url: Option<String>,
    pub external_id: Option<String>,
    pub primary_phone_number: Option<String>,
    pub public_metadata: serde_json::Value,
    pub banned: bool,
    pub locked: bool,
    pub last_sign_in_at: Option<DateTime<Utc>>,
    pub clerk_created_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<entity::users::Model> for UserRow {
    /// The same values from sea-orm's model (the columns the api does not return are left out).
    fn from(m: entity::users::Model) -> Self {
        let utc = |at: chrono::DateTime<chrono::FixedOffset>| at.with_timezone(&Utc);
        Self {
            id: m.id,
            clerk_user_id: m.clerk_user_id,
            email: m.email,
            first_name: m.first_name,
            last_name: m.last_name,
            microsoft_calendar_connected: m.microsoft_calendar_connected,
            google_calendar_connected: m.google_calendar_connected,
            google_calendar_status: m.google_calendar_status,
            microsoft_calendar_status: m.microsoft_calendar_status,
            username: m.username,
            image_url: m.image_url,
            external_id: m.external_id,
            primary_phone_number: m.primary_phone_number,
            public_metadata: m.public_metadata,
            banned: m.banned,
            locked: m.locked,
            last_sign_in_at: m.last_sign_in_at.map(utc),
            clerk_created_at: m.clerk_created_at.map(utc),
            created_at: utc(m.created_at),
            updated_at: utc(m.updated_at),
        }
    }
}

impl UserRow {
    /// A row of [`SELECT_BY_CLERK_ID`], by column index.
    fn decode(row: &PgRow) -> Result<Self, sqlx::Error> {
        Ok(Self {
            id: row.try_get(0)?,
            clerk_user_id: row.try_get(1)?,
            email: row.try_get(2)?,
            first_name: row.try_get(3)?,
            last_name: row.try_get(4)?,
            microsoft_calendar_connected: row.try_get(5)?,
            google_calendar_connected: row.try_get(6)?,
            google_calendar_status: row.try_get(7)?,
            microsoft_calendar_status: row.try_get(8)?,
            username: row.try_get(9)?,
            image_url: row.try_get(10)?,
            external_id: row.try_get(11)?,
            primary_phone_number: row.try_get(12)?,
            public_metadata: row.try_get(13)?,
            banned: row.try_get(14)?,
            locked: row.try_get(15)?,
            last_sign_in_at: row.try_get(16)?,
            clerk_created_at: row.try_get(17)?,
            created_at: row.try_get(18)?,
            updated_at: row.try_get(19)?,
        })
    }
}

/// The user with this Clerk id, if any. Reads that arrive while the pool's connections are busy
/// are answered together by one statement (`store/src/coalesce.rs`); behind a transaction-mode
/// pooler, or with a pool too small to keep connections for reads, each runs alone.
pub async fn by_clerk_id(pool: &Pool, clerk_user_id: &str) -> Result<Option<UserRow>, DbErr> {
    match pool.users() {
        Some(users) => users.get(clerk_user_id).await,
        None => {
            pool.fetch_optional(SELECT_BY_CLERK_ID, clerk_user_id, UserRow::decode)
                .await
        }
    }
}

/// The statements [`by_clerk_id`]'s coalesced reads run.
pub(crate) fn statements() -> Statements<UserRow> {
    Statements {
        one: SELECT_BY_CLERK_ID,
        many: SELECT_BY_CLERK_IDS,
        decode: UserRow::decode,
        key: |row| row.clerk_user_id.as_str(),
    }
}
