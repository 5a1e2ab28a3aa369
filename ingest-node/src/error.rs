//! The ingest node's one error type. Every failure says what was wrong in
//! words an operator can act on; the variant says whose it was: the node's
//! configuration, a peer's bytes (RTMP, a hook body, a listing), a media
//! server's API, or the claim service.

/// What went wrong.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A flag, a file it names, or a combination the node cannot run with.
    #[error("{0}")]
    Config(String),
    /// A listener could not be opened.
    #[error("cannot listen for {what} on {addr}: {source}")]
    Listen {
        what: &'static str,
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    /// Bytes from a peer that are not what its protocol sends: a hook body,
    /// a media server's listing, an API answer (untrusted input).
    #[error("{0}")]
    Unreadable(String),
    /// A media server's API could not be reached, or answered with an
    /// HTTP error (`status`, when it answered).
    #[error("{message}")]
    MediaServer {
        message: String,
        status: Option<u16>,
    },
    /// An RTMP peer: a protocol error, a refusal, a broken connection.
    #[error("{0}")]
    Rtmp(String),
    /// No claim service could be reached or answer.
    #[error("{0}")]
    ClaimService(String),
}

impl Error {
    /// A media server's API could not be reached or read.
    pub fn media_server(message: impl Into<String>) -> Self {
        Error::MediaServer {
            message: message.into(),
            status: None,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
