//! Bounds on a listener's connections: at most `max_connections` open at once, and at most
//! `max_connections_per_peer` from one peer (a login socket uid, a sync client's IP address);
//! one more is closed as soon as it is accepted. On the sync listener a connection must also
//! make a call carrying a valid token within `sync.auth_timeout`, or it is closed
//! ([`AuthDeadline`]): an idle TCP peer or a stalled TLS handshake cannot hold a slot. (The
//! calls-in-progress cap and the per-call timeout are tonic settings, see `server.rs`; the
//! per-uid call rate is `grpc/call_rate.rs`.)

use std::collections::HashMap;
use std::fmt::{Debug, Display};
use std::hash::Hash;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::transport::server::{Connected, TcpConnectInfo};

/// Loud once, then every 1000th: a flood must not become a log flood.
fn worth_logging(count: u64) -> bool {
    count == 1 || count.is_multiple_of(1000)
}

/// Open connections per peer, each at most `max`: the pure part of the per-peer cap.
#[derive(Debug)]
pub struct PeerCounts<K> {
    max: usize,
    open: Mutex<HashMap<K, usize>>,
}

impl<K: Hash + Eq + Clone> PeerCounts<K> {
    pub fn new(max: usize) -> Self {
        PeerCounts {
            max,
            open: Mutex::new(HashMap::new()),
        }
    }

    /// Counts one more connection of `peer`, unless it already has `max` open.
    pub fn try_take(&self, peer: &K) -> bool {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let count = open.entry(peer.clone()).or_insert(0);
        if *count >= self.max {
            return false;
        }
        *count += 1;
        true
    }

    /// One connection of `peer` closed; a peer with none left is forgotten.
    pub fn give_back(&self, peer: &K) {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = open.get_mut(peer) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                open.remove(peer);
            }
        }
    }

    /// Connections `peer` has open.
    pub fn open(&self, peer: &K) -> usize {
        let open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        open.get(peer).copied().unwrap_or(0)
    }

    /// Peers with a connection open.
    pub fn peers(&self) -> usize {
        self.open
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

/// Hands out connection slots for one listener: one of `max_connections` and one of the peer's
/// `max_connections_per_peer`.
#[derive(Debug)]
pub struct ConnectionCap<K> {
    listener: &'static str,
    /// The config key of the per-peer cap, for the log line.
    per_peer_setting: &'static str,
    max: usize,
    slots: Arc<Semaphore>,
    peers: Arc<PeerCounts<K>>,
    refused: AtomicU64,
    refused_per_peer: AtomicU64,
}

impl<K: Hash + Eq + Clone + Display> ConnectionCap<K> {
    pub fn new(
        listener: &'static str,
        max_connections: usize,
        per_peer_setting: &'static str,
        max_connections_per_peer: usize,
    ) -> Self {
        ConnectionCap {
            listener,
            per_peer_setting,
            max: max_connections,
            slots: Arc::new(Semaphore::new(max_connections)),
            peers: Arc::new(PeerCounts::new(max_connections_per_peer)),
            refused: AtomicU64::new(0),
            refused_per_peer: AtomicU64::new(0),
        }
    }

    /// The stream with its slots, or None (the stream is dropped, which closes it) when every
    /// slot is taken or the peer has its share open. The listener's cap is checked first: when
    /// both are reached, "the listener is full" is the news.
    pub fn admit<S>(&self, stream: S, peer: K) -> Option<Counted<S, K>> {
        let Ok(slot) = self.slots.clone().try_acquire_owned() else {
            let refused = self.refused.fetch_add(1, Ordering::Relaxed) + 1;
            if worth_logging(refused) {
                tracing::warn!(
                    listener = self.listener,
                    max_connections = self.max,
                    refused,
                    "connection closed: the listener's max_connections are open"
                );
            }
            return None;
        };
        if !self.peers.try_take(&peer) {
            let refused = self.refused_per_peer.fetch_add(1, Ordering::Relaxed) + 1;
            if worth_logging(refused) {
                tracing::warn!(
                    listener = self.listener,
                    %peer,
                    limit = self.peers.max,
                    refused,
                    "connection closed: this peer already has {} connections open",
                    self.per_peer_setting
                );
            }
            return None;
        }
        Some(Counted {
            inner: stream,
            _slot: slot,
            _peer: PeerSlot {
                peers: self.peers.clone(),
                peer,
            },
        })
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.max - self.slots.available_permits()
    }
}

/// A peer's share of the per-peer cap, given back when the connection closes.
#[derive(Debug)]
struct PeerSlot<K: Hash + Eq + Clone> {
    peers: Arc<PeerCounts<K>>,
    peer: K,
}

impl<K: Hash + Eq + Clone> Drop for PeerSlot<K> {
    fn drop(&mut self) {
        self.peers.give_back(&self.peer);
    }
}

/// A connection that holds one slot of its listener, and one of its peer's, until it is closed.
#[derive(Debug)]
pub struct Counted<S, K: Hash + Eq + Clone> {
    inner: S,
    _slot: OwnedSemaphorePermit,
    _peer: PeerSlot<K>,
}

impl<S: AsyncRead + Unpin, K: Hash + Eq + Clone + Unpin> AsyncRead for Counted<S, K> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin, K: Hash + Eq + Clone + Unpin> AsyncWrite for Counted<S, K> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

impl<S: Connected, K: Hash + Eq + Clone> Connected for Counted<S, K> {
    type ConnectInfo = S::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

/// Set once a call on a sync connection carried a valid token (by the bearer-token check).
#[derive(Debug, Default)]
pub struct Authenticated(AtomicBool);

impl Authenticated {
    pub fn set(&self) {
        self.0.store(true, Ordering::Release);
    }

    pub fn is_set(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// What a sync call learns about its connection (a request extension; under TLS wrapped in
/// `TlsConnectInfo`).
#[derive(Debug, Clone)]
pub struct SyncPeer {
    pub tcp: TcpConnectInfo,
    pub authenticated: Arc<Authenticated>,
}

/// Counts the sync connections closed for not authenticating in time (for the log).
#[derive(Debug, Default)]
pub struct AuthDeadlines {
    timeout: Duration,
    closed: AtomicU64,
}

impl AuthDeadlines {
    pub fn new(timeout: Duration) -> Arc<Self> {
        Arc::new(AuthDeadlines {
            timeout,
            closed: AtomicU64::new(0),
        })
    }

    /// Starts `stream`'s clock: it must authenticate within the timeout.
    pub fn start<S>(self: &Arc<Self>, stream: S) -> AuthDeadline<S> {
        AuthDeadline {
            inner: stream,
            authenticated: Arc::default(),
            deadline: Some(Box::pin(tokio::time::sleep(self.timeout))),
            deadlines: self.clone(),
            expired: false,
        }
    }
}

/// A sync connection that is closed (its reads and writes fail) once `sync.auth_timeout` has
/// passed without a call carrying a valid token. The timer also wakes the connection's task,
/// so an idle peer that never sends a byte is closed too.
#[derive(Debug)]
pub struct AuthDeadline<S> {
    inner: S,
    authenticated: Arc<Authenticated>,
    /// None once authenticated: from then on the connection is central's to keep.
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    deadlines: Arc<AuthDeadlines>,
    expired: bool,
}

impl<S> AuthDeadline<S> {
    fn check(&mut self, cx: &mut Context<'_>) -> std::io::Result<()> {
        let Some(deadline) = &mut self.deadline else {
            return Ok(());
        };
        if self.authenticated.is_set() {
            self.deadline = None;
            return Ok(());
        }
        if deadline.as_mut().poll(cx).is_pending() {
            return Ok(());
        }
        if !self.expired {
            self.expired = true;
            let closed = self.deadlines.closed.fetch_add(1, Ordering::Relaxed) + 1;
            if worth_logging(closed) {
                tracing::warn!(
                    auth_timeout = ?self.deadlines.timeout,
                    closed,
                    "sync connection closed: no call with a valid token within sync.auth_timeout"
                );
            }
        }
        Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "no call with a valid sync token within sync.auth_timeout",
        ))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for AuthDeadline<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        this.check(cx)?;
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for AuthDeadline<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        this.check(cx)?;
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        this.check(cx)?;
        Pin::new(&mut this.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

impl<S: Connected<ConnectInfo = TcpConnectInfo>> Connected for AuthDeadline<S> {
    type ConnectInfo = SyncPeer;

    fn connect_info(&self) -> SyncPeer {
        SyncPeer {
            tcp: self.inner.connect_info(),
            authenticated: self.authenticated.clone(),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn slots_come_back_when_a_connection_closes() {
        let cap = ConnectionCap::new("test", 2, "test.per_peer", 2);
        let a = cap.admit((), 1u32).unwrap();
        let _b = cap.admit((), 2u32).unwrap();
        assert_eq!(cap.open(), 2);
        assert!(cap.admit((), 3u32).is_none());
        drop(a);
        assert!(cap.admit((), 3u32).is_some());
    }

    #[test]
    fn one_peer_gets_its_share_and_no_more_while_others_still_connect() {
        let cap = ConnectionCap::new("test", 10, "test.per_peer", 3);
        let mine: Vec<_> = (0..3).map(|_| cap.admit((), 1000u32).unwrap()).collect();
        assert!(cap.admit((), 1000u32).is_none(), "a fourth from uid 1000");
        assert_eq!(cap.peers.open(&1000), 3);
        // The refused one took no global slot.
        assert_eq!(cap.open(), 3);
        let other = cap.admit((), 65534u32).unwrap();
        drop(mine);
        assert_eq!(cap.peers.open(&1000), 0);
        assert_eq!(
            cap.peers.peers(),
            1,
            "a peer with nothing open is forgotten"
        );
        assert!(cap.admit((), 1000u32).is_some());
        drop(other);
    }

    #[test]
    fn a_connection_refused_for_its_peer_takes_no_listener_slot() {
        let cap = ConnectionCap::new("test", 2, "test.per_peer", 1);
        let first = cap.admit((), "10.0.0.1").unwrap();
        assert!(cap.admit((), "10.0.0.1").is_none());
        assert_eq!(cap.open(), 1);
        let _second = cap.admit((), "10.0.0.2").unwrap();
        // Full: refused for the listener, so the peer's count is untouched.
        assert!(cap.admit((), "10.0.0.3").is_none());
        assert_eq!(cap.peers.open(&"10.0.0.3"), 0);
        drop(first);
        assert!(cap.admit((), "10.0.0.3").is_some());
    }

    #[test]
    fn peer_counts_never_go_below_zero() {
        let counts = PeerCounts::new(1);
        counts.give_back(&7u32);
        assert!(counts.try_take(&7));
        assert!(!counts.try_take(&7));
        counts.give_back(&7);
        counts.give_back(&7);
        assert_eq!(counts.open(&7), 0);
        assert!(counts.try_take(&7));
    }
}
