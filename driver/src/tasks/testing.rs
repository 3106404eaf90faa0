//! The lifecycle without a Nomad agent or a real shim: a [`Launcher`] that starts a fake shim
//! (`common::testing::fake_shim`, serving the control API on the task's real Unix socket),
//! and a harness with a plugin config, a task dir and a `TaskConfig` as Nomad sends it.

use super::launch::{LaunchError, Launched, Launcher};
use super::Tasks;
use crate::config::PluginConfig;
use crate::plugin::Plugin;
use common::proto::drivers::{
    DriverTaskEvent, StartTaskRequest, TaskConfig as NomadTask, TaskHandle,
};
use common::spec::TaskSpec;
pub use common::testing::fake_shim::{FakeShim, Script, RUNTIME_PID};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::broadcast;
use tonic::Status;

/// Launches a [`FakeShim`]; a real `sleep` process stands for the shim's pid.
#[derive(Default)]
pub struct FakeLauncher {
    pub script: Arc<Script>,
    pub fail: Mutex<Option<LaunchError>>,
    pub specs: Mutex<Vec<TaskSpec>>,
    pub shims: Mutex<Vec<FakeShim>>,
    pub processes: Mutex<Vec<Child>>,
}

#[tonic::async_trait]
impl Launcher for FakeLauncher {
    async fn launch(
        &self,
        _executor: &Path,
        spec: &TaskSpec,
        _timeout: Duration,
    ) -> Result<Launched, LaunchError> {
        if let Some(e) = self.fail.lock().unwrap().take() {
            return Err(e);
        }
        self.specs.lock().unwrap().push(spec.clone());
        let shim = FakeShim::serve(&spec.socket_path, &spec.task_id, self.script.clone());
        self.shims.lock().unwrap().push(shim);
        let process = Command::new("sleep").arg("600").spawn().unwrap();
        let shim_pid = process.id() as i32;
        self.processes.lock().unwrap().push(process);
        Ok(Launched { shim_pid })
    }
}

impl FakeLauncher {
    /// Every shim launched so far dies (server and process).
    pub fn kill_shims(&self) {
        for s in self.shims.lock().unwrap().iter_mut() {
            s.kill();
        }
        for p in self.processes.lock().unwrap().iter_mut() {
            let _ = p.kill();
            let _ = p.wait();
        }
    }
}

impl Drop for FakeLauncher {
    fn drop(&mut self) {
        self.kill_shims();
    }
}

pub struct Harness {
    pub dir: tempfile::TempDir,
    pub plugin: Arc<Plugin>,
    pub launcher: Arc<FakeLauncher>,
    pub tasks: Tasks,
    pub events: broadcast::Receiver<DriverTaskEvent>,
}

/// A root-owned directory with no group/other write bit anywhere above it: the workspace's
/// target dir.
pub fn trusted_tmp() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let d = manifest
        .parent()
        .unwrap_or(manifest)
        .join("target/test-tmp");
    std::fs::create_dir_all(&d).unwrap();
    std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
    d
}

fn executable(path: &Path) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, "#!/bin/sh\n").unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

impl Harness {
    pub fn new() -> Harness {
        // Not below /tmp: StartTask only runs binaries in directories no one but root can
        // write (fingerprint::trusted), and /tmp's sticky bit is only accepted above that.
        let dir = tempfile::tempdir_in(trusted_tmp()).unwrap();
        let bin = dir.path().join("bin");
        executable(&bin.join("elide"));
        executable(&bin.join("elide-executor"));
        let cfg = PluginConfig {
            elide_binary: Some(bin.join("elide")),
            executor_binary: Some(bin.join("elide-executor")),
            runtime_dir: dir.path().join("run"),
            ..Default::default()
        };
        let plugin = Plugin::new();
        plugin.set_config(cfg, None);
        let events = plugin.events.subscribe();
        let launcher = Arc::new(FakeLauncher::default());
        let tasks = Tasks::with_launcher(plugin.clone(), launcher.clone());
        Harness {
            dir,
            plugin,
            launcher,
            tasks,
            events,
        }
    }

    pub fn script(&self) -> &Script {
        &self.launcher.script
    }

    /// Nomad's TaskConfig for task `name`, its script written into the task dir.
    pub fn task(&self, name: &str) -> NomadTask {
        let alloc_dir = self.dir.path().join("alloc");
        let local = alloc_dir.join(name).join("local");
        std::fs::create_dir_all(&local).unwrap();
        std::fs::write(local.join("app.py"), "print('hi')\n").unwrap();
        NomadTask {
            id: format!("a1/{name}/0a1b2c3d"),
            name: name.to_owned(),
            alloc_id: "a1".into(),
            alloc_dir: alloc_dir.display().to_string(),
            msgpack_driver_config: driver_config(&[("script", "local/app.py")]),
            ..Default::default()
        }
    }

    pub async fn start(&self, task: NomadTask) -> Result<TaskHandle, Status> {
        let r = self
            .tasks
            .start(StartTaskRequest { task: Some(task) })
            .await?;
        Ok(r.handle.unwrap())
    }

    /// The messages of the task events published so far.
    pub fn event_messages(&mut self) -> Vec<String> {
        let mut out = Vec::new();
        while let Ok(e) = self.events.try_recv() {
            out.push(e.message);
        }
        out
    }

    /// A second plugin process on the same node (shares nothing but the files).
    pub fn restarted_plugin(&self) -> Tasks {
        Tasks::with_launcher(self.plugin.clone(), self.launcher.clone())
    }

    pub fn state_dir(&self, task: &NomadTask) -> PathBuf {
        common::paths::state_dir(Path::new(&task.alloc_dir), &task.id)
    }
}

/// The job's `config {}` as cty msgpack: a map with the given string attributes.
pub fn driver_config(pairs: &[(&str, &str)]) -> Vec<u8> {
    let map = rmpv::Value::Map(
        pairs
            .iter()
            .map(|(k, v)| (rmpv::Value::from(*k), rmpv::Value::from(*v)))
            .collect(),
    );
    let mut b = Vec::new();
    rmpv::encode::write_value(&mut b, &map).unwrap();
    b
}
