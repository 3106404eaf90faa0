//! `elide-executor signal SIG TASK`.

use super::{client_for, find_one, CliError};
use common::proto::executor as api;
use std::path::Path;

/// Sends `signal` to the task's runtime (main process).
pub async fn run(dir: &Path, task: &str, signal: &str) -> Result<i32, CliError> {
    common::signals::parse(signal)?;
    let row = find_one(dir, task).await?;
    let mut c = client_for(&row).await?;
    c.signal(api::SignalRequest {
        signal: signal.to_owned(),
    })
    .await
    .map_err(|s| CliError::Rpc {
        verb: "signal",
        message: s.message().to_owned(),
    })?;
    println!(
        "sent {signal} to {} ({}), runtime pid {}",
        row.task_name, row.task_id, row.runtime_pid
    );
    Ok(0)
}
