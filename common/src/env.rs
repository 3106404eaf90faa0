//! Rules for the runtime's environment and command line, shared by the task config check (the
//! job's `config.env`) and the task spec check (everything the shim will pass to `execve`).
//!
//! A variable name is `[A-Za-z_][A-Za-z0-9_.]*`: the portable POSIX name plus the dots Nomad
//! itself allows in `env {}` keys. Anything else is refused with the name in the message:
//! a key holding `=` would be split by the runtime's libc at the first `=` (so a key
//! `LD_PRELOAD=/tmp/x.so\nFOO` sets `LD_PRELOAD`, and `A=B` corrupts `A`), NUL truncates, and
//! control characters have no business in a name. Values may hold anything but NUL.
//!
//! Sizes follow the kernel's `execve` limits: one argument or `NAME=value` string may be at
//! most `MAX_ARG_STRLEN` (128 KiB), and argv plus envp together at most the exec limit
//! (`sysconf(_SC_ARG_MAX)`, a quarter of the stack limit, 2 MiB by default), each string
//! counting its NUL and its pointer.

use std::collections::BTreeMap;

/// The kernel's limit for one argv or envp string, NUL included (32 pages of 4 KiB).
pub const MAX_ARG_STRLEN: usize = 32 * 4096;
/// The exec limit used when `sysconf(_SC_ARG_MAX)` says nothing (8 MiB stack / 4).
pub const DEFAULT_ARG_MAX: usize = 2 * 1024 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvError {
    #[error("{key:?} is not a valid environment variable name: use letters, digits, '_' and '.', not starting with a digit (never '=', NUL, blanks or control characters); fix the job's env, or keep a variable of the agent's own environment out with the client's env.denylist")]
    Name { key: String },
    #[error("the value of {key} contains a NUL byte; remove it")]
    NulValue { key: String },
    #[error("{what} contains a NUL byte; remove it")]
    NulArg { what: String },
    #[error("{what} is {len} bytes, over the kernel's {MAX_ARG_STRLEN}-byte limit for one argument or variable; pass large data in a file (e.g. a template in local/)")]
    TooLong { what: String, len: usize },
    #[error("the command line ({argv_bytes} bytes) and environment ({env_bytes} bytes) together exceed the {limit}-byte exec limit of this node; shorten env values or args, or pass large data in a file")]
    TooBig {
        argv_bytes: usize,
        env_bytes: usize,
        limit: usize,
    },
}

/// Whether `key` is a variable name this driver passes on.
pub fn is_valid_name(key: &str) -> bool {
    let mut bytes = key.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.')
}

/// Checks one variable: a valid name, a value without NUL, and a `NAME=value` string within
/// `MAX_ARG_STRLEN`.
pub fn check_var(key: &str, value: &str) -> Result<(), EnvError> {
    if !is_valid_name(key) {
        return Err(EnvError::Name {
            // Names are shown whole only when short: the message must stay readable.
            key: key.chars().take(80).collect(),
        });
    }
    if value.contains('\0') {
        return Err(EnvError::NulValue { key: key.into() });
    }
    let len = key.len() + 1 + value.len() + 1;
    if len > MAX_ARG_STRLEN {
        return Err(EnvError::TooLong {
            what: format!("the variable {key}"),
            len,
        });
    }
    Ok(())
}

/// Checks one argument: no NUL, within `MAX_ARG_STRLEN`.
pub fn check_arg(what: &str, arg: &str) -> Result<(), EnvError> {
    if arg.contains('\0') {
        return Err(EnvError::NulArg { what: what.into() });
    }
    if arg.len() + 1 > MAX_ARG_STRLEN {
        return Err(EnvError::TooLong {
            what: what.into(),
            len: arg.len() + 1,
        });
    }
    Ok(())
}

/// This node's exec limit for argv + envp (`sysconf(_SC_ARG_MAX)`).
pub fn arg_max() -> usize {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_ARG_MAX) };
    usize::try_from(n)
        .ok()
        .filter(|n| *n > 0)
        .unwrap_or(DEFAULT_ARG_MAX)
}

/// What `execve` charges for strings of these lengths: each string, its NUL and its pointer.
pub fn exec_bytes(strings: impl Iterator<Item = usize>) -> usize {
    strings.fold(0usize, |sum, len| {
        sum.saturating_add(len.saturating_add(1 + std::mem::size_of::<usize>()))
    })
}

/// Checks argv and the environment for everything `execve` would refuse: names, NULs, one
/// string over `MAX_ARG_STRLEN`, or all of it over `limit` bytes (see [`arg_max`]).
pub fn check_exec(
    argv: &[String],
    env: &BTreeMap<String, String>,
    limit: usize,
) -> Result<(), EnvError> {
    for (i, a) in argv.iter().enumerate() {
        check_arg(&format!("argv[{i}]"), a)?;
    }
    for (k, v) in env {
        check_var(k, v)?;
    }
    let argv_bytes = exec_bytes(argv.iter().map(String::len));
    let env_bytes = exec_bytes(env.iter().map(|(k, v)| k.len() + 1 + v.len()));
    if argv_bytes.saturating_add(env_bytes) > limit {
        return Err(EnvError::TooBig {
            argv_bytes,
            env_bytes,
            limit,
        });
    }
    Ok(())
}

/// Dynamic-linker variables (`LD_PRELOAD`, `LD_LIBRARY_PATH`, …): they change what code runs
/// in the runtime, so they only reach it when the job sets them in the driver config's `env`
/// (Nomad's exec2 drops them after a CVE; the agent's own environment is never a reason).
pub fn is_loader_var(key: &str) -> bool {
    key.starts_with("LD_")
}

/// `inherited` without its dynamic-linker variables, except those `explicit` sets.
pub fn without_loader_vars(
    inherited: &BTreeMap<String, String>,
    explicit: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    inherited
        .iter()
        .filter(|(k, _)| !is_loader_var(k) || explicit.contains_key(*k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn names() {
        for ok in ["A", "_", "a_b", "PATH", "NOMAD_META_x", "app.name", "X1"] {
            assert!(is_valid_name(ok), "{ok}");
        }
        for bad in [
            "",
            "1A",
            ".A",
            "A=B",
            "LD_PRELOAD=/tmp/x.so\nFOO",
            "A B",
            "A\0",
            "A\n",
            "BASH_FUNC_f%%",
            "é",
            "A-B",
        ] {
            assert!(!is_valid_name(bad), "{bad:?}");
            let e = check_var(bad, "v").unwrap_err().to_string();
            assert!(
                e.contains("is not a valid environment variable name"),
                "{e}"
            );
        }
    }

    #[test]
    fn values_and_sizes() {
        check_var("A", "x=y\nz").unwrap();
        assert_eq!(
            check_var("A", "a\0b").unwrap_err(),
            EnvError::NulValue { key: "A".into() }
        );
        let big = "x".repeat(3 * 1024 * 1024);
        let e = check_var("BIG", &big).unwrap_err().to_string();
        assert!(e.contains("the variable BIG is 3145733 bytes"), "{e}");
        // Exactly at the limit: "A=" + value + NUL == MAX_ARG_STRLEN.
        check_var("A", &"x".repeat(MAX_ARG_STRLEN - 3)).unwrap();
        assert!(check_var("A", &"x".repeat(MAX_ARG_STRLEN - 2)).is_err());
        let e = check_arg("argv[2]", "a\0").unwrap_err().to_string();
        assert_eq!(e, "argv[2] contains a NUL byte; remove it");
    }

    #[test]
    fn the_total_counts_strings_nuls_and_pointers() {
        let argv = vec!["/bin/elide".to_string(), "run".into()];
        let e = env(&[("A", "1")]);
        let need = (10 + 9) + (3 + 9) + (3 + 9);
        check_exec(&argv, &e, need).unwrap();
        let err = check_exec(&argv, &e, need - 1).unwrap_err();
        assert_eq!(
            err,
            EnvError::TooBig {
                argv_bytes: 31,
                env_bytes: 12,
                limit: need - 1
            }
        );
        // 5,000 ordinary args fit the default limit.
        let many: Vec<String> = (0..5000).map(|i| format!("arg-{i}")).collect();
        check_exec(&many, &e, DEFAULT_ARG_MAX).unwrap();
        assert!(arg_max() >= 128 * 1024);
    }

    #[test]
    fn loader_vars_pass_only_when_explicit() {
        let inherited = env(&[
            ("LD_PRELOAD", "/tmp/x.so"),
            ("LD_LIBRARY_PATH", "/opt/lib"),
            ("PATH", "/bin"),
            ("OLD_X", "1"),
        ]);
        let explicit = env(&[("LD_LIBRARY_PATH", "/app/lib")]);
        let out = without_loader_vars(&inherited, &explicit);
        assert_eq!(
            out,
            env(&[
                ("LD_LIBRARY_PATH", "/opt/lib"),
                ("OLD_X", "1"),
                ("PATH", "/bin")
            ])
        );
    }
}
