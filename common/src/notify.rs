//! Shim API level 6: what a shim has to tell the plugin — its events, its log counters and its
//! runtime's exit — as datagrams to the plugin's notify socket (`EventsRequest.notify_socket`)
//! instead of on an Events stream and a Wait call held open for the task's lifetime.
//!
//! Why: a connection per shim (HTTP/2 buffers, tonic's channel, the two streams) was about
//! 68 KiB of the plugin's memory per idle task (docs/performance.md, "At scale"). With this,
//! an idle task costs the plugin its entry, a pidfd on its shim and its stats stream to Nomad.
//!
//! - [`Notifier`] (the shim's side): a queue and one task sending its datagrams in order to a
//!   connected `SOCK_DGRAM` socket, waiting for room when the plugin is behind (a connected
//!   Unix datagram socket blocks on the receiver's queue, so nothing is dropped for speed).
//!   A plugin that is gone (restarting) loses the datagrams: the next one subscribes again and
//!   asks Status (the exit, the counts) and the remembered events, so nothing is lost for good.
//! - [`Hub`] (the plugin's side): its socket, bound in the plugin's runtime dir (root only),
//!   and a receive that also returns the sender's uid (`SO_PASSCRED`), so a datagram from
//!   anyone but the plugin's own user is dropped.

use crate::proto::executor::{LogStatus, ShimEvent};
use prost::Message;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixDatagram as StdDatagram;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::unix::AsyncFd;
use tokio::net::UnixDatagram;
use tokio::sync::mpsc;

/// The largest datagram the hub reads (an event is a message of a few hundred bytes; log
/// counters two streams' figures).
pub const MAX_DATAGRAM: usize = 64 * 1024;

/// How long a shim waits for room in the plugin's socket before it drops a datagram (the
/// plugin is hung; when it comes back it asks Status for what it missed).
pub const SEND_TIMEOUT: Duration = Duration::from_secs(10);

/// The shim's side: datagrams to one plugin's notify socket, sent in order by a task of their
/// own. Cloning shares the queue.
#[derive(Clone)]
pub struct Notifier {
    tx: mpsc::UnboundedSender<ShimEvent>,
}

impl Notifier {
    /// Connects to the plugin's notify socket at `socket` (an absolute path) and starts the
    /// sending task (on the current tokio runtime). Every datagram names `task_id`.
    pub fn connect(socket: &Path, task_id: String) -> io::Result<Notifier> {
        if !socket.is_absolute() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the notify socket must be an absolute path",
            ));
        }
        let sock = UnixDatagram::unbound()?;
        sock.connect(socket)?;
        let (tx, mut rx) = mpsc::unbounded_channel::<ShimEvent>();
        tokio::spawn(async move {
            let mut buf = Vec::with_capacity(256);
            while let Some(mut ev) = rx.recv().await {
                ev.task_id.clone_from(&task_id);
                buf.clear();
                if ev.encode(&mut buf).is_err() {
                    continue;
                }
                match tokio::time::timeout(SEND_TIMEOUT, sock.send(&buf)).await {
                    Ok(Ok(_)) => {}
                    // The plugin went away: its successor subscribes again.
                    Ok(Err(e)) => tracing::debug!(error = %e, "notify datagram not delivered"),
                    Err(_) => tracing::warn!(
                        timeout = ?SEND_TIMEOUT,
                        "the plugin's notify socket stayed full; a datagram was dropped (the plugin asks Status when it reattaches)"
                    ),
                }
            }
        });
        Ok(Notifier { tx })
    }

    /// A task event.
    pub fn message(&self, message: String, at_unix_ms: i64) {
        self.send(ShimEvent {
            message,
            at_unix_ms,
            ..Default::default()
        });
    }

    /// The log counters.
    pub fn logs(&self, logs: LogStatus) {
        self.send(ShimEvent {
            logs: Some(logs),
            at_unix_ms: crate::state::now_ms(),
            ..Default::default()
        });
    }

    /// The runtime has exited (the plugin asks Wait for how).
    pub fn exited(&self) {
        self.send(ShimEvent {
            exited: true,
            at_unix_ms: crate::state::now_ms(),
            ..Default::default()
        });
    }

    fn send(&self, ev: ShimEvent) {
        // Closed only once the sending task is gone with the runtime.
        let _ = self.tx.send(ev);
    }
}

/// The plugin's side: its notify socket.
pub struct Hub {
    path: PathBuf,
    sock: AsyncFd<StdDatagram>,
}

/// One datagram as received.
pub struct Received {
    pub event: ShimEvent,
    /// The sender's uid (from its credentials, not from what it wrote).
    pub uid: u32,
}

impl Hub {
    /// Binds `path` (removing a stale socket file there first) with mode 0600, on the current
    /// tokio runtime.
    pub fn bind(path: &Path) -> io::Result<Hub> {
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let sock = StdDatagram::bind(path)?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        nix::sys::socket::setsockopt(&sock, nix::sys::socket::sockopt::PassCred, &true)
            .map_err(io::Error::from)?;
        sock.set_nonblocking(true)?;
        // SAFETY: the AsyncFd owns the socket, which keeps the same open fd until it is dropped.
        let sock = unsafe { AsyncFd::register(sock) }?;
        Ok(Hub {
            path: path.to_path_buf(),
            sock,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The next datagram; one that does not decode is an error (the caller logs and goes on).
    pub async fn recv(&self, buf: &mut [u8]) -> io::Result<Result<Received, prost::DecodeError>> {
        loop {
            let mut ready = self.sock.readable().await?;
            match ready.try_io(|s| recv_with_uid(s.get_ref().as_raw_fd(), buf)) {
                Ok(Ok((n, uid))) => {
                    return Ok(ShimEvent::decode(&buf[..n]).map(|event| Received { event, uid }))
                }
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn recv_with_uid(fd: std::os::fd::RawFd, buf: &mut [u8]) -> io::Result<(usize, u32)> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags, UnixCredentials};
    let mut iov = [io::IoSliceMut::new(buf)];
    let mut space = nix::cmsg_space!(UnixCredentials);
    let msg = recvmsg::<()>(fd, &mut iov, Some(&mut space), MsgFlags::MSG_DONTWAIT)
        .map_err(io::Error::from)?;
    let n = msg.bytes;
    // Without credentials (not possible with SO_PASSCRED set) the sender counts as nobody.
    let mut uid = u32::MAX;
    if let Ok(cmsgs) = msg.cmsgs() {
        for c in cmsgs {
            if let ControlMessageOwned::ScmCredentials(cr) = c {
                uid = cr.uid();
            }
        }
    }
    Ok((n, uid))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn datagrams_arrive_in_order_with_the_task_and_the_senders_uid() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let hub = Hub::bind(&path).unwrap();
        let n = Notifier::connect(&path, "t1".into()).unwrap();
        n.message("first".into(), 5);
        n.logs(LogStatus {
            dir: "/l".into(),
            ..Default::default()
        });
        n.exited();
        let mut buf = vec![0; MAX_DATAGRAM];
        let a = hub.recv(&mut buf).await.unwrap().unwrap();
        assert_eq!(
            (a.event.task_id.as_str(), a.event.message.as_str()),
            ("t1", "first")
        );
        assert_eq!(a.uid, nix::unistd::geteuid().as_raw());
        let b = hub.recv(&mut buf).await.unwrap().unwrap();
        assert_eq!(b.event.logs.unwrap().dir, "/l");
        let c = hub.recv(&mut buf).await.unwrap().unwrap();
        assert!(c.event.exited && c.event.message.is_empty());
    }

    #[tokio::test]
    async fn the_socket_is_private_and_a_stale_file_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        std::fs::write(&path, "stale").unwrap();
        let hub = Hub::bind(&path).unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        drop(hub);
        assert!(!path.exists(), "the hub removes its socket when dropped");
        let e = Notifier::connect(Path::new("relative.sock"), "t".into())
            .err()
            .unwrap();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
    }

    #[tokio::test]
    async fn a_shim_whose_plugin_is_gone_cannot_subscribe_to_it() {
        let dir = tempfile::tempdir().unwrap();
        let e = Notifier::connect(&dir.path().join("none.sock"), "t".into())
            .err()
            .unwrap();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
    }
}
