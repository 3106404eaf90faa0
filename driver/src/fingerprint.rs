//! Detecting Elide (and our shim) on the node, for the Fingerprint stream.
//!
//! Like the java driver, this shells out to the runtime (`elide --version`, `elide info`), but
//! once per binary while it stays the same file (path, inode, mtime, size), never on every
//! `fingerprint_period` or for every Fingerprint stream (a restarted agent's first one is
//! waited for before Nomad restores any task).

use crate::config::PluginConfig;
use common::error::FieldError;
use common::proto::drivers::fingerprint_response::HealthState;
use common::proto::drivers::FingerprintResponse;
use common::proto::structs::{attribute, Attribute};
use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

/// Where Elide's own installers put the binary, after `$PATH` (docs/driver.md,
/// `elide_binary`).
pub fn default_elide_locations(home: Option<&str>) -> Vec<PathBuf> {
    let mut v = Vec::new();
    if let Some(h) = home.filter(|h| !h.is_empty()) {
        v.push(Path::new(h).join("elide/elide"));
    }
    v.push(PathBuf::from("/usr/bin/elide"));
    v.push(PathBuf::from("/opt/elide/current/elide"));
    v.push(PathBuf::from("/usr/local/bin/elide"));
    v
}

/// Where the shim is looked for when `executor_binary` is not set. Never the top level of the
/// plugin dir: Nomad would launch it as a plugin.
pub fn default_executor_locations(plugin_exe: Option<&Path>) -> Vec<PathBuf> {
    let mut v = Vec::new();
    if let Some(dir) = plugin_exe.and_then(Path::parent) {
        v.push(dir.join("elide/elide-executor"));
    }
    v.push(PathBuf::from(
        "/usr/local/libexec/nomad-driver-elide/elide-executor",
    ));
    v.push(PathBuf::from(
        "/usr/libexec/nomad-driver-elide/elide-executor",
    ));
    v
}

fn is_executable_file(p: &Path) -> bool {
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Result of looking for a binary: found, or the list of places searched.
#[derive(Debug, Clone, PartialEq)]
pub enum Located {
    Found(PathBuf),
    Missing { searched: Vec<PathBuf> },
}

/// Resolves `configured` (absolute path, or a bare name looked up on PATH), else `name` on
/// PATH, then `fallbacks`.
pub fn locate(
    configured: Option<&Path>,
    name: &str,
    path_var: Option<&str>,
    fallbacks: &[PathBuf],
) -> Located {
    let path_dirs: Vec<PathBuf> = path_var
        .unwrap_or("")
        .split(':')
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .collect();
    let mut searched = Vec::new();
    let candidates: Vec<PathBuf> = match configured {
        Some(p) if p.components().count() > 1 || p.is_absolute() => vec![p.to_path_buf()],
        Some(bare) => path_dirs.iter().map(|d| d.join(bare)).collect(),
        None => path_dirs
            .iter()
            .map(|d| d.join(name))
            .chain(fallbacks.iter().cloned())
            .collect(),
    };
    for c in candidates {
        if is_executable_file(&c) {
            return Located::Found(c);
        }
        searched.push(c);
    }
    Located::Missing { searched }
}

/// A cheap identity of a binary, to notice upgrades between periodic checks: device, inode,
/// mtime in ns (a same-size binary replaced within the same second, its inode reused, is
/// still another), size.
pub fn stamp(p: &Path) -> Option<(u64, u64, i64, u64)> {
    let m = std::fs::metadata(p).ok()?;
    let mtime_ns = m
        .mtime()
        .saturating_mul(1_000_000_000)
        .saturating_add(m.mtime_nsec());
    Some((m.dev(), m.ino(), mtime_ns, m.size()))
}

#[derive(Debug, Clone, PartialEq)]
pub struct Fingerprint {
    pub health: HealthState,
    pub description: String,
    pub attributes: BTreeMap<String, String>,
}

impl Fingerprint {
    fn undetected(description: String) -> Self {
        Self {
            health: HealthState::Undetected,
            description,
            attributes: BTreeMap::new(),
        }
    }

    pub fn to_proto(&self) -> FingerprintResponse {
        FingerprintResponse {
            attributes: self
                .attributes
                .iter()
                .map(|(k, v)| {
                    (
                        k.clone(),
                        Attribute {
                            value: Some(attribute::Value::StringVal(v.clone())),
                            unit: String::new(),
                        },
                    )
                })
                .collect(),
            health: self.health as i32,
            health_description: self.description.clone(),
            // Never set: Nomad >= 1.10.9 turns a non-empty `err` into its own generic
            // "failed to fingerprint driver" and drops our description, which names the fix.
            err: String::new(),
        }
    }
}

/// `elide --version` prints one bare version line, e.g. `1.0.0-beta10` or `1.0-dev-20485`.
pub fn parse_version(stdout: &str) -> Option<String> {
    let line = stdout.lines().map(str::trim).find(|l| !l.is_empty())?;
    let line = line.strip_prefix('v').unwrap_or(line);
    let mut parts = line.splitn(2, '-');
    let core = parts.next()?;
    let nums: Vec<&str> = core.split('.').collect();
    if !(2..=3).contains(&nums.len())
        || nums
            .iter()
            .any(|n| n.is_empty() || !n.chars().all(|c| c.is_ascii_digit()))
    {
        return None;
    }
    if let Some(pre) = parts.next() {
        if pre.is_empty()
            || !pre
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-')
        {
            return None;
        }
    }
    Some(line.to_owned())
}

/// Picks `Platform:` and `Languages:` out of `elide info`.
pub fn parse_info(stdout: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for line in stdout.lines() {
        if let Some(v) = line.strip_prefix("Languages:") {
            let langs: Vec<String> = v
                .split(',')
                .map(|s| s.trim().to_ascii_lowercase())
                .filter(|s| !s.is_empty())
                .collect();
            out.insert("languages".to_owned(), langs.join(","));
        } else if let Some(v) = line.strip_prefix("Platform:") {
            out.insert("platform".to_owned(), v.trim().to_owned());
        }
    }
    out
}

/// The environment Elide is probed with: no colour, a UTF-8 locale, a PATH, and a writable
/// HOME; cwd `/` so a stray `.elideversion` cannot trigger a download.
fn probe_command(bin: &Path, args: &[&str]) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(bin);
    cmd.args(args)
        .env_clear()
        .env("NO_COLOR", "1")
        .env("LANG", "C.UTF-8")
        .env(
            "PATH",
            std::env::var("PATH").unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".into()),
        )
        .env(
            "HOME",
            std::env::var("HOME").unwrap_or_else(|_| "/root".into()),
        )
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

async fn run_probe(bin: &Path, args: &[&str], timeout: Duration) -> Result<String, String> {
    let shown = format!("`{} {}`", bin.display(), args.join(" "));
    let child = probe_command(bin, args)
        .spawn()
        .map_err(|e| format!("{shown} could not be started: {e}"))?;
    match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Err(_) => Err(format!(
            "{shown} did not finish within {}s; check the Elide install or raise version_timeout",
            timeout.as_secs_f64()
        )),
        Ok(Err(e)) => Err(format!("{shown} failed: {e}")),
        Ok(Ok(out)) if !out.status.success() => {
            let err = String::from_utf8_lossy(&out.stderr);
            let err = err.trim();
            let tail: String = err
                .chars()
                .rev()
                .take(300)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            Err(format!("{shown} exited with {}: {tail}", out.status))
        }
        Ok(Ok(out)) => Ok(String::from_utf8_lossy(&out.stdout).into_owned()),
    }
}

/// The binaries the current config points at (or their absence).
pub struct Binaries {
    pub elide: Located,
    pub executor: Located,
}

pub fn locate_binaries(cfg: &PluginConfig) -> Binaries {
    let path = std::env::var("PATH").ok();
    let home = std::env::var("HOME").ok();
    let exe = std::env::current_exe().ok();
    Binaries {
        elide: locate(
            cfg.elide_binary.as_deref(),
            "elide",
            path.as_deref(),
            &default_elide_locations(home.as_deref()),
        ),
        executor: locate(
            cfg.executor_binary.as_deref(),
            "elide-executor",
            path.as_deref(),
            &default_executor_locations(exe.as_deref()),
        ),
    }
}

/// The places a binary was looked for, for error messages.
pub fn searched_list(searched: &[PathBuf]) -> String {
    searched
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The shim's version and API level from `elide-executor --version`, probed once per binary
/// (path, inode, mtime, size): the shim only changes when it is reinstalled.
async fn executor_version(bin: &Path, timeout: Duration) -> Result<(String, u32), String> {
    type Probe = (
        Option<(u64, u64, i64, u64)>,
        PathBuf,
        Result<(String, u32), String>,
    );
    static LAST: std::sync::Mutex<Option<Probe>> = std::sync::Mutex::new(None);
    let now = stamp(bin);
    if let Some((s, p, r)) = common::sync::lock(&LAST).as_ref() {
        if *s == now && now.is_some() && p == bin {
            return r.clone();
        }
    }
    let result = run_probe(bin, &["--version"], timeout)
        .await
        .and_then(|out| {
            common::shim_api::parse_version_line(&out).ok_or_else(|| {
                format!(
                    "`{} --version` printed {:?}, which is not an elide-executor version; is executor_binary really elide-executor?",
                    bin.display(),
                    out.trim().chars().take(80).collect::<String>()
                )
            })
        });
    *common::sync::lock(&LAST) = Some((now, bin.to_path_buf(), result.clone()));
    result
}

/// New tasks run on the installed shim: it must speak at least this plugin's API level (an
/// older shim would not understand what this plugin asks of it). Running tasks are not
/// affected: they keep the shim they were started with.
pub fn executor_too_old(bin: &Path, version: &str, level: u32) -> Option<String> {
    use common::shim_api::API_LEVEL;
    (level < API_LEVEL).then(|| {
        format!(
            "elide-executor {} is version {version} (shim API level {level}), older than this plugin ({}, level {API_LEVEL}): install the elide-executor of the same release (the package installs both) or fix executor_binary",
            bin.display(),
            crate::VERSION
        )
    })
}

/// Why a binary may not be run by root (the fingerprint runs Elide and the shim as root,
/// outside any sandbox): the binary and every directory above it, after resolving symlinks,
/// must belong to root (or to the plugin's own user) and be writable by no one else, or a
/// task or local user could swap in a program of their own. A sticky root-owned directory
/// (`/tmp`) is accepted above the binary's own directory: no one else can rename or replace
/// what root made in it. Returns the canonical path.
pub fn trusted(path: &Path) -> Result<PathBuf, FieldError> {
    check_trusted(path).map_err(FieldError::value)
}

fn check_trusted(path: &Path) -> Result<PathBuf, String> {
    let canonical = std::fs::canonicalize(path)
        .map_err(|e| format!("cannot resolve {}: {e}", path.display()))?;
    let euid = nix::unistd::geteuid().as_raw();
    let meta = std::fs::metadata(&canonical)
        .map_err(|e| format!("cannot stat {}: {e}", canonical.display()))?;
    if !meta.is_file() || meta.permissions().mode() & 0o111 == 0 {
        return Err(format!("{} is not an executable file", canonical.display()));
    }
    let shown = if canonical == path {
        canonical.display().to_string()
    } else {
        format!("{} (resolved to {})", path.display(), canonical.display())
    };
    for (depth, p) in canonical.ancestors().enumerate() {
        let m = std::fs::symlink_metadata(p)
            .map_err(|e| format!("cannot stat {}: {e}", p.display()))?;
        let mode = m.permissions().mode();
        let sticky_above = depth >= 2 && m.is_dir() && mode & 0o1000 != 0;
        let problem = if m.file_type().is_symlink() {
            Some("is a symlink".to_owned())
        } else if m.uid() != 0 && m.uid() != euid {
            Some(format!("is owned by uid {}, not root", m.uid()))
        } else if mode & 0o022 != 0 && !(sticky_above && m.uid() == 0) {
            Some(format!(
                "is {} (mode {:04o})",
                if mode & 0o002 != 0 {
                    "world-writable"
                } else {
                    "group-writable"
                },
                mode & 0o7777
            ))
        } else {
            None
        };
        if let Some(problem) = problem {
            return Err(format!(
                "{shown} is not safe to run as root: {} {problem}, so someone other than root could replace the program; make every directory up to / and the binary owned by root and not writable by group or others (chown root; chmod go-w {}), or install it elsewhere",
                p.display(),
                p.display()
            ));
        }
    }
    Ok(canonical)
}

/// An operator-listed Elide binary that passed [`trusted`] and printed its version.
#[derive(Debug, Clone, PartialEq)]
pub struct Probed {
    /// The canonical path (what runs).
    pub path: PathBuf,
    pub version: String,
    pub stamp: Option<(u64, u64, i64, u64)>,
    /// What `elide info` gave (the default binary only), kept with the version: the same
    /// binary prints the same, and a restarted agent's first fingerprint, which Nomad waits
    /// for before it restores any task, then needs no Elide process. None: not probed yet,
    /// or the probe failed (tried again next time).
    pub info: Option<BTreeMap<String, String>>,
}

/// The Elide binaries the last fingerprint checked: the default (`elide_binary` or found)
/// and the named `elide_versions`. StartTask takes the version of the binary a task runs
/// from here.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Elides {
    pub default: Option<Probed>,
    pub versions: BTreeMap<String, Probed>,
}

impl Elides {
    /// The version recorded for `canonical`, if the binary has not changed since.
    pub fn version_of(&self, canonical: &Path) -> Option<String> {
        self.probed_of(canonical).map(|p| p.version.clone())
    }

    /// What was recorded for `canonical`, if the binary has not changed since.
    fn probed_of(&self, canonical: &Path) -> Option<&Probed> {
        let now = stamp(canonical);
        self.default
            .iter()
            .chain(self.versions.values())
            .find(|p| p.path == canonical && p.stamp == now && now.is_some())
    }
}

/// Checks `configured` with [`trusted`] and runs `--version` on the canonical path, unless
/// `previous` already probed the same unchanged binary.
async fn probe_elide(
    configured: &Path,
    what: &str,
    timeout: Duration,
    previous: &Elides,
) -> Result<Probed, String> {
    let path = trusted(configured).map_err(|e| e.within(what).to_string())?;
    if let Some(p) = previous.probed_of(&path) {
        return Ok(p.clone());
    }
    let stamp_before = stamp(&path);
    let out = run_probe(&path, &["--version"], timeout)
        .await
        .map_err(|e| format!("{what}: {e}"))?;
    let version = parse_version(&out).ok_or_else(|| {
        format!(
            "{what}: `{} --version` printed {:?}, which is not an Elide version; is it really Elide?",
            path.display(),
            out.trim().chars().take(80).collect::<String>()
        )
    })?;
    Ok(Probed {
        path,
        version,
        stamp: stamp_before,
        info: None,
    })
}

/// The binaries whose changes trigger a new fingerprint: the default Elide, the named ones
/// and the shim.
pub fn watched(cfg: &PluginConfig) -> Vec<PathBuf> {
    let bins = locate_binaries(cfg);
    [bins.elide, bins.executor]
        .into_iter()
        .filter_map(|l| match l {
            Located::Found(p) => Some(p),
            Located::Missing { .. } => None,
        })
        .chain(cfg.elide_versions.values().cloned())
        .collect()
}

/// Full detection: locate, check who could have written each binary, run `--version`
/// (bounded; once per binary while it does not change: `previous` holds what the last
/// detection probed), `info` (best effort). Returns what it checked, for StartTask.
pub async fn detect_elides(cfg: &PluginConfig, previous: &Elides) -> (Fingerprint, Elides) {
    let mut elides = Elides::default();
    if !cfg.enabled {
        return (
            Fingerprint::undetected("disabled in the plugin config (enabled = false)".to_owned()),
            elides,
        );
    }
    let bins = locate_binaries(cfg);
    let elide = match bins.elide {
        Located::Found(p) => p,
        Located::Missing { searched } => {
            let hint = if cfg.elide_binary.is_some() {
                "fix elide_binary in the plugin config"
            } else {
                "install Elide or set elide_binary in the plugin config"
            };
            return (
                Fingerprint::undetected(format!(
                    "Elide not found (searched {}); {hint}",
                    searched_list(&searched)
                )),
                elides,
            );
        }
    };
    let mut attributes = BTreeMap::new();
    attributes.insert("driver.elide.path".to_owned(), elide.display().to_string());
    let unhealthy = |description: String, attributes: BTreeMap<String, String>| Fingerprint {
        health: HealthState::Unhealthy,
        description,
        attributes,
    };
    let mut probed = match probe_elide(&elide, "elide_binary", cfg.version_timeout, previous).await
    {
        Ok(p) => p,
        Err(e) => return (unhealthy(e, attributes), elides),
    };
    attributes.insert("driver.elide.version".to_owned(), probed.version.clone());
    if probed.info.is_none() {
        if let Ok(info) = run_probe(&probed.path, &["info"], cfg.version_timeout).await {
            probed.info = Some(parse_info(&info));
        }
    }
    for (k, v) in probed.info.iter().flatten() {
        attributes.insert(format!("driver.elide.{k}"), v.clone());
    }
    elides.default = Some(probed);
    for (name, path) in &cfg.elide_versions {
        let what = format!("elide_versions.{name}");
        if !is_executable_file(path) {
            let e = format!(
                "{what}: {} does not exist or is not executable; install that Elide or remove it from elide_versions",
                path.display()
            );
            return (unhealthy(e, attributes), elides);
        }
        match probe_elide(path, &what, cfg.version_timeout, previous).await {
            Ok(p) => {
                attributes.insert(format!("driver.elide.version.{name}"), p.version.clone());
                elides.versions.insert(name.clone(), p);
            }
            Err(e) => return (unhealthy(e, attributes), elides),
        }
    }
    if !cfg.elide_versions.is_empty() {
        let names: Vec<&str> = cfg.elide_versions.keys().map(String::as_str).collect();
        attributes.insert("driver.elide.versions".to_owned(), names.join(","));
    }
    attributes.insert(
        "driver.elide.plugin_version".to_owned(),
        crate::VERSION.to_owned(),
    );
    attributes.insert(
        "driver.elide.plugin_revision".to_owned(),
        crate::REVISION.to_owned(),
    );
    let fp = match bins.executor {
        Located::Found(p) => {
            attributes.insert("driver.elide.executor".to_owned(), p.display().to_string());
            if let Err(e) = trusted(&p) {
                return (unhealthy(format!("executor_binary: {e}"), attributes), elides);
            }
            match executor_version(&p, cfg.version_timeout).await {
                Ok((version, level)) => {
                    attributes.insert("driver.elide.executor_version".to_owned(), version.clone());
                    attributes.insert(
                        "driver.elide.executor_api_level".to_owned(),
                        level.to_string(),
                    );
                    match executor_too_old(&p, &version, level) {
                        Some(description) => unhealthy(description, attributes),
                        None => Fingerprint {
                            health: HealthState::Healthy,
                            description: "Healthy".to_owned(),
                            attributes,
                        },
                    }
                }
                Err(description) => unhealthy(description, attributes),
            }
        }
        Located::Missing { searched } => unhealthy(
            format!(
                "elide-executor (the per-task shim) not found (searched {}); install it or set executor_binary in the plugin config",
                searched_list(&searched)
            ),
            attributes,
        ),
    };
    (fp, elides)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse_like_the_real_cli_prints_them() {
        assert_eq!(
            parse_version("1.0.0-beta10\n").as_deref(),
            Some("1.0.0-beta10")
        );
        assert_eq!(
            parse_version("1.0.0-beta11-rc3").as_deref(),
            Some("1.0.0-beta11-rc3")
        );
        assert_eq!(
            parse_version("1.0-dev-20485").as_deref(),
            Some("1.0-dev-20485")
        );
        assert_eq!(parse_version("\n  1.2.3  \n").as_deref(), Some("1.2.3"));
        assert_eq!(parse_version("Welcome to the REPL"), None);
        assert_eq!(parse_version(""), None);
        assert_eq!(parse_version("1"), None);
    }

    #[test]
    fn unhealthy_is_reported_through_health_never_err() {
        // Nomad 2.0 replaces the description with its own text when `err` is set.
        let fp = Fingerprint::undetected("Elide not found; install it".into());
        let p = fp.to_proto();
        assert_eq!(p.health, HealthState::Undetected as i32);
        assert_eq!(p.health_description, "Elide not found; install it");
        assert!(p.err.is_empty());
    }

    #[test]
    fn info_yields_languages_and_platform() {
        let out = "Elide v1.0.0-beta10 (RELEASE)\nEngine: x v1\nPlatform: Native\nLanguages: js, python, jvm\n\nLocale:\n";
        let m = parse_info(out);
        assert_eq!(m["languages"], "js,python,jvm");
        assert_eq!(m["platform"], "Native");
    }

    #[test]
    fn locate_prefers_config_then_path_then_fallbacks() {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("elide");
        std::fs::write(&bin, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
        let path = dir.path().display().to_string();
        assert_eq!(
            locate(None, "elide", Some(&path), &[]),
            Located::Found(bin.clone())
        );
        assert_eq!(
            locate(Some(&bin), "elide", None, &[]),
            Located::Found(bin.clone())
        );
        // A configured path that is missing is reported, with no silent fallback.
        let missing = dir.path().join("nope/elide");
        match locate(Some(&missing), "elide", Some(&path), &[]) {
            Located::Missing { searched } => assert_eq!(searched, vec![missing]),
            other => panic!("{other:?}"),
        }
        // Non-executable files do not count.
        let plain = dir.path().join("plain");
        std::fs::write(&plain, "").unwrap();
        assert!(matches!(
            locate(None, "x", None, &[plain]),
            Located::Missing { .. }
        ));
    }

    fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p
    }

    #[tokio::test]
    async fn the_shim_version_and_level_come_from_its_version_line() {
        let dir = tempfile::tempdir().unwrap();
        let t = Duration::from_secs(10);
        let current = script(
            dir.path(),
            "new",
            &format!(
                "echo '{}'",
                common::shim_api::version_line("elide-executor", "0.3.0+b", "abc")
            ),
        );
        assert_eq!(
            executor_version(&current, t).await,
            Ok(("0.3.0+b".to_owned(), common::shim_api::API_LEVEL))
        );
        // A shim from before the level was printed speaks level 1.
        let old = script(dir.path(), "old", "echo 'elide-executor 0.0.9'");
        assert_eq!(executor_version(&old, t).await, Ok(("0.0.9".to_owned(), 1)));
        let wrong = script(dir.path(), "wrong", "echo 'Usage: something else'");
        let e = executor_version(&wrong, t).await.unwrap_err();
        assert!(e.contains("not an elide-executor version"), "{e}");
        let broken = script(dir.path(), "broken", "echo boom >&2; exit 3");
        let e = executor_version(&broken, t).await.unwrap_err();
        assert!(e.contains("boom"), "{e}");
    }

    #[test]
    fn an_installed_shim_older_than_the_plugin_makes_the_node_unhealthy() {
        let bin = Path::new("/usr/libexec/nomad-driver-elide/elide-executor");
        let level = common::shim_api::API_LEVEL;
        assert_eq!(executor_too_old(bin, "9.9.9", level), None);
        assert_eq!(executor_too_old(bin, "9.9.9", level + 1), None);
        let msg = executor_too_old(bin, "0.0.1", level - 1).unwrap();
        assert!(
            msg.contains("0.0.1") && msg.contains("same release") && msg.contains(crate::VERSION),
            "{msg}"
        );
    }

    #[test]
    fn executor_is_never_looked_for_in_the_plugin_dir_top_level() {
        let locs =
            default_executor_locations(Some(Path::new("/opt/nomad/plugins/nomad-driver-elide")));
        assert!(locs
            .iter()
            .all(|p| p.parent() != Some(Path::new("/opt/nomad/plugins"))));
    }

    /// A shim of this release, as far as its `--version` line tells.
    fn current_shim(dir: &Path) -> PathBuf {
        script(
            dir,
            "elide-executor",
            &format!(
                "echo '{}'",
                common::shim_api::version_line("elide-executor", crate::VERSION, "x")
            ),
        )
    }

    /// A dir under the workspace's target dir: root's, no group/other write bit above it
    /// (unlike /tmp).
    fn trusted_dir() -> tempfile::TempDir {
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
        let base = manifest
            .parent()
            .unwrap_or(manifest)
            .join("target/test-tmp");
        std::fs::create_dir_all(&base).unwrap();
        std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o755)).unwrap();
        tempfile::tempdir_in(base).unwrap()
    }

    fn chmod(p: &Path, mode: u32) {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    /// Item 1: root runs only binaries no one else could have replaced: the binary and every
    /// directory up to / (symlinks resolved) root's and not group/world-writable; a sticky
    /// root dir is accepted above the binary's own directory only.
    #[test]
    fn only_binaries_no_one_else_can_replace_are_trusted() {
        let dir = trusted_dir();
        chmod(dir.path(), 0o755);
        let install = dir.path().join("elide-1.0");
        std::fs::create_dir(&install).unwrap();
        chmod(&install, 0o755);
        let bin = script(&install, "elide", "echo 1.0.0");
        assert_eq!(trusted(&bin).unwrap(), std::fs::canonicalize(&bin).unwrap());
        // Through a symlink: the real path is what is checked and returned.
        let link = dir.path().join("current");
        std::os::unix::fs::symlink(&install, &link).unwrap();
        assert_eq!(
            trusted(&link.join("elide")).unwrap(),
            std::fs::canonicalize(&bin).unwrap()
        );
        for (mode, want) in [
            (0o777, "world-writable (mode 0777)"),
            (0o775, "group-writable (mode 0775)"),
            (0o1777, "world-writable (mode 1777)"),
        ] {
            chmod(&install, mode);
            let e = trusted(&link.join("elide")).unwrap_err().message;
            assert!(
                e.contains(&format!("{} is {want}", install.display()))
                    && e.contains("not safe to run as root")
                    && e.contains("resolved to")
                    && e.contains("chmod go-w"),
                "{e}"
            );
        }
        chmod(&install, 0o755);
        chmod(&bin, 0o757);
        assert!(trusted(&bin)
            .unwrap_err()
            .message
            .contains("world-writable (mode 0757)"));
        chmod(&bin, 0o755);
        // A sticky world-writable dir two levels up (like /tmp) is fine; a plain one is not.
        chmod(dir.path(), 0o1777);
        assert!(trusted(&bin).is_ok());
        chmod(dir.path(), 0o777);
        assert!(trusted(&bin)
            .unwrap_err()
            .message
            .contains("world-writable (mode 0777)"));
        chmod(dir.path(), 0o755);
        // Someone else's binary.
        nix::unistd::chown(&bin, Some(nix::unistd::Uid::from_raw(65534)), None).unwrap();
        assert!(trusted(&bin)
            .unwrap_err()
            .message
            .contains("owned by uid 65534, not root"));
        assert!(trusted(&install.join("missing"))
            .unwrap_err()
            .message
            .starts_with("cannot resolve"));
    }

    /// `elide --version` and `elide info` run once per binary while it stays the same file:
    /// a later fingerprint (every period, or a restarted agent's new stream) answers from
    /// what the last one probed, attributes included; a changed binary is probed again.
    #[tokio::test]
    async fn elide_is_run_once_per_unchanged_binary() {
        let dir = trusted_dir();
        let runs = dir.path().join("runs");
        let install = dir.path().join("elide");
        std::fs::create_dir(&install).unwrap();
        let body = |version: &str| {
            format!(
                "echo \"$1\" >> {}\nif [ \"$1\" = info ]; then printf 'Platform: Native\\nLanguages: python\\n'; else echo {version}; fi",
                runs.display()
            )
        };
        let bin = script(&install, "elide", &body("1.0.0-beta10"));
        let shim = current_shim(dir.path());
        let cfg = PluginConfig {
            elide_binary: Some(bin.clone()),
            executor_binary: Some(shim),
            ..Default::default()
        };
        let runs_so_far = || std::fs::read_to_string(&runs).unwrap_or_default();
        let (fp, first) = detect_elides(&cfg, &Elides::default()).await;
        assert_eq!(fp.health, HealthState::Healthy, "{}", fp.description);
        assert_eq!(runs_so_far(), "--version\ninfo\n");
        let (fp, again) = detect_elides(&cfg, &first).await;
        assert_eq!(runs_so_far(), "--version\ninfo\n", "Elide was run again");
        assert_eq!(fp.attributes["driver.elide.languages"], "python");
        assert_eq!(fp.attributes["driver.elide.version"], "1.0.0-beta10");
        assert_eq!(again, first);

        // An upgrade in place (another size and mtime): probed again.
        std::fs::remove_file(&bin).unwrap();
        script(&install, "elide", &body("1.1.0"));
        let (fp, _) = detect_elides(&cfg, &again).await;
        assert_eq!(runs_so_far(), "--version\ninfo\n--version\ninfo\n");
        assert_eq!(fp.attributes["driver.elide.version"], "1.1.0");
    }

    /// The fingerprint never runs an Elide in a directory others can write: the node is
    /// unhealthy, naming the path and the fix; each listed version is checked and probed, and
    /// its version becomes an attribute.
    #[tokio::test]
    async fn the_fingerprint_refuses_binaries_others_could_replace() {
        let dir = trusted_dir();
        let ran = dir.path().join("ran");
        let install = dir.path().join("elide");
        std::fs::create_dir(&install).unwrap();
        let bin = script(
            &install,
            "elide",
            &format!("touch {}; echo 1.0.0-beta10", ran.display()),
        );
        let v11 = dir.path().join("v11");
        std::fs::create_dir(&v11).unwrap();
        let bin11 = script(&v11, "elide", "echo 1.1.0");
        let shim = current_shim(dir.path());
        let cfg = PluginConfig {
            elide_binary: Some(bin.clone()),
            executor_binary: Some(shim),
            elide_versions: [("1.1".to_owned(), bin11.clone())].into_iter().collect(),
            ..Default::default()
        };
        let (fp, elides) = detect_elides(&cfg, &Elides::default()).await;
        assert_eq!(fp.health, HealthState::Healthy, "{}", fp.description);
        assert_eq!(fp.attributes["driver.elide.version"], "1.0.0-beta10");
        assert_eq!(fp.attributes["driver.elide.version.1.1"], "1.1.0");
        assert_eq!(fp.attributes["driver.elide.versions"], "1.1");
        assert_eq!(
            elides
                .version_of(&std::fs::canonicalize(&bin11).unwrap())
                .as_deref(),
            Some("1.1.0")
        );
        std::fs::remove_file(&ran).unwrap();

        chmod(&install, 0o777);
        let (fp, _) = detect_elides(&cfg, &Elides::default()).await;
        assert_eq!(fp.health, HealthState::Unhealthy);
        assert!(
            fp.description.starts_with("elide_binary: ")
                && fp.description.contains("world-writable")
                && fp.description.contains(&install.display().to_string()),
            "{}",
            fp.description
        );
        assert!(!ran.exists(), "the unsafe binary was run");
        chmod(&install, 0o755);
        chmod(&v11, 0o775);
        let (fp, _) = detect_elides(&cfg, &Elides::default()).await;
        assert_eq!(fp.health, HealthState::Unhealthy);
        assert!(
            fp.description.starts_with("elide_versions.1.1: "),
            "{}",
            fp.description
        );
    }
}
