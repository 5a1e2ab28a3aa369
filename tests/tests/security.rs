//! Only a node can speak for itself: mutual TLS, node identity, admin and
//! read credentials, and TLS + user auth to etcd. Every attack is made
//! against the real binaries and a real etcd, and each ends with a check
//! that no claim changed.

use std::time::Duration;

use anyhow::{ensure, Result};
use system_tests::pki::Pki;
use system_tests::v1 as pb;
use system_tests::*;
use tonic::Code;

use pb::node_message::Msg as NodeMsg;

struct Secure {
    pki: Pki,
    _etcd: Etcd,
    svc: ClaimService,
}

impl Secure {
    /// etcd, certificates from scripts/certs.sh, and a claim-service with
    /// mTLS (admin identity "admin") plus `extra` flags.
    async fn start(name: &str, extra: &[&str]) -> Result<Self> {
        let pki = Pki::make(&["node-a", "node-b"])?;
        let etcd = Etcd::start().await?;
        let mut flags = pki.service_flags();
        flags.extend(extra.iter().map(|s| s.to_string()));
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        let svc = ClaimService::start_tls(
            &etcd.endpoint(),
            &test_prefix(name),
            &flags,
            pki.client(Some("admin"))?,
        )
        .await?;
        Ok(Self {
            pki,
            _etcd: etcd,
            svc,
        })
    }

    /// The attached nodes, from `ListNodes`.
    async fn node_ids(&self) -> Result<Vec<String>> {
        let nodes = self
            .svc
            .ownership()
            .await?
            .list_nodes(pb::ListNodesRequest {})
            .await?
            .into_inner()
            .nodes;
        Ok(nodes.into_iter().map(|n| n.node_id).collect())
    }

    /// Attaches with the certificate files `{cert}.pem/.key` (none: CA only).
    async fn open(&self, cert: Option<&str>, hello: pb::Hello) -> Result<Node, tonic::Status> {
        let tls = self
            .pki
            .client(cert)
            .map_err(|e| tonic::Status::internal(e.to_string()))?;
        let endpoint = self
            .svc
            .endpoint_with(Some(&tls))
            .map_err(|e| tonic::Status::internal(e.to_string()))?;
        Node::open_on(endpoint, NodeMsg::Hello(hello)).await
    }
}

/// A hello that also tries to take `broadcast` (as a live track, as a node
/// re-attaching would).
fn hello_with(node_id: &str, broadcast: &str) -> pb::Hello {
    let mut h = hello(node_id);
    h.live.push(track(broadcast, "video"));
    h
}

/// How a client sees a TLS handshake the server refused: the connect or the
/// first call fails, depending on when the alert arrives.
const HANDSHAKE_REFUSED: &[Code] = &[
    Code::Unavailable,
    Code::Unknown,
    Code::Internal,
    Code::Cancelled,
];

fn refused(what: &str, outcome: Result<Node, tonic::Status>, codes: &[Code]) -> Result<String> {
    match outcome {
        Ok(_) => anyhow::bail!("{what}: the session was accepted"),
        Err(status) => {
            ensure!(
                codes.contains(&status.code()),
                "{what}: refused with {:?} ({}), expected one of {codes:?}",
                status.code(),
                status.message()
            );
            Ok(status.message().to_string())
        }
    }
}

#[tokio::test]
async fn only_a_node_with_its_own_certificate_can_attach() -> Result<()> {
    let s = Secure::start("mtls", &[]).await?;
    s.pki.expired("node-a", "expired-a")?;
    s.pki.foreign("node-a", "mallory-a")?;

    // The real node-b, with its own certificate, claims live/b.
    let mut b = s
        .open(Some("node-b"), hello("node-b"))
        .await
        .map_err(|e| anyhow::anyhow!("node-b with its certificate: {e}"))?;
    b.created("live/b", "video").await?;
    let owned = b.expect_claimed("live/b").await?.claim.unwrap();

    // No client certificate.
    let why = refused(
        "no certificate",
        s.open(None, hello_with("node-a", "live/x")).await,
        &[Code::Unauthenticated],
    )?;
    assert!(why.contains("client certificate"), "{why}");
    // A certificate for node-a, speaking as node-b and listing node-b's
    // broadcast as live (supersede + adopt, if it were let in).
    let why = refused(
        "node-a's certificate as node-b",
        s.open(Some("node-a"), hello_with("node-b", "live/b")).await,
        &[Code::PermissionDenied],
    )?;
    assert!(
        why.contains("node-a") && why.contains("only speak for itself"),
        "{why}"
    );
    // A certificate from another CA, and an expired one from ours: the TLS
    // handshake fails (on the first call, with TLS 1.3).
    for (file, what) in [("mallory-a", "another CA"), ("expired-a", "expired")] {
        let why = refused(
            what,
            s.open(Some(file), hello_with("node-a", "live/x")).await,
            HANDSHAKE_REFUSED,
        )?;
        println!("{what}: {why}");
    }
    // Plain HTTP/2 to the TLS port.
    let plain = format!("http://127.0.0.1:{}", s.svc.port);
    let why = refused(
        "plaintext",
        Node::open(&plain, NodeMsg::Hello(hello_with("node-a", "live/x"))).await,
        HANDSHAKE_REFUSED,
    )?;
    println!("plaintext: {why}");

    // Nothing changed: node-b still owns live/b on the same lease and
    // token, its session was not superseded, nobody claimed live/x.
    let now = s.svc.owner("live/b", true).await?.expect("still owned");
    assert_eq!(
        (now.node_id.as_str(), now.fencing_token, now.lease_id),
        ("node-b", owned.fencing_token, owned.lease_id)
    );
    assert!(s.svc.owner("live/x", true).await?.is_none());
    assert_eq!(b.silent_for(Duration::from_millis(500)).await, None);
    assert_eq!(s.node_ids().await?, ["node-b"]);
    let metrics = s.svc.metrics().await?;
    for code in ["permission_denied", "unauthenticated"] {
        assert!(
            metrics.contains(&format!("code=\"{code}\"}} 1")),
            "{code}: {metrics}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn a_node_cannot_release_or_adopt_another_nodes_claim() -> Result<()> {
    let s = Secure::start("not-yours", &[]).await?;
    let mut b = s.open(Some("node-b"), hello("node-b")).await?;
    b.created("live/b", "video").await?;
    let owned = b.expect_claimed("live/b").await?.claim.unwrap();

    // node-a, properly authenticated, lists live/b as live on attach (an
    // adoption attempt), closes it, creates it, closes it, says goodbye.
    let mut a = s
        .open(Some("node-a"), hello_with("node-a", "live/b"))
        .await?;
    let owner = a.expect_conflict("live/b").await?;
    assert_eq!(owner.node_id, "node-b");
    a.closed("live/b", "video").await?;
    a.closed("live/b", "audio").await?;
    a.created("live/b", "audio").await?;
    a.expect_conflict("live/b").await?;
    a.closed("live/b", "audio").await?;
    a.goodbye().await?;
    // The goodbye is done once node-a's record is gone.
    until(
        Duration::from_millis(50),
        async || s.node_ids().await,
        |nodes| !nodes.iter().any(|n| n == "node-a"),
    )
    .await?;

    let now = s.svc.owner("live/b", true).await?.expect("still owned");
    assert_eq!(
        (now.node_id.as_str(), now.fencing_token, now.lease_id),
        ("node-b", owned.fencing_token, owned.lease_id)
    );
    assert_eq!(b.silent_for(Duration::from_millis(500)).await, None);
    Ok(())
}

#[tokio::test]
async fn admin_and_read_apis_need_their_credentials() -> Result<()> {
    let dir = std::env::temp_dir().join(format!("claims-sec-tokens-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let admin_token = "admin-token-0123456789abcdef";
    let read_token = "read-token-0123456789abcdef";
    std::fs::write(dir.join("admin"), admin_token)?;
    std::fs::write(dir.join("read"), read_token)?;
    let admin_file = dir.join("admin").to_string_lossy().into_owned();
    let read_file = dir.join("read").to_string_lossy().into_owned();
    let s = Secure::start(
        "credentials",
        &[
            "--admin-token-file",
            &admin_file,
            "--read-token-file",
            &read_file,
        ],
    )
    .await?;
    let mut a = s.open(Some("node-a"), hello("node-a")).await?;
    a.created("live/a", "video").await?;
    let owned = a.expect_claimed("live/a").await?.claim.unwrap();

    let client = |cert: Option<&str>| -> Result<tonic::transport::Channel> {
        Ok(s.svc
            .endpoint_with(Some(&s.pki.client(cert)?))?
            .connect_lazy())
    };
    fn with_token<T>(msg: T, token: Option<&str>) -> tonic::Request<T> {
        let mut r = tonic::Request::new(msg);
        if let Some(t) = token {
            r.metadata_mut()
                .insert("authorization", format!("Bearer {t}").parse().unwrap());
        }
        r
    }
    let get = |token: Option<&str>| {
        with_token(
            pb::GetOwnerRequest {
                broadcast: "live/a".into(),
                consistent: false,
            },
            token,
        )
    };
    let read =
        |cert| -> Result<_> { Ok(pb::ownership_client::OwnershipClient::new(client(cert)?)) };

    // Reads: refused without a credential or with a wrong one; allowed with
    // the read token, the admin token, or any certificate of the CA.
    let err = read(None)?.get_owner(get(None)).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    let err = read(None)?
        .get_owner(get(Some("wrong-token-0123456789")))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    for (cert, token) in [
        (None, Some(read_token)),
        (None, Some(admin_token)),
        (Some("node-b"), None),
    ] {
        let got = read(cert)?.get_owner(get(token)).await?.into_inner();
        assert_eq!(got.fencing_token, owned.fencing_token);
    }

    // Admin: no credential, a node's certificate, a wrong token: refused.
    let drain = |token: Option<&str>| {
        with_token(
            pb::DrainNodeRequest {
                node_id: "node-a".into(),
                draining: true,
            },
            token,
        )
    };
    let admin = |cert| -> Result<_> { Ok(pb::admin_client::AdminClient::new(client(cert)?)) };
    let err = admin(None)?.drain_node(drain(None)).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    let err = admin(Some("node-a"))?
        .drain_node(drain(None))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(err.message().contains("not an admin identity"), "{err:?}");
    let err = admin(None)?
        .drain_node(drain(Some(read_token)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    let release = pb::ForceReleaseRequest {
        broadcast: "live/a".into(),
        reason: "attack".into(),
    };
    let err = admin(Some("node-b"))?
        .force_release(with_token(release, None))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    // Nothing changed so far.
    assert_eq!(a.silent_for(Duration::from_millis(300)).await, None);
    let now = s.svc.owner("live/a", true).await?.expect("owned");
    assert_eq!(now.lease_id, owned.lease_id);

    // The admin certificate and the admin token both work.
    let node = admin(Some("admin"))?
        .drain_node(drain(None))
        .await?
        .into_inner();
    assert!(node.node.unwrap().draining);
    let undrain = with_token(
        pb::DrainNodeRequest {
            node_id: "node-a".into(),
            draining: false,
        },
        Some(admin_token),
    );
    admin(None)?.drain_node(undrain).await?;

    // claimctl over mTLS: the admin certificate drains; a read without a
    // credential exits 4.
    let ctl = |args: &[&str]| {
        std::process::Command::new(binary("claimctl"))
            .env_remove("CLAIMCTL_ADMIN_TOKEN")
            .env_remove("CLAIMS_ADMIN_TOKEN_FILE")
            .env_remove("CLAIMS_READ_TOKEN_FILE")
            .arg("--server")
            .arg(s.svc.addr())
            .arg("--tls-ca")
            .arg(s.pki.path("ca.pem"))
            .args(args)
            .output()
    };
    let (cert, key) = (s.pki.arg("admin.pem"), s.pki.arg("admin.key"));
    let out = ctl(&["--tls-cert", &cert, "--tls-key", &key, "drain", "node-a"])?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = ctl(&["owner", "live/a"])?;
    assert_eq!(
        out.status.code(),
        Some(4),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = ctl(&["--read-token-file", &read_file, "owner", "live/a"])?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

#[tokio::test]
async fn ingest_node_publishes_over_mtls_and_a_borrowed_certificate_claims_nothing() -> Result<()> {
    let s = Secure::start("ingest-mtls", &[]).await?;
    let tls = |cert: &str| {
        vec![
            "--tls-ca".to_string(),
            s.pki.arg("ca.pem"),
            "--tls-cert".to_string(),
            s.pki.arg(&format!("{cert}.pem")),
            "--tls-key".to_string(),
            s.pki.arg(&format!("{cert}.key")),
        ]
    };
    let flags = tls("node-a");
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let a = IngestNode::start("node-a", &[s.svc.addr()], &flags).await?;
    let publisher = Publisher::start(&a.rtmp_url("live/tls"))?;
    let entry = a
        .wait_broadcast("live/tls", |e| e["claim"]["state"] == "claimed")
        .await?;
    let owner = s.svc.owner("live/tls", true).await?.expect("owned");
    assert_eq!(owner.node_id, "node-a");
    assert_eq!(Some(owner.fencing_token), entry["fencing_token"].as_i64());

    // A node that borrowed node-b's certificate but calls itself node-c
    // never attaches: it says why, and claims nothing.
    let flags = tls("node-b");
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let c = IngestNode::start("node-c", &[s.svc.addr()], &flags).await?;
    c.wait_log("only speak for itself").await?;
    assert_eq!(c.healthz().await?["claim_service_connected"], false);
    let listed = s
        .svc
        .ownership()
        .await?
        .list_claims(pb::ListClaimsRequest {
            node_id: "node-c".into(),
            ..Default::default()
        })
        .await?
        .into_inner();
    assert!(listed.claims.is_empty());
    drop(publisher);
    Ok(())
}

#[tokio::test]
async fn claim_service_talks_to_etcd_over_tls_with_a_user() -> Result<()> {
    let pki = Pki::make(&["node-a"])?;
    let etcd = Etcd::start_tls(&pki).await?;
    let prefix = test_prefix("etcd-auth");
    // A user that may touch only the claim prefix; root to enable auth.
    etcd.etcdctl(&["user", "add", "root:root-password-1", "--interactive=false"])?;
    etcd.etcdctl(&["role", "add", "claims"])?;
    etcd.etcdctl(&[
        "role",
        "grant-permission",
        "claims",
        "--prefix=true",
        "readwrite",
        &prefix,
    ])?;
    etcd.etcdctl(&[
        "user",
        "add",
        "claims:claims-password-1",
        "--interactive=false",
    ])?;
    etcd.etcdctl(&["user", "grant-role", "claims", "claims"])?;
    etcd.etcdctl(&["auth", "enable"])?;

    let dir = pki.dir.clone();
    std::fs::write(dir.join("etcd-password"), "claims-password-1\n")?;
    std::fs::write(dir.join("wrong-password"), "guess\n")?;
    let etcd_flags = |password: &str| {
        vec![
            "--etcd-ca".to_string(),
            pki.arg("ca.pem"),
            "--etcd-user".to_string(),
            "claims".to_string(),
            "--etcd-password-file".to_string(),
            pki.arg(password),
        ]
    };
    let flags = etcd_flags("etcd-password");
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let svc = ClaimService::start(&etcd.endpoint(), &prefix, &flags).await?;
    let mut a = Node::attach(&svc.addr(), hello("node-a")).await?;
    a.created("live/etcd-tls", "video").await?;
    let claim = a.expect_claimed("live/etcd-tls").await?.claim.unwrap();
    assert_eq!(
        svc.owner("live/etcd-tls", true)
            .await?
            .map(|c| c.fencing_token),
        Some(claim.fencing_token)
    );
    a.closed("live/etcd-tls", "video").await?;
    a.expect_released("live/etcd-tls").await?;
    // Without credentials etcd refuses to show the claims.
    assert!(etcd.etcdctl(&["get", "--prefix", &prefix]).is_err());

    // A wrong password stops the start with a line that says so.
    let flags = etcd_flags("wrong-password");
    let mut cmd = std::process::Command::new(binary("claim-service"));
    cmd.env("CLAIMS_LISTEN", format!("127.0.0.1:{}", free_port()))
        .env(
            "CLAIMS_METRICS_LISTEN",
            format!("127.0.0.1:{}", free_port()),
        )
        .env("CLAIMS_ETCD_ENDPOINTS", etcd.endpoint())
        .env("CLAIMS_KEY_PREFIX", &prefix)
        .args(&flags);
    let out =
        tokio::time::timeout(WAIT, tokio::task::spawn_blocking(move || cmd.output())).await???;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("authentication failed"), "{stderr}");
    Ok(())
}
