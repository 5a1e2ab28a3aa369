//! The names target: arbitrary bytes through every name rule.

use claims_proto::names;

/// Arbitrary bytes through every name rule: never a panic, and what passes
/// really follows the rule.
pub fn names(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if names::check_broadcast(&text).is_ok() {
        assert!(!text.is_empty() && text.len() <= names::MAX_BROADCAST_LEN);
        for segment in text.split('/') {
            assert!(
                !segment.is_empty() && segment != "." && segment != "..",
                "{text:?}"
            );
            assert!(
                segment
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._~-".contains(&b)),
                "{text:?}"
            );
        }
    }
    if names::check_track(&text).is_ok() {
        assert!(!text.is_empty() && text.len() <= names::MAX_TRACK_LEN && !text.contains('/'));
    }
    if names::check_node_id(&text).is_ok() {
        assert!(text
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'));
    }
    // The same bytes as an endpoint map, split at NUL: name, URL, ...
    let parts: Vec<&str> = text.split('\0').collect();
    let endpoints = parts
        .chunks(2)
        .map(|c| (c[0].to_string(), c.get(1).unwrap_or(&"").to_string()))
        .collect();
    let _ = names::check_endpoints(&endpoints);
}
