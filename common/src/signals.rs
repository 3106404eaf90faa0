//! Signal names as Nomad and consul-template spell them ("SIGTERM"), plus the forms operators
//! type: "TERM", "sigterm", "15". `SIGNULL` (or "0") is the existence check: no signal.
//!
//! Accepted: every name in consul-template's table (the one Nomad's `kill_signal`,
//! `change_signal` and its own drivers use: SIGABRT … SIGXFSZ, SIGIOT, SIGNULL), the other
//! Linux signals (SIGCHLD, SIGPWR, SIGSTKFLT, SIGURG, SIGVTALRM), the Linux aliases SIGPOLL
//! (= SIGIO) and SIGCLD (= SIGCHLD), and the real-time signals as `kill -l` and systemd
//! name them: SIGRTMIN, SIGRTMIN+n, SIGRTMAX-n, SIGRTMAX, or their numbers 34–64. Real-time
//! numbers follow glibc, whose SIGRTMIN is 34: 32 and 33 are taken by its threading library,
//! so sending them to a glibc process (as Elide is) would break it, and they are refused.

/// The first real-time signal a glibc process can use (the kernel's is 32).
pub const SIGRTMIN: i32 = 34;
/// The last real-time signal on Linux.
pub const SIGRTMAX: i32 = 64;

/// Standard Linux signals by name: consul-template's table first, then the rest.
const STANDARD: &[(&str, i32)] = &[
    ("SIGABRT", libc::SIGABRT),
    ("SIGALRM", libc::SIGALRM),
    ("SIGBUS", libc::SIGBUS),
    ("SIGCONT", libc::SIGCONT),
    ("SIGFPE", libc::SIGFPE),
    ("SIGHUP", libc::SIGHUP),
    ("SIGILL", libc::SIGILL),
    ("SIGINT", libc::SIGINT),
    ("SIGIO", libc::SIGIO),
    ("SIGKILL", libc::SIGKILL),
    ("SIGPIPE", libc::SIGPIPE),
    ("SIGPROF", libc::SIGPROF),
    ("SIGQUIT", libc::SIGQUIT),
    ("SIGSEGV", libc::SIGSEGV),
    ("SIGSTOP", libc::SIGSTOP),
    ("SIGSYS", libc::SIGSYS),
    ("SIGTERM", libc::SIGTERM),
    ("SIGTRAP", libc::SIGTRAP),
    ("SIGTSTP", libc::SIGTSTP),
    ("SIGTTIN", libc::SIGTTIN),
    ("SIGTTOU", libc::SIGTTOU),
    ("SIGUSR1", libc::SIGUSR1),
    ("SIGUSR2", libc::SIGUSR2),
    ("SIGWINCH", libc::SIGWINCH),
    ("SIGXCPU", libc::SIGXCPU),
    ("SIGXFSZ", libc::SIGXFSZ),
    // Linux signals consul-template leaves out.
    ("SIGCHLD", libc::SIGCHLD),
    ("SIGPWR", libc::SIGPWR),
    ("SIGSTKFLT", libc::SIGSTKFLT),
    ("SIGURG", libc::SIGURG),
    ("SIGVTALRM", libc::SIGVTALRM),
];

/// Second names of the same numbers (never used when printing a number's name).
const ALIASES: &[(&str, i32)] = &[
    ("SIGIOT", libc::SIGABRT),
    ("SIGPOLL", libc::SIGIO),
    ("SIGCLD", libc::SIGCHLD),
];

/// A signal to deliver: standard, alias or real-time, always a valid Linux signal number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TaskSignal(i32);

impl TaskSignal {
    pub const SIGTERM: TaskSignal = TaskSignal(libc::SIGTERM);
    pub const SIGINT: TaskSignal = TaskSignal(libc::SIGINT);
    pub const SIGKILL: TaskSignal = TaskSignal(libc::SIGKILL);

    /// The signal with this number, if it is one this module accepts.
    pub fn from_number(num: i32) -> Option<TaskSignal> {
        let standard = STANDARD.iter().any(|(_, n)| *n == num);
        (standard || (SIGRTMIN..=SIGRTMAX).contains(&num)).then_some(TaskSignal(num))
    }

    pub fn number(self) -> i32 {
        self.0
    }

    /// The canonical name ("SIGTERM", "SIGRTMIN+6").
    pub fn name(self) -> String {
        name(self.0)
    }

    /// Sends the signal to one process.
    pub fn send(self, pid: i32) -> nix::Result<()> {
        send(Some(self), pid)
    }
}

impl std::fmt::Display for TaskSignal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name())
    }
}

/// Sends `signal` to `pid`; `None` only checks that the process exists (`kill(pid, 0)`).
pub fn send(signal: Option<TaskSignal>, pid: i32) -> nix::Result<()> {
    let num = signal.map(TaskSignal::number).unwrap_or(0);
    // SAFETY: kill has no memory-safety preconditions; the number is a valid signal or 0.
    nix::errno::Errno::result(unsafe { libc::kill(pid, num) }).map(drop)
}

/// The names this module accepts (with or without `SIG`, any case), for error messages.
pub fn valid_names() -> Vec<&'static str> {
    let mut names: Vec<&'static str> = STANDARD
        .iter()
        .chain(ALIASES)
        .map(|(name, _)| *name)
        .collect();
    names.sort_unstable();
    names.push("SIGNULL");
    names.extend(["SIGRTMIN", "SIGRTMIN+n", "SIGRTMAX-n", "SIGRTMAX"]);
    names
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error(
    "unknown signal {given:?}{why}; use a signal name ({}; the SIG prefix and case are optional) or its number (1-31, 34-64)",
    valid_names().join(", ")
)]
pub struct UnknownSignal {
    pub given: String,
    /// More about why, when there is more to say (starts with "; ", or is empty).
    why: String,
}

/// Parses a signal name or number. `SIGNULL`/`NULL`/`0` (existence check) gives `None`.
pub fn parse(name: &str) -> Result<Option<TaskSignal>, UnknownSignal> {
    let unknown = |why: &str| UnknownSignal {
        given: name.to_owned(),
        why: why.to_owned(),
    };
    let n = name.trim();
    if n.is_empty() {
        return Err(unknown(""));
    }
    let reserved = "; signals 32 and 33 are reserved by glibc's threading (real-time signals start at SIGRTMIN = 34)";
    if n.bytes().all(|b| b.is_ascii_digit()) {
        let num: i32 = n.parse().map_err(|_| unknown(""))?;
        if num == 0 {
            return Ok(None);
        }
        if num == 32 || num == 33 {
            return Err(unknown(reserved));
        }
        return TaskSignal::from_number(num)
            .map(Some)
            .ok_or_else(|| unknown(""));
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
    if let Some((_, num)) = STANDARD.iter().chain(ALIASES).find(|(s, _)| *s == full) {
        return Ok(Some(TaskSignal(*num)));
    }
    realtime(&full)
        .map(|num| Some(TaskSignal(num)))
        .ok_or_else(|| unknown(""))
}

/// `SIGRTMIN`, `SIGRTMIN+n`, `SIGRTMAX-n`, `SIGRTMAX` → 34..=64.
fn realtime(full: &str) -> Option<i32> {
    let offset = |rest: &str, sign: char| -> Option<i32> {
        if rest.is_empty() {
            return Some(0);
        }
        let digits = rest.strip_prefix(sign)?;
        if digits.is_empty() || digits.len() > 2 || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        digits.parse().ok()
    };
    let num = if let Some(rest) = full.strip_prefix("SIGRTMIN") {
        SIGRTMIN + offset(rest, '+')?
    } else if let Some(rest) = full.strip_prefix("SIGRTMAX") {
        SIGRTMAX - offset(rest, '-')?
    } else {
        return None;
    };
    (SIGRTMIN..=SIGRTMAX).contains(&num).then_some(num)
}

/// The canonical name of a signal number: "SIGTERM", real-time ones as `kill -l` prints them
/// ("SIGRTMIN+6", "SIGRTMAX-2"), "signal 33" for numbers without a name.
pub fn name(num: i32) -> String {
    if num == 0 {
        return "SIGNULL".into();
    }
    if let Some((n, _)) = STANDARD.iter().find(|(_, n)| *n == num) {
        return (*n).to_owned();
    }
    match num {
        SIGRTMIN => "SIGRTMIN".into(),
        SIGRTMAX => "SIGRTMAX".into(),
        n if (SIGRTMIN..SIGRTMIN + 16).contains(&n) => format!("SIGRTMIN+{}", n - SIGRTMIN),
        n if (SIGRTMIN + 16..SIGRTMAX).contains(&n) => format!("SIGRTMAX-{}", SIGRTMAX - n),
        n => format!("signal {n}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The number of a signal name (`SIGNULL` → 0).
    fn number(name: &str) -> Result<i32, UnknownSignal> {
        Ok(parse(name)?.map(TaskSignal::number).unwrap_or(0))
    }

    fn num(s: &str) -> i32 {
        parse(s).unwrap().unwrap().number()
    }

    #[test]
    fn names_in_every_spelling() {
        for s in ["SIGTERM", "TERM", "sigterm", "term", " SigTerm ", "15"] {
            assert_eq!(num(s), libc::SIGTERM, "{s}");
        }
        assert_eq!(num("SIGUSR1"), libc::SIGUSR1);
        assert_eq!(num("hup"), libc::SIGHUP);
        assert_eq!(num("9"), libc::SIGKILL);
        assert_eq!(parse("SIGNULL").unwrap(), None);
        assert_eq!(parse("null").unwrap(), None);
        assert_eq!(parse("0").unwrap(), None);
    }

    /// consul-template v0.42.1's `signals_unix.go` table, which Nomad's drivers and the
    /// job's kill_signal/change_signal constraints use: every name must be accepted as is.
    #[test]
    fn every_consul_template_name_is_accepted() {
        let table = [
            ("SIGABRT", 6),
            ("SIGALRM", 14),
            ("SIGBUS", 7),
            ("SIGCONT", 18),
            ("SIGFPE", 8),
            ("SIGHUP", 1),
            ("SIGILL", 4),
            ("SIGINT", 2),
            ("SIGIO", 29),
            ("SIGIOT", 6),
            ("SIGKILL", 9),
            ("SIGPIPE", 13),
            ("SIGPROF", 27),
            ("SIGQUIT", 3),
            ("SIGSEGV", 11),
            ("SIGSTOP", 19),
            ("SIGSYS", 31),
            ("SIGTERM", 15),
            ("SIGTRAP", 5),
            ("SIGTSTP", 20),
            ("SIGTTIN", 21),
            ("SIGTTOU", 22),
            ("SIGUSR1", 10),
            ("SIGUSR2", 12),
            ("SIGWINCH", 28),
            ("SIGXCPU", 24),
            ("SIGXFSZ", 25),
        ];
        for (name, n) in table {
            assert_eq!(num(name), n, "{name}");
        }
        assert_eq!(parse("SIGNULL").unwrap(), None);
    }

    #[test]
    fn aliases_and_real_time_signals() {
        assert_eq!(num("SIGIOT"), libc::SIGABRT);
        assert_eq!(num("SIGPOLL"), libc::SIGIO);
        assert_eq!(num("SIGCLD"), libc::SIGCHLD);
        assert_eq!(num("cld"), libc::SIGCHLD);
        assert_eq!(num("SIGRTMIN"), 34);
        assert_eq!(num("SIGRTMIN+0"), 34);
        assert_eq!(num("SIGRTMIN+3"), 37);
        assert_eq!(num("rtmin+30"), 64);
        assert_eq!(num("SIGRTMAX"), 64);
        assert_eq!(num("SIGRTMAX-1"), 63);
        assert_eq!(num("SIGRTMAX-30"), 34);
        for n in 34..=64 {
            assert_eq!(num(&n.to_string()), n);
            assert_eq!(num(&name(n)), n, "{}", name(n));
        }
        assert_eq!(name(34), "SIGRTMIN");
        assert_eq!(name(40), "SIGRTMIN+6");
        assert_eq!(name(49), "SIGRTMIN+15");
        assert_eq!(name(50), "SIGRTMAX-14");
        assert_eq!(name(64), "SIGRTMAX");
        for bad in [
            "SIGRTMIN+31",
            "SIGRTMAX-31",
            "SIGRTMAX+1",
            "SIGRTMIN-1",
            "SIGRTMIN+",
            "SIGRTMIN++1",
            "SIGRTMIN+ 1",
            "SIGRTMIN+001",
            "65",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
        for reserved in ["32", "33"] {
            let e = parse(reserved).unwrap_err().to_string();
            assert!(e.contains("reserved by glibc"), "{e}");
        }
    }

    #[test]
    fn numbers_and_names_round_trip() {
        for n in (1..=31).chain(34..=64) {
            let sig = TaskSignal::from_number(n).unwrap();
            assert_eq!(number(&sig.name()).unwrap(), n);
            assert_eq!(num(&n.to_string()), n);
        }
        assert_eq!(name(15), "SIGTERM");
        assert_eq!(name(0), "SIGNULL");
        assert_eq!(name(33), "signal 33");
        assert_eq!(number("SIGKILL").unwrap(), 9);
        assert_eq!(TaskSignal::SIGTERM.to_string(), "SIGTERM");
    }

    #[test]
    fn unknown_names_list_the_valid_ones() {
        let e = parse("SIGFOO").unwrap_err().to_string();
        assert!(e.contains("\"SIGFOO\""), "{e}");
        for valid in [
            "SIGTERM",
            "SIGINT",
            "SIGHUP",
            "SIGUSR1",
            "SIGKILL",
            "SIGNULL",
            "SIGIOT",
            "SIGRTMIN+n",
        ] {
            assert!(e.contains(valid), "{valid} missing from: {e}");
        }
        assert!(parse("999").is_err());
        assert!(parse("99999999999999999999").is_err());
        assert!(parse("-1").is_err());
        assert!(parse("").is_err());
    }

    #[test]
    fn real_time_signals_are_delivered() {
        use std::os::unix::process::ExitStatusExt;
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let sig = parse("SIGRTMIN+3").unwrap().unwrap();
        sig.send(child.id() as i32).unwrap();
        // sleep does not handle SIGRTMIN+3: the default action terminates it.
        assert_eq!(child.wait().unwrap().signal(), Some(37));
        assert!(send(None, child.id() as i32).is_err(), "reaped: gone");
    }
}
