//! `claim-service`: see `--help`.

use claim_service::config::{Command, Config, LogFormat};
use std::io::IsTerminal;

use clap::Parser;
use tracing_subscriber::EnvFilter;

fn init_logs(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Colours only on a terminal: a log file or collector gets plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stdout().is_terminal())
        .with_target(false);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Resolves on the first SIGINT or SIGTERM.
async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(
            tokio::signal::unix::SignalKind::terminate(),
        ) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM; only SIGINT stops gracefully");
                let _ = interrupt.await;
                return;
            }
        };
        tokio::select! {
            _ = interrupt => tracing::info!("SIGINT received"),
            _ = term.recv() => tracing::info!("SIGTERM received"),
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
}

/// Exit 0 when the service answers its metrics port's /livez (or, `ready`,
/// /readyz) with 200 (plain HTTP, so the check needs no certificate when
/// gRPC is on TLS).
async fn healthcheck(config: &Config, ready: bool) -> i32 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut addr = config.metrics_listen;
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    let check = async {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        let path = if ready { "/readyz" } else { "/livez" };
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes())
            .await?;
        let mut answer = String::new();
        s.read_to_string(&mut answer).await?;
        std::io::Result::Ok(answer)
    };
    match tokio::time::timeout(std::time::Duration::from_secs(3), check).await {
        Ok(Ok(answer)) => {
            let ok = answer
                .lines()
                .next()
                .is_some_and(|status| status.split(' ').nth(1) == Some("200"));
            let body = answer.split("\r\n\r\n").nth(1).unwrap_or("").trim();
            println!("{}", if body.is_empty() { "no answer" } else { body });
            i32::from(!ok)
        }
        Ok(Err(e)) => {
            println!("unhealthy: cannot ask {addr}: {e}");
            1
        }
        Err(_) => {
            println!("unhealthy: no answer from {addr} within 3s");
            1
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    if let Some(Command::Healthcheck { ready }) = config.command {
        std::process::exit(healthcheck(&config, ready).await);
    }
    let files = match config.validate().and_then(|()| config.load_files()) {
        Ok(files) => files,
        Err(problem) => {
            eprintln!("claim-service: {problem}");
            std::process::exit(2);
        }
    };
    init_logs(config.log_format);
    if let Err(e) = claim_service::server::run(config, files, shutdown_signal()).await {
        tracing::error!(error = %e, "claim-service failed");
        eprintln!("claim-service: {e}");
        std::process::exit(1);
    }
    Ok(())
}
