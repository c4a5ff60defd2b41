//! Bounds on a listener's connections: at most `max_connections` open at once; one more is
//! closed as soon as it is accepted (the calls-in-progress cap and the per-call timeout are
//! tonic settings, see `server.rs`).

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::transport::server::Connected;

/// Hands out connection slots for one listener.
#[derive(Debug)]
pub struct ConnectionCap {
    listener: &'static str,
    max: usize,
    slots: Arc<Semaphore>,
    refused: AtomicU64,
}

impl ConnectionCap {
    pub fn new(listener: &'static str, max_connections: usize) -> Self {
        ConnectionCap {
            listener,
            max: max_connections,
            slots: Arc::new(Semaphore::new(max_connections)),
            refused: AtomicU64::new(0),
        }
    }

    /// The stream with its slot, or None (the stream is dropped, which closes it) when every
    /// slot is taken.
    pub fn admit<S>(&self, stream: S) -> Option<Counted<S>> {
        match self.slots.clone().try_acquire_owned() {
            Ok(slot) => Some(Counted {
                inner: stream,
                _slot: slot,
            }),
            Err(_) => {
                let refused = self.refused.fetch_add(1, Ordering::Relaxed) + 1;
                // Loud once, then every 1000th: a flood must not become a log flood.
                if refused == 1 || refused.is_multiple_of(1000) {
                    tracing::warn!(
                        listener = self.listener,
                        max_connections = self.max,
                        refused,
                        "connection closed: the listener's max_connections are open"
                    );
                }
                None
            }
        }
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.max - self.slots.available_permits()
    }
}

/// A connection that holds one slot of its listener until it is closed.
#[derive(Debug)]
pub struct Counted<S> {
    inner: S,
    _slot: OwnedSemaphorePermit,
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
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

impl<S: Connected> Connected for Counted<S> {
    type ConnectInfo = S::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn slots_come_back_when_a_connection_closes() {
        let cap = ConnectionCap::new("test", 2);
        let a = cap.admit(()).unwrap();
        let _b = cap.admit(()).unwrap();
        assert_eq!(cap.open(), 2);
        assert!(cap.admit(()).is_none());
        drop(a);
        assert!(cap.admit(()).is_some());
    }
}
