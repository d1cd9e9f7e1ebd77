//! Running Debian's Postgres tools (PgBouncer, `initdb`, `pg_ctl`, …) as the `postgres` user:
//! they refuse to run as root, and the files they own live in a directory of the test's own
//! that the guard removes.

use std::{
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::Command,
};

/// The `postgres` user's uid and gid, read from `/etc/passwd`.
fn postgres_ids() -> Option<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let mut fields = line.split(':');
        (fields.next()? == "postgres").then_some(())?;
        let _password = fields.next()?;
        let uid = fields.next()?.parse().ok()?;
        let gid = fields.next()?.parse().ok()?;
        Some((uid, gid))
    })
}

/// Whether this process runs as root (then it must switch to `postgres` for these tools).
fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("Uid:"))
                .and_then(|ids| ids.split_whitespace().nth(1).map(|e| e == "0"))
        })
        .unwrap_or(false)
}

/// `program` set to run as `postgres` when this process is root (else as whoever runs the
/// tests, who must then be able to run it).
pub fn command(program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut command = Command::new(program);
    if running_as_root()
        && let Some((uid, gid)) = postgres_ids()
    {
        command.uid(uid).gid(gid);
    }
    command.env_remove("PGDATA").env_remove("PGPORT");
    command
}

/// A fresh directory under the system's temp dir, owned by `postgres` when running as root;
/// removed when the guard is dropped.
pub struct OwnedDir {
    path: PathBuf,
}

impl OwnedDir {
    /// Creates `<tmp>/<prefix>_<random>`, mode 0700, owned by `postgres`.
    pub fn new(prefix: &str) -> Self {
        let path = std::env::temp_dir().join(crate::unique(prefix));
        std::fs::create_dir_all(&path).unwrap();
        let dir = Self { path };
        dir.hand_over(&dir.path);
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&dir.path, std::fs::Permissions::from_mode(0o700)).unwrap();
        dir
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Makes `path` (inside this directory) belong to `postgres`, when running as root.
    pub fn hand_over(&self, path: &Path) {
        if running_as_root()
            && let Some((uid, gid)) = postgres_ids()
        {
            std::os::unix::fs::chown(path, Some(uid), Some(gid)).unwrap();
        }
    }

    /// Writes `contents` to `name` in this directory, owned by `postgres`.
    pub fn write(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.path.join(name);
        std::fs::write(&path, contents).unwrap();
        self.hand_over(&path);
        path
    }
}

impl Drop for OwnedDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// A free TCP port on 127.0.0.1 (free when asked; tests start their servers right after).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
