//! Installs the task's syscall filter: the BPF programs the plugin compiled
//! ([`common::seccomp`]), in order, with `prctl(PR_SET_SECCOMP)`. Called last, right before the
//! exec of the runtime (`sandbox-init`) or of a command run inside the task (`sandbox-exec`),
//! after no_new_privs (which an unprivileged process needs to install a filter) and after
//! every step that itself needs a refused call. Children inherit the filter; nothing removes
//! it. The shim carries no compiler: a program the kernel refuses fails the start, never
//! silently runs the task without a filter.

use super::report::{Failure, Step};
use common::seccomp::SeccompSpec;
use std::io;

pub fn install(spec: &SeccompSpec) -> Result<(), Failure> {
    if spec.arch != std::env::consts::ARCH {
        return Err(Failure::new(
            Step::Seccomp,
            format!(
                "the filter was compiled for {}, this host is {}",
                spec.arch,
                std::env::consts::ARCH
            ),
            &io::Error::from_raw_os_error(libc::EINVAL),
        ));
    }
    let programs = spec.decode().map_err(|e| {
        Failure::new(
            Step::Seccomp,
            e.to_string(),
            &io::Error::from_raw_os_error(libc::EINVAL),
        )
    })?;
    for (i, p) in programs.iter().enumerate() {
        let mut insns: Vec<libc::sock_filter> = p
            .iter()
            .map(|x| libc::sock_filter {
                code: x.code,
                jt: x.jt,
                jf: x.jf,
                k: x.k,
            })
            .collect();
        let prog = libc::sock_fprog {
            // decode() caps a program at 4096 instructions.
            len: insns.len() as libc::c_ushort,
            filter: insns.as_mut_ptr(),
        };
        // SAFETY: prctl reads `prog`, which points at `insns`; both outlive the call.
        let r = unsafe {
            libc::prctl(
                libc::PR_SET_SECCOMP,
                libc::SECCOMP_MODE_FILTER as libc::c_ulong,
                &prog as *const libc::sock_fprog,
                0,
                0,
            )
        };
        if r < 0 {
            return Err(Failure::new(
                Step::Seccomp,
                format!("program {i} of {}", programs.len()),
                &io::Error::last_os_error(),
            ));
        }
    }
    Ok(())
}
