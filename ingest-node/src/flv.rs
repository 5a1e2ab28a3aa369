//! FLV muxing for HTTP-FLV playback: the file header and tags wrapping the
//! audio and video payloads RTMP carries (which already are FLV tag bodies).

use bytes::{BufMut, Bytes, BytesMut};

pub const TAG_AUDIO: u8 = 8;
pub const TAG_VIDEO: u8 = 9;

/// The FLV file header (audio and video present) and PreviousTagSize0.
pub fn header() -> Bytes {
    Bytes::from_static(&[b'F', b'L', b'V', 1, 0x05, 0, 0, 0, 9, 0, 0, 0, 0])
}

/// One FLV tag with its trailing PreviousTagSize, built once and shared by
/// every viewer.
pub fn tag(kind: u8, timestamp_ms: u32, body: &[u8]) -> Bytes {
    let size = body.len() as u32;
    let mut buf = BytesMut::with_capacity(11 + body.len() + 4);
    buf.put_u8(kind);
    buf.put_uint(u64::from(size & 0x00ff_ffff), 3);
    buf.put_uint(u64::from(timestamp_ms & 0x00ff_ffff), 3);
    buf.put_u8((timestamp_ms >> 24) as u8);
    buf.put_uint(0, 3);
    buf.put_slice(body);
    buf.put_u32(11 + size);
    buf.freeze()
}

/// A video body that starts a group of pictures.
pub fn is_keyframe(video: &[u8]) -> bool {
    video.first().is_some_and(|b| b >> 4 == 1)
}

/// An AVC (H.264) or HEVC decoder configuration record.
pub fn is_video_sequence_header(video: &[u8]) -> bool {
    matches!(video, [first, 0, ..] if (first & 0x0f) == 7 || (first & 0x0f) == 12)
}

/// An AAC AudioSpecificConfig.
pub fn is_audio_sequence_header(audio: &[u8]) -> bool {
    matches!(audio, [first, 0, ..] if first >> 4 == 10)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tag_layout() {
        let t = tag(TAG_VIDEO, 0x0102_0304, &[0x17, 0, 1, 2]);
        assert_eq!(t[0], 9);
        assert_eq!(&t[1..4], &[0, 0, 4]);
        assert_eq!(&t[4..7], &[0x02, 0x03, 0x04]);
        assert_eq!(t[7], 0x01);
        assert_eq!(&t[8..11], &[0, 0, 0]);
        assert_eq!(&t[11..15], &[0x17, 0, 1, 2]);
        assert_eq!(&t[15..], &15u32.to_be_bytes());
    }

    #[test]
    fn frame_kinds() {
        assert!(is_keyframe(&[0x17, 1]));
        assert!(!is_keyframe(&[0x27, 1]));
        assert!(is_video_sequence_header(&[0x17, 0, 0]));
        assert!(!is_video_sequence_header(&[0x17, 1, 0]));
        assert!(is_audio_sequence_header(&[0xaf, 0]));
        assert!(!is_audio_sequence_header(&[0xaf, 1]));
        assert!(!is_keyframe(&[]));
    }
}
