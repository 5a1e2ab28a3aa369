//! A scripted RTMP publisher over any byte stream: the ingest node's own
//! RTMP client (the one its relays use), with what tests add to it. The
//! ingest benchmark times its publishes over TCP, and the fuzz seeds are
//! recorded from it over an in-memory pipe.

use anyhow::{anyhow, bail, Result};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::WAIT;

pub struct RtmpClient<S> {
    client: ingest_node::relay::client::RtmpClient<S>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> RtmpClient<S> {
    /// Completes the handshake and `connect` to `app`; `record` keeps every
    /// byte sent (see [`RtmpClient::sent`]).
    pub async fn connect(stream: S, app: &str, record: bool) -> Result<Self> {
        let client = tokio::time::timeout(
            WAIT,
            ingest_node::relay::client::RtmpClient::connect(stream, app, None, record),
        )
        .await
        .map_err(|_| anyhow!("no RTMP connect within {WAIT:?}"))?
        .map_err(|e| anyhow!(e))?;
        Ok(Self { client })
    }

    /// Every byte sent after the handshake, when recording.
    pub fn sent(&self) -> Option<&[u8]> {
        self.client.sent.as_deref()
    }

    /// Asks to publish `key` and waits until it is accepted.
    pub async fn publish(&mut self, key: &str) -> Result<()> {
        tokio::time::timeout(WAIT, self.client.publish(key))
            .await
            .map_err(|_| anyhow!("no answer to publish within {WAIT:?}"))?
            .map_err(|e| anyhow!("refused: {e}"))
    }

    /// Sends one video (or audio) message.
    pub async fn media(&mut self, video: bool, data: &[u8], timestamp_ms: u32) -> Result<()> {
        let data = bytes::Bytes::copy_from_slice(data);
        self.client
            .media(video, data, timestamp_ms)
            .await
            .map_err(|e| anyhow!(e))
    }

    /// Sends the stream's metadata (`@setDataFrame`): a message that is
    /// not media.
    pub async fn metadata(&mut self) -> Result<()> {
        let mut meta = rml_rtmp::sessions::StreamMetadata::new();
        meta.video_width = Some(320);
        self.client.metadata(&meta).await.map_err(|e| anyhow!(e))
    }

    /// Writes bytes as they are, outside the session (for malformed or
    /// hostile input).
    pub async fn write_raw(&mut self, bytes: &[u8]) -> Result<()> {
        self.client.write_raw(bytes).await.map_err(|e| anyhow!(e))
    }

    /// Waits until the server closes the connection (reading and dropping
    /// what it sends); an error if it is still open after [`WAIT`].
    pub async fn closed_by_server(&mut self) -> Result<()> {
        let mut buf = vec![0u8; 65536];
        loop {
            match tokio::time::timeout(WAIT, self.client.read(&mut buf)).await {
                Err(_) => bail!("the server kept the connection open for {WAIT:?}"),
                Ok(Ok(0)) | Ok(Err(_)) => return Ok(()),
                Ok(Ok(_)) => {}
            }
        }
    }
}
