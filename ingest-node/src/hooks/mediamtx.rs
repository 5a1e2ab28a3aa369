//! MediaMTX: its HTTP authentication (`authMethod: http`,
//! `authHTTPAddress`), a JSON body with `action` (`publish`, `read`, ...),
//! `path`, `id`, answered 2xx to allow and anything else to deny; and the
//! end of a publish, which MediaMTX reports only by running a command
//! (`runOnNotReady`): the README's line posts `{"action": "unpublish",
//! "path": "$MTX_PATH"}` here. Built from MediaMTX's documentation (its
//! README's authentication and hooks sections); no MediaMTX binary was at
//! hand to test against.
//!
//! MediaMTX admits one publisher per path by itself, and the command that
//! reports the end does not know the connection's id: publishers are known
//! by path alone here.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::model::{Answer, Hook};

#[derive(Deserialize)]
struct Request {
    action: String,
    #[serde(default)]
    path: String,
}

pub fn parse(body: &[u8]) -> Result<Hook, String> {
    let r: Request = serde_json::from_slice(body)
        .map_err(|e| format!("not a MediaMTX authentication request: {e}"))?;
    let broadcast = r.path.trim_matches('/').to_string();
    let client = String::new();
    Ok(match r.action.as_str() {
        "publish" => Hook::Publish { broadcast, client },
        "unpublish" => Hook::PublishDone { broadcast, client },
        "read" => Hook::Play { broadcast },
        other => Hook::Ignored {
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
    fn requests_from_the_mediamtx_documentation() {
        // The body MediaMTX's README documents for authHTTPAddress.
        let publish = br#"{
          "user": "user", "password": "password", "token": "token",
          "ip": "ip", "action": "publish", "path": "live/cam1",
          "protocol": "rtmp", "id": "id", "query": "query"
        }"#;
        assert_eq!(
            parse(publish).unwrap(),
            Hook::Publish {
                broadcast: "live/cam1".into(),
                client: String::new()
            }
        );
        let read = br#"{"user":"","password":"","token":"","ip":"127.0.0.1","action":"read","path":"live/cam1","protocol":"rtsp","id":"5f3c","query":""}"#;
        assert!(matches!(parse(read).unwrap(), Hook::Play { .. }));
        let api = br#"{"user":"","password":"","ip":"127.0.0.1","action":"api","path":"","protocol":"","id":null,"query":""}"#;
        assert!(matches!(parse(api).unwrap(), Hook::Ignored { .. }));
        let unpublish = br#"{"action":"unpublish","path":"live/cam1"}"#;
        assert!(matches!(
            parse(unpublish).unwrap(),
            Hook::PublishDone { .. }
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
