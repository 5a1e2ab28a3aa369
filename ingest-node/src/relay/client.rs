//! An RTMP client over any byte stream (rml_rtmp's client session): the
//! handshake, `connect`, then `play` or `publish`, then media. Reading and
//! acting on what was read are separate steps ([`RtmpClient::read`] is
//! cancel-safe, [`RtmpClient::feed`] is not awaited in a race), so one task
//! can wait on two clients at once without losing bytes.

use crate::error::{Error, Result};
use std::collections::VecDeque;

use bytes::Bytes;
use rml_rtmp::handshake::{Handshake, HandshakeProcessResult, PeerType};
use rml_rtmp::sessions::{
    ClientSession, ClientSessionConfig, ClientSessionEvent, ClientSessionResult,
    PublishRequestType, StreamMetadata,
};
use rml_rtmp::time::RtmpTimestamp;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

pub struct RtmpClient<S> {
    stream: S,
    session: ClientSession,
    /// Events read but not yet taken.
    events: VecDeque<ClientSessionEvent>,
    /// Every byte sent after the handshake, when recording (fuzz seeds).
    pub sent: Option<Vec<u8>>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> RtmpClient<S> {
    /// Completes the handshake and `connect`s to `app` (with `tc_url`, which
    /// some servers want); `record` keeps every byte sent.
    pub async fn connect(
        mut stream: S,
        app: &str,
        tc_url: Option<String>,
        record: bool,
    ) -> Result<Self> {
        let mut handshake = Handshake::new(PeerType::Client);
        let p0_p1 = handshake
            .generate_outbound_p0_and_p1()
            .map_err(|e| Error::Rtmp(format!("RTMP handshake: {e:?}")))?;
        write(&mut stream, &p0_p1).await?;
        let mut buf = vec![0u8; 64 * 1024];
        let remaining = loop {
            let n = stream
                .read(&mut buf)
                .await
                .map_err(|e| Error::Rtmp(format!("read during the RTMP handshake: {e}")))?;
            if n == 0 {
                return Err(Error::Rtmp("closed during the RTMP handshake".into()));
            }
            match handshake
                .process_bytes(&buf[..n])
                .map_err(|e| Error::Rtmp(format!("RTMP handshake: {e:?}")))?
            {
                HandshakeProcessResult::InProgress { response_bytes } => {
                    write(&mut stream, &response_bytes).await?
                }
                HandshakeProcessResult::Completed {
                    response_bytes,
                    remaining_bytes,
                } => {
                    write(&mut stream, &response_bytes).await?;
                    break remaining_bytes;
                }
            }
        };
        let mut config = ClientSessionConfig::new();
        config.tc_url = tc_url;
        let (session, results) =
            ClientSession::new(config).map_err(|e| Error::Rtmp(format!("RTMP session: {e:?}")))?;
        let mut client = Self {
            stream,
            session,
            events: VecDeque::new(),
            sent: record.then(Vec::new),
        };
        client.send(results).await?;
        client.feed(&remaining).await?;
        let request = client
            .session
            .request_connection(app.to_string())
            .map_err(|e| Error::Rtmp(format!("RTMP connect: {e:?}")))?;
        client.send(vec![request]).await?;
        client
            .wait_for(|e| matches!(e, ClientSessionEvent::ConnectionRequestAccepted))
            .await?;
        Ok(client)
    }

    /// Asks to publish `key` (live) and waits until it is accepted.
    pub async fn publish(&mut self, key: &str) -> Result<()> {
        let request = self
            .session
            .request_publishing(key.to_string(), PublishRequestType::Live)
            .map_err(|e| Error::Rtmp(format!("RTMP publish: {e:?}")))?;
        self.send(vec![request]).await?;
        self.wait_for(|e| matches!(e, ClientSessionEvent::PublishRequestAccepted))
            .await
    }

    /// Asks to play `key` and waits until it is accepted.
    pub async fn play(&mut self, key: &str) -> Result<()> {
        let request = self
            .session
            .request_playback(key.to_string())
            .map_err(|e| Error::Rtmp(format!("RTMP play: {e:?}")))?;
        self.send(vec![request]).await?;
        self.wait_for(|e| matches!(e, ClientSessionEvent::PlaybackRequestAccepted))
            .await
    }

    /// Sends one video (`video`) or audio message.
    pub async fn media(&mut self, video: bool, data: Bytes, timestamp: u32) -> Result<()> {
        let ts = RtmpTimestamp::new(timestamp);
        let r = if video {
            self.session.publish_video_data(data, ts, false)
        } else {
            self.session.publish_audio_data(data, ts, false)
        }
        .map_err(|e| Error::Rtmp(format!("RTMP media: {e:?}")))?;
        self.send(vec![r]).await
    }

    /// Sends the stream's metadata (`@setDataFrame`).
    pub async fn metadata(&mut self, metadata: &StreamMetadata) -> Result<()> {
        let r = self
            .session
            .publish_metadata(metadata)
            .map_err(|e| Error::Rtmp(format!("RTMP metadata: {e:?}")))?;
        self.send(vec![r]).await
    }

    /// Reads what the server sent into `buf`: the count, 0 once it closed.
    /// Cancel-safe: nothing is lost if another branch of a `select!` wins.
    pub async fn read(&mut self, buf: &mut [u8]) -> Result<usize> {
        self.stream
            .read(buf)
            .await
            .map_err(|e| Error::Rtmp(format!("RTMP read: {e}")))
    }

    /// Acts on bytes the server sent (answers it where the protocol says);
    /// the events they raised are queued for [`RtmpClient::take_events`].
    pub async fn feed(&mut self, bytes: &[u8]) -> Result<()> {
        let results = self
            .session
            .handle_input(bytes)
            .map_err(|e| Error::Rtmp(format!("malformed RTMP from the server: {e:?}")))?;
        self.send(results).await
    }

    /// The events raised since the last call.
    pub fn take_events(&mut self) -> Vec<ClientSessionEvent> {
        self.events.drain(..).collect()
    }

    /// Writes bytes as they are, outside the session.
    pub async fn write_raw(&mut self, bytes: &[u8]) -> Result<()> {
        write(&mut self.stream, bytes).await
    }

    async fn send(&mut self, results: Vec<ClientSessionResult>) -> Result<()> {
        for r in results {
            match r {
                ClientSessionResult::OutboundResponse(p) => {
                    if let Some(sent) = &mut self.sent {
                        sent.extend_from_slice(&p.bytes);
                    }
                    write(&mut self.stream, &p.bytes).await?
                }
                ClientSessionResult::RaisedEvent(e) => self.events.push_back(e),
                ClientSessionResult::UnhandleableMessageReceived(_) => {}
            }
        }
        Ok(())
    }

    /// Reads until an event `want` names arrives (events before it are
    /// dropped); a refusal of the connection or the stream ends it.
    async fn wait_for(&mut self, want: impl Fn(&ClientSessionEvent) -> bool) -> Result<()> {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            while let Some(e) = self.events.pop_front() {
                if want(&e) {
                    return Ok(());
                }
                if let ClientSessionEvent::ConnectionRequestRejected { description } = &e {
                    return Err(Error::Rtmp(format!(
                        "the server refused the connection: {description}"
                    )));
                }
                if let ClientSessionEvent::UnhandleableOnStatusCode { code } = &e {
                    if code.contains("Failed")
                        || code.contains("BadName")
                        || code.contains("Denied")
                    {
                        return Err(Error::Rtmp(format!("the server refused: {code}")));
                    }
                }
            }
            let n = self.read(&mut buf).await?;
            if n == 0 {
                return Err(Error::Rtmp("the server closed the connection".into()));
            }
            self.feed(&buf[..n]).await?;
        }
    }
}

async fn write<S: AsyncWrite + Unpin>(stream: &mut S, bytes: &[u8]) -> Result<()> {
    stream
        .write_all(bytes)
        .await
        .map_err(|e| Error::Rtmp(format!("RTMP write: {e}")))
}
