//! Progress output of the long-running commands (dlq replay, backfill, rotate-token-key).

use std::io::Write;

/// A one-line progress bar on stderr (drawn only for 10 or more messages).
pub fn progress_bar(done: usize, total: usize) {
    if total < 10 {
        return;
    }
    let width = 30;
    let filled = done * width / total.max(1);
    let mut err = std::io::stderr();
    let _ = write!(
        err,
        "\r[{}{}] {done}/{total}",
        "#".repeat(filled),
        "-".repeat(width - filled)
    );
    if done == total {
        let _ = writeln!(err);
    }
}
