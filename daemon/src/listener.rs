//! Bounds on a listener's connections: at most `max_connections` open at once, and at most
//! `max_connections_per_peer` from one peer (a login socket uid, a sync client's IP address);
//! one more is closed as soon as it is accepted. On the sync listener a connection must also
//! make a call carrying a valid token within `sync.auth_timeout`, or it is closed
//! ([`AuthDeadline`]): an idle TCP peer or a stalled TLS handshake cannot hold a slot. And
//! when the sync listener is full, a new connection is not closed while one that has not
//! authenticated is open: the oldest such of the address holding the most such is closed in
//! its place ([`eviction_choice`]), so idle connections cannot lock central out even for
//! `sync.auth_timeout`. (The calls-in-progress cap and the per-call timeout are tonic settings,
//! see `server.rs`; the per-uid call rate is `grpc/call_rate.rs`.)

use std::cmp::Reverse;
use std::collections::HashMap;
use std::fmt::{Debug, Display};
use std::hash::Hash;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::oneshot;
use tonic::transport::server::{Connected, TcpConnectInfo};

/// Loud once, then every 1000th: a flood must not become a log flood.
fn worth_logging(count: u64) -> bool {
    count == 1 || count.is_multiple_of(1000)
}

/// One open connection, as the choice of what to do with a new one sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenConnection<K> {
    pub peer: K,
    /// Accept order: a smaller number was accepted earlier.
    pub opened: u64,
    /// It has made a call carrying a valid token (sync listener).
    pub authenticated: bool,
}

/// What becomes of a new connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    Admit,
    /// Admitted in the place of the open connection at this index, which is closed.
    Evict(usize),
    /// Closed: every slot is taken (where eviction is on: by authenticated connections).
    ListenerFull,
    /// Closed: its peer has its share open.
    PeerFull,
}

/// The caps of one listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caps {
    pub max_connections: usize,
    pub max_connections_per_peer: usize,
    /// When the listener is full, a new connection takes the place of one that has not
    /// authenticated ([`eviction_choice`]) instead of being closed (the sync listener).
    pub evict_unauthenticated: bool,
}

/// What to do with a new connection of `peer`, given the ones open: the pure core of
/// [`ConnectionCap`]. A peer at its share is refused even when something could be evicted (the
/// per-peer cap stays a cap). Without eviction the listener's cap is checked first: when both
/// are reached, "the listener is full" is the news.
pub fn admission<K: Hash + Eq>(caps: Caps, open: &[OpenConnection<K>], peer: &K) -> Admission {
    let full = open.len() >= caps.max_connections;
    let peer_full =
        open.iter().filter(|c| c.peer == *peer).count() >= caps.max_connections_per_peer;
    match (full, peer_full) {
        (false, false) => Admission::Admit,
        (true, _) if !caps.evict_unauthenticated => Admission::ListenerFull,
        (_, true) => Admission::PeerFull,
        (true, false) => eviction_choice(open).map_or(Admission::ListenerFull, Admission::Evict),
    }
}

/// The connection to close so that a new one fits: one that has not authenticated, from the
/// peer holding the most such, the oldest of that peer's (ties between peers: the oldest of
/// theirs). An attacker who fills the listener from a few addresses evicts his own, and a
/// peer's one fresh connection is the last to go. None if every connection has authenticated:
/// those are never evicted.
pub fn eviction_choice<K: Hash + Eq>(open: &[OpenConnection<K>]) -> Option<usize> {
    let mut unauthenticated: HashMap<&K, usize> = HashMap::new();
    for c in open.iter().filter(|c| !c.authenticated) {
        *unauthenticated.entry(&c.peer).or_default() += 1;
    }
    open.iter()
        .enumerate()
        .filter(|(_, c)| !c.authenticated)
        .min_by_key(|(_, c)| {
            let held = unauthenticated.get(&c.peer).copied().unwrap_or(0);
            (Reverse(held), c.opened)
        })
        .map(|(i, _)| i)
}

/// One open connection's slot.
#[derive(Debug)]
struct Slot<K> {
    peer: K,
    opened: u64,
    authenticated: Arc<Authenticated>,
    /// Dropped to close the connection (eviction): its reads and writes fail from then on.
    _close: Option<oneshot::Sender<()>>,
}

#[derive(Debug)]
struct Slots<K> {
    next: u64,
    open: Vec<Slot<K>>,
}

impl<K> Slots<K> {
    /// Takes the slot `opened` out, if it is still there (an evicted one is not).
    fn remove(&mut self, opened: u64) -> Option<Slot<K>> {
        let i = self.open.iter().position(|s| s.opened == opened)?;
        Some(self.open.swap_remove(i))
    }
}

fn lock<K>(slots: &Mutex<Slots<K>>) -> std::sync::MutexGuard<'_, Slots<K>> {
    slots.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Hands out connection slots for one listener: one of `max_connections`, at most
/// `max_connections_per_peer` to one peer; on the sync listener a full listener makes room by
/// closing a connection that has not authenticated ([`admission`]).
#[derive(Debug)]
pub struct ConnectionCap<K> {
    listener: &'static str,
    /// The config key of the per-peer cap, for the log line.
    per_peer_setting: &'static str,
    caps: Caps,
    slots: Arc<Mutex<Slots<K>>>,
    refused: AtomicU64,
    refused_per_peer: AtomicU64,
    evicted: AtomicU64,
}

impl<K: Hash + Eq + Clone + Display> ConnectionCap<K> {
    pub fn new(listener: &'static str, per_peer_setting: &'static str, caps: Caps) -> Self {
        ConnectionCap {
            listener,
            per_peer_setting,
            caps,
            slots: Arc::new(Mutex::new(Slots {
                next: 0,
                open: Vec::new(),
            })),
            refused: AtomicU64::new(0),
            refused_per_peer: AtomicU64::new(0),
            evicted: AtomicU64::new(0),
        }
    }

    /// The stream with its slot, or None (the stream is dropped, which closes it) when the
    /// listener is full of connections that may not be evicted or the peer has its share open.
    pub fn admit<S>(&self, stream: S, peer: K) -> Option<Counted<S, K>> {
        let mut slots = lock(&self.slots);
        let open: Vec<_> = slots
            .open
            .iter()
            .map(|s| OpenConnection {
                peer: &s.peer,
                opened: s.opened,
                authenticated: s.authenticated.is_set(),
            })
            .collect();
        let evicted = match admission(self.caps, &open, &&peer) {
            Admission::Admit => None,
            Admission::Evict(i) => Some(slots.open.swap_remove(i)),
            Admission::ListenerFull => {
                drop(slots);
                self.log_refused();
                return None;
            }
            Admission::PeerFull => {
                drop(slots);
                self.log_refused_per_peer(&peer);
                return None;
            }
        };
        let opened = slots.next;
        slots.next += 1;
        let authenticated = Arc::<Authenticated>::default();
        let (close, closed) = if self.caps.evict_unauthenticated {
            let (close, closed) = oneshot::channel();
            (Some(close), Some(closed))
        } else {
            (None, None)
        };
        slots.open.push(Slot {
            peer: peer.clone(),
            opened,
            authenticated: authenticated.clone(),
            _close: close,
        });
        drop(slots);
        if let Some(evicted) = evicted {
            self.log_evicted(&evicted.peer, &peer);
            // Dropping its sender closes the evicted connection (and wakes its task).
            drop(evicted);
        }
        Some(Counted {
            inner: stream,
            _slot: SlotGuard {
                slots: self.slots.clone(),
                opened,
            },
            closed,
            evicted: false,
            authenticated,
        })
    }

    fn log_refused(&self) {
        let refused = self.refused.fetch_add(1, Ordering::Relaxed) + 1;
        if worth_logging(refused) {
            tracing::warn!(
                listener = self.listener,
                max_connections = self.caps.max_connections,
                refused,
                "connection closed: the listener's max_connections are open"
            );
        }
    }

    fn log_refused_per_peer(&self, peer: &K) {
        let refused = self.refused_per_peer.fetch_add(1, Ordering::Relaxed) + 1;
        if worth_logging(refused) {
            tracing::warn!(
                listener = self.listener,
                %peer,
                limit = self.caps.max_connections_per_peer,
                refused,
                "connection closed: this peer already has {} connections open",
                self.per_peer_setting
            );
        }
    }

    fn log_evicted(&self, evicted_peer: &K, peer: &K) {
        let evicted = self.evicted.fetch_add(1, Ordering::Relaxed) + 1;
        if worth_logging(evicted) {
            tracing::warn!(
                listener = self.listener,
                peer = %evicted_peer,
                new_peer = %peer,
                max_connections = self.caps.max_connections,
                evicted,
                "connection closed to make room for a new one: the listener's max_connections \
                 are open and this one had made no call with a valid token (the oldest of the \
                 peer holding the most such)"
            );
        }
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        lock(&self.slots).open.len()
    }

    /// Connections `peer` has open.
    #[cfg(test)]
    fn open_of(&self, peer: &K) -> usize {
        lock(&self.slots)
            .open
            .iter()
            .filter(|s| s.peer == *peer)
            .count()
    }
}

/// A connection's slot, given back when the connection closes (unless it was evicted, which
/// gave it to another).
#[derive(Debug)]
struct SlotGuard<K> {
    slots: Arc<Mutex<Slots<K>>>,
    opened: u64,
}

impl<K> Drop for SlotGuard<K> {
    fn drop(&mut self) {
        let removed = lock(&self.slots).remove(self.opened);
        // Dropped outside the lock.
        drop(removed);
    }
}

/// A connection that holds a slot of its listener until it is closed, or until it is evicted
/// (then its reads and writes fail, which makes the server close it).
#[derive(Debug)]
pub struct Counted<S, K> {
    inner: S,
    _slot: SlotGuard<K>,
    /// Ready (the sender dropped) once the connection was evicted; None where nothing is.
    closed: Option<oneshot::Receiver<()>>,
    evicted: bool,
    authenticated: Arc<Authenticated>,
}

impl<S, K> Counted<S, K> {
    /// The flag the bearer-token check sets; a connection with it set is never evicted.
    pub fn authenticated(&self) -> Arc<Authenticated> {
        self.authenticated.clone()
    }

    fn check(&mut self, cx: &mut Context<'_>) -> std::io::Result<()> {
        if !self.evicted {
            let Some(closed) = &mut self.closed else {
                return Ok(());
            };
            if Pin::new(closed).poll(cx).is_pending() {
                return Ok(());
            }
            self.evicted = true;
            self.closed = None;
        }
        Err(std::io::Error::new(
            std::io::ErrorKind::ConnectionAborted,
            "closed to make room for a new connection: no call with a valid token yet",
        ))
    }
}

impl<S: AsyncRead + Unpin, K: Unpin> AsyncRead for Counted<S, K> {
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

impl<S: AsyncWrite + Unpin, K: Unpin> AsyncWrite for Counted<S, K> {
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

impl<S: Connected, K> Connected for Counted<S, K> {
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

    /// Starts `stream`'s clock: it must authenticate (set `authenticated`) within the timeout.
    pub fn start<S>(
        self: &Arc<Self>,
        stream: S,
        authenticated: Arc<Authenticated>,
    ) -> AuthDeadline<S> {
        AuthDeadline {
            inner: stream,
            authenticated,
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
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use tokio::io::AsyncReadExt;

    fn caps(max: usize, per_peer: usize, evict: bool) -> Caps {
        Caps {
            max_connections: max,
            max_connections_per_peer: per_peer,
            evict_unauthenticated: evict,
        }
    }

    fn cap<K: Hash + Eq + Clone + Display>(max: usize, per_peer: usize) -> ConnectionCap<K> {
        ConnectionCap::new("test", "test.per_peer", caps(max, per_peer, false))
    }

    fn evicting<K: Hash + Eq + Clone + Display>(max: usize, per_peer: usize) -> ConnectionCap<K> {
        ConnectionCap::new("test", "test.per_peer", caps(max, per_peer, true))
    }

    fn conn(peer: &'static str, opened: u64, authenticated: bool) -> OpenConnection<&'static str> {
        OpenConnection {
            peer,
            opened,
            authenticated,
        }
    }

    #[test]
    fn slots_come_back_when_a_connection_closes() {
        let cap = cap(2, 2);
        let a = cap.admit((), 1u32).unwrap();
        let _b = cap.admit((), 2u32).unwrap();
        assert_eq!(cap.open(), 2);
        assert!(cap.admit((), 3u32).is_none());
        drop(a);
        assert!(cap.admit((), 3u32).is_some());
    }

    #[test]
    fn one_peer_gets_its_share_and_no_more_while_others_still_connect() {
        let cap = cap(10, 3);
        let mine: Vec<_> = (0..3).map(|_| cap.admit((), 1000u32).unwrap()).collect();
        assert!(cap.admit((), 1000u32).is_none(), "a fourth from uid 1000");
        assert_eq!(cap.open_of(&1000), 3);
        // The refused one took no slot.
        assert_eq!(cap.open(), 3);
        let other = cap.admit((), 65534u32).unwrap();
        drop(mine);
        assert_eq!(cap.open_of(&1000), 0);
        assert_eq!(cap.open(), 1);
        assert!(cap.admit((), 1000u32).is_some());
        drop(other);
    }

    #[test]
    fn a_connection_refused_for_its_peer_takes_no_listener_slot() {
        let cap = cap(2, 1);
        let first = cap.admit((), "10.0.0.1").unwrap();
        assert!(cap.admit((), "10.0.0.1").is_none());
        assert_eq!(cap.open(), 1);
        let _second = cap.admit((), "10.0.0.2").unwrap();
        // Full: refused for the listener, so the peer's count is untouched.
        assert!(cap.admit((), "10.0.0.3").is_none());
        assert_eq!(cap.open_of(&"10.0.0.3"), 0);
        drop(first);
        assert!(cap.admit((), "10.0.0.3").is_some());
    }

    #[test]
    fn the_oldest_unauthenticated_connection_of_the_peer_holding_the_most_is_evicted() {
        let open = [
            conn("central", 0, false),
            conn("a", 1, false),
            conn("b", 2, false),
            conn("b", 3, false),
            conn("a", 4, false),
            conn("b", 5, false),
        ];
        // b holds three: its oldest goes, though central's and a's are older.
        assert_eq!(eviction_choice(&open), Some(2));
        // A tie between a and b (two each): the oldest of theirs, a's first.
        assert_eq!(eviction_choice(&open[..5]), Some(1));
        // Everyone holds one: the oldest.
        assert_eq!(eviction_choice(&open[..3]), Some(0));
    }

    #[test]
    fn authenticated_connections_are_never_evicted_nor_counted() {
        let open = [
            conn("central", 0, true),
            conn("central", 1, true),
            conn("central", 2, true),
            conn("a", 3, false),
            conn("a", 4, false),
            conn("central", 5, false),
        ];
        // central has four open but one unauthenticated: a's two make a the one to evict.
        assert_eq!(eviction_choice(&open), Some(3));
        assert_eq!(eviction_choice(&open[..3]), None);
        assert_eq!(eviction_choice::<&str>(&[]), None);
    }

    #[test]
    fn a_full_listener_evicts_only_if_it_may_and_a_peer_at_its_share_never_does() {
        let open = [conn("a", 0, false), conn("a", 1, false), conn("b", 2, true)];
        assert_eq!(admission(caps(4, 2, true), &open, &"c"), Admission::Admit);
        assert_eq!(
            admission(caps(3, 2, true), &open, &"c"),
            Admission::Evict(0)
        );
        // a has its share: refused, whether or not something could be evicted.
        assert_eq!(
            admission(caps(3, 2, true), &open, &"a"),
            Admission::PeerFull
        );
        assert_eq!(
            admission(caps(4, 2, true), &open, &"a"),
            Admission::PeerFull
        );
        // Without eviction (the login socket) the listener's cap is the news.
        assert_eq!(
            admission(caps(3, 2, false), &open, &"c"),
            Admission::ListenerFull
        );
        assert_eq!(
            admission(caps(3, 2, false), &open, &"a"),
            Admission::ListenerFull
        );
        // Everything authenticated: refused.
        let all = [conn("a", 0, true), conn("b", 1, true)];
        assert_eq!(
            admission(caps(2, 2, true), &all, &"c"),
            Admission::ListenerFull
        );
    }

    #[tokio::test]
    async fn an_evicted_connection_is_closed_and_its_slot_is_the_new_ones() {
        let cap = evicting(2, 2);
        let (stream, mut idle_peer) = tokio::io::duplex(64);
        let mut idle = cap.admit(stream, "attacker").unwrap();
        let (stream, _) = tokio::io::duplex(64);
        let central_first = cap.admit(stream, "central").unwrap();
        central_first.authenticated().set();
        // Full: the idle one makes room; the authenticated one stays.
        let (stream, _) = tokio::io::duplex(64);
        let central = cap.admit(stream, "central").unwrap();
        assert_eq!(cap.open(), 2);
        assert_eq!(cap.open_of(&"attacker"), 0);
        let mut buf = [0u8; 8];
        let read = idle.read(&mut buf).await;
        assert_eq!(
            read.unwrap_err().kind(),
            std::io::ErrorKind::ConnectionAborted
        );
        // Still closed, even with bytes waiting.
        tokio::io::AsyncWriteExt::write_all(&mut idle_peer, b"hello")
            .await
            .unwrap();
        assert!(idle.read(&mut buf).await.is_err());
        // Its slot was given to central's: dropping it frees nothing.
        drop(idle);
        assert_eq!(cap.open(), 2);
        // central's fresh one is the only unauthenticated left: a newcomer evicts it.
        central.authenticated().set();
        let (stream, _) = tokio::io::duplex(64);
        assert!(cap.admit(stream, "attacker").is_none(), "all authenticated");
        drop(central_first);
        assert_eq!(cap.open(), 1);
    }

    #[tokio::test]
    async fn an_evicted_connection_blocked_in_a_read_is_woken() {
        let cap = evicting(1, 1);
        let (stream, _peer) = tokio::io::duplex(64);
        let mut idle = cap.admit(stream, "attacker").unwrap();
        let reader = tokio::spawn(async move {
            let mut buf = [0u8; 8];
            idle.read(&mut buf).await.map(|_| ())
        });
        tokio::task::yield_now().await;
        let (stream, _) = tokio::io::duplex(64);
        let _central = cap.admit(stream, "central").unwrap();
        let read = tokio::time::timeout(Duration::from_secs(5), reader)
            .await
            .unwrap()
            .unwrap();
        assert!(read.is_err());
    }

    /// A till's sync listener under attack: central (peer 0) has `authenticated` connections
    /// open and opens one fresh connection in the middle of the attacker's; the attacker
    /// (peers 1..=addresses) connects and closes as it likes and never authenticates. Returns
    /// whether central's fresh connection was admitted, and how many connections were admitted
    /// after it before it was evicted (None: never evicted).
    fn attack(
        addresses: u8,
        authenticated: usize,
        before: &[(bool, u8)],
        after: &[(bool, u8)],
    ) -> (bool, Option<usize>) {
        let mut till = Till::default();
        for _ in 0..authenticated {
            assert!(till.connect(0, true).0);
        }
        for &step in before {
            till.play(addresses, step);
        }
        let (admitted, _) = till.connect(0, false);
        let Some(fresh) = till.open.iter().find(|c| c.peer == 0 && !c.authenticated) else {
            return (admitted, None);
        };
        let fresh = fresh.opened;
        let mut newer = 0;
        for &step in after {
            let (admitted, evicted) = till.play(addresses, step);
            newer += usize::from(admitted);
            if evicted == Some(fresh) {
                return (true, Some(newer));
            }
        }
        (admitted, None)
    }

    /// The sync listener's slots with the defaults, as [`ConnectionCap`] keeps them.
    #[derive(Default)]
    struct Till {
        open: Vec<OpenConnection<u8>>,
        next: u64,
    }

    impl Till {
        /// Whether a connection of `peer` was admitted, and the one it evicted.
        fn connect(&mut self, peer: u8, authenticated: bool) -> (bool, Option<u64>) {
            let evicted = match admission(caps(16, 4, true), &self.open, &peer) {
                Admission::Admit => None,
                Admission::Evict(i) => Some(self.open.swap_remove(i).opened),
                Admission::ListenerFull | Admission::PeerFull => return (false, None),
            };
            self.open.push(OpenConnection {
                peer,
                opened: self.next,
                authenticated,
            });
            self.next += 1;
            (true, evicted)
        }

        /// An attacker's step: connect from, or close its oldest connection of, one of its
        /// addresses (peers 1..=addresses).
        fn play(&mut self, addresses: u8, (close, n): (bool, u8)) -> (bool, Option<u64>) {
            let peer = 1 + n % addresses;
            if close {
                if let Some(i) = self.open.iter().position(|c| c.peer == peer) {
                    self.open.remove(i);
                }
                (false, None)
            } else {
                self.connect(peer, false)
            }
        }
    }

    fn steps() -> impl Strategy<Value = Vec<(bool, u8)>> {
        prop::collection::vec((prop::bool::weighted(0.2), any::<u8>()), 0..200)
    }

    proptest! {
        /// The README's worst case, part one: with the defaults (16, 4) an attacker with at
        /// most 14 addresses, fewer by one per authenticated connection open, never evicts
        /// central's fresh connection, and that connection is always admitted.
        #[test]
        fn few_addresses_never_evict_central(
            addresses in 1u8..=14,
            authenticated in 0usize..=3,
            before in steps(),
            after in steps(),
        ) {
            let addresses = addresses.min(u8::try_from(14 - authenticated.min(14)).unwrap()).max(1);
            let (admitted, evicted) = attack(addresses, authenticated, &before, &after);
            prop_assert!(admitted);
            prop_assert_eq!(evicted, None);
        }

        /// Part two: with more addresses, central's fresh connection is evicted only after at
        /// least 16 connections were admitted after it (fewer by one per authenticated
        /// connection open).
        #[test]
        fn many_addresses_need_sixteen_newer_connections(
            addresses in 15u8..=40,
            authenticated in 0usize..=3,
            before in steps(),
            after in steps(),
        ) {
            let (admitted, evicted) = attack(addresses, authenticated, &before, &after);
            prop_assert!(admitted);
            if let Some(newer) = evicted {
                prop_assert!(newer >= 16 - authenticated, "{newer}");
            }
        }
    }

    #[test]
    fn fifteen_addresses_evict_central_with_the_sixteenth_newer_connection() {
        let fill: Vec<_> = (0..16).map(|n| (false, n % 15)).collect();
        let one_each: Vec<_> = (0..16).map(|n| (false, n % 15)).collect();
        let (admitted, evicted) = attack(15, 0, &fill, &one_each);
        assert!(admitted);
        assert_eq!(evicted, Some(16));
        // Fourteen addresses: never.
        let (admitted, evicted) = attack(14, 0, &fill, &[(false, 0); 1000]);
        assert!(admitted);
        assert_eq!(evicted, None);
    }
}
