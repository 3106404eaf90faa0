//! `LogFilesSpec` (log_collection = "executor"): what the shim refuses before it opens a log
//! file, and the defaults a spec without sizes gets.

use common::spec::{
    LogFilesSpec, DEFAULT_LOG_MAX_FILES, DEFAULT_LOG_MAX_FILE_SIZE_MB, MAX_LOG_MAX_FILES,
    MAX_LOG_MAX_FILE_SIZE_MB,
};
use std::path::PathBuf;

fn good() -> LogFilesSpec {
    LogFilesSpec {
        dir: PathBuf::from("/var/nomad/alloc/a1/alloc/logs"),
        stdout_name: "web.stdout".into(),
        stderr_name: "web.stderr".into(),
        max_files: 3,
        max_file_size_mb: 5,
    }
}

/// The field the error names, and its message.
fn refused(spec: &LogFilesSpec) -> (String, String) {
    let e = spec
        .validate()
        .expect_err(&format!("{spec:?} must be refused"));
    assert_eq!(
        e.to_string(),
        format!("{}: {}", e.field, e.message),
        "the error names its field"
    );
    (e.field, e.message)
}

#[test]
fn a_well_formed_spec_passes_and_the_limits_themselves_are_allowed() {
    assert_eq!(good().validate(), Ok(()));
    let mut at_limits = good();
    at_limits.max_files = MAX_LOG_MAX_FILES;
    at_limits.max_file_size_mb = MAX_LOG_MAX_FILE_SIZE_MB;
    assert_eq!(at_limits.validate(), Ok(()));
    let mut smallest = good();
    smallest.max_files = 1;
    smallest.max_file_size_mb = 1;
    assert_eq!(smallest.validate(), Ok(()));
}

#[test]
fn file_counts_and_sizes_out_of_range_name_the_option_to_fix() {
    for n in [0, MAX_LOG_MAX_FILES + 1] {
        let mut s = good();
        s.max_files = n;
        let (field, message) = refused(&s);
        assert_eq!(field, "log_files.max_files");
        assert!(message.contains(&n.to_string()), "{message}");
        assert!(message.contains("fix log_max_files"), "{message}");
    }
    for mb in [0, MAX_LOG_MAX_FILE_SIZE_MB + 1] {
        let mut s = good();
        s.max_file_size_mb = mb;
        let (field, message) = refused(&s);
        assert_eq!(field, "log_files.max_file_size_mb");
        assert!(message.contains(&mb.to_string()), "{message}");
        assert!(message.contains("fix log_max_file_size"), "{message}");
    }
}

#[test]
fn a_log_name_that_could_leave_the_logs_dir_is_refused() {
    for bad in [
        "",
        ".",
        "..",
        "../web.stdout",
        "sub/web.stdout",
        "web\0.stdout",
    ] {
        let mut s = good();
        s.stdout_name = bad.into();
        let (field, message) = refused(&s);
        assert_eq!(field, "log_files.stdout_name", "{bad:?}");
        assert!(message.contains("plain file name"), "{message}");

        let mut s = good();
        s.stderr_name = bad.into();
        assert_eq!(refused(&s).0, "log_files.stderr_name", "{bad:?}");
    }
}

#[test]
fn both_streams_in_one_file_is_refused() {
    let mut s = good();
    s.stderr_name = s.stdout_name.clone();
    let (field, message) = refused(&s);
    assert_eq!(field, "log_files.stderr_name");
    assert!(message.contains("differ"), "{message}");
}

#[test]
fn the_logs_dir_must_be_an_absolute_directory_path() {
    for bad in ["alloc/logs", "", "/"] {
        let mut s = good();
        s.dir = PathBuf::from(bad);
        let (field, message) = refused(&s);
        assert_eq!(field, "log_files.dir", "{bad:?}");
        assert!(message.contains("absolute path"), "{message}");
    }
}

#[test]
fn a_spec_without_sizes_gets_nomads_log_defaults_and_unknown_keys_are_errors() {
    let s: LogFilesSpec = serde_json::from_value(serde_json::json!({
        "dir": "/alloc/logs", "stdout_name": "t.stdout", "stderr_name": "t.stderr"
    }))
    .expect("a spec without sizes");
    assert_eq!(s.max_files, DEFAULT_LOG_MAX_FILES);
    assert_eq!(s.max_file_size_mb, DEFAULT_LOG_MAX_FILE_SIZE_MB);
    assert_eq!(s.validate(), Ok(()));

    let e = serde_json::from_value::<LogFilesSpec>(serde_json::json!({
        "dir": "/alloc/logs", "stdout_name": "t.stdout", "stderr_name": "t.stderr",
        "max_size": 3
    }))
    .expect_err("an unknown key");
    assert!(e.to_string().contains("max_size"), "{e}");
}
