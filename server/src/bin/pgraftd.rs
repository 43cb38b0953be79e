//! `pgraftd`: runs one pgraft member with etcd's flags and `ETCD_*` environment variables.

/// mimalloc rather than glibc's malloc: allocation was about a sixth of a member's CPU under
/// load (glibc's arenas grow and shrink all the time). Measured, 3 members, 256-byte puts,
/// medians of 4 interleaved runs: 64 clients 15.3k -> 17.0k puts/s, 88 -> 76 µs of server CPU
/// per put. Built without transparent huge pages, which otherwise took the idle RSS of a member
/// from 45 to 75 MiB (47 MiB without them).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use pgraft_server::config_file::{self, LoadError};
use pgraft_server::{logging, systemd, Node};

fn main() -> std::process::ExitCode {
    // `pgraftd snapshot save|status|restore ...`: etcdctl's and etcdutl's backup commands.
    if std::env::args_os().nth(1).is_some_and(|a| a == "snapshot") {
        init_cli_logging();
        return pgraft_server::snapshot::cli::main(std::env::args_os().skip(2));
    }
    let loaded = match config_file::load(std::env::args_os()) {
        Ok(l) => l,
        Err(LoadError::Flags(e)) => e.exit(),
        Err(LoadError::File(e)) => {
            eprintln!("pgraftd: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let cfg = loaded.config;
    if let Err(e) = cfg.validate() {
        eprintln!("pgraftd: error verifying flags, {e}. See 'pgraftd --help'.");
        return std::process::ExitCode::from(2);
    }
    if let Err(e) = logging::init(&cfg) {
        eprintln!("pgraftd: {e}");
        return std::process::ExitCode::from(2);
    }
    for note in &loaded.notes {
        tracing::warn!("{note}");
    }
    cfg.compat.log();
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
        // Under systemd with `Type=notify` (as etcd's own units are), the start is done once
        // clients are served, as with etcd.
        let notified = async {
            node.ready().await;
            systemd::notify("READY=1");
            std::future::pending::<()>().await
        };
        tokio::select! {
            _ = wait_for_signal() => tracing::info!("shutting down"),
            _ = node.removed() => {
                tracing::warn!("the member has been permanently removed from the cluster; exiting");
            }
            _ = notified => {}
        }
        systemd::notify("STOPPING=1");
        node.stop().await;
        tracing::info!("stopped");
        std::process::ExitCode::SUCCESS
    })
}

/// Warnings and errors of a one-shot command, as text on stderr.
fn init_cli_logging() {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("warn"))
        .with_writer(std::io::stderr)
        .init();
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
