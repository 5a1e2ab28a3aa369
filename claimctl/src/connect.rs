//! How claimctl reaches a claim service: a channel to one of --server
//! (over TLS when asked), and the credential each request carries (the
//! read token for reads, the admin token or certificate for changes).

use claims_proto::v1 as pb;
use pb::ownership_client::OwnershipClient;
use tonic::transport::Channel;
use tonic::Status;

use crate::cli::Cli;

fn read_token_file(
    path: Option<&std::path::PathBuf>,
    flag: &str,
) -> Result<Option<String>, Status> {
    let Some(path) = path else {
        return Ok(None);
    };
    std::fs::read_to_string(path)
        .map(|t| Some(t.trim().to_string()))
        .map_err(|e| Status::invalid_argument(format!("{flag} {}: {e}", path.display())))
}

fn bearer(token: &str) -> Result<tonic::metadata::MetadataValue<tonic::metadata::Ascii>, Status> {
    format!("Bearer {token}")
        .parse()
        .map_err(|_| Status::invalid_argument("the token holds characters not allowed in a header"))
}

pub type Reader = OwnershipClient<
    tonic::service::interceptor::InterceptedService<
        Channel,
        Box<dyn FnMut(tonic::Request<()>) -> Result<tonic::Request<()>, Status> + Send>,
    >,
>;

impl Cli {
    /// The admin token, if one is given.
    pub fn token(&self) -> Result<Option<String>, Status> {
        if let Some(t) = &self.admin_token {
            return Ok(Some(t.trim().to_string()));
        }
        read_token_file(self.admin_token_file.as_ref(), "--admin-token-file")
    }

    /// The credential sent with reads: the read token, else the admin token.
    pub fn read_token(&self) -> Result<Option<String>, Status> {
        match read_token_file(self.read_token_file.as_ref(), "--read-token-file")? {
            Some(t) => Ok(Some(t)),
            None => self.token(),
        }
    }

    pub fn admin_request<T>(&self, msg: T) -> Result<tonic::Request<T>, Status> {
        let mut req = tonic::Request::new(msg);
        match self.token()? {
            Some(token) => req.metadata_mut().insert("authorization", bearer(&token)?),
            // An admin certificate speaks for itself.
            None if self.tls_cert.is_some() => None,
            None => {
                return Err(Status::unauthenticated(
                    "this command needs an admin credential: --admin-token, CLAIMCTL_ADMIN_TOKEN, --admin-token-file, or an admin certificate (--tls-cert)",
                ))
            }
        };
        Ok(req)
    }

    /// A lazy channel to the `i`-th --server URL (wrapping around).
    pub fn channel(&self, i: usize) -> Result<Channel, Status> {
        let tls = claims_proto::client::TlsFiles {
            ca: self.tls_ca.clone(),
            cert: self.tls_cert.clone(),
            key: self.tls_key.clone(),
        };
        let server = &self.server[i % self.server.len()];
        tls.load()
            .and_then(|tls| claims_proto::client::endpoint(server, tls.as_ref()))
            .map(|e| e.connect_lazy())
            .map_err(|e| Status::invalid_argument(format!("--server {server}: {e}")))
    }

    /// An `Ownership` client on `channel` sending the read credential.
    pub fn reader(&self, channel: Channel) -> Result<Reader, Status> {
        let credential = match self.read_token()? {
            Some(token) => Some(bearer(&token)?),
            None => None,
        };
        Ok(OwnershipClient::with_interceptor(
            channel,
            Box::new(move |mut req: tonic::Request<()>| {
                if let Some(value) = &credential {
                    req.metadata_mut().insert("authorization", value.clone());
                }
                Ok(req)
            }),
        ))
    }
}
