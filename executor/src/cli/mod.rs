//! Operator commands over the node-wide task index (`<runtime_dir>/<key>.state` links):
//! `status`, `stop`, `signal`, `exec`.

pub mod exec;
pub mod signal;
pub mod status;
pub mod stop;

use common::proto::executor::executor_client::ExecutorClient;
use status::Row;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tonic::transport::Channel;

/// How long the operator commands wait for a shim to accept and to answer Status. Shims are
/// asked all at once, so this bounds the whole listing; 1 s was too short on a node under load
/// (an answering shim reported as hung at load average 120).
pub const DIAL_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("cannot read the task index {dir}: {source}; is this a Nomad client running Elide tasks? (pass the plugin's runtime_dir with --state-dir)")]
    Index {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("no Elide task matches {task:?} in {dir}; list them with `elide-executor status --state-dir {dir}`")]
    NoMatch { task: String, dir: PathBuf },
    #[error(
        "{task:?} matches {count} tasks ({ids}); use a task id or key from `elide-executor status`"
    )]
    Ambiguous {
        task: String,
        count: usize,
        ids: String,
    },
    #[error("{reason}; its last state says {last}")]
    Unreachable { reason: String, last: String },
    #[error("{verb} failed: {message}")]
    Rpc { verb: &'static str, message: String },
    #[error(transparent)]
    Signal(#[from] common::signals::UnknownSignal),
    #[error("--timeout: {0}")]
    Duration(#[from] common::duration::DurationError),
    #[error("cannot write the output: {0}")]
    Output(#[from] std::io::Error),
}

/// The one task `task` names, or an error naming the fix.
pub async fn find_one(dir: &Path, task: &str) -> Result<Row, CliError> {
    let rows = status::collect(dir).await?;
    let mut matches: Vec<Row> = rows.into_iter().filter(|r| r.matches(task)).collect();
    match matches.len() {
        0 => Err(CliError::NoMatch {
            task: task.to_owned(),
            dir: dir.to_path_buf(),
        }),
        1 => Ok(matches.remove(0)),
        count => Err(CliError::Ambiguous {
            task: task.to_owned(),
            count,
            ids: matches
                .iter()
                .map(|r| r.task_id.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        }),
    }
}

/// A client for the row's shim, or an error that says what its state file last recorded.
pub async fn client_for(row: &Row) -> Result<ExecutorClient<Channel>, CliError> {
    common::client::connect_timeout(Path::new(&row.socket), DIAL_TIMEOUT)
        .await
        .map_err(|e| CliError::Unreachable {
            reason: e.to_string(),
            last: row.last_state(),
        })
}
