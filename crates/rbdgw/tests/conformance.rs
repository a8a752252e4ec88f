//! libiscsi's conformance suite (`iscsi-test-cu`) against `rbdgw serve`: the SCSI and iSCSI
//! families on a memory LUN and a file LUN, the SCSI family on a LUN of 2,048-byte blocks,
//! the read-only suite on a write-protected target
//! and MultipathIO through two sessions. Every test's outcome is parsed from the verbose
//! output; any failure fails this test, and every skip must be one the README explains.

mod common;

use std::collections::BTreeMap;
use std::process::Command;

use common::{free_port, require, Gateway, Scratch};

const TARGET: &str = "iqn.2026-11.org.rbdgw:conformance";
const RO_TARGET: &str = "iqn.2026-11.org.rbdgw:conformance-ro";

/// Skips the README lists, by the reason libiscsi prints: features that cannot apply to an
/// RBD disk, or that are not built yet.
const ACCEPTED_SKIPS: &[&str] = &[
    "WRITEATOMIC16 is not implemented",
    "is not removable",
    "--allow-sanitize flag is not set",
    "LBPPB < 2",
    "Logical unit is not write-protected",
    // In the single-URL runs; the MultipathIO run below gives it two sessions.
    "Multipath unavailable",
];

#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    Passed,
    Skipped(String),
    Failed,
}

/// Test name and outcome, in run order.
type Results = Vec<(String, Outcome)>;

/// Parses `iscsi-test-cu -V` output, with the summary's (tests run, tests failed).
fn parse(output: &str) -> (Results, Option<(u32, u32)>) {
    let mut suite = String::new();
    let mut test: Option<String> = None;
    let mut skip: Option<String> = None;
    let mut out = Vec::new();
    let mut summary = None;
    for raw in output.lines() {
        let mut line = raw;
        if let Some(s) = line.strip_prefix("Suite: ") {
            suite = s.trim().to_string();
            continue;
        }
        if let Some(rest) = line.strip_prefix("  Test: ") {
            let (name, tail) = rest.split_once(" ...").unwrap_or((rest, ""));
            test = Some(format!("{suite}.{}", name.trim()));
            skip = None;
            // A quiet test ends on its own line: "  Test: Name ...passed".
            line = tail.trim_start();
        }
        if test.is_some() && skip.is_none() {
            if let Some((_, why)) = line.split_once("[SKIPPED]") {
                skip = Some(why.trim().to_string());
            }
        }
        if let Some(t) = &test {
            if line.starts_with("passed") || line.starts_with("FAILED") {
                let o = if line.starts_with("FAILED") {
                    Outcome::Failed
                } else if let Some(s) = skip.take() {
                    Outcome::Skipped(s)
                } else {
                    Outcome::Passed
                };
                out.push((t.clone(), o));
                test = None;
            }
        }
        // "               tests    215    215    210      5        0"
        let words: Vec<&str> = line.split_whitespace().collect();
        if words.first() == Some(&"tests") && words.len() >= 5 {
            if let (Ok(ran), Ok(failed)) = (words[2].parse(), words[4].parse()) {
                summary = Some((ran, failed));
            }
        }
    }
    (out, summary)
}

fn run_suite(family: &str, urls: &[String], log: &std::path::Path) -> Results {
    let out = Command::new("iscsi-test-cu")
        .args([
            "-d",
            "-i",
            "iqn.2026-11.org.rbdgw:test-init1",
            "-I",
            "iqn.2026-11.org.rbdgw:test-init2",
            "-V",
            "-t",
            family,
        ])
        .args(urls)
        .output()
        .expect("run iscsi-test-cu");
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    std::fs::write(log, &text).expect("write log");
    let (results, summary) = parse(&text);
    let (ran, failed) = summary.unwrap_or_else(|| {
        panic!(
            "no CUnit summary from iscsi-test-cu -t {family} {urls:?}; see {}",
            log.display()
        )
    });
    assert_eq!(
        ran as usize,
        results.len(),
        "every test run was parsed ({})",
        log.display()
    );
    assert_eq!(
        failed as usize,
        results
            .iter()
            .filter(|(_, o)| *o == Outcome::Failed)
            .count()
    );
    results
}

#[test]
fn libiscsi_conformance() {
    require("iscsi-test-cu", "libiscsi-bin");
    let dir = Scratch::new("conformance");
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let image = dir.0.join("file.img");
    let config = serde_json::json!({
        "targets": [
            {"target": TARGET, "hosts": [{"host": "gw1", "portal": "p1"}]},
            {"target": RO_TARGET, "tpg_prod_mode_write_protect": 1, "hosts": [{"host": "gw1", "portal": "p1"}]}
        ],
        "portals": [{"name": "p1", "addresses": [addr]}],
        "pools": [{"pool": "rbd", "gateways": [
            {"target": TARGET, "tpg": [
                {"image": "mem", "lun": 0, "backstore": "memory", "size": "128M"},
                {"image": "file", "lun": 1, "backstore": "file", "path": image.display().to_string(), "size": "128M"},
                // LIO's other block sizes, which lrbd configs may ask for.
                {"image": "wide", "lun": 2, "backstore": "memory", "size": "192M", "backstore_block_size": 2048}]},
            {"target": RO_TARGET, "tpg": [{"image": "ro", "backstore": "memory", "size": "16M"}]}]}]
    });
    let gw = Gateway::start(&dir.0, &config.to_string(), "gw1", addr.parse().unwrap());
    let url = |t: &str, lun: u32| format!("iscsi://{addr}/{t}/{lun}");

    let mut all: BTreeMap<String, Results> = BTreeMap::new();
    for (name, lun) in [("memory", 0), ("file", 1)] {
        for family in ["SCSI", "iSCSI"] {
            let log = dir.0.join(format!("{family}-{name}.log"));
            all.insert(
                format!("{family} on the {name} LUN"),
                run_suite(family, &[url(TARGET, lun)], &log),
            );
        }
    }
    let log = dir.0.join("SCSI-2048.log");
    all.insert(
        "SCSI on a memory LUN of 2,048-byte blocks".into(),
        run_suite("SCSI", &[url(TARGET, 2)], &log),
    );
    let log = dir.0.join("readonly.log");
    all.insert(
        "SCSI.ReadOnly on a write-protected LUN".into(),
        run_suite("SCSI.ReadOnly", &[url(RO_TARGET, 0)], &log),
    );
    let log = dir.0.join("multipath.log");
    all.insert(
        "SCSI.MultipathIO through two sessions".into(),
        run_suite("SCSI.MultipathIO", &[url(TARGET, 1), url(TARGET, 1)], &log),
    );

    let mut report = String::new();
    let mut failures = Vec::new();
    let mut unexplained = Vec::new();
    let (mut total, mut passed, mut skipped) = (0, 0, 0);
    for (run, results) in &all {
        let p = results
            .iter()
            .filter(|(_, o)| *o == Outcome::Passed)
            .count();
        let s: Vec<&(String, Outcome)> = results
            .iter()
            .filter(|(_, o)| matches!(o, Outcome::Skipped(_)))
            .collect();
        let f: Vec<&String> = results
            .iter()
            .filter(|(_, o)| *o == Outcome::Failed)
            .map(|(t, _)| t)
            .collect();
        report += &format!(
            "{run}: {} run, {p} passed, {} skipped, {} failed\n",
            results.len(),
            s.len(),
            f.len()
        );
        total += results.len();
        passed += p;
        skipped += s.len();
        failures.extend(f.into_iter().map(|t| format!("{run}: {t}")));
        for (t, o) in s {
            if let Outcome::Skipped(why) = o {
                report += &format!("  skipped {t}: {why}\n");
                if !ACCEPTED_SKIPS.iter().any(|a| why.contains(a)) {
                    unexplained.push(format!("{run}: {t}: {why}"));
                }
            }
        }
    }
    println!("{report}");
    let _ = std::fs::write(
        concat!(env!("CARGO_TARGET_TMPDIR"), "/conformance-report.txt"),
        &report,
    );
    println!(
        "conformance: {total} run, {passed} passed, {skipped} skipped, {} failed",
        failures.len()
    );
    let log = gw.log_text();
    assert!(!log.contains("panicked"), "the gateway panicked:\n{log}");
    assert!(
        failures.is_empty(),
        "libiscsi tests failed (logs kept in {}):\n{}",
        dir.0.display(),
        failures.join("\n")
    );
    assert!(
        unexplained.is_empty(),
        "skips the README does not explain:\n{}",
        unexplained.join("\n")
    );
    assert!(passed >= 360, "too few tests passed: {passed}");
    // The copy offload suites ran and passed, none skipped, on both engines.
    for run in ["SCSI on the memory LUN", "SCSI on the file LUN"] {
        for t in [
            "ExtendedCopy.Simple",
            "ExtendedCopy.DescrLimits",
            "ExtendedCopy.ValidSegDescr",
            "ReceiveCopyResults.CopyStatus",
            "ReceiveCopyResults.OpParams",
        ] {
            let outcome = all[run].iter().find(|(n, _)| n == t).map(|(_, o)| o);
            assert_eq!(outcome, Some(&Outcome::Passed), "{run}: {t}");
        }
    }
    drop(gw);
}

/// A LUN above 255 given by number, as qemu and libiscsi's tools take it (`iscsi://…/300`):
/// libiscsi sends it in peripheral device addressing with the high bits in the bus
/// identifier, as Linux and LIO number LUNs; the gateway serves it as LUN 300.
#[test]
fn a_lun_above_255_is_reached_by_its_number() {
    require("iscsi-readcapacity16", "libiscsi-bin");
    let dir = Scratch::new("conformance-lun300");
    let addr = format!("127.0.0.1:{}", free_port());
    let config = serde_json::json!({
        "targets": [{"target": TARGET, "hosts": [{"host": "gw1", "portal": "p1"}]}],
        "portals": [{"name": "p1", "addresses": [addr]}],
        "pools": [{"pool": "rbd", "gateways": [{"target": TARGET, "tpg": [
            {"image": "zero", "backstore": "memory", "size": "16M"},
            {"image": "high", "lun": 300, "backstore": "memory", "size": "32M"}]}]}]
    });
    let _gw = Gateway::start(&dir.0, &config.to_string(), "gw1", addr.parse().unwrap());
    let read_capacity = |lun: u32| {
        let out = Command::new("iscsi-readcapacity16")
            .arg(format!("iscsi://{addr}/{TARGET}/{lun}"))
            .output()
            .expect("run iscsi-readcapacity16");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let (ok, text) = read_capacity(300);
    assert!(ok && text.contains("Total size:33554432"), "{text}");
    let (ok, text) = read_capacity(301);
    assert!(!ok && text.contains("LOGICAL_UNIT_NOT_SUPPORTED"), "{text}");
}
