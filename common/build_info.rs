//! Build script of the two binary crates (`driver/` and `executor/` point their `build` key
//! here): embeds the release version and the git revision, so `--version`, the fingerprint
//! attributes and the shim's Status all name the exact build.
//!
//! - `NDE_VERSION` overrides the version (default: the workspace version in Cargo.toml).
//!   `packaging/release` sets it for a release; the E2E upgrade test sets it to make a second
//!   build that differs only in its version. It must be usable as a Debian version.
//! - `NDE_GIT_REVISION` overrides the revision (default: `git rev-parse --short=12 HEAD`, or
//!   `unknown` outside a git checkout, e.g. when building from a source tarball).
//!
//! Both are read with `rerun-if-env-changed`, and the revision follows HEAD, so changing either
//! recompiles only these two crates, never their dependencies.
use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=NDE_VERSION");
    println!("cargo:rerun-if-env-changed=NDE_GIT_REVISION");
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap_or_default());

    let version = match std::env::var("NDE_VERSION") {
        Ok(v) if !v.trim().is_empty() => v.trim().to_owned(),
        _ => std::env::var("CARGO_PKG_VERSION").unwrap_or_default(),
    };
    if let Err(why) = check_version(&version) {
        panic!("NDE_VERSION={version:?} is not a usable release version: {why}");
    }
    let revision = match std::env::var("NDE_GIT_REVISION") {
        Ok(r) if !r.trim().is_empty() => r.trim().to_owned(),
        _ => git_revision(&manifest).unwrap_or_else(|| "unknown".to_owned()),
    };
    println!("cargo:rustc-env=NDE_BUILD_VERSION={version}");
    println!("cargo:rustc-env=NDE_BUILD_REVISION={revision}");
}

/// A Debian-compatible upstream version: starts with a digit; digits, letters and `.+~-`.
fn check_version(v: &str) -> Result<(), &'static str> {
    if !v.starts_with(|c: char| c.is_ascii_digit()) {
        return Err("it must start with a digit, e.g. 0.2.0 or 0.2.0+hotfix1");
    }
    if !v
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '+' | '~' | '-'))
    {
        return Err("only letters, digits and . + ~ - are allowed");
    }
    Ok(())
}

fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let s = String::from_utf8(out.stdout).ok()?.trim().to_owned();
    (!s.is_empty()).then_some(s)
}

/// The commit checked out, and rerun-if-changed on the files that move when it changes
/// (HEAD, the branch it points at, packed refs), in plain repositories and worktrees alike.
fn git_revision(dir: &Path) -> Option<String> {
    let rev = git(dir, &["rev-parse", "--short=12", "HEAD"])?;
    let abs = |p: String| {
        let p = PathBuf::from(p);
        if p.is_absolute() {
            p
        } else {
            dir.join(p)
        }
    };
    // Only files that exist: Cargo re-runs a script on every build while one is missing.
    let watch = |p: PathBuf| {
        if p.is_file() {
            println!("cargo:rerun-if-changed={}", p.display());
        }
    };
    if let Some(git_dir) = git(dir, &["rev-parse", "--git-dir"]).map(abs) {
        watch(git_dir.join("HEAD"));
    }
    if let Some(common) = git(dir, &["rev-parse", "--git-common-dir"]).map(abs) {
        watch(common.join("packed-refs"));
        if let Some(branch) = git(dir, &["symbolic-ref", "-q", "HEAD"]) {
            watch(common.join(branch));
        }
    }
    Some(rev)
}
