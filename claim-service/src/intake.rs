//! What one message from a node means to its session, decided without I/O:
//! an event for the claim rules, a refusal the node is told (the session
//! goes on), or a protocol error that ends the session.
//!
//! The session shell and the fuzz targets both go through [`admit`], so the
//! fuzzer exercises exactly the path hostile input takes.

use claims_proto::v1 as pb;
use pb::node_message::Msg as NodeMsg;
use tonic::Code;

use crate::claims::Event;
use crate::names;

/// A session's verdict on one message after `hello`.
#[derive(Debug, Clone, PartialEq)]
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
    /// End the session with this code and message.
    Fatal { code: Code, message: String },
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
        Some(NodeMsg::Hello(_)) => Intake::Fatal {
            code: Code::FailedPrecondition,
            message: "hello sent twice; a session has one hello, at its start".into(),
        },
        Some(NodeMsg::Created(t)) => {
            checked(t, |broadcast, track| Event::Created { broadcast, track })
        }
        Some(NodeMsg::Closed(t)) => {
            checked(t, |broadcast, track| Event::Closed { broadcast, track })
        }
        Some(NodeMsg::Goodbye(_)) => Intake::Event(Event::Goodbye),
        None => Intake::Refused {
            broadcast: String::new(),
            track: String::new(),
            reason: "empty message: set one of hello, created, closed, goodbye".into(),
            code: Code::InvalidArgument,
        },
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
            Intake::Fatal {
                code: Code::FailedPrecondition,
                ..
            }
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
        assert_eq!(
            admit(Some(NodeMsg::Closed(t("live/x", "video")))),
            Intake::Event(Event::Closed {
                broadcast: "live/x".into(),
                track: "video".into()
            })
        );
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
}
