//! Hiding what the view must not show: an empty read-only dir or `/dev/null` in its place.

use super::fail;
use super::report::Failure;
use super::steps::DEVICE;
use super::sys::{self as m, MOUNT_ATTR_INERT, MOUNT_ATTR_RDONLY};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// What the sandbox hides things with.
pub(super) struct Masks {
    /// `O_PATH` on the host's `/dev/null` (cloned for each file to hide).
    pub(super) null: OwnedFd,
    /// Hiding tmpfs mounts, writable until the end (a bind may need a mount point in one).
    pub(super) dirs: Vec<OwnedFd>,
}

impl Masks {
    /// An empty dir (made read-only at the end) or `/dev/null` over what `at` is.
    pub(super) fn hide(&mut self, at: &OwnedFd) -> io::Result<()> {
        if m::file_type(at)? == libc::S_IFDIR {
            let fs = m::new_fs(
                "tmpfs",
                &[("mode", Some("755")), ("size", Some("16k"))],
                MOUNT_ATTR_INERT,
            )?;
            m::attach(&fs, at)?;
            self.dirs.push(fs);
        } else {
            let null = m::clone_tree(self.null.as_raw_fd(), Path::new(""), false)?;
            // Not nodev: it reads as empty, like runc's masked paths.
            m::set_attr(&null, false, MOUNT_ATTR_RDONLY | DEVICE, 0)?;
            m::attach(&null, at)?;
        }
        Ok(())
    }

    /// The hiding dirs, read-only.
    pub(super) fn seal(&self) -> Result<(), Failure> {
        for fs in &self.dirs {
            m::set_attr(fs, false, MOUNT_ATTR_RDONLY, 0)
                .map_err(|e| fail("making a hiding dir read-only", e))?;
        }
        Ok(())
    }
}

/// The entries below `dir` (a host dir only the host's root controls) that only root may
/// read (no `o+r`), relative to it; such a dir is listed whole, not walked into. Symlinks
/// are not followed, other file systems not entered.
///
/// Every task's sandbox walks the whole of `/etc` (about 1,200 entries here): each entry is
/// stat'ed relative to its directory's fd (`DirEntry::metadata`: `statx` with
/// `AT_SYMLINK_NOFOLLOW`), not by its full path, which the kernel would walk again from `/`
/// for every entry (a start storm's profile had those walks at 2.7 % of the node's CPU), and
/// a symlink is skipped on its directory entry's type, without a stat.
pub(super) fn root_only_entries(dir: &Path) -> Vec<PathBuf> {
    fn walk(base: &Path, at: &Path, dev: u64, out: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(at) else {
            return;
        };
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_symlink()) {
                continue;
            }
            let Ok(meta) = e.metadata() else {
                continue;
            };
            if meta.file_type().is_symlink() {
                continue;
            }
            let p = e.path();
            if meta.mode() & 0o004 == 0 {
                if let Ok(r) = p.strip_prefix(base) {
                    out.push(r.to_path_buf());
                }
            } else if meta.is_dir() && meta.dev() == dev {
                walk(base, &p, dev, out);
            }
        }
    }
    let mut out = Vec::new();
    if let Ok(meta) = std::fs::metadata(dir) {
        walk(dir, dir, meta.dev(), &mut out);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Entries no one but root may read are listed (a dir whole); symlinks are not
    /// followed.
    #[test]
    fn root_only_entries_are_found_without_following_symlinks() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let b = d.path();
        std::fs::create_dir_all(b.join("ssl/private")).unwrap();
        std::fs::create_dir_all(b.join("ssh")).unwrap();
        for (f, mode) in [
            ("shadow", 0o640),
            ("passwd", 0o644),
            ("ssh/ssh_host_ed25519_key", 0o600),
            ("ssh/ssh_host_ed25519_key.pub", 0o644),
            ("ssl/private/snakeoil.key", 0o640),
        ] {
            std::fs::write(b.join(f), "x").unwrap();
            std::fs::set_permissions(b.join(f), std::fs::Permissions::from_mode(mode)).unwrap();
        }
        std::fs::set_permissions(
            b.join("ssl/private"),
            std::fs::Permissions::from_mode(0o710),
        )
        .unwrap();
        std::os::unix::fs::symlink("shadow", b.join("link")).unwrap();
        let mut found = root_only_entries(b);
        found.sort();
        assert_eq!(
            found,
            [
                PathBuf::from("shadow"),
                PathBuf::from("ssh/ssh_host_ed25519_key"),
                PathBuf::from("ssl/private"),
            ]
        );
    }
}
