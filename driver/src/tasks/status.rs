//! gRPC statuses Nomad understands for StartTask: a plain error fails the task for good; a
//! FailedPrecondition carrying a `RecoverableError{recoverable=true}` detail lets the restart
//! policy retry it.

use common::proto::google::rpc::Status as RpcStatus;
use common::proto::structs::RecoverableError;
use prost::Message;
use tonic::{Code, Status};

pub const RECOVERABLE_ERROR_TYPE_URL: &str =
    "type.googleapis.com/hashicorp.nomad.plugins.shared.structs.RecoverableError";

/// A start failure a retry could fix (no FIFO reader yet, shim slow to start...).
pub fn recoverable(message: impl Into<String>) -> Status {
    with_recoverable_detail(message.into(), true)
}

/// A start failure no retry can fix (bad config, missing script...). Marked explicitly.
pub fn permanent(message: impl Into<String>) -> Status {
    with_recoverable_detail(message.into(), false)
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

/// Nomad's sentinel text for an unknown task (readability only: Nomad cannot match it).
pub fn not_found(task_id: &str) -> Status {
    Status::not_found(format!("task not found for given id: {task_id}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recoverable_status_carries_the_detail_nomad_looks_for() {
        let s = recoverable("no reader on FIFO");
        assert_eq!(s.code(), Code::FailedPrecondition);
        let rpc = RpcStatus::decode(s.details()).unwrap();
        assert_eq!(rpc.code, Code::FailedPrecondition as i32);
        assert_eq!(rpc.message, "no reader on FIFO");
        assert_eq!(rpc.details[0].type_url, RECOVERABLE_ERROR_TYPE_URL);
        let re = RecoverableError::decode(rpc.details[0].value.as_slice()).unwrap();
        assert!(re.recoverable);
        let p = permanent("bad");
        let rpc = RpcStatus::decode(p.details()).unwrap();
        assert!(
            !RecoverableError::decode(rpc.details[0].value.as_slice())
                .unwrap()
                .recoverable
        );
    }
}
