//! Clients that misbehave on purpose.
//!
//! A [`StalledWatches`] connection speaks HTTP/2 with the `h2` crate so it
//! can do what no well-behaved gRPC client does: open `WatchClaims` streams
//! and never read them (it answers PINGs but never grants flow-control
//! window), so whatever the server sends piles up on its side.

use anyhow::{anyhow, Context as _, Result};
use bytes::Bytes;
use claims_proto::v1 as pb;

/// One HTTP/2 connection holding `WatchClaims` streams it never reads; the
/// connection closes when this is dropped.
pub struct StalledWatches {
    /// Held, never polled: their data is never acknowledged.
    _streams: Vec<h2::RecvStream>,
    connection: tokio::task::JoinHandle<()>,
}

impl Drop for StalledWatches {
    fn drop(&mut self) {
        // A stalled stream never finishes, so a graceful close would wait
        // for ever: close the socket itself.
        self.connection.abort();
    }
}

impl StalledWatches {
    /// Opens `count` watches of every claim from `start_revision` (0 = now)
    /// on one connection to `addr` (`host:port`), each answered with
    /// headers before this returns.
    pub async fn open(addr: &str, count: usize, start_revision: i64) -> Result<Self> {
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        let (client, connection) = h2::client::Builder::new()
            .initial_window_size(65_535)
            .initial_connection_window_size(65_535)
            .handshake::<_, Bytes>(tcp)
            .await?;
        // Driving the connection answers PINGs and SETTINGS; nothing here
        // ever releases flow-control capacity.
        let connection = tokio::spawn(async move {
            let _ = connection.await;
        });
        let mut streams = Vec::with_capacity(count);
        let request = Bytes::from(crate::grpc_frame(&pb::WatchClaimsRequest {
            prefix: String::new(),
            start_revision,
        }));
        for _ in 0..count {
            let mut client = client.clone().ready().await?;
            let req = http::Request::builder()
                .method("POST")
                .uri(format!("http://{addr}/claims.v1.Ownership/WatchClaims"))
                .header("content-type", "application/grpc")
                .header("te", "trailers")
                .body(())?;
            let (answer, mut send) = client.send_request(req, false)?;
            send.send_data(request.clone(), true)?;
            let answer = tokio::time::timeout(crate::WAIT, answer)
                .await
                .context("no WatchClaims headers")??;
            if answer.status() != 200 {
                return Err(anyhow!("WatchClaims answered {}", answer.status()));
            }
            streams.push(answer.into_body());
        }
        Ok(Self {
            _streams: streams,
            connection,
        })
    }
}
