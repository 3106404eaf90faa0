//! Step 8: the task's own `/etc/resolv.conf` and `/etc/hosts`, mounted read-only over where
//! the new root's names lead.

use super::fd::{make_beneath, readlink_at, rel};
use super::report::Failure;
use super::sys::{self as m, MOUNT_ATTR_INERT, MOUNT_ATTR_RDONLY};
use super::{display, fail, MountPlan};
use common::hosts::HostsSpec;
use std::ffi::OsStr;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

/// The task's resolv.conf and `/etc/hosts` (when the plan has them) in the new `root`.
pub(super) fn task_files(p: &MountPlan, root: &OwnedFd) -> Result<(), Failure> {
    if let Some(content) = &p.resolv_conf {
        mount_file_over(
            root,
            content,
            Path::new(common::dns::RESOLV_CONF),
            "the task's DNS config",
        )?;
    }
    if let Some(hosts) = &p.hosts {
        // None: loopback only (`network { mode = "none" }`), nothing to map.
        if let Some(content) = etc_hosts(hosts)? {
            mount_file_over(
                root,
                &content,
                Path::new(common::hosts::ETC_HOSTS),
                "the task's hosts file",
            )?;
        }
    }
    Ok(())
}

/// Where a resolver opening `link` (`/etc/resolv.conf`) in the new root ends up: followed as
/// the task would (never out of the root). A dangling symlink (its target below a path the
/// view does not show) gets its target created as an empty file in our tmpfs.
fn mount_target(root: &OwnedFd, link: &Path) -> io::Result<OwnedFd> {
    match m::open_in_root(root, rel(link)) {
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
        r => return r,
    }
    let parent = link.parent().unwrap_or(Path::new("/"));
    let pfd = m::open_in_root(root, rel(parent))?;
    let name = link.file_name().unwrap_or(link.as_os_str());
    let to = readlink_at(&pfd, name)?;
    let mut target = parent.to_path_buf();
    for c in to.components() {
        match c {
            Component::RootDir => target = PathBuf::from("/"),
            Component::ParentDir => {
                target.pop();
            }
            Component::Normal(n) => target.push(n),
            Component::CurDir | Component::Prefix(_) => {}
        }
    }
    make_beneath(root, rel(&target), true)
}

/// Mounts `content` (`what`, for errors) read-only over where `link` leads in the new root.
/// The file is written by us (root, before the task runs) into the new root's own tmpfs,
/// bound read-only over the target, and unlinked again: the only way to it is the read-only
/// bind, and nothing a task controls is ever written through.
fn mount_file_over(root: &OwnedFd, content: &str, link: &Path, what: &str) -> Result<(), Failure> {
    let target = mount_target(root, link).map_err(|e| {
        fail(
            format!(
                "finding {} to mount {what} over (the host needs one, even empty)",
                display(link)
            ),
            e,
        )
    })?;
    if m::file_type(&target).is_ok_and(|t| t == libc::S_IFDIR) {
        return Err(fail(
            format!("{} is a directory, not a file", display(link)),
            io::Error::from_raw_os_error(libc::EISDIR),
        ));
    }
    let name = format!(
        ".elide-{}",
        link.file_name()
            .unwrap_or(OsStr::new("file"))
            .to_string_lossy()
    );
    let staged = (|| {
        let c = std::ffi::CString::new(name.as_bytes())
            .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        // SAFETY: openat relative to a live dir fd; the fd is owned from here on.
        let fd = unsafe {
            libc::openat(
                root.as_raw_fd(),
                c.as_ptr(),
                libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
                0o644 as libc::c_uint,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh fd.
        let mut f = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
        f.write_all(content.as_bytes())?;
        drop(f);
        let tree = m::clone_tree(root.as_raw_fd(), Path::new(&name), false)?;
        m::set_attr(&tree, false, MOUNT_ATTR_RDONLY | MOUNT_ATTR_INERT, 0)?;
        m::attach(&tree, &target)
    })();
    let c = std::ffi::CString::new(name.as_bytes()).ok();
    if let Some(c) = c {
        // SAFETY: unlinkat relative to a live dir fd (the bind keeps the file alive).
        unsafe { libc::unlinkat(root.as_raw_fd(), c.as_ptr(), 0) };
    }
    staged.map_err(|e| fail(format!("mounting {what} over {}", display(link)), e))
}

/// The task's `/etc/hosts` text: Nomad's address and hostname, else the address of this
/// (the task's) network namespace and this (the node's) hostname. None when the namespace
/// has no address but loopback.
fn etc_hosts(h: &HostsSpec) -> Result<Option<String>, Failure> {
    let address = match &h.address {
        Some(a) => a.clone(),
        None => {
            let addrs = nix::ifaddrs::getifaddrs()
                .map_err(|e| {
                    fail(
                        "listing the network namespace's addresses for /etc/hosts",
                        io::Error::from(e),
                    )
                })?
                .filter_map(|i| {
                    let a = i.address?;
                    let ip = match (a.as_sockaddr_in(), a.as_sockaddr_in6()) {
                        (Some(v4), _) => std::net::IpAddr::V4(v4.ip()),
                        (_, Some(v6)) => std::net::IpAddr::V6(v6.ip()),
                        _ => return None,
                    };
                    Some((i.interface_name, ip))
                })
                .collect::<Vec<_>>();
            let picked = common::hosts::pick_address(addrs.iter().map(|(n, a)| (n.as_str(), *a)));
            match picked {
                Some(a) => a.to_string(),
                None => return Ok(None),
            }
        }
    };
    let hostname = match &h.hostname {
        Some(n) => n.clone(),
        None => nix::unistd::gethostname()
            .map_err(|e| fail("reading the hostname for /etc/hosts", io::Error::from(e)))?
            .to_string_lossy()
            .into_owned(),
    };
    // The node's entries (the host root, read-only here; root's file), bounded.
    let host_file = std::fs::File::open("/etc/hosts").ok().and_then(|f| {
        let mut text = String::new();
        io::Read::read_to_string(
            &mut io::Read::take(f, common::hosts::MAX_HOST_ENTRIES_BYTES as u64),
            &mut text,
        )
        .ok()
        .map(|_| text)
    });
    Ok(Some(common::hosts::render(
        &address,
        &hostname,
        host_file.as_deref(),
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etc_hosts_takes_nomads_values_or_the_network_namespaces() {
        let given = HostsSpec {
            hostname: Some("a1b2c3d4e5f6".into()),
            address: Some("172.26.64.5".into()),
        };
        let text = etc_hosts(&given).unwrap().unwrap();
        assert!(text.ends_with("\n172.26.64.5 a1b2c3d4e5f6\n"), "{text}");
        if !common::testing::root_or_skip("a network namespace needs root") {
            return;
        }
        std::thread::spawn(|| {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            assert_eq!(etc_hosts(&HostsSpec::default()).unwrap(), None);
            let named = HostsSpec {
                hostname: Some("web-1".into()),
                address: None,
            };
            assert_eq!(etc_hosts(&named).unwrap(), None);
        })
        .join()
        .unwrap();
    }
}
