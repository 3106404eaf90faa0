//! StartTask's part of the model cache (driver/src/models): the job's `model {}` blocks →
//! cached files, bound read-only at `local/models/<name>` through the shim's host-volume
//! machinery (fd-based, mount points made beneath the task dir without following symlinks),
//! and `ELIDE_MODELS_DIR` in the task's environment.

use super::spec::task_dir;
use super::{status, Tasks};
use common::config::{PluginConfig, TaskConfig};
use common::model_ref::{MODELS_DIR_ENV, MODELS_TASK_DIR};
use common::proto::drivers::TaskConfig as NomadTask;
use common::sandbox::VolumeSpec;
use tonic::Status;

impl Tasks {
    /// Fetches what the task needs (waiting for a download another task started) and
    /// returns the read-only volumes; sets `ELIDE_MODELS_DIR` unless the job set it.
    pub(super) async fn prepare_models(
        &self,
        cfg: &PluginConfig,
        task: &NomadTask,
        tc: &mut TaskConfig,
    ) -> Result<Vec<VolumeSpec>, Status> {
        let Some(models) = tc.elide_opts.as_ref().map(|o| o.models.clone()) else {
            return Ok(Vec::new());
        };
        if models.is_empty() {
            return Ok(Vec::new());
        }
        let dir = task_dir(task);
        let (plugin, id, alloc, name) = (
            self.plugin.clone(),
            task.id.clone(),
            task.alloc_id.clone(),
            task.name.clone(),
        );
        let progress = move |msg: String| plugin.emit(&id, &alloc, &name, msg);
        let prepared = self
            .models
            .prepare(
                &cfg.model_cache_dir,
                cfg.model_cache_max_mb,
                &cfg.model_mirror,
                &task.id,
                &dir,
                &models,
                &progress,
            )
            .await
            .map_err(|e| {
                let msg = e.to_string();
                tracing::warn!(task_id = %task.id, "{msg}");
                if e.is_recoverable() {
                    status::recoverable(msg)
                } else {
                    status::permanent(msg)
                }
            })?;
        tc.env
            .entry(MODELS_DIR_ENV.to_owned())
            .or_insert_with(|| dir.join(MODELS_TASK_DIR).display().to_string());
        Ok(prepared
            .into_iter()
            .map(|p| VolumeSpec {
                host_path: p.blob,
                task_path: p.task_path,
                read_only: true,
            })
            .collect())
    }
}
