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
            notes: unrecognized_env(std::env::vars_os().map(|(k, _)| k)),
        });
    };
    let text = std::fs::read_to_string(&path)
        .map_err(|e| LoadError::File(format!("cannot read {}: {e}", path.display())))?;
    let mut loaded = from_yaml(&text, &path)?;
    // pgraft's own `--admin-token` / `PGRAFT_ADMIN_TOKEN` is no etcd setting: it still applies
    // beside a config file (which may set `admin-token` itself).
    if loaded.config.admin_token.is_none() {
        loaded.config.admin_token = cfg.admin_token.clone();
    }
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
        } else if text.is_empty()
            || text == "false"
            || text == "0"
            || ETCD_DEFAULTS.contains(&(key.as_str(), text.as_str()))
        {
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
            (
                "client-transport-security" | "peer-transport-security" | "socket-options",
                Value::Mapping(sub),
            ) => {
                for (sk, sv) in sub {
                    let Some(sk) = sk.as_str() else { continue };
                    add(nested_flag(key, sk), sv, &mut notes)?;
                }
            }
            ("experimental-snapshot-catch-up-entries", _) => add(
                "experimental-snapshot-catchup-entries".into(),
                v,
                &mut notes,
            )?,
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

/// etcd's defaults for the keys pgraftd does not parse yet (TLS): a file that
/// gives them their default asks for nothing pgraftd lacks.
const ETCD_DEFAULTS: &[(&str, &str)] = &[("self-signed-cert-validity", "1")];

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

/// etcd's warning for `ETCD_*` variables that match no flag (a typo, or a flag of another
/// etcd version).
fn unrecognized_env(names: impl Iterator<Item = OsString>) -> Vec<String> {
    let cmd = Config::command();
    names
        .filter_map(|k| k.into_string().ok())
        .filter(|k| k.starts_with("ETCD_"))
        .filter(|k| !cmd.get_arguments().any(|a| a.get_env() == Some(k.as_ref())))
        .map(|k| format!("unrecognized environment variable {k}"))
        .collect()
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::AutoCompaction;
    use std::time::Duration;

    const SAMPLE: &str = include_str!("../../compat-tests/etcd.conf.yml.sample");

    fn yaml(text: &str) -> Result<Loaded, LoadError> {
        from_yaml(text, Path::new("test.yml"))
    }

    fn file_error(r: Result<Loaded, LoadError>) -> String {
        match r {
            Err(LoadError::File(e)) => e,
            Err(LoadError::Flags(e)) => e.to_string(),
            Ok(l) => panic!("accepted: {:?}", l.config),
        }
    }

    #[test]
    fn unknown_etcd_variables_are_named() {
        let notes = unrecognized_env(
            ["ETCD_NAME", "ETCD_NAMEE", "ETCDCTL_API", "PATH"]
                .into_iter()
                .map(OsString::from),
        );
        assert_eq!(notes, vec!["unrecognized environment variable ETCD_NAMEE"]);
    }

    #[test]
    fn etcds_sample_config_file_is_read() {
        let l = yaml(SAMPLE).unwrap();
        let c = &l.config;
        c.validate().unwrap();
        assert_eq!(c.name, "default");
        assert_eq!(c.data_dir(), PathBuf::from("/var/lib/pgraft/default.etcd"));
        assert_eq!(c.snapshot_count, 10000);
        assert!(!c.strict_reconfig_check);
        assert_eq!(c.log_level, "debug");
        assert_eq!(c.log_outputs(), vec!["stderr".to_string()]);
        assert_eq!(
            c.auto_compaction().unwrap(),
            Some(AutoCompaction::Periodic(Duration::from_secs(3600)))
        );
        let given: Vec<&str> = c.compat.given.iter().map(|(f, _)| f.name).collect();
        assert!(given.contains(&"enable-v2"), "{given:?}");
        assert!(given.contains(&"max-wals"), "{given:?}");
        assert_eq!(c.quota_backend_bytes, 0);
    }

    #[test]
    fn config_file_values_are_checked_like_flags() {
        // Durations given as numbers are nanoseconds (Go's time.Duration in YAML).
        let l = yaml(
            "grpc-keepalive-timeout: 3000000000\nexperimental-watch-progress-notify-interval: 2s",
        )
        .unwrap();
        assert_eq!(l.config.grpc_keepalive_timeout, Duration::from_secs(3));
        assert_eq!(
            l.config.watch_progress_notify_interval,
            Duration::from_secs(2)
        );
        assert!(file_error(yaml("enable-v2: maybe")).contains("maybe"));
        assert!(file_error(yaml("heartbeat-interval: fast")).contains("fast"));
        assert!(file_error(yaml("- a\n- b")).contains("mapping"));
        // The TLS sections map to etcd's flags; what pgraftd lacks (automatic certificates)
        // is refused, not silently plaintext.
        let l = yaml(
            "client-transport-security:\n  cert-file: /c.pem\n  key-file: /k.pem\n  client-cert-auth: true\n  trusted-ca-file: /ca.pem\npeer-transport-security:\n  cert-file: /pc.pem\n  allowed-cn: member",
        )
        .unwrap();
        assert_eq!(
            (l.config.cert_file.as_str(), l.config.key_file.as_str()),
            ("/c.pem", "/k.pem")
        );
        assert!(l.config.client_cert_auth);
        assert_eq!(l.config.trusted_ca_file, "/ca.pem");
        assert_eq!(l.config.peer_cert_file, "/pc.pem");
        assert_eq!(l.config.peer_cert_allowed_cn, "member");
        let e = file_error(yaml("peer-transport-security:\n  auto-tls: true"));
        assert!(e.contains("peer-auto-tls"), "{e}");
        let l = yaml("log-outputs: [stderr, stdout]\nlogger: capnslog").unwrap();
        assert!(l.config.validate().is_err());
        let l = yaml("proxy: 'on'").unwrap();
        assert!(l.config.validate().is_err());
    }

    /// Command line: Go's flag syntax, `ETCD_*` variables, and the config file overriding both.
    /// (The only test here that sets variables: they are ones no other test reads a value of.)
    #[test]
    fn command_line_env_and_config_file() {
        let given = |c: &Config, name: &str| {
            c.compat
                .given
                .iter()
                .find(|(f, _)| f.name == name)
                .map(|(_, v)| v.clone())
        };
        std::env::set_var("ETCD_MAX_WALS", "7");
        let c = load([
            "pgraftd",
            "-enable-v2",
            "--pre-vote=false",
            "-name=n1",
            "-max-snapshots",
            "3",
        ])
        .unwrap()
        .config;
        assert_eq!(given(&c, "enable-v2").as_deref(), Some("true"));
        assert_eq!(given(&c, "max-wals").as_deref(), Some("7"));
        assert_eq!(given(&c, "max-snapshots").as_deref(), Some("3"));
        assert_eq!(given(&c, "wal-dir"), None);
        assert!(!c.pre_vote);
        assert_eq!(c.name, "n1");
        // A bool's value needs `=`, as in Go.
        assert!(load(["pgraftd", "--enable-v2", "true"]).is_err());
        assert!(load(["pgraftd", "--enable-v2=yes"]).is_err());
        assert!(load(["pgraftd", "--enable-v2=T"]).is_ok());
        assert!(load(["pgraftd", "--max-wals=-1"]).is_err());
        assert!(load(["pgraftd", "--grpc-keepalive-min-time=5"]).is_err());
        assert!(load(["pgraftd", "--metrics=extensive"]).is_ok());
        assert!(load(["pgraftd", "--metrics=lots"]).is_err());
        assert!(load(["pgraftd", "--no-such-flag"]).is_err());

        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("etcd.yml");
        std::fs::write(&file, "name: from-file\nenable-pprof: true\n").unwrap();
        let l = load([
            "pgraftd".to_string(),
            "--name=ignored".into(),
            format!("--config-file={}", file.display()),
        ])
        .unwrap();
        std::env::remove_var("ETCD_MAX_WALS");
        assert_eq!(l.config.name, "from-file");
        assert_eq!(
            given(&l.config, "max-wals"),
            None,
            "the environment is ignored"
        );
        assert_eq!(given(&l.config, "enable-pprof").as_deref(), Some("true"));
        assert!(l.notes[0].contains("ignored"));
        let missing = load(["pgraftd", "--config-file=/nonexistent/etcd.yml"]);
        assert!(matches!(missing, Err(LoadError::File(_))));
    }
}
