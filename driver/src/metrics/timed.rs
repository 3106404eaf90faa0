//! The plugin's client to a shim, timed: every call's latency by shim API method, and its
//! gRPC code when it fails (a tower service around tonic's channel, so no call site changes).

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;
use tonic::body::Body;
use tonic::codegen::http;
use tonic::transport::Channel;

/// A shim client whose calls are measured.
pub type ShimClient = common::proto::executor::executor_client::ExecutorClient<Timed>;

/// [`common::client::connect`], timed.
pub async fn connect(socket: &Path) -> Result<ShimClient, common::client::ClientError> {
    common::client::connect_channel(socket, common::client::CONNECT_TIMEOUT)
        .await
        .map(|c| ShimClient::new(Timed(c)))
}

#[derive(Clone, Debug)]
pub struct Timed(Channel);

impl tower::Service<http::Request<Body>> for Timed {
    type Response = http::Response<Body>;
    type Error = tonic::transport::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let path = req.uri().path().to_owned();
        let began = Instant::now();
        let call = self.0.call(req);
        Box::pin(async move {
            let r = call.await;
            // A failed unary call is "trailers only": its code is in the headers. Streams
            // and successes carry theirs in trailers, after this point: counted as ok.
            let code = match &r {
                Ok(resp) => resp
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<i32>().ok())
                    .map(tonic::Code::from_i32)
                    .unwrap_or(tonic::Code::Ok),
                Err(_) => tonic::Code::Unavailable,
            };
            super::shim_call(&path, began.elapsed(), code);
            r
        })
    }
}
