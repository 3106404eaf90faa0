//! Downloading one model: streamed over HTTP(S) (reqwest with rustls; `HTTP_PROXY`,
//! `HTTPS_PROXY` and `NO_PROXY` honoured), hashed while it streams into a partial file,
//! committed only when the digest matches. URLs in messages are redacted
//! (`crate::model_ref::redact_url`).

use super::egress::{self, EgressPolicy};
use super::store::{Store, StoreError};
use crate::model_ref::redact_url;
use futures::StreamExt;
use sha2::{Digest, Sha256};
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Why a model could not be fetched; every message names the model, the (redacted) URL and
/// what to fix.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("model {name}: sha256 mismatch for {url}: expected {expected}, got {actual} ({bytes} bytes); the download was discarded. Fix sha256 in the job, or the source if it serves the wrong file")]
    Mismatch {
        name: String,
        url: String,
        expected: String,
        actual: String,
        bytes: u64,
    },
    #[error("model {name}: cannot download {url}: {reason}. Check the URL and that this node can reach it (HTTP_PROXY/HTTPS_PROXY/NO_PROXY apply; model_mirror for air-gapped nodes)")]
    Unreachable {
        name: String,
        url: String,
        reason: String,
    },
    #[error("model {name}: will not download {url}: {refused}")]
    Refused {
        name: String,
        url: String,
        refused: egress::Refused,
    },
    #[error("model {name}: {source}")]
    Store {
        name: String,
        #[source]
        source: StoreError,
    },
}

impl FetchError {
    /// Whether Nomad may retry the start (a network problem may pass; a wrong digest or
    /// an unusable cache dir will not).
    pub fn is_recoverable(&self) -> bool {
        matches!(self, FetchError::Unreachable { .. })
    }
}

/// How often at most a progress event goes out.
const PROGRESS_EVERY: Duration = Duration::from_secs(2);

/// The HTTP client for model downloads, confined to the addresses `policy` allows
/// (super::egress).
pub fn client(policy: &Arc<EgressPolicy>) -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .dns_resolver(Arc::new(egress::Resolver(policy.clone())))
        .redirect(policy.redirect_policy())
        .user_agent(concat!("nomad-driver-elide/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(Duration::from_secs(30))
        // Between two reads: a stalled server fails the start instead of hanging it.
        .read_timeout(Duration::from_secs(60))
        .https_only(false)
        .build()
}

fn mib(n: u64) -> String {
    format!("{:.1} MiB", n as f64 / (1024.0 * 1024.0))
}

/// Downloads `url` into the cache as `sha256` (the caller holds the digest's lock).
/// `progress` gets task-event messages.
pub async fn download(
    client: &reqwest::Client,
    policy: &EgressPolicy,
    store: &Store,
    name: &str,
    url: &str,
    sha256: &str,
    progress: &(dyn Fn(String) + Send + Sync),
) -> Result<PathBuf, FetchError> {
    let shown = redact_url(url);
    let unreachable = |reason: String| FetchError::Unreachable {
        name: name.to_owned(),
        url: shown.clone(),
        reason,
    };
    let store_err = |source: StoreError| FetchError::Store {
        name: name.to_owned(),
        source,
    };
    let refused = |refused: egress::Refused| FetchError::Refused {
        name: name.to_owned(),
        url: shown.clone(),
        refused,
    };
    // An IP literal never reaches the resolver: checked here (redirects by the policy).
    if let Ok(parsed) = reqwest::Url::parse(url) {
        policy.check_url(&parsed).map_err(refused)?;
    }
    // reqwest's messages carry the URL (with its credentials): never shown.
    let resp = client
        .get(url)
        .send()
        .await
        .map_err(|e| match egress::refusal_in(&e) {
            Some(r) => refused(r),
            None => unreachable(error_chain(e.without_url())),
        })?;
    let status = resp.status();
    if !status.is_success() {
        return Err(unreachable(format!("the server answered HTTP {status}")));
    }
    let total = resp.content_length();
    progress(format!(
        "Downloading model {name} (sha256 {}…) from {shown}{}",
        &sha256[..12],
        total.map(|t| format!(", {}", mib(t))).unwrap_or_default()
    ));
    let (partial, file) = store.create_partial(sha256).map_err(store_err)?;
    // The partial file is removed on every way out but the commit.
    struct Partial(Option<PathBuf>);
    impl Drop for Partial {
        fn drop(&mut self) {
            if let Some(p) = self.0.take() {
                let _ = std::fs::remove_file(p);
            }
        }
    }
    let mut guard = Partial(Some(partial.clone()));
    let mut out = std::io::BufWriter::with_capacity(1 << 20, file);
    let mut hasher = Sha256::new();
    let mut bytes: u64 = 0;
    let started = Instant::now();
    let mut last_report = Instant::now();
    let mut stream = resp.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| unreachable(error_chain(e.without_url())))?;
        hasher.update(&chunk);
        // Large sequential writes to the page cache; short enough not to need a thread.
        out.write_all(&chunk).map_err(|e| {
            store_err(StoreError::Io {
                path: partial.clone(),
                source: e,
            })
        })?;
        bytes += chunk.len() as u64;
        if last_report.elapsed() >= PROGRESS_EVERY {
            last_report = Instant::now();
            progress(match total {
                Some(t) if t > 0 => format!(
                    "Downloading model {name}: {} of {} ({}%)",
                    mib(bytes),
                    mib(t),
                    bytes * 100 / t
                ),
                _ => format!("Downloading model {name}: {}", mib(bytes)),
            });
        }
    }
    let file = out.into_inner().map_err(|e| {
        store_err(StoreError::Io {
            path: partial.clone(),
            source: e.into_error(),
        })
    })?;
    let actual: String = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    if actual != sha256 {
        return Err(FetchError::Mismatch {
            name: name.to_owned(),
            url: shown,
            expected: sha256.to_owned(),
            actual,
            bytes,
        });
    }
    let (store2, sha) = (store.clone(), sha256.to_owned());
    let p = partial.clone();
    let blob = tokio::task::spawn_blocking(move || store2.commit(&p, file, &sha))
        .await
        .map_err(|e| unreachable(format!("commit task failed: {e}")))?
        .map_err(store_err)?;
    guard.0 = None;
    progress(format!(
        "Downloaded model {name}: {} in {:.1}s, sha256 verified",
        mib(bytes),
        started.elapsed().as_secs_f64()
    ));
    Ok(blob)
}

/// An error and its causes on one line (reqwest's top-level message alone says little).
fn error_chain(e: reqwest::Error) -> String {
    let mut s = e.to_string();
    let mut cur: Option<&dyn std::error::Error> = std::error::Error::source(&e);
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
