//! The fuzz harnesses: each takes arbitrary bytes, drives one part of the gateway without
//! sockets and panics when an invariant breaks. `fuzz/` runs them under libFuzzer; the
//! suite (`tests/corpus.rs`) replays the committed seed corpus and every crash kept.

pub mod cdb;
pub mod config;
mod input;
pub mod session;

use std::sync::OnceLock;

/// One runtime for the LUs' file I/O (tokio's blocking pool), kept across inputs.
fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a tokio runtime")
    })
}
