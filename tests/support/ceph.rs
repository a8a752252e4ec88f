//! A throwaway Ceph cluster for tests (one monitor, one memstore OSD on loopback), started
//! by `tests/ceph/start-cluster.sh` and stopped by its daemons' PIDs. Included by the test
//! crates that need it (`#[path]`), so there is one copy.
#![allow(dead_code)]

use std::path::Path;
use std::process::Command;

pub struct Cluster {
    dir: std::path::PathBuf,
    /// The network namespace the daemons (and our `rbd` calls) run in, if not the host's.
    netns: Option<String>,
}

impl Cluster {
    pub fn start() -> Cluster {
        Self::start_in(None, "127.0.0.1")
    }

    /// A command run in the cluster's network namespace.
    fn command(&self, program: &str) -> Command {
        match &self.netns {
            None => Command::new(program),
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, program]);
                c
            }
        }
    }

    /// Starts the cluster on `addr` inside the network namespace `netns` (created by the
    /// calling test), or on the host's loopback.
    pub fn start_in(netns: Option<&str>, addr: &str) -> Cluster {
        Self::start_sized(netns, addr, None)
    }

    /// [`Cluster::start_in`] with an OSD of `memstore_bytes` (in memory; the script's 1 GiB
    /// when `None`).
    pub fn start_sized(netns: Option<&str>, addr: &str, memstore_bytes: Option<u64>) -> Cluster {
        for (bin, pkg) in [
            ("ceph-mon", "ceph-mon"),
            ("ceph-osd", "ceph-osd"),
            ("rbd", "ceph-common"),
        ] {
            let found = Command::new("sh")
                .args(["-c", &format!("command -v {bin}")])
                .output()
                .unwrap()
                .status
                .success();
            assert!(found, "{bin} missing: apt-get install {pkg}");
        }
        // Unique per cluster: a test binary may start several, one after another.
        static STARTED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "rbdgw-ceph-{}-{}{}",
            std::process::id(),
            STARTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            netns.map_or(String::new(), |n| format!("-{n}"))
        ));
        let _ = std::fs::remove_dir_all(&dir);
        // In a namespace of its own the monitor's default port is free.
        let port = match netns {
            Some(_) => 3300,
            None => std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port(),
        };
        let script =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/ceph/start-cluster.sh");
        let c = Cluster {
            dir,
            netns: netns.map(str::to_string),
        };
        let mut start = c.command("bash");
        if let Some(bytes) = memstore_bytes {
            start.env("MEMSTORE_BYTES", bytes.to_string());
        }
        let out = start
            .arg(script)
            .arg(&c.dir)
            .arg(port.to_string())
            .arg(addr)
            .output()
            .expect("start cluster");
        assert!(
            out.status.success(),
            "cluster start failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        c
    }

    pub fn conf(&self) -> String {
        self.dir.join("ceph.conf").display().to_string()
    }

    pub fn rbd(&self, args: &[&str]) {
        self.tool("rbd", args);
    }

    /// Runs a Ceph command-line tool (`rbd`, `rados`, `ceph`) on this cluster; its stdout.
    pub fn tool(&self, program: &str, args: &[&str]) -> String {
        self.run(program, args)
            .unwrap_or_else(|e| panic!("{program} {args:?}: {e}"))
    }

    /// Like [`Cluster::tool`], None when the tool fails.
    pub fn try_tool(&self, program: &str, args: &[&str]) -> Option<String> {
        self.run(program, args).ok()
    }

    fn run(&self, program: &str, args: &[&str]) -> Result<String, String> {
        let out = self
            .command(program)
            .arg("-c")
            .arg(self.conf())
            .args(args)
            .output()
            .map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Stop exactly the daemons this cluster started, by their PIDs.
        if let Ok(entries) = std::fs::read_dir(self.dir.join("run")) {
            for e in entries.flatten() {
                if e.path().extension().is_some_and(|x| x == "pid") {
                    if let Ok(pid) = std::fs::read_to_string(e.path()) {
                        let _ = Command::new("kill").args(["-9", pid.trim()]).status();
                    }
                }
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
