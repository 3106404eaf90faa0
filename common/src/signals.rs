//! Signal names as Nomad and consul-template spell them ("SIGTERM"), plus "TERM", "15".

use nix::sys::signal::Signal;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("unknown signal {0:?}; use a name like SIGTERM, SIGINT, SIGHUP, SIGUSR1, SIGUSR2, SIGQUIT or SIGKILL")]
pub struct UnknownSignal(pub String);

/// Parses a signal name or number. `SIGNULL`/`0` (existence check) gives None.
pub fn parse(name: &str) -> Result<Option<Signal>, UnknownSignal> {
    let n = name.trim();
    if n.eq_ignore_ascii_case("SIGNULL") || n == "0" {
        return Ok(None);
    }
    if let Ok(num) = n.parse::<i32>() {
        return Signal::try_from(num)
            .map(Some)
            .map_err(|_| UnknownSignal(name.into()));
    }
    let upper = n.to_ascii_uppercase();
    let full = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    full.parse::<Signal>()
        .map(Some)
        .map_err(|_| UnknownSignal(name.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_numbers_and_errors() {
        assert_eq!(parse("SIGTERM").unwrap(), Some(Signal::SIGTERM));
        assert_eq!(parse("term").unwrap(), Some(Signal::SIGTERM));
        assert_eq!(parse("SIGUSR1").unwrap(), Some(Signal::SIGUSR1));
        assert_eq!(parse("9").unwrap(), Some(Signal::SIGKILL));
        assert_eq!(parse("SIGNULL").unwrap(), None);
        let e = parse("SIGFOO").unwrap_err().to_string();
        assert!(e.contains("SIGFOO") && e.contains("SIGTERM"), "{e}");
        assert!(parse("999").is_err());
    }
}
