//! Stopping the processes that tests, `cargo xtask dev` and the benchmark start: one way to send
//! a signal (the workspace forbids unsafe code, so through `kill(1)`), and one way to stop a
//! child gracefully; and the services run as processes of their own, for tests that need
//! each process's own settings (traces, logs).

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

/// A free TCP port on 127.0.0.1 (bound and released; a service started right after takes it).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A binary of this workspace built beside the test's own (`cargo test --workspace` builds
/// every package's binaries): `sibling_binary(env!("CARGO_BIN_EXE_worker"), "ingress")`.
pub fn sibling_binary(own: &str, name: &str) -> std::path::PathBuf {
    let path = std::path::Path::new(own).with_file_name(name);
    assert!(
        path.exists(),
        "{} is not built: run `cargo build -p {name}` first (`cargo test --workspace` builds it)",
        path.display()
    );
    path
}

/// One of the project's services run as a process of its own, with exactly the given settings,
/// writing its output to a file (never blocked on a full pipe). Killed when dropped.
pub struct ServiceProcess {
    child: Child,
    log: std::path::PathBuf,
}

impl ServiceProcess {
    /// Starts `binary` with `args` and exactly `settings` as its environment.
    pub fn start(
        binary: &std::path::Path,
        args: &[&str],
        settings: impl IntoIterator<Item = (String, String)>,
    ) -> Self {
        let log = std::env::temp_dir().join(format!("{}.log", crate::unique("clerk_sync_service")));
        let file = std::fs::File::create(&log).unwrap();
        let child = Command::new(binary)
            .args(args)
            .env_clear()
            .envs(settings)
            .stdout(Stdio::from(file.try_clone().unwrap()))
            .stderr(Stdio::from(file))
            .spawn()
            .unwrap();
        Self { child, log }
    }

    /// What it wrote so far.
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until `GET url` answers 200 (its `/readyz`), 30 s at most.
    pub async fn wait_ready(&mut self, url: &str) {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(response) = client.get(url).send().await
                && response.status() == 200
            {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "the service exited ({status}) before it was ready:\n{}",
                    self.output()
                );
            }
            assert!(
                Instant::now() < deadline,
                "{url} not ready within 30 s:\n{}",
                self.output()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Stops it (SIGTERM, then SIGKILL after 20 s) and returns everything it wrote.
    pub fn stop(mut self) -> String {
        stop(&mut self.child, Duration::from_secs(20));
        self.output()
    }
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}
