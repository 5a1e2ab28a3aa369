//! nginx-rtmp's `on_*` notifications (`notify_method post`: an
//! `application/x-www-form-urlencoded` body with `call`, `app`, `name`,
//! `clientid`, `addr`, `tcurl`, ...), and the answers it understands: 2xx
//! goes on, 3xx redirects (to an `rtmp://` Location: a relay pulls from
//! there), anything else drops the client.
//!
//! A redirected viewer makes nginx relay the stream from the owner, and the
//! relay publishes it locally: that publish calls `on_publish` too, with an
//! empty `tcurl` and `addr` set to the upstream's `HOST:PORT/app/name`
//! (measured with Debian's nginx-rtmp 1.2.2). It is recognised as the
//! relay, never taken for a second publisher.

use crate::error::{Error, Result};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};

use super::model::{Answer, Hook};

/// The hook an nginx-rtmp notification body means.
pub fn parse(body: &[u8]) -> Result<Hook> {
    let fields: Vec<(String, String)> = serde_urlencoded::from_bytes(body)
        .map_err(|e| Error::Unreadable(format!("not a form body nginx-rtmp sends: {e}")))?;
    let get = |k: &str| {
        fields
            .iter()
            .find(|(name, _)| name == k)
            .map(|(_, v)| v.as_str())
            .unwrap_or("")
    };
    let call = get("call");
    let broadcast = || format!("{}/{}", get("app"), get("name"));
    let client = get("clientid").to_string();
    let relay = get("tcurl").is_empty() && get("addr").contains('/');
    Ok(match call {
        "publish" if relay => Hook::Relay {
            broadcast: broadcast(),
        },
        "publish" => Hook::Publish {
            broadcast: broadcast(),
            client,
        },
        "update_publish" | "update" if relay => Hook::Relay {
            broadcast: broadcast(),
        },
        "update_publish" => Hook::Update {
            broadcast: broadcast(),
            client,
        },
        "publish_done" if relay => Hook::Notice {
            what: "the relay's publish ended".into(),
        },
        "publish_done" => Hook::PublishDone {
            broadcast: broadcast(),
            client,
        },
        "play" => Hook::Play {
            broadcast: broadcast(),
        },
        "" => {
            return Err(Error::Unreadable(
                "no `call` field: not an nginx-rtmp notification".into(),
            ))
        }
        // Ends and a player's updates: nginx goes on whatever the answer.
        "play_done" | "update_play" | "done" | "record_done" => Hook::Notice {
            what: format!("call={call}"),
        },
        other => Hook::Undecided {
            what: format!("call={other}"),
        },
    })
}

/// The HTTP answer nginx-rtmp acts on.
pub fn answer(answer: Answer) -> Response {
    match answer {
        Answer::Allow => (StatusCode::OK, "ok\n").into_response(),
        Answer::Redirect { location } => {
            (StatusCode::FOUND, [(header::LOCATION, location)], "").into_response()
        }
        Answer::Refuse { reason } => (StatusCode::FORBIDDEN, reason + "\n").into_response(),
        Answer::NotFound { reason } => (StatusCode::NOT_FOUND, reason + "\n").into_response(),
        Answer::Bad { reason } => (StatusCode::BAD_REQUEST, reason + "\n").into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notifications_as_nginx_rtmp_sends_them() {
        // Fields as nginx-rtmp's ngx_rtmp_notify_module writes them.
        let publish = b"app=live&flashver=FMLE%2F3.0&swfurl=&tcurl=rtmp%3A%2F%2F127.0.0.1%3A1935%2Flive&pageurl=&addr=127.0.0.1&clientid=5&call=publish&name=cam1&type=live";
        assert_eq!(
            parse(publish).unwrap(),
            Hook::Publish {
                broadcast: "live/cam1".into(),
                client: "5".into()
            }
        );
        let relay = b"app=live&flashver=&swfurl=&tcurl=&pageurl=&addr=127.0.0.1%3A19350%2Flive%2Fcam1&clientid=9&call=publish&name=cam1&type=live";
        assert_eq!(
            parse(relay).unwrap(),
            Hook::Relay {
                broadcast: "live/cam1".into()
            }
        );
        let update = b"app=live&tcurl=rtmp%3A%2F%2Fh%2Flive&addr=127.0.0.1&clientid=5&call=update_publish&time=4&timestamp=4000&name=cam1";
        assert_eq!(
            parse(update).unwrap(),
            Hook::Update {
                broadcast: "live/cam1".into(),
                client: "5".into()
            }
        );
        let done = b"app=live&tcurl=rtmp%3A%2F%2Fh%2Flive&addr=127.0.0.1&clientid=5&call=publish_done&name=cam1";
        assert!(matches!(parse(done).unwrap(), Hook::PublishDone { .. }));
        let play = b"app=live&tcurl=rtmp%3A%2F%2Fh%2Flive&addr=127.0.0.1&clientid=6&call=play&name=cam1&start=-2&duration=0&reset=0";
        assert_eq!(
            parse(play).unwrap(),
            Hook::Play {
                broadcast: "live/cam1".into()
            }
        );
        assert!(matches!(
            parse(b"call=play_done&app=live&name=x").unwrap(),
            Hook::Notice { .. }
        ));
        assert!(matches!(
            parse(b"call=connect&app=live").unwrap(),
            Hook::Undecided { .. }
        ));
        assert!(parse(b"hello").is_err());
        assert!(parse(&[0xff, 0xfe, b'=', 0x80]).is_err());
    }

    #[test]
    fn answers_nginx_rtmp_acts_on() {
        assert_eq!(answer(Answer::Allow).status(), 200);
        let r = answer(Answer::Redirect {
            location: "rtmp://10.0.0.1:1935/live/cam1".into(),
        });
        assert_eq!(r.status(), 302);
        assert_eq!(
            r.headers()[header::LOCATION],
            "rtmp://10.0.0.1:1935/live/cam1"
        );
        assert_eq!(
            answer(Answer::Refuse {
                reason: "owned".into()
            })
            .status(),
            403
        );
    }
}
