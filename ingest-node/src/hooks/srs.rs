//! SRS `http_hooks` (`on_publish`, `on_unpublish`, `on_play`, `on_stop`):
//! a JSON body with `action`, `client_id`, `app`, `stream`, ...; SRS goes
//! on when the answer is HTTP 200 with `0` or `{"code": 0}`, and refuses the
//! client on anything else. Tried against SRS 6.0.157: its `client_id` is
//! the `publish.cid` of its stream list.

use crate::error::{Error, Result};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::model::{Answer, Hook};

#[derive(Deserialize)]
struct Callback {
    action: String,
    #[serde(default)]
    client_id: String,
    #[serde(default)]
    app: String,
    #[serde(default)]
    stream: String,
    #[serde(default)]
    param: String,
}

pub fn parse(body: &[u8]) -> Result<Hook> {
    let c: Callback = serde_json::from_slice(body)
        .map_err(|e| Error::Unreadable(format!("not an SRS http_hooks callback: {e}")))?;
    let broadcast = format!("{}/{}", c.app, c.stream);
    Ok(match c.action.as_str() {
        "on_publish" if c.param.contains(crate::relay::PARAM) => Hook::Relayed {
            broadcast,
            client: c.client_id,
            query: c.param,
        },
        "on_publish" => Hook::Publish {
            broadcast,
            client: c.client_id,
        },
        "on_unpublish" => Hook::PublishDone {
            broadcast,
            client: c.client_id,
        },
        "on_play" => Hook::Play { broadcast },
        // A player left, a client closed: SRS goes on whatever the answer.
        "on_stop" | "on_close" => Hook::Notice {
            what: format!("action {}", c.action),
        },
        other => Hook::Undecided {
            what: format!("action {other}"),
        },
    })
}

/// `{"code": 0}` goes on; any other code refuses the client (SRS logs the
/// body). SRS cannot redirect a player: where the sidecar cannot relay the
/// owner's stream in (see `players.rs`), a player at a node that does not
/// own the broadcast is refused, told where it is.
pub fn answer(answer: Answer) -> Response {
    let (code, msg) = match answer {
        Answer::Allow => (0, String::from("OK")),
        Answer::Redirect { location } => (
            403,
            format!("this node does not own the stream; play it at {location}"),
        ),
        Answer::Refuse { reason } => (403, reason),
        Answer::NotFound { reason } => (404, reason),
        Answer::Bad { reason } => (400, reason),
    };
    let body = serde_json::json!({ "code": code, "msg": msg });
    (StatusCode::OK, axum::Json(body)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn callbacks_from_the_srs_documentation() {
        // The on_publish SRS 6.0.157 sent.
        let publish = br#"{"server_id":"vid-y9807az","service_id":"687544d0","action":"on_publish","client_id":"191f2g5s","ip":"127.0.0.1","vhost":"__defaultVhost__","app":"live","tcUrl":"rtmp://127.0.0.1:18935/live","stream":"cam1","param":"","stream_url":"/live/cam1","stream_id":"vid-06a07fg"}"#;
        assert_eq!(
            parse(publish).unwrap(),
            Hook::Publish {
                broadcast: "live/cam1".into(),
                client: "191f2g5s".into()
            }
        );
        let unpublish = br#"{"action":"on_unpublish","client_id":"341w361a","ip":"127.0.0.1","vhost":"__defaultVhost__","app":"live","stream":"livestream","param":""}"#;
        assert!(matches!(
            parse(unpublish).unwrap(),
            Hook::PublishDone { .. }
        ));
        let play = br#"{"action":"on_play","client_id":"3y1y2c0d","ip":"127.0.0.1","vhost":"__defaultVhost__","app":"live","stream":"livestream","param":"","pageUrl":""}"#;
        assert!(matches!(parse(play).unwrap(), Hook::Play { .. }));
        let stop =
            br#"{"action":"on_stop","client_id":"3y1y2c0d","app":"live","stream":"livestream"}"#;
        assert!(matches!(parse(stop).unwrap(), Hook::Notice { .. }));
        let connect = br#"{"action":"on_connect","client_id":"3y1y2c0d","app":"live"}"#;
        assert!(matches!(parse(connect).unwrap(), Hook::Undecided { .. }));
        assert!(parse(b"{}").is_err());
        assert!(parse(b"0").is_err());
    }

    #[tokio::test]
    async fn answers_srs_acts_on() {
        let body = |a| async move {
            let r = answer(a);
            assert_eq!(r.status(), 200);
            let bytes = axum::body::to_bytes(r.into_body(), 1 << 16).await.unwrap();
            serde_json::from_slice::<serde_json::Value>(&bytes).unwrap()
        };
        assert_eq!(body(Answer::Allow).await["code"], 0);
        let refused = body(Answer::Refuse {
            reason: "live/x is owned by node a".into(),
        })
        .await;
        assert_ne!(refused["code"], 0);
        assert_eq!(refused["msg"], "live/x is owned by node a");
    }
}
