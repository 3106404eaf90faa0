//! A tmpfs mounted on a test's directory (root only), lazily unmounted on drop: a small or
//! read-only disk for the log tests. Also compiled into the rotator's unit tests (`#[path]`).

use std::path::{Path, PathBuf};

pub struct Tmpfs(PathBuf);

impl Tmpfs {
    /// `options` as for mount(8), e.g. "size=256k". None (and a note) when not root.
    pub fn mount(dir: &Path, options: &str) -> Option<Tmpfs> {
        if !common::testing::root_or_skip("mounting a tmpfs needs root") {
            return None;
        }
        nix::mount::mount(
            Some("tmpfs"),
            dir,
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            Some(options),
        )
        .expect("mount a tmpfs");
        Some(Tmpfs(dir.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}
