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
    /// Over one of the service's limits (named in the message).
    #[error("{0}")]
    ResourceExhausted(String),
    /// No credential, or a wrong one.
    #[error("{0}")]
    Unauthenticated(String),
    /// A credential that does not allow this.
    #[error("{0}")]
    PermissionDenied(String),
    /// The client did not do its part in time (a hello).
    #[error("{0}")]
    DeadlineExceeded(String),
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

    /// What a client is told: the contract's words, without the chain of
    /// causes (transport errors, h2 frames), which stays in the log.
    pub fn public(&self) -> String {
        match self {
            Error::Etcd(etcd_client::Error::GRpcStatus(s)) => format!(
                "the claim store (etcd) refused the request ({:?}); retry shortly",
                s.code()
            ),
            Error::Etcd(_) => {
                "the claim store (etcd) cannot be reached from this replica; retry shortly".into()
            }
            other => other.to_string(),
        }
    }
}

impl Error {
    /// The gRPC code a client is answered with.
    pub fn code(&self) -> Code {
        match self {
            Error::InvalidArgument(_) => Code::InvalidArgument,
            Error::FailedPrecondition(_) => Code::FailedPrecondition,
            Error::NotFound(_) => Code::NotFound,
            Error::Etcd(_) | Error::EtcdTimeout { .. } | Error::Unavailable(_) => Code::Unavailable,
            Error::Compacted { .. } => Code::OutOfRange,
            Error::Superseded(_) => Code::Aborted,
            Error::ResourceExhausted(_) => Code::ResourceExhausted,
            Error::Unauthenticated(_) => Code::Unauthenticated,
            Error::PermissionDenied(_) => Code::PermissionDenied,
            Error::DeadlineExceeded(_) => Code::DeadlineExceeded,
        }
    }
}

/// The metric label of a gRPC code (`claims_rejected_messages_total`,
/// `claims_rpc_requests_total`).
pub fn code_label(code: Code) -> &'static str {
    match code {
        Code::Ok => "ok",
        Code::Cancelled => "cancelled",
        Code::Unknown => "unknown",
        Code::InvalidArgument => "invalid_argument",
        Code::DeadlineExceeded => "deadline_exceeded",
        Code::NotFound => "not_found",
        Code::AlreadyExists => "already_exists",
        Code::PermissionDenied => "permission_denied",
        Code::ResourceExhausted => "resource_exhausted",
        Code::FailedPrecondition => "failed_precondition",
        Code::Aborted => "aborted",
        Code::OutOfRange => "out_of_range",
        Code::Unimplemented => "unimplemented",
        Code::Internal => "internal",
        Code::Unavailable => "unavailable",
        Code::DataLoss => "data_loss",
        Code::Unauthenticated => "unauthenticated",
    }
}

impl From<Error> for Status {
    fn from(err: Error) -> Self {
        if let Error::Etcd(cause) = &err {
            tracing::debug!(error = %cause, "answered a client with UNAVAILABLE");
        }
        Status::new(err.code(), err.public())
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
