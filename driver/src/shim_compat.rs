//! The plugin's side of the shim API's compatibility rule (`common::shim_api`): a task keeps
//! the shim it was started with across plugin upgrades, so before the plugin uses anything
//! newer than level 1 it checks the level recorded in the task's `driver_state`, and tells the
//! operator plainly when that shim is too old, as a task event, without failing the task.

use crate::plugin::Plugin;
use crate::tasks::handle::DriverState;
use common::shim_api::{self, Feature};
use tonic::{Code, Status};

/// `Ok` when the task's shim serves `feature`. Otherwise `FAILED_PRECONDITION` with the
/// explanation, which is also published once per task and feature as a task event.
pub fn require(plugin: &Plugin, state: &DriverState, feature: Feature) -> Result<(), Status> {
    shim_api::require(feature, state.shim_api_level, &state.executor_version)
        .map_err(|missing| refuse(plugin, state, feature, missing.to_string()))
}

/// The same explanation for a shim that answers `UNIMPLEMENTED` to the RPC behind `feature`
/// although its recorded level says it has it (a shim built from a modified source, say).
/// Other errors pass through unchanged.
pub fn unimplemented(
    plugin: &Plugin,
    state: &DriverState,
    feature: Feature,
    status: Status,
) -> Status {
    if status.code() != Code::Unimplemented {
        return status;
    }
    let shim = if state.executor_version.is_empty() {
        "an older release".to_owned()
    } else {
        format!("version {}", state.executor_version)
    };
    refuse(
        plugin,
        state,
        feature,
        format!(
            "{} is not implemented by this task's elide-executor ({shim}, API level {}): the task \
             keeps running and everything else works; restart the task (`nomad alloc restart`) \
             to move it to the installed shim",
            feature.name,
            shim_api::effective_level(state.shim_api_level)
        ),
    )
}

fn refuse(plugin: &Plugin, state: &DriverState, feature: Feature, message: String) -> Status {
    if plugin.first_refusal(&state.task_id, feature) {
        plugin.emit(
            &state.task_id,
            &state.alloc_id,
            &state.task_name,
            message.clone(),
        );
    }
    Status::failed_precondition(message)
}

/// RecoverTask's first check: this plugin drives shims from `MIN_SUPPORTED_LEVEL` up.
pub fn supported(state: &DriverState) -> Result<(), Status> {
    supported_from(state, shim_api::MIN_SUPPORTED_LEVEL)
}

fn supported_from(state: &DriverState, min: u32) -> Result<(), Status> {
    let level = shim_api::effective_level(state.shim_api_level);
    if level >= min {
        return Ok(());
    }
    Err(Status::failed_precondition(format!(
        "task {} runs on elide-executor {} (shim API level {level}), which this plugin ({}) no \
         longer drives (levels {min} to {}): install the plugin release before this one, which \
         supports both, until the task has restarted on a newer shim",
        state.task_id,
        if state.executor_version.is_empty() {
            "of an older release"
        } else {
            &state.executor_version
        },
        crate::VERSION,
        shim_api::API_LEVEL
    )))
}

/// Why RecoverTask could not ask a shim for its Status. `UNIMPLEMENTED` means the process on
/// the socket does not speak `elide.executor.v1` at all: a shim of an incompatible release.
pub fn status_refused(state: &DriverState, status: &Status) -> Status {
    if status.code() == Code::Unimplemented {
        return Status::failed_precondition(format!(
            "the shim of task {} at {} does not speak the shim API {} this plugin ({}) uses: it \
             was started by an incompatible release of nomad-driver-elide. Install a plugin \
             release that speaks its API (see the compatibility rule in the operator guide)",
            state.task_id,
            state.socket_path.display(),
            shim_api::API_PACKAGE,
            crate::VERSION
        ));
    }
    Status::unavailable(format!(
        "elide-executor of task {} does not answer Status: {}",
        state.task_id,
        status.message()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tasks::handle::HANDLE_VERSION;

    /// A capability of a level no shim speaks yet, standing in for the RPCs still to come.
    const FUTURE: Feature = Feature {
        name: "log status",
        level: shim_api::API_LEVEL + 1,
    };

    fn state(level: u32, version: &str) -> DriverState {
        DriverState {
            version: HANDLE_VERSION,
            task_id: "a1/web/0f".into(),
            alloc_id: "a1".into(),
            task_name: "web".into(),
            socket_path: "/run/nde/x.sock".into(),
            state_path: "/d/state.json".into(),
            shim_pid: 1,
            shim_start_time: 1,
            runtime_pid: 2,
            runtime_start_time: 2,
            started_at_unix_ms: 0,
            elide_version: String::new(),
            script: String::new(),
            shim_api_level: level,
            executor_version: version.into(),
            log_collection: String::new(),
        }
    }

    #[tokio::test]
    async fn an_old_shim_gets_one_clear_task_event_and_a_precondition_error() {
        let plugin = Plugin::new();
        let mut events = plugin.events.subscribe();
        let old = state(1, "0.1.0");
        let e = require(&plugin, &old, FUTURE).unwrap_err();
        assert_eq!(e.code(), Code::FailedPrecondition);
        for part in [
            "log status",
            "version 0.1.0",
            "nomad alloc restart",
            "keeps running",
        ] {
            assert!(e.message().contains(part), "{part:?}: {}", e.message());
        }
        let ev = events.try_recv().unwrap();
        assert_eq!(
            (ev.task_id.as_str(), ev.task_name.as_str()),
            ("a1/web/0f", "web")
        );
        assert_eq!(ev.message, e.message());
        // Asked again (a periodic caller): the error again, but no second event.
        assert!(require(&plugin, &old, FUTURE).is_err());
        assert!(events.try_recv().is_err());
        // A shim that speaks the level is served; level-1 features always are.
        assert!(require(&plugin, &state(FUTURE.level, "9.0.0"), FUTURE).is_ok());
        let basic = Feature {
            name: "stop",
            level: 1,
        };
        assert!(require(&plugin, &state(0, ""), basic).is_ok());
    }

    #[tokio::test]
    async fn unimplemented_is_explained_and_other_errors_pass_through() {
        let plugin = Plugin::new();
        let st = state(FUTURE.level, "9.0.0");
        let e = unimplemented(
            &plugin,
            &st,
            FUTURE,
            Status::unimplemented("no such method"),
        );
        assert_eq!(e.code(), Code::FailedPrecondition);
        assert!(e.message().contains("not implemented") && e.message().contains("9.0.0"));
        let e = unimplemented(&plugin, &st, FUTURE, Status::unavailable("gone"));
        assert_eq!((e.code(), e.message()), (Code::Unavailable, "gone"));
    }

    #[test]
    fn recovery_refuses_shims_below_the_supported_level_with_the_way_out() {
        assert!(supported(&state(0, "")).is_ok(), "level 1 is always driven");
        let e = supported_from(&state(1, "0.1.0"), 2).unwrap_err();
        assert_eq!(e.code(), Code::FailedPrecondition);
        assert!(
            e.message().contains("0.1.0") && e.message().contains("release before this one"),
            "{}",
            e.message()
        );
    }

    #[test]
    fn a_shim_that_does_not_speak_v1_is_named_as_such() {
        let st = state(1, "0.1.0");
        let e = status_refused(&st, &Status::unimplemented(""));
        assert_eq!(e.code(), Code::FailedPrecondition);
        assert!(e.message().contains("elide.executor.v1") && e.message().contains("x.sock"));
        let e = status_refused(&st, &Status::deadline_exceeded("slow"));
        assert_eq!(e.code(), Code::Unavailable);
        assert!(e.message().contains("slow"));
    }
}
