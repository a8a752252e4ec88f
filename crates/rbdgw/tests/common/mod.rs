//! Shared harness of the integration tests: a running `rbdgw serve` on loopback.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A scratch directory removed on drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(name: &str) -> Scratch {
        Scratch::new_in(&std::env::temp_dir(), name)
    }

    /// A scratch directory under `base` (/dev/shm for an image in memory).
    pub fn new_in(base: &std::path::Path, name: &str) -> Scratch {
        let d = base.join(format!("rbdgw-test-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("scratch dir");
        Scratch(d)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        // Kept when a test fails, for its logs.
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// A free TCP port on 127.0.0.1 (bound and released; good enough for tests).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// A gateway process, killed (by its PID) on drop.
pub struct Gateway {
    pub child: Child,
    pub addr: SocketAddr,
    pub log: PathBuf,
}

impl Gateway {
    /// Starts `rbdgw serve --config <config> --host <host>` and waits until `addr` accepts.
    pub fn start(dir: &std::path::Path, config: &str, host: &str, addr: SocketAddr) -> Gateway {
        Self::start_with(dir, config, host, addr, &[])
    }

    /// Like [`Gateway::start`], with more `serve` arguments.
    pub fn start_with(
        dir: &std::path::Path,
        config: &str,
        host: &str,
        addr: SocketAddr,
        args: &[&str],
    ) -> Gateway {
        let cfg = dir.join(format!("config-{host}.json"));
        std::fs::write(&cfg, config).expect("write config");
        let log = dir.join(format!("{host}.log"));
        let child = Command::new(env!("CARGO_BIN_EXE_rbdgw"))
            .args(["serve", "--config"])
            .arg(&cfg)
            .args(["--host", host])
            .args(args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("spawn rbdgw");
        let gw = Gateway { child, addr, log };
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            assert!(
                Instant::now() < deadline,
                "rbdgw did not listen on {addr}; log:\n{}",
                gw.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        gw
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Its resident set size, KiB (`VmRSS` of /proc/PID/status).
    pub fn rss_kib(&self) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("VmRSS:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            })
            .unwrap_or(0)
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        // SAFETY: kill(2) on the PID of a child we spawned and have not reaped.
        unsafe { libc_kill(self.child.id() as i32, 15) };
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(s) = self.child.try_wait().expect("wait") {
                return s;
            }
            assert!(Instant::now() < deadline, "rbdgw did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}

/// Sends `sig` to a child process of this test (by its PID).
pub fn signal(child: &Child, sig: i32) {
    // SAFETY: kill(2) on the PID of a child we spawned and have not reaped.
    unsafe { libc_kill(child.id() as i32, sig) };
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether a program is on PATH.
pub fn have(program: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
        .unwrap_or(false)
}

/// Requires a program the test cannot do without; the message says how to get it.
pub fn require(program: &str, package: &str) {
    assert!(
        have(program),
        "{program} is not installed: apt-get install {package} (or run ./scripts/test, which does)"
    );
}

/// Fails the test when `ok` is false, with `why` as the last words of its output: the long
/// `details` (gateway logs, a VM's console) are printed before it, so that a CI which keeps
/// only the head and the tail of a run's output still shows what failed.
#[track_caller]
pub fn ensure(ok: bool, why: impl FnOnce() -> String, details: impl FnOnce() -> String) {
    if !ok {
        println!("{}", details());
        panic!("{}", why());
    }
}

/// Reads lines of a child's output (for tools that print progress).
pub fn lines(r: impl std::io::Read) -> Vec<String> {
    BufReader::new(r).lines().map_while(Result::ok).collect()
}

pub mod client;
pub mod diskcheck;
pub mod lab;
pub mod reservations;
pub mod vm;
