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

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use tracing_subscriber::fmt::MakeWriter;

    #[test]
    fn every_output_gets_every_line() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.log");
        let b = dir.path().join("b.log");
        std::fs::write(&a, "earlier\n").unwrap();
        let outputs = vec![
            a.display().to_string(),
            "stderr".to_string(),
            b.display().to_string(),
        ];
        let w = writer(&outputs).unwrap();
        w.make_writer().write_all(b"one\n").unwrap();
        w.make_writer().write_all(b"two\n").unwrap();
        // Appended, not truncated.
        assert_eq!(std::fs::read_to_string(&a).unwrap(), "earlier\none\ntwo\n");
        assert_eq!(std::fs::read_to_string(&b).unwrap(), "one\ntwo\n");
        let bad = writer(&["/nonexistent/dir/x.log".to_string()]);
        assert!(bad.is_err());
    }

    #[test]
    fn etcd_levels_map_to_tracing_levels() {
        assert_eq!(tracing_level("debug"), "debug");
        assert_eq!(tracing_level("warn"), "warn");
        assert_eq!(tracing_level("fatal"), "error");
        assert_eq!(tracing_level("info"), "info");
    }
}
