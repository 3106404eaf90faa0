//! Exiting when no agent has been connected for a long time.
//!
//! After an agent crash the plugin keeps running so the restarted agent can reattach. If the
//! agent never comes back — or reattaches through go-plugin >= 1.5, which no longer kills a
//! plugin it fails to dial — the old process would live forever. Tasks do not depend on it
//! (they live in their shims, and any new plugin process recovers them), so after
//! `IDLE_EXIT` without a single connection the plugin leaves.

use common::sync::lock;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::UnixStream;

pub const IDLE_EXIT: Duration = Duration::from_secs(15 * 60);

/// Counts open connections and remembers when the last one closed.
#[derive(Default)]
pub struct Connections {
    open: AtomicUsize,
    last_closed: Mutex<Option<Instant>>,
}

impl Connections {
    pub fn open(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }

    /// How long nothing has been connected (None while something is, or before the first
    /// connection closed: a fresh process is never "idle").
    pub fn idle_for(&self) -> Option<Duration> {
        if self.open() > 0 {
            return None;
        }
        lock(&self.last_closed).map(|t| t.elapsed())
    }

    pub fn track(self: &Arc<Self>, stream: UnixStream) -> Tracked {
        self.open.fetch_add(1, Ordering::SeqCst);
        Tracked {
            stream,
            conns: self.clone(),
        }
    }
}

/// A connection that reports its end to `Connections`.
pub struct Tracked {
    stream: UnixStream,
    conns: Arc<Connections>,
}

impl Drop for Tracked {
    fn drop(&mut self) {
        *lock(&self.conns.last_closed) = Some(Instant::now());
        self.conns.open.fetch_sub(1, Ordering::SeqCst);
    }
}

impl tonic::transport::server::Connected for Tracked {
    type ConnectInfo = ();
    fn connect_info(&self) -> Self::ConnectInfo {}
}

impl AsyncRead for Tracked {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn counts_connections_and_idle_time() {
        let conns = Arc::new(Connections::default());
        assert_eq!(conns.idle_for(), None, "a fresh process is not idle");
        let (a, _b) = UnixStream::pair().unwrap();
        let t = conns.track(a);
        assert_eq!(conns.open(), 1);
        assert_eq!(conns.idle_for(), None);
        drop(t);
        assert_eq!(conns.open(), 0);
        assert!(conns.idle_for().is_some());
    }
}
