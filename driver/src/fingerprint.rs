//! Detecting Elide (and our shim) on the node, for the Fingerprint stream.
//!
//! Like the java driver, this shells out to the runtime (`elide --version`, `elide info`), but
//! only when the binaries change (path, inode, mtime, size) or once per `fingerprint_period`,
//! never on every tick.

use common::config::PluginConfig;
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

/// A cheap identity of a binary, to notice upgrades between periodic checks.
pub fn stamp(p: &Path) -> Option<(u64, u64, i64, u64)> {
    let m = std::fs::metadata(p).ok()?;
    Some((m.dev(), m.ino(), m.mtime(), m.size()))
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
    if let Ok(last) = LAST.lock() {
        if let Some((s, p, r)) = last.as_ref() {
            if *s == now && now.is_some() && p == bin {
                return r.clone();
            }
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
    if let Ok(mut last) = LAST.lock() {
        *last = Some((now, bin.to_path_buf(), result.clone()));
    }
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

/// Full detection: locate, run `--version` (bounded), `info` (best effort).
pub async fn detect(cfg: &PluginConfig) -> Fingerprint {
    if !cfg.enabled {
        return Fingerprint::undetected(
            "disabled in the plugin config (enabled = false)".to_owned(),
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
            return Fingerprint::undetected(format!(
                "Elide not found (searched {}); {hint}",
                searched_list(&searched)
            ));
        }
    };
    let mut attributes = BTreeMap::new();
    attributes.insert("driver.elide.path".to_owned(), elide.display().to_string());
    let version = match run_probe(&elide, &["--version"], cfg.version_timeout).await {
        Ok(out) => match parse_version(&out) {
            Some(v) => v,
            None => {
                return Fingerprint {
                    health: HealthState::Unhealthy,
                    description: format!(
                        "`{} --version` printed {:?}, which is not an Elide version; is elide_binary really Elide?",
                        elide.display(),
                        out.trim().chars().take(80).collect::<String>()
                    ),
                    attributes,
                }
            }
        },
        Err(e) => {
            return Fingerprint {
                health: HealthState::Unhealthy,
                description: e,
                attributes,
            }
        }
    };
    attributes.insert("driver.elide.version".to_owned(), version);
    if let Ok(info) = run_probe(&elide, &["info"], cfg.version_timeout).await {
        for (k, v) in parse_info(&info) {
            attributes.insert(format!("driver.elide.{k}"), v);
        }
    }
    attributes.insert(
        "driver.elide.plugin_version".to_owned(),
        crate::VERSION.to_owned(),
    );
    attributes.insert(
        "driver.elide.plugin_revision".to_owned(),
        crate::REVISION.to_owned(),
    );
    match bins.executor {
        Located::Found(p) => {
            attributes.insert("driver.elide.executor".to_owned(), p.display().to_string());
            match executor_version(&p, cfg.version_timeout).await {
                Ok((version, level)) => {
                    attributes.insert("driver.elide.executor_version".to_owned(), version.clone());
                    attributes.insert(
                        "driver.elide.executor_api_level".to_owned(),
                        level.to_string(),
                    );
                    if let Some(description) = executor_too_old(&p, &version, level) {
                        return Fingerprint {
                            health: HealthState::Unhealthy,
                            description,
                            attributes,
                        };
                    }
                }
                Err(description) => {
                    return Fingerprint {
                        health: HealthState::Unhealthy,
                        description,
                        attributes,
                    }
                }
            }
        }
        Located::Missing { searched } => {
            return Fingerprint {
                health: HealthState::Unhealthy,
                description: format!(
                    "elide-executor (the per-task shim) not found (searched {}); install it or set executor_binary in the plugin config",
                    searched_list(&searched)
                ),
                attributes,
            }
        }
    }
    Fingerprint {
        health: HealthState::Healthy,
        description: "Healthy".to_owned(),
        attributes,
    }
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
}
