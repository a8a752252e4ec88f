//! The service manager's readiness protocol (sd_notify(3)): a datagram to the socket named by
//! `$NOTIFY_SOCKET`, a path or, with a leading `@`, an abstract name. Without the variable
//! (not started by systemd with `Type=notify`) nothing is sent. Ten lines do not need a crate.

use std::os::unix::net::{SocketAddr, UnixDatagram};

/// Sends `state` (e.g. `READY=1`); a failure is logged, never fatal: the gateway serves
/// whether or not its manager heard.
pub fn notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let sent = (|| -> std::io::Result<()> {
        let sock = UnixDatagram::unbound()?;
        let bytes = std::os::unix::ffi::OsStrExt::as_bytes(path.as_os_str());
        let addr = match bytes.strip_prefix(b"@") {
            Some(name) => {
                <SocketAddr as std::os::linux::net::SocketAddrExt>::from_abstract_name(name)?
            }
            None => SocketAddr::from_pathname(&path)?,
        };
        sock.send_to_addr(state.as_bytes(), &addr)?;
        Ok(())
    })();
    if let Err(e) = sent {
        tracing::warn!("telling the service manager {state:?} on {path:?} failed: {e}");
    }
}
