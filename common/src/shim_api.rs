//! Versioning of the shim API (`elide.executor.v1`), the contract that outlives plugin
//! upgrades: a shim keeps serving its task while the plugin around it is replaced, so every
//! plugin must drive the shims older releases started.
//!
//! The rule (docs/operator-guide.md, "Compatibility"):
//! - within `elide.executor.v1` changes are additive only (new RPCs, new fields with new
//!   numbers, new enum values); nothing is renumbered, retyped, renamed, removed or given a new
//!   meaning;
//! - each addition raises [`API_LEVEL`] by one and gets a line in
//!   `proto/elide/executor/v1/api-levels.txt`; a test holds the compiled proto to that ledger;
//! - the shim reports its level in `StartResponse`/`StatusResponse.api_level` (0 from shims
//!   that predate the field = level 1); the plugin records it in the task's `driver_state` and
//!   calls an RPC newer than level 1 only after [`require`] accepted the task's level; a refusal
//!   is a clear task event, never a failed task;
//! - a plugin supports shims from level [`MIN_SUPPORTED_LEVEL`] up; raising it (or moving to
//!   `elide.executor.v2`) needs a release that still speaks the old level in between.

/// The proto package of the shim API.
pub const API_PACKAGE: &str = "elide.executor.v1";

/// The level this build's shim speaks and this build's plugin knows about.
pub const API_LEVEL: u32 = 6;

/// The oldest shim level this plugin still drives (tasks started by older shims can be
/// recovered, stopped, signalled, waited for and measured).
pub const MIN_SUPPORTED_LEVEL: u32 = 1;
const _: () = assert!(MIN_SUPPORTED_LEVEL >= 1 && MIN_SUPPORTED_LEVEL <= API_LEVEL);

/// The level a shim really speaks, from what it reported: 0 is a shim that predates the
/// `api_level` field, which speaks level 1.
pub fn effective_level(reported: u32) -> u32 {
    reported.max(1)
}

/// Level 2: running a command inside the task (the `Exec` RPC: `nomad alloc exec`, ExecTask).
pub const EXEC: Feature = Feature {
    name: "exec into the task (`nomad alloc exec`, template change scripts, script checks)",
    level: 2,
};

/// Level 3: the shim's event stream (`Events`), e.g. log files it cannot write.
pub const EVENTS: Feature = Feature {
    name: "events from the task's shim (log write failures)",
    level: 3,
};

/// Level 4: line and failed-write counts of the task's logs (`LogStream.lines_*`,
/// `write_errors`), for the plugin's metrics. Older shims report them as 0.
pub const LOG_LINE_COUNTS: Feature = Feature {
    name: "log line and write-error counts in the plugin's metrics",
    level: 4,
};

/// Level 5: the log counters pushed on the `Events` stream when they change
/// (`EventsRequest.log_counts`, `ShimEvent.logs`). For older shims the plugin's metrics ask
/// `Status` at each scrape instead.
pub const LOG_COUNT_PUSH: Feature = Feature {
    name: "log counters pushed by the shim (metrics scrapes without a Status call per task)",
    level: 5,
};

/// Level 6: events, log counters and the runtime's exit as datagrams to the plugin's notify
/// socket (`EventsRequest.notify_socket`), so an idle task costs the plugin no connection.
/// Older shims keep an Events stream and a Wait call open for the task's lifetime.
pub const NOTIFY: Feature = Feature {
    name: "events and the exit sent as datagrams (no connection held per idle task)",
    level: 6,
};

/// A shim capability newer than level 1. The plugin checks it with [`require`] before calling
/// the RPC that provides it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Feature {
    /// What the operator would call it, e.g. "exec into the task".
    pub name: &'static str,
    /// The API level that introduced it.
    pub level: u32,
}

/// A task's shim is too old for a feature. The message names the feature, both levels and the
/// way out, and says that the task itself is fine.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{feature} needs elide-executor API level {needed}, but this task's shim ({shim}) speaks \
     level {has}: it was started before the plugin was upgraded. The task keeps running and \
     everything else works; restart the task (`nomad alloc restart`) to move it to the new shim"
)]
pub struct Missing {
    pub feature: &'static str,
    pub needed: u32,
    pub has: u32,
    /// The shim's version as recorded, or "an older release".
    pub shim: String,
}

/// Whether a shim that reported `shim_level` (as recorded) can serve `feature`.
pub fn require(feature: Feature, shim_level: u32, shim_version: &str) -> Result<(), Missing> {
    let has = effective_level(shim_level);
    if has >= feature.level {
        return Ok(());
    }
    Err(Missing {
        feature: feature.name,
        needed: feature.level,
        has,
        shim: if shim_version.is_empty() {
            "an older release".to_owned()
        } else {
            format!("version {shim_version}")
        },
    })
}

/// The `--version` line of both binaries, e.g.
/// `elide-executor 0.2.0 (revision 9acac8f0d1e2, shim API elide.executor.v1 level 1)`.
pub fn version_line(program: &str, version: &str, revision: &str) -> String {
    format!("{program} {}", version_text(version, revision))
}

/// [`version_line`] without the program name (what clap prints after it).
pub fn version_text(version: &str, revision: &str) -> String {
    format!("{version} (revision {revision}, shim API {API_PACKAGE} level {API_LEVEL})")
}

/// What `elide-executor --version` says about itself: its version and API level. A shim from
/// before the level was printed (`elide-executor 0.1.0`) speaks level 1.
pub fn parse_version_line(out: &str) -> Option<(String, u32)> {
    let line = out.lines().map(str::trim).find(|l| !l.is_empty())?;
    let mut words = line.split_whitespace();
    let _program = words.next()?;
    let version = words.next()?.to_owned();
    if !version.starts_with(|c: char| c.is_ascii_digit()) {
        return None;
    }
    let level = line
        .split(&format!("{API_PACKAGE} level "))
        .nth(1)
        .and_then(|rest| {
            rest.split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or(1);
    Some((version, level))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn old_shims_speak_level_one() {
        assert_eq!(effective_level(0), 1);
        assert_eq!(effective_level(1), 1);
        assert_eq!(effective_level(3), 3);
    }

    #[test]
    fn require_refuses_older_shims_with_the_way_out() {
        let exec = Feature {
            name: "exec into the task",
            level: 2,
        };
        assert_eq!(require(exec, 2, "0.3.0"), Ok(()));
        assert_eq!(require(exec, 5, ""), Ok(()));
        let e = require(exec, 0, "0.1.0").unwrap_err();
        assert_eq!((e.needed, e.has), (2, 1));
        let msg = e.to_string();
        for part in [
            "exec into the task",
            "level 2",
            "version 0.1.0",
            "level 1",
            "keeps running",
            "nomad alloc restart",
        ] {
            assert!(msg.contains(part), "{part:?} missing from: {msg}");
        }
        assert!(require(exec, 1, "")
            .unwrap_err()
            .to_string()
            .contains("an older release"));
    }

    #[test]
    fn version_lines_round_trip_and_old_ones_are_level_one() {
        let line = version_line("elide-executor", "0.2.0+b", "9acac8f0d1e2");
        assert_eq!(
            line,
            format!(
                "elide-executor 0.2.0+b (revision 9acac8f0d1e2, shim API elide.executor.v1 level {API_LEVEL})"
            )
        );
        assert_eq!(
            parse_version_line(&format!("{line}\n")),
            Some(("0.2.0+b".to_owned(), API_LEVEL))
        );
        assert_eq!(
            parse_version_line("elide-executor 0.1.0\n"),
            Some(("0.1.0".to_owned(), 1))
        );
        assert_eq!(
            parse_version_line("x 1.0 (revision r, shim API elide.executor.v1 level 7)"),
            Some(("1.0".to_owned(), 7))
        );
        assert_eq!(parse_version_line("usage: elide-executor <COMMAND>"), None);
        assert_eq!(parse_version_line(""), None);
    }

    // -------------------------------------------------------------------------------------
    // The ledger: proto/elide/executor/v1/api-levels.txt against the compiled proto.

    use prost::Message;
    use prost_types::field_descriptor_proto::{Label, Type};
    use prost_types::{FieldDescriptorProto, FileDescriptorSet};
    use std::collections::{BTreeMap, BTreeSet};

    const LEDGER: &str = include_str!("../../proto/elide/executor/v1/api-levels.txt");

    /// `.elide.executor.v1.ExitStatus` -> `ExitStatus`.
    fn short(name: &str) -> String {
        name.rsplit('.').next().unwrap_or(name).to_owned()
    }

    fn type_name(f: &FieldDescriptorProto) -> String {
        let base = match f.r#type() {
            Type::Message | Type::Enum => short(f.type_name()),
            Type::Double => "double".into(),
            Type::Float => "float".into(),
            Type::Int64 => "int64".into(),
            Type::Uint64 => "uint64".into(),
            Type::Int32 => "int32".into(),
            Type::Fixed64 => "fixed64".into(),
            Type::Fixed32 => "fixed32".into(),
            Type::Bool => "bool".into(),
            Type::String => "string".into(),
            Type::Bytes => "bytes".into(),
            Type::Uint32 => "uint32".into(),
            Type::Sfixed32 => "sfixed32".into(),
            Type::Sfixed64 => "sfixed64".into(),
            Type::Sint32 => "sint32".into(),
            Type::Sint64 => "sint64".into(),
            Type::Group => "group".into(),
        };
        if f.label() == Label::Repeated {
            format!("repeated {base}")
        } else if f.proto3_optional() {
            format!("optional {base}")
        } else {
            base
        }
    }

    /// Every RPC, field and enum value of the shim API, one canonical line each.
    fn compiled_api() -> BTreeSet<String> {
        let bytes = include_bytes!(concat!(env!("OUT_DIR"), "/descriptors.bin"));
        let set = FileDescriptorSet::decode(&bytes[..]).expect("descriptor set");
        let file = set
            .file
            .iter()
            .find(|f| f.package() == API_PACKAGE)
            .expect("the shim API is compiled");
        let mut out = BTreeSet::new();
        for svc in &file.service {
            for m in &svc.method {
                out.insert(format!(
                    "rpc {}.{} ({}{}) returns ({}{})",
                    svc.name(),
                    m.name(),
                    if m.client_streaming() { "stream " } else { "" },
                    short(m.input_type()),
                    if m.server_streaming() { "stream " } else { "" },
                    short(m.output_type()),
                ));
            }
        }
        for msg in &file.message_type {
            for f in &msg.field {
                out.insert(format!(
                    "field {}.{} = {} {}",
                    msg.name(),
                    f.name(),
                    f.number(),
                    type_name(f)
                ));
            }
        }
        for e in &file.enum_type {
            for v in &e.value {
                out.insert(format!("enum {}.{} = {}", e.name(), v.name(), v.number()));
            }
        }
        out
    }

    /// The ledger's entries with their levels, in file order.
    fn ledger() -> Vec<(u32, String)> {
        LEDGER
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(|l| {
                let (level, entry) = l.split_once(' ').expect("`<level> <entry>`");
                let level = level.parse().expect("a numeric level");
                (
                    level,
                    entry.split_whitespace().collect::<Vec<_>>().join(" "),
                )
            })
            .collect()
    }

    #[test]
    fn the_shim_api_only_grows_and_every_addition_has_a_level() {
        let compiled = compiled_api();
        let ledger = ledger();
        let recorded: BTreeMap<&str, u32> = ledger.iter().map(|(l, e)| (e.as_str(), *l)).collect();
        assert_eq!(
            recorded.len(),
            ledger.len(),
            "duplicate lines in api-levels.txt"
        );

        let gone: Vec<&str> = recorded
            .keys()
            .copied()
            .filter(|e| !compiled.contains(*e))
            .collect();
        assert!(
            gone.is_empty(),
            "executor.proto no longer has these entries of api-levels.txt (removed, renumbered, \
             retyped or renamed). Shims of older releases still speak them: within {API_PACKAGE} \
             changes must be additive. Restore them, or start elide.executor.v2 (served next to \
             v1 for as long as v1 shims can run):\n  {}",
            gone.join("\n  ")
        );
        let new: Vec<&String> = compiled
            .iter()
            .filter(|e| !recorded.contains_key(e.as_str()))
            .collect();
        assert!(
            new.is_empty(),
            "executor.proto has entries api-levels.txt does not record. Append them at level {} \
             and raise common::shim_api::API_LEVEL to it; the plugin must check the level \
             (shim_api::require) before using them:\n  {}",
            API_LEVEL + 1,
            new.iter()
                .map(|e| format!("{} {e}", API_LEVEL + 1))
                .collect::<Vec<_>>()
                .join("\n  ")
        );

        // Levels only go up down the file, and the newest one is this build's.
        let levels: Vec<u32> = ledger.iter().map(|(l, _)| *l).collect();
        assert!(
            levels.windows(2).all(|w| w[0] <= w[1]),
            "api-levels.txt is append-only: levels must not decrease down the file"
        );
        assert_eq!(
            levels.iter().max().copied(),
            Some(API_LEVEL),
            "the newest level in api-levels.txt must be common::shim_api::API_LEVEL"
        );
    }
}
