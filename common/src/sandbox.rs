//! The task sandbox as the plugin describes it to the shim (`TaskSpec.sandbox`): capabilities,
//! namespaces, the filesystem view, volumes, devices and the host ids a task may not run as.
//! What the shim does with it: docs/executor.md, "Sandbox".

use crate::error::FieldError;
use serde::{Deserialize, Serialize};
use std::path::{Component, Path, PathBuf};

/// The host paths every task sees read-only at their own paths (with
/// `fs_isolation = "readonly"`), like Nomad exec's `chroot_env`: the system's programs and
/// libraries and `/etc`. Nothing else of the host is in the task's new root but its own dirs,
/// Elide's install dir, the resolv.conf target, an allowed script dir and the operator's
/// `extra_host_paths`. Paths missing on the host are skipped; a top-level symlink
/// (`/lib -> usr/lib`) is recreated as the same symlink.
pub const DEFAULT_HOST_PATHS: &[&str] = &[
    "/bin",
    "/sbin",
    "/lib",
    "/lib32",
    "/lib64",
    "/libx32",
    "/usr",
    "/etc",
    "/run/resolvconf",
];

/// The plugin's default `hidden_paths`: credential stores inside the allow-listed view
/// (`/etc`) that are hidden even when world-readable. On top of these, every entry of `/etc`
/// that no one but root may read is hidden whatever its name (`ssl/private`, SSH host keys,
/// `sudoers`, `security/opasswd`…). Paths that do not exist are skipped.
pub const DEFAULT_HIDDEN_PATHS: &[&str] = &[
    "/etc/shadow",
    "/etc/shadow-",
    "/etc/gshadow",
    "/etc/gshadow-",
    "/etc/sudoers",
    "/etc/sudoers.d",
    "/etc/ssl/private",
    "/etc/nomad.d",
    "/etc/consul.d",
    "/etc/vault.d",
];

/// `pid_mode` / `ipc_mode`: a namespace of the task's own, or the host's (as in Nomad exec).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NamespaceMode {
    #[default]
    Private,
    Host,
}

impl NamespaceMode {
    pub const NAMES: &'static [&'static str] = &["private", "host"];

    pub fn as_str(&self) -> &'static str {
        match self {
            NamespaceMode::Private => "private",
            NamespaceMode::Host => "host",
        }
    }

    pub fn parse(v: &str) -> Option<Self> {
        match v {
            "private" => Some(NamespaceMode::Private),
            "host" => Some(NamespaceMode::Host),
            _ => None,
        }
    }

    pub fn is_private(&self) -> bool {
        *self == NamespaceMode::Private
    }
}

/// The plugin's `fs_isolation`: what the task sees of the host's file system.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FsIsolation {
    /// A new root (`pivot_root`) holding only the allow-listed host paths, read-only
    /// (`readable_paths`: [`DEFAULT_HOST_PATHS`], Elide's install dir…), with root-only
    /// `/etc` entries and `hidden_paths` hidden; the task dir and `alloc/` writable at their
    /// host paths; private `/tmp`, `/dev`, `/dev/shm` and `/proc`, `/sys` read-only.
    #[default]
    Readonly,
    /// The host's file system as it is (raw_exec-like); only a fresh `/proc` for a private
    /// PID namespace, a private `/dev/shm` for a private IPC namespace, and volumes.
    None,
}

impl FsIsolation {
    pub const NAMES: &'static [&'static str] = &["readonly", "none"];

    pub fn as_str(&self) -> &'static str {
        match self {
            FsIsolation::Readonly => "readonly",
            FsIsolation::None => "none",
        }
    }

    pub fn parse(v: &str) -> Option<Self> {
        match v {
            "readonly" => Some(FsIsolation::Readonly),
            "none" => Some(FsIsolation::None),
            _ => None,
        }
    }
}

/// A host volume (`volume_mount`, Nomad's `TaskConfig.mounts`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeSpec {
    /// The host path (a directory or a file).
    pub host_path: PathBuf,
    /// The job's `destination`, resolved beneath the task dir (`/data` → `<task dir>/data`),
    /// as exec and java place it in their chroot.
    pub task_path: String,
    #[serde(default)]
    pub read_only: bool,
}

/// A device a device plugin allocated (Nomad's `TaskConfig.devices`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceSpec {
    pub host_path: PathBuf,
    /// Where the task sees it: a path under `/dev`.
    pub task_path: PathBuf,
    /// cgroup-style `rwm`; without `w` the device is bound read-only.
    #[serde(default)]
    pub permissions: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SandboxSpec {
    /// The capabilities the runtime keeps (kernel names, `CAP_CHOWN`), already computed from
    /// `allow_caps`, `cap_add` and `cap_drop`; applied to the effective, permitted,
    /// inheritable and bounding sets, and the ambient set for a non-root user.
    #[serde(default = "default_capabilities")]
    pub capabilities: Vec<String>,
    #[serde(default)]
    pub pid_mode: NamespaceMode,
    #[serde(default)]
    pub ipc_mode: NamespaceMode,
    #[serde(default)]
    pub fs_isolation: FsIsolation,
    /// Host directories bound writable at their own paths (the task dir, the alloc's shared
    /// `alloc/` dir). With `fs_isolation = "none"` they are simply there.
    #[serde(default)]
    pub writable_paths: Vec<PathBuf>,
    /// The allow-list: host paths the task sees read-only at their own paths
    /// ([`DEFAULT_HOST_PATHS`], Elide's install dir, the operator's `extra_host_paths`…).
    /// Absent: [`DEFAULT_HOST_PATHS`].
    #[serde(default = "default_host_paths")]
    pub readable_paths: Vec<PathBuf>,
    /// Host paths the task must not see where the allow-list would show them (each becomes
    /// an empty read-only dir, or `/dev/null` over a file).
    #[serde(default)]
    pub hidden_paths: Vec<PathBuf>,
    #[serde(default)]
    pub volumes: Vec<VolumeSpec>,
    #[serde(default)]
    pub devices: Vec<DeviceSpec>,
    /// Host uids the task may not run as (`"0,1000-1100"`, like raw_exec's).
    #[serde(default)]
    pub denied_uids: String,
    /// Host gids (primary or supplementary) the task may not run with.
    #[serde(default)]
    pub denied_gids: String,
    /// The task's own `/etc/resolv.conf` (Nomad's `network { dns {} }`), mounted read-only
    /// over the host's in the task's mount namespace; only with `fs_isolation = "readonly"`.
    /// Absent (older specs too): the task sees the host's. Left out of the JSON when
    /// absent, so a shim from before this field still reads specs without DNS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns: Option<crate::dns::DnsSpec>,
    /// The task's own `/etc/hosts` in group (bridge) network mode, mounted read-only over the
    /// host's like `dns`; only with `fs_isolation = "readonly"`. Absent (older specs too, and
    /// host network mode): the task sees the host's. Left out of the JSON when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hosts: Option<crate::hosts::HostsSpec>,
    /// What a task user other than root keeps of `capabilities` (effective, permitted,
    /// inheritable, ambient): only the job's `cap_add` ([`crate::capabilities::for_non_root`]).
    /// Absent (older specs): nothing.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub user_capabilities: Vec<String>,
    /// The syscall filter, installed last before the runtime's (and every exec'd command's)
    /// exec; None: the plugin's `seccomp = "off"` (and older specs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seccomp: Option<crate::seccomp::SeccompSpec>,
}

fn default_host_paths() -> Vec<PathBuf> {
    DEFAULT_HOST_PATHS.iter().map(PathBuf::from).collect()
}

fn default_capabilities() -> Vec<String> {
    let all = crate::capabilities::driver_defaults();
    crate::capabilities::calculate(&all, &[], &[]).unwrap_or_default()
}

impl Default for SandboxSpec {
    fn default() -> Self {
        SandboxSpec {
            capabilities: default_capabilities(),
            pid_mode: NamespaceMode::Private,
            ipc_mode: NamespaceMode::Private,
            fs_isolation: FsIsolation::Readonly,
            writable_paths: Vec::new(),
            // The default host view (what the plugin sends unless told otherwise).
            readable_paths: default_host_paths(),
            hidden_paths: Vec::new(),
            volumes: Vec::new(),
            devices: Vec::new(),
            denied_uids: String::new(),
            denied_gids: String::new(),
            dns: None,
            hosts: None,
            user_capabilities: Vec::new(),
            seccomp: None,
        }
    }
}

/// Id ranges such as `"0,10-20"` (raw_exec's `denied_host_uids` syntax).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IdRanges(Vec<(u32, u32)>);

impl IdRanges {
    /// Parses `"a,b-c,…"`; "" is the empty set. The error names the bad part.
    pub fn parse(s: &str) -> Result<IdRanges, FieldError> {
        let mut out = Vec::new();
        if s.trim().is_empty() {
            return Ok(IdRanges(out));
        }
        for part in s.split(',') {
            let p = part.trim();
            let bound = |v: &str| {
                v.trim().parse::<u32>().map_err(|_| {
                    FieldError::value(format!(
                        "{p:?} is not an id or a range such as \"0\" or \"1000-1999\""
                    ))
                })
            };
            let (lo, hi) = match p.split_once('-') {
                Some((a, b)) => (bound(a)?, bound(b)?),
                None => {
                    let v = bound(p)?;
                    (v, v)
                }
            };
            if lo > hi {
                return Err(FieldError::value(format!(
                    "{p:?}: the lower bound is greater than the upper one"
                )));
            }
            out.push((lo, hi));
        }
        Ok(IdRanges(out))
    }

    pub fn contains(&self, id: u32) -> bool {
        self.0.iter().any(|(lo, hi)| (*lo..=*hi).contains(&id))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// A volume's `task_path` as a path relative to the task dir: leading `/` dropped, no `..`,
/// not empty. The error says why.
pub fn relative_task_path(task_path: &str) -> Result<PathBuf, FieldError> {
    let rel: PathBuf = Path::new(task_path)
        .components()
        .filter(|c| !matches!(c, Component::RootDir | Component::CurDir))
        .map(|c| match c {
            Component::Normal(n) => Ok(n),
            _ => Err(FieldError::value(format!(
                "{task_path:?} leaves the task dir (\"..\"); give a destination inside it"
            ))),
        })
        .collect::<Result<_, _>>()?;
    if rel.as_os_str().is_empty() {
        return Err(FieldError::value(format!(
            "{task_path:?} is the task dir itself; give a destination inside it, e.g. \"/data\""
        )));
    }
    Ok(rel)
}

impl SandboxSpec {
    /// What the shim must be able to rely on; the error names the field.
    pub fn validate(&self) -> Result<(), FieldError> {
        let err = |f: &str, m: String| Err(FieldError::new(format!("sandbox.{f}"), m));
        let within = |f: &str, e: FieldError| Err(e.within(&format!("sandbox.{f}")));
        if let Err(e) = crate::capabilities::from_kernel_names(&self.capabilities) {
            return within("capabilities", e);
        }
        for (field, list) in [
            ("writable_paths", &self.writable_paths),
            ("readable_paths", &self.readable_paths),
            ("hidden_paths", &self.hidden_paths),
        ] {
            for p in list {
                if !p.is_absolute() || p.as_os_str().as_encoded_bytes().contains(&0) {
                    return err(field, format!("{} must be an absolute path", p.display()));
                }
                if field == "hidden_paths" && p.parent().is_none() {
                    return err(field, "\"/\" cannot be hidden".into());
                }
            }
        }
        for (i, v) in self.volumes.iter().enumerate() {
            if !v.host_path.is_absolute() {
                return err(
                    &format!("volumes[{i}].host_path"),
                    format!("{} must be an absolute path", v.host_path.display()),
                );
            }
            if let Err(e) = relative_task_path(&v.task_path) {
                return within(&format!("volumes[{i}].task_path"), e);
            }
        }
        for (i, d) in self.devices.iter().enumerate() {
            let under_dev = d.task_path.starts_with("/dev")
                && d.task_path != Path::new("/dev")
                && !d
                    .task_path
                    .components()
                    .any(|c| matches!(c, Component::ParentDir));
            if !d.host_path.is_absolute() || !under_dev {
                return err(
                    &format!("devices[{i}]"),
                    format!(
                        "{} → {}: a device needs an absolute host path and a task path under /dev",
                        d.host_path.display(),
                        d.task_path.display()
                    ),
                );
            }
        }
        if let Err(e) = IdRanges::parse(&self.denied_uids) {
            return within("denied_uids", e);
        }
        if let Err(e) = IdRanges::parse(&self.denied_gids) {
            return within("denied_gids", e);
        }
        if let Some(Err(e)) = self.dns.as_ref().map(|d| d.validate()) {
            return within("dns", e);
        }
        if let Some(Err(e)) = self.hosts.as_ref().map(|h| h.validate()) {
            return within("hosts", e);
        }
        if let Err(e) = crate::capabilities::from_kernel_names(&self.user_capabilities) {
            return within("user_capabilities", e);
        }
        if let Some(extra) = self
            .user_capabilities
            .iter()
            .find(|c| !self.capabilities.contains(c))
        {
            return err(
                "user_capabilities",
                format!("{extra} is not in sandbox.capabilities"),
            );
        }
        if let Some(Err(e)) = self.seccomp.as_ref().map(|s| s.decode()) {
            return within("seccomp", e);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_ranges_parse_like_raw_exec() {
        let r = IdRanges::parse("0, 10-20,65534").unwrap();
        assert!(r.contains(0) && r.contains(10) && r.contains(20) && r.contains(65534));
        assert!(!r.contains(1) && !r.contains(21));
        assert!(IdRanges::parse("").unwrap().is_empty());
        for bad in ["a", "5-1", "1-", "-1", "1,,2", "99999999999"] {
            assert!(IdRanges::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn task_paths_stay_beneath_the_task_dir() {
        assert_eq!(relative_task_path("/data").unwrap(), Path::new("data"));
        assert_eq!(relative_task_path("a/./b/").unwrap(), Path::new("a/b"));
        assert!(relative_task_path("/../etc").is_err());
        assert!(relative_task_path("a/../../b").is_err());
        assert!(relative_task_path("/").is_err());
        assert!(relative_task_path("").is_err());
    }

    #[test]
    fn defaults_serialise_and_validate() {
        let s = SandboxSpec::default();
        assert_eq!(s.capabilities.len(), 12);
        s.validate().unwrap();
        let back: SandboxSpec = serde_json::from_str("{}").unwrap();
        assert_eq!(back, s);
        let json = serde_json::to_value(&s).unwrap();
        assert!(json.get("dns").is_none(), "{json}");
        assert!(json.get("hosts").is_none(), "{json}");
        let mut bad = s.clone();
        bad.hidden_paths = vec!["/".into()];
        assert_eq!(bad.validate().unwrap_err().field, "sandbox.hidden_paths");
        let mut bad = s.clone();
        bad.devices = vec![DeviceSpec {
            host_path: "/dev/fuse".into(),
            task_path: "/etc/fuse".into(),
            permissions: "rw".into(),
        }];
        assert_eq!(bad.validate().unwrap_err().field, "sandbox.devices[0]");
        let mut bad = s.clone();
        bad.capabilities = vec!["CAP_NOPE".into()];
        assert_eq!(bad.validate().unwrap_err().field, "sandbox.capabilities");
        // A spec the shim reads (hand-written, or from another plugin) is checked too.
        let mut bad = s.clone();
        bad.hosts = Some(crate::hosts::HostsSpec {
            hostname: Some("web\n6.6.6.6 evil".into()),
            address: None,
        });
        assert_eq!(bad.validate().unwrap_err().field, "sandbox.hosts.hostname");
        let mut bad = s;
        bad.dns = Some(crate::dns::DnsSpec {
            searches: vec!["a\nnameserver 6.6.6.6".into()],
            ..Default::default()
        });
        assert_eq!(bad.validate().unwrap_err().field, "sandbox.dns.searches[0]");
    }
}
