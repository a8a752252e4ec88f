//! Crash consistency on a file image through two gateways: a pipelined writer (FUA writes,
//! plain writes and SYNCHRONIZE CACHE, queue depth 8) runs on one gateway until that
//! gateway is SIGKILLed under it; every write that was durable when it died is then read
//! back through the other gateway, and through the killed one once restarted (the
//! diskchecker method, `common/diskcheck.rs`). Rounds alternate the gateway killed. The RBD
//! variant runs in the `ceph` test.

mod common;

use std::time::Duration;

use common::client::Client;
use common::diskcheck::DiskCheck;
use common::{free_port, Gateway, Scratch};

const TARGET: &str = "iqn.2026-12.org.rbdgw:crash";

#[test]
fn acknowledged_writes_survive_a_killed_gateway() {
    let dir = Scratch::new("crash");
    let port = free_port();
    let addrs = [format!("127.0.0.1:{port}"), format!("127.0.0.2:{port}")];
    let image = dir.0.join("crash.img");
    let config = serde_json::json!({
        "auth": [{"target": TARGET, "authentication": "none"}],
        "targets": [{"target": TARGET, "hosts": [{"host": "gw1", "portal": "p1"}, {"host": "gw2", "portal": "p2"}]}],
        "portals": [{"name": "p1", "addresses": [addrs[0]]}, {"name": "p2", "addresses": [addrs[1]]}],
        "pools": [{"pool": "rbd", "gateways": [{"target": TARGET, "tpg": [
            {"image": "crash", "backstore": "file", "path": image.display().to_string(), "size": "16M", "owner": "gw1"}]}]}]
    })
    .to_string();
    let hosts = ["gw1", "gw2"];
    let start = |i: usize| Gateway::start(&dir.0, &config, hosts[i], addrs[i].parse().unwrap());
    let mut gws = [Some(start(0)), Some(start(1))];
    let login = |i: usize| {
        let mut c = Client::connect(addrs[i].parse().unwrap());
        c.login(
            "iqn.2026-12.org.rbdgw:crash-writer",
            Some(TARGET),
            "ImmediateData=Yes|",
        );
        c
    };
    let mut check = DiskCheck::new(2048, 512);
    for round in 0..4 {
        let (victim, other) = (round % 2, 1 - round % 2);
        let mut c = login(victim);
        // (A unit attention from the previous round's restart comes first.)
        assert_eq!(c.scsi_ready(0, &[0; 6], &[], 0).status, 0);
        let mut gw = gws[victim].take().unwrap();
        let crash_after = Duration::from_millis(700 + 300 * round as u64);
        check.write_until_crash(&mut c, 8, crash_after, || {
            common::signal(&gw.child, 9);
        });
        let _ = gw.child.wait();
        drop(gw);
        let newer_other = check.verify(&mut login(other), hosts[other]);
        gws[victim] = Some(start(victim));
        let newer_restarted = check.verify(&mut login(victim), hosts[victim]);
        assert_eq!(
            newer_other, newer_restarted,
            "both gateways read the same image"
        );
        println!(
            "round {round}: {} killed with {} commands in flight; so far {} writes acknowledged \
             ({} FUA), {} SYNCHRONIZE CACHE; every durable write read back through {} and the \
             restarted {} ({} slots hold a newer write than the last durable one)",
            hosts[victim],
            check.in_flight_at_crash,
            check.acked,
            check.fua_acked,
            check.syncs,
            hosts[other],
            hosts[victim],
            newer_other
        );
        assert!(
            check.in_flight_at_crash > 0,
            "the kill found no command in flight"
        );
    }
    assert!(
        check.fua_acked > 100 && check.syncs > 10,
        "too little was written to tell"
    );
}
