//! A private RabbitMQ cluster on this machine, for failover tests: its own nodes, ports, data
//! directories, Erlang cookie and epmd, never touching the machine's own node. Everything is
//! stopped and removed when the guard is dropped.

use std::{
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

const BIN: &str = "/usr/lib/rabbitmq/bin";

/// A running cluster.
pub struct RabbitCluster {
    base: PathBuf,
    pub nodes: Vec<Node>,
    epmd_port: u16,
    /// The `rabbitmq-server` scripts started, reaped on drop.
    children: std::sync::Mutex<Vec<std::process::Child>>,
}

/// One node of the cluster.
pub struct Node {
    pub name: String,
    pub amqp_port: u16,
    dist_port: u16,
    dir: PathBuf,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Node {
    /// `amqp://guest:guest@127.0.0.1:<port>/%2f`.
    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.amqp_port)
    }

    fn pid_file(&self) -> PathBuf {
        self.dir.join("pid")
    }

    /// The OS pid of the node's Erlang VM.
    pub fn pid(&self) -> Option<i32> {
        std::fs::read_to_string(self.pid_file())
            .ok()?
            .trim()
            .parse()
            .ok()
    }
}

impl RabbitCluster {
    /// Whether the RabbitMQ server scripts are installed here.
    pub fn available() -> bool {
        Path::new(BIN).join("rabbitmq-server").exists()
    }

    /// Starts `size` nodes and clusters them (the first is the seed).
    pub fn start(size: usize) -> Self {
        let base = std::env::temp_dir().join(crate::unique("rmq_cluster"));
        std::fs::create_dir_all(base.join("home")).unwrap();
        let cookie: String = uuid::Uuid::new_v4().simple().to_string();
        let cookie_path = base.join("home/.erlang.cookie");
        std::fs::write(&cookie_path, cookie).unwrap();
        let _ = Command::new("chmod").arg("400").arg(&cookie_path).status();
        std::fs::write(base.join("empty.conf"), "").unwrap();
        std::fs::write(base.join("enabled_plugins"), "[].").unwrap();
        let tag = &uuid::Uuid::new_v4().simple().to_string()[..6];
        let nodes: Vec<Node> = (0..size)
            .map(|i| {
                let dir = base.join(format!("n{i}"));
                std::fs::create_dir_all(&dir).unwrap();
                Node {
                    name: format!("rabbit-{tag}-{i}@localhost"),
                    amqp_port: free_port(),
                    dist_port: free_port(),
                    dir,
                }
            })
            .collect();
        let cluster = Self {
            base,
            nodes,
            epmd_port: free_port(),
            children: std::sync::Mutex::new(Vec::new()),
        };
        for i in 0..size {
            cluster.launch(i);
        }
        for i in 0..size {
            cluster.wait_node(i);
        }
        let seed = cluster.nodes[0].name.clone();
        for i in 1..size {
            for args in [
                vec!["stop_app"],
                vec!["join_cluster", &seed],
                vec!["start_app"],
            ] {
                let ok = cluster.ctl(i, &args);
                assert!(ok, "rabbitmqctl {args:?} on node {i} failed");
            }
        }
        cluster
    }

    fn env(&self, command: &mut Command, i: usize) {
        let node = &self.nodes[i];
        let dir = &node.dir;
        std::fs::write(
            dir.join("rabbitmq.conf"),
            format!(
                "listeners.tcp.default = {}\nloopback_users = none\n",
                node.amqp_port
            ),
        )
        .unwrap();
        std::fs::write(dir.join("advanced.config"), "[].").unwrap();
        command
            .env("HOME", self.base.join("home"))
            .env("ERL_EPMD_PORT", self.epmd_port.to_string())
            .env("RABBITMQ_NODENAME", &node.name)
            .env("RABBITMQ_NODE_PORT", node.amqp_port.to_string())
            .env("RABBITMQ_DIST_PORT", node.dist_port.to_string())
            .env("RABBITMQ_MNESIA_BASE", dir.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", dir.join("log"))
            .env("RABBITMQ_PID_FILE", node.pid_file())
            .env("RABBITMQ_CONF_ENV_FILE", self.base.join("empty.conf"))
            .env("RABBITMQ_CONFIG_FILE", dir.join("rabbitmq.conf"))
            .env("RABBITMQ_ADVANCED_CONFIG_FILE", dir.join("advanced.config"))
            .env(
                "RABBITMQ_ENABLED_PLUGINS_FILE",
                self.base.join("enabled_plugins"),
            );
    }

    /// (Re)starts node `i` in the background.
    pub fn launch(&self, i: usize) {
        let mut command = Command::new(format!("{BIN}/rabbitmq-server"));
        self.env(&mut command, i);
        let log = std::fs::File::create(self.nodes[i].dir.join("stdout")).unwrap();
        let child = command
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.children.lock().unwrap().push(child);
    }

    /// Waits until node `i` runs its application.
    pub fn wait_node(&self, i: usize) {
        let deadline = Instant::now() + Duration::from_secs(120);
        let pid_file = self.nodes[i].pid_file();
        while !pid_file.exists() {
            assert!(Instant::now() < deadline, "node {i} wrote no pid file");
            std::thread::sleep(Duration::from_millis(200));
        }
        let pid = pid_file.to_string_lossy().into_owned();
        assert!(
            self.ctl(i, &["wait", "--timeout", "120", &pid]),
            "node {i} did not start"
        );
    }

    /// Runs `rabbitmqctl -n <node i> args…`; true on success.
    pub fn ctl(&self, i: usize, args: &[&str]) -> bool {
        self.tool_output(i, "rabbitmqctl", args).is_some()
    }

    /// Runs a RabbitMQ CLI tool against node `i`; its stdout on success.
    pub fn tool_output(&self, i: usize, tool: &str, args: &[&str]) -> Option<String> {
        let mut command = Command::new(format!("{BIN}/{tool}"));
        self.env(&mut command, i);
        let output = command
            .arg("-q")
            .arg("-n")
            .arg(&self.nodes[i].name)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .ok()?;
        output
            .status
            .success()
            .then(|| String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// Every node's AMQP URL, comma separated (for `AMQP_URL`).
    pub fn amqp_urls(&self) -> String {
        self.nodes
            .iter()
            .map(Node::url)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Index of the node that leads `queue`, asked through node `via`.
    pub fn leader_of(&self, queue: &str, via: usize) -> Option<usize> {
        let out = self.tool_output(via, "rabbitmqctl", &["list_queues", "name", "leader"])?;
        let line = out
            .lines()
            .find(|l| l.split_whitespace().next() == Some(queue))?;
        let leader = line.split_whitespace().nth(1)?;
        self.nodes.iter().position(|n| n.name == leader)
    }

    /// Whether node `i` is a follower of `queue`, asked through node `via`.
    pub fn is_follower(&self, queue: &str, i: usize, via: usize) -> bool {
        self.tool_output(via, "rabbitmq-queues", &["quorum_status", queue])
            .is_some_and(|out| {
                out.lines()
                    .any(|l| l.contains(&self.nodes[i].name) && l.contains("follower"))
            })
    }

    /// SIGKILLs node `i`.
    pub fn kill(&self, i: usize) {
        if let Some(pid) = self.nodes[i].pid() {
            crate::process::send(pid.unsigned_abs(), crate::process::Signal::Kill);
            let deadline = Instant::now() + Duration::from_secs(10);
            while Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = std::fs::remove_file(self.nodes[i].pid_file());
        }
    }
}

impl Drop for RabbitCluster {
    fn drop(&mut self) {
        for node in &self.nodes {
            if let Some(pid) = node.pid() {
                crate::process::send(pid.unsigned_abs(), crate::process::Signal::Kill);
            }
        }
        if let Ok(mut children) = self.children.lock() {
            for child in children.iter_mut() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        // epmd refuses to stop while it still lists nodes; they unregister as they die.
        for _ in 0..50 {
            let killed = Command::new("epmd")
                .env("ERL_EPMD_PORT", self.epmd_port.to_string())
                .arg("-kill")
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).contains("Killed"))
                .unwrap_or(true);
            if killed {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = std::fs::remove_dir_all(&self.base);
    }
}
