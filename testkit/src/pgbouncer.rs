//! A private PgBouncer in front of the machine's Postgres, for the tests that check clerk-sync
//! behind a connection pooler: its own port, configuration and log in a directory of its own,
//! started as the `postgres` user (PgBouncer refuses to run as root), killed and removed with the
//! guard. Every database name is passed through to the same-named database (`* =`), so each
//! test keeps its own database, and its own pool of `pool_size` server connections.

use std::{
    path::{Path, PathBuf},
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use crate::postgres_user::{OwnedDir, command, free_port};

const PGBOUNCER: &str = "/usr/sbin/pgbouncer";

/// PgBouncer's `pool_mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolMode {
    /// A server connection per client connection, for the client's whole session.
    Session,
    /// A server connection per transaction: the strictest mode.
    Transaction,
}

impl PoolMode {
    fn as_str(self) -> &'static str {
        match self {
            Self::Session => "session",
            Self::Transaction => "transaction",
        }
    }

    /// The `DATABASE_POOLER` value for this mode.
    pub fn pooler(self) -> store::pool::Pooler {
        match self {
            Self::Session => store::pool::Pooler::Session,
            Self::Transaction => store::pool::Pooler::Transaction,
        }
    }
}

/// A running PgBouncer.
pub struct PgBouncer {
    dir: OwnedDir,
    config: PathBuf,
    port: u16,
    mode: PoolMode,
    pool_size: u32,
    child: Option<Child>,
}

impl PgBouncer {
    /// Whether Debian's `pgbouncer` is installed here.
    pub fn available() -> bool {
        Path::new(PGBOUNCER).exists()
    }

    /// Starts PgBouncer in `mode` in front of the test Postgres (`TEST_DATABASE_URL`'s host and
    /// port), with `pool_size` server connections per database, and waits until it accepts
    /// connections.
    pub fn start(mode: PoolMode, pool_size: u32) -> Self {
        Self::start_with(mode, pool_size, "extra_float_digits")
    }

    /// The same with `ignore_startup_parameters` set to `ignored` (deployments set
    /// `extra_float_digits` there for sqlx and JDBC clients; empty: none ignored).
    pub fn start_with(mode: PoolMode, pool_size: u32, ignored: &str) -> Self {
        assert!(
            Self::available(),
            "{PGBOUNCER} is missing: apt-get install pgbouncer"
        );
        let dir = OwnedDir::new("pgbouncer");
        let port = free_port();
        let (host, server_port) = postgres_host_port();
        dir.write("userlist.txt", "\"postgres\" \"\"\n");
        let config = dir.write(
            "pgbouncer.ini",
            &format!(
                "[databases]\n\
                 * = host={host} port={server_port}\n\
                 [pgbouncer]\n\
                 listen_addr = 127.0.0.1\n\
                 listen_port = {port}\n\
                 unix_socket_dir =\n\
                 auth_type = trust\n\
                 auth_file = {userlist}\n\
                 pool_mode = {mode}\n\
                 default_pool_size = {pool_size}\n\
                 min_pool_size = 0\n\
                 reserve_pool_size = 0\n\
                 max_client_conn = 1000\n\
                 ignore_startup_parameters = {ignored}\n\
                 server_check_delay = 0\n\
                 server_login_retry = 1\n\
                 logfile = {log}\n\
                 pidfile = {pid}\n",
                userlist = dir.path().join("userlist.txt").display(),
                mode = mode.as_str(),
                log = dir.path().join("pgbouncer.log").display(),
                pid = dir.path().join("pgbouncer.pid").display(),
            ),
        );
        let mut bouncer = Self {
            dir,
            config,
            port,
            mode,
            pool_size,
            child: None,
        };
        bouncer.launch();
        bouncer
    }

    /// The pool mode it runs in.
    pub fn mode(&self) -> PoolMode {
        self.mode
    }

    /// Server connections per database.
    pub fn pool_size(&self) -> u32 {
        self.pool_size
    }

    /// Its port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The URL of `database` through PgBouncer.
    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// Settings that point a service at `database` through this PgBouncer, as a deployment
    /// would: `DATABASE_URL` through the pooler, `DATABASE_POOLER` its mode.
    pub fn settings(&self, database: &str) -> Vec<(String, String)> {
        vec![
            ("DATABASE_URL".into(), self.url(database)),
            ("DATABASE_POOLER".into(), self.mode.pooler().as_str().into()),
        ]
    }

    /// PgBouncer's log so far (for assertion messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("pgbouncer.log")).unwrap_or_default()
    }

    /// Kills PgBouncer with SIGKILL: every client connection drops at once.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Closing the watchdog's stdin makes it SIGKILL PgBouncer and exit.
            drop(child.stdin.take());
            let _ = child.wait();
        }
        let _ = std::fs::remove_file(self.dir.path().join("pgbouncer.pid"));
    }

    /// Starts it again on the same port (after [`Self::kill`]).
    pub fn restart(&mut self) {
        self.kill();
        self.launch();
    }

    /// Starts PgBouncer under a small shell watchdog that kills it with SIGKILL as soon as its
    /// stdin closes: when [`Self::kill`] closes it, and when this test process ends in any way
    /// (even killed), so no PgBouncer outlives its test.
    fn launch(&mut self) {
        let child = command("/bin/sh")
            .arg("-c")
            .arg(r#""$0" "$1" </dev/null >/dev/null 2>&1 & pid=$!; cat >/dev/null; kill -9 "$pid"; wait "$pid""#)
            .arg(PGBOUNCER)
            .arg(&self.config)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {PGBOUNCER}: {e}"));
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "pgbouncer did not listen on {} within 10 s:\n{}",
                self.port,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The host and port of `TEST_DATABASE_URL` (default `127.0.0.1:5432`).
fn postgres_host_port() -> (String, u16) {
    let root = crate::postgres_root();
    let authority = root
        .split_once("://")
        .map_or(root.as_str(), |(_, rest)| rest)
        .split('/')
        .next()
        .unwrap_or_default();
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    match host_port.rsplit_once(':') {
        Some((host, port)) => (host.to_owned(), port.parse().unwrap_or(5432)),
        None => (host_port.to_owned(), 5432),
    }
}
