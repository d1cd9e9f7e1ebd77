//! Ingress integration tests against the machine's real RabbitMQ.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod broker_outage;
mod fuzz_corpus;
mod helpers;
mod shutdown;
mod webhooks;
