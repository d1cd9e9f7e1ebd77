//! Tests of the test kit's own stand-ins.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod otlp;
