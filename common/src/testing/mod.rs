//! Helpers for the workspace's tests (not used by the binaries).

/// The fake shim (feature `fake-shim`, on for the plugin's tests).
#[cfg(any(test, feature = "fake-shim"))]
pub mod fake_shim;

/// Whether a test that needs root may go on. As root: true. Otherwise the test cannot run:
/// under CI (`CI` set, as `.ci/run` does) or with `NDE_REQUIRE_ROOT` set (as `scripts/test`
/// does when it runs as root) that is a failure, never a silent pass; elsewhere (a developer
/// running `cargo test` as a normal user) it prints `SKIPPED (needs root): <why>` on stderr
/// and returns false, and the caller returns.
pub fn root_or_skip(why: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    let required = ["CI", "NDE_REQUIRE_ROOT"]
        .iter()
        .any(|v| std::env::var_os(v).is_some_and(|s| !s.is_empty()));
    assert!(
        !required,
        "this test needs root ({why}); CI and scripts/test run as root: run it with sudo"
    );
    eprintln!("SKIPPED (needs root): {why}");
    false
}
