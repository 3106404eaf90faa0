//! StartTask's part of the model cache (driver/src/models): the job's `model {}` blocks →
//! cached files, bound read-only at `local/models/<name>` through the shim's host-volume
//! machinery (fd-based, mount points made beneath the task dir without following symlinks),
//! and `ELIDE_MODELS_DIR` in the task's environment.

use super::error::TaskError;
use super::spec::task_dir;
use super::Tasks;
use crate::config::{PluginConfig, TaskConfig};
use crate::model_ref::{MODELS_DIR_ENV, MODELS_TASK_DIR};
use crate::models::egress::EgressPolicy;
use common::proto::drivers::TaskConfig as NomadTask;
use common::sandbox::VolumeSpec;

impl Tasks {
    /// Fetches what the task needs (waiting for a download another task started) and
    /// returns the read-only volumes; sets `ELIDE_MODELS_DIR` unless the job set it.
    pub(super) async fn prepare_models(
        &self,
        cfg: &PluginConfig,
        task: &NomadTask,
        tc: &mut TaskConfig,
    ) -> Result<Vec<VolumeSpec>, TaskError> {
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
                &EgressPolicy::from_config(&cfg.model_internal_hosts, &cfg.model_mirror),
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
                    TaskError::Recoverable(msg)
                } else {
                    TaskError::Permanent(msg)
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

#[cfg(test)]
mod tests {
    use super::super::launch::LaunchError;
    use super::super::testing::Harness;
    use crate::models::store::Store;
    use common::proto::drivers::DestroyTaskRequest;
    use common::sandbox::VolumeSpec;
    use sha2::{Digest, Sha256};
    use std::io::Write;

    /// The job's config with one `model` block in `elide_opts`.
    fn config_with_model(url: &str, sha: &str, name: &str) -> Vec<u8> {
        use rmpv::Value;
        let model = Value::Map(vec![
            (Value::from("source"), Value::from(url)),
            (Value::from("sha256"), Value::from(sha)),
            (Value::from("name"), Value::from(name)),
        ]);
        let opts = Value::Map(vec![(Value::from("model"), Value::Array(vec![model]))]);
        let map = Value::Map(vec![
            (Value::from("script"), Value::from("local/app.py")),
            (Value::from("elide_opts"), opts),
        ]);
        let mut b = Vec::new();
        rmpv::encode::write_value(&mut b, &map).unwrap();
        b
    }

    /// A harness whose model cache already holds `data` (no download needed).
    fn harness_with_cached(data: &[u8]) -> (Harness, Store, String) {
        let h = Harness::new();
        let mut cfg = h.plugin.config();
        cfg.model_cache_dir = h.dir.path().join("models");
        h.plugin.set_config(cfg.clone(), None);
        let store = Store::open(&cfg.model_cache_dir).unwrap();
        let sha: String = Sha256::digest(data)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let (p, mut f) = store.create_partial(&sha).unwrap();
        f.write_all(data).unwrap();
        store.commit(&p, f, &sha).unwrap();
        (h, store, sha)
    }

    #[tokio::test]
    async fn a_cached_model_becomes_a_read_only_volume_and_its_ref_lives_until_destroy() {
        let (mut h, store, sha) = harness_with_cached(b"model bytes");
        let mut task = h.task("ai");
        // Unreachable: the model is taken from the cache without asking the network.
        task.msgpack_driver_config = config_with_model("http://127.0.0.1:9/m", &sha, "m.gguf");
        h.start(task.clone()).await.unwrap();
        let spec = h.launcher.specs.lock().unwrap()[0].clone();
        let task_dir = std::path::Path::new(&task.alloc_dir).join("ai");
        assert!(spec.sandbox.unwrap().volumes.contains(&VolumeSpec {
            host_path: store.blob(&sha),
            task_path: "local/models/m.gguf".into(),
            read_only: true,
        }));
        assert_eq!(
            spec.env.get("ELIDE_MODELS_DIR").map(String::as_str),
            Some(task_dir.join("local/models").to_str().unwrap())
        );
        let events = h.event_messages();
        assert!(
            events
                .iter()
                .any(|m| m.contains("m.gguf") && m.contains("node's cache")),
            "{events:?}"
        );
        assert_eq!(store.users(&sha), vec![task_dir]);
        h.tasks
            .destroy(DestroyTaskRequest {
                task_id: task.id.clone(),
                force: true,
            })
            .await
            .unwrap();
        assert!(store.users(&sha).is_empty());
    }

    #[tokio::test]
    async fn a_start_that_fails_after_the_fetch_drops_its_refs() {
        let (h, store, sha) = harness_with_cached(b"other model");
        let mut task = h.task("ai");
        task.msgpack_driver_config = config_with_model("http://127.0.0.1:9/m", &sha, "m.gguf");
        *h.launcher.fail.lock().unwrap() = Some(LaunchError::Refused("bad spec".into()));
        assert!(h.start(task).await.is_err());
        assert!(store.users(&sha).is_empty());
    }

    #[tokio::test]
    async fn an_unreachable_model_fails_the_start_as_recoverable() {
        let h = Harness::new();
        let mut cfg = h.plugin.config();
        cfg.model_cache_dir = h.dir.path().join("models");
        cfg.model_internal_hosts = vec!["127.0.0.1".into()];
        h.plugin.set_config(cfg, None);
        let mut task = h.task("ai");
        let sha = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
        task.msgpack_driver_config = config_with_model("http://127.0.0.1:9/m", sha, "m.gguf");
        let e = h.start(task).await.unwrap_err();
        assert!(
            e.message().contains("cannot download http://127.0.0.1:9/m"),
            "{}",
            e.message()
        );
        assert!(
            h.launcher.specs.lock().unwrap().is_empty(),
            "no shim launched"
        );
    }
}
