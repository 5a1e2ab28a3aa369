//! The hooks target: arbitrary bytes as a hook body and as an API listing
//! of every media server the sidecar speaks to. Nothing panics; whatever a
//! body is taken to mean names its broadcast by the same rules as
//! everywhere (the sidecar checks them before claiming), and a listing's
//! broadcasts are what its server said.

use ingest_node::hooks::model::Hook;
use ingest_node::hooks::{parse_listing, Kind};

const KINDS: [Kind; 4] = [Kind::NginxRtmp, Kind::Srs, Kind::Mediamtx, Kind::Ome];

pub fn hooks(data: &[u8]) {
    for kind in KINDS {
        match kind.parse(data) {
            Ok(Hook::Publish { broadcast, .. })
            | Ok(Hook::Update { broadcast, .. })
            | Ok(Hook::PublishDone { broadcast, .. })
            | Ok(Hook::Play { broadcast })
            | Ok(Hook::Relay { broadcast })
            | Ok(Hook::Relayed { broadcast, .. })
            | Ok(Hook::Demand { broadcast }) => {
                // Checked before use; the check itself must hold up.
                let _ = claims_proto::names::check_broadcast(&broadcast);
            }
            Ok(Hook::Notice { .. }) | Ok(Hook::Undecided { .. }) => {}
            Err(reason) => assert!(
                !reason.to_string().is_empty(),
                "{kind:?}: a refusal without a reason"
            ),
        }
        // A listing is complete or not; either way it parses without panic.
        let _ = parse_listing(
            kind,
            "http://ome:8081/v1/vhosts/default/apps/app/streams",
            data,
            ingest_node::hooks::listing::FIRST_ASK,
        );
        // The answer to any of it renders.
        let _ = kind.answer(ingest_node::hooks::model::Answer::Bad {
            reason: String::from_utf8_lossy(data).into_owned(),
        });
    }
}
