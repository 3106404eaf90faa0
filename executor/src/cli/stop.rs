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
    if let Some(e) = row.exit_summary().filter(|_| !row.reachable) {
        println!(
            "{} ({}) already exited with {e}",
            row.task_name, row.task_id
        );
        return Ok(0);
    }
    let mut c = client_for(&row).await?;
    let r = c
        .stop(api::StopRequest {
            signal: signal.to_owned(),
            timeout_ms: common::duration::millis(timeout),
        })
        .await
        .map_err(|s| CliError::Rpc {
            verb: "stop",
            message: s.message().to_owned(),
        })?
        .into_inner();
    let e = r.exit.unwrap_or_default();
    println!(
        "stopped {} ({}): exited with {}",
        row.task_name,
        row.task_id,
        common::state::ExitSummary::from(&e)
    );
    Ok(0)
}
