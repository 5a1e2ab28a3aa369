//! What one message from a node means to its session, decided without I/O:
//! the `hello` a session starts with ([`hello`]), then, for every later
//! message ([`admit`]), an event for the claim rules, a refusal the node is
//! told (the session goes on), or a protocol error that ends the session.
//!
//! The session shell and the fuzz targets both go through these, so the
//! fuzzer exercises exactly the path hostile input takes.

use claims_proto::v1 as pb;
use pb::node_message::Msg as NodeMsg;
use tonic::Code;

use crate::claims::Event;
use crate::error::Error;
use crate::names;

/// Most tracks a `hello` may list as live.
pub const MAX_LIVE_TRACKS: usize = 100_000;

/// A session's verdict on one message after `hello`.
#[derive(Debug)]
pub enum Intake {
    /// Hand this to the claim rules.
    Event(Event),
    /// Tell the node (`rejected`) and go on; nothing changes.
    Refused {
        broadcast: String,
        track: String,
        reason: String,
        code: Code,
    },
    /// End the session with this error.
    Fatal(Error),
}

/// Checks a track's names against the contract.
pub fn check_track(t: &pb::Track) -> Result<(), String> {
    names::check_broadcast(&t.broadcast)?;
    names::check_track(&t.track)
}

/// `text` cut to at most `max` bytes (on a character boundary): a refusal
/// echoes a bad name only as far as a good one could reach.
fn cut(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

/// `event` for a track whose names follow the rules; refused otherwise.
fn checked(t: pb::Track, event: fn(String, String) -> Event) -> Intake {
    match check_track(&t) {
        Ok(()) => Intake::Event(event(t.broadcast, t.track)),
        Err(reason) => Intake::Refused {
            broadcast: cut(t.broadcast, names::MAX_BROADCAST_LEN),
            track: cut(t.track, names::MAX_TRACK_LEN),
            reason,
            code: Code::InvalidArgument,
        },
    }
}

/// The verdict on `msg`, a message that arrived after `hello`. Rate limits
/// are the shell's: they depend on time.
pub fn admit(msg: Option<NodeMsg>) -> Intake {
    match msg {
        Some(NodeMsg::Hello(_)) => Intake::Fatal(Error::FailedPrecondition(
            "hello sent twice; a session has one hello, at its start".into(),
        )),
        Some(NodeMsg::Created(t)) => {
            checked(t, |broadcast, track| Event::Created { broadcast, track })
        }
        Some(NodeMsg::Closed(t)) => {
            checked(t, |broadcast, track| Event::Closed { broadcast, track })
        }
        Some(NodeMsg::Goodbye(_)) => Intake::Event(Event::Goodbye),
        Some(NodeMsg::Takeover(t)) => match names::check_broadcast(&t.broadcast) {
            Ok(()) => Intake::Event(Event::TakeoverAsked {
                broadcast: t.broadcast,
                fencing_token: t.fencing_token,
            }),
            Err(reason) => Intake::Refused {
                broadcast: cut(t.broadcast, names::MAX_BROADCAST_LEN),
                track: String::new(),
                reason,
                code: Code::InvalidArgument,
            },
        },
        None => Intake::Refused {
            broadcast: String::new(),
            track: String::new(),
            reason: "empty message: set one of hello, created, closed, goodbye, takeover".into(),
            code: Code::InvalidArgument,
        },
    }
}

/// The `hello` a session must start with, from its first message (`None`:
/// the stream ended first), checked against the contract.
pub fn hello(first: Option<pb::NodeMessage>) -> Result<pb::Hello, Error> {
    let hello = match first.and_then(|m| m.msg) {
        Some(NodeMsg::Hello(hello)) => hello,
        Some(other) => {
            return Err(Error::FailedPrecondition(format!(
                "{} before hello; a session must start with hello",
                message_name(&other)
            )))
        }
        None => {
            return Err(Error::FailedPrecondition(
                "the stream ended or sent an empty message before hello".into(),
            ))
        }
    };
    names::check_node_id(&hello.node_id).map_err(Error::InvalidArgument)?;
    names::check_endpoints(&hello.endpoints).map_err(Error::InvalidArgument)?;
    if hello.live.len() > MAX_LIVE_TRACKS {
        return Err(Error::InvalidArgument(format!(
            "hello lists {} live tracks; at most {MAX_LIVE_TRACKS} are allowed",
            hello.live.len()
        )));
    }
    for t in &hello.live {
        check_track(t).map_err(|e| Error::InvalidArgument(format!("hello.live: {e}")))?;
    }
    Ok(hello)
}

fn message_name(msg: &NodeMsg) -> &'static str {
    match msg {
        NodeMsg::Hello(_) => "hello",
        NodeMsg::Created(_) => "created",
        NodeMsg::Closed(_) => "closed",
        NodeMsg::Goodbye(_) => "goodbye",
        NodeMsg::Takeover(_) => "takeover",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(b: &str, t: &str) -> pb::Track {
        pb::Track {
            broadcast: b.into(),
            track: t.into(),
        }
    }

    #[test]
    fn verdicts() {
        assert!(matches!(
            admit(Some(NodeMsg::Hello(pb::Hello::default()))),
            Intake::Fatal(Error::FailedPrecondition(_))
        ));
        assert!(matches!(
            admit(Some(NodeMsg::Created(t("live/../x", "video")))),
            Intake::Refused {
                code: Code::InvalidArgument,
                ..
            }
        ));
        assert!(matches!(
            admit(Some(NodeMsg::Closed(t("live/x", "")))),
            Intake::Refused { .. }
        ));
        assert!(matches!(
            admit(Some(NodeMsg::Closed(t("live/x", "video")))),
            Intake::Event(Event::Closed { broadcast, track }) if broadcast == "live/x" && track == "video"
        ));
        assert!(matches!(admit(None), Intake::Refused { .. }));
    }

    #[test]
    fn refusals_echo_names_no_longer_than_a_good_one() {
        let huge = "\u{e9}".repeat(1_000_000);
        let Intake::Refused {
            broadcast,
            track,
            reason,
            ..
        } = admit(Some(NodeMsg::Created(t(&huge, &huge))))
        else {
            panic!("a 2 MB name was not refused");
        };
        assert!(broadcast.len() <= names::MAX_BROADCAST_LEN);
        assert!(track.len() <= names::MAX_TRACK_LEN);
        assert!(reason.len() < 400, "{}", reason.len());
    }

    fn first(msg: NodeMsg) -> Option<pb::NodeMessage> {
        Some(pb::NodeMessage { msg: Some(msg) })
    }

    fn good_hello() -> pb::Hello {
        pb::Hello {
            node_id: "node-a".into(),
            live: vec![t("live/a", "video")],
            ..Default::default()
        }
    }

    #[test]
    fn a_session_starts_with_a_hello_that_follows_the_contract() {
        assert_eq!(
            hello(first(NodeMsg::Hello(good_hello()))).unwrap(),
            good_hello()
        );
        let before = hello(first(NodeMsg::Created(t("live/a", "video")))).unwrap_err();
        assert!(
            matches!(before, Error::FailedPrecondition(m) if m.starts_with("created before hello"))
        );
        assert!(matches!(hello(None), Err(Error::FailedPrecondition(_))));
        assert!(matches!(
            hello(Some(pb::NodeMessage { msg: None })),
            Err(Error::FailedPrecondition(_))
        ));
        let bad_node = pb::Hello {
            node_id: "Node A".into(),
            ..good_hello()
        };
        assert!(matches!(
            hello(first(NodeMsg::Hello(bad_node))),
            Err(Error::InvalidArgument(_))
        ));
        let bad_live = pb::Hello {
            live: vec![t("live/../a", "video")],
            ..good_hello()
        };
        let err = hello(first(NodeMsg::Hello(bad_live))).unwrap_err();
        assert!(matches!(err, Error::InvalidArgument(m) if m.starts_with("hello.live: ")));
        let too_many = pb::Hello {
            live: vec![t("live/a", "video"); MAX_LIVE_TRACKS + 1],
            ..good_hello()
        };
        assert!(matches!(
            hello(first(NodeMsg::Hello(too_many))),
            Err(Error::InvalidArgument(_))
        ));
    }
}
