//! The shim's own log: JSON lines appended to `executor.log` in the task's state dir when
//! launched by the plugin (its stdio is /dev/null), plain text on stderr for `run` and the
//! operator commands.
//!
//! A small `tracing` subscriber of its own rather than `tracing-subscriber`'s formatting
//! machinery, to keep the shim small (docs/performance.md has the figures). The shim logs
//! events only; spans (its libraries' ones are at debug/trace) are not recorded. The JSON has
//! the shape `tracing-subscriber`'s `json()` wrote: `{"timestamp":…,"level":…,"fields":{…}}`.

use common::state::{StateDir, StateError};
use std::fmt::Write as _;
use std::io::Write;
use std::path::Path;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};
use tracing::field::{Field, Visit};
use tracing::level_filters::LevelFilter;
use tracing::{span, Event, Metadata, Subscriber};

/// The level comes from `ELIDE_EXECUTOR_LOG` (error, warn, info, debug, trace; default info).
fn level() -> LevelFilter {
    std::env::var("ELIDE_EXECUTOR_LOG")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(LevelFilter::INFO)
}

/// JSON lines appended to the shim's `executor.log` in its state dir `dir`, which is made
/// (or vetted) first. The dir sits in the alloc dir, so the log is opened through the dir's
/// fd only, never through a symlink or a hard link ([`StateDir`]).
pub fn to_state_dir(dir: &Path) -> Result<(), StateError> {
    let f = StateDir::open(dir, true)?.append_file(common::paths::LOG_FILE)?;
    install(Logger {
        max: level(),
        json: true,
        out: Mutex::new(Box::new(f)),
    });
    Ok(())
}

/// Human-readable lines on stderr.
pub fn to_stderr() {
    install(Logger {
        max: level(),
        json: false,
        out: Mutex::new(Box::new(std::io::stderr())),
    });
}

fn install(l: Logger) {
    let _ = tracing::subscriber::set_global_default(l);
}

struct Logger {
    max: LevelFilter,
    json: bool,
    out: Mutex<Box<dyn Write + Send>>,
}

impl Subscriber for Logger {
    fn enabled(&self, m: &Metadata<'_>) -> bool {
        *m.level() <= self.max
    }

    fn max_level_hint(&self) -> Option<LevelFilter> {
        Some(self.max)
    }

    fn new_span(&self, _: &span::Attributes<'_>) -> span::Id {
        span::Id::from_u64(1)
    }

    fn record(&self, _: &span::Id, _: &span::Record<'_>) {}

    fn record_follows_from(&self, _: &span::Id, _: &span::Id) {}

    fn event(&self, event: &Event<'_>) {
        let line = format_event(event, self.json, SystemTime::now());
        // One write per line: lines of concurrent writers never interleave in the file.
        let _ = common::sync::lock(&self.out).write_all(line.as_bytes());
    }

    fn enter(&self, _: &span::Id) {}

    fn exit(&self, _: &span::Id) {}
}

fn format_event(event: &Event<'_>, json: bool, now: SystemTime) -> String {
    let level = event.metadata().level().as_str();
    let mut f = Fields {
        json,
        message: String::new(),
        rest: String::new(),
    };
    event.record(&mut f);
    let ts = timestamp(now);
    if json {
        let mut fields = String::from("{\"message\":");
        fields.push_str(&json_string(&f.message));
        fields.push_str(&f.rest);
        fields.push('}');
        format!("{{\"timestamp\":\"{ts}\",\"level\":\"{level}\",\"fields\":{fields}}}\n")
    } else {
        format!("{ts} {level:>5} {}{}\n", f.message, f.rest)
    }
}

/// Collects an event's fields: `message`, then `,"k":v` (JSON) or ` k=v` (text).
struct Fields {
    json: bool,
    message: String,
    rest: String,
}

impl Fields {
    fn raw(&mut self, field: &Field, value: &str) {
        if self.json {
            let _ = write!(self.rest, ",{}:{value}", json_string(field.name()));
        } else {
            let _ = write!(self.rest, " {}={value}", field.name());
        }
    }

    fn text(&mut self, field: &Field, value: String) {
        if field.name() == "message" {
            self.message = value;
        } else if self.json {
            let v = json_string(&value);
            self.raw(field, &v);
        } else {
            self.raw(field, &value);
        }
    }
}

impl Visit for Fields {
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.raw(field, &value.to_string());
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.raw(field, &value.to_string());
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.raw(field, if value { "true" } else { "false" });
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.text(field, value.to_owned());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.text(field, format!("{value:?}"));
    }
}

fn json_string(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

/// RFC 3339 UTC with microseconds, e.g. `2026-11-30T19:58:20.186123Z`.
fn timestamp(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, day) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}.{:06}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_micros()
    )
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    #[test]
    fn dates_are_civil_utc() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
        let t = UNIX_EPOCH + Duration::new(1_709_210_096, 123_456_789);
        assert_eq!(timestamp(t), "2024-02-29T12:34:56.123456Z");
    }

    /// A writer the test can read back.
    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);

    impl Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn logged(json: bool, max: LevelFilter, f: impl FnOnce()) -> String {
        let buf = Buf::default();
        let l = Logger {
            max,
            json,
            out: Mutex::new(Box::new(buf.clone())),
        };
        tracing::subscriber::with_default(l, f);
        let out = buf.0.lock().unwrap().clone();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn json_lines_carry_level_message_and_typed_fields() {
        let out = logged(true, LevelFilter::INFO, || {
            let e = std::io::Error::other("bad \"thing\"\n");
            tracing::info!(pid = 42, ok = true, path = "/a b", "runtime \"started\"");
            tracing::warn!(error = %e, "start failed");
            tracing::debug!("not at info");
        });
        let lines: Vec<serde_json::Value> = out
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2, "{out}");
        assert_eq!(lines[0]["level"], "INFO");
        assert_eq!(lines[0]["fields"]["message"], "runtime \"started\"");
        assert_eq!(lines[0]["fields"]["pid"], 42);
        assert_eq!(lines[0]["fields"]["ok"], true);
        assert_eq!(lines[0]["fields"]["path"], "/a b");
        assert_eq!(lines[1]["level"], "WARN");
        assert_eq!(lines[1]["fields"]["error"], "bad \"thing\"\n");
        assert!(lines[0]["timestamp"].as_str().unwrap().ends_with('Z'));
    }

    #[test]
    fn text_lines_for_people() {
        let out = logged(false, LevelFilter::DEBUG, || {
            tracing::debug!(pid = 7, "stopping");
        });
        assert!(out.ends_with("DEBUG stopping pid=7\n"), "{out}");
    }
}
