//! The live ownership page (`/ui/` on the claim-service's metrics port) in a
//! real headless Chromium: a publish appears, a release disappears, a
//! standby and a drained node show, claims page by prefix, and the read
//! token guards it. How long the page takes to show a change is measured
//! from the WatchClaims event of the same change (printed, not asserted:
//! tests bound waits, benchmarks judge speed).

use std::process::Command;

use anyhow::{ensure, Result};
use system_tests::browser::Browser;
use system_tests::v1 as pb;
use system_tests::*;

use pb::claim_event::Kind;

const ADMIN: &str = "ui-admin-token-0123456789";
const READ: &str = "ui-read-token-0123456789";

fn token_file(name: &str, token: &str) -> Result<String> {
    let path = std::env::temp_dir().join(format!("claims-ui-{}-{name}", std::process::id()));
    std::fs::write(&path, format!("{token}\n"))?;
    Ok(path.to_string_lossy().into_owned())
}

fn now_unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("the clock is past 1970")
        .as_millis() as i64
}

/// Records, in the page, when each broadcast's row first appears in the
/// claims table and when it leaves it (the page redraws its rows, so
/// presence is compared between mutations, not per node).
const OBSERVE: &str = r#"
    window.__seen = {}; window.__gone = {};
    const body = document.querySelector('#claims tbody');
    let present = new Set([...body.rows].map(r => r.dataset.broadcast));
    new MutationObserver(() => {
        const now = new Set([...body.rows].map(r => r.dataset.broadcast));
        for (const b of now) if (!present.has(b) && !(b in window.__seen)) window.__seen[b] = Date.now();
        for (const b of present) if (!now.has(b) && !(b in window.__gone)) window.__gone[b] = Date.now();
        present = now;
    }).observe(body, { childList: true });
    return true;
"#;

/// A browser on the page at `url`, once it follows the live feed.
async fn open_page(url: &str) -> Result<Browser> {
    let browser = Browser::start().await?;
    browser.client.goto(url).await?;
    browser
        .until("return document.getElementById('live').textContent", |v| {
            v == "live"
        })
        .await?;
    Ok(browser)
}

fn rows_script() -> &'static str {
    "return [...document.querySelectorAll('#claims tbody tr')].map(r => \
     ({broadcast: r.dataset.broadcast, owner: r.dataset.owner, token: r.dataset.token}));"
}

#[tokio::test]
async fn the_ownership_page_follows_claims_standbys_and_drains_live() -> Result<()> {
    let admin = token_file("admin", ADMIN)?;
    let stack = Stack::start("ui-page", &["--admin-token-file", &admin]).await?;
    let a = IngestNode::start("node-a", &[stack.svc.addr()], &[]).await?;
    let b = IngestNode::start(
        "node-b",
        &[stack.svc.addr()],
        &["--duplicate-publisher", "standby", "--claim-wait", "60s"],
    )
    .await?;
    a.wait_attached().await?;
    b.wait_attached().await?;

    let browser = open_page(&format!("http://127.0.0.1:{}/ui/", stack.svc.metrics_port)).await?;
    browser
        .until(
            "return document.querySelectorAll('#nodes tbody tr').length",
            |v| v == 2,
        )
        .await?;
    // The replica holds both sessions, as its record and their records say.
    browser
        .until(
            "const r = document.querySelector('#replicas li'); return r && Number(r.dataset.sessions)",
            |v| v == 2,
        )
        .await?;
    browser.eval(OBSERVE).await?;
    let mut watcher = Watcher::open(&stack.svc, "live/", 0).await?;

    // A publish appears: owner and fencing token as the claim says.
    let published = now_unix_ms();
    let _cam1 = Publisher::start(&a.rtmp_url("live/ui-cam1"))?;
    let claimed = watcher.expect(Kind::Claimed, "live/ui-cam1").await?;
    let claimed_at = now_unix_ms();
    let claim = claimed.claim.expect("a claimed event carries its claim");
    let seen = browser
        .until("return window.__seen['live/ui-cam1'] || null", |v| {
            v.is_i64()
        })
        .await?
        .as_i64()
        .unwrap_or_default();
    let rows = browser.eval(rows_script()).await?;
    let row = rows
        .as_array()
        .and_then(|r| r.iter().find(|r| r["broadcast"] == "live/ui-cam1"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(row["owner"], "node-a", "{rows}");
    assert_eq!(row["token"], claim.fencing_token.to_string(), "{rows}");
    eprintln!(
        "page showed the claim {} ms after WatchClaims did ({} ms after ffmpeg started)",
        seen - claimed_at,
        seen - published
    );

    // A duplicate publisher on node-b stands by: the page lists it.
    let _standby = Publisher::start(&b.rtmp_url("live/ui-cam1"))?;
    browser
        .until(
            "return [...document.querySelectorAll('#standby li')].map(l => l.textContent)",
            |v| v.to_string().contains("node-b for live/ui-cam1"),
        )
        .await?;

    // A release disappears.
    let mut cam2 = Publisher::start(&a.rtmp_url("live/ui-cam2"))?;
    watcher.expect(Kind::Claimed, "live/ui-cam2").await?;
    browser
        .until("return window.__seen['live/ui-cam2'] || null", |v| {
            v.is_i64()
        })
        .await?;
    cam2.kill();
    watcher.expect(Kind::Released, "live/ui-cam2").await?;
    let released_at = now_unix_ms();
    let gone = browser
        .until("return window.__gone['live/ui-cam2'] || null", |v| {
            v.is_i64()
        })
        .await?
        .as_i64()
        .unwrap_or_default();
    eprintln!(
        "page dropped the released claim {} ms after WatchClaims told it",
        gone - released_at
    );
    browser
        .until(
            "return [...document.querySelectorAll('#changes tbody tr')].map(r => r.dataset.kind + ' ' + (r.dataset.broadcast || '')).slice(0, 5)",
            |v| v.to_string().contains("released live/ui-cam2"),
        )
        .await?;

    // A drained node shows as draining.
    let out = Command::new(binary("claimctl"))
        .args(["--server", &stack.svc.addr(), "--admin-token", ADMIN])
        .args(["drain", "node-a"])
        .output()?;
    ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    browser
        .until(
            "const r = document.querySelector('#nodes tbody tr[data-node=\"node-a\"]'); return r && r.dataset.state",
            |v| v == "draining",
        )
        .await?;
    if let Some(path) = std::env::var_os("CLAIMS_UI_SCREENSHOT") {
        std::fs::write(path, browser.client.screenshot().await?)?;
    }

    // Many claims: one page of 100 at a time, by prefix.
    let mut bulk = Node::attach(&stack.svc.addr(), hello("node-c")).await?;
    for i in 0..250 {
        bulk.created(&format!("bulk/{i:04}"), "video").await?;
    }
    for _ in 0..250 {
        bulk.expect_any_claimed().await?;
    }
    let prefix = browser
        .client
        .find(fantoccini::Locator::Id("prefix"))
        .await?;
    prefix.send_keys("bulk/").await?;
    let first_of_page = "const r = [...document.querySelectorAll('#claims tbody tr')]; \
         return [r.length, r[0] && r[0].dataset.broadcast, document.getElementById('matching').textContent];";
    let page = browser
        .until(first_of_page, |v| {
            v[2].to_string().contains("starting with") && v[1] == "bulk/0000"
        })
        .await?;
    assert_eq!(page[0], 100, "{page}");
    assert!(page[2].to_string().contains("250 starting"), "{page}");
    for (n, first, rows) in [(2, "bulk/0100", 100), (3, "bulk/0200", 50)] {
        browser
            .client
            .find(fantoccini::Locator::Id("next"))
            .await?
            .click()
            .await?;
        let page = browser.until(first_of_page, |v| v[1] == first).await?;
        assert_eq!(page[0], rows, "page {n}: {page}");
    }
    let next_disabled = browser
        .eval("return document.getElementById('next').disabled")
        .await?;
    assert_eq!(next_disabled, true);
    browser.close().await
}

#[tokio::test]
async fn the_ownership_page_needs_the_read_token_when_one_is_set() -> Result<()> {
    let read = token_file("read", READ)?;
    let stack = Stack::start("ui-token", &["--read-token-file", &read]).await?;
    let port = stack.svc.metrics_port;
    let refused = http_get(port, "/ui/").await?;
    assert_eq!(refused.status, 401);
    assert!(
        refused
            .header("www-authenticate")
            .is_some_and(|h| h.starts_with("Basic")),
        "{:?}",
        refused.header("www-authenticate")
    );
    assert_eq!(http_get(port, "/ui/api/overview").await?.status, 401);
    // Probes and metrics stay open.
    assert_eq!(http_get(port, "/readyz").await?.status, 200);
    assert_eq!(http_get(port, "/metrics").await?.status, 200);

    let mut node = Node::attach(&stack.svc.addr(), hello("node-t")).await?;
    node.created("live/guarded", "video").await?;
    node.expect_claimed("live/guarded").await?;

    // A browser that signs in (the token as password) gets the page, its
    // lists and its live feed.
    let browser = open_page(&format!("http://viewer:{READ}@127.0.0.1:{port}/ui/")).await?;
    browser
        .until(rows_script(), |v| v.to_string().contains("live/guarded"))
        .await?;
    browser.close().await
}
