//! Reading pgraftd's configuration as etcd does: the command line (Go's flag syntax, `-flag`
//! as well as `--flag`) and `ETCD_*` variables, or, when `--config-file` names one, etcd's YAML
//! configuration file alone (etcd then ignores every other flag and variable, and so do we).
//!
//! The file's keys are the flag names (etcd's `embed.Config` YAML tags), with a few nested
//! sections (`client-transport-security`, `peer-transport-security`, `socket-options`) that
//! map onto flags too. Each key becomes `--key=value` for the same parser the command line goes
//! through, so a value is checked and defaulted exactly as the flag is.

use crate::config::Config;
use clap::{CommandFactory, FromArgMatches, Parser};
use serde_yaml::Value;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// The parsed configuration and what to say about it once logging is set up.
#[derive(Debug)]
pub struct Loaded {
    pub config: Config,
    /// Lines to log at startup (the config file in use, keys it ignored).
    pub notes: Vec<String>,
}

/// Why the configuration could not be read.
#[derive(Debug)]
pub enum LoadError {
    /// A command-line problem (clap's message; also `--help` and `--version`).
    Flags(clap::Error),
    /// The config file could not be used.
    File(String),
}

/// Reads the configuration from `args` (the program name first) and the environment.
pub fn load<I, T>(args: I) -> Result<Loaded, LoadError>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString>,
{
    let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
    let args = go_style_dashes(args);
    let cfg = Config::try_parse_from(&args).map_err(LoadError::Flags)?;
    let Some(path) = cfg.config_file.clone() else {
        return Ok(Loaded {
            config: cfg,
            notes: Vec::new(),
        });
    };
    let text = std::fs::read_to_string(&path)
        .map_err(|e| LoadError::File(format!("cannot read {}: {e}", path.display())))?;
    let mut loaded = from_yaml(&text, &path)?;
    loaded.notes.insert(
        0,
        format!(
            "loaded server configuration from {}; other command line flags and environment variables are ignored",
            path.display()
        ),
    );
    Ok(loaded)
}

/// Parses etcd's YAML configuration (no command line, no environment).
pub fn from_yaml(text: &str, path: &Path) -> Result<Loaded, LoadError> {
    let doc: Value = serde_yaml::from_str(text)
        .map_err(|e| LoadError::File(format!("{}: {e}", path.display())))?;
    let map = match doc {
        Value::Mapping(m) => m,
        Value::Null => serde_yaml::Mapping::new(),
        _ => {
            return Err(LoadError::File(format!(
                "{}: expected a mapping of etcd configuration keys",
                path.display()
            )))
        }
    };
    let cmd = Config::command().mut_args(|a| a.env(None::<&str>));
    let known = |name: &str| cmd.get_arguments().any(|a| a.get_long() == Some(name));
    let mut argv: Vec<String> = vec!["pgraftd".into()];
    let mut notes = Vec::new();
    let mut add = |key: String, value: &Value, notes: &mut Vec<String>| -> Result<(), LoadError> {
        let Some(text) = scalar_text(&key, value)? else {
            return Ok(());
        };
        if key == "config-file" {
            return Ok(());
        }
        if known(&key) {
            argv.push(format!("--{key}={text}"));
        } else if text.is_empty() || text == "false" || text == "0" {
            notes.push(format!("config file key {key:?} ignored"));
        } else {
            return Err(LoadError::File(format!(
                "{}: {key:?} ({text:?}) is not supported by pgraftd",
                path.display()
            )));
        }
        Ok(())
    };
    for (k, v) in &map {
        let Some(key) = k.as_str() else {
            return Err(LoadError::File(format!(
                "{}: keys must be strings",
                path.display()
            )));
        };
        match (key, v) {
            ("client-transport-security" | "peer-transport-security" | "socket-options", Value::Mapping(sub)) => {
                for (sk, sv) in sub {
                    let Some(sk) = sk.as_str() else { continue };
                    add(nested_flag(key, sk), sv, &mut notes)?;
                }
            }
            ("experimental-snapshot-catch-up-entries", _) => {
                add("experimental-snapshot-catchup-entries".into(), v, &mut notes)?
            }
            _ => add(key.to_string(), v, &mut notes)?,
        }
    }
    let matches = cmd
        .try_get_matches_from(&argv)
        .map_err(|e| LoadError::File(format!("{}: {e}", path.display())))?;
    let mut config = Config::from_arg_matches(&matches).map_err(LoadError::Flags)?;
    config.config_file = Some(PathBuf::from(path));
    Ok(Loaded { config, notes })
}

/// The flag a key of a nested section stands for (etcd's `configYAML` mapping).
fn nested_flag(section: &str, key: &str) -> String {
    match (section, key) {
        ("socket-options", k) => format!("socket-{k}"),
        ("client-transport-security", "crl-file") => "client-crl-file".into(),
        ("client-transport-security", "allowed-hostname") => "client-cert-allowed-hostname".into(),
        ("client-transport-security", k) => k.to_string(),
        (_, "allowed-cn") => "peer-cert-allowed-cn".into(),
        (_, "allowed-hostname") => "peer-cert-allowed-hostname".into(),
        (_, "skip-client-san-verification") => {
            "experimental-peer-skip-client-san-verification".into()
        }
        (_, k) => format!("peer-{k}"),
    }
}

/// A YAML value as flag text; `None` for an empty value (the flag keeps its default). Lists
/// (`log-outputs: [stderr]`) join with commas. A number for a duration flag is nanoseconds,
/// as Go's `time.Duration` reads it.
fn scalar_text(key: &str, v: &Value) -> Result<Option<String>, LoadError> {
    Ok(Some(match v {
        Value::Null => return Ok(None),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) if is_duration_flag(key) => format!("{n}ns"),
        Value::Number(n) => n.to_string(),
        Value::String(s) => s.clone(),
        Value::Sequence(items) => {
            let mut parts = Vec::new();
            for item in items {
                if let Some(t) = scalar_text(key, item)? {
                    parts.push(t);
                }
            }
            parts.join(",")
        }
        Value::Mapping(_) | Value::Tagged(_) => {
            return Err(LoadError::File(format!(
                "config file key {key:?}: expected a value, not a mapping"
            )))
        }
    }))
}

fn is_duration_flag(key: &str) -> bool {
    matches!(
        key,
        "experimental-watch-progress-notify-interval"
            | "grpc-keepalive-interval"
            | "grpc-keepalive-timeout"
    ) || crate::etcd_flags::inert(key).is_some_and(|f| f.kind == crate::etcd_flags::Kind::Duration)
}

/// Go's flag package takes `-name` as well as `--name`: rewrite the single-dash form of every
/// long flag pgraftd knows, so clap sees `--name`.
fn go_style_dashes(args: Vec<OsString>) -> Vec<OsString> {
    let cmd = Config::command();
    args.into_iter()
        .enumerate()
        .map(|(i, a)| {
            let Some(s) = a.to_str() else { return a };
            if i == 0 || s.starts_with("--") || !s.starts_with('-') || s.len() < 3 {
                return a;
            }
            let name = s[1..].split('=').next().unwrap_or("");
            let long = cmd.get_arguments().any(|x| x.get_long() == Some(name))
                || name == "version"
                || name == "help";
            if long {
                OsString::from(format!("-{s}"))
            } else {
                a
            }
        })
        .collect()
}
