//! Integration tests of the API: the real app on port 0 against a fresh migrated Postgres
//! database per test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod auth;
mod connections;
mod health;
mod helpers;
mod lazy;
mod openapi;
mod ops;
mod organizations;
mod replica;
mod service;
mod token;
mod traces;
