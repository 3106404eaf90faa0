//! Signal names as Nomad and consul-template spell them ("SIGTERM"), plus the forms operators
//! type: "TERM", "sigterm", "15". `SIGNULL` (or "0") is the existence check: no signal.

use nix::sys::signal::Signal;

/// The names this module accepts (with or without `SIG`, any case), for error messages.
pub fn valid_names() -> Vec<&'static str> {
    let mut names: Vec<&'static str> = Signal::iterator().map(Signal::as_str).collect();
    names.push("SIGNULL");
    names
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error(
    "unknown signal {given:?}; use a signal name ({}; the SIG prefix and case are optional) or its number",
    valid_names().join(", ")
)]
pub struct UnknownSignal {
    pub given: String,
}

/// Parses a signal name or number. `SIGNULL`/`NULL`/`0` (existence check) gives `None`.
pub fn parse(name: &str) -> Result<Option<Signal>, UnknownSignal> {
    let unknown = || UnknownSignal {
        given: name.to_owned(),
    };
    let n = name.trim();
    if n.is_empty() {
        return Err(unknown());
    }
    if let Ok(num) = n.parse::<i32>() {
        if num == 0 {
            return Ok(None);
        }
        return Signal::try_from(num).map(Some).map_err(|_| unknown());
    }
    let upper = n.to_ascii_uppercase();
    let full = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    if full == "SIGNULL" {
        return Ok(None);
    }
    full.parse::<Signal>().map(Some).map_err(|_| unknown())
}

/// The canonical name of a signal number ("SIGTERM"; "signal 40" for ones without a name,
/// e.g. real-time signals).
pub fn name(num: i32) -> String {
    if num == 0 {
        return "SIGNULL".into();
    }
    Signal::try_from(num)
        .map(|s| s.as_str().to_owned())
        .unwrap_or_else(|_| format!("signal {num}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_in_every_spelling() {
        for s in ["SIGTERM", "TERM", "sigterm", "term", " SigTerm ", "15"] {
            assert_eq!(parse(s).unwrap(), Some(Signal::SIGTERM), "{s}");
        }
        assert_eq!(parse("SIGUSR1").unwrap(), Some(Signal::SIGUSR1));
        assert_eq!(parse("hup").unwrap(), Some(Signal::SIGHUP));
        assert_eq!(parse("9").unwrap(), Some(Signal::SIGKILL));
        assert_eq!(parse("SIGNULL").unwrap(), None);
        assert_eq!(parse("null").unwrap(), None);
        assert_eq!(parse("0").unwrap(), None);
    }

    #[test]
    fn numbers_and_names_round_trip() {
        for sig in Signal::iterator() {
            let n = sig as i32;
            assert_eq!(parse(&name(n)).unwrap(), Some(sig));
            assert_eq!(parse(&n.to_string()).unwrap(), Some(sig));
        }
        assert_eq!(name(15), "SIGTERM");
        assert_eq!(name(0), "SIGNULL");
        assert_eq!(name(40), "signal 40");
        assert_eq!(parse("SIGKILL").unwrap(), Some(Signal::SIGKILL));
    }

    #[test]
    fn unknown_names_list_the_valid_ones() {
        let e = parse("SIGFOO").unwrap_err().to_string();
        assert!(e.contains("\"SIGFOO\""), "{e}");
        for valid in [
            "SIGTERM", "SIGINT", "SIGHUP", "SIGUSR1", "SIGKILL", "SIGNULL",
        ] {
            assert!(e.contains(valid), "{valid} missing from: {e}");
        }
        assert!(parse("999").is_err());
        assert!(parse("-1").is_err());
        assert!(parse("").is_err());
    }
}
