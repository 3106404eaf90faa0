//! The go-plugin transport as Nomad drives it: magic cookie, Unix socket, handshake line, the
//! controller/stdio/broker/health services, and a prompt exit on `Shutdown`.

use common::proto::goplugin::{
    self, grpc_broker_server::GrpcBroker, grpc_controller_server::GrpcController,
    grpc_stdio_server::GrpcStdio, ConnInfo, StdioData,
};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use tokio::sync::Notify;
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

pub const MAGIC_COOKIE_KEY: &str = "NOMAD_PLUGIN_MAGIC_COOKIE";
pub const MAGIC_COOKIE_VALUE: &str =
    "e4327c2e01eabfd75a8a67adb114fb34a757d57eee7728d857a8cec6e91a7255";
/// go-plugin's core protocol version and the app protocol version Nomad speaks.
pub const CORE_PROTOCOL_VERSION: u32 = 1;
pub const APP_PROTOCOL_VERSION: u32 = 2;

/// What to tell a human who runs the binary by hand.
pub const NOT_LAUNCHED_BY_NOMAD: &str = "\
This binary is a Nomad task driver plugin (driver name \"elide\"); it is started by a Nomad
agent, not by hand.

To install it:
  1. copy nomad-driver-elide into the agent's plugin_dir (e.g. /opt/nomad/data/plugins),
  2. add to the agent configuration:
       plugin \"nomad-driver-elide\" {
         config {
           # elide_binary    = \"/usr/bin/elide\"
           # executor_binary = \"/usr/local/libexec/nomad-driver-elide/elide-executor\"
         }
       }
  3. restart the agent and check `nomad node status -self -verbose`.

For one task's shim, use `elide-executor status`.";

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum HandshakeError {
    #[error("{NOT_LAUNCHED_BY_NOMAD}")]
    NotLaunchedByNomad,
    #[error("the Nomad agent offers plugin protocol versions {offered:?}, this plugin speaks {APP_PROTOCOL_VERSION}; upgrade the agent or the plugin")]
    NoCommonVersion { offered: String },
    #[error("plugin socket path {path} is {len} bytes, over the 107-byte Unix socket limit; point PLUGIN_UNIX_SOCKET_DIR or TMPDIR at a shorter directory")]
    SocketPathTooLong { path: PathBuf, len: usize },
}

/// Checks the cookie and negotiates the app protocol version, from the environment.
pub fn negotiate(cookie: Option<&str>, versions: Option<&str>) -> Result<u32, HandshakeError> {
    if cookie != Some(MAGIC_COOKIE_VALUE) {
        return Err(HandshakeError::NotLaunchedByNomad);
    }
    // An absent list means the client predates negotiation and speaks the default (2 for Nomad).
    let Some(list) = versions else {
        return Ok(APP_PROTOCOL_VERSION);
    };
    list.split(',')
        .filter_map(|v| v.trim().parse::<u32>().ok())
        .filter(|v| *v == APP_PROTOCOL_VERSION)
        .max()
        .ok_or_else(|| HandshakeError::NoCommonVersion {
            offered: list.to_owned(),
        })
}

/// The line go-plugin's client parses: `CORE|APP|unix|<path>|grpc|` (empty server cert).
pub fn handshake_line(app_version: u32, socket: &Path) -> String {
    format!(
        "{CORE_PROTOCOL_VERSION}|{app_version}|unix|{}|grpc|\n",
        socket.display()
    )
}

/// `plugin<random digits>` in `PLUGIN_UNIX_SOCKET_DIR`, else `TMPDIR`, else /tmp.
pub fn socket_path(
    socket_dir: Option<&str>,
    tmpdir: Option<&str>,
) -> Result<PathBuf, HandshakeError> {
    let dir = socket_dir
        .filter(|d| !d.is_empty())
        .or(tmpdir.filter(|d| !d.is_empty()))
        .unwrap_or("/tmp");
    let mut seed = [0u8; 8];
    if let Ok(bytes) = std::fs::read("/proc/sys/kernel/random/uuid") {
        for (i, b) in bytes.iter().enumerate() {
            seed[i % 8] ^= *b;
        }
    }
    let n = u64::from_le_bytes(seed) ^ u64::from(std::process::id());
    let path = Path::new(dir).join(format!("plugin{}", n % 10_000_000_000));
    let len = path.as_os_str().len();
    if len > 107 {
        return Err(HandshakeError::SocketPathTooLong { path, len });
    }
    Ok(path)
}

/// `plugin.GRPCController`: Nomad calls Shutdown every time it stops a plugin instance.
/// Tasks are never touched: they live in their shims.
pub struct Controller {
    pub shutdown: Arc<Notify>,
}

#[tonic::async_trait]
impl GrpcController for Controller {
    async fn shutdown(
        &self,
        _req: Request<goplugin::Empty>,
    ) -> Result<Response<goplugin::Empty>, Status> {
        tracing::debug!("shutdown requested by the agent");
        self.shutdown.notify_one();
        Ok(Response::new(goplugin::Empty {}))
    }
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// `plugin.GRPCStdio`: kept open and silent (Nomad discards what arrives).
pub struct Stdio;

#[tonic::async_trait]
impl GrpcStdio for Stdio {
    type StreamStdioStream = BoxStream<StdioData>;

    async fn stream_stdio(
        &self,
        _req: Request<()>,
    ) -> Result<Response<Self::StreamStdioStream>, Status> {
        Ok(Response::new(Box::pin(futures::stream::pending())))
    }
}

/// `plugin.GRPCBroker`: accepted, drained and kept open; the driver API never uses it.
pub struct Broker;

#[tonic::async_trait]
impl GrpcBroker for Broker {
    type StartStreamStream = BoxStream<ConnInfo>;

    async fn start_stream(
        &self,
        req: Request<Streaming<ConnInfo>>,
    ) -> Result<Response<Self::StartStreamStream>, Status> {
        let mut inbound = req.into_inner();
        tokio::spawn(async move { while let Ok(Some(_)) = inbound.message().await {} });
        Ok(Response::new(Box::pin(futures::stream::pending())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookie_is_required_and_message_says_how_to_install() {
        let err = negotiate(None, Some("2")).unwrap_err();
        assert_eq!(err, HandshakeError::NotLaunchedByNomad);
        assert!(err.to_string().contains("plugin \"nomad-driver-elide\""));
        assert!(negotiate(Some("wrong"), Some("2")).is_err());
    }

    #[test]
    fn negotiates_version_two_only() {
        assert_eq!(negotiate(Some(MAGIC_COOKIE_VALUE), Some("2")), Ok(2));
        assert_eq!(negotiate(Some(MAGIC_COOKIE_VALUE), Some("1,2,3")), Ok(2));
        assert_eq!(negotiate(Some(MAGIC_COOKIE_VALUE), None), Ok(2));
        let err = negotiate(Some(MAGIC_COOKIE_VALUE), Some("1,3")).unwrap_err();
        assert!(err.to_string().contains("1,3"));
    }

    #[test]
    fn handshake_line_matches_go_plugin_format() {
        let line = handshake_line(2, Path::new("/tmp/plugin123"));
        assert_eq!(line, "1|2|unix|/tmp/plugin123|grpc|\n");
        let fields: Vec<&str> = line.trim_end().split('|').collect();
        assert_eq!(fields.len(), 6);
        assert_eq!(fields[5], "");
    }

    #[test]
    fn socket_dir_precedence_and_length_limit() {
        let p = socket_path(Some("/run/x"), Some("/var/tmp")).unwrap();
        assert!(p.starts_with("/run/x"));
        assert!(p
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .starts_with("plugin"));
        let p = socket_path(None, Some("/var/tmp")).unwrap();
        assert!(p.starts_with("/var/tmp"));
        let p = socket_path(Some(""), None).unwrap();
        assert!(p.starts_with("/tmp"));
        let long = "/".to_string() + &"a".repeat(110);
        assert!(matches!(
            socket_path(Some(&long), None),
            Err(HandshakeError::SocketPathTooLong { .. })
        ));
    }
}
