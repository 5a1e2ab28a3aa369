//! What claimctl prints: tables for people, and for scripts (`--json`) the
//! proto3 JSON mapping with the .proto's field names: 64-bit integers
//! (lease ids, fencing tokens, revisions, times) are strings, so that a
//! JavaScript reader (whose numbers are doubles, exact only to 2^53) loses
//! nothing — etcd's lease ids are above 2^62.

use std::time::Duration;

use claims_proto::v1 as pb;
use serde_json::{json, Value};

/// A 64-bit integer as proto3's JSON mapping writes it.
fn int64(n: impl ToString) -> Value {
    Value::String(n.to_string())
}

pub fn claim_json(c: &pb::Claim) -> Value {
    json!({
        "broadcast": c.broadcast,
        "node_id": c.node_id,
        "endpoints": c.endpoints,
        "lease_id": int64(c.lease_id),
        "fencing_token": int64(c.fencing_token),
        "claimed_at_unix_ms": int64(c.claimed_at_unix_ms),
        "lease_ttl_ms": int64(c.lease_ttl_ms),
        "session_id": c.session_id,
        "service_id": c.service_id,
        "detached": c.detached,
        "grace_ends_unix_ms": int64(c.grace_ends_unix_ms),
    })
}

pub fn node_json(n: &pb::Node) -> Value {
    json!({
        "node_id": n.node_id,
        "endpoints": n.endpoints,
        "session_id": n.session_id,
        "service_id": n.service_id,
        "attached_at_unix_ms": int64(n.attached_at_unix_ms),
        "claims": n.claims,
        "draining": n.draining,
        "detached": n.detached,
        "grace_ends_unix_ms": int64(n.grace_ends_unix_ms),
    })
}

/// A watch event, with when this claimctl saw it.
pub fn event_json(kind: &str, e: &pb::ClaimEvent, seen_at: &str) -> Value {
    let claim = e.claim.clone().unwrap_or_default();
    json!({"kind": kind, "revision": int64(e.revision), "seen_at": seen_at, "claim": claim_json(&claim)})
}

/// Left-aligned columns.
pub fn table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let line = |cells: Vec<&str>| {
        let parts: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", parts.join("  ").trim_end());
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}

pub fn endpoints(e: &std::collections::HashMap<String, String>) -> String {
    let mut v: Vec<String> = e.iter().map(|(k, u)| format!("{k}={u}")).collect();
    v.sort();
    v.join(",")
}

pub fn when(unix_ms: i64) -> String {
    humantime::format_rfc3339_seconds(
        std::time::UNIX_EPOCH + Duration::from_millis(unix_ms.max(0) as u64),
    )
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sixty_four_bit_integers_are_strings() {
        let c = pb::Claim {
            lease_id: 7_587_899_229_711_874_583,
            fencing_token: 4,
            ..Default::default()
        };
        let v = claim_json(&c);
        assert_eq!(v["lease_id"], "7587899229711874583");
        assert_eq!(v["fencing_token"], "4");
        // A reader that parses it as a double would have lost the id.
        assert_ne!(
            7_587_899_229_711_874_583_f64 as i64,
            7_587_899_229_711_874_583
        );
    }
}
