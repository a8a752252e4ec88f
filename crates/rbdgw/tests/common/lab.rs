//! The labs' network: namespaces this test creates, a bridge in one of them, one namespace
//! per gateway on a veth into the bridge, and a tap device for the VM. Nothing leaves them.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Where a lab's Ceph cluster listens.
pub const CEPH_ADDR: &str = "192.168.0.10";

/// Namespaces and links of one lab, removed on drop.
pub struct Lab {
    /// The bridge's namespace (the VM's tap, and the Ceph cluster if any, live there).
    pub br: String,
    /// One namespace per gateway.
    pub gws: Vec<String>,
}

impl Lab {
    /// A lab with one gateway per address (`a.b.c.d/len`); bridge port `gwN` is gateway N's.
    pub fn new(tag: &str, addrs: &[&str]) -> Lab {
        let id = std::process::id();
        let lab = Lab {
            br: format!("rbdgw-br{tag}-{id}"),
            gws: (1..=addrs.len())
                .map(|i| format!("rbdgw-g{i}{tag}-{id}"))
                .collect(),
        };
        for ns in std::iter::once(&lab.br).chain(&lab.gws) {
            ip(&["netns", "add", ns]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        ip(&["-n", &lab.br, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", &lab.br, "link", "set", "br0", "up"]);
        for (i, (ns, addr)) in lab.gws.iter().zip(addrs).enumerate() {
            let port = format!("gw{}", i + 1);
            ip(&[
                "-n", &lab.br, "link", "add", &port, "type", "veth", "peer", "name", "eth0",
                "netns", ns,
            ]);
            ip(&["-n", &lab.br, "link", "set", &port, "master", "br0", "up"]);
            ip(&["-n", ns, "addr", "add", addr, "dev", "eth0"]);
            ip(&["-n", ns, "link", "set", "eth0", "up"]);
        }
        ip(&["-n", &lab.br, "tuntap", "add", "dev", "tap0", "mode", "tap"]);
        ip(&["-n", &lab.br, "link", "set", "tap0", "master", "br0", "up"]);
        lab
    }

    /// Puts the address a lab's Ceph cluster listens on, [`CEPH_ADDR`], on the bridge (the
    /// cluster runs in the bridge's namespace, which every gateway reaches); returns it.
    pub fn ceph_address(&self) -> &'static str {
        ip(&[
            "-n",
            &self.br,
            "addr",
            "add",
            &format!("{CEPH_ADDR}/24"),
            "dev",
            "br0",
        ]);
        CEPH_ADDR
    }

    /// Cuts or restores gateway `i`'s link (0-based; its bridge port).
    pub fn link(&self, i: usize, up: bool) {
        let port = format!("gw{}", i + 1);
        ip(&[
            "-n",
            &self.br,
            "link",
            "set",
            &port,
            if up { "up" } else { "down" },
        ]);
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for ns in std::iter::once(&self.br).chain(&self.gws) {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// An `rbdgw serve` inside a namespace; killed by PID on drop.
pub struct NsGateway {
    child: Child,
    pub log: PathBuf,
}

impl NsGateway {
    pub fn start(
        ns: &str,
        config: &Path,
        host: &str,
        ceph_conf: Option<&str>,
        log: PathBuf,
    ) -> NsGateway {
        Self::start_with(ns, config, host, ceph_conf, log, &[])
    }

    /// Like [`NsGateway::start`], with more `serve` arguments.
    pub fn start_with(
        ns: &str,
        config: &Path,
        host: &str,
        ceph_conf: Option<&str>,
        log: PathBuf,
        extra: &[&str],
    ) -> NsGateway {
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                ns,
                env!("CARGO_BIN_EXE_rbdgw"),
                "serve",
                "--config",
            ])
            .arg(config)
            .args(["--host", host])
            .args(ceph_conf.map(|c| ["--ceph-conf", c]).into_iter().flatten())
            .args(extra)
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&log)
                    .expect("log"),
            )
            .spawn()
            .expect("start rbdgw");
        let g = NsGateway { child, log };
        let deadline = Instant::now() + Duration::from_secs(30);
        // The log is appended to across restarts: this start is up once the server has said
        // "listening" more often than it said "stopped" (only the server's own lines count:
        // other messages say "stopped" too).
        let count = |t: &str, what: &str| t.matches(&format!("gateway::server: {what}")).count();
        while {
            let t = g.log_text();
            count(&t, "listening") < 1 + count(&t, "stopped")
        } {
            assert!(
                Instant::now() < deadline,
                "gateway {host} did not start:\n{}",
                g.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        g
    }

    /// The log, without colour codes.
    pub fn log_text(&self) -> String {
        let raw = std::fs::read_to_string(&self.log).unwrap_or_default();
        let mut out = String::with_capacity(raw.len());
        let mut it = raw.chars();
        while let Some(c) = it.next() {
            if c == '\x1b' {
                // CSI ... final byte in '@'..='~'
                for d in it.by_ref() {
                    if ('@'..='~').contains(&d) && d != '[' {
                        break;
                    }
                }
            } else {
                out.push(c);
            }
        }
        out
    }

    /// Whether the process still runs (false: it exited or died, on its own or killed).
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then waits for it to exit (up to 30 s).
    pub fn terminate(&mut self) -> bool {
        super::signal(&self.child, 15);
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    /// SIGSTOP / SIGCONT, by its PID.
    pub fn pause(&self, stop: bool) {
        super::signal(&self.child, if stop { 19 } else { 18 });
    }
}

impl Drop for NsGateway {
    fn drop(&mut self) {
        self.pause(false);
        self.kill();
    }
}
