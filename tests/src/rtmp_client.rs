//! A scripted RTMP publisher (rml_rtmp's client session) over any byte
//! stream: the ingest benchmark times its publishes over TCP, and the fuzz
//! seeds are recorded from it over an in-memory pipe.

use anyhow::{anyhow, bail, Result};
use rml_rtmp::handshake::{Handshake, HandshakeProcessResult, PeerType};
use rml_rtmp::sessions::{
    ClientSession, ClientSessionConfig, ClientSessionEvent, ClientSessionResult, PublishRequestType,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::WAIT;

pub struct RtmpClient<S> {
    stream: S,
    session: ClientSession,
    /// Every byte sent after the handshake, when recording.
    pub sent: Option<Vec<u8>>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> RtmpClient<S> {
    /// Completes the handshake and `connect` to `app`.
    pub async fn connect(mut stream: S, app: &str, record: bool) -> Result<Self> {
        let mut hs = Handshake::new(PeerType::Client);
        stream
            .write_all(
                &hs.generate_outbound_p0_and_p1()
                    .map_err(|e| anyhow!("{e:?}"))?,
            )
            .await?;
        let mut buf = vec![0u8; 65536];
        let remaining = loop {
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                bail!("closed during handshake");
            }
            match hs.process_bytes(&buf[..n]).map_err(|e| anyhow!("{e:?}"))? {
                HandshakeProcessResult::InProgress { response_bytes } => {
                    stream.write_all(&response_bytes).await?
                }
                HandshakeProcessResult::Completed {
                    response_bytes,
                    remaining_bytes,
                } => {
                    stream.write_all(&response_bytes).await?;
                    break remaining_bytes;
                }
            }
        };
        let (session, results) =
            ClientSession::new(ClientSessionConfig::new()).map_err(|e| anyhow!("{e:?}"))?;
        let mut client = Self {
            stream,
            session,
            sent: record.then(Vec::new),
        };
        let mut events = client.send(results).await?;
        let input = client
            .session
            .handle_input(&remaining)
            .map_err(|e| anyhow!("{e:?}"))?;
        events.extend(client.send(input).await?);
        let r = client
            .session
            .request_connection(app.to_string())
            .map_err(|e| anyhow!("{e:?}"))?;
        events.extend(client.send(vec![r]).await?);
        client
            .wait(events, |e| {
                matches!(e, ClientSessionEvent::ConnectionRequestAccepted)
            })
            .await?;
        Ok(client)
    }

    /// Asks to publish `key` and waits until it is accepted.
    pub async fn publish(&mut self, key: &str) -> Result<()> {
        let r = self
            .session
            .request_publishing(key.to_string(), PublishRequestType::Live)
            .map_err(|e| anyhow!("{e:?}"))?;
        let events = self.send(vec![r]).await?;
        self.wait(events, |e| {
            matches!(e, ClientSessionEvent::PublishRequestAccepted)
        })
        .await
    }

    /// Sends one video (or audio) message.
    pub async fn media(&mut self, video: bool, data: &[u8], timestamp_ms: u32) -> Result<()> {
        let data = bytes::Bytes::copy_from_slice(data);
        let ts = rml_rtmp::time::RtmpTimestamp::new(timestamp_ms);
        let r = if video {
            self.session.publish_video_data(data, ts, false)
        } else {
            self.session.publish_audio_data(data, ts, false)
        }
        .map_err(|e| anyhow!("{e:?}"))?;
        self.send(vec![r]).await?;
        Ok(())
    }

    /// Sends the stream's metadata (`@setDataFrame`): a message that is
    /// not media.
    pub async fn metadata(&mut self) -> Result<()> {
        let mut meta = rml_rtmp::sessions::StreamMetadata::new();
        meta.video_width = Some(320);
        let r = self
            .session
            .publish_metadata(&meta)
            .map_err(|e| anyhow!("{e:?}"))?;
        self.send(vec![r]).await?;
        Ok(())
    }

    /// Writes bytes as they are, outside the session (for malformed or
    /// hostile input).
    pub async fn write_raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes).await
    }

    /// Waits until the server closes the connection (reading and dropping
    /// what it sends); an error if it is still open after [`WAIT`].
    pub async fn closed_by_server(&mut self) -> Result<()> {
        let mut buf = vec![0u8; 65536];
        loop {
            match tokio::time::timeout(WAIT, self.stream.read(&mut buf)).await {
                Err(_) => bail!("the server kept the connection open for {WAIT:?}"),
                Ok(Ok(0)) | Ok(Err(_)) => return Ok(()),
                Ok(Ok(_)) => {}
            }
        }
    }

    async fn send(&mut self, results: Vec<ClientSessionResult>) -> Result<Vec<ClientSessionEvent>> {
        let mut events = Vec::new();
        for r in results {
            match r {
                ClientSessionResult::OutboundResponse(p) => {
                    if let Some(sent) = &mut self.sent {
                        sent.extend_from_slice(&p.bytes);
                    }
                    self.stream.write_all(&p.bytes).await?
                }
                ClientSessionResult::RaisedEvent(e) => events.push(e),
                _ => {}
            }
        }
        Ok(events)
    }

    async fn wait(
        &mut self,
        mut pending: Vec<ClientSessionEvent>,
        want: impl Fn(&ClientSessionEvent) -> bool,
    ) -> Result<()> {
        let mut buf = vec![0u8; 65536];
        loop {
            if pending.iter().any(&want) {
                return Ok(());
            }
            if let Some(e) = pending
                .iter()
                .find(|e| matches!(e, ClientSessionEvent::ConnectionRequestRejected { .. }))
            {
                bail!("refused: {e:?}");
            }
            let n = tokio::time::timeout(WAIT, self.stream.read(&mut buf)).await??;
            if n == 0 {
                bail!("server closed the connection");
            }
            let input = self
                .session
                .handle_input(&buf[..n])
                .map_err(|e| anyhow!("{e:?}"))?;
            pending = self.send(input).await?;
        }
    }
}
