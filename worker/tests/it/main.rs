//! Worker integration tests against the machine's real Postgres and RabbitMQ.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod backfill;
mod backfill_orgs;
mod batch;
mod calendar;
mod cluster;
mod console;
mod convergence;
mod dead_letters;
mod end_to_end;
mod faults;
mod fuzz_corpus;
mod health;
mod helpers;
mod ordering;
mod organizations;
mod panics;
mod pooler;
mod profile;
mod prune;
mod queues;
mod reconcile;
mod reconcile_orgs;
mod secrets;
mod traces;
