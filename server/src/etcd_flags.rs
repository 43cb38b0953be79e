//! The etcd 3.4 and 3.5 server flags that mean nothing in pgraftd, accepted anyway so that a
//! systemd unit, container spec or test harness written for etcd starts pgraftd unchanged.
//!
//! Each is parsed with etcd's value syntax (Go bools, durations, numbers, its enums) and read
//! from its `ETCD_*` variable too, so a bad value is refused as etcd refuses it; the ones given
//! are reported once at startup ([`CompatFlags::given`]). A few would change what the process
//! is (proxy mode, discovery): pgraftd does not do those, so a value other
//! than the default is refused rather than silently ignored. The flags pgraftd honours live in
//! [`crate::Config`].

use clap::parser::ValueSource;
use clap::{Arg, ArgMatches, Command};

/// How a flag's value is checked (etcd's Go flag types).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Go `BoolVar`: `--flag`, `--flag=true|false` (and Go's other spellings).
    Bool,
    /// Go `UintVar`/`Uint64Var`.
    Uint,
    /// Go `IntVar`/`Int64Var`.
    Int,
    /// Go `DurationVar`: "100ms", "5s", "1h30m".
    Duration,
    /// Any text.
    Text,
    /// One of a fixed set (etcd's `SelectiveStringValue`).
    Choice(&'static [&'static str]),
}

/// What happens when the flag is given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    /// Accepted with one log line saying it has no effect (and why, where there is more to say).
    NoEffect(&'static str),
    /// Only the default is accepted: anything else asks for something pgraftd does not do.
    DefaultOnly(&'static str),
}

/// One accepted-but-inert etcd flag.
#[derive(Debug, Clone, Copy)]
pub struct InertFlag {
    pub name: &'static str,
    pub env: &'static str,
    pub kind: Kind,
    /// etcd's default, as etcd prints it (`None`: no default).
    pub default: Option<&'static str>,
    pub effect: Effect,
}

const fn flag(
    name: &'static str,
    env: &'static str,
    kind: Kind,
    default: Option<&'static str>,
    effect: Effect,
) -> InertFlag {
    InertFlag {
        name,
        env,
        kind,
        default,
        effect,
    }
}

use Effect::{DefaultOnly, NoEffect};
use Kind::{Bool, Choice, Duration, Int, Text, Uint};

const NO_NOTE: &str = "";
const NO_V2: &str = "pgraftd serves the v3 API only";
const NO_BBOLT: &str = "pgraftd's storage is not bbolt";
const NO_TRACING: &str = "pgraftd has no OpenTelemetry tracing";
const NO_PROXY: &str = "pgraftd has no v2 proxy mode";
const NO_DISCOVERY: &str =
    "pgraftd has no discovery service or DNS bootstrap; list the members with --initial-cluster";

/// Every etcd 3.4 and 3.5 server flag pgraftd accepts without honouring it (TLS, auth and quota
/// flags are not here: they are served elsewhere or refused as unknown).
pub const INERT_FLAGS: &[InertFlag] = &[
    flag("wal-dir", "ETCD_WAL_DIR", Text, None, NoEffect("pgraftd's raft log is a keyspace of the database in --data-dir, written with one fsync per batch; it cannot live in another directory")),
    flag("max-snapshots", "ETCD_MAX_SNAPSHOTS", Uint, Some("5"), NoEffect("pgraftd keeps no snapshot files: a snapshot is read from the database when a member needs one")),
    flag("max-wals", "ETCD_MAX_WALS", Uint, Some("5"), NoEffect("pgraftd keeps no WAL files: the raft log is truncated after each --snapshot-count entries")),
    flag("initial-election-tick-advance", "ETCD_INITIAL_ELECTION_TICK_ADVANCE", Bool, Some("true"), NoEffect(NO_NOTE)),
    flag("backend-batch-interval", "ETCD_BACKEND_BATCH_INTERVAL", Duration, None, NoEffect("pgraftd commits each applied batch at once")),
    flag("backend-batch-limit", "ETCD_BACKEND_BATCH_LIMIT", Int, Some("0"), NoEffect("pgraftd commits each applied batch at once")),
    flag("backend-bbolt-freelist-type", "ETCD_BACKEND_BBOLT_FREELIST_TYPE", Choice(&["array", "map"]), Some("map"), NoEffect(NO_BBOLT)),
    flag("experimental-backend-bbolt-freelist-type", "ETCD_EXPERIMENTAL_BACKEND_BBOLT_FREELIST_TYPE", Choice(&["array", "map"]), Some("array"), NoEffect(NO_BBOLT)),
    flag("grpc-keepalive-min-time", "ETCD_GRPC_KEEPALIVE_MIN_TIME", Duration, Some("5s"), NoEffect("pgraftd's gRPC server (tonic) has no ping enforcement policy")),
    flag("socket-reuse-port", "ETCD_SOCKET_REUSE_PORT", Bool, Some("false"), NoEffect(NO_NOTE)),
    flag("socket-reuse-address", "ETCD_SOCKET_REUSE_ADDRESS", Bool, Some("false"), NoEffect(NO_NOTE)),
    flag("raft-read-timeout", "ETCD_RAFT_READ_TIMEOUT", Duration, Some("5s"), NoEffect("peers talk gRPC, not rafthttp")),
    flag("raft-write-timeout", "ETCD_RAFT_WRITE_TIMEOUT", Duration, Some("5s"), NoEffect("peers talk gRPC, not rafthttp")),
    flag("listen-client-http-urls", "ETCD_LISTEN_CLIENT_HTTP_URLS", Text, Some(""), NoEffect("the JSON gateway and HTTP endpoints stay on --listen-client-urls")),
    flag("discovery", "ETCD_DISCOVERY", Text, Some(""), DefaultOnly(NO_DISCOVERY)),
    flag("discovery-fallback", "ETCD_DISCOVERY_FALLBACK", Choice(&["exit", "proxy"]), Some("proxy"), NoEffect(NO_DISCOVERY)),
    flag("discovery-proxy", "ETCD_DISCOVERY_PROXY", Text, Some(""), NoEffect(NO_DISCOVERY)),
    flag("discovery-srv", "ETCD_DISCOVERY_SRV", Text, Some(""), DefaultOnly(NO_DISCOVERY)),
    flag("discovery-srv-name", "ETCD_DISCOVERY_SRV_NAME", Text, Some(""), NoEffect(NO_DISCOVERY)),
    flag("enable-v2", "ETCD_ENABLE_V2", Bool, Some("false"), NoEffect(NO_V2)),
    flag("experimental-enable-v2v3", "ETCD_EXPERIMENTAL_ENABLE_V2V3", Text, Some(""), NoEffect(NO_V2)),
    flag("v2-deprecation", "ETCD_V2_DEPRECATION", Choice(&["not-yet", "write-only", "write-only-drop-data", "gone"]), Some("not-yet"), NoEffect(NO_V2)),
    flag("proxy", "ETCD_PROXY", Choice(&["off", "readonly", "on"]), Some("off"), DefaultOnly(NO_PROXY)),
    flag("proxy-failure-wait", "ETCD_PROXY_FAILURE_WAIT", Uint, Some("5000"), NoEffect(NO_PROXY)),
    flag("proxy-refresh-interval", "ETCD_PROXY_REFRESH_INTERVAL", Uint, Some("30000"), NoEffect(NO_PROXY)),
    flag("proxy-dial-timeout", "ETCD_PROXY_DIAL_TIMEOUT", Uint, Some("1000"), NoEffect(NO_PROXY)),
    flag("proxy-write-timeout", "ETCD_PROXY_WRITE_TIMEOUT", Uint, Some("5000"), NoEffect(NO_PROXY)),
    flag("proxy-read-timeout", "ETCD_PROXY_READ_TIMEOUT", Uint, Some("0"), NoEffect(NO_PROXY)),
    flag("cors", "ETCD_CORS", Text, Some("*"), NoEffect("pgraftd answers every origin (etcd's default)")),
    flag("host-whitelist", "ETCD_HOST_WHITELIST", Text, Some("*"), NoEffect("pgraftd accepts every host name (etcd's default)")),
    flag("enable-pprof", "ETCD_ENABLE_PPROF", Bool, Some("false"), NoEffect("Go's pprof does not exist in a Rust process")),
    flag("metrics", "ETCD_METRICS", Choice(&["basic", "extensive"]), Some("basic"), NoEffect("/metrics has one level of detail")),
    flag("enable-grpc-gateway", "ETCD_ENABLE_GRPC_GATEWAY", Bool, Some("true"), NoEffect("the JSON gateway is always served")),
    flag("enable-log-rotation", "ETCD_ENABLE_LOG_ROTATION", Bool, Some("false"), NoEffect("rotate log files with logrotate's copytruncate")),
    flag("log-rotation-config-json", "ETCD_LOG_ROTATION_CONFIG_JSON", Text, Some(r#"{"maxsize": 100, "maxage": 0, "maxbackups": 0, "localtime": false, "compress": false}"#), NoEffect(NO_NOTE)),
    flag("debug", "ETCD_DEBUG", Bool, Some("false"), NoEffect("deprecated in etcd; use --log-level=debug")),
    flag("log-package-levels", "ETCD_LOG_PACKAGE_LEVELS", Text, Some(""), NoEffect("deprecated in etcd; use --log-level")),
    flag("unsafe-no-fsync", "ETCD_UNSAFE_NO_FSYNC", Bool, Some("false"), NoEffect("pgraftd always syncs its raft log")),
    flag("experimental-initial-corrupt-check", "ETCD_EXPERIMENTAL_INITIAL_CORRUPT_CHECK", Bool, Some("false"), NoEffect(NO_NOTE)),
    flag("experimental-compact-hash-check-enabled", "ETCD_EXPERIMENTAL_COMPACT_HASH_CHECK_ENABLED", Bool, Some("false"), NoEffect(NO_NOTE)),
    flag("experimental-compact-hash-check-time", "ETCD_EXPERIMENTAL_COMPACT_HASH_CHECK_TIME", Duration, Some("1m"), NoEffect(NO_NOTE)),
    flag("experimental-enable-lease-checkpoint", "ETCD_EXPERIMENTAL_ENABLE_LEASE_CHECKPOINT", Bool, Some("false"), NoEffect(NO_NOTE)),
    flag("experimental-enable-lease-checkpoint-persist", "ETCD_EXPERIMENTAL_ENABLE_LEASE_CHECKPOINT_PERSIST", Bool, Some("false"), NoEffect(NO_NOTE)),
    flag("experimental-compaction-batch-limit", "ETCD_EXPERIMENTAL_COMPACTION_BATCH_LIMIT", Int, Some("1000"), NoEffect("pgraftd's compactor sizes its own batches")),
    flag("experimental-compaction-sleep-interval", "ETCD_EXPERIMENTAL_COMPACTION_SLEEP_INTERVAL", Duration, Some("10ms"), NoEffect("pgraftd's compactor sizes its own batches")),
    flag("experimental-warning-apply-duration", "ETCD_EXPERIMENTAL_WARNING_APPLY_DURATION", Duration, Some("100ms"), NoEffect(NO_NOTE)),
    flag("experimental-downgrade-check-time", "ETCD_EXPERIMENTAL_DOWNGRADE_CHECK_TIME", Duration, Some("5s"), NoEffect(NO_NOTE)),
    flag("experimental-memory-mlock", "ETCD_EXPERIMENTAL_MEMORY_MLOCK", Bool, Some("false"), NoEffect(NO_NOTE)),
    flag("experimental-txn-mode-write-with-shared-buffer", "ETCD_EXPERIMENTAL_TXN_MODE_WRITE_WITH_SHARED_BUFFER", Bool, Some("true"), NoEffect(NO_NOTE)),
    flag("experimental-stop-grpc-service-on-defrag", "ETCD_EXPERIMENTAL_STOP_GRPC_SERVICE_ON_DEFRAG", Bool, Some("false"), NoEffect(NO_NOTE)),
    flag("experimental-bootstrap-defrag-threshold-megabytes", "ETCD_EXPERIMENTAL_BOOTSTRAP_DEFRAG_THRESHOLD_MEGABYTES", Uint, Some("0"), NoEffect(NO_NOTE)),
    flag("experimental-enable-distributed-tracing", "ETCD_EXPERIMENTAL_ENABLE_DISTRIBUTED_TRACING", Bool, Some("false"), NoEffect(NO_TRACING)),
    flag("experimental-distributed-tracing-address", "ETCD_EXPERIMENTAL_DISTRIBUTED_TRACING_ADDRESS", Text, Some("localhost:4317"), NoEffect(NO_TRACING)),
    flag("experimental-distributed-tracing-service-name", "ETCD_EXPERIMENTAL_DISTRIBUTED_TRACING_SERVICE_NAME", Text, Some("etcd"), NoEffect(NO_TRACING)),
    flag("experimental-distributed-tracing-instance-id", "ETCD_EXPERIMENTAL_DISTRIBUTED_TRACING_INSTANCE_ID", Text, Some(""), NoEffect(NO_TRACING)),
    flag("experimental-distributed-tracing-sampling-rate", "ETCD_EXPERIMENTAL_DISTRIBUTED_TRACING_SAMPLING_RATE", Int, Some("0"), NoEffect(NO_TRACING)),
];

/// Go's `strconv.ParseBool`, which etcd's bool flags use.
pub fn parse_go_bool(s: &str) -> Result<bool, String> {
    match s {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Ok(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Ok(false),
        _ => Err("parse error".into()),
    }
}

fn check(kind: Kind, s: &str) -> Result<(), String> {
    let ok = match kind {
        Bool => parse_go_bool(s).is_ok(),
        Uint => s.parse::<u64>().is_ok(),
        Int => s.parse::<i64>().is_ok(),
        Duration => crate::config::parse_duration(s).is_ok(),
        Text => true,
        Choice(valid) => {
            if valid.contains(&s) {
                return Ok(());
            }
            return Err(format!("invalid value (valid values: {valid:?})"));
        }
    };
    if ok {
        Ok(())
    } else {
        Err("parse error".into())
    }
}

impl InertFlag {
    fn arg(&self) -> Arg {
        let kind = self.kind;
        let mut a = Arg::new(self.name)
            .long(self.name)
            .env(self.env)
            .value_name(match kind {
                Bool => "BOOL",
                Uint | Int => "N",
                Duration => "DURATION",
                Text | Choice(_) => "VALUE",
            })
            .help(match self.effect {
                NoEffect(_) => "etcd flag, accepted; no effect in pgraftd",
                DefaultOnly(_) => "etcd flag; pgraftd accepts only its default",
            })
            .help_heading("etcd flags without effect in pgraftd")
            .value_parser(move |s: &str| check(kind, s).map(|()| s.to_string()));
        if kind == Bool {
            // Go's bool flags: `--flag` alone is true, a value needs `=`.
            a = a
                .num_args(0..=1)
                .require_equals(true)
                .default_missing_value("true");
        }
        if let Some(d) = self.default {
            a = a.default_value(d);
        }
        a
    }

    /// Whether `value` is what etcd would do by default.
    fn is_default(&self, value: &str) -> bool {
        match (self.kind, self.default) {
            (Bool, Some(d)) => parse_go_bool(value).ok() == parse_go_bool(d).ok(),
            (_, Some(d)) => value == d,
            (_, None) => value.is_empty(),
        }
    }
}

/// The inert flags this member was given (on the command line, in `ETCD_*` variables or in the
/// config file), to be reported once each at startup.
#[derive(Debug, Clone, Default)]
pub struct CompatFlags {
    pub given: Vec<(&'static InertFlag, String)>,
}

impl CompatFlags {
    /// One log line per inert flag given.
    pub fn log(&self) {
        for (f, value) in &self.given {
            let (NoEffect(why) | DefaultOnly(why)) = f.effect;
            tracing::warn!(
                flag = %format!("--{}", f.name),
                value = %value,
                reason = why,
                "etcd flag accepted; it has no effect in pgraftd"
            );
        }
    }

    /// Refuses the flags whose given value asks for something pgraftd does not do.
    pub fn validate(&self) -> Result<(), crate::config::ConfigError> {
        for (f, value) in &self.given {
            if let DefaultOnly(why) = f.effect {
                if !f.is_default(value) {
                    return Err(crate::config::ConfigError(format!(
                        "--{}={value}: not supported: {why}",
                        f.name
                    )));
                }
            }
        }
        Ok(())
    }
}

impl clap::FromArgMatches for CompatFlags {
    fn from_arg_matches(m: &ArgMatches) -> Result<Self, clap::Error> {
        let mut given = Vec::new();
        for f in INERT_FLAGS {
            let explicit = matches!(
                m.value_source(f.name),
                Some(ValueSource::CommandLine | ValueSource::EnvVariable)
            );
            if explicit {
                if let Some(v) = m.get_one::<String>(f.name) {
                    given.push((f, v.clone()));
                }
            }
        }
        Ok(CompatFlags { given })
    }

    fn update_from_arg_matches(&mut self, m: &ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(m)?;
        Ok(())
    }
}

impl clap::Args for CompatFlags {
    fn augment_args(cmd: Command) -> Command {
        cmd.args(INERT_FLAGS.iter().map(InertFlag::arg))
    }

    fn augment_args_for_update(cmd: Command) -> Command {
        Self::augment_args(cmd)
    }
}

/// Looks up an inert flag by name.
pub fn inert(name: &str) -> Option<&'static InertFlag> {
    INERT_FLAGS.iter().find(|f| f.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use clap::CommandFactory;

    /// Every etcd 3.4.23 (`etcd --help`) and 3.5 (`etcdmain/config.go`) server flag.
    const ETCD_FLAGS: &[&str] = &[
        "advertise-client-urls",
        "auth-token",
        "auth-token-ttl",
        "auto-compaction-mode",
        "auto-compaction-retention",
        "auto-tls",
        "backend-batch-interval",
        "backend-batch-limit",
        "backend-bbolt-freelist-type",
        "bcrypt-cost",
        "cert-file",
        "cipher-suites",
        "client-cert-allowed-hostname",
        "client-cert-auth",
        "client-cert-file",
        "client-crl-file",
        "client-key-file",
        "config-file",
        "cors",
        "data-dir",
        "debug",
        "discovery",
        "discovery-fallback",
        "discovery-proxy",
        "discovery-srv",
        "discovery-srv-name",
        "election-timeout",
        "enable-grpc-gateway",
        "enable-log-rotation",
        "enable-pprof",
        "enable-v2",
        "experimental-backend-bbolt-freelist-type",
        "experimental-bootstrap-defrag-threshold-megabytes",
        "experimental-compact-hash-check-enabled",
        "experimental-compact-hash-check-time",
        "experimental-compaction-batch-limit",
        "experimental-compaction-sleep-interval",
        "experimental-corrupt-check-time",
        "experimental-distributed-tracing-address",
        "experimental-distributed-tracing-instance-id",
        "experimental-distributed-tracing-sampling-rate",
        "experimental-distributed-tracing-service-name",
        "experimental-downgrade-check-time",
        "experimental-enable-distributed-tracing",
        "experimental-enable-lease-checkpoint",
        "experimental-enable-lease-checkpoint-persist",
        "experimental-enable-v2v3",
        "experimental-initial-corrupt-check",
        "experimental-memory-mlock",
        "experimental-peer-skip-client-san-verification",
        "experimental-snapshot-catchup-entries",
        "experimental-stop-grpc-service-on-defrag",
        "experimental-txn-mode-write-with-shared-buffer",
        "experimental-warning-apply-duration",
        "experimental-watch-progress-notify-interval",
        "force-new-cluster",
        "grpc-keepalive-interval",
        "grpc-keepalive-min-time",
        "grpc-keepalive-timeout",
        "heartbeat-interval",
        "host-whitelist",
        "initial-advertise-peer-urls",
        "initial-cluster",
        "initial-cluster-state",
        "initial-cluster-token",
        "initial-election-tick-advance",
        "key-file",
        "listen-client-http-urls",
        "listen-client-urls",
        "listen-metrics-urls",
        "listen-peer-urls",
        "log-level",
        "log-outputs",
        "log-package-levels",
        "log-rotation-config-json",
        "logger",
        "max-concurrent-streams",
        "max-request-bytes",
        "max-snapshots",
        "max-txn-ops",
        "max-wals",
        "metrics",
        "name",
        "peer-auto-tls",
        "peer-cert-allowed-cn",
        "peer-cert-allowed-hostname",
        "peer-cert-file",
        "peer-client-cert-auth",
        "peer-client-cert-file",
        "peer-client-key-file",
        "peer-crl-file",
        "peer-key-file",
        "peer-trusted-ca-file",
        "pre-vote",
        "proxy",
        "proxy-dial-timeout",
        "proxy-failure-wait",
        "proxy-read-timeout",
        "proxy-refresh-interval",
        "proxy-write-timeout",
        "quota-backend-bytes",
        "raft-read-timeout",
        "raft-write-timeout",
        "self-signed-cert-validity",
        "snapshot-count",
        "socket-reuse-address",
        "socket-reuse-port",
        "strict-reconfig-check",
        "tls-max-version",
        "tls-min-version",
        "trusted-ca-file",
        "unsafe-no-fsync",
        "v2-deprecation",
        "version",
        "wal-dir",
    ];

    /// etcd flags pgraftd does not accept yet (automatic certificates, CRLs, cipher suites, the
    /// server's own client certificate, host name checks).
    const ELSEWHERE: &[&str] = &[
        "auto-tls",
        "cipher-suites",
        "client-cert-allowed-hostname",
        "client-cert-file",
        "client-crl-file",
        "client-key-file",
        "experimental-peer-skip-client-san-verification",
        "peer-auto-tls",
        "peer-cert-allowed-hostname",
        "peer-crl-file",
        "self-signed-cert-validity",
    ];

    /// pgraft's own flags, with their variables (not etcd's, so not `ETCD_*`).
    const PGRAFT_FLAGS: &[(&str, &str)] = &[("admin-token", "PGRAFT_ADMIN_TOKEN")];

    fn parser_flags() -> Vec<(String, Option<String>)> {
        let cmd = Config::command();
        let mut v: Vec<(String, Option<String>)> = cmd
            .get_arguments()
            .filter_map(|a| {
                let long = a.get_long()?;
                (long != "help").then(|| {
                    (
                        long.to_string(),
                        a.get_env().map(|e| e.to_string_lossy().into_owned()),
                    )
                })
            })
            .collect();
        v.push(("version".into(), None));
        v.sort();
        v
    }

    #[test]
    fn every_etcd_flag_is_accepted() {
        let ours: Vec<String> = parser_flags().into_iter().map(|(n, _)| n).collect();
        for f in ETCD_FLAGS {
            if ELSEWHERE.contains(f) {
                continue;
            }
            assert!(ours.iter().any(|o| o == f), "etcd's --{f} is not accepted");
        }
        for o in &ours {
            if PGRAFT_FLAGS.iter().any(|(f, _)| f == o) {
                continue;
            }
            assert!(
                ETCD_FLAGS.contains(&o.as_str()),
                "--{o} is not an etcd flag: add it to ETCD_FLAGS if etcd has it"
            );
        }
    }

    #[test]
    fn env_vars_are_etcds() {
        for (name, env) in parser_flags() {
            if name == "version" {
                continue;
            }
            let expected = match PGRAFT_FLAGS.iter().find(|(f, _)| *f == name) {
                Some((_, env)) => env.to_string(),
                None => format!("ETCD_{}", name.to_uppercase().replace('-', "_")),
            };
            assert_eq!(env.as_deref(), Some(expected.as_str()), "--{name}");
        }
    }

    /// The flag table in README.md lists exactly the parser's flags, each with its variable,
    /// and says "no effect" for exactly the inert ones.
    #[test]
    fn readme_flag_table_matches_the_parser() {
        let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
            .expect("README.md");
        let mut rows: Vec<(String, String, String)> = Vec::new();
        for line in readme.lines() {
            let Some(rest) = line.strip_prefix("| `--") else {
                continue;
            };
            let cells: Vec<&str> = rest.split('|').map(str::trim).collect();
            let name = cells[0].trim_end_matches('`').to_string();
            let env = cells.get(1).unwrap_or(&"").trim_matches('`').to_string();
            let what = cells.get(3).unwrap_or(&"").to_string();
            rows.push((name, env, what));
        }
        let ours = parser_flags();
        let mut problems = Vec::new();
        for (name, env) in &ours {
            match rows.iter().find(|r| &r.0 == name) {
                None => problems.push(format!("--{name} is missing from README's flag table")),
                Some(r) => {
                    if env.as_deref().unwrap_or("") != r.1 {
                        problems.push(format!("--{name}: README says variable {:?}", r.1));
                    }
                    let says_inert = r.2.contains("no effect") || r.2.contains("only the default");
                    if says_inert != inert(name).is_some() {
                        problems.push(format!(
                            "--{name}: README's description disagrees on whether it has an effect"
                        ));
                    }
                }
            }
        }
        for r in &rows {
            if !ours.iter().any(|(n, _)| n == &r.0) {
                problems.push(format!(
                    "README lists --{}, which pgraftd does not accept",
                    r.0
                ));
            }
        }
        if !problems.is_empty() {
            let cmd = Config::command();
            for a in cmd.get_arguments() {
                let Some(long) = a.get_long() else { continue };
                let default: Vec<String> = a
                    .get_default_values()
                    .iter()
                    .map(|d| d.to_string_lossy().into_owned())
                    .collect();
                let env = a
                    .get_env()
                    .map(|e| e.to_string_lossy().into_owned())
                    .unwrap_or_default();
                let what = match inert(long) {
                    Some(f) => match f.effect {
                        Effect::NoEffect(w) => format!("accepted, no effect. {w}"),
                        Effect::DefaultOnly(w) => format!("only the default accepted: {w}"),
                    },
                    None => a.get_help().map(|h| h.to_string()).unwrap_or_default(),
                };
                eprintln!(
                    "| `--{long}` | `{env}` | `{}` | {what} |",
                    default.join(",")
                );
            }
        }
        assert!(problems.is_empty(), "{problems:#?}");
    }
}
