//! The rbdgw gateway: the shared config model and the tokio iSCSI server around the sans-I/O
//! protocol crates.

pub mod admission;
pub mod config;
pub mod connection;
mod copy_targets;
pub mod discovery;
pub mod lrbd_log;
mod lun_open;
pub mod metrics;
pub mod ownership;
pub mod plan;
pub mod server;
pub mod session;
pub mod status;
pub mod target;
