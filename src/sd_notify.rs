//! systemd readiness (`Type=notify`): tells the service manager when the server is ready and
//! when it stops, through the datagram socket named by `$NOTIFY_SOCKET` (sd_notify(3)).
//!
//! Hand-written rather than a crate: it is one datagram to a path or an abstract socket name,
//! and without `$NOTIFY_SOCKET` (not under systemd) it does nothing.

use std::os::unix::net::UnixDatagram;

/// Sends `state` (e.g. `"READY=1"`) to the service manager, if there is one; errors are
/// logged at debug and otherwise ignored (readiness must never stop the server).
pub(crate) fn notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    if let Err(e) = send(&path, state) {
        tracing::debug!(error = %e, "cannot notify the service manager");
    }
}

fn send(path: &std::ffi::OsStr, state: &str) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let socket = UnixDatagram::unbound()?;
    let bytes = path.as_bytes();
    // A leading '@' names an abstract socket (sd_notify(3)).
    if let Some(name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
        socket.send_to_addr(state.as_bytes(), &addr)?;
    } else {
        socket.send_to(state.as_bytes(), path)?;
    }
    Ok(())
}
