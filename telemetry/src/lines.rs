//! Log lines written in batches: a service under load writes one `write(2)` for every few
//! milliseconds of lines instead of one per line.
//!
//! [`std::io::stdout`] as a log sink makes a system call for every line (it is line-buffered):
//! about 2 µs of kernel time per request at the api's read rates, a share that grows as the rest
//! of a request gets cheaper. [`BatchedLines`] appends each line, whole, to a buffer in memory,
//! and a thread of its own writes the buffer out [`INTERVAL`] after the first line of a batch.
//! Every line is kept, in the order written:
//!
//! - the buffer is bounded ([`HIGH_WATER`]): a line that finds it full writes the batch itself,
//!   so a sink that cannot keep up (a full pipe) slows the writers as it did before, and memory
//!   stays bounded;
//! - dropping the [`Flush`] guard (at the end of `main`, after the server has stopped) writes
//!   what is left, and any later line is written at once.
//!
//! What a batch costs in durability: a process killed with `SIGKILL` (or one that aborts) loses
//! the lines of its last [`INTERVAL`] at most. A shutdown on `SIGTERM` or Ctrl-C loses nothing.

use std::{
    io::{self, Write},
    sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError},
    thread::JoinHandle,
    time::Duration,
};

use tracing_subscriber::fmt::MakeWriter;

/// How long a batch gathers lines after its first before it is written out.
pub const INTERVAL: Duration = Duration::from_millis(10);

/// The most a batch holds before a line writes it out at once (and waits for the sink).
pub const HIGH_WATER: usize = 256 * 1024;

/// A [`MakeWriter`] for the tracing subscriber that batches lines into `sink` (see the module
/// documentation). Cloning it gives another handle on the same batch.
#[derive(Clone)]
pub struct BatchedLines {
    shared: Arc<Shared>,
}

/// Writes what is left and stops the writing thread when dropped: keep it until the process
/// ends.
#[must_use = "dropping the guard writes the lines out and stops batching"]
pub struct Flush {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

struct Shared {
    /// Lines not yet written, and whether batching has stopped.
    pending: Mutex<Pending>,
    /// Wakes the writing thread when a batch starts, or batching stops.
    started: Condvar,
    /// The sink; held while a batch is written so that batches reach it in order. Lock order:
    /// `sink` before `pending`.
    sink: Mutex<Box<dyn Write + Send>>,
}

#[derive(Default)]
struct Pending {
    lines: Vec<u8>,
    stopped: bool,
}

impl std::fmt::Debug for BatchedLines {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BatchedLines").finish_non_exhaustive()
    }
}

impl std::fmt::Debug for Flush {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Flush").finish_non_exhaustive()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while a lock was held leaves bytes, not broken invariants: keep logging.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl BatchedLines {
    /// Batches lines into `sink`; starts the thread that writes them. Fails only if the thread
    /// cannot be started.
    pub fn new(sink: impl Write + Send + 'static) -> io::Result<(Self, Flush)> {
        let shared = Arc::new(Shared {
            pending: Mutex::new(Pending::default()),
            started: Condvar::new(),
            sink: Mutex::new(Box::new(sink)),
        });
        let thread = std::thread::Builder::new()
            .name("log-lines".to_owned())
            .spawn({
                let shared = Arc::clone(&shared);
                move || shared.write_batches()
            })?;
        let flush = Flush {
            shared: Arc::clone(&shared),
            thread: Some(thread),
        };
        Ok((Self { shared }, flush))
    }
}

impl Shared {
    /// The writing thread: waits for a batch to start, lets it gather for [`INTERVAL`], writes
    /// it; until batching stops.
    fn write_batches(&self) {
        let mut spare = Vec::new();
        loop {
            {
                let mut pending = lock(&self.pending);
                while pending.lines.is_empty() && !pending.stopped {
                    pending = self
                        .started
                        .wait(pending)
                        .unwrap_or_else(PoisonError::into_inner);
                }
                if pending.stopped {
                    return;
                }
            }
            std::thread::sleep(INTERVAL);
            self.write_out(&mut spare);
        }
    }

    /// Writes out what is pending, through `spare` (left empty, its memory kept for the next
    /// batch).
    fn write_out(&self, spare: &mut Vec<u8>) {
        let mut sink = lock(&self.sink);
        std::mem::swap(&mut lock(&self.pending).lines, spare);
        write(sink.as_mut(), spare);
        spare.clear();
    }

    /// Adds one line (as formatted by the subscriber, newline included).
    fn add(&self, line: &[u8]) {
        let mut pending = lock(&self.pending);
        if pending.stopped {
            drop(pending);
            write(lock(&self.sink).as_mut(), line);
            return;
        }
        let first = pending.lines.is_empty();
        pending.lines.extend_from_slice(line);
        let full = pending.lines.len() >= HIGH_WATER;
        drop(pending);
        if full {
            self.write_out(&mut Vec::new());
        } else if first {
            self.started.notify_one();
        }
    }
}

/// Writes `bytes` (if any) and flushes. A log line that cannot be written has nowhere to be
/// reported: it is dropped, as the standard output's own writer would drop it.
fn write(sink: &mut dyn Write, bytes: &[u8]) {
    if !bytes.is_empty() {
        let _ = sink.write_all(bytes).and_then(|()| sink.flush());
    }
}

impl Drop for Flush {
    fn drop(&mut self) {
        // Batching stops and what is pending is written under the sink's lock: a line that
        // finds batching stopped waits for the sink, so it cannot overtake the pending ones.
        {
            let mut sink = lock(&self.shared.sink);
            let rest = {
                let mut pending = lock(&self.shared.pending);
                pending.stopped = true;
                std::mem::take(&mut pending.lines)
            };
            write(sink.as_mut(), &rest);
        }
        self.shared.started.notify_one();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// One line's writer: the subscriber formats a line, then writes it in one call.
pub struct Line<'a> {
    shared: &'a Shared,
}

impl Write for Line<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.shared.add(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for BatchedLines {
    type Writer = Line<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        Line {
            shared: &self.shared,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sink the test can read, counting its writes.
    #[derive(Clone, Default)]
    struct Recorded(Arc<Mutex<(Vec<u8>, usize)>>);

    impl Write for Recorded {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let mut inner = lock(&self.0);
            inner.0.extend_from_slice(buf);
            inner.1 += 1;
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Recorded {
        fn text(&self) -> String {
            String::from_utf8(lock(&self.0).0.clone()).unwrap()
        }
        fn writes(&self) -> usize {
            lock(&self.0).1
        }
    }

    fn line(lines: &BatchedLines, text: &str) {
        lines
            .make_writer()
            .write_all(format!("{text}\n").as_bytes())
            .unwrap();
    }

    #[test]
    fn lines_written_together_reach_the_sink_in_one_write_in_their_order() {
        let sink = Recorded::default();
        let (lines, flush) = BatchedLines::new(sink.clone()).unwrap();
        for i in 0..100 {
            line(&lines, &format!("line {i}"));
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while sink.text().lines().count() < 100 {
            assert!(std::time::Instant::now() < deadline, "lines not written");
            std::thread::sleep(Duration::from_millis(5));
        }
        let expected: String = (0..100).map(|i| format!("line {i}\n")).collect();
        assert_eq!(sink.text(), expected);
        assert!(sink.writes() <= 2, "{} writes for 100 lines", sink.writes());
        drop(flush);
    }

    #[test]
    fn dropping_the_guard_writes_what_is_pending_and_later_lines_at_once() {
        let sink = Recorded::default();
        let (lines, flush) = BatchedLines::new(sink.clone()).unwrap();
        line(&lines, "before");
        drop(flush);
        assert_eq!(sink.text(), "before\n");
        line(&lines, "after");
        assert_eq!(sink.text(), "before\nafter\n");
    }

    #[test]
    fn a_full_batch_is_written_by_the_line_that_filled_it() {
        let sink = Recorded::default();
        let (lines, flush) = BatchedLines::new(sink.clone()).unwrap();
        // Hold the writing thread out of the sink so that only a writer can write the batch.
        let long = "x".repeat(1023);
        let held = lock(&lines.shared.sink);
        let writer = std::thread::spawn({
            let lines = lines.clone();
            move || {
                for _ in 0..HIGH_WATER / 1024 {
                    line(&lines, &long);
                }
            }
        });
        std::thread::sleep(INTERVAL * 5);
        assert!(
            !writer.is_finished(),
            "the full batch did not wait for the sink"
        );
        drop(held);
        writer.join().unwrap();
        assert_eq!(sink.text().len(), HIGH_WATER);
        drop(flush);
        assert_eq!(sink.text().len(), HIGH_WATER);
    }
}
