//! Where the plugin may download a job's model from. The plugin runs as root on the node and
//! fetches whatever URL a job names: without a check, a job could make it send requests to
//! the node's own services (Nomad, Consul and Vault APIs on loopback), the cloud metadata
//! endpoint (169.254.169.254) or the private network, and learn from the task events
//! whether something answers there. So a model is fetched only from public addresses,
//! unless the operator lists the host in `model_internal_hosts` (an internal mirror); the
//! `model_mirror`'s host and the proxies named in the plugin's environment count as listed.
//!
//! The check sits where the address is known: in the client's DNS resolver for host names
//! (every connection resolves through it, so a redirect to another name or a DNS answer
//! that changes between two lookups is checked too), and on the URL for IP literals (which
//! no resolver sees), for the first request and every redirect.

use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use reqwest::Url;
use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

/// The most redirects a download follows (reqwest's default).
const MAX_REDIRECTS: usize = 10;

/// A model URL the plugin will not fetch: the host is (or resolves only to) a non-public
/// address and is not listed in `model_internal_hosts`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub host: String,
    pub ip: IpAddr,
    pub kind: &'static str,
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Refused { host, ip, kind } = self;
        if *host == ip.to_string() {
            write!(f, "{ip} is a {kind} address")?;
        } else {
            write!(f, "{host} is at {ip}, a {kind} address")?;
        }
        write!(f, ": the plugin fetches a job's model only from public addresses. Use a public source, or (operator) list the host in the plugin option model_internal_hosts")
    }
}

impl std::error::Error for Refused {}

/// The hosts the operator trusts on internal addresses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EgressPolicy {
    internal_hosts: BTreeSet<String>,
}

impl EgressPolicy {
    /// The plugin's `model_internal_hosts`, plus the host of `model_mirror` (empty: none)
    /// and of the proxies in the plugin's environment: all chosen by the operator.
    pub fn from_config(internal_hosts: &[String], mirror: &str) -> Self {
        let proxies = [
            "HTTP_PROXY",
            "http_proxy",
            "HTTPS_PROXY",
            "https_proxy",
            "ALL_PROXY",
            "all_proxy",
        ]
        .iter()
        .filter_map(|v| std::env::var(v).ok())
        .filter_map(|p| url_host(&p));
        let hosts = internal_hosts
            .iter()
            .map(|h| normalise(h))
            .chain(url_host(mirror))
            .chain(proxies);
        EgressPolicy {
            internal_hosts: hosts.filter(|h| !h.is_empty()).collect(),
        }
    }

    fn trusts(&self, host: &str) -> bool {
        self.internal_hosts.contains(&normalise(host))
    }

    /// Whether `host` may be reached at `ip`.
    pub fn check(&self, host: &str, ip: IpAddr) -> Result<(), Refused> {
        match non_public(ip) {
            Some(kind) if !self.trusts(host) => Err(Refused {
                host: host.to_owned(),
                ip,
                kind,
            }),
            _ => Ok(()),
        }
    }

    /// The check for a URL whose host is an IP literal; names are checked when they are
    /// resolved ([`Resolver`]).
    pub fn check_url(&self, url: &Url) -> Result<(), Refused> {
        // The URL parser has already turned any IPv4 spelling (decimal, octal) into the
        // dotted form.
        let Some(ip) = url
            .host_str()
            .and_then(|h| normalise(h).parse::<IpAddr>().ok())
        else {
            return Ok(());
        };
        self.check(&ip.to_string(), ip)
    }

    /// reqwest's redirect policy: at most [`MAX_REDIRECTS`], each target checked.
    pub fn redirect_policy(self: &Arc<Self>) -> reqwest::redirect::Policy {
        let policy = self.clone();
        reqwest::redirect::Policy::custom(move |attempt| {
            if attempt.previous().len() >= MAX_REDIRECTS {
                return attempt.error(format!("more than {MAX_REDIRECTS} redirects"));
            }
            match policy.check_url(attempt.url()) {
                Ok(()) => attempt.follow(),
                Err(refused) => attempt.error(refused),
            }
        })
    }
}

/// A host name or IP as compared: lower case, without the brackets of an IPv6 literal, an
/// IP in its canonical form.
fn normalise(host: &str) -> String {
    let h = host.trim().trim_start_matches('[').trim_end_matches(']');
    match h.parse::<IpAddr>() {
        Ok(ip) => ip.to_string(),
        Err(_) => h.trim_end_matches('.').to_ascii_lowercase(),
    }
}

/// The host of a URL (a proxy may be given without a scheme); None when there is none.
fn url_host(s: &str) -> Option<String> {
    let s = s.trim();
    if s.is_empty() {
        return None;
    }
    let parsed = Url::parse(s)
        .ok()
        .filter(|u| u.host().is_some())
        .or_else(|| Url::parse(&format!("http://{s}")).ok())?;
    parsed.host_str().map(normalise)
}

/// Whether `host` is a plain host name or IP address (the form `model_internal_hosts`
/// takes): no scheme, port, path or user.
pub fn is_plain_host(host: &str) -> bool {
    let h = host.trim();
    if h.is_empty() {
        return false;
    }
    if normalise(h).parse::<IpAddr>().is_ok() {
        return true;
    }
    h.len() <= 253
        && h.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        })
}

/// What kind of non-public address `ip` is; None for a public (globally routed) one.
pub fn non_public(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(a) => non_public_v4(a),
        IpAddr::V6(a) => non_public_v6(a),
    }
}

fn non_public_v4(a: Ipv4Addr) -> Option<&'static str> {
    let [o1, o2, o3, _] = a.octets();
    Some(match () {
        _ if a.is_loopback() => "loopback",
        _ if a.is_private() => "private",
        _ if a.is_link_local() => "link-local (cloud metadata)",
        _ if o1 == 0 => "\"this network\"",
        _ if o1 == 100 && (64..128).contains(&o2) => "shared (carrier-grade NAT)",
        _ if o1 == 192 && o2 == 0 && o3 == 0 => "IETF protocol",
        _ if o1 == 198 && (o2 == 18 || o2 == 19) => "benchmarking",
        _ if a.is_documentation() => "documentation",
        _ if a.is_multicast() => "multicast",
        _ if o1 >= 240 => "reserved",
        _ => return None,
    })
}

fn non_public_v6(a: Ipv6Addr) -> Option<&'static str> {
    let s = a.segments();
    // IPv4 in IPv6: mapped (::ffff:a.b.c.d) and the NAT64 prefix reach that IPv4 address.
    if let Some(v4) = a.to_ipv4_mapped() {
        return non_public_v4(v4);
    }
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        let [b0, b1] = s[6].to_be_bytes();
        let [b2, b3] = s[7].to_be_bytes();
        return non_public_v4(Ipv4Addr::new(b0, b1, b2, b3));
    }
    Some(match () {
        _ if a.is_unspecified() => "unspecified",
        _ if a.is_loopback() => "loopback",
        _ if s[0] & 0xfe00 == 0xfc00 => "private (unique local)",
        _ if s[0] & 0xffc0 == 0xfe80 => "link-local",
        _ if s[0] & 0xffc0 == 0xfec0 => "site-local",
        _ if s[0] & 0xff00 == 0xff00 => "multicast",
        _ if s[0] == 0x2001 && s[1] == 0x0db8 => "documentation",
        _ if s[..4] == [0x100, 0, 0, 0] => "discard",
        // The rest of the IPv4-compatible range (::a.b.c.d, deprecated).
        _ if s[..6] == [0; 6] => "IPv4-compatible",
        _ => return None,
    })
}

/// The DNS resolver of the model client: the system's (getaddrinfo, via tokio), with the
/// addresses the policy refuses taken out; an error when none is left.
pub struct Resolver(pub Arc<EgressPolicy>);

impl Resolve for Resolver {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = self.0.clone();
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let found: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let mut refused = None;
            let allowed: Vec<SocketAddr> = found
                .into_iter()
                .filter(|a| match policy.check(&host, a.ip()) {
                    Ok(()) => true,
                    Err(e) => {
                        refused.get_or_insert(e);
                        false
                    }
                })
                .collect();
            match (allowed.is_empty(), refused) {
                (true, Some(refused)) => Err(Box::new(refused) as _),
                _ => Ok(Box::new(allowed.into_iter()) as Addrs),
            }
        })
    }
}

/// The refusal somewhere in an error's chain of causes (a resolver's or a redirect's).
pub fn refusal_in(e: &(dyn std::error::Error + 'static)) -> Option<Refused> {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(r) = err.downcast_ref::<Refused>() {
            return Some(r.clone());
        }
        cur = err.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn internal_addresses_are_refused_and_public_ones_allowed() {
        for (a, kind) in [
            ("127.0.0.1", "loopback"),
            ("10.1.2.3", "private"),
            ("172.16.0.1", "private"),
            ("192.168.1.1", "private"),
            ("169.254.169.254", "link-local (cloud metadata)"),
            ("0.0.0.0", "\"this network\""),
            ("100.64.0.1", "shared (carrier-grade NAT)"),
            ("198.18.0.1", "benchmarking"),
            ("224.0.0.1", "multicast"),
            ("255.255.255.255", "reserved"),
            ("::1", "loopback"),
            ("::", "unspecified"),
            ("fd00::1", "private (unique local)"),
            ("fe80::1", "link-local"),
            ("::ffff:127.0.0.1", "loopback"),
            ("::ffff:169.254.169.254", "link-local (cloud metadata)"),
            ("64:ff9b::a00:1", "private"),
            ("ff02::1", "multicast"),
        ] {
            assert_eq!(non_public(ip(a)), Some(kind), "{a}");
        }
        for a in [
            "1.1.1.1",
            "140.82.112.3",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
        ] {
            assert_eq!(non_public(ip(a)), None, "{a}");
        }
    }

    #[test]
    fn listed_hosts_the_mirror_and_proxies_are_trusted() {
        let p = EgressPolicy::from_config(
            &[
                "Models.Internal.".to_owned(),
                "[::1]".to_owned(),
                "10.0.0.5".to_owned(),
            ],
            "http://mirror.corp:8080/hf",
        );
        assert!(p.check("models.internal", ip("10.9.9.9")).is_ok());
        assert!(p.check("::1", ip("::1")).is_ok());
        assert!(p.check("10.0.0.5", ip("10.0.0.5")).is_ok());
        assert!(p.check("mirror.corp", ip("192.168.0.7")).is_ok());
        let e = p.check("other.internal", ip("10.9.9.9")).unwrap_err();
        assert_eq!(e.kind, "private");
        let msg = e.to_string();
        assert!(
            msg.contains("other.internal is at 10.9.9.9") && msg.contains("model_internal_hosts"),
            "{msg}"
        );
        // Public addresses need no listing.
        assert!(EgressPolicy::default()
            .check("example.org", ip("93.184.215.14"))
            .is_ok());
    }

    #[test]
    fn ip_literal_urls_are_checked_and_names_left_to_the_resolver() {
        let p = EgressPolicy::default();
        let url = |s: &str| Url::parse(s).unwrap();
        assert!(p
            .check_url(&url("http://169.254.169.254/latest/meta-data/"))
            .is_err());
        assert!(p
            .check_url(&url("http://[::1]:4646/v1/agent/self"))
            .is_err());
        assert!(
            p.check_url(&url("http://2130706433/")).is_err(),
            "decimal 127.0.0.1"
        );
        assert!(p.check_url(&url("https://1.1.1.1/x")).is_ok());
        assert!(
            p.check_url(&url("https://localhost/x")).is_ok(),
            "a name: resolved and checked later"
        );
        let trusted = EgressPolicy::from_config(&["127.0.0.1".to_owned()], "");
        assert!(trusted
            .check_url(&url("http://127.0.0.1:8000/m.gguf"))
            .is_ok());
    }

    #[test]
    fn plain_hosts_only() {
        for h in [
            "models.internal",
            "10.0.0.5",
            "::1",
            "[fd00::1]",
            "mirror-1.corp",
        ] {
            assert!(is_plain_host(h), "{h}");
        }
        for h in ["", "http://x", "x:8080", "x/y", "user@x", "a..b", "*"] {
            assert!(!is_plain_host(h), "{h}");
        }
    }

    #[tokio::test]
    async fn the_resolver_refuses_a_name_with_only_internal_addresses() {
        let r = Resolver(Arc::new(EgressPolicy::default()));
        let err = match r.resolve("localhost".parse().unwrap()).await {
            Ok(addrs) => panic!("localhost resolved to {:?}", addrs.collect::<Vec<_>>()),
            Err(e) => e,
        };
        let refused = refusal_in(err.as_ref()).expect("a Refused");
        assert_eq!(refused.kind, "loopback");
        let trusting = Resolver(Arc::new(EgressPolicy::from_config(
            &["localhost".to_owned()],
            "",
        )));
        let addrs: Vec<_> = trusting
            .resolve("localhost".parse().unwrap())
            .await
            .unwrap()
            .collect();
        assert!(addrs.iter().any(|a| a.ip().is_loopback()), "{addrs:?}");
    }
}
