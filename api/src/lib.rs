//! The read API (being built).
