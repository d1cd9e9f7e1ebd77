//! Calendar connections (being built).
