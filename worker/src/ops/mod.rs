//! The worker's ops tools, beside the consume loop: the dead-letter queue ([`dlq`]: list, show,
//! replay, drop), queue migrations ([`queues`]), and the operator's console ([`console`]).

pub mod console;
pub mod dlq;
pub mod queues;
