//! The seed's lab, automated: network namespaces with a bridge; gateway "testscsi.novalocal"
//! on 192.168.0.27 and gateway "scsifirst" on 192.168.0.32, each an `rbdgw serve` in a
//! namespace of its own, exporting one image as LUN 0 of the seed's target; a Linux VM
//! (192.168.0.33, Debian kernel, open-iscsi, dm-multipath) on a tap device. The VM writes a
//! pattern through the multipath device while the owner gateway is killed (or its link cut);
//! the writes complete through the other path, the data verifies, and the path comes back
//! when the gateway does. All addresses live inside namespaces this test creates.
//!
//! On RBD the image is the seed's own `rbd/wuxingyi` (the config unchanged), on a throwaway
//! Ceph cluster in the bridge's namespace (192.168.0.10): cutting gateway 1's link cuts it off
//! from Ceph too, so gateway 2 must fence it (blocklist, lock break) to take over.

#[path = "../../../tests/support/ceph.rs"]
mod ceph;
mod common;

use std::io::{BufRead, BufReader};
use std::time::Instant;

use common::lab::{Lab, NsGateway};
use common::{require, Scratch};

const TARGET: &str = "iqn.1994-05.com.redhat:37d4cea93db4";

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Fault {
    Kill,
    Cut,
}

/// Where the image lives.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Backing {
    File,
    Rbd,
}

/// The labs run one at a time: two VMs under TCG on two cores would only slow each other.
static ONE_LAB: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The seed's two gateways in their namespaces, on a file or on the seed's RBD image.
struct SeedLab {
    dir: Scratch,
    lab: Lab,
    /// The Ceph cluster of an RBD lab, running as long as the lab.
    _cluster: Option<ceph::Cluster>,
    cfg: std::path::PathBuf,
    conf: Option<String>,
}

impl SeedLab {
    fn new(name: &str, tag: &str, backing: Backing) -> SeedLab {
        let dir = Scratch::new(name);
        let lab = Lab::new(tag, &["192.168.0.27/24", "192.168.0.32/24"]);
        let seed = include_str!("../../../examples/seed-config.json");
        let mut doc: serde_json::Value = serde_json::from_str(seed).unwrap();
        let cluster = (backing == Backing::Rbd).then(|| {
            let c = ceph::Cluster::start_in(Some(&lab.br), lab.ceph_address());
            c.rbd(&["create", "wuxingyi", "--size", "256M"]);
            c
        });
        let conf = cluster.as_ref().map(|c| c.conf());
        if backing == Backing::File {
            // The seed's config, with the image on a file both gateways open.
            let image = dir.0.join("wuxingyi.img");
            doc["pools"][0]["gateways"][0]["tpg"][0] = serde_json::json!({
                "image": "wuxingyi", "backstore": "file", "path": image.display().to_string(), "size": "256M"});
        }
        let cfg = dir.0.join("config.json");
        std::fs::write(&cfg, doc.to_string()).unwrap();
        SeedLab {
            dir,
            lab,
            _cluster: cluster,
            cfg,
            conf,
        }
    }

    /// Starts gateway `i` (0: "testscsi.novalocal" on .27, 1: "scsifirst" on .32).
    fn start(&self, i: usize) -> NsGateway {
        let host = ["testscsi.novalocal", "scsifirst"][i];
        NsGateway::start(
            &self.lab.gws[i],
            &self.cfg,
            host,
            self.conf.as_deref(),
            self.dir.0.join(format!("gw{}.log", i + 1)),
        )
    }
}

fn run_lab(fault: Fault, backing: Backing) {
    let _one = ONE_LAB.lock().unwrap_or_else(|e| e.into_inner());
    require("qemu-system-x86_64", "qemu-system-x86");
    require("multipathd", "multipath-tools");
    let seed_lab = SeedLab::new(
        &format!("lab-{fault:?}-{backing:?}").to_lowercase(),
        &format!(
            "{}{}",
            if fault == Fault::Kill { "k" } else { "c" },
            if backing == Backing::Rbd { "r" } else { "" }
        ),
        backing,
    );
    let (dir, lab) = (&seed_lab.dir, &seed_lab.lab);
    let mut gw1 = seed_lab.start(0);
    let gw2 = seed_lab.start(1);

    let action = match fault {
        Fault::Kill => "KILL",
        Fault::Cut => "CUT",
    };
    let guest = common::vm::lab_guest(include_str!("../../../tests/lab/guest-multipath.sh"))
        .replace("@ACTION@", action);
    let (kernel, initrd) = common::vm::build_vm(&dir.0, &guest);
    let mut vm = common::vm::spawn_on_tap(&lab.br, &kernel, &initrd, false);
    let console = BufReader::new(vm.stdout.take().expect("console"));
    let mut seen = Vec::new();
    let mut fault_at = None;
    let mut result = None;
    for line in console.lines().map_while(Result::ok) {
        println!("vm| {line}");
        seen.push(line.clone());
        if line.contains(&format!("RBDGW-LAB: {action}-NOW")) {
            fault_at = Some(Instant::now());
            match fault {
                Fault::Kill => gw1.kill(),
                Fault::Cut => lab.link(0, false),
            }
        } else if line.contains("RBDGW-LAB: RESTORE-NOW") {
            match fault {
                Fault::Kill => gw1 = seed_lab.start(0),
                Fault::Cut => lab.link(0, true),
            }
        } else if line.contains("RBDGW-LAB: WRITTEN") {
            if let Some(t) = fault_at {
                println!(
                    "host: writes completed {:.1}s after the fault",
                    t.elapsed().as_secs_f64()
                );
            }
        } else if line.contains("RBDGW-LAB: OK") || line.contains("RBDGW-LAB: FAIL") {
            result = Some(line.clone());
        }
    }
    let _ = vm.wait();
    let logs = format!("gw1 log:\n{}\ngw2 log:\n{}", gw1.log_text(), gw2.log_text());
    let tail = seen
        .iter()
        .rev()
        .take(40)
        .rev()
        .cloned()
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        result
            .as_deref()
            .is_some_and(|r| r.contains("RBDGW-LAB: OK")),
        "lab ({fault:?}) failed:\n{tail}\n{logs}"
    );
    assert!(
        gw2.log_text().contains("this gateway holds the write lock"),
        "gw2 took the lock:\n{logs}"
    );
    // The seed's step 8: discovery on either gateway lists both portals with their tags.
    for portal in [
        format!("192.168.0.27:3260,1 {TARGET}"),
        format!("192.168.0.32:3260,2 {TARGET}"),
    ] {
        let n = seen.iter().filter(|l| l.contains(&portal)).count();
        assert_eq!(n, 2, "{portal} in both discoveries");
    }
    match (fault, backing) {
        (Fault::Cut, Backing::File) => {
            // The partitioned owner still reaches the shared file: it handed the lock over
            // before gw2 wrote, so no write of its can land after the takeover.
            assert!(
                gw1.log_text().contains("handed the write lock over"),
                "{logs}"
            );
        }
        (_, Backing::Rbd) => {
            // Cut off from Ceph (or dead), the owner cannot answer: gw2 fenced it.
            assert!(
                gw2.log_text()
                    .contains("fenced the unresponsive lock owner"),
                "{logs}"
            );
        }
        _ => {}
    }
    assert!(!logs.contains("panicked"), "{logs}");
}

#[test]
fn seed_lab_owner_killed_under_io() {
    run_lab(Fault::Kill, Backing::File);
}

#[test]
fn seed_lab_owner_partitioned_under_io() {
    run_lab(Fault::Cut, Backing::File);
}

/// The seed's scenario on its own RBD image: the owner's link is cut under I/O, which cuts it
/// off from Ceph as well; the other gateway fences it and the VM's writes complete.
#[test]
fn seed_lab_on_rbd_owner_partitioned_under_io() {
    run_lab(Fault::Cut, Backing::Rbd);
}

/// fence_mpath and fence_scsi's sequences (their exact mpathpersist and sg_persist command
/// lines) from two nodes in the VM, each logged in to both gateways: register, reserve,
/// fence by PREEMPT AND ABORT, unfence, and a node that logs in again under new ISIDs.
fn fence_agents(backing: Backing) {
    let _one = ONE_LAB.lock().unwrap_or_else(|e| e.into_inner());
    require("qemu-system-x86_64", "qemu-system-x86");
    require("mpathpersist", "multipath-tools");
    let tag = if backing == Backing::Rbd { "fr" } else { "f" };
    let seed_lab = SeedLab::new(&format!("fence-{backing:?}").to_lowercase(), tag, backing);
    let (gw1, gw2) = (seed_lab.start(0), seed_lab.start(1));
    let guest = common::vm::lab_guest(include_str!("../../../tests/lab/guest-fence.sh"));
    let (kernel, initrd) = common::vm::build_vm(&seed_lab.dir.0, &guest);
    let mut vm = common::vm::spawn_on_tap(&seed_lab.lab.br, &kernel, &initrd, false);
    let console = BufReader::new(vm.stdout.take().expect("console"));
    let mut seen = Vec::new();
    for line in console.lines().map_while(Result::ok) {
        if line.contains("RBDGW-FENCE") {
            println!("vm| {line}");
        }
        seen.push(line);
    }
    let _ = vm.wait();
    let logs = format!("gw1 log:\n{}\ngw2 log:\n{}", gw1.log_text(), gw2.log_text());
    let tail = seen[seen.len().saturating_sub(60)..].join("\n");
    assert!(
        seen.iter().any(|l| l.contains("RBDGW-FENCE: OK")),
        "fence sequences ({backing:?}):\n{tail}\n{logs}"
    );
    assert!(!logs.contains("panicked"), "{logs}");
}

#[test]
fn fence_agents_through_both_gateways_on_a_file() {
    fence_agents(Backing::File);
}

#[test]
fn fence_agents_through_both_gateways_on_rbd() {
    fence_agents(Backing::Rbd);
}

/// Copy offload from a Linux initiator: two LUNs on two gateways, copied by sg_xcopy and
/// `ddpt --xcopy` (EXTENDED COPY) down paths through either gateway, each copy read back
/// through the other one and compared with the source (`tests/lab/guest-copy.sh`).
fn copy_offload_from_linux(backing: Backing) {
    let _one = ONE_LAB.lock().unwrap_or_else(|e| e.into_inner());
    require("qemu-system-x86_64", "qemu-system-x86");
    require("ddpt", "ddpt");
    let tag = if backing == Backing::Rbd { "cr" } else { "c" };
    let dir = Scratch::new(&format!("copy-{backing:?}").to_lowercase());
    let lab = Lab::new(tag, &["192.168.0.27/24", "192.168.0.32/24"]);
    let target = "iqn.2026-11.org.rbdgw:copyvm";
    // On RBD also a copy long enough to be aborted from the VM (LUNs 2 and 3).
    let long = backing == Backing::Rbd;
    let cluster = long.then(|| {
        // Room for two 64 MiB images and two of 1.5 GiB, one of them written whole.
        let c = ceph::Cluster::start_sized(Some(&lab.br), lab.ceph_address(), Some(4 << 30));
        for img in ["src", "dst"] {
            c.rbd(&["create", img, "--size", "64M"]);
        }
        // A copy long enough to be aborted from the VM: LUN 2 full of data (holes would be
        // copied as zeroes, without reading), LUN 3 empty.
        for img in ["longsrc", "longdst"] {
            c.rbd(&["create", img, "--size", "1536M"]);
        }
        c.rbd(&[
            "bench",
            "--io-type",
            "write",
            "--io-size",
            "4M",
            "--io-total",
            "1536M",
            "--io-pattern",
            "seq",
            "longsrc",
        ]);
        c
    });
    let lun = |image: &str, n: u64| match backing {
        Backing::Rbd => serde_json::json!({"image": image, "lun": n, "owner": "gw1"}),
        Backing::File => {
            serde_json::json!({"image": image, "lun": n, "owner": "gw1", "backstore": "file",
            "path": dir.0.join(format!("{image}.img")).display().to_string(), "size": "64M"})
        }
    };
    let mut luns = vec![lun("src", 0), lun("dst", 1)];
    if long {
        luns.extend([lun("longsrc", 2), lun("longdst", 3)]);
    }
    let config = serde_json::json!({
        "auth": [{"target": target, "authentication": "none"}],
        "targets": [{"target": target, "hosts": [{"host": "gw1", "portal": "p1"}, {"host": "gw2", "portal": "p2"}]}],
        "portals": [{"name": "p1", "addresses": ["192.168.0.27"]}, {"name": "p2", "addresses": ["192.168.0.32"]}],
        "pools": [{"pool": "rbd", "gateways": [{"target": target, "tpg": luns}]}]
    });
    let cfg = dir.0.join("config.json");
    std::fs::write(&cfg, config.to_string()).unwrap();
    let conf = cluster.as_ref().map(|c| c.conf());
    let gws: Vec<NsGateway> = (0..2)
        .map(|i| {
            NsGateway::start(
                &lab.gws[i],
                &cfg,
                &format!("gw{}", i + 1),
                conf.as_deref(),
                dir.0.join(format!("gw{}.log", i + 1)),
            )
        })
        .collect();
    let guest = common::vm::lab_guest(include_str!("../../../tests/lab/guest-copy.sh"))
        .replace("@LONG_COPY@", if long { "1" } else { "0" })
        .replace("@DISKS@", if long { "8" } else { "4" });
    let (kernel, initrd) = common::vm::build_vm(&dir.0, &guest);
    let mut vm = common::vm::Vm(common::vm::spawn_on_tap(&lab.br, &kernel, &initrd, false));
    let console = BufReader::new(vm.0.stdout.take().expect("console"));
    let mut seen = Vec::new();
    for line in console.lines().map_while(Result::ok) {
        if ["RBDGW-COPY", "ddpt", "xcopy", "revoked", "reset"]
            .iter()
            .any(|w| line.contains(w))
        {
            println!("vm| {line}");
        }
        seen.push(line);
    }
    let logs: String = gws
        .iter()
        .enumerate()
        .map(|(i, g)| format!("gw{} log:\n{}\n", i + 1, g.log_text()))
        .collect();
    let tail = seen[seen.len().saturating_sub(60)..].join("\n");
    assert!(
        seen.iter().any(|l| l.contains("RBDGW-COPY: OK")),
        "copies from the VM ({backing:?}):\n{tail}\n{logs}"
    );
    assert_eq!(
        seen.iter()
            .filter(|l| l.contains("RBDGW-COPY: VERIFIED"))
            .count(),
        if long { 6 } else { 4 },
        "sg_xcopy, ddpt --xcopy, ODX, the revoked token (and on RBD the aborted copy and the \
         copy after it)"
    );
    assert!(!logs.contains("panicked"), "{logs}");
    // The reset was the initiator's task management function, received by gw1.
    assert!(
        !long || gws[0].log_text().contains("LOGICAL UNIT RESET"),
        "{logs}"
    );
}

#[test]
fn copy_offload_from_linux_on_files() {
    copy_offload_from_linux(Backing::File);
}

#[test]
fn copy_offload_from_linux_on_rbd() {
    copy_offload_from_linux(Backing::Rbd);
}
