//! Whole full-feature sessions against memory LUs (crates/fuzzing/src/session.rs says what is checked).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzzing::session::run(data));
