//! Stopping the processes that tests, `cargo xtask dev` and the benchmark start: one way to send
//! a signal (the workspace forbids unsafe code, so through `kill(1)`), and one way to stop a
//! child gracefully.

use std::{
    process::{Child, Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

/// A signal to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// SIGTERM: finish what is in flight, then exit.
    Term,
    /// SIGKILL: stop at once.
    Kill,
}

/// Sends `signal` to process `pid`; whether `kill` reported success.
pub fn send(pid: u32, signal: Signal) -> bool {
    let flag = match signal {
        Signal::Term => "-TERM",
        Signal::Kill => "-KILL",
    };
    Command::new("kill")
        .arg(flag)
        .arg(pid.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

/// Stops `child`: SIGTERM, then SIGKILL if it has not exited within `grace`. Returns its exit
/// status when it exited by itself within the grace period.
pub fn stop(child: &mut Child, grace: Duration) -> Option<ExitStatus> {
    send(child.id(), Signal::Term);
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}
