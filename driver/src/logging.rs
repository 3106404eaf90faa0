//! Logging as hclog JSON lines on stderr.
//!
//! go-plugin reads the plugin's stderr line by line and re-logs each JSON line into the agent's
//! logger under the plugin's name. `@level`, `@message` and `@timestamp` must be JSON strings (a
//! number there panics the agent) and the timestamp must have exactly six fractional digits, or
//! the line is logged raw at DEBUG.

use serde_json::{Map, Value};
use std::fmt;
use std::io::Write;
use std::sync::Mutex;
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::prelude::*;
use tracing_subscriber::registry::Registry;

/// Formats one event as an hclog JSON line (without the trailing newline).
pub fn format_line(
    level: &Level,
    module: &str,
    message: &str,
    fields: Map<String, Value>,
    now: time::OffsetDateTime,
) -> String {
    let mut obj = Map::new();
    obj.insert("@level".into(), Value::String(hclog_level(level).into()));
    obj.insert("@message".into(), Value::String(message.to_owned()));
    obj.insert("@module".into(), Value::String(module.to_owned()));
    obj.insert("@timestamp".into(), Value::String(timestamp(now)));
    for (k, v) in fields {
        // Never let a field overwrite the three keys go-plugin type-asserts.
        if !k.starts_with('@') {
            obj.insert(k, v);
        }
    }
    Value::Object(obj).to_string()
}

/// `2006-01-02T15:04:05.000000Z07:00` in Go's layout: exactly six fractional digits.
pub fn timestamp(t: time::OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.microsecond()
    )
}

fn hclog_level(level: &Level) -> &'static str {
    match *level {
        Level::TRACE => "trace",
        Level::DEBUG => "debug",
        Level::INFO => "info",
        Level::WARN => "warn",
        Level::ERROR => "error",
    }
}

#[derive(Default)]
struct FieldVisitor {
    message: Option<String>,
    fields: Map<String, Value>,
}

impl Visit for FieldVisitor {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.put(field, Value::String(format!("{value:?}")));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, Value::String(value.to_owned()));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field, Value::from(value));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field, Value::from(value));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field, Value::from(value));
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.put(field, Value::from(value));
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.put(field, Value::String(value.to_string()));
    }
}

impl FieldVisitor {
    fn put(&mut self, field: &Field, value: Value) {
        if field.name() == "message" {
            self.message = Some(match value {
                Value::String(s) => s,
                other => other.to_string(),
            });
        } else {
            self.fields.insert(field.name().to_owned(), value);
        }
    }
}

/// A `tracing` layer writing hclog JSON lines to a writer (stderr in the plugin).
pub struct HclogLayer<W: Write + Send + 'static> {
    out: Mutex<W>,
    max_level: Level,
}

impl<W: Write + Send + 'static> HclogLayer<W> {
    pub fn new(out: W, max_level: Level) -> Self {
        Self {
            out: Mutex::new(out),
            max_level,
        }
    }
}

impl<S: Subscriber, W: Write + Send + 'static> Layer<S> for HclogLayer<W> {
    fn enabled(&self, metadata: &tracing::Metadata<'_>, _ctx: Context<'_, S>) -> bool {
        // Our own crates at the configured level; libraries (h2, hyper, tonic) only warnings,
        // their debug chatter would drown the agent log.
        let ours = metadata.module_path().is_some_and(|m| {
            m.starts_with("driver")
                || m.starts_with("common")
                || m.starts_with("nomad_driver_elide")
        });
        let max = if ours { self.max_level } else { Level::WARN };
        *metadata.level() <= max
    }

    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let mut visitor = FieldVisitor::default();
        event.record(&mut visitor);
        let meta = event.metadata();
        let module = meta
            .module_path()
            .map(|m| m.split("::").next().unwrap_or(m))
            .unwrap_or("nomad-driver-elide");
        let line = format_line(
            meta.level(),
            module,
            visitor.message.as_deref().unwrap_or(""),
            visitor.fields,
            time::OffsetDateTime::now_utc(),
        );
        let mut out = common::sync::lock(&self.out);
        // One write per line so concurrent lines never interleave.
        let _ = out.write_all(format!("{line}\n").as_bytes());
        let _ = out.flush();
    }
}

/// Installs the hclog layer on stderr. The level comes from `NOMAD_DRIVER_ELIDE_LOG`
/// (trace|debug|info|warn|error), default debug: the agent drops what its own level hides.
pub fn init() {
    let level = std::env::var("NOMAD_DRIVER_ELIDE_LOG")
        .ok()
        .and_then(|v| v.parse::<Level>().ok())
        .unwrap_or(Level::DEBUG);
    let layer = HclogLayer::new(std::io::stderr(), level);
    let _ = Registry::default().with(layer).try_init();
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

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

    #[test]
    fn timestamp_has_exactly_six_fraction_digits_and_z() {
        let t = time::macros::datetime!(2026-01-02 03:04:05.000007 UTC);
        assert_eq!(timestamp(t), "2026-01-02T03:04:05.000007Z");
        let t = time::macros::datetime!(2026-01-02 03:04:05 +02:00);
        assert_eq!(timestamp(t), "2026-01-02T01:04:05.000000Z");
    }

    #[test]
    fn lines_are_json_with_string_typed_reserved_keys() {
        let buf = Buf::default();
        let sub = Registry::default().with(HclogLayer::new(buf.clone(), Level::DEBUG));
        tracing::subscriber::with_default(sub, || {
            tracing::info!(task_id = "a/b/c", count = 3u64, "task started");
            tracing::warn!("careful");
            tracing::trace!("hidden below the level");
        });
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        let v: Value = serde_json::from_str(lines[0]).unwrap();
        assert_eq!(v["@level"], "info");
        assert_eq!(v["@message"], "task started");
        assert_eq!(v["task_id"], "a/b/c");
        assert_eq!(v["count"], 3);
        let ts = v["@timestamp"].as_str().unwrap();
        let frac = ts.split('.').nth(1).unwrap();
        assert_eq!(frac.len(), 7, "six digits and Z: {ts}");
        assert!(frac.ends_with('Z'));
        let v: Value = serde_json::from_str(lines[1]).unwrap();
        assert_eq!(v["@level"], "warn");
    }

    #[test]
    fn fields_cannot_shadow_reserved_keys() {
        let mut fields = Map::new();
        fields.insert("@level".into(), Value::from(5));
        let line = format_line(
            &Level::ERROR,
            "m",
            "x",
            fields,
            time::OffsetDateTime::UNIX_EPOCH,
        );
        let v: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["@level"], "error");
    }
}
