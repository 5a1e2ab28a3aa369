//! Claims through the real SRS, MediaMTX and OvenMediaEngine: two instances
//! of each, each with its sidecar (`ingest-node --media-server ...`,
//! started with the README's line), configured with the README's blocks,
//! one claim-service and etcd; ffmpeg publishing over RTMP, RTSP and SRT,
//! ffprobe playing. What the encoders and players print is printed too
//! (`--nocapture`), and the times.

use std::time::{Duration, Instant};

use anyhow::Result;
use system_tests::real_servers::{MediaServer, Server};
use system_tests::v1 as pb;
use system_tests::*;

use pb::claim_event::Kind;

/// One media server with its sidecar.
struct Site {
    server: MediaServer,
    sidecar: IngestNode,
}

impl Site {
    async fn start(server: Server, node_id: &str, stack: &Stack, extra: &[&str]) -> Result<Self> {
        let server = MediaServer::start(server).await?;
        let sidecar = server.sidecar(node_id, &stack.svc.addr(), extra).await?;
        Ok(Self { server, sidecar })
    }

    fn logs(&self) -> String {
        format!(
            "sidecar:\n{}\nserver:\n{}",
            self.sidecar.log_text(),
            self.server.own_log()
        )
    }
}

/// The sidecar reads the listing every second: the tests see several.
const QUICK: [&str; 4] = [
    "--media-server-api-interval",
    "1s",
    "--media-server-gone-after",
    "4s",
];

/// How a publisher reaches a server.
#[derive(Debug, Clone, Copy)]
enum Transport {
    Rtmp,
    Rtsp,
    Srt,
}

fn publish(site: &Site, transport: Transport, broadcast: &str) -> Result<Publisher> {
    let s = &site.server;
    match transport {
        Transport::Rtmp => Publisher::start(&s.rtmp_url(broadcast)),
        Transport::Rtsp => Publisher::start_as(&s.rtsp_url(broadcast), "rtsp"),
        Transport::Srt => Publisher::start_as(&s.srt_url(broadcast, "publish"), "mpegts"),
    }
}

/// The last lines an exited encoder or player printed.
fn said(log: &str) -> String {
    let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(2)..].join(" | ")
}

/// Publish at A: claimed; the same at B: refused, the owner named in B's
/// log; a player at A plays, at B is refused; the publisher stops:
/// released at once.
async fn claimed_refused_elsewhere_released(server: Server, transport: Transport) -> Result<()> {
    let name = format!("{}-{transport:?}", server.name()).to_lowercase();
    let stack = Stack::start(&name, &[]).await?;
    let a = Site::start(server, "node-a", &stack, &QUICK).await?;
    let b = Site::start(server, "node-b", &stack, &QUICK).await?;
    let mut watcher = Watcher::open(&stack.svc, "live/", 0).await?;
    let broadcast = "live/cam1";

    let asked = Instant::now();
    let mut publisher = publish(&a, transport, broadcast)?;
    let claimed = watcher
        .expect(Kind::Claimed, broadcast)
        .await
        .map_err(|e| anyhow::anyhow!("{e}\n{}\nffmpeg: {}", a.logs(), publisher.log_text()))?;
    let claim = claimed.claim.unwrap_or_default();
    assert_eq!(claim.node_id, "node-a");
    eprintln!(
        "{server:?} {transport:?}: claimed {:?} after ffmpeg started",
        asked.elapsed()
    );

    // A second encoder at B is refused; the owner is named in B's log.
    let mut second = publish(&b, transport, broadcast)?;
    let exit = second.wait_exit().await?;
    assert!(!exit.success(), "{}", b.logs());
    b.sidecar
        .wait_log(&format!(
            "{broadcast} is owned by node node-a; publish to rtmp://127.0.0.1:{}/{broadcast}",
            a.server.ports.rtmp
        ))
        .await?;
    eprintln!(
        "{server:?} {transport:?}: a duplicate at the other server: ffmpeg said {:?}",
        said(&second.log_text())
    );
    assert!(publisher.alive(), "{}", publisher.log_text());

    // A player at the owner's server plays; at the other it gets the
    // owner's stream: relayed in by its sidecar (SRS, MediaMTX) or pulled
    // over OVT (OME), never claimed.
    a.server.wait_playable(broadcast).await?;
    let asked = Instant::now();
    if server == Server::Ome {
        // OME's LL-HLS answers a playlist once the pulled stream's first
        // segment is complete: a player may have to come back for it.
        b.server.wait_playable(broadcast).await?;
    } else {
        let kinds = probe(&b.server.play_url(broadcast))
            .await
            .map_err(|e| anyhow::anyhow!("{e}\n{}", b.logs()))?;
        assert_eq!(kinds, vec!["aac,audio", "h264,video"]);
    }
    eprintln!(
        "{server:?}: a player at the non-owner decoded the owner's stream {:?} after it asked",
        asked.elapsed()
    );
    // The claim held through all of it, through listings (every second)
    // that show the relay at B: nothing else was claimed.
    assert_eq!(watcher.quiet_for(Duration::from_secs(3)).await, None);
    if server != Server::Ome {
        // The player left: its relay ends once the listing has shown it
        // without one for a while.
        b.sidecar
            .wait_log("relay stopped: no player at this media server")
            .await?;
    }
    let owner = stack.owner(broadcast, true).await?.unwrap_or_default();
    assert_eq!(
        (owner.node_id.as_str(), owner.fencing_token),
        ("node-a", claim.fencing_token)
    );
    let stopped = Instant::now();
    publisher.terminate().await?;
    watcher.expect(Kind::Released, broadcast).await?;
    eprintln!(
        "{server:?} {transport:?}: released {:?} after the encoder stopped",
        stopped.elapsed()
    );
    Ok(())
}

#[tokio::test]
async fn srs_rtmp_claimed_refused_elsewhere_released() -> Result<()> {
    claimed_refused_elsewhere_released(Server::Srs, Transport::Rtmp).await
}

#[tokio::test]
async fn mediamtx_rtmp_claimed_refused_elsewhere_released() -> Result<()> {
    claimed_refused_elsewhere_released(Server::Mediamtx, Transport::Rtmp).await
}

#[tokio::test]
async fn mediamtx_rtsp_claimed_refused_elsewhere_released() -> Result<()> {
    claimed_refused_elsewhere_released(Server::Mediamtx, Transport::Rtsp).await
}

#[tokio::test]
async fn mediamtx_srt_claimed_refused_elsewhere_released() -> Result<()> {
    claimed_refused_elsewhere_released(Server::Mediamtx, Transport::Srt).await
}

#[tokio::test]
async fn ome_rtmp_claimed_refused_elsewhere_released() -> Result<()> {
    claimed_refused_elsewhere_released(Server::Ome, Transport::Rtmp).await
}

#[tokio::test]
async fn ome_srt_claimed_refused_elsewhere_released() -> Result<()> {
    claimed_refused_elsewhere_released(Server::Ome, Transport::Srt).await
}

/// kill -9 of A's server: A's sidecar detaches its node at the second
/// failed read of the server's API, so its claim waits out the detach
/// grace like a dead node's; an encoder failing over to B meanwhile is
/// held there (not refused, not sent to the dead server) and claimed when
/// the grace ends.
async fn a_dead_server_releases_and_the_failover_is_accepted(
    server: Server,
    stop: fn(&mut MediaServer),
) -> Result<()> {
    let reads = [
        "--media-server-api-interval",
        "1s",
        "--media-server-gone-after",
        "10s",
    ];
    let stack = Stack::start(&format!("{}-dead", server.name()), &[]).await?;
    let mut a = Site::start(server, "node-a", &stack, &reads).await?;
    let b = Site::start(server, "node-b", &stack, &reads).await?;
    let mut watcher = Watcher::open(&stack.svc, "live/", 0).await?;
    let mut publisher = publish(&a, Transport::Rtmp, "live/k")?;
    watcher.expect(Kind::Claimed, "live/k").await?;
    // The server has the publish (its hook was answered): a server killed
    // while its hook waits drops the hook, and the claim goes with it.
    a.server.wait_playable("live/k").await?;
    stop(&mut a.server);
    let died = Instant::now();
    a.sidecar
        .wait_log("the media server does not answer; detaching from the claim service")
        .await?;
    let detached = died.elapsed();
    publisher.kill();
    let mut failover = publish(&b, Transport::Rtmp, "live/k")?;
    watcher
        .expect(Kind::Released, "live/k")
        .await
        .map_err(|e| anyhow::anyhow!("{e}\n{}", a.sidecar.log_text()))?;
    let released = died.elapsed();
    let claimed = watcher.expect(Kind::Claimed, "live/k").await?;
    assert_eq!(claimed.claim.unwrap_or_default().node_id, "node-b");
    let moved = died.elapsed();
    // The bound: two reads (a second apart) and the detach grace (5 s),
    // with slack.
    assert!(released < Duration::from_secs(10), "{released:?}");
    assert!(
        failover.alive(),
        "held, not refused: {}",
        failover.log_text()
    );
    assert!(
        !b.sidecar.log_text().contains("publish refused"),
        "{}",
        b.sidecar.log_text()
    );
    eprintln!(
        "{server:?}: the server died; its sidecar detached {detached:?} after, the claim was released {released:?} after (detach grace 5 s) and the failover encoder, held meanwhile, claimed {moved:?} after"
    );
    Ok(())
}

/// A server that stops answering (paused) but answers again within the
/// detach grace: its sidecar detaches and attaches again, and the claim is
/// adopted, same token, nothing released.
#[tokio::test]
async fn srs_paused_and_back_within_the_grace_keeps_its_claims() -> Result<()> {
    let reads = [
        "--media-server-api-interval",
        "1s",
        "--media-server-gone-after",
        "30s",
    ];
    let stack = Stack::start(
        "srs-paused",
        &["--lease-ttl", "30s", "--detach-grace", "20s"],
    )
    .await?;
    let a = Site::start(Server::Srs, "node-a", &stack, &reads).await?;
    let mut watcher = Watcher::open(&stack.svc, "live/", 0).await?;
    let _publisher = publish(&a, Transport::Rtmp, "live/p")?;
    let claimed = watcher.expect(Kind::Claimed, "live/p").await?;
    let token = claimed.claim.unwrap_or_default().fencing_token;
    a.server.wait_playable("live/p").await?;
    a.server.signal(libc::SIGSTOP);
    a.sidecar
        .wait_log("the media server does not answer; detaching from the claim service")
        .await?;
    a.server.signal(libc::SIGCONT);
    let next = watcher.next().await?;
    assert_eq!(
        (next.kind, next.claim.unwrap_or_default().fencing_token),
        (Kind::Adopted as i32, token),
        "{}",
        a.logs()
    );
    a.sidecar
        .wait_log("the media server answers again; attaching to the claim service again")
        .await?;
    Ok(())
}

fn sigkill(server: &mut MediaServer) {
    server.kill();
}

fn sigterm(server: &mut MediaServer) {
    server.signal(libc::SIGTERM);
}

#[tokio::test]
async fn srs_killed_releases_and_the_failover_is_accepted() -> Result<()> {
    a_dead_server_releases_and_the_failover_is_accepted(Server::Srs, sigkill).await
}

#[tokio::test]
async fn mediamtx_killed_releases_and_the_failover_is_accepted() -> Result<()> {
    a_dead_server_releases_and_the_failover_is_accepted(Server::Mediamtx, sigkill).await
}

/// MediaMTX stopped with SIGTERM sends no unpublish: the same bound.
#[tokio::test]
async fn mediamtx_terminated_releases_and_the_failover_is_accepted() -> Result<()> {
    a_dead_server_releases_and_the_failover_is_accepted(Server::Mediamtx, sigterm).await
}

#[tokio::test]
async fn ome_killed_releases_and_the_failover_is_accepted() -> Result<()> {
    a_dead_server_releases_and_the_failover_is_accepted(Server::Ome, sigkill).await
}

/// A sidecar stopped with SIGTERM while its server publishes, and started
/// again: its claim is adopted with the same fencing token, nothing is
/// released; the publisher's end then releases at once (the adopted
/// publisher is matched by its end hook, not by a later listing: the
/// listing is read every 30 s here).
async fn a_restarted_sidecar_keeps_its_claims(server: Server) -> Result<()> {
    let slow = [
        "--media-server-api-interval",
        "30s",
        "--media-server-gone-after",
        "60s",
    ];
    let stack = Stack::start(&format!("{}-restart", server.name()), &[]).await?;
    let mut a = Site::start(server, "node-a", &stack, &slow).await?;
    let mut watcher = Watcher::open(&stack.svc, "live/", 0).await?;
    let mut publisher = publish(&a, Transport::Rtmp, "live/r")?;
    let first = watcher.expect(Kind::Claimed, "live/r").await?;
    let token = first.claim.unwrap_or_default().fencing_token;
    // The server plays it (MediaMTX reports the end only of a path that
    // became ready).
    a.server.wait_playable("live/r").await?;
    let exit = a.sidecar.terminate().await?;
    assert!(exit.success(), "{}", a.sidecar.log_text());
    a.sidecar = a.server.sidecar("node-a", &stack.svc.addr(), &slow).await?;
    // The next event is the adoption: nothing was released meanwhile.
    let adopted = watcher
        .next()
        .await
        .map_err(|e| anyhow::anyhow!("{e}\n{}", a.logs()))?;
    assert_eq!(
        (
            adopted.kind,
            adopted.claim.unwrap_or_default().fencing_token
        ),
        (Kind::Adopted as i32, token),
        "{}",
        a.logs()
    );
    assert!(publisher.alive(), "{}", publisher.log_text());
    let stopped = Instant::now();
    publisher.terminate().await?;
    let next = watcher.next().await?;
    assert_eq!(
        (next.kind, next.claim.unwrap_or_default().broadcast),
        (Kind::Released as i32, "live/r".to_string()),
        "nothing but the release after the adoption"
    );
    let after = stopped.elapsed();
    eprintln!("{server:?}: a restarted sidecar kept token {token}; the encoder's stop released {after:?} after it");
    assert!(
        after < Duration::from_secs(10),
        "{after:?}: not by its end hook"
    );
    Ok(())
}

#[tokio::test]
async fn srs_sidecar_restarted_keeps_its_claims() -> Result<()> {
    a_restarted_sidecar_keeps_its_claims(Server::Srs).await
}

#[tokio::test]
async fn mediamtx_sidecar_restarted_keeps_its_claims() -> Result<()> {
    a_restarted_sidecar_keeps_its_claims(Server::Mediamtx).await
}

#[tokio::test]
async fn ome_sidecar_restarted_keeps_its_claims() -> Result<()> {
    a_restarted_sidecar_keeps_its_claims(Server::Ome).await
}

/// `count` publishers at one server (one ffmpeg sending to each) stay
/// claimed through several listings; a duplicate of the last is refused at
/// the other server.
async fn many_publishers_stay_claimed(server: Server, count: usize) -> Result<()> {
    let stack = Stack::start(&format!("{}-many", server.name()), &[]).await?;
    let a = Site::start(server, "node-a", &stack, &QUICK).await?;
    let b = Site::start(server, "node-b", &stack, &QUICK).await?;
    let mut watcher = Watcher::open(&stack.svc, "live/", 0).await?;
    let names: Vec<String> = (0..count).map(|i| format!("live/many{i:03}")).collect();
    let urls: Vec<String> = names.iter().map(|n| a.server.rtmp_url(n)).collect();
    // Ten outputs an encoder: one opens its outputs one after the other,
    // and a server drops a connection that sends nothing for 10 s.
    let mut publishers = urls
        .chunks(10)
        .map(Publisher::start_many)
        .collect::<Result<Vec<_>>>()?;
    let mut claimed = std::collections::BTreeSet::new();
    while claimed.len() < count {
        let e = watcher.next().await.map_err(|e| {
            anyhow::anyhow!("{e} ({} of {count} claimed)\n{}", claimed.len(), a.logs())
        })?;
        assert_eq!(e.kind, Kind::Claimed as i32, "{e:?}");
        claimed.insert(e.claim.unwrap_or_default().broadcast);
    }
    // Several listings (one a second) pass and release nothing.
    assert_eq!(watcher.quiet_for(Duration::from_secs(4)).await, None);
    let last = names.last().expect("count > 0");
    let mut duplicate = Publisher::start(&b.server.rtmp_url(last))?;
    assert!(!duplicate.wait_exit().await?.success());
    b.sidecar
        .wait_log(&format!("{last} is owned by node node-a"))
        .await?;
    assert_eq!(watcher.quiet_for(Duration::from_secs(1)).await, None);
    for p in &mut publishers {
        assert!(p.alive(), "{}", p.log_text());
    }
    Ok(())
}

/// SRS lists 10 streams unless asked for more.
#[tokio::test]
async fn srs_a_dozen_publishers_stay_claimed_through_its_listings() -> Result<()> {
    many_publishers_stay_claimed(Server::Srs, 12).await
}

/// MediaMTX pages its path list at 100 items.
#[tokio::test]
async fn mediamtx_120_paths_stay_claimed_through_its_listings() -> Result<()> {
    many_publishers_stay_claimed(Server::Mediamtx, 120).await
}

/// MediaMTX replaces a path's publisher with a newer one at the same
/// server (`overridePublisher`): the claim stays, same token, nothing
/// released, through listings.
#[tokio::test]
async fn mediamtx_replacing_its_own_publisher_keeps_the_claim() -> Result<()> {
    let stack = Stack::start("mediamtx-override", &[]).await?;
    let a = Site::start(Server::Mediamtx, "node-a", &stack, &QUICK).await?;
    let mut watcher = Watcher::open(&stack.svc, "live/", 0).await?;
    let mut first = Publisher::start(&a.server.rtmp_url("live/o"))?;
    let claimed = watcher.expect(Kind::Claimed, "live/o").await?;
    let token = claimed.claim.unwrap_or_default().fencing_token;
    a.server.wait_playable("live/o").await?;
    let mut second = Publisher::start(&a.server.rtmp_url("live/o"))?;
    a.sidecar
        .wait_log("replaces this broadcast's publisher with a newer one here")
        .await?;
    // MediaMTX drops the first encoder.
    first.wait_exit().await?;
    assert_eq!(watcher.quiet_for(Duration::from_secs(4)).await, None);
    let owner = stack.owner("live/o", true).await?.unwrap_or_default();
    assert_eq!(
        (owner.node_id.as_str(), owner.fencing_token),
        ("node-a", token)
    );
    assert!(second.alive(), "{}", second.log_text());
    Ok(())
}

/// With nothing excluded (`authHTTPExclude: []`, the default of MediaMTX's
/// current releases; 1.12 still excludes its API by default), MediaMTX asks
/// the sidecar about its own API: the sidecar refuses it (it decides
/// publishes and plays only), where it used to wave it through.
#[tokio::test]
async fn mediamtx_api_questions_are_refused_by_the_sidecar() -> Result<()> {
    let stack = Stack::start("mediamtx-undecided", &[]).await?;
    let nothing_excluded = |block: &str| {
        block
            .lines()
            .filter(|l| !l.trim_start().starts_with("- action:"))
            .map(|l| match l {
                "authHTTPExclude:" => "authHTTPExclude: []\n".to_string(),
                _ => format!("{l}\n"),
            })
            .collect()
    };
    let server = MediaServer::start_edited(Server::Mediamtx, nothing_excluded).await?;
    let sidecar = server.sidecar("node-u", &stack.svc.addr(), &[]).await?;
    let answer = http_get(server.ports.api, "/v3/paths/list").await?;
    assert_eq!(answer.status, 401, "{answer:?}");
    sidecar
        .wait_log("hook refused: this sidecar decides publishes and plays only")
        .await?;
    Ok(())
}

/// `--duplicate-publisher takeover` at B: the newest publisher wins, and
/// A's server, which has no hook to be told through, is told through its
/// API to drop its publisher (never two servers live on one broadcast).
async fn a_takeover_drops_the_former_publisher_through_the_api(server: Server) -> Result<()> {
    let stack = Stack::start(&format!("{}-takeover", server.name()), &[]).await?;
    let a = Site::start(server, "node-a", &stack, &[]).await?;
    let b = Site::start(
        server,
        "node-b",
        &stack,
        &["--duplicate-publisher", "takeover"],
    )
    .await?;
    let mut watcher = Watcher::open(&stack.svc, "live/", 0).await?;
    let mut former = publish(&a, Transport::Rtmp, "live/t")?;
    let first = watcher.expect(Kind::Claimed, "live/t").await?;
    a.server.wait_playable("live/t").await?;
    let asked = Instant::now();
    let mut newest = publish(&b, Transport::Rtmp, "live/t")?;
    let moved = watcher.expect(Kind::Claimed, "live/t").await?;
    let claim = moved.claim.unwrap_or_default();
    assert_eq!(claim.node_id, "node-b");
    assert!(claim.fencing_token > first.claim.unwrap_or_default().fencing_token);
    former
        .wait_exit()
        .await
        .map_err(|e| anyhow::anyhow!("{e}\n{}", a.logs()))?;
    a.sidecar
        .wait_log("claim now held by another node; the media server was told to drop its publisher")
        .await?;
    eprintln!(
        "{server:?}: takeover: the former encoder was dropped {:?} after the newest started; it said {:?}",
        asked.elapsed(),
        said(&former.log_text())
    );
    assert!(newest.alive(), "{}", newest.log_text());
    b.server.wait_playable("live/t").await?;
    Ok(())
}

#[tokio::test]
async fn srs_takeover_drops_the_former_publisher() -> Result<()> {
    a_takeover_drops_the_former_publisher_through_the_api(Server::Srs).await
}

#[tokio::test]
async fn mediamtx_takeover_drops_the_former_publisher() -> Result<()> {
    a_takeover_drops_the_former_publisher_through_the_api(Server::Mediamtx).await
}

#[tokio::test]
async fn ome_takeover_drops_the_former_publisher() -> Result<()> {
    a_takeover_drops_the_former_publisher_through_the_api(Server::Ome).await
}

/// `--duplicate-publisher standby` at B: B's publisher is held (its hook
/// unanswered) while A publishes, and let in the moment A's publisher
/// leaves.
async fn a_standby_publisher_is_let_in_when_the_owner_leaves(server: Server) -> Result<()> {
    let stack = Stack::start(&format!("{}-standby", server.name()), &[]).await?;
    let a = Site::start(server, "node-a", &stack, &[]).await?;
    let b = Site::start(
        server,
        "node-b",
        &stack,
        &["--duplicate-publisher", "standby", "--claim-wait", "5s"],
    )
    .await?;
    let mut watcher = Watcher::open(&stack.svc, "live/", 0).await?;
    let mut owner = publish(&a, Transport::Rtmp, "live/s")?;
    watcher.expect(Kind::Claimed, "live/s").await?;
    let mut standby = publish(&b, Transport::Rtmp, "live/s")?;
    // B's sidecar has the publish on hold: its claim stands by.
    b.sidecar
        .wait_broadcast("live/s", |e| e["claim"]["state"] == "standby")
        .await?;
    let left = Instant::now();
    owner.terminate().await?;
    let claimed = watcher.expect(Kind::Claimed, "live/s").await?;
    assert_eq!(claimed.claim.unwrap_or_default().node_id, "node-b");
    b.server.wait_playable("live/s").await?;
    eprintln!(
        "{server:?}: standby: the held publisher was claimed and playing {:?} after the owner's encoder stopped",
        left.elapsed()
    );
    assert!(standby.alive(), "{}", standby.log_text());
    Ok(())
}

#[tokio::test]
async fn srs_standby_publisher_is_let_in_when_the_owner_leaves() -> Result<()> {
    a_standby_publisher_is_let_in_when_the_owner_leaves(Server::Srs).await
}

#[tokio::test]
async fn mediamtx_standby_publisher_is_let_in_when_the_owner_leaves() -> Result<()> {
    a_standby_publisher_is_let_in_when_the_owner_leaves(Server::Mediamtx).await
}

#[tokio::test]
async fn ome_standby_publisher_is_let_in_when_the_owner_leaves() -> Result<()> {
    a_standby_publisher_is_let_in_when_the_owner_leaves(Server::Ome).await
}
