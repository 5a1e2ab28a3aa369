//! Refusals every RTMP client can show: an `onStatus` on the stream the
//! client asked on, with level `error`, a `NetStream.*` code and a
//! description.
//!
//! rml_rtmp's own `reject_request` answers a `publish` or `play` with an
//! `_error` command on transaction 0, which only ffmpeg reads: librtmp (OBS,
//! GStreamer `rtmpsink`) drops it as "received result id 0 without matching
//! request", GStreamer `rtmp2sink` as "_error without transaction", and both
//! then meet a closed socket with nothing to show. An `onStatus` is what all
//! of them wait for after `publish` (it is how `NetStream.Publish.Start`
//! arrives), so a refusal sent as one is read by each (ffmpeg prints its
//! description as `Server error: …`).

use crate::error::{Error, Result};
use rml_rtmp::chunk_io::ChunkSerializer;
use rml_rtmp::messages::RtmpMessage;
use rml_rtmp::rml_amf0::Amf0Value;
use rml_rtmp::sessions::ServerSessionConfig;
use rml_rtmp::time::RtmpTimestamp;

/// The message stream a publisher or player uses: rml_rtmp numbers the
/// streams of a connection from 1 and does not say which one a request
/// came on, and every client tried (ffmpeg, librtmp, GStreamer, OBS) makes
/// exactly one before `publish` or `play`. A client that made more still
/// reads the status: none of them checks its stream id.
const STREAM_ID: u32 = 1;

/// The refusal of a request: an `onStatus` error with `code` and
/// `description`, then, for a client that did not act on that code, one
/// with the generic `NetStream.Failed`. librtmp 2.4 (Debian's; GStreamer's
/// `rtmpsink`) acts only on `NetStream.Failed`, `NetStream.Play.Failed`,
/// `NetStream.Play.StreamNotFound` and `NetConnection.Connect.InvalidApp`:
/// on `NetStream.Publish.BadName` it logs "Unhandled" and keeps sending
/// until the closed socket kills it (SIGPIPE). Every other client stops at
/// the first.
pub fn refusal(code: &str, description: &str) -> Result<Vec<Vec<u8>>> {
    let mut packets = vec![error(code, description)?];
    if code != GENERIC {
        packets.push(error(GENERIC, description)?);
    }
    Ok(packets)
}

const GENERIC: &str = "NetStream.Failed";

/// The bytes of an `onStatus` error with `code` and `description`.
///
/// Serialized with a fresh chunk serializer at the session's chunk size
/// and an uncompressed header, so it does not depend on what the session's
/// own serializer sent before; nothing is sent after it (the connection
/// closes).
pub fn error(code: &str, description: &str) -> Result<Vec<u8>> {
    let info = [
        ("level", "error"),
        ("code", code),
        ("description", description),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), Amf0Value::Utf8String(v.to_string())))
    .collect();
    let message = RtmpMessage::Amf0Command {
        command_name: "onStatus".into(),
        transaction_id: 0.0,
        command_object: Amf0Value::Null,
        additional_arguments: vec![Amf0Value::Object(info)],
    };
    let at = RtmpTimestamp::new(0);
    let payload = message
        .into_message_payload(at, STREAM_ID)
        .map_err(|e| Error::Rtmp(format!("cannot encode a status: {e:?}")))?;
    let mut serializer = ChunkSerializer::new();
    // The session told the peer its chunk size at the start; match it (the
    // packet announcing it again is not sent).
    serializer
        .set_max_chunk_size(ServerSessionConfig::new().chunk_size, at)
        .map_err(|e| Error::Rtmp(format!("cannot size a status: {e:?}")))?;
    serializer
        .serialize(&payload, true, false)
        .map(|p| p.bytes)
        .map_err(|e| Error::Rtmp(format!("cannot serialize a status: {e:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rml_rtmp::chunk_io::ChunkDeserializer;

    #[test]
    fn a_refusal_reads_back_as_an_error_status_on_stream_1() {
        let description = "live/x is owned by node a; publish to rtmp://a:1935/live/x ".repeat(100);
        let bytes = error("NetStream.Publish.BadName", &description).unwrap();
        let mut reader = ChunkDeserializer::new();
        reader
            .set_max_chunk_size(ServerSessionConfig::new().chunk_size as usize)
            .unwrap();
        let payload = reader
            .get_next_message(&bytes)
            .unwrap()
            .expect("one whole message");
        assert_eq!(payload.message_stream_id, STREAM_ID);
        match payload.to_rtmp_message().unwrap() {
            RtmpMessage::Amf0Command {
                command_name,
                additional_arguments,
                ..
            } => {
                assert_eq!(command_name, "onStatus");
                let Amf0Value::Object(info) = &additional_arguments[0] else {
                    panic!("no info object: {additional_arguments:?}");
                };
                let field = |k: &str| match info.get(k) {
                    Some(Amf0Value::Utf8String(s)) => s.clone(),
                    other => panic!("{k}: {other:?}"),
                };
                assert_eq!(field("level"), "error");
                assert_eq!(field("code"), "NetStream.Publish.BadName");
                assert_eq!(field("description"), description);
            }
            other => panic!("not a command: {other:?}"),
        }
    }
}
