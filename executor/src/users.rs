//! The task user: name or uid → uid, primary gid and supplementary groups (what
//! `initgroups` would set), resolved before fork.
//!
//! The shim is a statically linked binary (docs/performance.md), and static glibc cannot load
//! NSS modules reliably. So it reads `/etc/passwd` and `/etc/group` itself, like Go's
//! `os/user` without cgo; a user only NSS knows (LDAP, SSSD, …) is looked up with the
//! system's `getent` (a normal, dynamically linked program), which is then the one place
//! NSS runs.

use std::path::Path;
use std::process::{Command, Stdio};

/// A user's ids, as setgroups/setgid/setuid take them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    /// The primary group first, then every group that lists the user, without repeats.
    pub groups: Vec<u32>,
}

/// A `passwd` line: name, uid, primary gid.
fn passwd_entry(line: &str) -> Option<(&str, u32, u32)> {
    let mut f = line.split(':');
    let name = f.next()?;
    let _password = f.next()?;
    let uid = f.next()?.parse().ok()?;
    let gid = f.next()?.parse().ok()?;
    (!name.is_empty()).then_some((name, uid, gid))
}

/// Finds `user` (a name, or a numeric uid) in passwd-format text.
fn find_user(passwd: &str, user: &str) -> Option<(String, u32, u32)> {
    let by_uid: Option<u32> = user.parse().ok();
    passwd
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(passwd_entry)
        .find(|(name, uid, _)| match by_uid {
            Some(u) => *uid == u,
            None => *name == user,
        })
        .map(|(n, u, g)| (n.to_owned(), u, g))
}

/// The gids of the groups in group-format text that list `name` as a member.
fn member_of(group: &str, name: &str) -> Vec<u32> {
    group
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let mut f = l.split(':');
            let (_, _, gid, members) = (f.next()?, f.next()?, f.next()?, f.next()?);
            members
                .split(',')
                .any(|m| m.trim() == name)
                .then(|| gid.parse().ok())
                .flatten()
        })
        .collect()
}

fn credentials(name: String, uid: u32, gid: u32, extra: Vec<u32>) -> Credentials {
    let mut groups = vec![gid];
    for g in extra {
        if !groups.contains(&g) {
            groups.push(g);
        }
    }
    Credentials {
        name,
        uid,
        gid,
        groups,
    }
}

/// Resolves `user` from the files under `etc` (`passwd`, `group`).
fn from_files(etc: &Path, user: &str) -> Option<Credentials> {
    let passwd = std::fs::read_to_string(etc.join("passwd")).ok()?;
    let (name, uid, gid) = find_user(&passwd, user)?;
    let group = std::fs::read_to_string(etc.join("group")).unwrap_or_default();
    let extra = member_of(&group, &name);
    Some(credentials(name, uid, gid, extra))
}

/// `getent <args>`'s output, if it found something.
fn getent(args: &[&str]) -> Option<String> {
    let out = Command::new("getent")
        .args(args)
        .env_clear()
        .env("PATH", "/usr/bin:/bin:/usr/sbin:/sbin")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Whether `user` may be looked up: a numeric uid or a POSIX portable user name (letters,
/// digits, `.`, `_`, `-`, a final `$`), never starting with `-`, so no lookup tool takes it
/// for an option (`getent passwd --service=files` would answer root).
pub fn is_valid_name(user: &str) -> bool {
    let body = user.strip_suffix('$').unwrap_or(user);
    !body.is_empty()
        && user.len() <= 256
        && !user.starts_with('-')
        && body
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Resolves a user NSS knows but the files do not (`getent passwd`, `getent initgroups`).
fn from_nss(user: &str) -> Option<Credentials> {
    // "--" ends getent's options: a name is only ever a key.
    let passwd = getent(&["passwd", "--", user])?;
    let (name, uid, gid) = passwd.lines().find_map(passwd_entry)?;
    let name = name.to_owned();
    // `getent initgroups NAME` prints `NAME  gid gid …`.
    if !is_valid_name(&name) {
        return None;
    }
    let extra = getent(&["initgroups", "--", &name])
        .map(|l| {
            l.split_whitespace()
                .skip(1)
                .filter_map(|g| g.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    Some(credentials(name, uid, gid, extra))
}

/// The user's credentials: from /etc/passwd and /etc/group, else from NSS through `getent`.
/// A name that is not [`is_valid_name`] resolves to nothing.
pub fn lookup(user: &str) -> Option<Credentials> {
    if !is_valid_name(user) {
        return None;
    }
    from_files(Path::new("/etc"), user).or_else(|| from_nss(user))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "\
root:x:0:0:root:/root:/bin/bash
# a comment
nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin
app:x:1001:1001::/home/app:/bin/sh
broken:x:notanumber:1
";
    const GROUP: &str = "\
root:x:0:
app:x:1001:
docker:x:999:app,other
web:x:1002: other , app
nogroup:x:65534:
";

    fn etc() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("passwd"), PASSWD).unwrap();
        std::fs::write(d.path().join("group"), GROUP).unwrap();
        d
    }

    #[test]
    fn users_resolve_by_name_or_uid_with_their_groups() {
        let d = etc();
        let app = from_files(d.path(), "app").unwrap();
        assert_eq!(
            app,
            Credentials {
                name: "app".into(),
                uid: 1001,
                gid: 1001,
                groups: vec![1001, 999, 1002],
            }
        );
        assert_eq!(from_files(d.path(), "1001"), Some(app));
        let nobody = from_files(d.path(), "65534").unwrap();
        assert_eq!(
            (nobody.name.as_str(), nobody.groups.as_slice()),
            ("nobody", &[65534][..])
        );
        assert_eq!(from_files(d.path(), "ghost"), None);
        assert_eq!(from_files(d.path(), "broken"), None);
        assert_eq!(from_files(d.path(), "4242"), None);
    }

    #[test]
    fn the_real_system_agrees_with_getent_for_root() {
        let root = lookup("root").unwrap();
        assert_eq!((root.uid, root.gid), (0, 0));
        assert_eq!(lookup("0").unwrap().name, "root");
        assert_eq!(lookup("no-such-user-xyz"), None);
    }

    /// `getent passwd --service=files` lists every user, root first: a "user" that is an
    /// option must never reach getent, and names are passed after "--".
    #[test]
    fn option_like_names_resolve_to_nothing() {
        for bad in [
            "--service=files",
            "-s",
            "-",
            "a b",
            "a:b",
            "",
            "x$y",
            "$",
            "a/b",
        ] {
            assert!(!is_valid_name(bad), "{bad:?}");
            assert_eq!(lookup(bad), None, "{bad:?}");
        }
        for good in [
            "root",
            "nobody",
            "www-data",
            "svc_app.1",
            "MACHINE$",
            "1001",
        ] {
            assert!(is_valid_name(good), "{good:?}");
        }
        assert_eq!(from_nss("--service=files"), None);
    }
}
