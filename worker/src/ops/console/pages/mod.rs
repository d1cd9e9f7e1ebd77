//! The console's pages and actions, one file a page. Every value shown goes through
//! [`escape`](super::html::escape).

pub mod actions;
pub mod audit;
mod common;
pub mod connections;
pub mod dead_letter;
pub mod dead_letters;
pub mod events;
pub mod login;
pub mod overview;
