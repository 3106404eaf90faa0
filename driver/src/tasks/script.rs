//! The job's `script`, checked before anything runs: opened beneath the task dir (or beneath
//! a directory the operator allows, for absolute paths) without following symlinks, vetted
//! on the open fd, and handed to Elide as a path that cannot be read as an option.
//!
//! The plugin runs as root and the task dir belongs to the task, which may have replaced its
//! own files with symlinks or hard links to host files between two starts: nothing here
//! looks a path up twice, and the only change ever made (clearing execute bits, see
//! [`check`]) goes through the fd of the file that was checked.

use common::beneath::{self, BeneathError};
use nix::sys::stat::{fchmod, fstat, Mode};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// The script as Elide gets it, and what was done to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Script {
    /// `./<path inside the task dir>`, or the absolute path in an allowed dir.
    pub arg: String,
    /// Set when the execute bits of the task's own file were cleared (a task event says so).
    pub cleared_exec_bits: bool,
    /// The `absolute_script_dirs` entry an absolute script was found beneath (None for the
    /// task dir): the sandbox shows it to the task, read-only.
    pub allowed_dir: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum ScriptError {
    #[error("script {script} is outside the task dir: it {source}; scripts are resolved inside the task dir (e.g. local/app.py)")]
    Escapes {
        script: String,
        #[source]
        source: BeneathError,
    },
    #[error("script {script} is an absolute path outside the task dir, and this node allows absolute scripts only under the plugin's absolute_script_dirs ({allowed}); put the script in the task dir (e.g. local/app.py with a template or artifact block) or ask the operator to list its directory")]
    AbsoluteNotAllowed { script: String, allowed: String },
    #[error("script {script} not found: it {source}; create it in the task dir with a template or artifact block, or fix `script`")]
    Missing {
        script: String,
        #[source]
        source: BeneathError,
    },
    #[error("script {script} {source}")]
    Unusable {
        script: String,
        #[source]
        source: BeneathError,
    },
    #[error(
        "script {script} ({path}) is a directory; name the file to run, e.g. {script}/main.py"
    )]
    Directory { script: String, path: PathBuf },
    #[error("script {script} ({path}) is not a regular file (it is a {kind}); point `script` at the app's source file")]
    NotRegular {
        script: String,
        path: PathBuf,
        kind: &'static str,
    },
    #[error("script {script} ({path}) is executable and {why}, so it is not the task's own file and the driver does not change it; Elide would run an executable file as a host program instead of interpreting it. Write the script with perms = \"644\"")]
    ForeignExecutable {
        script: String,
        path: PathBuf,
        why: &'static str,
    },
    #[error("script {script} is executable; Elide would run it as a host program instead of interpreting it, and the driver changes no file outside the task dir: clear its execute bits (chmod a-x {script})")]
    ExecutableOutside { script: String },
    #[error("script {script} is executable and its execute bits cannot be cleared ({errno}); Elide would run it as a host program. Use perms = \"644\"")]
    Chmod { script: String, errno: nix::Error },
    #[error("cannot inspect script {script}: {errno}")]
    Stat { script: String, errno: nix::Error },
}

/// Where the script was found: the dir it was resolved beneath, the path inside it, and
/// whether the driver may change it (only the task's own dir).
struct Located {
    base: PathBuf,
    rel: PathBuf,
    in_task_dir: bool,
}

fn locate(script: &str, task_dir: &Path, allowed_dirs: &[PathBuf]) -> Result<Located, ScriptError> {
    let given = Path::new(script);
    if !given.is_absolute() {
        return Ok(Located {
            base: task_dir.to_path_buf(),
            rel: given.to_path_buf(),
            in_task_dir: true,
        });
    }
    // ${NOMAD_TASK_DIR}/... is absolute but inside: the same rules as a relative path.
    if let Ok(rel) = given.strip_prefix(task_dir) {
        return Ok(Located {
            base: task_dir.to_path_buf(),
            rel: rel.to_path_buf(),
            in_task_dir: true,
        });
    }
    allowed_dirs
        .iter()
        .find_map(|d| {
            Some(Located {
                base: d.clone(),
                rel: given.strip_prefix(d).ok()?.to_path_buf(),
                in_task_dir: false,
            })
        })
        .ok_or_else(|| ScriptError::AbsoluteNotAllowed {
            script: script.to_owned(),
            allowed: if allowed_dirs.is_empty() {
                "none set".into()
            } else {
                allowed_dirs
                    .iter()
                    .map(|d| d.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            },
        })
}

/// Checks the job's script and returns what to give Elide. Elide runs an *executable* file as
/// a host program instead of interpreting it ("Runnable resolution" in
/// tests/elide-standin/README.md), so the execute bits of the task's own script are cleared
/// — never of a file with other hard links or setuid/setgid bits (not the task's to give),
/// and never outside the task dir (refused instead).
pub fn check(
    script: &str,
    task_dir: &Path,
    allowed_dirs: &[PathBuf],
) -> Result<Script, ScriptError> {
    let at = locate(script, task_dir, allowed_dirs)?;
    let name = || script.to_owned();
    let fd = beneath::open_beneath(&at.base, &at.rel).map_err(|source| match source {
        BeneathError::Escapes { .. } if at.in_task_dir => ScriptError::Escapes {
            script: name(),
            source,
        },
        BeneathError::Missing { .. } => ScriptError::Missing {
            script: name(),
            source,
        },
        source => ScriptError::Unusable {
            script: name(),
            source,
        },
    })?;
    let clean: PathBuf = beneath::plain_components(&at.rel, &at.base)
        .map(|parts| parts.iter().collect())
        .unwrap_or_else(|_| at.rel.clone());
    let path = at.base.join(&clean);
    let st = fstat(fd.as_raw_fd()).map_err(|errno| ScriptError::Stat {
        script: name(),
        errno,
    })?;
    match st.st_mode & libc::S_IFMT {
        libc::S_IFREG => {}
        libc::S_IFDIR => {
            return Err(ScriptError::Directory {
                script: name(),
                path,
            })
        }
        other => {
            return Err(ScriptError::NotRegular {
                script: name(),
                path,
                kind: match other {
                    libc::S_IFIFO => "FIFO",
                    libc::S_IFSOCK => "socket",
                    libc::S_IFCHR | libc::S_IFBLK => "device",
                    _ => "special file",
                },
            })
        }
    }
    let arg = if at.in_task_dir {
        format!("./{}", clean.display())
    } else {
        path.display().to_string()
    };
    let mode = st.st_mode & 0o7777;
    if mode & 0o111 == 0 {
        return Ok(Script {
            arg,
            cleared_exec_bits: false,
            allowed_dir: (!at.in_task_dir).then_some(at.base),
        });
    }
    if !at.in_task_dir {
        return Err(ScriptError::ExecutableOutside { script: name() });
    }
    let foreign = if mode & (libc::S_ISUID | libc::S_ISGID) != 0 {
        Some("setuid/setgid")
    } else if st.st_nlink > 1 {
        Some("has other hard links")
    } else {
        None
    };
    if let Some(why) = foreign {
        return Err(ScriptError::ForeignExecutable {
            script: name(),
            path,
            why,
        });
    }
    fchmod(fd.as_raw_fd(), Mode::from_bits_truncate(mode & !0o111)).map_err(|errno| {
        ScriptError::Chmod {
            script: name(),
            errno,
        }
    })?;
    Ok(Script {
        arg,
        cleared_exec_bits: true,
        allowed_dir: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{symlink, PermissionsExt};

    fn mode(p: &Path) -> u32 {
        std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
    }

    /// `<alloc>/t` with `local/`, and a setuid "host binary" next to the task dir.
    fn layout() -> (tempfile::TempDir, PathBuf, PathBuf) {
        let alloc = tempfile::tempdir().unwrap();
        let task_dir = alloc.path().join("t");
        std::fs::create_dir_all(task_dir.join("local")).unwrap();
        let host_bin = alloc.path().join("python3.11");
        std::fs::write(&host_bin, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&host_bin, std::fs::Permissions::from_mode(0o4755)).unwrap();
        (alloc, task_dir, host_bin)
    }

    fn refused(script: &str, task_dir: &Path) -> String {
        match check(script, task_dir, &[]) {
            Ok(s) => panic!("{script} was accepted as {}", s.arg),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn a_script_escaping_the_task_dir_is_refused_and_nothing_outside_is_chmod_ed() {
        let (_alloc, task_dir, host_bin) = layout();
        let e = refused("../python3.11", &task_dir);
        assert!(e.contains("outside the task dir"), "{e}");
        let e = refused("local/../../python3.11", &task_dir);
        assert!(e.contains("outside the task dir"), "{e}");
        assert_eq!(mode(&host_bin), 0o4755);
    }

    #[test]
    fn a_script_replaced_by_a_symlink_to_a_setuid_binary_is_refused_and_left_setuid() {
        let (alloc, task_dir, host_bin) = layout();
        symlink(&host_bin, task_dir.join("local/app.py")).unwrap();
        let e = refused("local/app.py", &task_dir);
        assert!(e.contains("symlink"), "{e}");
        assert_eq!(mode(&host_bin), 0o4755);
        // A symlinked directory on the way is no way out either.
        symlink(alloc.path(), task_dir.join("local/up")).unwrap();
        let e = refused("local/up/python3.11", &task_dir);
        assert!(e.contains("symlink"), "{e}");
        assert_eq!(mode(&host_bin), 0o4755);
        // Nor is a relative symlink climbing out.
        symlink("../../python3.11", task_dir.join("local/rel.py")).unwrap();
        let e = refused("local/rel.py", &task_dir);
        assert!(e.contains("symlink"), "{e}");
        assert_eq!(mode(&host_bin), 0o4755);
    }

    #[test]
    fn a_hard_link_or_setuid_file_in_the_task_dir_is_not_chmod_ed() {
        let (_alloc, task_dir, host_bin) = layout();
        std::fs::hard_link(&host_bin, task_dir.join("local/app.py")).unwrap();
        let e = refused("local/app.py", &task_dir);
        assert!(e.contains("hard link") || e.contains("setuid"), "{e}");
        assert_eq!(mode(&host_bin), 0o4755);
    }

    #[test]
    fn absolute_scripts_outside_the_task_dir_are_refused_by_default() {
        let (_alloc, task_dir, host_bin) = layout();
        let e = refused(host_bin.to_str().unwrap(), &task_dir);
        assert!(e.contains("absolute_script_dirs"), "{e}");
        assert_eq!(mode(&host_bin), 0o4755);
    }

    #[test]
    fn directories_and_fifos_are_not_scripts() {
        let (_alloc, task_dir, _) = layout();
        std::fs::create_dir(task_dir.join("local/app.py")).unwrap();
        let e = refused("local/app.py", &task_dir);
        assert!(e.contains("is a directory"), "{e}");
        nix::unistd::mkfifo(
            &task_dir.join("local/fifo.py"),
            nix::sys::stat::Mode::from_bits_truncate(0o644),
        )
        .unwrap();
        let e = refused("local/fifo.py", &task_dir);
        assert!(e.contains("not a regular file"), "{e}");
    }

    #[test]
    fn the_tasks_own_script_loses_its_execute_bits_and_goes_to_elide_as_dot_slash() {
        let (_alloc, task_dir, _) = layout();
        let app = task_dir.join("local/app.py");
        std::fs::write(&app, "print(1)\n").unwrap();
        std::fs::set_permissions(&app, std::fs::Permissions::from_mode(0o755)).unwrap();
        let s = check("local/app.py", &task_dir, &[]).unwrap();
        assert_eq!(s.arg, "./local/app.py");
        assert!(s.cleared_exec_bits);
        assert_eq!(mode(&app), 0o644);
        assert!(
            !check("local/app.py", &task_dir, &[])
                .unwrap()
                .cleared_exec_bits
        );
        // A name starting with "-" can never be taken for an option.
        std::fs::write(task_dir.join("-x.py"), "print(1)\n").unwrap();
        assert_eq!(check("-x.py", &task_dir, &[]).unwrap().arg, "./-x.py");
        // ${NOMAD_TASK_DIR}/app.py: absolute, but inside the task dir.
        let abs = task_dir.join("local/app.py");
        assert_eq!(
            check(abs.to_str().unwrap(), &task_dir, &[]).unwrap().arg,
            "./local/app.py"
        );
        assert_eq!(
            check("./local//app.py", &task_dir, &[]).unwrap().arg,
            "./local/app.py"
        );
    }

    #[test]
    fn absolute_scripts_in_an_allowed_dir_run_as_they_are_and_are_never_chmod_ed() {
        let (alloc, task_dir, _) = layout();
        let apps = alloc.path().join("apps");
        std::fs::create_dir_all(apps.join("v1")).unwrap();
        let app = apps.join("v1/app.py");
        std::fs::write(&app, "print(1)\n").unwrap();
        let allowed = [alloc.path().join("other"), apps.clone()];
        let s = check(app.to_str().unwrap(), &task_dir, &allowed).unwrap();
        assert_eq!(s.arg, app.display().to_string());
        // The entry it was found beneath (not the script's own dir: it may import siblings),
        // for the sandbox to show; none for the task's own scripts.
        assert_eq!(s.allowed_dir.as_deref(), Some(apps.as_path()));
        let own = task_dir.join("local/own.py");
        std::fs::write(&own, "print(1)\n").unwrap();
        for script in ["local/own.py", own.to_str().unwrap()] {
            assert_eq!(
                check(script, &task_dir, &allowed).unwrap().allowed_dir,
                None
            );
        }
        std::fs::set_permissions(&app, std::fs::Permissions::from_mode(0o755)).unwrap();
        let e = check(app.to_str().unwrap(), &task_dir, &allowed)
            .unwrap_err()
            .to_string();
        assert!(e.contains("chmod a-x"), "{e}");
        assert_eq!(mode(&app), 0o755);
        // Beneath the allowed dir means beneath: no "..", no symlinks.
        let up = format!("{}/v1/../../t/local/x.py", apps.display());
        assert!(check(&up, &task_dir, &allowed).is_err());
        symlink(&app, apps.join("link.py")).unwrap();
        let e = check(apps.join("link.py").to_str().unwrap(), &task_dir, &allowed)
            .unwrap_err()
            .to_string();
        assert!(e.contains("symlink"), "{e}");
        // Another dir is still refused, naming the option and the allowed dirs.
        let e = check("/usr/bin/python3.py", &task_dir, &allowed)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("absolute_script_dirs") && e.contains(&apps.display().to_string()),
            "{e}"
        );
    }
}
