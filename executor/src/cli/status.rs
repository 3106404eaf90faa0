//! `elide-executor status [--json] [--state-dir DIR] [TASK]`: every Elide task on this node,
//! from the index links and each shim's answer to Status.

use super::{CliError, DIAL_TIMEOUT};
use common::proto::executor as api;
use common::state::{ExitSummary, TaskState};
use serde::Serialize;
use std::path::{Path, PathBuf};

/// What `status` says about a task (`state` in the table and in `--json`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum RowState {
    #[serde(rename = "running")]
    Running,
    #[serde(rename = "pending")]
    Pending,
    #[serde(rename = "exited")]
    Exited,
    /// The shim left after the exit; the result is in the state file.
    #[serde(rename = "exited (shim gone)")]
    ExitedShimGone,
    /// No shim answers and no exit was recorded: the task is lost.
    #[serde(rename = "unreachable")]
    Unreachable,
    /// The shim process still runs its task, but its socket file is gone: nobody (the plugin
    /// included) can reach it.
    #[serde(rename = "alive (socket missing)")]
    AliveSocketMissing,
    /// The shim process still runs but does not answer on its socket (hung).
    #[serde(rename = "alive (not answering)")]
    AliveNotAnswering,
    #[serde(rename = "stale (other boot)")]
    StaleOtherBoot,
    #[serde(rename = "stale (no state file)")]
    StaleNoStateFile,
    #[serde(rename = "unknown")]
    Unknown,
}

impl RowState {
    pub fn as_str(self) -> &'static str {
        match self {
            RowState::Running => "running",
            RowState::Pending => "pending",
            RowState::Exited => "exited",
            RowState::ExitedShimGone => "exited (shim gone)",
            RowState::Unreachable => "unreachable",
            RowState::AliveSocketMissing => "alive (socket missing)",
            RowState::AliveNotAnswering => "alive (not answering)",
            RowState::StaleOtherBoot => "stale (other boot)",
            RowState::StaleNoStateFile => "stale (no state file)",
            RowState::Unknown => "unknown",
        }
    }
}

impl From<api::TaskState> for RowState {
    fn from(s: api::TaskState) -> Self {
        match s {
            api::TaskState::Running => RowState::Running,
            api::TaskState::Exited => RowState::Exited,
            api::TaskState::Pending => RowState::Pending,
            api::TaskState::Unspecified => RowState::Unknown,
        }
    }
}

/// One task. Also the JSON object `status --json` prints (field names are a contract with
/// scripts and the E2E suite).
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub task_id: String,
    pub alloc_id: String,
    pub job_id: String,
    pub task_name: String,
    pub key: String,
    pub shim_pid: i32,
    pub runtime_pid: i32,
    pub state: RowState,
    pub uptime_secs: Option<i64>,
    pub exit_code: Option<i32>,
    pub exit_signal: Option<i32>,
    pub oom_killed: bool,
    pub exit_message: String,
    pub memory_bytes: u64,
    pub socket: String,
    pub state_file: String,
    pub cgroup: String,
    /// The shim's version and API level (from Status; empty/0 when it cannot be asked).
    /// After a plugin upgrade, tasks started before it still show the old version.
    pub executor_version: String,
    pub api_level: u32,
    /// Where the task's output goes (shim API level 2; empty when unknown): "executor" (the
    /// shim writes the log files in `log_dir`), "fifo" (Nomad's logmon) or "none"; what the
    /// shim wrote and what it lost (disk full, read-only, ...), both streams together, and
    /// the latest write error.
    pub logs: String,
    pub log_dir: String,
    pub log_bytes_written: u64,
    pub log_bytes_dropped: u64,
    pub log_error: String,
    pub reachable: bool,
    pub problem: String,
}

impl Row {
    /// TASK matches a task id, a task key, an alloc id prefix (>= 4 chars) or a task name.
    pub fn matches(&self, t: &str) -> bool {
        self.task_id == t
            || self.key == t
            || (t.len() >= 4 && self.alloc_id.starts_with(t))
            || self.task_name == t
    }

    /// A task with no recorded exit whose shim cannot be reached: lost, or out of reach.
    pub fn is_lost(&self) -> bool {
        matches!(
            self.state,
            RowState::Unreachable | RowState::AliveSocketMissing | RowState::AliveNotAnswering
        )
    }

    /// The recorded exit, if any.
    pub fn exit_summary(&self) -> Option<ExitSummary<'_>> {
        Some(ExitSummary {
            exit_code: self.exit_code?,
            signal: self.exit_signal.unwrap_or(0),
            oom_killed: self.oom_killed,
            message: &self.exit_message,
        })
    }

    /// The EXIT column: `137 (SIGKILL) OOM`, or `-`.
    pub fn exit_text(&self) -> String {
        self.exit_summary()
            .map(|e| e.compact())
            .unwrap_or_else(|| "-".into())
    }

    /// What the state file last recorded, for error messages.
    pub fn last_state(&self) -> String {
        match self.exit_code {
            Some(_) => format!("the runtime exited with {}", self.exit_text()),
            None if self.runtime_pid > 0 => format!(
                "runtime pid {} running with no recorded exit (state file {})",
                self.runtime_pid, self.state_file
            ),
            None => format!(
                "the runtime was never started (state file {})",
                self.state_file
            ),
        }
    }
}

/// Every `<key>.state` entry of the index dir, sorted by key.
pub fn index_entries(dir: &Path) -> std::io::Result<Vec<(String, PathBuf)>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(key) = name.strip_suffix(".state") {
            out.push((key.to_owned(), e.path()));
        }
    }
    out.sort();
    Ok(out)
}

/// One row per index entry (shims are asked concurrently).
pub async fn collect(dir: &Path) -> Result<Vec<Row>, CliError> {
    let entries = index_entries(dir).map_err(|source| CliError::Index {
        dir: dir.to_path_buf(),
        source,
    })?;
    let rows = entries.iter().map(|(key, link)| row(key, link));
    Ok(futures::future::join_all(rows).await)
}

async fn row(key: &str, link: &Path) -> Row {
    // Only ever the link's target is read: an entry that is not a link (or one removed
    // since the listing) is reported, never opened as a state file.
    let target = std::fs::read_link(link);
    let mut r = Row {
        task_id: String::new(),
        alloc_id: String::new(),
        job_id: String::new(),
        task_name: String::new(),
        key: key.to_owned(),
        shim_pid: 0,
        runtime_pid: 0,
        state: RowState::Unknown,
        uptime_secs: None,
        exit_code: None,
        exit_signal: None,
        oom_killed: false,
        exit_message: String::new(),
        memory_bytes: 0,
        socket: String::new(),
        state_file: String::new(),
        cgroup: String::new(),
        executor_version: String::new(),
        api_level: 0,
        logs: String::new(),
        log_dir: String::new(),
        log_bytes_written: 0,
        log_bytes_dropped: 0,
        log_error: String::new(),
        reachable: false,
        problem: String::new(),
    };
    let target = match target {
        Ok(t) => t,
        Err(e) => {
            r.state = RowState::StaleNoStateFile;
            r.problem = format!(
                "the index entry is not a link to a state file ({e}); if the task is gone, remove it: rm {}",
                link.display()
            );
            return r;
        }
    };
    r.state_file = target.display().to_string();
    let st = match TaskState::read(&target) {
        Ok(s) => s,
        Err(e) => {
            r.state = RowState::StaleNoStateFile;
            r.problem = format!(
                "{e}; if the task is gone, remove the index link: rm {}",
                link.display()
            );
            return r;
        }
    };
    r.task_id = st.spec.task_id.clone();
    r.alloc_id = st.spec.alloc_id.clone();
    r.job_id = st.spec.job_id.clone();
    r.task_name = st.spec.task_name.clone();
    r.shim_pid = st.shim_pid;
    r.runtime_pid = st.runtime_pid.unwrap_or(0);
    r.socket = st.spec.socket_path.display().to_string();
    r.cgroup = st.cgroup.clone().unwrap_or_default();
    let set_exit = |r: &mut Row, code: i32, signal: i32, oom: bool, message: &str| {
        r.exit_code = Some(code);
        r.exit_signal = Some(signal);
        r.oom_killed = oom;
        r.exit_message = message.to_owned();
    };
    if let Some(e) = &st.exit {
        r.state = RowState::Exited;
        set_exit(&mut r, e.exit_code, e.signal, e.oom_killed, &e.message);
    }
    match ask(&st.spec.socket_path).await {
        Ok(s) => {
            r.reachable = true;
            r.runtime_pid = s.runtime_pid;
            r.memory_bytes = s.memory_bytes;
            r.executor_version = s.executor_version.clone();
            r.api_level = common::shim_api::effective_level(s.api_level);
            if !s.cgroup.is_empty() {
                r.cgroup = s.cgroup.clone();
            }
            r.state = api::TaskState::try_from(s.state).unwrap_or_default().into();
            if let Some(e) = &s.exit {
                set_exit(&mut r, e.exit_code, e.signal, e.oom_killed, &e.message);
            }
            if s.started_at_unix_ms > 0 && r.state == RowState::Running {
                r.uptime_secs = Some((common::state::now_ms() - s.started_at_unix_ms) / 1000);
            }
            if let Some(l) = &s.logs {
                set_logs(&mut r, l);
            }
        }
        Err(problem) => {
            if st.exit.is_some() {
                // The normal end of a lingering shim: the result is on disk.
                r.state = RowState::ExitedShimGone;
            } else if st.boot_id != common::proc::boot_id() {
                r.state = RowState::StaleOtherBoot;
                r.problem = format!(
                    "recorded before the last reboot; remove it: rm {}",
                    link.display()
                );
            } else if common::proc::is_same_process(st.shim_pid, st.shim_start_time) {
                let socket_missing = std::fs::symlink_metadata(&st.spec.socket_path).is_err();
                r.state = if socket_missing {
                    RowState::AliveSocketMissing
                } else {
                    RowState::AliveNotAnswering
                };
                r.problem = format!(
                    "the shim (pid {pid}) is alive and still runs the task, but {why}, so neither this command nor the plugin can reach it; `kill -TERM {pid}` makes it stop the task and record the exit (Nomad then restarts it); its last state says {last}",
                    pid = st.shim_pid,
                    why = if socket_missing {
                        format!("its socket {} was deleted", st.spec.socket_path.display())
                    } else {
                        problem
                    },
                    last = r.last_state()
                );
            } else {
                r.state = RowState::Unreachable;
                r.problem = format!(
                    "{problem}; its last state says {} (the plugin kills what is left of it and Nomad restarts the task)",
                    r.last_state()
                );
            }
        }
    }
    r
}

/// The `logs` fields of a row, and a problem line when output was lost.
fn set_logs(r: &mut Row, l: &api::LogStatus) {
    r.logs = l.collection.clone();
    r.log_dir = l.dir.clone();
    r.log_bytes_written = l.streams.iter().map(|s| s.bytes_written).sum();
    r.log_bytes_dropped = l.streams.iter().map(|s| s.bytes_dropped).sum();
    let mut errors = l.streams.iter().map(|s| {
        if s.error.is_empty() {
            &s.last_error
        } else {
            &s.error
        }
    });
    r.log_error = errors.rfind(|e| !e.is_empty()).cloned().unwrap_or_default();
    if r.log_bytes_dropped > 0 && r.problem.is_empty() {
        r.problem = format!(
            "{} bytes of the task's output could not be written to its log files in {} ({}); the task itself is not affected. Free space or fix the directory: writing resumes by itself",
            r.log_bytes_dropped, r.log_dir, r.log_error
        );
    }
}

/// The LOGS column: `files`, `files, lost 1.2MiB`, `fifo`, `off`, or `-`.
fn logs_text(r: &Row) -> String {
    match r.logs.as_str() {
        "executor" if r.log_bytes_dropped > 0 => {
            format!("files, lost {}", human_bytes(r.log_bytes_dropped))
        }
        "executor" => "files".into(),
        "fifo" => "fifo".into(),
        "none" => "off".into(),
        _ => "-".into(),
    }
}

async fn ask(socket: &Path) -> Result<api::StatusResponse, String> {
    let mut c = common::client::connect_timeout(socket, DIAL_TIMEOUT)
        .await
        .map_err(|e| e.to_string())?;
    match tokio::time::timeout(DIAL_TIMEOUT, c.status(api::StatusRequest {})).await {
        Ok(Ok(s)) => Ok(s.into_inner()),
        Ok(Err(e)) => Err(format!("the shim answered with an error: {}", e.message())),
        Err(_) => Err(format!(
            "the shim at {} accepted but did not answer within {DIAL_TIMEOUT:?}: it is hung",
            socket.display()
        )),
    }
}

fn human_bytes(b: u64) -> String {
    if b == 0 {
        return "-".into();
    }
    format!("{:.1}MiB", b as f64 / 1048576.0)
}

fn human_secs(s: i64) -> String {
    match s {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m{}s", s / 60, s % 60),
        s if s < 86400 => format!("{}h{}m", s / 3600, (s % 3600) / 60),
        s => format!("{}d{}h", s / 86400, (s % 86400) / 3600),
    }
}

/// The aligned table, then one line per row with a problem.
pub fn table(rows: &[&Row]) -> String {
    let header = [
        "ALLOC", "JOB", "TASK", "SHIM", "RUNTIME", "STATE", "UPTIME", "EXIT", "MEMORY", "LOGS",
        "VERSION", "SOCKET",
    ];
    let dash = |v: i32| {
        if v > 0 {
            v.to_string()
        } else {
            "-".into()
        }
    };
    let mut lines: Vec<Vec<String>> = vec![header.iter().map(|s| s.to_string()).collect()];
    for r in rows {
        lines.push(vec![
            r.alloc_id.chars().take(8).collect(),
            r.job_id.clone(),
            r.task_name.clone(),
            dash(r.shim_pid),
            dash(r.runtime_pid),
            r.state.as_str().to_owned(),
            r.uptime_secs.map(human_secs).unwrap_or_else(|| "-".into()),
            r.exit_text(),
            human_bytes(r.memory_bytes),
            logs_text(r),
            if r.executor_version.is_empty() {
                "-".into()
            } else {
                r.executor_version.clone()
            },
            r.socket.clone(),
        ]);
    }
    let widths: Vec<usize> = (0..header.len())
        .map(|i| {
            lines
                .iter()
                .map(|l| l[i].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for l in lines {
        let cells: Vec<String> = l
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths[i]))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// Runs `status`: prints the table or JSON on stdout and problems on stderr. Returns 1 when
/// a listed shim whose task has no recorded exit cannot be reached, else 0.
pub async fn run(dir: &Path, json: bool, task: Option<&str>) -> Result<i32, CliError> {
    let rows = collect(dir).await?;
    let shown: Vec<&Row> = rows
        .iter()
        .filter(|r| task.is_none_or(|t| r.matches(t)))
        .collect();
    if let Some(t) = task {
        if shown.is_empty() {
            return Err(CliError::NoMatch {
                task: t.to_owned(),
                dir: dir.to_path_buf(),
            });
        }
    }
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&shown).map_err(std::io::Error::other)?
        );
    } else {
        print!("{}", table(&shown));
    }
    for r in &shown {
        if !r.problem.is_empty() {
            let who = if r.task_id.is_empty() {
                r.key.clone()
            } else {
                r.task_id.clone()
            };
            eprintln!("{who}: {}", r.problem);
        }
    }
    Ok(if shown.iter().any(|r| r.is_lost()) {
        1
    } else {
        0
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(task_id: &str, alloc: &str, name: &str) -> Row {
        Row {
            task_id: task_id.into(),
            alloc_id: alloc.into(),
            job_id: "job".into(),
            task_name: name.into(),
            key: common::paths::task_key(task_id),
            shim_pid: 10,
            runtime_pid: 11,
            state: RowState::Running,
            uptime_secs: Some(3700),
            exit_code: None,
            exit_signal: None,
            oom_killed: false,
            exit_message: String::new(),
            memory_bytes: 3 * 1048576,
            socket: "/run/x.sock".into(),
            state_file: "/a/state.json".into(),
            cgroup: String::new(),
            executor_version: "0.1.0".into(),
            api_level: 1,
            logs: "executor".into(),
            log_dir: String::new(),
            log_bytes_written: 0,
            log_bytes_dropped: 0,
            log_error: String::new(),
            reachable: true,
            problem: String::new(),
        }
    }

    #[test]
    fn task_filter_accepts_id_key_alloc_prefix_and_name() {
        let r = row("0123abcd-ef/web/1", "0123abcd-ef", "web");
        assert!(r.matches("0123abcd-ef/web/1"));
        assert!(r.matches(&r.key.clone()));
        assert!(r.matches("0123"));
        assert!(!r.matches("012"), "prefixes shorter than 4 are too vague");
        assert!(r.matches("web"));
        assert!(!r.matches("api"));
    }

    #[test]
    fn table_is_aligned_and_shows_signals_and_oom() {
        let a = row("a/web/1", "aaaaaaaa-1111", "web");
        let mut b = row("b/worker/1", "bbbbbbbb-2222", "worker");
        b.state = RowState::Exited;
        b.exit_code = Some(137);
        b.exit_signal = Some(9);
        b.oom_killed = true;
        b.uptime_secs = None;
        let t = table(&[&a, &b]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 3, "{t}");
        assert!(lines[0].starts_with("ALLOC"), "{t}");
        let col = lines[0].find("STATE").unwrap();
        assert_eq!(&lines[1][col..col + 7], "running", "{t}");
        assert_eq!(&lines[2][col..col + 6], "exited", "{t}");
        assert!(lines[2].contains("137 (SIGKILL) OOM"), "{t}");
        assert!(
            lines[1].contains("1h1m") && lines[1].contains("3.0MiB"),
            "{t}"
        );
        assert!(
            lines[1].starts_with("aaaaaaaa "),
            "alloc ids are shortened: {t}"
        );
        let col = lines[0].find("VERSION").unwrap();
        assert_eq!(&lines[1][col..col + 5], "0.1.0", "{t}");
    }

    #[test]
    fn lost_log_output_shows_in_the_table_json_and_as_a_problem() {
        let mut r = row("a/web/1", "a", "web");
        set_logs(
            &mut r,
            &api::LogStatus {
                collection: "executor".into(),
                dir: "/d/alloc/logs".into(),
                streams: vec![
                    api::LogStream {
                        name: "stdout".into(),
                        bytes_written: 10,
                        bytes_dropped: 3 * 1048576,
                        last_error: "No space left on device (os error 28)".into(),
                        ..Default::default()
                    },
                    api::LogStream {
                        name: "stderr".into(),
                        bytes_written: 5,
                        ..Default::default()
                    },
                ],
            },
        );
        assert_eq!(
            (r.log_bytes_written, r.log_bytes_dropped),
            (15, 3 * 1048576)
        );
        let t = table(&[&r]);
        let lines: Vec<&str> = t.lines().collect();
        let col = lines[0].find("LOGS").unwrap();
        assert_eq!(&lines[1][col..col + 17], "files, lost 3.0Mi", "{t}");
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["logs"], "executor");
        assert_eq!(v["log_bytes_dropped"], 3 * 1048576);
        assert_eq!(v["log_error"], "No space left on device (os error 28)");
        assert!(
            r.problem.contains("/d/alloc/logs") && r.problem.contains("No space left"),
            "{}",
            r.problem
        );
        r.logs = "fifo".into();
        assert_eq!(logs_text(&r), "fifo");
        r.logs = String::new();
        assert_eq!(logs_text(&r), "-", "a level-1 shim does not say");
    }

    #[test]
    fn json_states_are_the_strings_scripts_read() {
        let mut r = row("a/web/1", "a", "web");
        for (state, text) in [
            (RowState::Running, "running"),
            (RowState::ExitedShimGone, "exited (shim gone)"),
            (RowState::StaleOtherBoot, "stale (other boot)"),
            (RowState::StaleNoStateFile, "stale (no state file)"),
            (RowState::Unreachable, "unreachable"),
            (RowState::AliveSocketMissing, "alive (socket missing)"),
            (RowState::AliveNotAnswering, "alive (not answering)"),
        ] {
            r.state = state;
            let v = serde_json::to_value(&r).unwrap();
            assert_eq!(v["state"], text);
            assert_eq!(state.as_str(), text);
        }
    }

    #[test]
    fn last_state_explains_what_was_recorded() {
        let mut r = row("a/web/1", "a", "web");
        assert!(r.last_state().contains("running with no recorded exit"));
        r.exit_code = Some(3);
        r.exit_signal = Some(0);
        assert_eq!(r.last_state(), "the runtime exited with 3");
        r.runtime_pid = 0;
        r.exit_code = None;
        assert!(r.last_state().contains("never started"));
    }
}
