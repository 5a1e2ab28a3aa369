//! Claims for a media server already in place: real nginx-rtmp instances,
//! each with its sidecar (`ingest-node --media-server nginx-rtmp`), real
//! etcd and claim-service, real ffmpeg publishing and ffprobe playing.

use std::time::{Duration, Instant};

use anyhow::Result;
use system_tests::nginx::{self, NginxRtmp};
use system_tests::v1 as pb;
use system_tests::*;

use pb::claim_event::Kind;

/// nginx's update interval, and the sidecar's timeout.
#[derive(Clone, Copy)]
struct Updates {
    every_s: u32,
    timeout_s: u32,
}

/// Quick, for the liveness tests.
const QUICK: Updates = Updates {
    every_s: 1,
    timeout_s: 3,
};

/// One nginx-rtmp with its sidecar.
struct Site {
    nginx: NginxRtmp,
    sidecar: IngestNode,
    hooks_port: u16,
}

impl Site {
    async fn start(node_id: &str, stack: &Stack, updates: Updates) -> Result<Self> {
        Self::start_with(node_id, stack, updates, &[]).await
    }

    async fn start_with(
        node_id: &str,
        stack: &Stack,
        updates: Updates,
        extra: &[&str],
    ) -> Result<Self> {
        let hooks_port = free_port();
        let hooks_url = format!("http://127.0.0.1:{hooks_port}/nginx-rtmp");
        let nginx = NginxRtmp::start(&hooks_url, updates.every_s).await?;
        let sidecar = Self::sidecar(node_id, stack, &nginx, hooks_port, updates, extra).await?;
        Ok(Self {
            nginx,
            sidecar,
            hooks_port,
        })
    }

    async fn sidecar(
        node_id: &str,
        stack: &Stack,
        nginx: &NginxRtmp,
        hooks_port: u16,
        updates: Updates,
        extra: &[&str],
    ) -> Result<IngestNode> {
        let timeout = format!("{}s", updates.timeout_s);
        let mut args = vec!["--hooks-update-timeout", &timeout];
        args.extend_from_slice(extra);
        nginx::sidecar(node_id, &stack.svc.addr(), nginx, hooks_port, &args).await
    }
}

#[tokio::test]
async fn nginx_rtmp_publishers_are_claimed_refused_elsewhere_relayed_and_released() -> Result<()> {
    let stack = Stack::start("nginx-main", &[]).await?;
    let a = Site::start("node-a", &stack, QUICK).await?;
    let b = Site::start("node-b", &stack, QUICK).await?;
    let mut watcher = Watcher::open(&stack.svc, "live/", 0).await?;

    let asked = Instant::now();
    let mut publisher = Publisher::start(&a.nginx.rtmp_url("live/cam1"))?;
    let claimed = watcher.expect(Kind::Claimed, "live/cam1").await?;
    eprintln!(
        "publish through nginx-rtmp claimed {:?} after ffmpeg started",
        asked.elapsed()
    );
    let claim = claimed.claim.unwrap_or_default();
    assert_eq!(claim.node_id, "node-a");

    // A second publisher at B: nginx drops it (the hook answered 403);
    // A's keeps going.
    let mut second = Publisher::start(&b.nginx.rtmp_url("live/cam1"))?;
    assert!(!second.wait_exit().await?.success());
    b.sidecar
        .wait_log("live/cam1 is owned by node node-a; publish to rtmp://")
        .await?;
    assert!(publisher.alive(), "{}", publisher.log_text());

    // A viewer at B is redirected; nginx B relays the stream from A (the
    // relay's own publish at B is not taken for a second publisher).
    assert_eq!(
        probe(&b.nginx.rtmp_url("live/cam1")).await?,
        vec!["aac,audio", "h264,video"]
    );
    let owner = stack.owner("live/cam1", true).await?.unwrap_or_default();
    assert_eq!(
        (owner.node_id.as_str(), owner.fencing_token),
        ("node-a", claim.fencing_token)
    );

    // The publisher stops: released at once, not after a lease.
    publisher.terminate().await?;
    let stopped = Instant::now();
    watcher.expect(Kind::Released, "live/cam1").await?;
    eprintln!(
        "released {:?} after the publisher stopped",
        stopped.elapsed()
    );
    assert_eq!(stack.owner("live/cam1", true).await?, None);
    Ok(())
}

#[tokio::test]
async fn nginx_killed_releases_its_claims_within_the_update_timeout() -> Result<()> {
    let stack = Stack::start("nginx-killed", &[]).await?;
    let mut a = Site::start("node-a", &stack, QUICK).await?;
    let mut watcher = Watcher::open(&stack.svc, "live/", 0).await?;
    let mut publisher = Publisher::start(&a.nginx.rtmp_url("live/k"))?;
    watcher.expect(Kind::Claimed, "live/k").await?;
    a.nginx.kill();
    let killed = Instant::now();
    watcher.expect(Kind::Released, "live/k").await?;
    let after = killed.elapsed();
    publisher.kill();
    eprintln!(
        "released {after:?} after nginx was killed (update timeout {} s)",
        QUICK.timeout_s
    );
    // The sidecar's 3 s timeout, its 1 s check, and slack: the sidecar is
    // alive, so no detach grace applies.
    assert!(after < Duration::from_secs(6), "{after:?}");
    Ok(())
}

#[tokio::test]
async fn a_restarted_sidecar_adopts_what_nginx_still_publishes() -> Result<()> {
    // nginx-rtmp drops a publisher whose update it cannot deliver (measured:
    // "notify: update failed" on a refused connection, notify_update_strict
    // off): the sidecar must be back within one update interval.
    let updates = Updates {
        every_s: 6,
        timeout_s: 15,
    };
    let stack = Stack::start("nginx-sidecar-restart", &[]).await?;
    let mut a = Site::start("node-a", &stack, updates).await?;
    let mut watcher = Watcher::open(&stack.svc, "live/", 0).await?;
    let mut publisher = Publisher::start(&a.nginx.rtmp_url("live/r"))?;
    let first = watcher.expect(Kind::Claimed, "live/r").await?;
    // nginx has let the publisher in (the hook's answer reached it).
    until(
        Duration::from_millis(50),
        async || Ok(http_get(a.nginx.stat_port, "/stat").await?.body),
        |stat| stat.contains("<publishing/>"),
    )
    .await?;
    a.sidecar.kill();
    a.sidecar = Site::sidecar("node-a", &stack, &a.nginx, a.hooks_port, updates, &[]).await?;
    let adopted = watcher.expect(Kind::Adopted, "live/r").await.map_err(|e| {
        anyhow::anyhow!(
            "{e}; the sidecar said:\n{}\nnginx said:\n{}",
            a.sidecar.log_text(),
            a.nginx.error_log()
        )
    })?;
    assert_eq!(
        adopted.claim.unwrap_or_default().fencing_token,
        first.claim.unwrap_or_default().fencing_token
    );
    // Nothing was released, and nginx's updates keep the publisher.
    assert_eq!(
        watcher
            .quiet_for(Duration::from_secs(updates.every_s as u64 + 1))
            .await
            .map(|e| e.kind),
        None
    );
    assert!(publisher.alive(), "{}", publisher.log_text());
    Ok(())
}

#[tokio::test]
async fn a_takeover_through_nginx_moves_the_claim_and_the_former_nginx_drops_its_publisher(
) -> Result<()> {
    let stack = Stack::start("nginx-takeover", &[]).await?;
    let a = Site::start("node-a", &stack, QUICK).await?;
    let b = Site::start_with(
        "node-b",
        &stack,
        QUICK,
        &["--duplicate-publisher", "takeover"],
    )
    .await?;
    let mut watcher = Watcher::open(&stack.svc, "live/", 0).await?;
    let mut former = Publisher::start(&a.nginx.rtmp_url("live/t"))?;
    let first = watcher.expect(Kind::Claimed, "live/t").await?;
    let mut newest = Publisher::start(&b.nginx.rtmp_url("live/t"))?;
    let moved = watcher.expect(Kind::Claimed, "live/t").await?;
    let claim = moved.claim.unwrap_or_default();
    assert_eq!(claim.node_id, "node-b");
    assert!(claim.fencing_token > first.claim.unwrap_or_default().fencing_token);
    // nginx A drops its publisher at its next update (every second here).
    former.wait_exit().await?;
    a.sidecar
        .wait_log(
            "claim taken over by another node; the media server is told to drop its publisher",
        )
        .await?;
    assert!(newest.alive(), "{}", newest.log_text());
    Ok(())
}

#[tokio::test]
async fn hooks_twice_out_of_order_or_unknown_get_an_answer_and_change_no_claim() -> Result<()> {
    let stack = Stack::start("nginx-hostile-hooks", &[]).await?;
    let hooks_port = free_port();
    let hooks = format!("127.0.0.1:{hooks_port}");
    let sidecar = IngestNode::start(
        "node-h",
        &[stack.svc.addr()],
        &["--media-server", "nginx-rtmp", "--hooks-listen", &hooks],
    )
    .await?;
    sidecar.wait_attached().await?;
    let mut watcher = Watcher::open(&stack.svc, "live/", 0).await?;

    assert_eq!(
        nginx_hook_post(hooks_port, &nginx_hook("publish", "o", "1"))?,
        200
    );
    let claim = watcher
        .expect(Kind::Claimed, "live/o")
        .await?
        .claim
        .unwrap_or_default();
    // Twice: the same publisher.
    assert_eq!(
        nginx_hook_post(hooks_port, &nginx_hook("publish", "o", "1"))?,
        200
    );
    // Another client of the same broadcast, its update and its end.
    assert_eq!(
        nginx_hook_post(hooks_port, &nginx_hook("publish", "o", "2"))?,
        403
    );
    assert_eq!(
        nginx_hook_post(hooks_port, &nginx_hook("update_publish", "o", "2"))?,
        403
    );
    assert_eq!(
        nginx_hook_post(hooks_port, &nginx_hook("publish_done", "o", "2"))?,
        200
    );
    // An end for a stream never seen; a bad name; not a hook at all; too big.
    assert_eq!(
        nginx_hook_post(hooks_port, &nginx_hook("publish_done", "never", "9"))?,
        200
    );
    assert_eq!(
        nginx_hook_post(hooks_port, &nginx_hook("publish", "..", "3"))?,
        403
    );
    assert_eq!(nginx_hook_post(hooks_port, "\u{0}\u{1}garbage")?, 400);
    assert_eq!(nginx_hook_post(hooks_port, &"x".repeat(100_000))?, 413);
    // Nothing of it touched the claim.
    assert_eq!(
        watcher
            .quiet_for(Duration::from_millis(300))
            .await
            .map(|e| e.kind),
        None
    );
    let owner = stack.owner("live/o", true).await?.unwrap_or_default();
    assert_eq!(
        (owner.node_id.as_str(), owner.fencing_token),
        ("node-h", claim.fencing_token)
    );
    // The real end releases it.
    assert_eq!(
        nginx_hook_post(hooks_port, &nginx_hook("publish_done", "o", "1"))?,
        200
    );
    watcher.expect(Kind::Released, "live/o").await?;
    Ok(())
}
