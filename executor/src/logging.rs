//! The shim's own log: JSON lines appended to `executor.log` in the task's state dir when
//! launched by the plugin (its stdio is /dev/null), plain text on stderr for `run` and the
//! operator commands.

use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use tracing_subscriber::filter::LevelFilter;

/// The level comes from `ELIDE_EXECUTOR_LOG` (error, warn, info, debug, trace; default info).
fn level() -> LevelFilter {
    std::env::var("ELIDE_EXECUTOR_LOG")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(LevelFilter::INFO)
}

/// JSON lines appended to `file`.
pub fn to_file(file: &Path) -> std::io::Result<()> {
    let f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(file)?;
    let _ = tracing_subscriber::fmt()
        .json()
        .with_max_level(level())
        .with_target(false)
        .with_current_span(false)
        .with_writer(std::sync::Mutex::new(f))
        .try_init();
    Ok(())
}

/// Human-readable lines on stderr.
pub fn to_stderr() {
    let _ = tracing_subscriber::fmt()
        .with_max_level(level())
        .with_target(false)
        .with_ansi(false)
        .with_writer(std::io::stderr)
        .try_init();
}
