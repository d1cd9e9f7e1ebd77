//! The sync core's integration tests: the pool and leases against real Postgres, directly and
//! through a real PgBouncer.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod lease;
mod pool;
mod users;
