//! Linux capabilities of a task, with Nomad exec's semantics: the plugin's `allow_caps`
//! (default: [`DRIVER_DEFAULTS`], Nomad's list without `setfcap`), the task's `cap_add` /
//! `cap_drop`, and the set the runtime keeps: `(defaults ∩ allow_caps) − cap_drop ∪ cap_add`,
//! where every `cap_add` must be allowed. `"all"` means every capability (in `allow_caps`,
//! `cap_add`; in `cap_drop` it empties the set before `cap_add` is applied). Names are
//! case-insensitive, with or without `CAP_`. The executor applies the set (docs/executor.md,
//! "Sandbox").

use crate::error::FieldError;
use caps::Capability;
use std::collections::BTreeSet;
use std::str::FromStr;

/// Nomad's default capabilities (`drivers/shared/capabilities` in Nomad): Docker's defaults
/// without `net_raw`. Not the driver's defaults (see [`DRIVER_DEFAULTS`]); kept to document
/// (and test) how the two differ.
pub const NOMAD_DEFAULTS: &[&str] = &[
    "audit_write",
    "chown",
    "dac_override",
    "fowner",
    "fsetid",
    "kill",
    "mknod",
    "net_bind_service",
    "setfcap",
    "setgid",
    "setpcap",
    "setuid",
    "sys_chroot",
];

/// The driver's default capabilities: the default of `allow_caps`, and what a root task keeps
/// by default. Nomad's list ([`NOMAD_DEFAULTS`]) without `setfcap`: with CAP_SETFCAP a root
/// task can give a copy of a program in its task dir a file capability
/// (`security.capability`, e.g. `cap_setuid+ep`); the task dir is on the host's disk, where
/// `nosuid` does not hold, so a local account that runs that file gets the capability (and
/// with CAP_SETUID, root). Setting file capabilities takes the operator's `allow_caps` and
/// the job's `cap_add` (docs/driver.md, "Setuid files").
pub const DRIVER_DEFAULTS: &[&str] = &[
    "audit_write",
    "chown",
    "dac_override",
    "fowner",
    "fsetid",
    "kill",
    "mknod",
    "net_bind_service",
    "setgid",
    "setpcap",
    "setuid",
    "sys_chroot",
];

/// The word for "every capability".
pub const ALL: &str = "all";

/// A capability name a config gave, normalised (`chown`, `sys_admin`, or `all`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct CapName(String);

impl CapName {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn is_all(&self) -> bool {
        self.0 == ALL
    }

    /// The capabilities this name stands for.
    fn expand(&self) -> BTreeSet<u8> {
        if self.is_all() {
            return caps::all().into_iter().map(|c| c.index()).collect();
        }
        // Parsed before construction: always a known capability.
        Capability::from_str(&caps::to_canonical(&self.0))
            .map(|c| BTreeSet::from([c.index()]))
            .unwrap_or_default()
    }
}

impl std::fmt::Display for CapName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Parses one name: `CAP_CHOWN`, `cap_chown`, `chown` or `all`; the error says what is valid.
pub fn parse_name(name: &str) -> Result<CapName, FieldError> {
    let trimmed = name.trim();
    let lower = trimmed.to_ascii_lowercase();
    let short = lower.strip_prefix("cap_").unwrap_or(&lower);
    if short == ALL {
        return Ok(CapName(ALL.to_owned()));
    }
    match Capability::from_str(&caps::to_canonical(short)) {
        Ok(_) if !short.is_empty() => Ok(CapName(short.to_owned())),
        _ => Err(FieldError::value(format!(
            "{name:?} is not a Linux capability; use names such as \"chown\" or \"net_bind_service\" (capabilities(7), with or without CAP_), or \"all\""
        ))),
    }
}

/// Parses a list of names (see [`parse_name`]); duplicates are kept once. The error's field
/// is the bad name's index (`[1]`).
pub fn parse_names(names: &[String]) -> Result<Vec<CapName>, FieldError> {
    let mut out: Vec<CapName> = Vec::new();
    for (i, n) in names.iter().enumerate() {
        let c = parse_name(n).map_err(|e| e.within(&format!("[{i}]")))?;
        if !out.contains(&c) {
            out.push(c);
        }
    }
    Ok(out)
}

/// The driver's defaults ([`DRIVER_DEFAULTS`]): the default `allow_caps` and a root task's
/// default set.
pub fn driver_defaults() -> Vec<CapName> {
    DRIVER_DEFAULTS
        .iter()
        .map(|n| CapName((*n).to_owned()))
        .collect()
}

fn union(names: &[CapName]) -> BTreeSet<u8> {
    names.iter().flat_map(CapName::expand).collect()
}

/// `cap_add` asked for capabilities `allow_caps` does not allow (sorted, lower-case).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the driver does not allow the capabilities {}: the plugin's allow_caps is [{}]; remove them from cap_add or ask the operator to add them to allow_caps", .denied.join(", "), .allowed.join(", "))]
pub struct NotAllowed {
    pub denied: Vec<String>,
    pub allowed: Vec<String>,
}

/// The capabilities the runtime keeps, as kernel names (`CAP_CHOWN`), ordered by number.
pub fn calculate(
    allow: &[CapName],
    add: &[CapName],
    drop: &[CapName],
) -> Result<Vec<String>, NotAllowed> {
    let allowed = union(allow);
    let wanted = union(add);
    let denied: Vec<u8> = wanted.difference(&allowed).copied().collect();
    if !denied.is_empty() {
        return Err(NotAllowed {
            denied: denied.into_iter().map(short_name).collect(),
            allowed: allow.iter().map(|c| c.to_string()).collect(),
        });
    }
    let defaults = union(&driver_defaults());
    let mut set: BTreeSet<u8> = defaults.intersection(&allowed).copied().collect();
    if drop.iter().any(CapName::is_all) {
        set.clear();
    } else {
        for d in union(drop) {
            set.remove(&d);
        }
    }
    set.extend(wanted);
    Ok(set.into_iter().map(kernel_name).collect())
}

/// What a task user other than root keeps (kernel names, ordered by number): only what the
/// job named in `cap_add` — the default set is for root. A non-root user with capabilities
/// could `setuid(0)` (CAP_SETUID) or walk around the operator's `denied_host_uids`; Nomad's
/// exec hands it the whole default set through the ambient set. Call after [`calculate`]
/// accepted `add` (every name in `allow_caps`).
pub fn for_non_root(add: &[CapName]) -> Vec<String> {
    union(add).into_iter().map(kernel_name).collect()
}

fn by_index(i: u8) -> Option<Capability> {
    caps::all().into_iter().find(|c| c.index() == i)
}

fn kernel_name(i: u8) -> String {
    by_index(i)
        .map(|c| c.to_string())
        .unwrap_or_else(|| format!("CAP_{i}"))
}

fn short_name(i: u8) -> String {
    kernel_name(i)
        .trim_start_matches("CAP_")
        .to_ascii_lowercase()
}

/// Parses kernel names back (what the executor applies); unknown names are an error.
pub fn from_kernel_names(names: &[String]) -> Result<Vec<Capability>, FieldError> {
    names
        .iter()
        .map(|n| {
            Capability::from_str(n).map_err(|_| {
                FieldError::value(format!("{n:?} is not a capability this executor knows"))
            })
        })
        .collect()
}

/// `CapEff`/`CapBnd`-style bit mask of kernel names (for tests and diagnostics).
pub fn mask_of(names: &[String]) -> u64 {
    from_kernel_names(names)
        .unwrap_or_default()
        .iter()
        .fold(0, |m, c| m | c.bitmask())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[&str]) -> Vec<CapName> {
        parse_names(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn names_are_normalised_and_unknown_ones_refused() {
        for n in ["CAP_CHOWN", "cap_chown", "chown", " Chown "] {
            assert_eq!(parse_name(n).unwrap().as_str(), "chown");
        }
        assert!(parse_name("ALL").unwrap().is_all());
        assert!(parse_name("CAP_ALL").unwrap().is_all());
        for bad in ["", "cap_", "sys_admn", "CAP_FOO"] {
            let e = parse_name(bad).unwrap_err();
            assert!(e.message.contains("is not a Linux capability"), "{e}");
        }
        let e = parse_names(&["kill".into(), "nope".into()]).unwrap_err();
        assert_eq!(e.field, "[1]");
    }

    #[test]
    fn defaults_are_nomads_list_without_setfcap() {
        let nomad: Vec<&str> = NOMAD_DEFAULTS
            .iter()
            .copied()
            .filter(|c| *c != "setfcap")
            .collect();
        assert_eq!(DRIVER_DEFAULTS, nomad.as_slice());
        let set = calculate(&driver_defaults(), &[], &[]).unwrap();
        assert_eq!(set.len(), 12);
        assert!(!set.contains(&"CAP_SETFCAP".to_owned()));
        assert!(set.contains(&"CAP_CHOWN".to_owned()));
        assert!(!set.contains(&"CAP_NET_RAW".to_owned()));
        assert!(!set.contains(&"CAP_SYS_ADMIN".to_owned()));
        // Ordered by number.
        assert_eq!(set[0], "CAP_CHOWN");
    }

    #[test]
    fn exec_semantics_drop_then_add_and_all() {
        let allow = driver_defaults();
        assert_eq!(
            calculate(&allow, &names(&["kill", "chown"]), &names(&["all"])).unwrap(),
            ["CAP_CHOWN", "CAP_KILL"]
        );
        assert!(calculate(&allow, &[], &names(&["all"])).unwrap().is_empty());
        let set = calculate(&allow, &[], &names(&["chown", "CAP_KILL"])).unwrap();
        assert_eq!(set.len(), 10);
        assert!(!set.iter().any(|c| c == "CAP_KILL" || c == "CAP_CHOWN"));
        // allow_caps narrower than the defaults narrows the task's set too.
        assert_eq!(
            calculate(&names(&["kill"]), &[], &[]).unwrap(),
            ["CAP_KILL"]
        );
        // "all" in allow_caps permits any cap_add, but adds nothing by itself.
        let set = calculate(&names(&["all"]), &names(&["sys_admin"]), &[]).unwrap();
        assert_eq!(set.len(), 13);
        assert!(set.contains(&"CAP_SYS_ADMIN".to_owned()));
        let set = calculate(&names(&["all"]), &names(&["all"]), &[]).unwrap();
        assert_eq!(set.len(), caps::all().len());
    }

    #[test]
    fn setfcap_takes_the_operators_allow_caps_and_the_jobs_cap_add() {
        // By default a job cannot ask for it...
        let e = calculate(&driver_defaults(), &names(&["setfcap"]), &[]).unwrap_err();
        assert_eq!(e.denied, ["setfcap"]);
        // ...the operator allowing it does not hand it to every task...
        let mut allow = driver_defaults();
        allow.push(parse_name("setfcap").unwrap());
        let set = calculate(&allow, &[], &[]).unwrap();
        assert_eq!(set, calculate(&driver_defaults(), &[], &[]).unwrap());
        // ...only a job that names it in cap_add gets it.
        let set = calculate(&allow, &names(&["CAP_SETFCAP"]), &[]).unwrap();
        assert_eq!(set.len(), 13);
        assert!(set.contains(&"CAP_SETFCAP".to_owned()));
    }

    #[test]
    fn an_add_outside_allow_caps_names_it() {
        let e = calculate(
            &driver_defaults(),
            &names(&["sys_admin", "kill", "net_raw"]),
            &[],
        )
        .unwrap_err();
        assert_eq!(e.denied, ["net_raw", "sys_admin"]);
        let msg = e.to_string();
        assert!(
            msg.contains("does not allow the capabilities net_raw, sys_admin"),
            "{msg}"
        );
        assert!(msg.contains("allow_caps is [audit_write, chown,"), "{msg}");
        let e = calculate(&driver_defaults(), &names(&["all"]), &[]).unwrap_err();
        assert!(e.denied.contains(&"sys_admin".to_owned()));
    }

    #[test]
    fn a_non_root_user_keeps_only_what_cap_add_names() {
        assert!(for_non_root(&[]).is_empty());
        assert_eq!(
            for_non_root(&names(&["net_bind_service", "CAP_KILL"])),
            ["CAP_KILL", "CAP_NET_BIND_SERVICE"]
        );
        assert_eq!(for_non_root(&names(&["all"])).len(), caps::all().len());
    }

    #[test]
    fn kernel_names_round_trip_to_masks() {
        let set = calculate(&driver_defaults(), &[], &[]).unwrap();
        let caps = from_kernel_names(&set).unwrap();
        assert_eq!(caps.len(), set.len());
        // CAP_CHOWN is bit 0, CAP_KILL bit 5.
        assert_eq!(mask_of(&["CAP_CHOWN".into(), "CAP_KILL".into()]), 0b100001);
        assert!(from_kernel_names(&["chown".into()]).is_err());
    }
}
