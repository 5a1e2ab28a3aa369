//! The RTMP target: arbitrary bytes after a handshake into the ingest
//! node's RTMP front end.

use std::sync::Arc;
use std::time::Duration;

/// One runtime and one ingest front end per thread, reused across inputs.
struct Front {
    runtime: tokio::runtime::Runtime,
    ingest: Arc<ingest_node::rtmp::Ingest>,
}

impl Front {
    /// An in-memory connection to the front end: the client's end, and the
    /// task serving the other (call within the runtime).
    fn connect(
        &self,
    ) -> (
        tokio::io::DuplexStream,
        tokio::task::JoinHandle<ingest_node::rtmp::Outcome>,
    ) {
        let (client, server) = tokio::io::duplex(1 << 16);
        let serve = tokio::spawn(ingest_node::rtmp::serve_connection(
            self.ingest.clone(),
            server,
        ));
        (client, serve)
    }
}

fn front() -> &'static Front {
    use ingest_node::bridge::{Bridge, BridgeConfig, ClaimServices};
    thread_local! {
        static FRONT: &'static Front = {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a tokio runtime");
            let ingest = runtime.block_on(async {
                let registry = ingest_node::registry::Registry::new();
                // No claim service answers: publishes are let in after
                // the claim wait, as with --on-claim-unavailable allow.
                let (bridge, _) = Bridge::start(
                    BridgeConfig {
                        node_id: "fuzz".into(),
                        endpoints: Default::default(),
                        claim_services: ClaimServices {
                            urls: vec!["http://127.0.0.1:9".into()],
                            tls: None,
                        },
                        lease_ttl_ms: 0,
                        duplicates: Default::default(),
                    },
                    registry.clone(),
                    tokio_util::sync::CancellationToken::new(),
                );
                let gate = ingest_node::gate::PublishGate {
                    registry,
                    bridge,
                    metrics: Arc::new(ingest_node::metrics::Metrics::new()),
                    hold: ingest_node::bridge::Hold {
                        duplicates: Default::default(),
                        claim_wait: Duration::from_millis(1),
                    },
                    on_unavailable: ingest_node::gate::UnavailablePolicy::Allow,
                };
                Arc::new(ingest_node::rtmp::Ingest {
                    gate: Arc::new(gate),
                    hub: Default::default(),
                    idle_timeout: Duration::from_millis(200),
                    max_message: 4 * 1024 * 1024,
                    advertise_http: "http://fuzz:8080".into(),
                })
            });
            Box::leak(Box::new(Front { runtime, ingest }))
        };
    }
    FRONT.with(|f| *f)
}

/// Arbitrary bytes after a valid handshake into the RTMP front end: it
/// never panics, always ends, and closes every track the bytes opened.
pub fn rtmp(data: &[u8]) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let front = front();
    front.runtime.block_on(async {
        let (client, serve) = front.connect();
        let (mut rx, mut tx) = tokio::io::split(client);
        // Drain whatever the server says, so it never blocks on writing.
        let drain = tokio::spawn(async move {
            let mut buf = vec![0u8; 1 << 16];
            while matches!(rx.read(&mut buf).await, Ok(n) if n > 0) {}
        });
        let mut hs = rml_rtmp::handshake::Handshake::new(rml_rtmp::handshake::PeerType::Client);
        let c0c1 = hs.generate_outbound_p0_and_p1().expect("client handshake");
        // C0+C1, then C2 (the server's S1 echoed is not checked by
        // rml_rtmp's server), then the fuzz bytes.
        let _ = tx.write_all(&c0c1).await;
        let _ = tx.write_all(&c0c1[1..]).await;
        let _ = tx.write_all(data).await;
        let _ = tx.shutdown().await;
        let ended = tokio::time::timeout(Duration::from_secs(10), serve).await;
        assert!(ended.is_ok(), "the RTMP connection did not end");
        assert!(
            !matches!(ended, Ok(Err(ref e)) if e.is_panic()),
            "the RTMP front end panicked: {ended:?}"
        );
        drain.abort();
        let live = front.ingest.gate.registry.live();
        assert!(
            live.is_empty(),
            "tracks left live after the connection ended: {live:?}"
        );
    });
}

/// Bytes a real publisher sends after the handshake: connect, publish
/// `live/seed`, a video and an audio message. A seed for [`rtmp`].
pub fn rtmp_seed() -> Vec<u8> {
    let front = front();
    front.runtime.block_on(async {
        let (client, serve) = front.connect();
        let mut c = crate::rtmp_client::RtmpClient::connect(client, "live", true)
            .await
            .expect("connect");
        c.publish("seed").await.expect("publish");
        // An AVC sequence header and an AAC one, then a frame of each.
        c.media(true, &[0x17, 0, 0, 0, 0, 1, 0x64, 0, 0x1f], 0)
            .await
            .expect("video");
        c.media(false, &[0xaf, 0, 0x12, 0x10], 0)
            .await
            .expect("audio");
        c.media(true, &[0x27, 1, 0, 0, 0, 0, 0, 0, 1, 0x41], 40)
            .await
            .expect("video");
        c.media(false, &[0xaf, 1, 0x21, 0x10], 23)
            .await
            .expect("audio");
        let sent = c.sent().map(<[u8]>::to_vec).unwrap_or_default();
        drop(c);
        let _ = tokio::time::timeout(Duration::from_secs(5), serve).await;
        sent
    })
}
