//! `telemetry { prometheus_listen = "…" }`: a TCP address (`127.0.0.1:9469`, `[::1]:9469`)
//! or a Unix socket (`unix:/run/nomad-driver-elide/metrics.sock`).

use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listen {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl std::fmt::Display for Listen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Listen::Tcp(a) => write!(f, "{a}"),
            Listen::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("telemetry.prometheus_listen: {value:?} {why}; give an IP address and port such as \"127.0.0.1:9469\", or a Unix socket such as \"unix:/run/nomad-driver-elide/metrics.sock\"")]
pub struct BadListen {
    pub value: String,
    pub why: &'static str,
}

/// Longest Unix socket path (`sun_path` holds 108 bytes with the NUL).
const MAX_SOCKET_PATH: usize = 107;

pub fn parse(value: &str) -> Result<Listen, BadListen> {
    let bad = |why| BadListen {
        value: value.to_owned(),
        why,
    };
    if let Some(path) = value.strip_prefix("unix:") {
        let p = PathBuf::from(path);
        if !p.is_absolute() {
            return Err(bad("is not an absolute socket path"));
        }
        if path.contains('\0') {
            return Err(bad("has a NUL byte"));
        }
        if path.len() > MAX_SOCKET_PATH {
            return Err(bad("is longer than a Unix socket path may be (107 bytes)"));
        }
        if p.components()
            .any(|c| matches!(c, std::path::Component::ParentDir))
        {
            return Err(bad("has \"..\" in it"));
        }
        return Ok(Listen::Unix(p));
    }
    let addr: SocketAddr = value
        .parse()
        .map_err(|_| bad("is not an IP address and port (host names are not resolved)"))?;
    if addr.port() == 0 {
        return Err(bad("has port 0; Prometheus needs a fixed port"));
    }
    Ok(Listen::Tcp(addr))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcp_and_unix_addresses_parse() {
        assert_eq!(
            parse("127.0.0.1:9469").unwrap(),
            Listen::Tcp("127.0.0.1:9469".parse().unwrap())
        );
        assert_eq!(
            parse("[::1]:9469").unwrap(),
            Listen::Tcp("[::1]:9469".parse().unwrap())
        );
        assert_eq!(
            parse("unix:/run/x/metrics.sock").unwrap(),
            Listen::Unix("/run/x/metrics.sock".into())
        );
        assert_eq!(
            parse("unix:/run/x/metrics.sock").unwrap().to_string(),
            "unix:/run/x/metrics.sock"
        );
    }

    #[test]
    fn bad_addresses_say_what_to_write() {
        for (v, why) in [
            ("localhost:9469", "host names are not resolved"),
            ("127.0.0.1", "not an IP address and port"),
            ("127.0.0.1:0", "port 0"),
            ("127.0.0.1:99999", "not an IP address"),
            ("unix:metrics.sock", "absolute"),
            ("unix:/run/../x.sock", ".."),
        ] {
            let e = parse(v).unwrap_err().to_string();
            assert!(e.contains(why), "{v}: {e}");
            assert!(e.contains("127.0.0.1:9469"), "{v}: {e}");
        }
        let long = format!("unix:/{}", "a".repeat(120));
        assert!(parse(&long).unwrap_err().to_string().contains("longer"));
    }
}
