//! The one shape of "this value is wrong": which field (as the user wrote it, e.g.
//! `config.sandbox.devices[0]`) and what was wrong with it and what to do. The plugin's config
//! errors, the task spec's and the sandbox spec's checks, and the value parsers they share all
//! report it, so every message reads `<field>: <message>`. A parser of one value, which does
//! not know where the value came from, returns it with an empty field ([`FieldError::value`])
//! and its caller places it with [`FieldError::within`].

use std::fmt;

/// A bad value and where it was.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct FieldError {
    /// The field's path, e.g. `config.sandbox.devices[0]` or `sandbox.hosts.hostname`.
    pub field: String,
    /// What was wrong and, where there is one, the fix.
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        FieldError {
            field: field.into(),
            message: message.into(),
        }
    }

    /// An error about a value whose field the caller knows (and adds with [`Self::within`]).
    pub fn value(message: impl Into<String>) -> Self {
        FieldError::new("", message)
    }

    /// The same error as the parent reports it: `prefix.field` (or `prefix` for an error about
    /// the value as a whole, whose field is empty).
    pub fn within(self, prefix: &str) -> Self {
        let field = match self.field.as_str() {
            "" => prefix.to_owned(),
            f if f.starts_with('[') => format!("{prefix}{f}"),
            f => format!("{prefix}.{f}"),
        };
        FieldError { field, ..self }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.field, self.message)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::FieldError;

    #[test]
    fn reads_field_then_message_and_nests_under_a_parent() {
        let e = FieldError::new("hostname", "must not be empty");
        assert_eq!(e.to_string(), "hostname: must not be empty");
        let e = e.within("sandbox.hosts");
        assert_eq!(e.field, "sandbox.hosts.hostname");
        assert_eq!(e.to_string(), "sandbox.hosts.hostname: must not be empty");
        assert_eq!(
            FieldError::new("[2]", "bad").within("devices").field,
            "devices[2]"
        );
        let value = FieldError::value("bad");
        assert_eq!(value.to_string(), "bad");
        assert_eq!(value.within("x").to_string(), "x: bad");
    }
}
