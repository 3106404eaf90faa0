//! One task as the shim sees it: the spec, the persisted state, the runtime child, its exit
//! (published to any number of waiters), and the operations of the control API.

use crate::error::{StartError, TaskError};
use crate::events::Events;
use crate::logs;
use crate::reaper::{self, Reaped};
use crate::runtime;
use crate::stats::{self, Sampler};
use common::cgroup::TaskCgroup;
use common::proto::executor as api;
use common::signals::TaskSignal;
use common::spec::TaskSpec;
use common::state::{
    now_ms, ExitRecord, ExitSummary, SandboxState, StateError, TaskState, STATE_VERSION,
};
use common::sync::lock;
use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{watch, Notify};

/// How long to wait for the runtime to die after SIGKILL before giving up (Nomad's executor
/// waits 15 s too).
pub const KILL_WAIT: Duration = Duration::from_secs(15);
/// How long Stop/Shutdown wait for the rest of the process group to disappear after the main
/// process was reaped.
const GROUP_WAIT: Duration = Duration::from_secs(2);
/// While waiting for the group to disappear, how often to look again when no child was reaped
/// (every leftover is re-parented to us, the subreaper, so reaps are the usual wake-up).
const GROUP_RECHECK: Duration = Duration::from_millis(100);
/// How long, after the runtime and everything left of the task were killed, the shim waits
/// for the output pipes to reach EOF before it records the exit anyway (only a process that
/// survived SIGKILL, or one outside the task holding a pipe, makes it wait that long).
const DRAIN_WAIT: Duration = Duration::from_secs(5);

pub struct Shim {
    pub spec: TaskSpec,
    state: Mutex<TaskState>,
    exit_tx: watch::Sender<Option<api::ExitStatus>>,
    /// Counts reaped children, to wake those waiting for the task's processes to go.
    reaped_tx: watch::Sender<u64>,
    /// Children other than the runtime whose exits are awaited (exec helpers).
    pub children: reaper::Children,
    cgroup: Mutex<Option<Arc<TaskCgroup>>>,
    /// Where the task's output goes (log files the shim writes, or FIFOs it keeps a reader
    /// of): see `logs`.
    output: Mutex<Option<logs::Output>>,
    /// What the shim has to tell about the task (the Events RPC).
    pub events: Events,
    /// Set when the runtime was reaped and its exit is being recorded.
    exiting: AtomicBool,
    /// PID-namespace mode: the pipe on which the namespace's init reports the runtime's raw
    /// wait status (the init's own exit cannot carry a signal death).
    init_status: Mutex<Option<OwnedFd>>,
    /// Set when Stop escalated to SIGKILL, to explain the exit.
    kill_note: Mutex<Option<String>>,
    starting: AtomicBool,
    closing: AtomicBool,
    shutdown: Notify,
    /// Woken after each Start (or failed Start), so the serve loop wakes where its stack is
    /// shallow (see `serve::serve`).
    start_done: Notify,
}

impl Shim {
    pub fn new(spec: TaskSpec) -> Arc<Self> {
        let me = std::process::id() as i32;
        // The env stays in `Shim::spec` (memory) only: the state is what goes to disk.
        let mut recorded = spec.clone();
        recorded.env.clear();
        let state = TaskState {
            version: STATE_VERSION,
            spec: recorded,
            shim_pid: me,
            shim_start_time: common::proc::start_time(me).unwrap_or(0),
            boot_id: common::proc::boot_id(),
            runtime_pid: None,
            runtime_start_time: None,
            started_at_unix_ms: None,
            cgroup: None,
            exit: None,
            sandbox: None,
        };
        let (exit_tx, _) = watch::channel(None);
        let (reaped_tx, _) = watch::channel(0);
        Arc::new(Shim {
            spec,
            state: Mutex::new(state),
            exit_tx,
            reaped_tx,
            children: reaper::Children::default(),
            cgroup: Mutex::new(None),
            output: Mutex::new(None),
            events: Events::default(),
            exiting: AtomicBool::new(false),
            init_status: Mutex::new(None),
            kill_note: Mutex::new(None),
            starting: AtomicBool::new(false),
            closing: AtomicBool::new(false),
            shutdown: Notify::new(),
            start_done: Notify::new(),
        })
    }

    pub fn snapshot(&self) -> TaskState {
        lock(&self.state).clone()
    }

    /// Changes the state and writes it to disk (atomically, fsynced).
    fn update(&self, f: impl FnOnce(&mut TaskState)) -> Result<(), StateError> {
        let snapshot = {
            let mut s = lock(&self.state);
            f(&mut s);
            s.clone()
        };
        snapshot.write(&self.spec.state_path)
    }

    pub fn persist(&self) -> Result<(), StateError> {
        self.update(|_| {})
    }

    pub fn runtime_pid(&self) -> Option<i32> {
        lock(&self.state).runtime_pid
    }

    pub fn exit(&self) -> Option<api::ExitStatus> {
        self.exit_tx.borrow().clone()
    }

    pub fn subscribe_exit(&self) -> watch::Receiver<Option<api::ExitStatus>> {
        self.exit_tx.subscribe()
    }

    /// The exit, waiting at most `timeout` for it.
    pub async fn wait_exit(&self, timeout: Duration) -> Option<api::ExitStatus> {
        let mut rx = self.exit_tx.subscribe();
        let _ = tokio::time::timeout(timeout, rx.wait_for(|e| e.is_some())).await;
        self.exit()
    }

    /// Blocks until the runtime has exited (repeatable; any number of callers).
    pub async fn wait(&self) -> Result<api::ExitStatus, TaskError> {
        if self.runtime_pid().is_none() {
            return Err(TaskError::NeverStarted("call Start first"));
        }
        let mut rx = self.exit_tx.subscribe();
        let exit = rx
            .wait_for(|e| e.is_some())
            .await
            .map_err(|_| TaskError::ShuttingDown)?
            .clone();
        exit.ok_or(TaskError::ShuttingDown)
    }

    /// Opens the log sinks, sets up the cgroup and spawns the runtime.
    pub async fn start(self: &Arc<Self>) -> Result<api::StartResponse, StartError> {
        if let Some(pid) = self.runtime_pid() {
            return Err(StartError::AlreadyStarted(pid));
        }
        if self.closing.load(Ordering::SeqCst) {
            return Err(StartError::ShuttingDown);
        }
        if self.starting.swap(true, Ordering::SeqCst) {
            return Err(StartError::InProgress);
        }
        let r = self.start_inner().await;
        self.starting.store(false, Ordering::SeqCst);
        self.start_done.notify_one();
        if let Err(e) = &r {
            tracing::warn!(error = %e, "start failed");
        }
        r
    }

    async fn start_inner(self: &Arc<Self>) -> Result<api::StartResponse, StartError> {
        let opened = logs::open(&self.spec).await?;
        if self.closing.load(Ordering::SeqCst) {
            return Err(StartError::ShuttingDown);
        }
        let cg = self.make_cgroup()?;
        let procs = cg.as_ref().map(|c| c.procs_files()).unwrap_or_default();
        // On the main thread (current_thread runtime): see runtime.rs about PDEATHSIG.
        let pid = match runtime::spawn(&self.spec, opened.stdout, opened.stderr, procs) {
            Ok(spawned) => {
                *lock(&self.init_status) = spawned.status;
                spawned.pid
            }
            Err(e) => {
                if let Some(c) = &cg {
                    c.remove();
                }
                return Err(e.into());
            }
        };
        *lock(&self.output) = Some(opened.pending.start(&self.events));
        let start_time = common::proc::start_time(pid).unwrap_or(0);
        let started = now_ms();
        let cg_desc = cg.as_ref().map(|c| c.describe());
        *lock(&self.cgroup) = cg;
        let sandbox = self.spec.sandbox.as_ref().map(|s| SandboxState {
            pid_init: s.pid_mode.is_private(),
            namespaces: namespaces_of(pid),
        });
        if let Err(source) = self.update(|s| {
            s.runtime_pid = Some(pid);
            s.runtime_start_time = Some(start_time);
            s.started_at_unix_ms = Some(started);
            s.cgroup = cg_desc;
            s.sandbox = sandbox;
        }) {
            // Nobody could recover an unrecorded runtime: do not leave it behind.
            self.kill_everything(pid);
            return Err(StartError::Record { pid, source });
        }
        tracing::info!(pid, argv = ?self.spec.argv, "runtime started");
        // The child may already have exited (its SIGCHLD is handled by the loop anyway).
        self.reap();
        Ok(api::StartResponse {
            pid,
            pid_start_time: start_time,
            started_at_unix_ms: started,
            api_level: common::shim_api::API_LEVEL,
            executor_version: crate::VERSION.to_owned(),
        })
    }

    /// The task's cgroup with its limits. Fails closed: a task whose cgroup cannot be made
    /// (or whose limits cannot be set) is not started, unless the operator allowed tasks
    /// without limits (`allow_no_cgroup`): then it runs with a warning.
    fn make_cgroup(&self) -> Result<Option<Arc<TaskCgroup>>, StartError> {
        let allowed = self.spec.resources.allow_no_cgroup;
        match TaskCgroup::for_task(&self.spec) {
            None => {
                let why = format!(
                    "no usable cgroup hierarchy under {}",
                    common::cgroup::DEFAULT_ROOT
                );
                without_limits(allowed, why).map(|_| None)
            }
            Some(Ok(cg)) => {
                let notes = cg.apply(&self.spec.resources);
                if notes.is_empty() {
                    return Ok(Some(Arc::new(cg)));
                }
                if let Err(e) = without_limits(allowed, notes.join("; ")) {
                    cg.remove();
                    return Err(e);
                }
                Ok(Some(Arc::new(cg)))
            }
            Some(Err(e)) => {
                without_limits(allowed, format!("cannot create the task's cgroup: {e}"))
                    .map(|_| None)
            }
        }
    }

    /// Reaps every exited child (we are a subreaper); records the runtime's exit.
    pub fn reap(self: &Arc<Self>) {
        let reaped = reaper::reap_exited();
        let n = reaped.len() as u64;
        for r in reaped {
            self.on_reaped(r);
        }
        if n > 0 {
            self.reaped_tx.send_modify(|count| *count += n);
        }
    }

    fn on_reaped(self: &Arc<Self>, r: Reaped) {
        let Some(r) = self.children.deliver(r) else {
            return;
        };
        if Some(r.pid) != self.runtime_pid() {
            tracing::debug!(
                pid = r.pid,
                code = r.exit_code,
                "reaped an orphaned process"
            );
            return;
        }
        if self.exit().is_some() || self.exiting.swap(true, Ordering::SeqCst) {
            return;
        }
        // Whatever the runtime left in its group, its cgroup or (as orphans re-parented to
        // us) anywhere else goes with it, like Nomad's executor cleanup.
        kill_leftovers(r.pid);
        let cg = lock(&self.cgroup).clone();
        let mut oom = false;
        if let Some(c) = &cg {
            oom = c.oom_kills() > 0;
            c.kill_all();
        }
        // The exit is recorded once the task's output is all in its log files: with every
        // process of the task gone, the pipes reach EOF.
        let shim = self.clone();
        tokio::spawn(async move { shim.record_exit(r, cg, oom).await });
    }

    async fn record_exit(&self, r: Reaped, cg: Option<Arc<TaskCgroup>>, oom: bool) {
        let collector = lock(&self.output).as_ref().and_then(|o| o.collector());
        if let Some(c) = collector {
            if !c.drained(DRAIN_WAIT).await {
                tracing::warn!(
                    wait = ?DRAIN_WAIT,
                    "the task's output pipes are still open after its processes were killed; recording the exit without waiting longer"
                );
            }
        }
        let mut message = lock(&self.kill_note).clone().unwrap_or_default();
        if oom {
            let limit = self.spec.resources.memory_max_mb;
            message = format!("OOM killed: the task exceeded its memory limit of {limit} MiB");
        }
        // A namespace init reports how the runtime itself ended; without a report (the init
        // was SIGKILLed: stop timeout, OOM, kill -9) its own death is the task's.
        let status = lock(&self.init_status).take();
        let r = status
            .as_ref()
            .and_then(runtime::read_status)
            .and_then(|raw| reaper::decode(r.pid, raw))
            .unwrap_or(r);
        let record = ExitRecord {
            exit_code: r.exit_code,
            signal: r.signal,
            oom_killed: oom,
            message,
            exited_at_unix_ms: now_ms(),
        };
        let exit = api::ExitStatus::from(&record);
        if let Err(e) = self.update(|s| s.exit = Some(record)) {
            tracing::error!(error = %e, "cannot persist the exit result");
        }
        tracing::info!(
            pid = r.pid,
            exit_code = r.exit_code,
            signal = r.signal,
            oom,
            "runtime exited"
        );
        if let Some(o) = lock(&self.output).as_mut() {
            o.release();
        }
        self.exit_tx.send_replace(Some(exit));
        if let Some(c) = cg {
            c.remove();
        }
    }

    /// Signal → wait `timeout` → SIGKILL the group/cgroup → wait. Returns the exit.
    pub async fn stop(
        &self,
        signal: Option<TaskSignal>,
        timeout: Duration,
    ) -> Result<api::ExitStatus, TaskError> {
        if let Some(e) = self.exit() {
            return Ok(e);
        }
        let Some(pid) = self.runtime_pid() else {
            return Err(TaskError::NeverStarted(
                "nothing to stop (Shutdown removes the shim)",
            ));
        };
        if let Some(sig) = signal {
            tracing::info!(pid, signal = %sig, ?timeout, "stopping the runtime");
            let _ = sig.send(pid);
        }
        if !timeout.is_zero() {
            if let Some(e) = self.wait_exit(timeout).await {
                self.wait_group_gone(pid).await;
                return Ok(e);
            }
        }
        *lock(&self.kill_note) = Some(format!(
            "killed with SIGKILL after the {}s stop timeout",
            timeout.as_secs_f64()
        ));
        tracing::info!(pid, "stop timeout passed: SIGKILL to the process group");
        self.kill_everything(pid);
        let e = self
            .wait_exit(KILL_WAIT)
            .await
            .ok_or(TaskError::SurvivedKill {
                pid,
                waited: KILL_WAIT,
            })?;
        self.wait_group_gone(pid).await;
        Ok(e)
    }

    /// Delivers `signal` to the runtime's main process (`None` = existence check).
    pub fn signal(&self, signal: Option<TaskSignal>) -> Result<(), TaskError> {
        let Some(pid) = self.runtime_pid() else {
            return Err(TaskError::NotRunning("it was never started".into()));
        };
        if let Some(e) = self.exit() {
            return Err(TaskError::NotRunning(format!(
                "it exited with {}",
                ExitSummary::from(&e)
            )));
        }
        // SIGSTOP cannot be blocked, so a namespace init would stop itself instead of
        // forwarding it: it goes to the runtime directly (every other signal is forwarded).
        let pid = match signal {
            Some(s) if s.number() == libc::SIGSTOP && self.runs_under_init() => {
                first_child(pid).unwrap_or(pid)
            }
            _ => pid,
        };
        common::signals::send(signal, pid).map_err(|source| TaskError::Signal { pid, source })?;
        tracing::info!(
            pid,
            signal = %signal.map(TaskSignal::name).unwrap_or_else(|| "SIGNULL".into()),
            "signal delivered"
        );
        Ok(())
    }

    /// Whether `runtime_pid` is the init of the task's PID namespace.
    fn runs_under_init(&self) -> bool {
        lock(&self.state)
            .sandbox
            .as_ref()
            .is_some_and(|s| s.pid_init)
    }

    fn kill_everything(&self, pid: i32) {
        let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
        if let Some(c) = lock(&self.cgroup).clone() {
            c.kill_all();
        }
    }

    /// Waits (bounded) until no live process of the task is left, so a Stop that returns
    /// leaves nothing of the task behind. Looks again whenever a child is reaped (the dying
    /// processes are all re-parented to us), at the latest every [`GROUP_RECHECK`].
    async fn wait_group_gone(&self, pgid: i32) {
        let deadline = tokio::time::Instant::now() + GROUP_WAIT;
        let mut reaped = self.reaped_tx.subscribe();
        loop {
            reaped.mark_unchanged();
            let left = kill_leftovers(pgid);
            if left.is_empty() {
                return;
            }
            if tokio::time::Instant::now() >= deadline {
                tracing::warn!(?left, "processes of the task survived SIGKILL");
                return;
            }
            let _ = tokio::time::timeout(GROUP_RECHECK, reaped.changed()).await;
        }
    }

    /// The Status RPC's answer.
    pub fn status(&self) -> api::StatusResponse {
        let s = self.snapshot();
        let exit = self.exit();
        let state = match (s.runtime_pid, &exit) {
            (_, Some(_)) => api::TaskState::Exited,
            (Some(_), None) => api::TaskState::Running,
            (None, None) => api::TaskState::Pending,
        };
        let memory = match (s.runtime_pid, &exit) {
            (Some(p), None) if s.sandbox.as_ref().is_some_and(|b| b.pid_init) => {
                // What runs below the namespace's init (its own few pages are not the task's).
                // Everything in the task's PID namespace descends from that init (orphans are
                // re-parented to it), so the kernel's children lists give exactly those
                // processes, reading only the task's subtree: a scan of all of /proc per Status
                // cost each shim ~16 ms with 200 tasks on the node, per metrics scrape.
                common::proc::descendants(p)
                    .unwrap_or_else(|| {
                        common::proc::task_processes(p)
                            .iter()
                            .map(|q| q.pid)
                            .filter(|&q| q != p)
                            .collect()
                    })
                    .into_iter()
                    .map(|q| common::proc::rss_bytes(q).unwrap_or(0))
                    .fold(0u64, u64::saturating_add)
            }
            (Some(p), None) => common::proc::rss_bytes(p).unwrap_or(0),
            _ => 0,
        };
        api::StatusResponse {
            task_id: s.spec.task_id.clone(),
            alloc_id: s.spec.alloc_id.clone(),
            job_id: s.spec.job_id.clone(),
            task_name: s.spec.task_name.clone(),
            shim_pid: s.shim_pid,
            runtime_pid: s.runtime_pid.unwrap_or(0),
            runtime_start_time: s.runtime_start_time.unwrap_or(0),
            state: state as i32,
            started_at_unix_ms: s.started_at_unix_ms.unwrap_or(0),
            exit,
            socket_path: s.spec.socket_path.display().to_string(),
            state_path: s.spec.state_path.display().to_string(),
            executor_version: crate::VERSION.to_owned(),
            memory_bytes: memory,
            cgroup: s.cgroup.unwrap_or_default(),
            api_level: common::shim_api::API_LEVEL,
            executor_revision: crate::REVISION.to_owned(),
            logs: self.log_status(),
        }
    }

    /// Where the task's output goes and what became of it (None before Start).
    pub fn log_status(&self) -> Option<api::LogStatus> {
        lock(&self.output).as_ref().map(|o| o.status())
    }

    /// The `cgroup.procs` files a process writes itself into to join the task's cgroup
    /// (empty when there is none): what an exec'd command joins.
    pub fn cgroup_procs(&self) -> Vec<std::ffi::CString> {
        lock(&self.cgroup)
            .as_ref()
            .map(|c| c.procs_files())
            .unwrap_or_default()
    }

    /// A usage sampler for the Stats stream (None before Start).
    pub fn sampler(&self) -> Option<Sampler> {
        let pid = self.runtime_pid()?;
        let cg = lock(&self.cgroup).clone();
        Some(Sampler::new(stats::source_for(cg, pid)))
    }

    /// Shutdown: kills what is running, removes socket, index link, state file and the
    /// task's state dir, and tells the serve loop to exit.
    pub async fn shutdown(&self) {
        self.closing.store(true, Ordering::SeqCst);
        if self.exit().is_none() {
            if let Some(pid) = self.runtime_pid() {
                tracing::info!(pid, "shutdown: killing the runtime");
                self.kill_everything(pid);
                let _ = self.wait_exit(KILL_WAIT).await;
                self.wait_group_gone(pid).await;
            }
        }
        self.remove_socket();
        self.remove_state();
        tracing::info!("shutdown: socket and state removed");
        self.shutdown.notify_one();
    }

    /// Resolves after a Start call has finished (started or not).
    pub async fn start_done(&self) {
        self.start_done.notified().await
    }

    /// Resolves once Shutdown has finished its work.
    pub async fn shutdown_requested(&self) {
        self.shutdown.notified().await
    }

    pub fn index_link(&self) -> Option<PathBuf> {
        self.spec
            .socket_path
            .parent()
            .map(|d| common::paths::index_link(d, &self.spec.task_id))
    }

    /// Removes the socket and the index link (what makes the shim reachable).
    pub fn remove_socket(&self) {
        let _ = std::fs::remove_file(&self.spec.socket_path);
        if let Some(l) = self.index_link() {
            let _ = std::fs::remove_file(l);
        }
    }

    /// Removes the state file. When the state file lives in the plugin's per-task dir
    /// (`.../<task key>/state.json`), the whole dir goes (spec, log); otherwise (an
    /// operator's `run` spec) only the files the shim itself wrote.
    fn remove_state(&self) {
        let path = &self.spec.state_path;
        let _ = TaskState::remove(path);
        let Some(dir) = path.parent() else { return };
        let key = common::paths::task_key(&self.spec.task_id);
        if dir.file_name().and_then(|n| n.to_str()) == Some(key.as_str()) {
            let _ = common::state::StateDir::remove_dir(dir);
        } else {
            let _ = std::fs::remove_file(dir.join(common::paths::LOG_FILE));
        }
    }
}

/// The oldest child of `pid` (a namespace init's: the runtime).
fn first_child(pid: i32) -> Option<i32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The namespaces of `pid` by name, with their identities (`mnt:[4026532871]`).
fn namespaces_of(pid: i32) -> std::collections::BTreeMap<String, String> {
    ["mnt", "pid", "ipc", "net", "uts", "cgroup", "user"]
        .into_iter()
        .filter_map(|ns| {
            let link = std::fs::read_link(format!("/proc/{pid}/ns/{ns}")).ok()?;
            Some((ns.to_owned(), link.display().to_string()))
        })
        .collect()
}

/// SIGKILLs every live process of the task: the runtime's process group (`pgid`) and every
/// descendant of the shim. The shim runs exactly one task and is a child subreaper, so each
/// process below it — also a daemon that left the group with setsid — belongs to the task,
/// and so does every member of the group (they all descend from the runtime, and orphans come
/// back to the shim): the kernel's children lists name them without a scan of all of /proc.
/// Returns the pids it signalled (empty = nothing left; zombies are not counted).
pub fn kill_leftovers(pgid: i32) -> Vec<i32> {
    let me = std::process::id() as i32;
    let mut targets = match common::proc::descendants(me) {
        Some(d) => d
            .into_iter()
            .filter(|p| common::proc::stat(*p).is_ok_and(|s| !s.is_exited()))
            .collect(),
        None => {
            let procs = common::proc::all_processes();
            let mut t: Vec<i32> = common::proc::tree_of(&procs, me)
                .into_iter()
                .filter(|p| *p != me)
                .collect();
            t.extend(procs.iter().filter(|s| s.pgrp == pgid).map(|s| s.pid));
            t
        }
    };
    targets.sort_unstable();
    targets.dedup();
    for p in &targets {
        let _ = kill(Pid::from_raw(*p), Signal::SIGKILL);
    }
    targets
}

/// A task's limits cannot all be enforced (`why`): refused, unless the operator's
/// `allow_no_cgroup` lets it run without them (with a warning in the shim's log).
fn without_limits(allowed: bool, why: String) -> Result<(), StartError> {
    if allowed {
        tracing::warn!(
            why,
            "running without (some) cgroup limits: allow_no_cgroup = true"
        );
        Ok(())
    } else {
        Err(StartError::Cgroup(why))
    }
}

#[cfg(test)]
mod cgroup_policy_tests {
    #[test]
    fn a_task_without_limits_is_refused_unless_the_operator_allows_it() {
        let e = super::without_limits(false, "cannot create the task's cgroup: EACCES".into())
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("the task's resource limits cannot be enforced: cannot create the task's cgroup: EACCES; the task was not started")
                && e.contains("allow_no_cgroup = true"),
            "{e}"
        );
        assert!(super::without_limits(true, "x".into()).is_ok());
    }
}
