//! Why a task RPC failed ([`TaskError`]), and the one place it becomes the gRPC status Nomad
//! reads (`From<TaskError> for Status`). The task code says what went wrong; only this mapping
//! knows Nomad's conventions: for StartTask a plain error fails the task for good, while a
//! FailedPrecondition carrying a `RecoverableError{recoverable=true}` detail lets the restart
//! policy retry it.

use common::proto::google::rpc::Status as RpcStatus;
use common::proto::structs::RecoverableError;
use prost::Message;
use tonic::{Code, Status};

pub const RECOVERABLE_ERROR_TYPE_URL: &str =
    "type.googleapis.com/hashicorp.nomad.plugins.shared.structs.RecoverableError";

/// Why a task RPC failed. Every message says what was wrong and, where there is one, the fix.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TaskError {
    /// A start failure a retry could fix (no FIFO reader yet, shim slow to start...).
    #[error("{0}")]
    Recoverable(String),
    /// A start failure no retry can fix (bad config, missing script...).
    #[error("{0}")]
    Permanent(String),
    /// No task of this id on this plugin.
    #[error("task not found for given id: {0}")]
    NotFound(String),
    /// The request itself cannot be used (a missing part, an unknown signal).
    #[error("{0}")]
    BadRequest(String),
    /// StartTask for a task this plugin already runs.
    #[error("{0}")]
    AlreadyExists(String),
    /// The task is not in a state that allows this (destroy while running, a handle that
    /// does not match its shim).
    #[error("{0}")]
    Refused(String),
    /// The task's shim is alive but cannot be reached now; a retry may succeed.
    #[error("{0}")]
    ShimUnreachable(String),
    /// The shim answered with an error, passed on with the shim's own code.
    #[error("{message}")]
    Shim { code: Code, message: String },
}

impl TaskError {
    /// The task was not found (Nomad's sentinel text, for readability: Nomad cannot match it).
    pub fn not_found(task_id: &str) -> Self {
        TaskError::NotFound(task_id.to_owned())
    }

    /// The gRPC code this error is sent with.
    pub fn code(&self) -> Code {
        match self {
            TaskError::Recoverable(_) | TaskError::Permanent(_) | TaskError::Refused(_) => {
                Code::FailedPrecondition
            }
            TaskError::NotFound(_) => Code::NotFound,
            TaskError::BadRequest(_) => Code::InvalidArgument,
            TaskError::AlreadyExists(_) => Code::AlreadyExists,
            TaskError::ShimUnreachable(_) => Code::Unavailable,
            TaskError::Shim { code, .. } => *code,
        }
    }

    /// The text Nomad shows.
    pub fn message(&self) -> String {
        self.to_string()
    }
}

/// A shim's answer (or a check phrased as one, `shim_compat`) passed on with its code.
impl From<Status> for TaskError {
    fn from(s: Status) -> TaskError {
        TaskError::Shim {
            code: s.code(),
            message: s.message().to_owned(),
        }
    }
}

impl From<TaskError> for Status {
    fn from(e: TaskError) -> Status {
        match e {
            TaskError::Recoverable(m) => with_recoverable_detail(m, true),
            TaskError::Permanent(m) => with_recoverable_detail(m, false),
            other => Status::new(other.code(), other.to_string()),
        }
    }
}

fn with_recoverable_detail(message: String, recoverable: bool) -> Status {
    let detail = prost_types::Any {
        type_url: RECOVERABLE_ERROR_TYPE_URL.to_owned(),
        value: RecoverableError { recoverable }.encode_to_vec(),
    };
    let rpc = RpcStatus {
        code: Code::FailedPrecondition as i32,
        message: message.clone(),
        details: vec![detail],
    };
    Status::with_details(
        Code::FailedPrecondition,
        message,
        rpc.encode_to_vec().into(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recoverable_detail(s: &Status) -> Option<bool> {
        let rpc = RpcStatus::decode(s.details()).ok()?;
        assert_eq!(rpc.code, Code::FailedPrecondition as i32);
        assert_eq!(rpc.message, s.message());
        assert_eq!(rpc.details[0].type_url, RECOVERABLE_ERROR_TYPE_URL);
        Some(
            RecoverableError::decode(rpc.details[0].value.as_slice())
                .unwrap()
                .recoverable,
        )
    }

    #[test]
    fn start_failures_carry_the_detail_nomad_looks_for() {
        let s = Status::from(TaskError::Recoverable("no reader on FIFO".into()));
        assert_eq!(s.code(), Code::FailedPrecondition);
        assert_eq!(s.message(), "no reader on FIFO");
        assert_eq!(recoverable_detail(&s), Some(true));
        let p = Status::from(TaskError::Permanent("bad".into()));
        assert_eq!(p.code(), Code::FailedPrecondition);
        assert_eq!(recoverable_detail(&p), Some(false));
    }

    #[test]
    fn every_other_error_keeps_its_code_and_text_and_no_detail() {
        for (e, code, text) in [
            (
                TaskError::not_found("t1"),
                Code::NotFound,
                "task not found for given id: t1",
            ),
            (
                TaskError::BadRequest("b".into()),
                Code::InvalidArgument,
                "b",
            ),
            (
                TaskError::AlreadyExists("a".into()),
                Code::AlreadyExists,
                "a",
            ),
            (
                TaskError::Refused("r".into()),
                Code::FailedPrecondition,
                "r",
            ),
            (
                TaskError::ShimUnreachable("u".into()),
                Code::Unavailable,
                "u",
            ),
            (
                TaskError::Shim {
                    code: Code::PermissionDenied,
                    message: "s".into(),
                },
                Code::PermissionDenied,
                "s",
            ),
        ] {
            assert_eq!(e.code(), code);
            let s = Status::from(e);
            assert_eq!((s.code(), s.message()), (code, text));
            assert!(s.details().is_empty(), "{s:?}");
        }
    }
}
