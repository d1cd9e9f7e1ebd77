//! `api`: the read API.

fn main() {}
