//! A throwaway Ceph cluster for tests (one monitor, one memstore OSD on loopback), started
//! by `tests/ceph/start-cluster.sh` and stopped by its daemons' PIDs. Included by the test
//! crates that need it (`#[path]`), so there is one copy.
#![allow(dead_code)]

use std::path::Path;
use std::process::Command;

pub struct Cluster {
    dir: std::path::PathBuf,
}

impl Cluster {
    pub fn start() -> Cluster {
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
        let dir = std::env::temp_dir().join(format!("rbdgw-ceph-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let script =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/ceph/start-cluster.sh");
        let out = Command::new("bash")
            .arg(script)
            .arg(&dir)
            .arg(port.to_string())
            .output()
            .expect("start cluster");
        let c = Cluster { dir };
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
        let out = Command::new("rbd")
            .arg("-c")
            .arg(self.conf())
            .args(args)
            .output()
            .expect("rbd");
        assert!(
            out.status.success(),
            "rbd {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
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
