//! MediaMTX: its HTTP authentication (`authMethod: http`,
//! `authHTTPAddress`), a JSON body with `action` (`publish`, `read`, ...),
//! `path` and `id` (the connection's id), answered 2xx to allow and
//! anything else to deny; and the end of a publish, which MediaMTX reports
//! only by running a command (`runOnNotReady`): the README's line posts
//! `{"action": "unpublish", "path": "$MTX_PATH", "id": "$MTX_SOURCE_ID"}`
//! here. Tried against MediaMTX 1.12.2.
//!
//! The ids: for RTMP and SRT the authentication's `id` is the source id
//! its path list and `$MTX_SOURCE_ID` carry; for RTSP they differ (the
//! connection's and the session's), so an RTSP publisher is named by its
//! session id once a listing shows it, and an end that names nobody known
//! is checked against the listing. MediaMTX replaces a path's publisher
//! with a newer one by itself (`overridePublisher`, on by default): the
//! claim stays, and the replaced one's end changes nothing.
//!
//! A reader of a path nobody publishes waits when the path has
//! `runOnDemand`: the README's line posts `{"action": "demand", "path":
//! "$MTX_PATH"}` here, and the sidecar relays the owner's stream in.
//!
//! MediaMTX asks this URL about `api`, `metrics`, `pprof` and `playback`
//! too unless `authHTTPExclude` names them: those are refused here.

use crate::error::{Error, Result};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::model::{Answer, Hook};

#[derive(Deserialize)]
struct Request {
    action: String,
    #[serde(default)]
    path: String,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    query: String,
}

pub fn parse(body: &[u8]) -> Result<Hook> {
    let r: Request = serde_json::from_slice(body)
        .map_err(|e| Error::Unreadable(format!("not a MediaMTX authentication request: {e}")))?;
    let broadcast = r.path.trim_matches('/').to_string();
    let client = r.id.unwrap_or_default();
    Ok(match r.action.as_str() {
        "publish" if r.query.contains(crate::relay::PARAM) => Hook::Relayed {
            broadcast,
            client,
            query: r.query,
        },
        "publish" => Hook::Publish { broadcast, client },
        "demand" => Hook::Demand { broadcast },
        "unpublish" => Hook::PublishDone { broadcast, client },
        "read" => Hook::Play { broadcast },
        other => Hook::Undecided {
            what: format!("action {other}"),
        },
    })
}

/// 200 allows; 403 (refused, owned elsewhere), 404 and 400 deny, with the
/// reason in the body (MediaMTX logs the status).
pub fn answer(answer: Answer) -> Response {
    match answer {
        Answer::Allow => (StatusCode::OK, "ok\n".to_string()),
        Answer::Redirect { location } => (
            StatusCode::FORBIDDEN,
            format!("this node does not own the stream; read it at {location}\n"),
        ),
        Answer::Refuse { reason } => (StatusCode::FORBIDDEN, reason + "\n"),
        Answer::NotFound { reason } => (StatusCode::NOT_FOUND, reason + "\n"),
        Answer::Bad { reason } => (StatusCode::BAD_REQUEST, reason + "\n"),
    }
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_as_mediamtx_sends_them() {
        // What MediaMTX 1.12.2 posted for an RTMP publish.
        let publish = br#"{"ip":"127.0.0.1","user":"","password":"","action":"publish","path":"live/cam1","protocol":"rtmp","id":"f1d9d10f-1296-44bb-8752-f354bdf0f8fa","query":""}"#;
        assert_eq!(
            parse(publish).unwrap(),
            Hook::Publish {
                broadcast: "live/cam1".into(),
                client: "f1d9d10f-1296-44bb-8752-f354bdf0f8fa".into()
            }
        );
        let read = br#"{"user":"","password":"","token":"","ip":"127.0.0.1","action":"read","path":"live/cam1","protocol":"rtsp","id":"5f3c","query":""}"#;
        assert!(matches!(parse(read).unwrap(), Hook::Play { .. }));
        let relay = br#"{"ip":"127.0.0.1","user":"","password":"","action":"publish","path":"live/cam1","protocol":"rtmp","id":"9","query":"claims_relay=abc"}"#;
        assert_eq!(
            parse(relay).unwrap(),
            Hook::Relayed {
                broadcast: "live/cam1".into(),
                client: "9".into(),
                query: "claims_relay=abc".into()
            }
        );
        let demand = br#"{"action":"demand","path":"live/cam1"}"#;
        assert!(matches!(parse(demand).unwrap(), Hook::Demand { .. }));
        // Asked about its own API, metrics, pprof or playback: refused.
        for action in ["api", "metrics", "pprof", "playback"] {
            let body = format!(
                r#"{{"user":"","password":"","ip":"127.0.0.1","action":"{action}","path":"","protocol":"","id":null,"query":""}}"#
            );
            assert!(matches!(
                parse(body.as_bytes()).unwrap(),
                Hook::Undecided { .. }
            ));
        }
        // The README's runOnNotReady line, and the older one without an id.
        let unpublish = br#"{"action":"unpublish","path":"live/cam1","id":"f1d9d10f"}"#;
        assert_eq!(
            parse(unpublish).unwrap(),
            Hook::PublishDone {
                broadcast: "live/cam1".into(),
                client: "f1d9d10f".into()
            }
        );
        let unnamed = br#"{"action":"unpublish","path":"live/cam1"}"#;
        assert!(matches!(
            parse(unnamed).unwrap(),
            Hook::PublishDone { client, .. } if client.is_empty()
        ));
        assert!(parse(b"[]").is_err());
    }

    #[test]
    fn answers_mediamtx_acts_on() {
        assert_eq!(answer(Answer::Allow).status(), 200);
        assert_eq!(
            answer(Answer::Refuse {
                reason: "owned".into()
            })
            .status(),
            403
        );
    }
}
