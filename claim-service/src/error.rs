//! The crate's one error type, and the one place it becomes a gRPC status.

use tonic::{Code, Status};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Input that breaks a rule of the contract (a bad name, a bad field).
    #[error("{0}")]
    InvalidArgument(String),
    /// A message that is not allowed at this point of a session.
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    NotFound(String),
    /// etcd answered with an error or could not be reached.
    #[error("etcd: {0}")]
    Etcd(#[from] etcd_client::Error),
    /// An etcd call took longer than the configured time-out.
    #[error("etcd did not answer {op} within {timeout:?}")]
    EtcdTimeout {
        op: &'static str,
        timeout: std::time::Duration,
    },
    /// The service cannot answer yet (view not synced, shutting down).
    #[error("{0}")]
    Unavailable(String),
    /// A watch asked for history etcd no longer keeps.
    #[error("revision {requested} has been compacted; the oldest revision still available is {compacted}")]
    Compacted { requested: i64, compacted: i64 },
    /// Another session for the same node took over.
    #[error("{0}")]
    Superseded(String),
}

impl Error {
    /// Whether the failure is the store being unreachable or slow, as opposed
    /// to a definite answer.
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            Error::Etcd(_) | Error::EtcdTimeout { .. } | Error::Unavailable(_)
        )
    }
}

impl From<Error> for Status {
    fn from(err: Error) -> Self {
        let code = match &err {
            Error::InvalidArgument(_) => Code::InvalidArgument,
            Error::FailedPrecondition(_) => Code::FailedPrecondition,
            Error::NotFound(_) => Code::NotFound,
            Error::Etcd(_) | Error::EtcdTimeout { .. } | Error::Unavailable(_) => Code::Unavailable,
            Error::Compacted { .. } => Code::OutOfRange,
            Error::Superseded(_) => Code::Aborted,
        };
        Status::new(code, err.to_string())
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
