//! The mount plan (pure): what the task's file system view is made of, computed by the shim
//! from the spec's sandbox before the fork; [`super::apply`] carries it out.

use common::hosts::HostsSpec;
use common::sandbox::{relative_task_path, FsIsolation, SandboxSpec};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Allow-listed host dirs whose entries no one but root may read (mode without `o+r`) are
/// hidden: the credential stores of `/etc` (`shadow`, `gshadow`, `ssl/private`, SSH host
/// keys, `sudoers`, `security/opasswd`…) whatever their names on this host.
pub const SCRUBBED: &[&str] = &["/etc"];

/// One step of the overlay phase, at a host path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Overlay {
    /// An empty read-only dir (or `/dev/null` over a file) in its place.
    Hide { path: PathBuf },
    /// The host path bound at the same path.
    Bind {
        path: PathBuf,
        writable: bool,
        /// Missing on the host: a failure (the task dir) or skipped (Elide's home, `/lib32`).
        /// Required paths are resolved without following any symlink; the others are host
        /// paths only the host's root controls (the allow-list), whose symlinks are followed
        /// (a top-level one, `/lib -> usr/lib`, is recreated as a symlink).
        required: bool,
    },
}

impl Overlay {
    pub(super) fn path(&self) -> &Path {
        match self {
            Overlay::Hide { path } | Overlay::Bind { path, .. } => path,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Volume {
    pub source: PathBuf,
    /// Relative to the task dir (no `..`).
    pub dest: PathBuf,
    pub read_only: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Device {
    pub source: PathBuf,
    /// Relative to `/dev`.
    pub dest: PathBuf,
    pub writable: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountPlan {
    /// Build a new root from the allow-listed binds and pivot into it.
    pub new_root: bool,
    pub private_tmp: bool,
    pub private_dev: bool,
    pub fresh_proc: bool,
    pub private_shm: bool,
    pub mqueue: bool,
    pub overlays: Vec<Overlay>,
    /// Bound dirs ([`SCRUBBED`]) whose root-only entries are hidden.
    #[serde(default)]
    pub scrubbed: Vec<PathBuf>,
    pub task_dir: PathBuf,
    pub volumes: Vec<Volume>,
    pub devices: Vec<Device>,
    /// The task's own resolv.conf (Nomad's `network { dns {} }`), mounted read-only over
    /// `/etc/resolv.conf` (readonly isolation only).
    #[serde(default)]
    pub resolv_conf: Option<String>,
    /// The task's own `/etc/hosts` in group network mode (readonly isolation only); the
    /// fields Nomad did not send are found by `sandbox-init` in the network namespace.
    #[serde(default)]
    pub hosts: Option<HostsSpec>,
}

pub(super) fn depth(p: &Path) -> usize {
    p.components().count()
}

/// `a` is a proper ancestor of `b`.
fn above(a: &Path, b: &Path) -> bool {
    a != b && b.starts_with(a)
}

/// The mount plan of a sandbox. `shim_dirs`: the shim's own dirs (socket dir, state dir),
/// hidden on top of the spec's list (wherever the view would show them).
pub fn plan(s: &SandboxSpec, task_dir: &Path, shim_dirs: &[PathBuf]) -> MountPlan {
    let readonly = s.fs_isolation == FsIsolation::Readonly;
    let overlays = if readonly {
        overlays(s, shim_dirs)
    } else {
        Vec::new()
    };
    let scrubbed = overlays
        .iter()
        .filter_map(|o| match o {
            Overlay::Bind { path, .. } if SCRUBBED.iter().any(|s| Path::new(s) == path) => {
                Some(path.clone())
            }
            _ => None,
        })
        .collect();
    let volumes = s
        .volumes
        .iter()
        .filter_map(|v| {
            Some(Volume {
                source: v.host_path.clone(),
                dest: relative_task_path(&v.task_path).ok()?,
                read_only: v.read_only,
            })
        })
        .collect();
    let devices = if readonly {
        s.devices
            .iter()
            .filter_map(|d| {
                Some(Device {
                    source: d.host_path.clone(),
                    dest: d.task_path.strip_prefix("/dev").ok()?.to_path_buf(),
                    writable: d.permissions.contains('w'),
                })
            })
            .collect()
    } else {
        // The host's /dev is there as it is; the plugin refused devices placed elsewhere.
        Vec::new()
    };
    MountPlan {
        new_root: readonly,
        private_tmp: readonly,
        private_dev: readonly,
        fresh_proc: readonly || s.pid_mode.is_private(),
        private_shm: readonly || s.ipc_mode.is_private(),
        mqueue: readonly && s.ipc_mode.is_private(),
        overlays,
        scrubbed,
        task_dir: task_dir.to_path_buf(),
        volumes,
        devices,
        resolv_conf: s.dns.as_ref().filter(|_| readonly).map(|d| d.render()),
        hosts: s.hosts.clone().filter(|_| readonly),
    }
}

/// Binds (the allow-list, the task's own dirs) and hides, outer paths first. The new root
/// shows nothing but the binds (and the private `/tmp`, `/dev`, `/proc`, `/sys`), so a hide
/// is kept only where a bind would show it, and not below another hide unless a bind between
/// them brings its part of the tree back.
fn overlays(s: &SandboxSpec, shim_dirs: &[PathBuf]) -> Vec<Overlay> {
    let mut binds: Vec<(PathBuf, bool, bool)> = Vec::new();
    for (p, writable, required) in s
        .writable_paths
        .iter()
        .map(|p| (p, true, true))
        .chain(s.readable_paths.iter().map(|p| (p, false, false)))
    {
        if p.parent().is_none() {
            continue; // never the whole host root
        }
        match binds.iter_mut().find(|b| b.0 == *p) {
            Some(b) => {
                b.1 |= writable;
                b.2 |= required;
            }
            None => binds.push((p.clone(), writable, required)),
        }
    }
    // A read-only path inside another bind is already there (and could not get a mount
    // point in a read-only bind): only writable ones are bound again.
    let snapshot = binds.clone();
    binds.retain(|b| b.1 || !snapshot.iter().any(|o| above(&o.0, &b.0)));
    let mut hides: Vec<PathBuf> = Vec::new();
    let mut wanted: Vec<&PathBuf> = s.hidden_paths.iter().chain(shim_dirs).collect();
    wanted.sort_by_key(|p| depth(p));
    for h in wanted {
        if hides.contains(h) || binds.iter().any(|b| b.0 == *h) {
            continue;
        }
        let shown = binds.iter().any(|b| above(&b.0, h));
        let covered = hides
            .iter()
            .any(|a| above(a, h) && !binds.iter().any(|b| above(a, &b.0) && h.starts_with(&b.0)));
        if shown && !covered {
            hides.push(h.clone());
        }
    }
    let mut out: Vec<Overlay> = hides
        .into_iter()
        .map(|path| Overlay::Hide { path })
        .chain(
            binds
                .into_iter()
                .map(|(path, writable, required)| Overlay::Bind {
                    path,
                    writable,
                    required,
                }),
        )
        .collect();
    // Outer first; at the same depth hides before binds (stable otherwise).
    out.sort_by_key(|o| (depth(o.path()), matches!(o, Overlay::Bind { .. })));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use common::sandbox::{DeviceSpec, NamespaceMode, VolumeSpec};

    fn spec() -> SandboxSpec {
        SandboxSpec {
            writable_paths: vec![
                "/var/lib/nomad/alloc/a1/web".into(),
                "/var/lib/nomad/alloc/a1/alloc".into(),
            ],
            readable_paths: vec![
                "/usr".into(),
                "/etc".into(),
                "/lib".into(),
                "/opt/elide".into(),
            ],
            hidden_paths: vec![
                "/var/lib/nomad/alloc".into(),
                "/var/lib/nomad".into(),
                "/run/nomad-driver-elide".into(),
                "/var/lib/nomad/alloc/a1/web/private".into(),
                "/etc/shadow".into(),
                "/etc/nomad.d".into(),
            ],
            ..Default::default()
        }
    }

    fn ops(p: &MountPlan) -> Vec<String> {
        p.overlays
            .iter()
            .map(|o| match o {
                Overlay::Hide { path } => format!("hide {}", path.display()),
                Overlay::Bind { path, writable, .. } => {
                    format!(
                        "bind{} {}",
                        if *writable { "-rw" } else { "-ro" },
                        path.display()
                    )
                }
            })
            .collect()
    }

    /// The new root shows the binds only: hides outside them (Nomad's data dir, the plugin's
    /// runtime dir, the shim's state) are not needed, those inside (`/etc/shadow`, the task's
    /// `private/`) are kept, after their bind.
    #[test]
    fn outer_paths_first_and_only_hides_a_bind_would_show() {
        let p = plan(
            &spec(),
            Path::new("/var/lib/nomad/alloc/a1/web"),
            &[
                "/var/lib/nomad/alloc/a1/.elide/k".into(),
                "/run/nomad-driver-elide".into(),
            ],
        );
        assert_eq!(
            ops(&p),
            [
                "bind-ro /usr",
                "bind-ro /etc",
                "bind-ro /lib",
                "hide /etc/shadow",
                "hide /etc/nomad.d",
                "bind-ro /opt/elide",
                "bind-rw /var/lib/nomad/alloc/a1/web",
                "bind-rw /var/lib/nomad/alloc/a1/alloc",
                "hide /var/lib/nomad/alloc/a1/web/private",
            ]
        );
        assert_eq!(p.scrubbed, [PathBuf::from("/etc")]);
        assert!(p.new_root && p.private_tmp && p.private_dev && p.fresh_proc);
        assert!(p.private_shm && p.mqueue);
        // Only the task's own dirs are required (resolved without symlinks, never skipped).
        for o in &p.overlays {
            if let Overlay::Bind { path, required, .. } = o {
                assert_eq!(*required, path.starts_with("/var/lib/nomad"), "{o:?}");
            }
        }
    }

    /// A read-only path inside another bind is already visible (and a read-only bind could
    /// not take a mount point); a writable one inside a read-only bind is bound again; a
    /// hide below another hide is dropped unless a bind between them shows it; `/` is
    /// never bound.
    #[test]
    fn nested_binds_and_hides() {
        let s = SandboxSpec {
            writable_paths: vec!["/tmp/t/data/alloc/a1/web".into(), "/srv/rw".into()],
            readable_paths: vec![
                "/".into(),
                "/srv".into(),
                "/srv/elide".into(),
                "/usr/local/elide".into(),
                "/usr".into(),
            ],
            hidden_paths: vec![
                "/tmp/t/data".into(),
                "/srv/keys".into(),
                "/srv/keys/a".into(),
                "/srv/rw/x".into(),
                "/tmp/t/data/alloc/a1/web/private".into(),
            ],
            ..Default::default()
        };
        let p = plan(&s, Path::new("/tmp/t/data/alloc/a1/web"), &[]);
        assert_eq!(
            ops(&p),
            [
                "bind-ro /srv",
                "bind-ro /usr",
                "hide /srv/keys",
                "bind-rw /srv/rw",
                "hide /srv/rw/x",
                "bind-rw /tmp/t/data/alloc/a1/web",
                "hide /tmp/t/data/alloc/a1/web/private"
            ]
        );
        assert!(p.scrubbed.is_empty());
    }

    #[test]
    fn none_keeps_the_host_view_and_only_sets_up_namespaces_and_volumes() {
        let mut s = spec();
        s.fs_isolation = FsIsolation::None;
        s.volumes = vec![VolumeSpec {
            host_path: "/srv/data".into(),
            task_path: "/data/x".into(),
            read_only: true,
        }];
        s.devices = vec![DeviceSpec {
            host_path: "/dev/fuse".into(),
            task_path: "/dev/fuse".into(),
            permissions: "rwm".into(),
        }];
        let p = plan(&s, Path::new("/t"), &[]);
        assert!(p.overlays.is_empty() && p.devices.is_empty());
        assert!(!p.new_root && !p.private_tmp && !p.private_dev && !p.mqueue);
        assert!(p.fresh_proc && p.private_shm);
        assert_eq!(
            p.volumes,
            [Volume {
                source: "/srv/data".into(),
                dest: "data/x".into(),
                read_only: true
            }]
        );
        s.pid_mode = NamespaceMode::Host;
        s.ipc_mode = NamespaceMode::Host;
        let p = plan(&s, Path::new("/t"), &[]);
        assert!(!p.fresh_proc && !p.private_shm);
    }
    #[test]
    fn devices_go_below_dev_with_their_write_permission() {
        let mut s = spec();
        s.devices = vec![
            DeviceSpec {
                host_path: "/dev/nvidia0".into(),
                task_path: "/dev/nvidia0".into(),
                permissions: "rwm".into(),
            },
            DeviceSpec {
                host_path: "/dev/sda".into(),
                task_path: "/dev/disk/x".into(),
                permissions: "r".into(),
            },
        ];
        let p = plan(&s, Path::new("/t"), &[]);
        assert_eq!(p.devices[0].dest, Path::new("nvidia0"));
        assert!(p.devices[0].writable);
        assert_eq!(p.devices[1].dest, Path::new("disk/x"));
        assert!(!p.devices[1].writable);
    }
    #[test]
    fn a_dns_config_becomes_the_resolv_conf_to_mount_with_readonly_isolation_only() {
        let mut s = spec();
        assert_eq!(plan(&s, Path::new("/t"), &[]).resolv_conf, None);
        s.dns = Some(common::dns::DnsSpec {
            servers: vec!["10.9.8.7".into()],
            searches: vec!["example.internal".into()],
            options: vec!["ndots:2".into()],
        });
        assert_eq!(
            plan(&s, Path::new("/t"), &[]).resolv_conf.as_deref(),
            Some("search example.internal\nnameserver 10.9.8.7\noptions ndots:2\n")
        );
        s.fs_isolation = FsIsolation::None;
        assert_eq!(plan(&s, Path::new("/t"), &[]).resolv_conf, None);
    }
    #[test]
    fn a_hosts_config_is_planned_with_readonly_isolation_only() {
        let mut s = spec();
        assert_eq!(plan(&s, Path::new("/t"), &[]).hosts, None);
        let hosts = HostsSpec {
            hostname: Some("web-1".into()),
            address: None,
        };
        s.hosts = Some(hosts.clone());
        assert_eq!(plan(&s, Path::new("/t"), &[]).hosts, Some(hosts));
        s.fs_isolation = FsIsolation::None;
        assert_eq!(plan(&s, Path::new("/t"), &[]).hosts, None);
    }
}
