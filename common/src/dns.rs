//! The task's DNS configuration: Nomad's `TaskConfig.dns` (the group's `network { dns {} }`
//! block) checked and rendered as the `/etc/resolv.conf` the sandbox shows the task, in the
//! format of Nomad's exec driver (`drivers/shared/resolvconf`): `search a b`, one
//! `nameserver X` per server, `options x y`. A list the job leaves empty comes from the host's
//! resolv.conf, as exec does it.

use crate::error::FieldError;
use serde::{Deserialize, Serialize};
use std::net::IpAddr;

/// Where resolvers read the configuration (and where the sandbox mounts the task's).
pub const RESOLV_CONF: &str = "/etc/resolv.conf";
/// What systemd-resolved's stub listens on; a host resolv.conf naming only it gets its
/// servers from [`RESOLVED_UPSTREAM`] (the stub is not reachable from a task's network
/// namespace).
const RESOLVED_STUB: &str = "127.0.0.53";
pub const RESOLVED_UPSTREAM: &str = "/run/systemd/resolve/resolv.conf";
/// The longest search domain or option (a DNS name is at most 253 characters).
const MAX_ENTRY: usize = 253;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsSpec {
    /// Name server IP addresses, in order.
    #[serde(default)]
    pub servers: Vec<String>,
    /// Search domains.
    #[serde(default)]
    pub searches: Vec<String>,
    /// Resolver options (`ndots:2`, `edns0`…).
    #[serde(default)]
    pub options: Vec<String>,
}

impl DnsSpec {
    /// Nothing set: the task keeps the host's resolv.conf (what exec copies in that case).
    pub fn is_empty(&self) -> bool {
        self.servers.is_empty() && self.searches.is_empty() && self.options.is_empty()
    }

    /// Every server an IP address, every search domain and option one non-empty word
    /// without control characters. The error's field is relative to the DNS block
    /// (`servers[0]`).
    pub fn validate(&self) -> Result<(), FieldError> {
        for (i, s) in self.servers.iter().enumerate() {
            if s.parse::<IpAddr>().is_err() {
                return Err(FieldError::new(
                    format!("servers[{i}]"),
                    format!("{s:?} is not an IP address; give the name server's IPv4 or IPv6 address, e.g. \"10.0.0.2\""),
                ));
            }
        }
        for (field, list) in [("searches", &self.searches), ("options", &self.options)] {
            for (i, v) in list.iter().enumerate() {
                if let Some(why) = bad_word(v) {
                    return Err(FieldError::new(
                        format!("{field}[{i}]"),
                        format!("{v:?} {why}"),
                    ));
                }
            }
        }
        Ok(())
    }

    /// The resolv.conf text (exec's order: search, name servers, options).
    pub fn render(&self) -> String {
        let mut out = String::new();
        if !self.searches.is_empty() && self.searches.join(" ").trim() != "." {
            out.push_str(&format!("search {}\n", self.searches.join(" ")));
        }
        for s in &self.servers {
            out.push_str(&format!("nameserver {s}\n"));
        }
        if !self.options.is_empty() {
            out.push_str(&format!("options {}\n", self.options.join(" ")));
        }
        out
    }

    /// This config with each empty list taken from `host` (the host's resolv.conf, parsed).
    pub fn or_host(&self, host: &DnsSpec) -> DnsSpec {
        let pick = |own: &Vec<String>, theirs: &Vec<String>| {
            if own.is_empty() {
                theirs.clone()
            } else {
                own.clone()
            }
        };
        DnsSpec {
            servers: pick(&self.servers, &host.servers),
            searches: pick(&self.searches, &host.searches),
            options: pick(&self.options, &host.options),
        }
    }

    /// The servers, search domains and options of a resolv.conf text; entries that would not
    /// pass [`DnsSpec::validate`] are left out (the last `search`/`options` line wins, as in
    /// glibc).
    pub fn parse_resolv_conf(text: &str) -> DnsSpec {
        let mut out = DnsSpec::default();
        for line in text.lines() {
            let mut words = line.split_whitespace();
            let words_of = |w: std::str::SplitWhitespace<'_>| {
                w.take_while(|x| !x.starts_with('#') && !x.starts_with(';'))
                    .filter(|x| bad_word(x).is_none())
                    .map(str::to_owned)
                    .collect::<Vec<_>>()
            };
            match words.next() {
                Some("nameserver") => {
                    if let Some(s) = words.next().filter(|s| s.parse::<IpAddr>().is_ok()) {
                        out.servers.push(s.to_owned());
                    }
                }
                Some("search") | Some("domain") => out.searches = words_of(words),
                Some("options") => out.options = words_of(words),
                _ => {}
            }
        }
        out
    }

    /// Whether a host resolv.conf only points at systemd-resolved's local stub.
    pub fn is_resolved_stub(&self) -> bool {
        !self.servers.is_empty() && self.servers.iter().all(|s| s == RESOLVED_STUB)
    }
}

/// Why `v` cannot be one word of a resolv.conf line, if it cannot.
fn bad_word(v: &str) -> Option<&'static str> {
    if v.is_empty() {
        Some("is empty")
    } else if v.chars().any(|c| c.is_whitespace() || c.is_control()) {
        Some("contains whitespace or a control character (one entry per list item)")
    } else if v.starts_with('#') || v.starts_with(';') {
        Some("starts a comment in resolv.conf")
    } else if v.len() > MAX_ENTRY {
        Some("is longer than 253 characters")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dns(servers: &[&str], searches: &[&str], options: &[&str]) -> DnsSpec {
        let v = |l: &[&str]| l.iter().map(|s| s.to_string()).collect();
        DnsSpec {
            servers: v(servers),
            searches: v(searches),
            options: v(options),
        }
    }

    #[test]
    fn renders_like_nomads_exec_driver() {
        let d = dns(
            &["10.9.8.7", "fd00::53"],
            &["example.internal", "svc.local"],
            &["ndots:2", "edns0"],
        );
        assert_eq!(
            d.render(),
            "search example.internal svc.local\nnameserver 10.9.8.7\nnameserver fd00::53\noptions ndots:2 edns0\n"
        );
        assert_eq!(dns(&["1.1.1.1"], &[], &[]).render(), "nameserver 1.1.1.1\n");
        // A lone "." search (the root) is no search line at all, as in exec.
        assert_eq!(dns(&[], &["."], &["rotate"]).render(), "options rotate\n");
    }

    #[test]
    fn bad_entries_are_refused_naming_the_field() {
        let field = |d: DnsSpec| d.validate().unwrap_err();
        assert_eq!(
            field(dns(&["10.0.0.1", "dns.example"], &[], &[])).field,
            "servers[1]"
        );
        assert!(field(dns(&["dns.example"], &[], &[]))
            .message
            .contains("not an IP address"));
        assert_eq!(field(dns(&["10.0.0.1\n"], &[], &[])).field, "servers[0]");
        let FieldError {
            field: f,
            message: m,
        } = field(dns(&[], &["a\nnameserver 6.6.6.6"], &[]));
        assert_eq!(f, "searches[0]");
        assert!(m.contains("whitespace"), "{m}");
        assert_eq!(field(dns(&[], &["ok", "a b"], &[])).field, "searches[1]");
        assert_eq!(field(dns(&[], &[], &[""])).field, "options[0]");
        assert_eq!(field(dns(&[], &[], &["ndots:1\tx"])).field, "options[0]");
        assert_eq!(field(dns(&[], &["#x"], &[])).field, "searches[0]");
        assert!(
            dns(&["10.9.8.7", "::1"], &["example.internal"], &["ndots:2"])
                .validate()
                .is_ok()
        );
    }

    #[test]
    fn empty_lists_come_from_the_host() {
        let host = DnsSpec::parse_resolv_conf(
            "# comment\nnameserver 10.255.255.53\nnameserver bogus\nsearch corp.example lab # x\noptions timeout:1\n",
        );
        assert_eq!(
            host,
            dns(&["10.255.255.53"], &["corp.example", "lab"], &["timeout:1"])
        );
        assert_eq!(
            dns(&["10.9.8.7"], &[], &[]).or_host(&host),
            dns(&["10.9.8.7"], &["corp.example", "lab"], &["timeout:1"])
        );
        assert_eq!(
            dns(&[], &["a.example"], &["ndots:2"]).or_host(&host),
            dns(&["10.255.255.53"], &["a.example"], &["ndots:2"])
        );
        assert!(DnsSpec::default().is_empty() && !host.is_empty());
        assert!(DnsSpec::parse_resolv_conf("nameserver 127.0.0.53\n").is_resolved_stub());
        assert!(!host.is_resolved_stub());
    }

    #[test]
    fn older_specs_without_lists_still_parse() {
        let d: DnsSpec = serde_json::from_str(r#"{"servers":["1.1.1.1"]}"#).unwrap();
        assert_eq!(d, dns(&["1.1.1.1"], &[], &[]));
    }
}
