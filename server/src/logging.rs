//! pgraftd's logs, set up from etcd's `--logger`, `--log-level` and `--log-outputs`: JSON lines
//! (zap's format is JSON too; `capnslog` is accepted and logs the same way) to stderr ("default",
//! as etcd outside systemd), stdout, and/or files opened for appending.

use crate::config::{Config, ConfigError};
use std::sync::Arc;
use tracing_subscriber::fmt::writer::{BoxMakeWriter, MakeWriterExt};
use tracing_subscriber::EnvFilter;

/// The tracing level an etcd log level maps to (`panic`/`fatal` log errors only).
pub fn tracing_level(level: &str) -> &'static str {
    match level {
        "debug" => "debug",
        "warn" => "warn",
        "error" | "dpanic" | "panic" | "fatal" => "error",
        _ => "info",
    }
}

/// One writer that copies every line to each of `--log-outputs`.
pub fn writer(outputs: &[String]) -> Result<BoxMakeWriter, ConfigError> {
    let mut combined: Option<BoxMakeWriter> = None;
    for out in outputs {
        let w = match out.as_str() {
            "default" | "stderr" => BoxMakeWriter::new(std::io::stderr),
            "stdout" => BoxMakeWriter::new(std::io::stdout),
            path => {
                let file = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|e| ConfigError(format!("cannot open log output {path:?}: {e}")))?;
                BoxMakeWriter::new(Arc::new(file))
            }
        };
        combined = Some(match combined {
            None => w,
            Some(prev) => BoxMakeWriter::new(prev.and(w)),
        });
    }
    combined.ok_or_else(|| ConfigError("--log-outputs is empty".into()))
}

/// Installs the process-wide subscriber (once, in the binary).
pub fn init(cfg: &Config) -> Result<(), ConfigError> {
    let level = tracing_level(&cfg.log_level);
    let filter = EnvFilter::try_new(format!("pgraft_server={level},pgraftd={level}"))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .json()
        .with_env_filter(filter)
        .with_writer(writer(&cfg.log_outputs())?)
        .init();
    Ok(())
}
