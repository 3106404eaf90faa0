//! `driver_state`: what Nomad stores for us in the task handle, so any plugin process can find
//! the task's shim again. Nomad persists it once (at StartTask) and never updates it.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

pub const HANDLE_VERSION: i32 = 1;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DriverState {
    pub version: i32,
    pub task_id: String,
    pub alloc_id: String,
    pub task_name: String,
    pub socket_path: PathBuf,
    pub state_path: PathBuf,
    pub shim_pid: i32,
    pub shim_start_time: u64,
    pub runtime_pid: i32,
    pub runtime_start_time: u64,
    pub started_at_unix_ms: i64,
    #[serde(default)]
    pub elide_version: String,
    #[serde(default)]
    pub script: String,
    /// The shim's API level and version as it reported them at StartTask (0 / empty in
    /// handles from before they were recorded: a level-1 shim). A shim never changes, so this
    /// stays true for the task's life; the plugin checks it before calling anything newer
    /// than level 1 (common::shim_api::require).
    #[serde(default)]
    pub shim_api_level: u32,
    #[serde(default)]
    pub executor_version: String,
    /// Who writes the task's log files, fixed at StartTask: "executor" (its shim), "nomad"
    /// (logmon, through FIFOs; also "" in handles from before it was recorded) or "none"
    /// (logs disabled). A plugin whose `log_collection` changed since still knows which
    /// tasks have a logmon.
    #[serde(default)]
    pub log_collection: String,
}

#[derive(Debug, thiserror::Error)]
pub enum HandleError {
    #[error("task handle has no driver_state; it was not created by the elide driver")]
    Empty,
    #[error("task handle driver_state is not readable ({0}); it was written by an incompatible elide driver")]
    Decode(serde_json::Error),
    #[error("task handle version {0} is newer than this elide driver understands ({HANDLE_VERSION}); upgrade the plugin")]
    Version(i32),
}

impl DriverState {
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, HandleError> {
        if bytes.is_empty() {
            return Err(HandleError::Empty);
        }
        let s: DriverState = serde_json::from_slice(bytes).map_err(HandleError::Decode)?;
        if s.version > HANDLE_VERSION || s.version < 1 {
            return Err(HandleError::Version(s.version));
        }
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_rejections() {
        let s = DriverState {
            version: HANDLE_VERSION,
            task_id: "a/b/c".into(),
            alloc_id: "a".into(),
            task_name: "b".into(),
            socket_path: "/run/x.sock".into(),
            state_path: "/d/state.json".into(),
            shim_pid: 10,
            shim_start_time: 11,
            runtime_pid: 12,
            runtime_start_time: 13,
            started_at_unix_ms: 14,
            elide_version: "1.0.0-beta10".into(),
            script: "local/x.py".into(),
            shim_api_level: 1,
            executor_version: "0.1.0".into(),
            log_collection: "executor".into(),
        };
        assert_eq!(DriverState::decode(&s.encode()).unwrap(), s);
        assert!(matches!(DriverState::decode(b""), Err(HandleError::Empty)));
        assert!(matches!(
            DriverState::decode(b"{"),
            Err(HandleError::Decode(_))
        ));
        // A handle written before the shim's level was recorded reads as level 0 (= 1).
        let old = br#"{"version":1,"task_id":"a/b/c","alloc_id":"a","task_name":"b","socket_path":"/s","state_path":"/st","shim_pid":1,"shim_start_time":2,"runtime_pid":3,"runtime_start_time":4,"started_at_unix_ms":5}"#;
        let old = DriverState::decode(old).unwrap();
        assert_eq!((old.shim_api_level, old.executor_version.as_str()), (0, ""));
        assert_eq!(old.log_collection, "", "a task from before: logmon's FIFOs");
        let mut future = s.clone();
        future.version = 9;
        assert!(matches!(
            DriverState::decode(&future.encode()),
            Err(HandleError::Version(9))
        ));
    }
}
