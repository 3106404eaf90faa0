//! `elide-executor stop [--signal SIG] [--timeout DUR] TASK`.

use super::{client_for, find_one, CliError};
use common::proto::executor as api;
use std::path::Path;

/// Stops the task: `signal`, wait `timeout` (Go-style duration, e.g. "5s"), then SIGKILL.
/// Prints the exit; returns the process exit code (0).
pub async fn run(dir: &Path, task: &str, signal: &str, timeout: &str) -> Result<i32, CliError> {
    // Checked here so a typo is reported before anything is sent.
    common::signals::parse(signal)?;
    let timeout = common::duration::parse(timeout)?;
    let row = find_one(dir, task).await?;
    if row.exit_code.is_some() && !row.reachable {
        println!(
            "{} ({}) already exited: {}",
            row.task_name,
            row.task_id,
            row.exit_text()
        );
        return Ok(0);
    }
    let mut c = client_for(&row).await?;
    let r = c
        .stop(api::StopRequest {
            signal: signal.to_owned(),
            timeout_ms: timeout.as_millis() as u64,
        })
        .await
        .map_err(|s| CliError::Rpc {
            verb: "stop",
            message: s.message().to_owned(),
        })?
        .into_inner();
    let e = r.exit.unwrap_or_default();
    println!(
        "stopped {} ({}): exit code {}{}{}",
        row.task_name,
        row.task_id,
        e.exit_code,
        if e.signal != 0 {
            format!(", signal {}", common::signals::name(e.signal))
        } else {
            String::new()
        },
        if e.message.is_empty() {
            String::new()
        } else {
            format!(" ({})", e.message)
        }
    );
    Ok(0)
}
