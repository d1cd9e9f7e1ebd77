//! A private Postgres primary and a streaming standby of it, made by the test: `initdb`,
//! `pg_basebackup -R`, `pg_ctl` from Debian's `/usr/lib/postgresql/<version>/bin`, run as the
//! `postgres` user, on ports and in data directories of their own. Both are stopped and their
//! directories removed with the guard (and, through a watchdog, when the test process ends in
//! any other way).

use std::{
    path::{Path, PathBuf},
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use migration::sea_orm::{ConnectionTrait, Database, DatabaseConnection, DbBackend, Statement};

use crate::postgres_user::{OwnedDir, command, free_port};

/// The newest `/usr/lib/postgresql/<version>/bin` that has `initdb`.
fn bin_dir() -> Option<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let version = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

/// A primary and its streaming standby.
pub struct PrimaryStandby {
    dir: OwnedDir,
    bin: PathBuf,
    primary_port: u16,
    standby_port: u16,
    /// Stops both servers when its stdin closes (this process ending, or the guard dropped).
    watchdog: Option<Child>,
}

impl PrimaryStandby {
    /// Whether Debian's Postgres server binaries are installed here.
    pub fn available() -> bool {
        bin_dir().is_some()
    }

    /// Makes the primary, starts it, copies it into a standby with `pg_basebackup -R` and
    /// starts that; returns once both accept connections.
    pub fn start() -> Self {
        let bin = bin_dir().expect("no /usr/lib/postgresql/<version>/bin/initdb");
        let dir = OwnedDir::new("pg_pair");
        let mut pair = Self {
            bin,
            primary_port: free_port(),
            standby_port: free_port(),
            dir,
            watchdog: None,
        };
        pair.watchdog = Some(pair.spawn_watchdog());
        pair.run(
            "initdb",
            &[
                "-D",
                &pair.data("primary"),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
            ],
        );
        let conf = Path::new(&pair.data("primary")).join("postgresql.conf");
        let mut settings = std::fs::read_to_string(&conf).unwrap();
        settings.push_str(&format!(
            "\nlisten_addresses = '127.0.0.1'\n\
             unix_socket_directories = '{sockets}'\n\
             max_connections = 60\n\
             shared_buffers = 16MB\n\
             fsync = off\n\
             synchronous_commit = off\n\
             full_page_writes = off\n\
             wal_level = replica\n\
             max_wal_senders = 4\n\
             hot_standby = on\n\
             wal_receiver_status_interval = 1s\n",
            sockets = pair.dir.path().display(),
        ));
        std::fs::write(&conf, settings).unwrap();
        pair.pg_ctl("primary", pair.primary_port, "start");
        pair.run(
            "pg_basebackup",
            &[
                "-h",
                "127.0.0.1",
                "-p",
                &pair.primary_port.to_string(),
                "-U",
                "postgres",
                "-D",
                &pair.data("standby"),
                "-R",
                "-X",
                "stream",
                "-c",
                "fast",
                "--no-sync",
            ],
        );
        pair.start_standby();
        pair
    }

    fn data(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    fn run(&self, tool: &str, args: &[&str]) {
        let output = command(self.bin.join(tool))
            .args(args)
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {tool}: {e}"));
        assert!(
            output.status.success(),
            "{tool} {args:?} failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }

    fn pg_ctl(&self, name: &str, port: u16, action: &str) {
        let log = self.dir.path().join(format!("{name}.log"));
        let data = self.data(name);
        let mut args = vec!["-D", &data, "-w", "-t", "60"];
        let options = format!("-p {port}");
        let log = log.display().to_string();
        match action {
            "start" => args.extend(["-o", &options, "-l", &log, "start"]),
            _ => args.extend(["-m", "fast", "stop"]),
        }
        self.run("pg_ctl", &args);
    }

    /// A shell that stops both servers once its stdin closes.
    fn spawn_watchdog(&self) -> Child {
        let pg_ctl = self.bin.join("pg_ctl");
        command("/bin/sh")
            .arg("-c")
            .arg(r#"cat >/dev/null; for d in "$1" "$2"; do "$0" -D "$d" -m immediate stop >/dev/null 2>&1; done"#)
            .arg(pg_ctl)
            .arg(self.data("primary"))
            .arg(self.data("standby"))
            .current_dir(self.dir.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    }

    /// The primary's URL for `database`.
    pub fn primary_url(&self, database: &str) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/{database}",
            self.primary_port
        )
    }

    /// The standby's URL for `database`.
    pub fn standby_url(&self, database: &str) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/{database}",
            self.standby_port
        )
    }

    /// Stops the standby (a fast shutdown: its clients are disconnected).
    pub fn stop_standby(&self) {
        self.pg_ctl("standby", self.standby_port, "stop");
    }

    /// Starts the standby (again) and waits until it accepts connections.
    pub fn start_standby(&self) {
        self.pg_ctl("standby", self.standby_port, "start");
    }

    /// Creates `database` on the primary; returns a direct connection to it there once the
    /// standby has it too.
    pub async fn create_database(&self, database: &str) -> DatabaseConnection {
        let admin = Database::connect(self.primary_url("postgres"))
            .await
            .unwrap();
        admin
            .execute_unprepared(&format!("CREATE DATABASE \"{database}\""))
            .await
            .unwrap();
        let _ = admin.close().await;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(standby) = Database::connect(self.standby_url(database)).await {
                let _ = standby.close().await;
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the standby never got {database}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Database::connect(self.primary_url(database)).await.unwrap()
    }

    /// Runs `sql` on the standby's `postgres` database (e.g. `SELECT pg_wal_replay_pause()`).
    pub async fn on_standby(&self, sql: &str) {
        let standby = Database::connect(self.standby_url("postgres"))
            .await
            .unwrap();
        standby
            .query_one_raw(Statement::from_string(DbBackend::Postgres, sql))
            .await
            .unwrap();
        let _ = standby.close().await;
    }

    /// Waits until the standby has replayed everything the primary has written so far.
    pub async fn wait_for_standby(&self) {
        let primary = Database::connect(self.primary_url("postgres"))
            .await
            .unwrap();
        let lsn: String = primary
            .query_one_raw(Statement::from_string(
                DbBackend::Postgres,
                "SELECT pg_current_wal_lsn()::text AS lsn",
            ))
            .await
            .unwrap()
            .unwrap()
            .try_get("", "lsn")
            .unwrap();
        let _ = primary.close().await;
        let standby = Database::connect(self.standby_url("postgres"))
            .await
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let caught_up: bool = standby
                .query_one_raw(Statement::from_string(
                    DbBackend::Postgres,
                    format!("SELECT pg_last_wal_replay_lsn() >= '{lsn}'::pg_lsn AS ok"),
                ))
                .await
                .unwrap()
                .unwrap()
                .try_get("", "ok")
                .unwrap_or(false);
            if caught_up {
                break;
            }
            assert!(Instant::now() < deadline, "the standby did not catch up");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let _ = standby.close().await;
    }
}

impl Drop for PrimaryStandby {
    fn drop(&mut self) {
        if let Some(mut watchdog) = self.watchdog.take() {
            drop(watchdog.stdin.take());
            let _ = watchdog.wait();
        }
        // The data directories go with `self.dir`.
    }
}
