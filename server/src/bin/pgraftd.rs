//! `pgraftd`: runs one pgraft member with etcd's flags and `ETCD_*` environment variables.

use clap::Parser;
use pgraft_server::{Config, Node};
use tracing_subscriber::EnvFilter;

fn main() -> std::process::ExitCode {
    let cfg = Config::parse();
    let filter = EnvFilter::try_new(format!("pgraft_server={0},pgraftd={0}", cfg.log_level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .json()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    if let Err(e) = cfg.validate() {
        eprintln!("pgraftd: {e}");
        return std::process::ExitCode::from(2);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(async move {
        let node = match Node::start(cfg).await {
            Ok(n) => n,
            Err(e) => {
                tracing::error!(error = %e, "failed to start");
                eprintln!("pgraftd: {e}");
                return std::process::ExitCode::FAILURE;
            }
        };
        tokio::select! {
            _ = wait_for_signal() => tracing::info!("shutting down"),
            _ = node.removed() => {
                tracing::warn!("the member has been permanently removed from the cluster; exiting");
            }
        }
        node.stop().await;
        tracing::info!("stopped");
        std::process::ExitCode::SUCCESS
    })
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
