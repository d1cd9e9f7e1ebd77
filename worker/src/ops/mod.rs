//! The worker's ops tools, beside the consume loop: the dead-letter queue ([`dlq`]: list, show,
//! replay, drop), queue migrations ([`queues`]), the operator's console ([`console`]), and links
//! from a dead letter to its trace ([`trace_url`]).

pub mod console;
pub mod dlq;
pub mod queues;
pub mod trace_url;
