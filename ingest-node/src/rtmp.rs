//! RTMP ingest: `rtmp://HOST/APP/STREAM` publishes broadcast `APP/STREAM`.
//!
//! A publish is held until the claim answer (bounded): claimed → accepted;
//! owned by another node → refused with a status naming the owner and its
//! RTMP URL; no claim service → the configured policy. While the claim is
//! asked for, a `publish` track keeps the broadcast live; `video` and `audio`
//! tracks appear with their first media, and every track closes when the
//! publisher goes away in any way (unpublish, TCP close, idle time-out, a
//! protocol error), because each is held by a guard the connection owns.

use crate::error::{Error, Result};
use std::sync::Arc;
use std::time::{Duration, Instant};

use claims_proto::listen::{self, Gate};
use claims_proto::names;

use rml_rtmp::handshake::{Handshake, HandshakeProcessResult, PeerType};
use rml_rtmp::sessions::{
    ServerSession, ServerSessionConfig, ServerSessionEvent, ServerSessionResult,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

mod status;

use crate::bridge::{BridgeView, ClaimState};
use crate::gate::{Counted, PublishGate, Refusal, Refused};
use crate::media::{Hub, Publishing};
use crate::registry::TrackGuard;

pub struct Ingest {
    /// Whether a publisher may start, and what it is told.
    pub gate: Arc<PublishGate>,
    pub hub: Hub,
    /// A connection whose peer completes no RTMP message for this long is
    /// closed; so is a publish that sends no media for this long.
    pub idle_timeout: Duration,
    /// Most bytes a connection may send towards one message before it
    /// completes (what the RTMP parser buffers for it).
    pub max_message: usize,
    /// Where viewers play, for the hint given to RTMP players.
    pub advertise_http: String,
}

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves RTMP on `listener` for the connections `gate` admits, until
/// `shutdown`.
pub async fn serve(
    listener: TcpListener,
    gate: Arc<Gate>,
    ingest: Arc<Ingest>,
    shutdown: CancellationToken,
) {
    while let Some(socket) = listen::accept(&listener, &gate, &shutdown).await {
        let peer = socket.peer();
        let ingest = ingest.clone();
        let shutdown = shutdown.clone();
        let span = tracing::info_span!("rtmp", %peer);
        tokio::spawn(
            async move {
                ingest.gate.metrics.rtmp_connections.inc();
                let why = tokio::select! {
                    r = serve_connection(ingest.clone(), socket) => r,
                    _ = shutdown.cancelled() => Err(Error::Rtmp("node shutting down".into())),
                };
                match why {
                    Ok(()) => tracing::debug!("connection closed"),
                    Err(e) => tracing::info!(reason = %e, "connection ended"),
                }
                ingest.gate.metrics.rtmp_connections.dec();
            }
            .instrument(span),
        );
    }
}

/// Serves one RTMP connection (any byte stream: TCP, or an in-memory pipe
/// in the fuzz targets) until it ends; every track it opened is closed when
/// this returns.
pub async fn serve_connection<S>(ingest: Arc<Ingest>, socket: S) -> Outcome
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut conn = Connection {
        ingest,
        socket,
        session: None,
        publishing: None,
        close_after_write: false,
        progress_at: Instant::now(),
        unanswered: 0,
        media_at: None,
        claim: None,
    };
    conn.run().await
}

/// A publish in progress; dropping it closes every track and ends viewers.
struct Published {
    broadcast: String,
    app: String,
    key: String,
    media: Publishing,
    /// Holds the broadcast live while its claim is asked for, until the
    /// first media track exists.
    gate: Option<TrackGuard>,
    video: Option<TrackGuard>,
    audio: Option<TrackGuard>,
    _counted: Counted,
}

impl Drop for Published {
    fn drop(&mut self) {
        tracing::info!(broadcast = %self.broadcast, "publish ended");
    }
}

struct Connection<S> {
    ingest: Arc<Ingest>,
    socket: S,
    session: Option<ServerSession>,
    publishing: Option<Published>,
    close_after_write: bool,
    /// When the peer last completed a message.
    progress_at: Instant,
    /// Bytes received since then.
    unanswered: usize,
    /// While publishing: when media last came (or the publish began).
    media_at: Option<Instant>,
    /// While publishing: the bridge's picture and the broadcast, to drop
    /// the publisher the moment another node takes its claim over.
    claim: Option<(watch::Receiver<BridgeView>, String)>,
}

/// Resolves (with the taker's node id) when `broadcast`'s claim here is
/// taken over by another node; never while there is nothing to watch.
async fn taken_over(claim: Option<&mut (watch::Receiver<BridgeView>, String)>) -> String {
    let Some((rx, broadcast)) = claim else {
        return std::future::pending().await;
    };
    loop {
        if let Some(ClaimState::Lost {
            taken_by: Some(by), ..
        }) = rx.borrow_and_update().states.get(broadcast.as_str())
        {
            return by.clone();
        }
        if rx.changed().await.is_err() {
            return std::future::pending().await;
        }
    }
}

pub type Outcome = Result<()>;

impl<S: AsyncRead + AsyncWrite + Unpin> Connection<S> {
    async fn run(&mut self) -> Outcome {
        let remaining = tokio::time::timeout(HANDSHAKE_TIMEOUT, self.handshake())
            .await
            .map_err(|_| {
                Error::Rtmp(format!(
                    "no complete handshake within {HANDSHAKE_TIMEOUT:?}"
                ))
            })??;
        let (session, results) = ServerSession::new(ServerSessionConfig::new())
            .map_err(|e| Error::Rtmp(format!("cannot start an RTMP session: {e}")))?;
        self.session = Some(session);
        self.apply(results).await?;
        if !remaining.is_empty() {
            self.unanswered = remaining.len();
            if self.input(&remaining).await? {
                self.unanswered = 0;
            }
        }
        let mut buf = vec![0u8; 64 * 1024];
        self.progress_at = Instant::now();
        loop {
            if self.close_after_write {
                return Ok(());
            }
            let (deadline, why) = self.deadline();
            let read = tokio::time::timeout_at(deadline.into(), self.socket.read(&mut buf));
            let n = tokio::select! {
                r = read => match r {
                    Err(_) => return Err(Error::Rtmp(why)),
                    Ok(Err(e)) => return Err(Error::Rtmp(format!("read failed: {e}"))),
                    Ok(Ok(0)) => return Ok(()),
                    Ok(Ok(n)) => n,
                },
                by = taken_over(self.claim.as_mut()) => {
                    self.ingest.gate.metrics.publishes_refused.with_label_values(&["taken_over"]).inc();
                    return Err(Error::Rtmp(format!(
                        "claim taken over by node {by} (a newer publisher there won); this publisher is dropped"
                    )));
                }
            };
            self.unanswered += n;
            if self.input(&buf[..n]).await? {
                self.progress_at = Instant::now();
                self.unanswered = 0;
            } else if self.unanswered > self.ingest.max_message {
                return Err(Error::Rtmp(format!(
                    "{} bytes received towards one RTMP message; at most {} are allowed (--max-rtmp-message)",
                    self.unanswered, self.ingest.max_message
                )));
            }
        }
    }

    /// When the connection is closed unless the peer makes progress, and
    /// why: every message must complete within the idle timeout (not
    /// merely some bytes arrive), and a publish must keep sending media.
    fn deadline(&self) -> (Instant, String) {
        let idle = self.ingest.idle_timeout;
        let message = (
            self.progress_at + idle,
            format!("no complete RTMP message for {idle:?}"),
        );
        match self.media_at {
            Some(at) if at + idle < message.0 => {
                (at + idle, format!("publishing, but no media for {idle:?}"))
            }
            _ => message,
        }
    }

    async fn handshake(&mut self) -> Result<Vec<u8>> {
        let mut handshake = Handshake::new(PeerType::Server);
        let mut buf = vec![0u8; 4096];
        loop {
            let n = self
                .socket
                .read(&mut buf)
                .await
                .map_err(|e| Error::Rtmp(format!("read failed during handshake: {e}")))?;
            if n == 0 {
                return Err(Error::Rtmp("closed during the handshake".into()));
            }
            let step = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                handshake.process_bytes(&buf[..n])
            }))
            .map_err(|_| {
                Error::Rtmp("bad RTMP handshake (the parser gave up on it)".to_string())
            })?;
            match step {
                Ok(HandshakeProcessResult::InProgress { response_bytes }) => {
                    self.write(&response_bytes).await?;
                }
                Ok(HandshakeProcessResult::Completed {
                    response_bytes,
                    remaining_bytes,
                }) => {
                    self.write(&response_bytes).await?;
                    return Ok(remaining_bytes);
                }
                Err(e) => return Err(Error::Rtmp(format!("bad RTMP handshake: {e:?}"))),
            }
        }
    }

    async fn write(&mut self, bytes: &[u8]) -> Outcome {
        tokio::time::timeout(WRITE_TIMEOUT, self.socket.write_all(bytes))
            .await
            .map_err(|_| Error::Rtmp("peer stopped reading".to_string()))?
            .map_err(|e| Error::Rtmp(format!("write failed: {e}")))
    }

    fn session(&mut self) -> &mut ServerSession {
        self.session
            .as_mut()
            .expect("the session exists once the handshake completed")
    }

    /// Feeds `bytes` to the RTMP session; whether a message completed.
    async fn input(&mut self, bytes: &[u8]) -> Result<bool> {
        self.ingest.gate.metrics.bytes_in.inc_by(bytes.len() as u64);
        // rml_rtmp panics on some malformed messages (an AMF0 command with
        // fewer than three values, found by the fuzzer): contain it, and
        // close this connection as for any other protocol error.
        let session = self.session();
        let results =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| session.handle_input(bytes)))
                .map_err(|_| {
                    Error::Rtmp("malformed RTMP input (the RTMP parser gave up on it)".to_string())
                })?
                .map_err(|e| Error::Rtmp(format!("malformed RTMP input: {e}")))?;
        // A message completed when the session raised something for it;
        // an outbound packet alone may be an acknowledgement the session
        // sends by byte count, which says nothing of progress.
        let progress = results.iter().any(|r| {
            matches!(
                r,
                ServerSessionResult::RaisedEvent(_)
                    | ServerSessionResult::UnhandleableMessageReceived(_)
            )
        });
        self.apply(results).await?;
        Ok(progress)
    }

    async fn apply(&mut self, results: Vec<ServerSessionResult>) -> Outcome {
        let mut queue = std::collections::VecDeque::from(results);
        while let Some(result) = queue.pop_front() {
            match result {
                ServerSessionResult::OutboundResponse(packet) => self.write(&packet.bytes).await?,
                ServerSessionResult::RaisedEvent(event) => {
                    queue.extend(self.on_event(event).await?);
                }
                ServerSessionResult::UnhandleableMessageReceived(_) => {}
            }
        }
        Ok(())
    }

    async fn on_event(&mut self, event: ServerSessionEvent) -> Result<Vec<ServerSessionResult>> {
        match event {
            ServerSessionEvent::ConnectionRequested {
                request_id,
                app_name,
            } => {
                tracing::debug!(app = %names::quote(&app_name), "connect");
                self.session()
                    .accept_request(request_id)
                    .map_err(|e| Error::Rtmp(format!("cannot accept connect: {e}")))
            }
            ServerSessionEvent::PublishStreamRequested {
                request_id,
                app_name,
                stream_key,
                ..
            } => self.on_publish(request_id, app_name, stream_key).await,
            ServerSessionEvent::PublishStreamFinished {
                app_name,
                stream_key,
            } => {
                if self
                    .publishing
                    .as_ref()
                    .is_some_and(|p| p.app == app_name && p.key == strip_query(&stream_key))
                {
                    self.publishing = None;
                    self.media_at = None;
                    self.claim = None;
                }
                Ok(vec![])
            }
            ServerSessionEvent::VideoDataReceived {
                app_name,
                stream_key,
                data,
                timestamp,
            } => {
                self.on_media(&app_name, &stream_key, true, &data, timestamp.value);
                Ok(vec![])
            }
            ServerSessionEvent::AudioDataReceived {
                app_name,
                stream_key,
                data,
                timestamp,
            } => {
                self.on_media(&app_name, &stream_key, false, &data, timestamp.value);
                Ok(vec![])
            }
            ServerSessionEvent::PlayStreamRequested {
                request_id,
                app_name,
                stream_key,
                ..
            } => {
                let hint = format!(
                    "this node serves viewers over HTTP-FLV: {}/{app_name}/{}.flv",
                    self.ingest.advertise_http,
                    strip_query(&stream_key)
                );
                self.refuse(request_id, "NetStream.Play.Failed", &hint)
            }
            _ => Ok(vec![]),
        }
    }

    async fn on_publish(
        &mut self,
        request_id: u32,
        app: String,
        key: String,
    ) -> Result<Vec<ServerSessionResult>> {
        let key = strip_query(&key).to_string();
        let broadcast = format!("{app}/{key}");
        let gate = self.ingest.gate.clone();
        if self.publishing.is_some() {
            let refusal = Refusal::new(Refused::Busy, "this connection already publishes");
            return self.refuse_publish(request_id, gate.refused(&broadcast, refusal));
        }
        let admission = match gate.publish(&broadcast).await {
            Ok(admission) => admission,
            Err(refusal) => return self.refuse_publish(request_id, refusal),
        };
        let Some(media) = self.ingest.hub.publish(&broadcast) else {
            let refusal = Refusal::new(
                Refused::Busy,
                format!("{broadcast} is already being published on this node"),
            );
            return self.refuse_publish(request_id, gate.refused(&broadcast, refusal));
        };
        self.media_at = Some(Instant::now());
        self.claim = Some((gate.bridge.subscribe(), broadcast.clone()));
        self.publishing = Some(Published {
            broadcast,
            app,
            key,
            media,
            gate: Some(admission.track),
            video: None,
            audio: None,
            _counted: admission.counted,
        });
        self.session()
            .accept_request(request_id)
            .map_err(|e| Error::Rtmp(format!("cannot accept publish: {e}")))
    }

    /// Turns a publisher away with the `onStatus` code its reason calls
    /// for: `Denied` where the node takes nothing now, `BadName` where the
    /// name is the trouble (bad, busy, owned elsewhere).
    fn refuse_publish(
        &mut self,
        request_id: u32,
        refusal: Refusal,
    ) -> Result<Vec<ServerSessionResult>> {
        let code = match refusal.why {
            Refused::Draining | Refused::Unavailable => "NetStream.Publish.Denied",
            Refused::BadName | Refused::Busy | Refused::OwnedElsewhere => {
                "NetStream.Publish.BadName"
            }
        };
        self.refuse(request_id, code, &refusal.reason)
    }

    /// Refuses a `publish` or `play` with an `onStatus` error every
    /// client reads (see `status.rs`), then closes the connection.
    fn refuse(
        &mut self,
        request_id: u32,
        code: &str,
        description: &str,
    ) -> Result<Vec<ServerSessionResult>> {
        // The session forgets the request; its own `_error` answer, which
        // few clients read, is not sent.
        let _ = self.session().reject_request(request_id, code, description);
        self.close_after_write = true;
        status::refusal(code, description)?
            .into_iter()
            .map(|bytes| {
                Ok(ServerSessionResult::OutboundResponse(
                    rml_rtmp::chunk_io::Packet {
                        bytes,
                        can_be_dropped: false,
                    },
                ))
            })
            .collect()
    }

    fn on_media(&mut self, app: &str, key: &str, video: bool, data: &[u8], timestamp: u32) {
        let Some(p) = self.publishing.as_mut() else {
            return;
        };
        if p.app != app || p.key != strip_query(key) {
            return;
        }
        self.media_at = Some(Instant::now());
        let slot = if video { &mut p.video } else { &mut p.audio };
        if slot.is_none() {
            let track = if video { "video" } else { "audio" };
            *slot = self.ingest.gate.registry.open(&p.broadcast, track);
            tracing::info!(broadcast = %p.broadcast, track, "track live");
            // The media track now holds the claim; the gate can go.
            p.gate = None;
        }
        let fanout = if video {
            p.media.stream.video(timestamp, data)
        } else {
            p.media.stream.audio(timestamp, data)
        };
        if fanout.dropped > 0 {
            self.ingest
                .gate
                .metrics
                .viewers_dropped
                .inc_by(fanout.dropped as u64);
            tracing::info!(broadcast = %p.broadcast, dropped = fanout.dropped, "dropped slow viewers");
        }
    }
}

fn strip_query(key: &str) -> &str {
    key.split('?').next().unwrap_or(key)
}
