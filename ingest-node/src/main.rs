//! `ingest-node`: see `--help`.

use std::io::IsTerminal;

use clap::Parser;
use ingest_node::config::{Command, Config, LogFormat};
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

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGTERM; only SIGINT stops gracefully");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
        _ = term.recv() => tracing::info!("SIGTERM received"),
    }
}

/// Exit 0 when the node on `--http-listen` answers /healthz.
async fn healthcheck(config: &Config) -> i32 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut addr = config.http_listen;
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    let check = async {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        s.write_all(b"GET /healthz HTTP/1.0\r\nHost: localhost\r\n\r\n")
            .await?;
        let mut answer = String::new();
        s.read_to_string(&mut answer).await?;
        std::io::Result::Ok(answer)
    };
    match tokio::time::timeout(std::time::Duration::from_secs(3), check).await {
        Ok(Ok(answer))
            if answer.starts_with("HTTP/1.0 200") || answer.starts_with("HTTP/1.1 200") =>
        {
            println!("{}", answer.split("\r\n\r\n").nth(1).unwrap_or("ok"));
            0
        }
        Ok(Ok(answer)) => {
            println!("unhealthy: {}", answer.lines().next().unwrap_or(""));
            1
        }
        Ok(Err(e)) => {
            println!("unhealthy: {e}");
            1
        }
        Err(_) => {
            println!("unhealthy: no answer from {addr} within 3s");
            1
        }
    }
}

#[tokio::main]
async fn main() {
    let config = Config::parse();
    if let Some(Command::Healthcheck) = config.command {
        std::process::exit(healthcheck(&config).await);
    }
    if let Err(problem) = config.validate() {
        eprintln!("ingest-node: {problem}");
        std::process::exit(2);
    }
    init_logs(config.log_format);
    if let Err(e) = ingest_node::node::run(config, shutdown_signal()).await {
        tracing::error!(error = %e, "ingest node failed");
        eprintln!("ingest-node: {e}");
        std::process::exit(1);
    }
}
