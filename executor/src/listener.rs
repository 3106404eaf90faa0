//! The control socket's accept loop, bounded. tonic's own loop retries a failed accept at
//! once, so a shim out of fds (EMFILE, with idle connections holding them) would spin a CPU;
//! and every connection holds an fd for as long as its peer likes. Here:
//!
//! - at most [`max_connections`] connections at a time (the rest wait in the kernel's
//!   listen backlog), derived from `RLIMIT_NOFILE` so the shim keeps fds for its own work;
//! - a failing accept backs off (10 ms doubling to 1 s) instead of being retried at once;
//! - a connection whose peer sends nothing within [`FIRST_BYTES_DEADLINE`] (a gRPC client
//!   sends the HTTP/2 preface at once) is closed, so silent sockets cannot hold every slot.
//!
//! Dead peers of live HTTP/2 connections are found by keepalive pings.
//!
//! [`serve`] runs the gRPC service over HTTP/2 on those connections with hyper directly
//! rather than through `tonic::transport::Server`: the shim then links neither HTTP/1 nor
//! tonic's router (−70 kB of binary, and every kB of a shim's binary is a kB of its VmRSS:
//! docs/performance.md). Only HTTP/2 prior knowledge is spoken, which is all a gRPC client
//! sends; a stop lets the calls in flight finish (GOAWAY), as tonic's graceful shutdown does.

use futures::Stream;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::UnixStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Sleep;

use common::proto::executor::executor_server::ExecutorServer;

/// Connections served at once, at most (the plugin needs one or two; `status` one each).
pub const MAX_CONNECTIONS: usize = 64;
/// Fds kept for everything but connections (state file, /proc, FIFOs, pipes, the runtime's
/// spawn).
const RESERVED_FDS: u64 = 32;
const MIN_CONNECTIONS: usize = 4;
/// How long a new connection may stay silent before it is closed.
pub const FIRST_BYTES_DEADLINE: Duration = Duration::from_secs(2);
const FIRST_BACKOFF: Duration = Duration::from_millis(10);
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// The connection cap for this process's `RLIMIT_NOFILE`.
pub fn max_connections() -> usize {
    let soft = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map(|(soft, _)| soft)
        .unwrap_or(1024);
    let room = usize::try_from(soft.saturating_sub(RESERVED_FDS)).unwrap_or(usize::MAX);
    room.clamp(MIN_CONNECTIONS, MAX_CONNECTIONS)
}

/// The pause after the `failures`-th accept error in a row.
fn backoff(failures: u32) -> Duration {
    FIRST_BACKOFF
        .saturating_mul(1u32 << failures.saturating_sub(1).min(16))
        .min(MAX_BACKOFF)
}

/// `accepted` (a listener's stream of connections) with the cap, the backoff and the
/// first-bytes deadline. Accept errors are logged and never end the stream.
pub fn bounded<S>(accepted: S, max: usize) -> impl Stream<Item = io::Result<Conn>>
where
    S: Stream<Item = io::Result<UnixStream>> + Unpin,
{
    let permits = Arc::new(Semaphore::new(max));
    futures::stream::unfold(
        (accepted, permits, 0u32),
        |(mut accepted, permits, mut failures)| async move {
            use futures::StreamExt;
            loop {
                // Wait for a free slot before accepting: the kernel queues the rest.
                let permit = permits.clone().acquire_owned().await.ok()?;
                match accepted.next().await? {
                    Ok(stream) => {
                        let conn = Conn::new(stream, permit);
                        return Some((Ok(conn), (accepted, permits, 0)));
                    }
                    Err(e) => {
                        drop(permit);
                        failures = failures.saturating_add(1);
                        let pause = backoff(failures);
                        if failures.is_power_of_two() {
                            tracing::warn!(error = %e, failures, ?pause, "accept on the control socket failed; backing off");
                        }
                        tokio::time::sleep(pause).await;
                    }
                }
            }
        },
    )
}

/// One accepted connection: holds its slot until dropped, and fails its reads once the
/// first-bytes deadline passes in silence.
pub struct Conn {
    stream: UnixStream,
    _slot: OwnedSemaphorePermit,
    /// Until the peer's first bytes arrive.
    deadline: Option<Pin<Box<Sleep>>>,
}

impl Conn {
    fn new(stream: UnixStream, slot: OwnedSemaphorePermit) -> Conn {
        Conn {
            stream,
            _slot: slot,
            deadline: Some(Box::pin(tokio::time::sleep(FIRST_BYTES_DEADLINE))),
        }
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.stream).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            if buf.filled().len() > before {
                self.deadline = None;
            }
            return polled;
        }
        if polled.is_pending() {
            if let Some(d) = self.deadline.as_mut() {
                if d.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the peer sent nothing after connecting",
                    )));
                }
            }
        }
        polled
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// Pings a silent connection this often, and closes it when a ping is not answered in
/// [`KEEPALIVE_TIMEOUT`]: peers that died without closing are found and their slots freed.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// Serves the shim's gRPC service on every connection of `incoming` until `stop` resolves,
/// then lets the calls in flight finish (the caller bounds how long: `serve.rs`).
pub async fn serve(
    service: ExecutorServer<crate::service::Service>,
    incoming: impl Stream<Item = io::Result<Conn>>,
    stop: impl Future<Output = ()>,
) {
    use futures::StreamExt;
    let mut http2 = hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new());
    http2
        .timer(hyper_util::rt::TokioTimer::new())
        .keep_alive_interval(Some(KEEPALIVE_INTERVAL))
        .keep_alive_timeout(KEEPALIVE_TIMEOUT);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let incoming = std::pin::pin!(incoming.fuse());
    let mut incoming = incoming;
    let mut stop = std::pin::pin!(stop);
    loop {
        let conn = tokio::select! {
            _ = &mut stop => break,
            next = incoming.next() => match next {
                Some(Ok(conn)) => conn,
                // `bounded` logs and retries failed accepts itself.
                Some(Err(_)) => continue,
                None => break,
            },
        };
        let served = http2.serve_connection(
            hyper_util::rt::TokioIo::new(conn),
            hyper_util::service::TowerToHyperService::new(service.clone()),
        );
        let served = graceful.watch(served);
        tokio::spawn(async move {
            if let Err(e) = served.await {
                tracing::debug!(error = %e, "control connection ended with an error");
            }
        });
    }
    graceful.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;

    #[test]
    fn the_cap_follows_the_fd_limit_within_bounds() {
        assert!((MIN_CONNECTIONS..=MAX_CONNECTIONS).contains(&max_connections()));
        assert_eq!(backoff(1), Duration::from_millis(10));
        assert_eq!(backoff(2), Duration::from_millis(20));
        assert_eq!(backoff(8), MAX_BACKOFF);
        assert_eq!(backoff(u32::MAX), MAX_BACKOFF);
    }

    /// An accept that fails every time (EMFILE) is retried after growing pauses, not at once.
    #[tokio::test]
    async fn failing_accepts_back_off() {
        let polled = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let counter = polled.clone();
        let failing = futures::stream::poll_fn(move |_| {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Poll::Ready(Some(Err::<UnixStream, _>(io::Error::from_raw_os_error(
                libc::EMFILE,
            ))))
        });
        let mut s = Box::pin(bounded(failing, 4));
        // Nothing is ever yielded; see how many accepts a second brings (10+20+…+640 ms:
        // 7 or 8, where a retry at once makes millions).
        let _ = tokio::time::timeout(Duration::from_secs(1), s.next()).await;
        let n = polled.load(std::sync::atomic::Ordering::SeqCst);
        assert!((3..=10).contains(&n), "{n} accepts in 1 s");
    }

    /// The slot of a connection is free again once it is dropped.
    #[tokio::test]
    async fn slots_are_held_by_connections() {
        let (a, _b) = UnixStream::pair().unwrap();
        let (c, _d) = UnixStream::pair().unwrap();
        let mut s = Box::pin(bounded(futures::stream::iter(vec![Ok(a), Ok(c)]), 1));
        let first = s.next().await.unwrap().unwrap();
        let second = tokio::time::timeout(Duration::from_millis(100), s.next()).await;
        assert!(second.is_err(), "a second connection over a cap of 1");
        drop(first);
        assert!(s.next().await.unwrap().is_ok());
    }
}
