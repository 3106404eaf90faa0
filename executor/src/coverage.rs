//! Coverage builds only (`scripts/test --coverage`, docs/testing.md); everything here is a
//! no-op unless the crate is compiled with `--cfg coverage` (cargo llvm-cov sets it).
//!
//! The sandbox helpers (`sandbox-init`, `sandbox-exec`) start with an empty environment and
//! end in `execve` or `_exit`, so LLVM's profile runtime would never write their counters, and
//! after `pivot_root` the host path in `LLVM_PROFILE_FILE` is out of sight anyway. In a
//! coverage build the shim passes `LLVM_PROFILE_FILE` on to them; each helper opens its
//! profile file at its start, while the host's tree is still visible, and writes the counters
//! into it just before it execs the runtime or exits.

/// `LLVM_PROFILE_FILE=…` for a helper's environment (coverage builds only).
pub(crate) fn helper_env() -> Option<std::ffi::CString> {
    #[cfg(coverage)]
    {
        use std::os::unix::ffi::OsStrExt;
        let value = std::env::var_os("LLVM_PROFILE_FILE")?;
        let mut entry = b"LLVM_PROFILE_FILE=".to_vec();
        entry.extend_from_slice(value.as_bytes());
        std::ffi::CString::new(entry).ok()
    }
    #[cfg(not(coverage))]
    None
}

/// At a helper's start: opens `<dir of LLVM_PROFILE_FILE>/helper-<pid>-<ns>.profraw` (the pid
/// alone would collide: every helper is PID 1 of its namespace) and hands it to the profile
/// runtime.
pub(crate) fn helper_start() {
    #[cfg(coverage)]
    imp::start();
}

/// Writes the helper's counters so far, once: later calls do nothing (after a first write to
/// its file object the profile runtime would fall back to `LLVM_PROFILE_FILE`'s path, out of
/// sight after `pivot_root`, and print errors on the task's stderr).
pub(crate) fn helper_dump() {
    #[cfg(coverage)]
    imp::dump();
}

#[cfg(coverage)]
mod imp {
    use std::os::fd::IntoRawFd;
    use std::os::unix::fs::OpenOptionsExt;
    use std::sync::atomic::{AtomicBool, Ordering};

    extern "C" {
        // compiler-rt's profile runtime (linked into every -C instrument-coverage binary).
        fn __llvm_profile_set_file_object(file: *mut libc::FILE, enable_merge: libc::c_int);
        fn __llvm_profile_write_file() -> libc::c_int;
    }

    static OPENED: AtomicBool = AtomicBool::new(false);

    pub(super) fn start() {
        let Some(pattern) = std::env::var_os("LLVM_PROFILE_FILE") else {
            return;
        };
        let Some(dir) = std::path::Path::new(&pattern).parent() else {
            return;
        };
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        let path = dir.join(format!("helper-{}-{nanos}.profraw", std::process::id()));
        let Ok(file) = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .custom_flags(libc::O_CLOEXEC)
            .open(path)
        else {
            return;
        };
        let fd = file.into_raw_fd();
        // SAFETY: fdopen takes ownership of an fd this process owns; the FILE lives for the
        // rest of the process and is only used by the profile runtime.
        unsafe {
            let f = libc::fdopen(fd, c"wb".as_ptr());
            if f.is_null() {
                libc::close(fd);
                return;
            }
            __llvm_profile_set_file_object(f, 0);
        }
        OPENED.store(true, Ordering::SeqCst);
    }

    pub(super) fn dump() {
        if OPENED.swap(false, Ordering::SeqCst) {
            // SAFETY: the runtime writes into the FILE set in `start`.
            unsafe { __llvm_profile_write_file() };
        }
    }
}
