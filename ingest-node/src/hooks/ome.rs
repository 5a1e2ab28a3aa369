//! OvenMediaEngine's AdmissionWebhooks: a JSON body with `client` and
//! `request` (`direction` incoming = publish, outgoing = play; `status`
//! opening or closing; `url` of the stream), signed in `X-OME-Signature`
//! (HMAC-SHA1 of the body with the configured secret, base64url without
//! padding); answered `{"allowed": bool, "reason": ...}` (ignored for
//! closing). Tried against OvenMediaEngine 0.18.0: `protocol` comes
//! upper-case, `closing` adds `new_url` and is sent also for a publisher
//! that was refused.

use crate::error::{Error, Result};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha1::Sha1;

use super::model::{Answer, Hook};

#[derive(Deserialize)]
struct Admission {
    #[serde(default)]
    client: Client,
    request: Request,
}

#[derive(Deserialize, Default)]
struct Client {
    #[serde(default)]
    address: String,
    #[serde(default)]
    port: u32,
}

#[derive(Deserialize)]
struct Request {
    direction: String,
    status: String,
    url: String,
}

/// Whether `signature` (the `X-OME-Signature` header) signs `body` with
/// `secret`.
pub fn signed(secret: &[u8], body: &[u8], signature: &str) -> bool {
    let Ok(given) = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(signature.trim())
    else {
        return false;
    };
    let Ok(mut mac) = Hmac::<Sha1>::new_from_slice(secret) else {
        return false;
    };
    mac.update(body);
    mac.verify_slice(&given).is_ok()
}

/// The signature OME would send for `body` (for tests and examples).
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<Sha1>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(body);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
}

/// `APP/STREAM` of an OME stream URL (`scheme://host[:port]/app/stream[/file][?query]`).
fn broadcast_of(url: &str) -> Result<String> {
    let rest = url
        .split_once("://")
        .map(|(_, r)| r)
        .ok_or_else(|| Error::Unreadable(format!("stream URL {url:?} has no scheme")))?;
    let path = rest.split(['?', '#']).next().unwrap_or("");
    let mut segments = path.split('/').skip(1).filter(|s| !s.is_empty());
    match (segments.next(), segments.next()) {
        (Some(app), Some(stream)) => Ok(format!("{app}/{stream}")),
        _ => Err(Error::Unreadable(format!(
            "stream URL {url:?} has no /app/stream path"
        ))),
    }
}

pub fn parse(body: &[u8]) -> Result<Hook> {
    let a: Admission = serde_json::from_slice(body)
        .map_err(|e| Error::Unreadable(format!("not an OME admission request: {e}")))?;
    let broadcast = broadcast_of(&a.request.url)?;
    let client = format!("{}:{}", a.client.address, a.client.port);
    Ok(
        match (a.request.direction.as_str(), a.request.status.as_str()) {
            ("incoming", "opening") => Hook::Publish { broadcast, client },
            ("incoming", "closing") => Hook::PublishDone { broadcast, client },
            ("outgoing", "opening") => Hook::Play { broadcast },
            // A viewer left: OME goes on whatever the answer.
            ("outgoing", "closing") => Hook::Notice {
                what: "outgoing closing".into(),
            },
            (direction, status) => Hook::Undecided {
                what: format!("{direction} {status}"),
            },
        },
    )
}

/// `allowed` with the reason; OME refuses the client on `false`. OME
/// cannot send a player elsewhere: where it cannot pull the owner's stream
/// (see `players.rs`), one at a node that does not own the stream is
/// refused, told where it is.
pub fn answer(answer: Answer) -> Response {
    let (allowed, reason) = match answer {
        Answer::Allow => (true, String::from("claimed by this node")),
        Answer::Redirect { location } => (
            false,
            format!("this node does not own the stream; play it at {location}"),
        ),
        Answer::Refuse { reason } | Answer::NotFound { reason } => (false, reason),
        Answer::Bad { reason } => {
            return (
                StatusCode::BAD_REQUEST,
                axum::Json(serde_json::json!({"allowed": false, "reason": reason})),
            )
                .into_response()
        }
    };
    let body = serde_json::json!({ "allowed": allowed, "reason": reason });
    (StatusCode::OK, axum::Json(body)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    // The request example of OME's AdmissionWebhooks documentation.
    const OPENING: &[u8] = br#"{
      "client": {"address": "211.233.58.86", "port": 29291, "real_ip": "192.168.0.1", "user_agent": "Mozilla/5.0"},
      "request": {"direction": "incoming", "protocol": "webrtc", "status": "opening",
                  "url": "scheme://host[:port]/app/stream/file?query=value&query2=value2",
                  "new_url": "scheme://host[:port]/app/stream/file?query=value&query2=value2",
                  "time": "2021-05-12T13:45:00.000Z"}
    }"#;

    #[test]
    fn admissions_from_the_ome_documentation() {
        assert_eq!(
            parse(OPENING).unwrap(),
            Hook::Publish {
                broadcast: "app/stream".into(),
                client: "211.233.58.86:29291".into()
            }
        );
        let closing = br#"{"client":{"address":"211.233.58.86","port":29291},"request":{"direction":"incoming","protocol":"rtmp","status":"closing","url":"rtmp://ome:1935/app/stream","time":"2021-05-12T13:45:00.000Z"}}"#;
        assert_eq!(
            parse(closing).unwrap(),
            Hook::PublishDone {
                broadcast: "app/stream".into(),
                client: "211.233.58.86:29291".into()
            }
        );
        let play = br#"{"client":{"address":"10.0.0.9","port":5000},"request":{"direction":"outgoing","protocol":"llhls","status":"opening","url":"https://ome:3334/app/stream/llhls.m3u8"}}"#;
        assert!(
            matches!(parse(play).unwrap(), Hook::Play { broadcast } if broadcast == "app/stream")
        );
        let no_path = br#"{"client":{},"request":{"direction":"incoming","status":"opening","url":"rtmp://ome"}}"#;
        assert!(parse(no_path).is_err());
    }

    #[test]
    fn only_the_configured_secret_signs() {
        let signature = sign(b"1234", OPENING);
        assert!(signed(b"1234", OPENING, &signature));
        assert!(!signed(b"4321", OPENING, &signature));
        assert!(!signed(b"1234", b"{}", &signature));
        assert!(!signed(b"1234", OPENING, "not base64!"));
    }
}
