//! Arbitrary CDBs on a memory logical unit, checked against a model of its data (crates/fuzzing/src/cdb.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzzing::cdb::run(data));
