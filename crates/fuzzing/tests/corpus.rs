//! Replays the fuzz targets' committed inputs (`fuzz/seeds/<target>/`, the seed corpus, and
//! `fuzz/regressions/<target>/`, every crash found) through the harnesses: what once broke
//! stays fixed, and the suite covers what the fuzzers start from.

use std::path::PathBuf;

fn replay(target: &str, run: fn(&[u8])) {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz");
    let mut n = 0;
    for dir in ["seeds", "regressions"] {
        let Ok(entries) = std::fs::read_dir(root.join(dir).join(target)) else {
            continue;
        };
        let mut files: Vec<PathBuf> = entries.filter_map(|e| e.ok()).map(|e| e.path()).collect();
        files.sort();
        for f in files {
            let data = std::fs::read(&f).unwrap();
            let name = f.display().to_string();
            if std::panic::catch_unwind(|| run(&data)).is_err() {
                panic!("{name} fails again");
            }
            n += 1;
        }
    }
    assert!(n > 0, "no inputs for {target}: its seed corpus is missing");
    eprintln!("{target}: {n} inputs replayed");
}

#[test]
fn session_inputs() {
    replay("session", fuzzing::session::run);
}

#[test]
fn cdb_inputs() {
    replay("cdb", fuzzing::cdb::run);
}

#[test]
fn config_inputs() {
    replay("config", fuzzing::config::run);
}
