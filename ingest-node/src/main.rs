//! `ingest-node`: see `--help`.

use clap::Parser;
use ingest_node::config::{Config, LogFormat};
use tracing_subscriber::EnvFilter;

fn init_logs(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false);
    match format {
        LogFormat::Human => builder.init(),
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

#[tokio::main]
async fn main() {
    let config = Config::parse();
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
