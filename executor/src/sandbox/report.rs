//! How the processes that set the runtime up tell the shim which step failed: one frame on
//! the error pipe, `[step: u8][errno: i32 LE][detail length: u16 LE][detail: UTF-8]`. The
//! forked child before its exec writes frames without detail from a stack buffer (it may not
//! allocate); `sandbox-init` adds a detail naming the path or capability. A successful exec of
//! the runtime closes the pipe (close-on-exec) without a frame: EOF means started.

use std::os::fd::RawFd;

/// The setup steps, in the order they run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Step {
    // In the forked child, before `sandbox-init` runs.
    Session = 1,
    Cgroup = 2,
    Fds = 3,
    ParentDeath = 4,
    ExecInit = 5,
    // In `sandbox-init`.
    Plan = 10,
    Netns = 11,
    Mounts = 12,
    NoNewPrivs = 13,
    Capabilities = 14,
    User = 15,
    ParentGone = 16,
    Cwd = 17,
    Exec = 18,
    // In `sandbox-exec` (a command run inside the task).
    Enter = 19,
    Terminal = 20,
    // In both: the syscall filter, installed last.
    Seccomp = 30,
}

impl Step {
    const ALL: [Step; 17] = [
        Step::Session,
        Step::Cgroup,
        Step::Fds,
        Step::ParentDeath,
        Step::ExecInit,
        Step::Plan,
        Step::Netns,
        Step::Mounts,
        Step::NoNewPrivs,
        Step::Capabilities,
        Step::User,
        Step::ParentGone,
        Step::Cwd,
        Step::Exec,
        Step::Enter,
        Step::Terminal,
        Step::Seccomp,
    ];

    pub fn from_byte(b: u8) -> Option<Step> {
        Step::ALL.into_iter().find(|s| *s as u8 == b)
    }

    /// The step in words, for the task's failure message.
    pub fn describe(&self) -> &'static str {
        match self {
            Step::Session => "setsid",
            Step::Cgroup => "joining the task cgroup",
            Step::Fds => "passing the sandbox fds",
            Step::ParentDeath => "prctl(PR_SET_PDEATHSIG)",
            Step::ExecInit => "starting elide-executor sandbox-init",
            Step::Plan => "reading the sandbox plan",
            Step::Netns => "entering the network namespace (setns)",
            Step::Mounts => "setting up the task's file system view",
            Step::NoNewPrivs => "prctl(PR_SET_NO_NEW_PRIVS)",
            Step::Capabilities => "dropping capabilities",
            Step::User => "switching to the task user (the plugin must run as root to use `user`)",
            Step::ParentGone => "checking that the shim is still there",
            Step::Cwd => "entering the working directory",
            Step::Exec => "exec",
            Step::Enter => "entering the task's namespaces",
            Step::Terminal => "setting up the terminal",
            Step::Seccomp => "installing the syscall filter (seccomp)",
        }
    }
}

/// A failed step as the shim reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub step: Step,
    pub errno: i32,
    pub detail: String,
}

impl Failure {
    pub fn new(step: Step, detail: impl Into<String>, e: &std::io::Error) -> Failure {
        Failure {
            step,
            errno: e.raw_os_error().unwrap_or(libc::EINVAL),
            detail: detail.into(),
        }
    }

    pub fn error(&self) -> std::io::Error {
        std::io::Error::from_raw_os_error(self.errno)
    }

    pub fn encode(&self) -> Vec<u8> {
        let detail = &self.detail.as_bytes()[..self.detail.len().min(u16::MAX as usize)];
        let mut out = header(self.step, self.errno, detail.len() as u16).to_vec();
        out.extend_from_slice(detail);
        out
    }

    /// The first frame in `bytes` (None: no complete frame, i.e. success or a dead writer).
    pub fn decode(bytes: &[u8]) -> Option<Failure> {
        let step = Step::from_byte(*bytes.first()?)?;
        let errno = i32::from_le_bytes(bytes.get(1..5)?.try_into().ok()?);
        let len = u16::from_le_bytes(bytes.get(5..7)?.try_into().ok()?) as usize;
        let detail = bytes.get(7..7 + len).unwrap_or(&bytes[7..]);
        Some(Failure {
            step,
            errno,
            detail: String::from_utf8_lossy(detail).into_owned(),
        })
    }

    /// Writes the frame to `fd` (best effort: nobody may be left to read it).
    pub fn send(&self, fd: RawFd) {
        let bytes = self.encode();
        // SAFETY: a write of an owned buffer to a raw fd number.
        unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) };
    }
}

/// Runs `f` (the body of `sandbox-init` or `sandbox-exec`), turning a panic into a failed
/// [`Step::Plan`]: a panic must never look like success (EOF on the error pipe) to the shim.
pub fn catch_panic<T>(
    program: &str,
    f: impl FnOnce() -> Result<T, Failure> + std::panic::UnwindSafe,
) -> Result<T, Failure> {
    std::panic::catch_unwind(f).unwrap_or_else(|p| {
        let what = p
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| p.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        Err(Failure::new(
            Step::Plan,
            format!("{program} panicked: {what}"),
            &std::io::Error::from_raw_os_error(libc::EINVAL),
        ))
    })
}

/// The fixed-size frame header; used as it is by the forked child (no allocation).
pub fn header(step: Step, errno: i32, len: u16) -> [u8; 7] {
    let e = errno.to_le_bytes();
    let l = len.to_le_bytes();
    [step as u8, e[0], e[1], e[2], e[3], l[0], l[1]]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_bytes_map_to_steps() {
        for s in Step::ALL {
            assert_eq!(Step::from_byte(s as u8), Some(s));
            assert!(!s.describe().is_empty());
        }
        assert_eq!(Step::from_byte(0), None);
        let f = Failure {
            step: Step::Mounts,
            errno: libc::ENOENT,
            detail: "host volume /srv/x".into(),
        };
        assert_eq!(Failure::decode(&f.encode()), Some(f));
        // A bare header from the forked child.
        let bare = header(Step::Cgroup, libc::EACCES, 0);
        let d = Failure::decode(&bare).unwrap();
        assert_eq!((d.step, d.errno, d.detail.as_str()), (Step::Cgroup, 13, ""));
        assert_eq!(Failure::decode(&[]), None);
        assert_eq!(Failure::decode(&[12, 1, 0]), None);
    }
}
