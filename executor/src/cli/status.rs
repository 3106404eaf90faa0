//! Operator commands: `status`, `stop`, `signal` over the node-wide task index.

use common::proto::executor as api;
use common::state::TaskState;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

const DIAL_TIMEOUT: Duration = Duration::from_secs(1);

#[derive(Debug, Serialize)]
pub struct Row {
    pub task_id: String,
    pub alloc_id: String,
    pub job_id: String,
    pub task_name: String,
    pub key: String,
    pub shim_pid: i32,
    pub runtime_pid: i32,
    pub state: String,
    pub uptime_secs: Option<i64>,
    pub exit_code: Option<i32>,
    pub exit_signal: Option<i32>,
    pub oom_killed: bool,
    pub exit_message: String,
    pub memory_bytes: u64,
    pub socket: String,
    pub state_file: String,
    pub cgroup: String,
    pub reachable: bool,
    pub problem: String,
}

/// Every task in the index dir (symlinks `<key>.state` → state files).
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

pub async fn collect(dir: &Path) -> Result<Vec<Row>, String> {
    let entries = index_entries(dir).map_err(|e| {
        format!("cannot read the task index {}: {e}; is this a Nomad client running Elide tasks (see runtime_dir in the plugin config)?", dir.display())
    })?;
    let mut rows = Vec::new();
    for (key, link) in entries {
        rows.push(row(&key, &link).await);
    }
    Ok(rows)
}

async fn row(key: &str, link: &Path) -> Row {
    let mut r = Row {
        task_id: String::new(),
        alloc_id: String::new(),
        job_id: String::new(),
        task_name: String::new(),
        key: key.to_owned(),
        shim_pid: 0,
        runtime_pid: 0,
        state: "unknown".into(),
        uptime_secs: None,
        exit_code: None,
        exit_signal: None,
        oom_killed: false,
        exit_message: String::new(),
        memory_bytes: 0,
        socket: String::new(),
        state_file: std::fs::read_link(link)
            .map(|p| p.display().to_string())
            .unwrap_or_default(),
        cgroup: String::new(),
        reachable: false,
        problem: String::new(),
    };
    let st = match TaskState::read(link) {
        Ok(s) => s,
        Err(e) => {
            r.problem = format!("{e}");
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
    if let Some(e) = &st.exit {
        r.state = "exited".into();
        r.exit_code = Some(e.exit_code);
        r.exit_signal = Some(e.signal);
        r.oom_killed = e.oom_killed;
        r.exit_message = e.message.clone();
    }
    match tokio::time::timeout(DIAL_TIMEOUT, common::client::connect(&st.spec.socket_path)).await {
        Ok(Ok(mut c)) => {
            match tokio::time::timeout(DIAL_TIMEOUT, c.status(api::StatusRequest {})).await {
                Ok(Ok(s)) => {
                    let s = s.into_inner();
                    r.reachable = true;
                    r.runtime_pid = s.runtime_pid;
                    r.memory_bytes = s.memory_bytes;
                    r.state = match api::TaskState::try_from(s.state).unwrap_or_default() {
                        api::TaskState::Running => "running",
                        api::TaskState::Exited => "exited",
                        api::TaskState::Pending => "pending",
                        api::TaskState::Unspecified => "unknown",
                    }
                    .into();
                    if s.started_at_unix_ms > 0 && r.state == "running" {
                        r.uptime_secs = Some((crate::shim::now_ms() - s.started_at_unix_ms) / 1000);
                    }
                }
                Ok(Err(e)) => r.problem = format!("shim answered with an error: {}", e.message()),
                Err(_) => r.problem = "shim did not answer within 1s".into(),
            }
        }
        Ok(Err(e)) => r.problem = e.to_string(),
        Err(_) => r.problem = "timed out connecting to the shim".into(),
    }
    if !r.reachable {
        if st.exit.is_some() {
            r.state = "exited (shim gone)".into();
            r.problem.clear();
        } else if st.boot_id != common::proc::boot_id() {
            r.state = "stale (other boot)".into();
        } else {
            r.state = "unreachable".into();
        }
    }
    r
}

/// Rows that match TASK: a task id, a task key, an alloc id prefix or a task name.
pub fn filter<'a>(rows: &'a [Row], task: Option<&str>) -> Vec<&'a Row> {
    rows.iter()
        .filter(|r| match task {
            None => true,
            Some(t) => {
                r.task_id == t
                    || r.key == t
                    || (t.len() >= 4 && r.alloc_id.starts_with(t))
                    || r.task_name == t
            }
        })
        .collect()
}

fn human_bytes(b: u64) -> String {
    if b == 0 {
        return "-".into();
    }
    format!("{:.1}MiB", b as f64 / 1048576.0)
}

pub fn table(rows: &[&Row]) -> String {
    let header = [
        "ALLOC", "JOB", "TASK", "SHIM", "RUNTIME", "STATE", "UPTIME", "EXIT", "MEMORY", "SOCKET",
    ];
    let mut lines: Vec<Vec<String>> = vec![header.iter().map(|s| s.to_string()).collect()];
    for r in rows {
        lines.push(vec![
            r.alloc_id.chars().take(8).collect(),
            r.job_id.clone(),
            r.task_name.clone(),
            r.shim_pid.to_string(),
            if r.runtime_pid > 0 {
                r.runtime_pid.to_string()
            } else {
                "-".into()
            },
            r.state.clone(),
            r.uptime_secs
                .map(|s| format!("{s}s"))
                .unwrap_or_else(|| "-".into()),
            match (r.exit_code, r.exit_signal) {
                (Some(c), Some(s)) if s != 0 => {
                    format!("{c} (sig {s}){}", if r.oom_killed { " OOM" } else { "" })
                }
                (Some(c), _) => format!("{c}{}", if r.oom_killed { " OOM" } else { "" }),
                _ => "-".into(),
            },
            human_bytes(r.memory_bytes),
            r.socket.clone(),
        ]);
    }
    let widths: Vec<usize> = (0..header.len())
        .map(|i| lines.iter().map(|l| l[i].len()).max().unwrap_or(0))
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
    for r in rows {
        if !r.problem.is_empty() {
            out.push_str(&format!(
                "{}/{}: {}\n",
                r.alloc_id.chars().take(8).collect::<String>(),
                r.task_name,
                r.problem
            ));
        }
    }
    out
}

/// The one task TASK names, or an error naming the fix.
pub async fn find_one(dir: &Path, task: &str) -> Result<Row, String> {
    let rows = collect(dir).await?;
    let matches = filter(&rows, Some(task));
    match matches.len() {
        0 => Err(format!(
            "no Elide task matches {task:?} in {}; list them with `elide-executor status`",
            dir.display()
        )),
        1 => {
            let key = matches[0].key.clone();
            rows.into_iter()
                .find(|r| r.key == key)
                .ok_or_else(|| "task vanished".into())
        }
        n => Err(format!(
            "{task:?} matches {n} tasks; use the task id or key from `elide-executor status`"
        )),
    }
}

pub async fn client_for(
    row: &Row,
) -> Result<api::executor_client::ExecutorClient<tonic::transport::Channel>, String> {
    common::client::connect(Path::new(&row.socket))
        .await
        .map_err(|e| {
            format!(
                "{e}; its last recorded state is {:?}{}",
                row.state,
                row.exit_code
                    .map(|c| format!(" with exit code {c}"))
                    .unwrap_or_default()
            )
        })
}
