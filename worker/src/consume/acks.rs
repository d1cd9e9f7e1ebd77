//! Settling deliveries on one channel: acks with `multiple` where possible, never out of order.
//!
//! Every delivery is registered when it arrives. A delivery applied in a batch becomes *ready*
//! after the commit; the longest run of ready deliveries at the low end of the channel is then
//! acknowledged with one `basic.ack(multiple)`. A delivery that takes the slow path (calendar
//! tokens from Clerk, retries) must not hold back everything after it: ready deliveries that
//! wait only on slow ones are acknowledged one by one. Deliveries handed to a retry or dead-letter
//! queue are settled individually. Frames are sent under one lock, so a `multiple` ack never
//! races an individual ack or nack of a tag it covers.

use std::collections::BTreeMap;

use broker::lapin::{
    Acker,
    options::{BasicAckOptions, BasicNackOptions},
};
use tokio::sync::Mutex;

/// Where a delivery stands.
#[derive(Debug)]
enum State<A> {
    /// Being applied in a batch (finishes soon).
    InBatch,
    /// On the slow path (Clerk's API, in-process retries): may take seconds.
    Slow,
    /// Applied and committed: to be acknowledged.
    Ready(A),
}

/// What to send now: one ack with `multiple` up to a tag, and individual acks.
#[derive(Debug, PartialEq, Eq)]
pub struct Plan<A> {
    pub multiple: Option<A>,
    pub single: Vec<A>,
}

/// The settling state of one channel's deliveries (pure bookkeeping; see [`Acks`]).
#[derive(Debug)]
pub struct Ledger<A> {
    outstanding: BTreeMap<u64, State<A>>,
}

impl<A> Default for Ledger<A> {
    fn default() -> Self {
        Self {
            outstanding: BTreeMap::new(),
        }
    }
}

impl<A> Ledger<A> {
    /// A delivery arrived (tags grow on a channel).
    pub fn register(&mut self, tag: u64) {
        self.outstanding.insert(tag, State::InBatch);
    }

    /// The delivery left the batch for the slow path; returns what can be acknowledged now
    /// (ready deliveries that waited on it as part of a batch may now go one by one).
    pub fn slow(&mut self, tag: u64) -> Plan<A> {
        if let Some(state) = self.outstanding.get_mut(&tag) {
            *state = State::Slow;
        }
        self.plan()
    }

    /// The delivery is settled by its own ack or nack (sent by the caller); returns what can be
    /// acknowledged now that it no longer holds the others back.
    pub fn forget(&mut self, tag: u64) -> Plan<A> {
        self.outstanding.remove(&tag);
        self.plan()
    }

    /// Deliveries whose handler died: those not yet applied are forgotten (the caller gives
    /// them back to the broker) and returned; applied ones stay to be acknowledged.
    pub fn abandon(&mut self, tags: impl IntoIterator<Item = u64>) -> (Vec<u64>, Plan<A>) {
        let mut abandoned = Vec::new();
        for tag in tags {
            if matches!(
                self.outstanding.get(&tag),
                Some(State::InBatch | State::Slow)
            ) {
                self.outstanding.remove(&tag);
                abandoned.push(tag);
            }
        }
        (abandoned, self.plan())
    }

    /// The delivery is applied; returns what can be acknowledged now.
    pub fn ready(&mut self, tag: u64, acker: A) -> Plan<A> {
        self.ready_all([(tag, acker)])
    }

    /// Several deliveries are applied (a batch); returns what can be acknowledged now.
    pub fn ready_all(&mut self, applied: impl IntoIterator<Item = (u64, A)>) -> Plan<A> {
        for (tag, acker) in applied {
            if let Some(state) = self.outstanding.get_mut(&tag) {
                *state = State::Ready(acker);
            }
        }
        self.plan()
    }

    fn plan(&mut self) -> Plan<A> {
        // The ready run at the low end: one ack with `multiple`, up to its last tag.
        let mut last_ready = None;
        for (&tag, state) in &self.outstanding {
            if !matches!(state, State::Ready(_)) {
                break;
            }
            last_ready = Some(tag);
        }
        let mut multiple = None;
        if let Some(last) = last_ready {
            let rest = self.outstanding.split_off(&(last + 1));
            let run = std::mem::replace(&mut self.outstanding, rest);
            multiple = run.into_values().last().and_then(|state| match state {
                State::Ready(acker) => Some(acker),
                _ => None,
            });
        }
        // Ready deliveries behind slow ones only: acknowledge them one by one.
        let mut single_tags = Vec::new();
        for (&tag, state) in &self.outstanding {
            match state {
                State::InBatch => break,
                State::Slow => {}
                State::Ready(_) => single_tags.push(tag),
            }
        }
        let single = single_tags
            .into_iter()
            .filter_map(|tag| match self.outstanding.remove(&tag) {
                Some(State::Ready(acker)) => Some(acker),
                _ => None,
            })
            .collect();
        Plan { multiple, single }
    }
}

/// The ledger of one channel, sending the frames it plans.
#[derive(Default)]
pub struct Acks {
    ledger: Mutex<Ledger<Acker>>,
}

impl Acks {
    /// Registers deliveries as they arrive.
    pub async fn register_all(&self, tags: impl IntoIterator<Item = u64>) {
        let mut ledger = self.ledger.lock().await;
        for tag in tags {
            ledger.register(tag);
        }
    }

    /// Marks a delivery as taking the slow path, and acknowledges what that lets through.
    pub async fn slow(&self, tag: u64) {
        let mut ledger = self.ledger.lock().await;
        let plan = ledger.slow(tag);
        send_plan(plan).await;
    }

    /// A delivery is applied: acknowledges what can be.
    pub async fn ready(&self, tag: u64, acker: Acker) {
        self.ready_all([(tag, acker)]).await;
    }

    /// Deliveries committed together: acknowledges what can be, all in one go.
    pub async fn ready_all(&self, applied: impl IntoIterator<Item = (u64, Acker)>) {
        let mut ledger = self.ledger.lock().await;
        let plan = ledger.ready_all(applied);
        send_plan(plan).await;
    }

    /// Acknowledges one delivery on its own (after a confirmed hand-over to another queue), and
    /// what its settling lets through.
    pub async fn ack_one(&self, tag: u64, acker: &Acker) {
        let mut ledger = self.ledger.lock().await;
        let plan = ledger.forget(tag);
        send_ack(acker, false).await;
        send_plan(plan).await;
    }

    /// Gives one delivery back to the broker (a hand-over that failed: nothing is lost), and
    /// acknowledges what its settling lets through.
    pub async fn requeue_one(&self, tag: u64, acker: &Acker) {
        let mut ledger = self.ledger.lock().await;
        let plan = ledger.forget(tag);
        send_requeue(acker).await;
        send_plan(plan).await;
    }

    /// The handler of these deliveries died (a panic): the ones not applied yet go back to the
    /// broker at once; applied ones are still acknowledged. Returns how many went back.
    pub async fn abandon(&self, deliveries: &[(u64, Acker)]) -> usize {
        let mut ledger = self.ledger.lock().await;
        let (abandoned, plan) = ledger.abandon(deliveries.iter().map(|(tag, _)| *tag));
        for (_, acker) in deliveries.iter().filter(|(tag, _)| abandoned.contains(tag)) {
            send_requeue(acker).await;
        }
        send_plan(plan).await;
        abandoned.len()
    }
}

async fn send_plan(plan: Plan<Acker>) {
    if let Some(acker) = plan.multiple {
        send_ack(&acker, true).await;
    }
    for acker in plan.single {
        send_ack(&acker, false).await;
    }
}

async fn send_requeue(acker: &Acker) {
    if let Err(error) = acker
        .nack(BasicNackOptions {
            requeue: true,
            ..BasicNackOptions::default()
        })
        .await
    {
        tracing::warn!(error.message = %error, "nack failed; the broker redelivers the event when the channel closes");
    }
}

async fn send_ack(acker: &Acker, multiple: bool) {
    if let Err(error) = acker.ack(BasicAckOptions { multiple }).await {
        // The channel is gone: the broker redelivers, and the duplicates are detected.
        tracing::warn!(error.message = %error, "ack failed; the events will be redelivered");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ledger(tags: std::ops::RangeInclusive<u64>) -> Ledger<u64> {
        let mut ledger = Ledger::default();
        for tag in tags {
            ledger.register(tag);
        }
        ledger
    }

    #[test]
    fn a_batch_at_the_low_end_is_acknowledged_with_one_multiple_ack() {
        let mut ledger = ledger(1..=4);
        assert_eq!(
            ledger.ready(2, 2),
            Plan {
                multiple: None,
                single: vec![]
            }
        );
        assert_eq!(
            ledger.ready(1, 1),
            Plan {
                multiple: Some(2),
                single: vec![]
            }
        );
        assert_eq!(
            ledger.ready(4, 4),
            Plan {
                multiple: None,
                single: vec![]
            }
        );
        assert_eq!(
            ledger.ready(3, 3),
            Plan {
                multiple: Some(4),
                single: vec![]
            }
        );
        assert!(ledger.outstanding.is_empty());
    }

    #[test]
    fn a_whole_batch_made_ready_at_once_takes_one_ack() {
        let mut ledger = ledger(1..=64);
        assert_eq!(
            ledger.ready_all((1..=64).map(|tag| (tag, tag))),
            Plan {
                multiple: Some(64),
                single: vec![]
            }
        );
    }

    #[test]
    fn a_later_batch_waits_for_an_earlier_batch_still_applying() {
        let mut ledger = ledger(1..=6);
        for tag in 4..=6 {
            assert_eq!(
                ledger.ready(tag, tag),
                Plan {
                    multiple: None,
                    single: vec![]
                }
            );
        }
        ledger.ready(1, 1);
        ledger.ready(2, 2);
        assert_eq!(
            ledger.ready(3, 3),
            Plan {
                multiple: Some(6),
                single: vec![]
            }
        );
    }

    #[test]
    fn a_slow_delivery_does_not_hold_back_the_ones_after_it() {
        let mut ledger = ledger(1..=5);
        ledger.slow(2);
        assert_eq!(
            ledger.ready(1, 1),
            Plan {
                multiple: Some(1),
                single: vec![]
            }
        );
        assert_eq!(
            ledger.ready(3, 3),
            Plan {
                multiple: None,
                single: vec![3]
            }
        );
        // 5 waits on 4, which is still in its batch.
        assert_eq!(
            ledger.ready(5, 5),
            Plan {
                multiple: None,
                single: vec![]
            }
        );
        assert_eq!(
            ledger.ready(4, 4),
            Plan {
                multiple: None,
                single: vec![4, 5]
            }
        );
        // The slow one is settled on its own; nothing is left.
        assert_eq!(
            ledger.ready(2, 2),
            Plan {
                multiple: Some(2),
                single: vec![]
            }
        );
        assert!(ledger.outstanding.is_empty());
    }

    #[test]
    fn a_delivery_settled_on_its_own_never_ends_up_in_a_multiple_ack() {
        let mut ledger = ledger(1..=3);
        ledger.slow(1);
        ledger.forget(1);
        ledger.ready(3, 3);
        assert_eq!(
            ledger.ready(2, 2),
            Plan {
                multiple: Some(3),
                single: vec![]
            }
        );
        assert!(ledger.outstanding.is_empty());
    }

    fn nothing() -> Plan<u64> {
        Plan {
            multiple: None,
            single: vec![],
        }
    }

    #[test]
    fn a_committed_delivery_is_acknowledged_when_the_one_before_it_leaves_its_batch() {
        // 1 is in a batch still applying; 2 (another batch) commits and waits behind it.
        let mut ledger = ledger(1..=2);
        assert_eq!(ledger.ready(2, 2), nothing());
        // 1's batch fails: it takes the slow path, which must not hold 2 back.
        assert_eq!(
            ledger.slow(1),
            Plan {
                multiple: None,
                single: vec![2]
            }
        );
    }

    #[test]
    fn a_committed_delivery_is_acknowledged_when_the_one_before_it_goes_to_a_retry_queue() {
        let mut ledger = ledger(1..=3);
        assert_eq!(ledger.ready(2, 2), nothing());
        assert_eq!(ledger.ready(3, 3), nothing());
        // 1 is handed to a retry queue and acked on its own: 2 and 3 go at once.
        assert_eq!(
            ledger.forget(1),
            Plan {
                multiple: Some(3),
                single: vec![]
            }
        );
        assert!(ledger.outstanding.is_empty());
    }

    #[test]
    fn deliveries_of_a_dead_handler_are_given_back_unless_applied() {
        let mut ledger = ledger(1..=4);
        ledger.slow(2);
        assert_eq!(ledger.ready(4, 4), nothing());
        // The handler of 1..=3 died with 3 applied (ready) and 1, 2 not.
        ledger.ready(3, 3);
        let (abandoned, plan) = ledger.abandon([1, 2, 3]);
        assert_eq!(abandoned, vec![1, 2]);
        assert_eq!(
            plan,
            Plan {
                multiple: Some(4),
                single: vec![]
            }
        );
        assert!(ledger.outstanding.is_empty());
    }
}
