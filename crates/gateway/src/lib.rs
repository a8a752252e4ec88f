//! The rbdgw gateway: the shared config model and the tokio iSCSI server around the sans-I/O
//! protocol crates.

pub mod config;
