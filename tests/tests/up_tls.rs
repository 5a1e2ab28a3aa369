//! `scripts/up.sh --tls`, the documented way to run the whole stack with
//! mutual TLS, run for real: a real ffmpeg publishes through an ingest node
//! that attaches with its own certificate, grpcurl reads over mTLS, a
//! client without a certificate is refused, a node killed with -9 leaves
//! the rest running, and Ctrl-C stops everything in order (the nodes say
//! goodbye before the claim-service stops).

use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Result};
use system_tests::*;

/// The script's process group, interrupted (then killed) on drop.
struct Up {
    child: std::process::Child,
    log: std::path::PathBuf,
}

impl Up {
    fn signal(&self, signal: &str) {
        let _ = Command::new("kill")
            .args([signal, "--", &format!("-{}", self.child.id())])
            .status();
    }
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        self.signal("-KILL");
        let _ = self.child.wait();
    }
}

fn grpcurl(args: &[&str]) -> Result<(i32, String)> {
    let out = Command::new("timeout")
        .arg("10")
        .arg("grpcurl")
        .args(args)
        .output()?;
    Ok((
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    ))
}

#[tokio::test]
async fn up_tls_runs_the_whole_stack_with_mutual_tls() -> Result<()> {
    let run = std::env::temp_dir().join(format!("claims-up-tls-{}", std::process::id()));
    std::fs::create_dir_all(&run)?;
    let log = run.join("up.out");
    let ports: Vec<u16> = (0..8).map(|_| free_port()).collect();
    let mut cmd = Command::new("bash");
    cmd.current_dir(workspace_root())
        .args(["scripts/up.sh", "--tls"])
        .env("RUN_DIR", &run)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&log)?)
        .stderr(std::fs::File::create(run.join("up.err"))?)
        .process_group(0);
    // As from a terminal: Ctrl-C reaches the script. A test runner started
    // in the background of a non-interactive shell inherits SIGINT ignored,
    // and bash cannot trap a signal ignored on entry.
    // SAFETY: between fork and exec, only the async-signal-safe signal(2).
    unsafe {
        cmd.pre_exec(|| {
            libc::signal(libc::SIGINT, libc::SIG_DFL);
            Ok(())
        });
    }
    for (name, port) in [
        "ETCD_PORT",
        "ETCD_PEER_PORT",
        "CLAIMS_PORT",
        "METRICS_PORT",
        "A_RTMP",
        "A_HTTP",
        "B_RTMP",
        "B_HTTP",
    ]
    .iter()
    .zip(&ports)
    {
        cmd.env(name, port.to_string());
    }
    let mut up = Up {
        child: cmd.spawn()?,
        log,
    };
    // The first run may build the release binaries.
    until_for(
        Duration::from_secs(900),
        Duration::from_millis(200),
        async || {
            if let Some(status) = up.child.try_wait()? {
                bail!(
                    "up.sh --tls exited with {status}:\n{}\n{}",
                    up.log(),
                    std::fs::read_to_string(run.join("up.err")).unwrap_or_default()
                );
            }
            Ok(up.log().contains("The stack is up"))
        },
        |is_up| *is_up,
    )
    .await
    .map_err(|e| anyhow::anyhow!("up.sh --tls never came up: {e}\n{}", up.log()))?;
    let certs = run.join("certs");
    let cert = |f: &str| certs.join(f).to_string_lossy().into_owned();
    let addr = format!("127.0.0.1:{}", ports[2]);
    let admin = [
        "-cacert",
        &cert("ca.pem"),
        "-cert",
        &cert("admin.pem"),
        "-key",
        &cert("admin.key"),
    ];

    let (code, out) = grpcurl(&[&admin[..], &[&addr, "list"]].concat())?;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("claims.v1.Ownership"), "{out}");

    // ffmpeg publishes to ingest-a; the claim shows up over mTLS.
    let publisher = Publisher::start(&format!("rtmp://127.0.0.1:{}/live/cam1", ports[4]))?;
    let get = [
        &admin[..],
        &[
            "-d",
            r#"{"broadcast":"live/cam1","consistent":true}"#,
            &addr,
            "claims.v1.Ownership/GetOwner",
        ],
    ]
    .concat();
    until(
        Duration::from_millis(200),
        async || grpcurl(&get),
        |(code, out)| *code == 0 && out.contains("\"nodeId\": \"ingest-a\""),
    )
    .await
    .map_err(|e| anyhow::anyhow!("live/cam1 never owned by ingest-a: {e}\n{}", up.log()))?;

    // A client with no certificate cannot attach; plaintext does not connect.
    let (code, out) = grpcurl(&[
        "-cacert",
        &cert("ca.pem"),
        "-d",
        r#"{"hello":{"node_id":"ingest-b"}}"#,
        &addr,
        "claims.v1.ClaimSessions/Attach",
    ])?;
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("Unauthenticated"), "{out}");
    let (code, out) = grpcurl(&["-plaintext", &addr, "list"])?;
    assert_ne!(code, 0, "{out}");

    // A node dies (kill -9, as in the README's fault table): reported, and
    // the rest keeps running.
    let pid = std::fs::read_to_string(run.join("ingest-b.pid"))?;
    Command::new("kill").args(["-9", pid.trim()]).status()?;
    until(
        Duration::from_millis(200),
        async || Ok(up.log() + &std::fs::read_to_string(run.join("up.err")).unwrap_or_default()),
        |out| out.contains("ingest-b (pid"),
    )
    .await?;
    assert!(
        up.child.try_wait()?.is_none(),
        "up.sh stopped:\n{}",
        up.log()
    );
    let (code, out) = grpcurl(&get)?;
    assert!(code == 0 && out.contains("ingest-a"), "{out}");

    // Ctrl-C (to the whole process group, as a terminal sends it) stops
    // everything it started, the publisher still live: ingest-a says
    // goodbye before the claim-service stops.
    up.signal("-INT");
    until_for(
        Duration::from_secs(30),
        Duration::from_millis(100),
        async || Ok(up.child.try_wait()?.is_some()),
        |stopped| *stopped,
    )
    .await
    .map_err(|e| anyhow::anyhow!("up.sh did not stop on Ctrl-C: {e}\n{}", up.log()))?;
    assert!(up.log().contains("stopped"), "{}", up.log());
    let service_log = std::fs::read_to_string(run.join("claim-service.log"))?;
    assert!(
        service_log.contains("goodbye: releasing every claim"),
        "{service_log}"
    );
    drop(publisher);
    let _ = std::fs::remove_dir_all(&run);
    Ok(())
}
