//! clerk-sync's settings: read from the environment through a lookup function (a map in tests),
//! with errors that name the variable and never echo a secret ([`parse`], re-exported here);
//! the types that keep secrets out of `Debug` ([`secret`]); and the one list of every setting
//! the services read, from which the configuration table in the docs is generated ([`catalog`]).

pub mod catalog;
mod parse;
pub mod secret;

pub use parse::*;
