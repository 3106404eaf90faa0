//! The node-wide model cache: `elide_opts { model { source sha256 name } }` files fetched
//! once per node, verified while they stream, and shared read-only by every task that uses
//! them (each task gets a read-only bind of the cached file at `local/models/<name>`,
//! made by its shim like a read-only host volume).
//!
//! - [`store`] — the cache on disk: layout, locks per digest, refs, LRU eviction;
//! - [`fetch`] — one streamed, verified download;
//! - [`cli`] — `nomad-driver-elide models list|prune` for operators.
//!
//! One download per digest: an in-process async mutex per digest (tasks of this plugin
//! wait without holding a thread), then the digest's file lock (other plugin processes,
//! e.g. an old one still finishing during an upgrade, and `models prune`).

pub mod cli;
pub mod egress;
pub mod fetch;
pub mod store;

use crate::model_ref::{ModelRef, MODELS_TASK_DIR};
use egress::EgressPolicy;
use fetch::FetchError;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use store::{Store, StoreError};

/// A model ready for a task: the cached file and where the task sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prepared {
    pub blob: PathBuf,
    /// Relative to the task dir: `local/models/<name>`.
    pub task_path: String,
}

/// The plugin's model fetcher: the HTTP client and the per-digest locks of this process.
#[derive(Default)]
pub struct Models {
    /// Built for the policy of the current plugin config; rebuilt when it changes.
    client: Mutex<Option<(Arc<EgressPolicy>, reqwest::Client)>>,
    downloads: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// What went wrong preparing a task's models.
#[derive(Debug, thiserror::Error)]
pub enum ModelsError {
    #[error(transparent)]
    Fetch(#[from] FetchError),
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("cannot create the HTTP client for model downloads: {0}")]
    Client(String),
}

impl ModelsError {
    pub fn is_recoverable(&self) -> bool {
        match self {
            ModelsError::Fetch(f) => f.is_recoverable(),
            ModelsError::Store(StoreError::Io { .. }) => true,
            _ => false,
        }
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    match tokio::task::spawn_blocking(f).await {
        Ok(v) => v,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

/// Where the cache of `cache_dir` holds the model (for tests and the CLI).
pub fn blob_path(cache_dir: &Path, sha256: &str) -> PathBuf {
    cache_dir.join("blobs").join(sha256)
}

impl Models {
    fn client(&self, policy: &EgressPolicy) -> Result<reqwest::Client, ModelsError> {
        let mut cached = self.client.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((p, c)) = cached.as_ref() {
            if **p == *policy {
                return Ok(c.clone());
            }
        }
        let policy = Arc::new(policy.clone());
        let c = fetch::client(&policy).map_err(|e| ModelsError::Client(e.to_string()))?;
        *cached = Some((policy, c.clone()));
        Ok(c)
    }

    fn download_lock(&self, sha256: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut m = self.downloads.lock().unwrap_or_else(|p| p.into_inner());
        m.entry(sha256.to_owned()).or_default().clone()
    }

    /// Makes every model of the task available in the cache (downloading what is missing),
    /// records the task as their user, and evicts what the cap asks for. On error the
    /// task's refs are dropped again.
    #[allow(clippy::too_many_arguments)]
    pub async fn prepare(
        &self,
        cache_dir: &Path,
        max_mb: u64,
        mirror: &str,
        policy: &EgressPolicy,
        task_id: &str,
        task_dir: &Path,
        models: &[ModelRef],
        progress: &(dyn Fn(String) + Send + Sync),
    ) -> Result<Vec<Prepared>, ModelsError> {
        let dir = cache_dir.to_path_buf();
        let store = blocking(move || Store::open(&dir)).await?;
        let r = self
            .prepare_in(&store, mirror, policy, task_id, task_dir, models, progress)
            .await;
        if r.is_err() {
            let (s, id) = (store.clone(), task_id.to_owned());
            let _ = blocking(move || s.release(&id)).await;
        }
        let prepared = r?;
        let s = store.clone();
        let max_bytes = max_mb.saturating_mul(1024 * 1024);
        match blocking(move || s.evict(max_bytes)).await {
            Ok(gone) if !gone.is_empty() => {
                tracing::info!(evicted = ?gone, "model cache over model_cache_max_mb: evicted the least recently used unreferenced models")
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "model cache eviction failed"),
        }
        Ok(prepared)
    }

    #[allow(clippy::too_many_arguments)]
    async fn prepare_in(
        &self,
        store: &Store,
        mirror: &str,
        policy: &EgressPolicy,
        task_id: &str,
        task_dir: &Path,
        models: &[ModelRef],
        progress: &(dyn Fn(String) + Send + Sync),
    ) -> Result<Vec<Prepared>, ModelsError> {
        let mut out = Vec::new();
        for m in models {
            // The ref first: from here on eviction leaves the model alone.
            let (s, sha, id, td) = (
                store.clone(),
                m.sha256.clone(),
                task_id.to_owned(),
                task_dir.to_path_buf(),
            );
            blocking(move || s.add_ref(&sha, &id, &td)).await?;
            let mutex = self.download_lock(&m.sha256);
            let _in_process = match mutex.try_lock() {
                Ok(g) => g,
                Err(_) => {
                    progress(format!(
                        "Waiting for another task's download of model {} (sha256 {}…)",
                        m.name,
                        &m.sha256[..12]
                    ));
                    mutex.lock().await
                }
            };
            let (s, sha) = (store.clone(), m.sha256.clone());
            let file_lock = blocking(move || s.lock(&sha)).await?;
            let blob = match store.present(&m.sha256) {
                Some(size) => {
                    let (s, sha) = (store.clone(), m.sha256.clone());
                    blocking(move || s.touch(&sha)).await;
                    progress(format!(
                        "Model {} (sha256 {}…, {:.1} MiB) is in the node's cache",
                        m.name,
                        &m.sha256[..12],
                        size as f64 / 1048576.0
                    ));
                    store.blob(&m.sha256)
                }
                None => {
                    let (s, sha) = (store.clone(), m.sha256.clone());
                    blocking(move || s.clear_partials(&sha)).await?;
                    fetch::download(
                        &self.client(policy)?,
                        policy,
                        store,
                        &m.name,
                        &m.url(mirror),
                        &m.sha256,
                        progress,
                    )
                    .await?
                }
            };
            drop(file_lock);
            out.push(Prepared {
                blob,
                task_path: format!("{MODELS_TASK_DIR}/{}", m.name),
            });
        }
        Ok(out)
    }

    /// Drops the task's refs (DestroyTask). A cache dir that does not exist (no task ever
    /// used a model) or cannot be opened has none; it is never created here.
    pub async fn release(&self, cache_dir: &Path, task_id: &str) {
        let (dir, id) = (cache_dir.to_path_buf(), task_id.to_owned());
        let r = blocking(move || {
            if !dir.is_dir() {
                return Ok(());
            }
            Store::open(&dir).and_then(|s| s.release(&id))
        })
        .await;
        if let Err(e) = r {
            tracing::debug!(task_id, error = %e, "releasing the task's model refs");
        }
    }
}

#[cfg(test)]
mod tests;
