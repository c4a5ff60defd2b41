//! systemd integration: readiness, status and watchdog notifications (`sd_notify`), and the
//! login socket handed over by `tillgated.socket` (socket activation). Outside systemd (no
//! NOTIFY_SOCKET, no LISTEN_FDS) every function here is a no-op.

use std::os::fd::{AsFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use nix::sys::socket::{SockType, getsockopt, sockopt};
use sd_notify::NotifyState;

use crate::server::Core;

#[derive(Debug, thiserror::Error)]
pub enum SystemdError {
    #[error("socket activation: {0}")]
    ListenFds(#[source] std::io::Error),
    #[error(
        "socket activation passed {0} sockets; tillgated expects exactly one, the login socket \
         (one ListenStream= in tillgated.socket)"
    )]
    SocketCount(usize),
    #[error("socket activation: fd {fd} is not a listening Unix stream socket ({problem})")]
    NotAUnixListener { fd: RawFd, problem: String },
}

/// Set once the activated socket has been taken, so its fd is never owned twice.
static ACTIVATION_TAKEN: AtomicBool = AtomicBool::new(false);

/// The login socket passed by systemd (LISTEN_PID is this process, LISTEN_FDS = 1), if any.
/// Later calls return `None`: the fd has one owner.
pub fn take_activated_socket() -> Result<Option<UnixListener>, SystemdError> {
    let fds: Vec<RawFd> = sd_notify::listen_fds()
        .map_err(SystemdError::ListenFds)?
        .collect();
    if fds.is_empty() || ACTIVATION_TAKEN.swap(true, Ordering::SeqCst) {
        return Ok(None);
    }
    let [fd] = fds[..] else {
        return Err(SystemdError::SocketCount(fds.len()));
    };
    let owned = own_passed_fd(fd);
    let not_listener = |problem: String| SystemdError::NotAUnixListener { fd, problem };
    let kind = getsockopt(&owned.as_fd(), sockopt::SockType)
        .map_err(|e| not_listener(format!("not a socket: {e}")))?;
    let listening =
        getsockopt(&owned.as_fd(), sockopt::AcceptConn).map_err(|e| not_listener(e.to_string()))?;
    if kind != SockType::Stream || !listening {
        return Err(not_listener(format!(
            "type {kind:?}, listening: {listening}; use ListenStream="
        )));
    }
    let listener = UnixListener::from(owned);
    // A TCP or other non-Unix stream socket has no Unix address.
    listener
        .local_addr()
        .map_err(|e| not_listener(e.to_string()))?;
    Ok(Some(listener))
}

/// Takes ownership of a descriptor passed by the service manager.
#[allow(unsafe_code)]
fn own_passed_fd(fd: RawFd) -> OwnedFd {
    // SAFETY: `fd` is one of the descriptors systemd passed to this process (LISTEN_PID matched
    // our pid, and sd_notify::listen_fds only yields SD_LISTEN_FDS_START..+LISTEN_FDS). Nothing
    // else in the process opens or owns it, and ACTIVATION_TAKEN makes this the only owner.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// Talks to the service manager over NOTIFY_SOCKET. Failures are logged (the first one of a
/// kind only, so a gone manager cannot flood the log) and never stop the daemon.
#[derive(Debug)]
pub struct Notifier {
    /// NOTIFY_SOCKET is set: there is a service manager to tell.
    enabled: bool,
    watchdog: Option<Duration>,
    warned: AtomicBool,
}

impl Notifier {
    pub fn from_env() -> Notifier {
        Notifier {
            enabled: std::env::var_os("NOTIFY_SOCKET").is_some(),
            watchdog: sd_notify::watchdog_enabled(),
            warned: AtomicBool::new(false),
        }
    }

    /// How often to ping the watchdog: half of WATCHDOG_USEC, as sd_watchdog_enabled(3) advises.
    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.watchdog
            .map(|limit| (limit / 2).max(Duration::from_millis(1)))
    }

    /// READY=1 with the replica's status line.
    pub async fn ready(&self, core: &Core) {
        if self.enabled {
            let status = status_line(core).await;
            self.send(&[NotifyState::Ready, NotifyState::Status(&status)]);
        }
    }

    /// A fresh STATUS= line (after a sync changed the replica).
    pub async fn status(&self, core: &Core) {
        if self.enabled {
            let status = status_line(core).await;
            self.send(&[NotifyState::Status(&status)]);
        }
    }

    /// RELOADING=1 with the monotonic timestamp newer managers expect; `ready` ends it.
    pub fn reloading(&self) {
        match NotifyState::monotonic_usec_now() {
            Ok(now) => self.send(&[NotifyState::Reloading, now]),
            Err(_) => self.send(&[NotifyState::Reloading]),
        }
    }

    pub fn stopping(&self) {
        self.send(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
    }

    pub fn watchdog(&self) {
        self.send(&[NotifyState::Watchdog]);
    }

    fn send(&self, states: &[NotifyState]) {
        if let Err(e) = sd_notify::notify(states) {
            if !self.warned.swap(true, Ordering::Relaxed) {
                tracing::warn!(error = %e, "could not notify the service manager (NOTIFY_SOCKET)");
            }
        } else {
            self.warned.store(false, Ordering::Relaxed);
        }
    }
}

/// The one-line STATUS= text: the replica's cursor and its user counts.
async fn status_line(core: &Core) -> String {
    let replica = core.replica.clone();
    let terminal = core.settings.terminal.clone();
    let read = tokio::task::spawn_blocking(move || {
        Ok::<_, crate::store::StoreError>((replica.state()?, replica.counts(&terminal)?))
    })
    .await;
    match read {
        Ok(Ok((state, counts))) => format!(
            "cursor {} ({}), {} users, {} at this terminal, {} roles",
            state.cursor,
            crate::grpc::login::replica_status(state.cursor),
            counts.users,
            counts.users_at_terminal,
            counts.roles,
        ),
        Ok(Err(e)) => format!("replica unreadable: {e}"),
        Err(e) => format!("replica status unavailable: {e}"),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn watchdog_pings_at_half_the_limit() {
        let notifier = Notifier {
            enabled: true,
            watchdog: Some(Duration::from_secs(30)),
            warned: AtomicBool::new(false),
        };
        assert_eq!(notifier.watchdog_interval(), Some(Duration::from_secs(15)));
        let off = Notifier {
            enabled: false,
            watchdog: None,
            warned: AtomicBool::new(false),
        };
        assert_eq!(off.watchdog_interval(), None);
    }
}
