//! Validation of the names that come over the wire: broadcast names, track
//! names, node ids and endpoint maps. Every message says what was wrong and
//! what is allowed, so a client can fix its input without reading our code.

use std::collections::HashMap;

/// Longest broadcast name, in bytes.
pub const MAX_BROADCAST_LEN: usize = 256;
/// Longest track name, in bytes.
pub const MAX_TRACK_LEN: usize = 64;
/// Most endpoints a node may advertise.
pub const MAX_ENDPOINTS: usize = 16;
const MAX_ENDPOINT_NAME_LEN: usize = 32;
const MAX_ENDPOINT_URL_LEN: usize = 1024;

/// Characters of untrusted text a message or log line shows at most.
pub const QUOTED_CHARS: usize = 48;

/// Untrusted text as it may appear in a status or a log line: quoted, with
/// control characters escaped (so it can never forge a line), and cut to
/// [`QUOTED_CHARS`] characters with its full length said.
pub fn quote(text: &str) -> String {
    match text.char_indices().nth(QUOTED_CHARS) {
        None => format!("{text:?}"),
        Some((cut, _)) => format!("{:?}… ({} bytes)", &text[..cut], text.len()),
    }
}

fn is_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'~' | b'-')
}

/// A broadcast name: 1..=256 bytes of `[A-Za-z0-9._~-]` segments joined by
/// single `/`, with no empty, `.` or `..` segment.
pub fn check_broadcast(name: &str) -> Result<(), String> {
    const RULE: &str = "names are 1-256 bytes of segments of [A-Za-z0-9._~-] joined by \"/\"";
    if name.is_empty() {
        return Err(format!("broadcast name is empty; {RULE}"));
    }
    if name.len() > MAX_BROADCAST_LEN {
        return Err(format!(
            "broadcast name is {} bytes long; {RULE}",
            name.len()
        ));
    }
    for segment in name.split('/') {
        if segment.is_empty() {
            return Err(format!(
                "broadcast name {} has an empty segment; {RULE}",
                quote(name)
            ));
        }
        if segment == "." || segment == ".." {
            return Err(format!(
                "broadcast name {} has a {} segment; {RULE}",
                quote(name),
                quote(segment)
            ));
        }
        if let Some(c) = segment
            .chars()
            .find(|c| !c.is_ascii() || !is_name_byte(*c as u8))
        {
            return Err(format!(
                "broadcast name {} contains {c:?}; {RULE}",
                quote(name)
            ));
        }
    }
    Ok(())
}

/// A track name: 1..=64 bytes of `[A-Za-z0-9._~-]`, e.g. `video`, `audio`.
pub fn check_track(name: &str) -> Result<(), String> {
    const RULE: &str = "track names are 1-64 bytes of [A-Za-z0-9._~-]";
    if name.is_empty() || name.len() > MAX_TRACK_LEN {
        return Err(format!(
            "track name {} has a bad length; {RULE}",
            quote(name)
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !c.is_ascii() || !is_name_byte(*c as u8))
    {
        return Err(format!("track name {} contains {c:?}; {RULE}", quote(name)));
    }
    Ok(())
}

/// A node id: `[a-z0-9-]{1,63}`.
pub fn check_node_id(id: &str) -> Result<(), String> {
    const RULE: &str = "node ids are 1-63 characters of [a-z0-9-]";
    if id.is_empty() || id.len() > 63 {
        return Err(format!("node id {} has a bad length; {RULE}", quote(id)));
    }
    if let Some(c) = id
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
    {
        return Err(format!("node id {} contains {c:?}; {RULE}", quote(id)));
    }
    Ok(())
}

/// A claim-service replica's id (`--service-id`): it names the replica's
/// key under `replicas/` and is written into every claim and node record.
pub fn check_service_id(id: &str) -> Result<(), String> {
    let bad = |c: char| c.is_control() || c.is_whitespace() || c == '/';
    if id.is_empty() || id.len() > 128 || id.chars().any(bad) {
        return Err(format!(
            "service id {} must be 1-128 printable characters without spaces or '/'",
            quote(id)
        ));
    }
    Ok(())
}

/// Endpoints a node advertises: at most 16, names like track names, URLs of
/// at most 1024 bytes with a scheme.
pub fn check_endpoints(endpoints: &HashMap<String, String>) -> Result<(), String> {
    if endpoints.len() > MAX_ENDPOINTS {
        return Err(format!(
            "{} endpoints given; at most {MAX_ENDPOINTS} are allowed",
            endpoints.len()
        ));
    }
    for (name, url) in endpoints {
        if name.is_empty() || name.len() > MAX_ENDPOINT_NAME_LEN || !name.bytes().all(is_name_byte)
        {
            return Err(format!(
                "endpoint name {} is not allowed; endpoint names are 1-{MAX_ENDPOINT_NAME_LEN} bytes of [A-Za-z0-9._~-]",
                quote(name)
            ));
        }
        if url.len() > MAX_ENDPOINT_URL_LEN
            || !url.contains("://")
            || url.chars().any(char::is_control)
        {
            return Err(format!(
                "endpoint {} = {} is not a URL; give scheme://host:port, at most {MAX_ENDPOINT_URL_LEN} bytes",
                quote(name), quote(url)
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn good_broadcast_names() {
        for name in ["live/cam1", "a", "x.y_z~-1/B/c", &"a".repeat(256)] {
            assert_eq!(check_broadcast(name), Ok(()), "{name}");
        }
    }

    #[test]
    fn bad_broadcast_names_say_why() {
        let cases = [
            ("", "empty"),
            ("a//b", "empty segment"),
            ("/a", "empty segment"),
            ("a/", "empty segment"),
            ("a/./b", "\".\" segment"),
            ("../etc", "\"..\" segment"),
            ("a b", "contains ' '"),
            ("caf\u{e9}", "contains"),
            ("a\0b", "contains"),
        ];
        for (name, why) in cases {
            let err = check_broadcast(name).unwrap_err();
            assert!(err.contains(why), "{name:?}: {err}");
        }
        assert!(check_broadcast(&"a".repeat(257))
            .unwrap_err()
            .contains("257 bytes"));
    }

    #[test]
    fn quoted_text_is_short_and_escaped() {
        assert_eq!(quote("live/cam1"), "\"live/cam1\"");
        assert_eq!(quote("a\nb\u{1b}[2J"), "\"a\\nb\\u{1b}[2J\"");
        let long = "\u{1}".repeat(7_000_000);
        let quoted = quote(&long);
        assert!(quoted.len() < 400, "{}", quoted.len());
        assert!(quoted.ends_with("… (7000000 bytes)"), "{quoted}");
        assert!(!quoted.contains('\u{1}'));
        let err = check_node_id(&long).unwrap_err();
        assert!(err.len() < 400, "{}", err.len());
    }

    #[test]
    fn node_ids() {
        assert!(check_node_id("ingest-a1").is_ok());
        assert!(check_node_id(&"a".repeat(63)).is_ok());
        for bad in ["", "Ingest", "a_b", "a.b", &"a".repeat(64)] {
            assert!(check_node_id(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn tracks_and_endpoints() {
        assert!(check_track("video").is_ok());
        assert!(check_track("").is_err());
        assert!(check_track("a/b").is_err());
        let mut eps = HashMap::new();
        eps.insert("rtmp".to_string(), "rtmp://10.0.0.5:1935".to_string());
        assert!(check_endpoints(&eps).is_ok());
        eps.insert("http".to_string(), "not a url".to_string());
        assert!(check_endpoints(&eps).unwrap_err().contains("not a URL"));
    }
}
