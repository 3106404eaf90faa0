//! The metrics endpoint: HTTP/1.1 on a TCP address or a Unix socket, on the plugin's tokio
//! runtime. `GET /metrics` (or `/`) reads the scrape-time figures, then encodes the registry:
//! OpenMetrics when the scraper asks for it (`Accept: application/openmetrics-text`, as
//! Prometheus does), else the Prometheus text format 0.0.4.
//!
//! Bound by SetConfig in the long-lived plugin process only (Nomad's config-validation
//! instances bind nothing); a SetConfig with the same address keeps the running endpoint.

use super::listen::Listen;
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};

/// Scrapes served at once (more wait for a slot; Prometheus scrapes one at a time).
const MAX_CONNECTIONS: usize = 8;
/// A scraper that sends no request headers for this long is dropped.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one scrape may wait for the shims' log counters (the rest is served as last seen).
const REFRESH_TIMEOUT: Duration = Duration::from_secs(5);
/// How long SetConfig retries an address in use (a plugin process being replaced may still
/// hold it for a moment) before it fails.
const ADDR_IN_USE_RETRY: Duration = Duration::from_secs(5);

pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Debug, thiserror::Error)]
#[error("telemetry.prometheus_listen: cannot listen on {listen}: {source}; pick a free address and port (or a socket path in an existing, writable directory)")]
pub struct BindError {
    pub listen: String,
    pub source: std::io::Error,
}

struct Running {
    listen: Listen,
    task: tokio::task::AbortHandle,
}

static RUNNING: Mutex<Option<Running>> = Mutex::new(None);

/// Serves the endpoint at `listen` (None: stops serving). Same address: nothing changes.
pub async fn configure(listen: Option<Listen>) -> Result<(), BindError> {
    {
        let mut running = RUNNING.lock().unwrap_or_else(|p| p.into_inner());
        if running.as_ref().map(|r| &r.listen) == listen.as_ref() {
            return Ok(());
        }
        if let Some(old) = running.take() {
            old.task.abort();
            if let Listen::Unix(p) = &old.listen {
                let _ = std::fs::remove_file(p);
            }
        }
    }
    let Some(listen) = listen else { return Ok(()) };
    let task = match &listen {
        Listen::Tcp(addr) => {
            let listener = bind_tcp(*addr).await.map_err(|source| BindError {
                listen: listen.to_string(),
                source,
            })?;
            tokio::spawn(accept_loop(TcpAccept(listener)))
        }
        Listen::Unix(path) => {
            let listener = bind_unix(path).map_err(|source| BindError {
                listen: listen.to_string(),
                source,
            })?;
            tokio::spawn(accept_loop(UnixAccept(listener)))
        }
    };
    tracing::info!(listen = %listen, "serving Prometheus metrics");
    *RUNNING.lock().unwrap_or_else(|p| p.into_inner()) = Some(Running {
        listen,
        task: task.abort_handle(),
    });
    Ok(())
}

async fn bind_tcp(addr: std::net::SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let deadline = tokio::time::Instant::now() + ADDR_IN_USE_RETRY;
    loop {
        match tokio::net::TcpListener::bind(addr).await {
            Err(e)
                if e.kind() == std::io::ErrorKind::AddrInUse
                    && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(250)).await
            }
            other => return other,
        }
    }
}

/// Binds the socket, replacing a stale socket file (never another kind of file, never
/// through a symlink); mode 0660.
fn bind_unix(path: &std::path::Path) -> std::io::Result<tokio::net::UnixListener> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    if let Ok(m) = std::fs::symlink_metadata(path) {
        if !m.file_type().is_socket() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "a file that is not a socket is in the way",
            ));
        }
        std::fs::remove_file(path)?;
    }
    let l = tokio::net::UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
    Ok(l)
}

trait Accept: Send + 'static {
    type Io: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    fn accept(&self) -> impl std::future::Future<Output = std::io::Result<Self::Io>> + Send;
}

struct TcpAccept(tokio::net::TcpListener);
impl Accept for TcpAccept {
    type Io = tokio::net::TcpStream;
    async fn accept(&self) -> std::io::Result<Self::Io> {
        self.0.accept().await.map(|(s, _)| s)
    }
}

struct UnixAccept(tokio::net::UnixListener);
impl Accept for UnixAccept {
    type Io = tokio::net::UnixStream;
    async fn accept(&self) -> std::io::Result<Self::Io> {
        self.0.accept().await.map(|(s, _)| s)
    }
}

async fn accept_loop<A: Accept>(listener: A) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let io = match listener.accept().await {
            Ok(io) => io,
            Err(e) => {
                // EMFILE and the like: back off instead of spinning.
                tracing::warn!(error = %e, "metrics endpoint: accept failed");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        tokio::spawn(async move {
            let _slot = slot;
            let served = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(io), hyper::service::service_fn(handle))
                .await;
            if let Err(e) = served {
                tracing::debug!(error = %e, "metrics endpoint: connection ended with an error");
            }
        });
    }
}

async fn handle(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
    Ok(respond(
        req.method(),
        req.uri().path(),
        req.headers()
            .get(hyper::header::ACCEPT)
            .and_then(|v| v.to_str().ok()),
    )
    .await)
}

fn plain(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// The response to one request (pure but for the scrape itself; tested without sockets).
pub async fn respond(method: &Method, path: &str, accept: Option<&str>) -> Response<Full<Bytes>> {
    if path != "/metrics" && path != "/" {
        return plain(
            StatusCode::NOT_FOUND,
            "not found: the metrics are at /metrics\n",
        );
    }
    if method != Method::GET && method != Method::HEAD {
        return plain(StatusCode::METHOD_NOT_ALLOWED, "only GET\n");
    }
    let _ = tokio::time::timeout(REFRESH_TIMEOUT, super::metrics().snapshot().refresh()).await;
    let openmetrics = accept.is_some_and(|a| a.contains("application/openmetrics-text"));
    match super::encode(openmetrics) {
        Ok(body) => {
            let mut r = Response::new(Full::new(Bytes::from(body)));
            r.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static(if openmetrics {
                    OPENMETRICS
                } else {
                    prometheus_client::encoding::prometheus_text::CONTENT_TYPE
                }),
            );
            r
        }
        Err(_) => plain(
            StatusCode::INTERNAL_SERVER_ERROR,
            "cannot encode the metrics\n",
        ),
    }
}
