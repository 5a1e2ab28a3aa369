//! What every listener of ours does with the connections it accepts, so a
//! flood of them, or clients that connect and say nothing, cannot lock
//! anyone else out (feature `listen`; the claim-service and the ingest node
//! share it):
//!
//! - caps on connections open at once, in total and per peer address; a
//!   connection over a cap is closed at once;
//! - a deadline for the first bytes (an HTTP/2 preface, a TLS hello, an
//!   RTMP handshake): a connection that sends nothing is closed;
//! - an accept loop that backs off when the process is out of file
//!   descriptors instead of spinning on the error;
//! - HTTP served with a deadline on reading each request's headers.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// Bytes a connection must send before [`Limits::first_bytes`] is up: an
/// HTTP/2 preface is 24, a TLS record header 5, an RTMP C0+C1 1,537.
const FIRST_BYTES: usize = 5;
/// Longest pause of the accept loop when the process is out of descriptors.
const MAX_ACCEPT_BACKOFF: Duration = Duration::from_secs(1);

/// What one listener lets in.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections open at once.
    pub total: usize,
    /// Connections open at once from one peer address.
    pub per_peer: usize,
    /// How long a new connection may take to send its first bytes.
    pub first_bytes: Duration,
}

/// Counts what peers hold open (connections, watches), in total and per
/// peer address, against caps.
pub struct Gate {
    what: &'static str,
    limits: Limits,
    open: Mutex<Open>,
}

#[derive(Default)]
struct Open {
    total: usize,
    by_peer: HashMap<IpAddr, usize>,
    refused: u64,
    refusals_said: EverySecond,
    pauses_said: EverySecond,
}

/// A warning said at most once a second, counting the times it was not.
#[derive(Default)]
struct EverySecond {
    last: Option<Instant>,
    unsaid: u64,
}

impl EverySecond {
    /// `Some(times unsaid since the last)` when the warning may be said now.
    fn due(&mut self) -> Option<u64> {
        let now = Instant::now();
        if self
            .last
            .is_some_and(|at| now.duration_since(at) < Duration::from_secs(1))
        {
            self.unsaid += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.unsaid))
    }
}

/// Which cap a peer would break.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Over {
    Total,
    PerPeer,
}

/// One admitted place; freed when dropped.
pub struct Pass {
    gate: Arc<Gate>,
    peer: IpAddr,
}

impl Gate {
    /// A gate for `what` (named in its log lines).
    pub fn new(what: &'static str, limits: Limits) -> Arc<Self> {
        Arc::new(Self {
            what,
            limits,
            open: Mutex::default(),
        })
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// A place for `peer`, or the cap it would break.
    pub fn admit(self: &Arc<Self>, peer: IpAddr) -> Result<Pass, Over> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let of_peer = open.by_peer.get(&peer).copied().unwrap_or(0);
        let over = if open.total >= self.limits.total {
            Some(Over::Total)
        } else if of_peer >= self.limits.per_peer {
            Some(Over::PerPeer)
        } else {
            None
        };
        if let Some(over) = over {
            open.refused += 1;
            return Err(over);
        }
        open.total += 1;
        *open.by_peer.entry(peer).or_default() += 1;
        Ok(Pass {
            gate: self.clone(),
            peer,
        })
    }

    /// A connection from `peer`, or `None` over a cap (said in the log at
    /// most once a second, with how many were refused).
    fn admit_connection(self: &Arc<Self>, peer: IpAddr) -> Option<Pass> {
        let over = match self.admit(peer) {
            Ok(pass) => return Some(pass),
            Err(over) => over,
        };
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if open.refusals_said.due().is_some() {
            tracing::warn!(
                listener = self.what,
                %peer,
                over = ?over,
                open = open.total,
                refused_so_far = open.refused,
                max = self.limits.total,
                max_per_peer = self.limits.per_peer,
                "too many connections; refusing"
            );
        }
        None
    }

    /// Says (at most once a second) that accepts pause for `pause`.
    fn out_of_descriptors(&self, error: &io::Error, pause: Duration) {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(unsaid) = open.pauses_said.due() {
            tracing::warn!(listener = self.what, %error, ?pause, pauses_unlogged = unsaid, "cannot accept: out of file descriptors; pausing accepts");
        }
    }

    /// Places held now.
    pub fn open(&self) -> usize {
        self.open.lock().unwrap_or_else(|p| p.into_inner()).total
    }

    /// Places refused over a cap so far.
    pub fn refused(&self) -> u64 {
        self.open.lock().unwrap_or_else(|p| p.into_inner()).refused
    }
}

impl Drop for Pass {
    fn drop(&mut self) {
        let mut open = self.gate.open.lock().unwrap_or_else(|p| p.into_inner());
        open.total -= 1;
        if let Some(n) = open.by_peer.get_mut(&self.peer) {
            *n -= 1;
            if *n == 0 {
                open.by_peer.remove(&self.peer);
            }
        }
    }
}

/// A connection that holds its [`Pass`], and fails its reads once its
/// first-bytes deadline passes before it sent them.
pub struct Admitted<S> {
    inner: S,
    peer: SocketAddr,
    first: Option<(usize, Pin<Box<tokio::time::Sleep>>)>,
    _pass: Pass,
}

impl<S> Admitted<S> {
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Admitted<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(result) => {
                if let Some((missing, _)) = &mut this.first {
                    *missing = missing.saturating_sub(buf.filled().len() - before);
                    if *missing == 0 {
                        this.first = None;
                    }
                }
                Poll::Ready(result)
            }
            Poll::Pending => {
                let late = match &mut this.first {
                    Some((_, deadline)) => deadline.as_mut().poll(cx).is_ready(),
                    None => false,
                };
                if late {
                    Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the peer sent nothing in time after connecting",
                    )))
                } else {
                    Poll::Pending
                }
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Admitted<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl tonic::transport::server::Connected for Admitted<TcpStream> {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

/// Whether an accept error means the process (or system) is out of file
/// descriptors or memory: waiting helps, retrying at once does not.
fn out_of_resources(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc_errno::EMFILE | libc_errno::ENFILE | libc_errno::ENOBUFS | libc_errno::ENOMEM)
    )
}

/// The errno values [`out_of_resources`] looks for (Linux numbering).
mod libc_errno {
    pub const ENOMEM: i32 = 12;
    pub const ENFILE: i32 = 23;
    pub const EMFILE: i32 = 24;
    pub const ENOBUFS: i32 = 105;
}

/// Accepts the next connection `gate` admits, with Nagle off. Connections
/// over a cap are closed at once; out of descriptors, it waits (doubling up
/// to a second) instead of spinning. `None` once `stop` is cancelled.
pub async fn accept(
    listener: &TcpListener,
    gate: &Arc<Gate>,
    stop: &CancellationToken,
) -> Option<Admitted<TcpStream>> {
    let mut backoff = Duration::from_millis(10);
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stop.cancelled() => return None,
        };
        let (socket, peer) = match accepted {
            Ok(a) => a,
            Err(e) if out_of_resources(&e) => {
                gate.out_of_descriptors(&e, backoff);
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stop.cancelled() => return None,
                }
                backoff = (backoff * 2).min(MAX_ACCEPT_BACKOFF);
                continue;
            }
            // The peer gave up before we took it (reset, aborted): nothing
            // to wait for.
            Err(e) => {
                tracing::debug!(listener = gate.what, error = %e, "accept failed");
                continue;
            }
        };
        backoff = Duration::from_millis(10);
        let Some(pass) = gate.admit_connection(peer.ip()) else {
            continue;
        };
        let _ = socket.set_nodelay(true);
        return Some(Admitted {
            inner: socket,
            peer,
            first: Some((
                FIRST_BYTES,
                Box::pin(tokio::time::sleep(gate.limits.first_bytes)),
            )),
            _pass: pass,
        });
    }
}

/// The admitted connections of `listener`, as a stream (for tonic's
/// `serve_with_incoming`); it ends when `stop` is cancelled.
pub fn incoming(
    listener: TcpListener,
    gate: Arc<Gate>,
    stop: CancellationToken,
) -> impl futures::Stream<Item = io::Result<Admitted<TcpStream>>> + Send + 'static {
    futures::stream::unfold(
        (listener, gate, stop),
        |(listener, gate, stop)| async move {
            let next = accept(&listener, &gate, &stop).await?;
            Some((Ok(next), (listener, gate, stop)))
        },
    )
}

/// Serves HTTP (1.1 and 2) on `listener` with `router` until `stop` is
/// cancelled, reading each request's headers within `header_timeout`; then
/// lets open requests finish for `grace` at most.
pub async fn serve_http(
    listener: TcpListener,
    gate: Arc<Gate>,
    router: axum::Router,
    header_timeout: Duration,
    stop: CancellationToken,
    grace: Duration,
) {
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    use hyper_util::server::conn::auto::Builder;
    use hyper_util::service::TowerToHyperService;

    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout);
    let builder = Arc::new(builder);
    while let Some(conn) = accept(&listener, &gate, &stop).await {
        let service = TowerToHyperService::new(router.clone());
        let builder = builder.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let connection = builder.serve_connection_with_upgrades(TokioIo::new(conn), service);
            tokio::pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => return,
                _ = stop.cancelled() => connection.as_mut().graceful_shutdown(),
            }
            let _ = tokio::time::timeout(grace, connection).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(total: usize, per_peer: usize) -> Limits {
        Limits {
            total,
            per_peer,
            first_bytes: Duration::from_secs(5),
        }
    }

    #[test]
    fn caps_hold_in_total_and_per_peer_and_free_on_drop() {
        let gate = Gate::new("test", limits(3, 2));
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let b: IpAddr = "127.0.0.2".parse().unwrap();
        let first = gate.admit(a).unwrap();
        let _second = gate.admit(a).unwrap();
        assert_eq!(gate.admit(a).err(), Some(Over::PerPeer));
        let _third = gate.admit(b).unwrap();
        assert_eq!(gate.admit(b).err(), Some(Over::Total));
        assert_eq!(gate.refused(), 2);
        drop(first);
        assert_eq!(gate.open(), 2);
        assert!(gate.admit(a).is_ok());
    }

    #[tokio::test]
    async fn a_connection_that_sends_nothing_is_cut_at_its_deadline() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let gate = Gate::new(
            "test",
            Limits {
                first_bytes: Duration::from_millis(200),
                ..limits(10, 10)
            },
        );
        let stop = CancellationToken::new();
        let _silent = TcpStream::connect(addr).await.unwrap();
        let mut conn = accept(&listener, &gate, &stop).await.unwrap();
        let mut buf = [0u8; 16];
        let err = conn.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);

        // One that speaks in time is not cut later, however quiet after.
        let mut talker = TcpStream::connect(addr).await.unwrap();
        let mut conn = accept(&listener, &gate, &stop).await.unwrap();
        talker.write_all(b"hello").await.unwrap();
        assert_eq!(conn.read(&mut buf).await.unwrap(), 5);
        let quiet = tokio::time::timeout(Duration::from_millis(400), conn.read(&mut buf)).await;
        assert!(quiet.is_err(), "a connection that spoke was cut: {quiet:?}");
    }
}
