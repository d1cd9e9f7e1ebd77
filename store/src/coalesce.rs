//! Reads of one row by key that arrive while others are on their way to Postgres are answered
//! together, by one statement for all their keys (`… WHERE key = ANY($1)`).
//!
//! Under load most of a read's cost is not the index lookup but the round trip around it: the
//! statement's messages written and TLS-sealed, the backend woken, its answer read and decoded,
//! on both sides. So when every connection the reads may use is busy, a read does not queue for
//! a connection of its own: it joins the reads waiting for the next free one, and that
//! connection's next statement asks for all of them. With nothing else in flight a read runs at
//! once, alone, as the single-key statement: an idle service answers as before.
//!
//! At most half the connections kept for reads carry statements at once (4 with the default
//! pool of 10, which keeps 8). Fewer statements make fuller ones: with 64 requests in flight on
//! 2 CPUs (BENCHMARKS.md), 8 at once asked for 2.3 keys a statement on average, 4 for 3.7 and 2
//! for 6.5, and the api's CPU per read fell from 70 to 56 and 49 µs. Half leaves room for a slow
//! statement (rows not in memory) without holding up every read behind it.
//!
//! What a read sees is what it would have seen alone: the statement that answers it starts after
//! the read arrived (a read never joins a statement already sent), so a write committed before
//! the read began is seen. A statement that fails gives every read in it the same error, the
//! error each would have met alone (a database down, a timeout). A read whose caller goes away
//! leaves the others unharmed: the statements run in tasks of their own, and a read no longer
//! awaited is left out of the next statement.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use sea_orm::{
    ConnAcquireErr, DbErr,
    sqlx::{self, postgres::PgRow},
};
use tokio::sync::oneshot;

use crate::kept::{Kept, query_error};

/// Keys asked for in one statement at most.
pub(crate) const MOST_KEYS_PER_STATEMENT: usize = 64;

/// What the statements select and how a row is read: see [`Coalesced::new`].
pub(crate) struct Statements<T> {
    /// The select of at most one row whose key equals `$1` (text).
    pub one: &'static str,
    /// The same select of the rows whose key is in `$1` (`text[]`).
    pub many: &'static str,
    /// A row of either, by column index.
    pub decode: fn(&PgRow) -> Result<T, sqlx::Error>,
    /// A decoded row's key.
    pub key: fn(&T) -> &str,
}

/// A read waiting for its statement.
struct Waiting<T> {
    key: String,
    answer: oneshot::Sender<Result<Option<T>, DbErr>>,
}

/// The reads waiting, and how many statements are on their way.
struct State<T> {
    waiting: Vec<Waiting<T>>,
    running: usize,
}

/// A statement on its way for a read run in the read's own task; see [`Coalesced::finished`].
struct Running<'a, T: Clone + Send + 'static>(&'a Arc<Coalesced<T>>);

impl<T: Clone + Send + 'static> Drop for Running<'_, T> {
    fn drop(&mut self) {
        self.0.finished();
    }
}

/// Reads by key of one table through a [`Kept`] set of connections, coalesced.
pub(crate) struct Coalesced<T> {
    kept: Arc<Kept>,
    /// Statements on their way at once at most.
    at_once: usize,
    statements: Statements<T>,
    state: Mutex<State<T>>,
}

impl<T: Clone + Send + 'static> Coalesced<T> {
    /// Reads with `statements` on the connections of `kept`, with at most half as many
    /// statements at once as it lends connections (at least one).
    pub(crate) fn new(kept: Arc<Kept>, statements: Statements<T>) -> Self {
        Self {
            at_once: (kept.capacity() / 2).max(1),
            kept,
            statements,
            state: Mutex::new(State {
                waiting: Vec::new(),
                running: 0,
            }),
        }
    }

    fn state(&self) -> MutexGuard<'_, State<T>> {
        // Nothing panics while holding the lock; a poisoned one still holds consistent state.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The row whose key is `key`, if any.
    pub(crate) async fn get(self: &Arc<Self>, key: &str) -> Result<Option<T>, DbErr> {
        // Postgres's text holds no NUL: no row has such a key, and a statement carrying one
        // would fail for every read in it.
        if key.contains('\0') {
            return Ok(None);
        }
        let (answer, answered) = oneshot::channel();
        let spawn = {
            let mut state = self.state();
            let free = state.running < self.at_once;
            if free {
                state.running += 1;
            }
            if free && state.waiting.is_empty() {
                None
            } else {
                state.waiting.push(Waiting {
                    key: key.to_owned(),
                    answer,
                });
                Some(free)
            }
        };
        match spawn {
            // Nothing queued and a connection free: this read runs now, in its own task.
            None => {
                let _running = Running(self);
                return self.one(key).await;
            }
            Some(true) => {
                tokio::spawn(Arc::clone(self).run());
            }
            Some(false) => {}
        }
        // The task was dropped unfinished only if the runtime is shutting down.
        answered
            .await
            .map_err(|_| DbErr::ConnectionAcquire(ConnAcquireErr::ConnectionClosed))?
    }

    /// The statement for one key.
    async fn one(&self, key: &str) -> Result<Option<T>, DbErr> {
        let rows = self.kept.fetch_all(self.statements.one, key).await?;
        self.decode(rows.first())
    }

    /// After a statement of a read run in its own task (answered or dropped): the reads that
    /// queued meanwhile get a task of their own, which takes over its place.
    fn finished(self: &Arc<Self>) {
        let mut state = self.state();
        if state.waiting.is_empty() {
            state.running -= 1;
            return;
        }
        drop(state);
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(Arc::clone(self).run());
            }
            Err(_) => {
                // No runtime (it is shutting down): the queued reads fail as the pool closing.
                let mut state = self.state();
                state.running -= 1;
                state.waiting.clear();
            }
        }
    }

    /// Sends statements for the waiting reads until none is left.
    async fn run(self: Arc<Self>) {
        loop {
            let batch = {
                let mut state = self.state();
                if state.waiting.is_empty() {
                    state.running -= 1;
                    return;
                }
                let n = state.waiting.len().min(MOST_KEYS_PER_STATEMENT);
                state.waiting.drain(..n).collect::<Vec<_>>()
            };
            self.answer(batch).await;
        }
    }

    /// Answers `batch` with one statement.
    async fn answer(&self, mut batch: Vec<Waiting<T>>) {
        // Reads whose callers went away are not asked for.
        batch.retain(|w| !w.answer.is_closed());
        if batch.len() == 1 {
            let Some(one) = batch.pop() else { return };
            let result = self.one(&one.key).await;
            let _ = one.answer.send(result);
            return;
        }
        if batch.is_empty() {
            return;
        }
        let keys: Vec<&str> = batch.iter().map(|w| w.key.as_str()).collect();
        let rows = self
            .kept
            .fetch_all(self.statements.many, keys)
            .await
            .and_then(|rows| {
                rows.iter()
                    .map(self.statements.decode)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(query_error)
            });
        match rows {
            Ok(rows) => {
                for waiting in batch {
                    let row = rows
                        .iter()
                        .find(|row| (self.statements.key)(row) == waiting.key)
                        .cloned();
                    let _ = waiting.answer.send(Ok(row));
                }
            }
            Err(error) => {
                for waiting in batch {
                    let _ = waiting.answer.send(Err(error.clone()));
                }
            }
        }
    }

    fn decode(&self, row: Option<&PgRow>) -> Result<Option<T>, DbErr> {
        row.map(self.statements.decode)
            .transpose()
            .map_err(query_error)
    }
}
