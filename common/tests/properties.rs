//! Property tests of everything in `common` that reads outside input: Go durations, signal
//! names, env names, the task spec and the shim's state file (the plugin's config payloads:
//! driver/tests/properties.rs).
//!
//! Two kinds of property: arbitrary input never panics (and errors name what was wrong), and
//! round trips are exact. A few seconds in CI (the default case counts below); set
//! `PROPTEST_CASES` to run every property that many times, or `scripts/soak` to run them for
//! minutes on end. Failures found are kept as seeds in `proptest-regressions/` (committed)
//! and replayed first on every run.

use common::spec::{ResourceSpec, TaskSpec, TASK_SPEC_VERSION};
use common::state::{ExitRecord, TaskState, STATE_VERSION};
use common::{duration, env, signals};
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;
use std::collections::BTreeMap;
use std::time::Duration;

/// `cases` per property by default; `PROPTEST_CASES` overrides it for long runs.
fn config(cases: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(cases);
    ProptestConfig {
        cases,
        // Shrinking a rare failure must not take longer than finding it did.
        max_shrink_iters: 10_000,
        // Seeds of past failures, replayed first on every run (committed).
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/proptest-regressions/properties.txt"
        )))),
        ..ProptestConfig::default()
    }
}

/// The number a signal name stands for (`SIGNULL` → 0).
fn signal_number(name: &str) -> Result<i32, signals::UnknownSignal> {
    Ok(signals::parse(name)?.map(|s| s.number()).unwrap_or(0))
}

proptest! {
    #![proptest_config(config(512))]

    // ---- durations ---------------------------------------------------------------------

    #[test]
    fn durations_never_panic(text in "[-+0-9.a-zµμ ]{0,24}") {
        if let Ok(d) = duration::parse(&text) {
            prop_assert!(d.as_nanos() <= i64::MAX as u128);
        }
    }

    #[test]
    fn durations_round_trip_through_go_format(nanos in 0..=i64::MAX as u64) {
        let d = Duration::from_nanos(nanos);
        prop_assert_eq!(duration::parse(&duration::format(d)), Ok(d));
    }

    #[test]
    fn go_duration_sums_parse_exactly(parts in proptest::collection::vec((0u64..100_000, 0usize..6), 1..5)) {
        const UNITS: [(&str, u64); 6] = [("ns", 1), ("us", 1_000), ("ms", 1_000_000),
            ("s", 1_000_000_000), ("m", 60_000_000_000), ("h", 3_600_000_000_000)];
        let text: String = parts.iter().map(|(n, u)| format!("{n}{}", UNITS[*u].0)).collect();
        let want: u128 = parts.iter().map(|(n, u)| u128::from(*n) * u128::from(UNITS[*u].1)).sum();
        prop_assert_eq!(duration::parse(&text).map(|d| d.as_nanos()), Ok(want));
    }

    // ---- signals and env names ---------------------------------------------------------

    #[test]
    fn signal_names_never_panic(text in "(?i)(sig)?[a-z0-9+ -]{0,12}") {
        if let Ok(Some(s)) = signals::parse(&text) {
            let n = s.number();
            prop_assert!((1..=31).contains(&n) || (34..=64).contains(&n));
            prop_assert_eq!(signal_number(&signals::name(n)), Ok(n));
        }
    }

    #[test]
    fn every_signal_spelling_means_the_same_number(n in prop_oneof![1..=31i32, 34..=64i32], lower in any::<bool>(), prefix in any::<bool>()) {
        let name = signals::name(n);
        let mut text = if prefix { name.clone() } else { name.trim_start_matches("SIG").to_owned() };
        if lower {
            text = text.to_lowercase();
        }
        prop_assert_eq!(signal_number(&text), Ok(n), "{}", text);
        prop_assert_eq!(signal_number(&n.to_string()), Ok(n));
    }

    #[test]
    fn env_names_follow_the_documented_rule(key in ".{0,10}") {
        let model = key.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.');
        prop_assert_eq!(env::is_valid_name(&key), model);
        prop_assert_eq!(env::check_var(&key, "v").is_ok(), model);
    }

    // ---- the task spec and the state file ------------------------------------------------

    #[test]
    fn specs_round_trip_through_json(spec in any_spec_file()) {
        let json = serde_json::to_vec(&spec).unwrap();
        let back: TaskSpec = serde_json::from_slice(&json).unwrap();
        prop_assert_eq!(&back, &spec);
        let _ = spec.validate();
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_spec_and_state_readers(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        if let Ok(spec) = serde_json::from_slice::<TaskSpec>(&bytes) {
            let _ = spec.validate();
        }
        let _ = serde_json::from_slice::<TaskState>(&bytes);
    }

    /// Specs that pass validation hold numbers every later conversion can take.
    #[test]
    fn valid_specs_convert_without_overflow(spec in any_spec_file()) {
        if spec.validate().is_ok() {
            let r = &spec.resources;
            prop_assert!(common::spec::mib_to_bytes(r.memory_max_mb).is_some());
            prop_assert!(r.memory_max_mb.checked_mul(100).is_some());
            prop_assert!(std::time::Instant::now()
                .checked_add(Duration::from_secs(spec.linger_after_exit_secs))
                .is_some());
            prop_assert!(std::time::Instant::now()
                .checked_add(Duration::from_millis(spec.fifo_open_timeout_ms))
                .is_some());
        }
    }
}

proptest! {
    // Each case writes and reads files: fewer of them.
    #![proptest_config(config(64))]

    #[test]
    fn state_files_round_trip_and_garbage_is_an_error(
        spec in any_spec_file(),
        exit in proptest::option::of((any::<i32>(), any::<i32>(), any::<bool>(), ".{0,20}", any::<i64>())),
        garbage in proptest::collection::vec(any::<u8>(), 0..64),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let state = TaskState {
            version: STATE_VERSION,
            spec,
            shim_pid: 1,
            shim_start_time: 2,
            boot_id: "b".into(),
            runtime_pid: Some(3),
            runtime_start_time: Some(4),
            started_at_unix_ms: Some(5),
            cgroup: None,
            exit: exit.map(|(exit_code, signal, oom_killed, message, exited_at_unix_ms)| ExitRecord {
                exit_code, signal, oom_killed, message, exited_at_unix_ms,
            }),
            sandbox: None,
        };
        state.write(&path).unwrap();
        // Everything but the env, which never goes to disk.
        let mut expected = state;
        expected.spec.env.clear();
        prop_assert_eq!(TaskState::read(&path).unwrap(), expected);
        std::fs::write(&path, &garbage).unwrap();
        if let Err(e) = TaskState::read(&path) {
            prop_assert!(e.to_string().contains("state file"));
        }
    }
}

type SpecParts = (
    String,
    Vec<String>,
    BTreeMap<String, String>,
    ResourceSpec,
    u64,
    u64,
    String,
    Option<String>,
);

/// Any task spec JSON can carry, including numbers at their limits and odd env names.
fn any_spec_file() -> impl Strategy<Value = TaskSpec> {
    let number = || prop_oneof![0u64..1_000_000, any::<u64>(), Just(u64::MAX)];
    let resources = (number(), number(), number(), number(), ".{0,8}", ".{0,12}").prop_map(
        |(memory_mb, memory_max_mb, cpu_shares, pids_limit, cpuset_cpus, nomad_cgroup)| {
            ResourceSpec {
                memory_mb,
                memory_max_mb,
                cpu_shares,
                cpuset_cpus,
                nomad_cgroup,
                pids_limit,
                allow_no_cgroup: false,
            }
        },
    );
    let env = proptest::collection::btree_map(
        prop_oneof!["[A-Z_][A-Z0-9_]{0,8}", ".{0,8}"],
        ".{0,16}",
        0..6,
    );
    (
        ".{0,20}",
        proptest::collection::vec(".{0,12}", 0..5),
        env,
        resources,
        number(),
        number(),
        ".{0,8}",
        proptest::option::of("/[a-z]{1,8}"),
    )
        .prop_map(
            |(task_id, argv, env, resources, fifo, linger, user, netns): SpecParts| TaskSpec {
                version: TASK_SPEC_VERSION,
                alloc_id: task_id.chars().take(4).collect(),
                job_id: "job".into(),
                task_group: "group".into(),
                task_name: "task".into(),
                namespace: "default".into(),
                task_id,
                argv,
                env,
                cwd: "/tmp".into(),
                stdout_path: "/dev/null".into(),
                stderr_path: "/dev/null".into(),
                log_files: None,
                fifo_open_timeout_ms: fifo,
                user,
                socket_path: "/run/x/s.sock".into(),
                state_path: "/tmp/st/state.json".into(),
                netns_path: netns.map(Into::into),
                resources,
                linger_after_exit_secs: linger,
                sandbox: None,
            },
        )
}
