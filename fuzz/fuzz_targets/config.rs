//! The config parser and planner on arbitrary text (crates/fuzzing/src/config.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzzing::config::run(data));
