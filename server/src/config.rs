//! pgraftd's configuration: etcd's flag names and `ETCD_*` environment variables, with etcd's
//! defaults, in one place, so pgraftd drops in wherever etcd runs.

pub use crate::etcd_flags::parse_go_bool;
use crate::etcd_flags::CompatFlags;
use crate::tls::TlsFiles;
use clap::Parser;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

/// The version of the etcd API pgraft speaks, reported by Status and `/version`.
pub const ETCD_VERSION: &str = "3.5.0";
/// The cluster version reported to clients (major.minor.0).
pub const ETCD_CLUSTER_VERSION: &str = "3.5.0";
pub const PGRAFT_VERSION: &str = env!("CARGO_PKG_VERSION");

#[derive(Parser, Debug, Clone)]
#[command(
    name = "pgraftd",
    version = concat!(env!("CARGO_PKG_VERSION"), " (etcd API 3.5)"),
    about = "pgraft: an etcd v3 compatible, Raft-replicated key-value store"
)]
pub struct Config {
    /// Human-readable name for this member.
    #[arg(long, env = "ETCD_NAME", default_value = "default")]
    pub name: String,

    /// Path to the data directory (default: "<name>.etcd").
    #[arg(long, env = "ETCD_DATA_DIR")]
    pub data_dir: Option<PathBuf>,

    /// List of URLs to listen on for client traffic.
    #[arg(
        long,
        env = "ETCD_LISTEN_CLIENT_URLS",
        default_value = "http://localhost:2379"
    )]
    pub listen_client_urls: String,

    /// List of this member's client URLs to advertise to the rest of the cluster.
    #[arg(
        long,
        env = "ETCD_ADVERTISE_CLIENT_URLS",
        default_value = "http://localhost:2379"
    )]
    pub advertise_client_urls: String,

    /// List of URLs to listen on for peer traffic.
    #[arg(
        long,
        env = "ETCD_LISTEN_PEER_URLS",
        default_value = "http://localhost:2380"
    )]
    pub listen_peer_urls: String,

    /// List of this member's peer URLs to advertise to the rest of the cluster.
    #[arg(
        long,
        env = "ETCD_INITIAL_ADVERTISE_PEER_URLS",
        default_value = "http://localhost:2380"
    )]
    pub initial_advertise_peer_urls: String,

    /// Initial cluster configuration for bootstrapping: "name=peerURL,..." (default:
    /// "<name>=<initial-advertise-peer-urls>").
    #[arg(long, env = "ETCD_INITIAL_CLUSTER")]
    pub initial_cluster: Option<String>,

    /// Initial cluster state ("new" or "existing").
    #[arg(long, env = "ETCD_INITIAL_CLUSTER_STATE", default_value = "new")]
    pub initial_cluster_state: String,

    /// Initial cluster token for the cluster during bootstrap.
    #[arg(
        long,
        env = "ETCD_INITIAL_CLUSTER_TOKEN",
        default_value = "etcd-cluster"
    )]
    pub initial_cluster_token: String,

    /// Maximum number of operations permitted in a transaction.
    #[arg(long, env = "ETCD_MAX_TXN_OPS", default_value_t = 128)]
    pub max_txn_ops: usize,

    /// Maximum client request size in bytes the server will accept.
    #[arg(long, env = "ETCD_MAX_REQUEST_BYTES", default_value_t = 1572864)]
    pub max_request_bytes: usize,

    /// Time (in milliseconds) of a heartbeat interval.
    #[arg(long, env = "ETCD_HEARTBEAT_INTERVAL", default_value_t = 100)]
    pub heartbeat_interval: u64,

    /// Time (in milliseconds) for an election to timeout.
    #[arg(long, env = "ETCD_ELECTION_TIMEOUT", default_value_t = 1000)]
    pub election_timeout: u64,

    /// Number of committed transactions to trigger a snapshot (log compaction).
    #[arg(long, env = "ETCD_SNAPSHOT_COUNT", default_value_t = 100000)]
    pub snapshot_count: u64,

    /// Reject reconfiguration requests that would cause quorum loss (etcd's check: every
    /// voting member connected for 5 s before an add, enough started members, ...).
    #[arg(
        long,
        env = "ETCD_STRICT_RECONFIG_CHECK",
        default_value = "true",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true",
        value_parser = parse_go_bool,
        action = clap::ArgAction::Set
    )]
    pub strict_reconfig_check: bool,

    /// Duration of periodic watch progress notifications; 0 turns them off (as in etcd).
    #[arg(
        long = "experimental-watch-progress-notify-interval",
        env = "ETCD_EXPERIMENTAL_WATCH_PROGRESS_NOTIFY_INTERVAL",
        default_value = "10m",
        value_parser = parse_duration
    )]
    pub watch_progress_notify_interval: Duration,

    /// Log level: debug, info, warn, error, panic or fatal (the last two log errors only).
    #[arg(long, env = "ETCD_LOG_LEVEL", default_value = "info")]
    pub log_level: String,

    /// etcd's YAML configuration file. When given, every other flag and `ETCD_*` variable is
    /// ignored, as in etcd.
    #[arg(long, env = "ETCD_CONFIG_FILE")]
    pub config_file: Option<PathBuf>,

    /// Logger: "zap" (JSON lines) or "capnslog" (etcd 3.4's default, same JSON lines here).
    #[arg(long, env = "ETCD_LOGGER", default_value = "zap")]
    pub logger: String,

    /// Where logs go, comma separated: "default" or "stderr", "stdout", or file paths (appended).
    #[arg(long, env = "ETCD_LOG_OUTPUTS", default_value = "default")]
    pub log_outputs: String,

    /// URLs to serve /metrics and /health (and /version, /livez, /readyz) on too, plain HTTP.
    #[arg(long, env = "ETCD_LISTEN_METRICS_URLS", default_value = "")]
    pub listen_metrics_urls: String,

    /// Raft pre-vote: a member checks it could win before starting an election (etcd 3.5's
    /// default).
    #[arg(
        long,
        env = "ETCD_PRE_VOTE",
        default_value = "true",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true",
        value_parser = parse_go_bool,
        action = clap::ArgAction::Set
    )]
    pub pre_vote: bool,

    /// Restart this member as a one-member cluster, keeping its data: every other member is
    /// removed through its own log (etcd's disaster recovery for a cluster that lost its
    /// quorum for good). Only on a restart; a new data directory starts as usual.
    #[arg(
        long,
        env = "ETCD_FORCE_NEW_CLUSTER",
        default_value = "false",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true",
        value_parser = parse_go_bool,
        action = clap::ArgAction::Set
    )]
    pub force_new_cluster: bool,

    /// Maximum concurrent gRPC streams each client connection can open.
    #[arg(long, env = "ETCD_MAX_CONCURRENT_STREAMS", default_value_t = u32::MAX)]
    pub max_concurrent_streams: u32,

    /// How often the server pings an idle client connection (0 turns pings off).
    #[arg(
        long,
        env = "ETCD_GRPC_KEEPALIVE_INTERVAL",
        default_value = "2h",
        value_parser = parse_duration
    )]
    pub grpc_keepalive_interval: Duration,

    /// How long a ping may go unanswered before the connection is closed.
    #[arg(
        long,
        env = "ETCD_GRPC_KEEPALIVE_TIMEOUT",
        default_value = "20s",
        value_parser = parse_duration
    )]
    pub grpc_keepalive_timeout: Duration,

    /// How --auto-compaction-retention is read: "periodic" (a duration, or hours) or
    /// "revision" (a number of revisions).
    #[arg(long, env = "ETCD_AUTO_COMPACTION_MODE", default_value = "periodic")]
    pub auto_compaction_mode: String,

    /// History the leader keeps before compacting it on its own; "0" turns that off.
    #[arg(long, env = "ETCD_AUTO_COMPACTION_RETENTION", default_value = "0")]
    pub auto_compaction_retention: String,

    /// Raft entries kept after a log compaction for slow followers to catch up from.
    #[arg(
        long = "experimental-snapshot-catchup-entries",
        env = "ETCD_EXPERIMENTAL_SNAPSHOT_CATCHUP_ENTRIES",
        default_value_t = 5000
    )]
    pub snapshot_catchup_entries: u64,

    /// etcd's flags that mean nothing here (accepted, logged once at startup).
    #[command(flatten)]
    pub compat: CompatFlags,

    /// How often revision-mode auto-compaction looks at the revision (etcd: 5 minutes). Not a
    /// flag: tests shorten it.
    #[arg(skip)]
    pub auto_compaction_revision_interval: Option<Duration>,

    // --- Maintenance: space quota and corruption check (etcd's names and defaults). ---
    /// Raise a NOSPACE alarm when the backend exceeds this many bytes (0: etcd's default of
    /// 2 GiB; negative: no quota).
    #[arg(
        long,
        env = "ETCD_QUOTA_BACKEND_BYTES",
        default_value_t = 0,
        allow_negative_numbers = true
    )]
    pub quota_backend_bytes: i64,

    /// Duration of time between cluster corruption check passes (0: no check).
    #[arg(
        long = "experimental-corrupt-check-time",
        env = "ETCD_EXPERIMENTAL_CORRUPT_CHECK_TIME",
        default_value = "0s",
        value_parser = parse_duration
    )]
    pub corrupt_check_time: Duration,
    // --- Auth (see `crate::auth`) ---
    /// Auth token type: "simple", or "jwt,pub-key=<file>,priv-key=<file>,sign-method=<alg>
    /// [,ttl=<duration>]" (RS256/384/512, PS256/384/512, ES256/384).
    #[arg(long, env = "ETCD_AUTH_TOKEN", default_value = "simple", value_parser = parse_auth_token)]
    pub auth_token: String,

    /// Seconds a simple token stays valid without being used.
    #[arg(long, env = "ETCD_AUTH_TOKEN_TTL", default_value_t = 300)]
    pub auth_token_ttl: u64,

    /// bcrypt cost of password hashes (4 to 31).
    #[arg(long, env = "ETCD_BCRYPT_COST", default_value_t = 10,
          value_parser = clap::value_parser!(u32).range(4..=31))]
    pub bcrypt_cost: u32,

    // --- TLS (see `crate::tls`); `https://` listen URLs need a certificate and key ---
    /// Path to the client server TLS cert file.
    #[arg(long, env = "ETCD_CERT_FILE", default_value = "")]
    pub cert_file: String,

    /// Path to the client server TLS key file.
    #[arg(long, env = "ETCD_KEY_FILE", default_value = "")]
    pub key_file: String,

    /// Path to the client server TLS trusted CA cert file.
    #[arg(long, env = "ETCD_TRUSTED_CA_FILE", default_value = "")]
    pub trusted_ca_file: String,

    /// Enable client cert authentication (with auth on, a gRPC client's certificate CN is
    /// its user name).
    #[arg(
        long,
        env = "ETCD_CLIENT_CERT_AUTH",
        default_value = "false",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true",
        value_parser = parse_go_bool,
        action = clap::ArgAction::Set
    )]
    pub client_cert_auth: bool,

    /// Path to the peer server TLS cert file.
    #[arg(long, env = "ETCD_PEER_CERT_FILE", default_value = "")]
    pub peer_cert_file: String,

    /// Path to the peer server TLS key file.
    #[arg(long, env = "ETCD_PEER_KEY_FILE", default_value = "")]
    pub peer_key_file: String,

    /// Path to the peer server TLS trusted CA file.
    #[arg(long, env = "ETCD_PEER_TRUSTED_CA_FILE", default_value = "")]
    pub peer_trusted_ca_file: String,

    /// Enable peer client cert authentication.
    #[arg(
        long,
        env = "ETCD_PEER_CLIENT_CERT_AUTH",
        default_value = "false",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true",
        value_parser = parse_go_bool,
        action = clap::ArgAction::Set
    )]
    pub peer_client_cert_auth: bool,

    /// Path to an explicit peer client TLS cert file, otherwise peer cert file will be used
    /// when client auth is required.
    #[arg(long, env = "ETCD_PEER_CLIENT_CERT_FILE", default_value = "")]
    pub peer_client_cert_file: String,

    /// Path to an explicit peer client TLS key file, otherwise peer key file will be used
    /// when client auth is required.
    #[arg(long, env = "ETCD_PEER_CLIENT_KEY_FILE", default_value = "")]
    pub peer_client_key_file: String,

    /// Allowed CN for inter peer authentication.
    #[arg(long, env = "ETCD_PEER_CERT_ALLOWED_CN", default_value = "")]
    pub peer_cert_allowed_cn: String,

    /// Minimum TLS version supported by pgraftd (TLS1.2 or TLS1.3).
    #[arg(long, env = "ETCD_TLS_MIN_VERSION", default_value = "TLS1.2")]
    pub tls_min_version: String,

    /// Maximum TLS version supported by pgraftd (empty: TLS1.3).
    #[arg(long, env = "ETCD_TLS_MAX_VERSION", default_value = "")]
    pub tls_max_version: String,

    // --- pgraft's own flags (not etcd's) ---
    /// Token that authorizes writes through the admin API (/admin/v1) while etcd auth is off,
    /// sent as "Authorization: Bearer <token>". Unset: the admin API refuses every write until
    /// etcd auth is enabled (then the etcd token of a user with the needed permission).
    #[arg(long, env = "PGRAFT_ADMIN_TOKEN", hide_env_values = true, value_parser = parse_admin_token)]
    pub admin_token: Option<AdminToken>,
}

/// `--admin-token`: a secret, never printed (`Debug` shows it redacted), compared in constant
/// time.
#[derive(Clone, PartialEq, Eq)]
pub struct AdminToken(String);

impl AdminToken {
    /// Whether `given` is this token (by SHA-256 digests, compared without an early exit).
    pub fn matches(&self, given: &str) -> bool {
        use sha2::{Digest, Sha256};
        let (a, b) = (
            Sha256::digest(self.0.as_bytes()),
            Sha256::digest(given.as_bytes()),
        );
        a.iter()
            .zip(b.iter())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
    }
}

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(<redacted>)")
    }
}

/// An admin token must be something to guess: at least 8 characters, no whitespace (it
/// travels in an HTTP header).
fn parse_admin_token(s: &str) -> Result<AdminToken, String> {
    if s.chars().count() < 8 {
        return Err("the admin token must be at least 8 characters".into());
    }
    if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("the admin token must not contain whitespace".into());
    }
    Ok(AdminToken(s.to_string()))
}

/// `--auth-token`: etcd's `simple` or `jwt,<options>` (the key files are read at start).
fn parse_auth_token(s: &str) -> Result<String, String> {
    match s.split(',').next().unwrap_or_default() {
        "simple" | "jwt" => Ok(s.to_string()),
        other => Err(format!(
            "unknown token type {other:?} (\"simple\" or \"jwt\")"
        )),
    }
}

/// `--auto-compaction-mode` and `--auto-compaction-retention`, read as etcd reads them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AutoCompaction {
    /// Keep this much time of history.
    Periodic(Duration),
    /// Keep this many revisions.
    Revision(i64),
}

/// etcd's `DefaultQuotaBytes`: the backend quota when `--quota-backend-bytes` is 0.
pub const DEFAULT_QUOTA_BYTES: u64 = 2 * 1024 * 1024 * 1024;

impl Default for Config {
    fn default() -> Self {
        Config::parse_from(["pgraftd"])
    }
}

/// etcd's log levels (zap's names).
const LOG_LEVELS: &[&str] = &["debug", "info", "warn", "error", "dpanic", "panic", "fatal"];

/// A flag value that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

/// One member of `--initial-cluster`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitialMember {
    pub name: String,
    pub peer_urls: Vec<String>,
}

impl Config {
    pub fn data_dir(&self) -> PathBuf {
        self.data_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(format!("{}.etcd", self.name)))
    }

    pub fn heartbeat(&self) -> Duration {
        Duration::from_millis(self.heartbeat_interval)
    }

    pub fn election(&self) -> Duration {
        Duration::from_millis(self.election_timeout)
    }

    /// etcd's minimum lease TTL: ceil(1.5 x election timeout) seconds.
    pub fn min_lease_ttl(&self) -> i64 {
        (3 * self.election_timeout).div_ceil(2000) as i64
    }

    /// How long a proposal may wait (etcd's `ReqTimeout`: 5 s + 2 x election timeout).
    /// The backend quota in bytes (`None`: no quota), as etcd's `NewBackendQuota` reads
    /// `--quota-backend-bytes`.
    pub fn quota_bytes(&self) -> Option<u64> {
        match self.quota_backend_bytes {
            0 => Some(DEFAULT_QUOTA_BYTES),
            q if q < 0 => None,
            q => Some(q as u64),
        }
    }

    pub fn request_timeout(&self) -> Duration {
        Duration::from_secs(5) + 2 * self.election()
    }

    pub fn advertise_client_urls(&self) -> Vec<String> {
        split_urls(&self.advertise_client_urls)
    }

    pub fn advertise_peer_urls(&self) -> Vec<String> {
        split_urls(&self.initial_advertise_peer_urls)
    }

    /// Members of `--initial-cluster`, grouped by name (a name may list several URLs).
    pub fn initial_members(&self) -> Result<Vec<InitialMember>, ConfigError> {
        let spec = match &self.initial_cluster {
            Some(s) => s.clone(),
            None => format!("{}={}", self.name, self.initial_advertise_peer_urls),
        };
        let mut members: Vec<InitialMember> = Vec::new();
        for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, url) = part.split_once('=').ok_or_else(|| {
                ConfigError(format!("--initial-cluster: {part:?} is not name=url"))
            })?;
            parse_url(url)?;
            match members.iter_mut().find(|m| m.name == name) {
                Some(m) => m.peer_urls.push(url.to_string()),
                None => members.push(InitialMember {
                    name: name.to_string(),
                    peer_urls: vec![url.to_string()],
                }),
            }
        }
        if !members.iter().any(|m| m.name == self.name) {
            return Err(ConfigError(format!(
                "couldn't find local name {:?} in the initial cluster configuration",
                self.name
            )));
        }
        Ok(members)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.initial_cluster_state != "new" && self.initial_cluster_state != "existing" {
            return Err(ConfigError(format!(
                "--initial-cluster-state: {:?} is not \"new\" or \"existing\"",
                self.initial_cluster_state
            )));
        }
        if self.heartbeat_interval == 0 || self.election_timeout < 5 * self.heartbeat_interval {
            return Err(ConfigError(
                "--election-timeout must be at least 5 times --heartbeat-interval".into(),
            ));
        }
        if self.max_txn_ops == 0 {
            return Err(ConfigError("--max-txn-ops must be positive".into()));
        }
        if self.logger != "zap" && self.logger != "capnslog" {
            return Err(ConfigError(format!(
                "unknown logger option {:?}",
                self.logger
            )));
        }
        if !LOG_LEVELS.contains(&self.log_level.as_str()) {
            return Err(ConfigError(format!("unknown level {:?}", self.log_level)));
        }
        let outputs = self.log_outputs();
        if outputs.is_empty() {
            return Err(ConfigError("--log-outputs is empty".into()));
        }
        if self.logger == "capnslog" && outputs.len() > 1 {
            return Err(ConfigError(format!(
                "--logger=capnslog supports only 1 value in '--log-outputs', got {outputs:?}"
            )));
        }
        self.auto_compaction()?;
        self.compat.validate()?;
        self.metrics_listen_addrs()?;
        self.initial_members()?;
        self.client_listen_addrs()?;
        self.peer_listen_addrs()?;
        for u in self.advertise_peer_urls() {
            parse_url(&u)?;
        }
        self.validate_tls()?;
        Ok(())
    }

    /// `--log-outputs`, split.
    pub fn log_outputs(&self) -> Vec<String> {
        split_urls(&self.log_outputs)
    }

    /// Auto-compaction as configured; `None` when off (retention 0). etcd's
    /// `parseCompactionRetention`: a bare number is hours (periodic) or revisions (revision),
    /// anything else a Go duration.
    pub fn auto_compaction(&self) -> Result<Option<AutoCompaction>, ConfigError> {
        let mode = self.auto_compaction_mode.as_str();
        if mode != "periodic" && mode != "revision" {
            return Err(ConfigError(format!(
                "unknown auto-compaction-mode {mode:?}"
            )));
        }
        let retention = self.auto_compaction_retention.trim();
        let parsed = match retention.parse::<i64>() {
            Ok(n) if n >= 0 => {
                if n == 0 {
                    return Ok(None);
                }
                if mode == "revision" {
                    AutoCompaction::Revision(n)
                } else {
                    let hours = u64::try_from(n).ok().and_then(|h| h.checked_mul(3600));
                    match hours {
                        Some(s) => AutoCompaction::Periodic(Duration::from_secs(s)),
                        None => {
                            return Err(ConfigError(format!(
                                "error parsing CompactionRetention: {retention:?} hours is out of range"
                            )))
                        }
                    }
                }
            }
            _ => {
                let d = parse_duration(retention)
                    .map_err(|e| ConfigError(format!("error parsing CompactionRetention: {e}")))?;
                if d.is_zero() {
                    return Ok(None);
                }
                if mode == "revision" {
                    // etcd takes the duration's nanoseconds as the revision count.
                    AutoCompaction::Revision(i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
                } else {
                    AutoCompaction::Periodic(d)
                }
            }
        };
        Ok(Some(parsed))
    }

    /// Addresses of `--listen-metrics-urls`.
    pub fn metrics_listen_addrs(&self) -> Result<Vec<SocketAddr>, ConfigError> {
        split_urls(&self.listen_metrics_urls)
            .iter()
            .map(|u| parse_url(u))
            .collect()
    }

    /// Addresses of `--listen-peer-urls`, each with whether it is `https://`.
    pub fn peer_listen_addrs(&self) -> Result<Vec<(SocketAddr, bool)>, ConfigError> {
        listen_addrs(&self.listen_peer_urls)
    }

    /// What `--listen-client-urls` asks to listen on: TCP addresses (`http://`, `https://`)
    /// and Unix sockets (`unix://<path>`, as etcd: the URL's host and path make the path).
    pub fn client_listen_addrs(&self) -> Result<Vec<Listen>, ConfigError> {
        split_urls(&self.listen_client_urls)
            .iter()
            .map(|u| match u.strip_prefix("unix://") {
                Some("") => Err(ConfigError(format!("{u:?}: missing socket path"))),
                Some(path) => Ok(Listen::Unix(PathBuf::from(path))),
                None => Ok(Listen::Tcp {
                    addr: parse_url(u)?,
                    tls: u.starts_with("https://"),
                }),
            })
            .collect()
    }

    fn versions(&self) -> Result<Vec<&'static rustls::SupportedProtocolVersion>, ConfigError> {
        crate::tls::versions(&self.tls_min_version, &self.tls_max_version).map_err(ConfigError)
    }

    /// The client port's TLS files: `None` without `--cert-file`/`--key-file`.
    pub fn client_tls(&self) -> Result<Option<TlsFiles>, ConfigError> {
        let trusted_ca = non_empty(&self.trusted_ca_file);
        if self.client_cert_auth && trusted_ca.is_none() {
            return Err(ConfigError(
                "--client-cert-auth needs --trusted-ca-file (the CA client certificates must chain to)".into(),
            ));
        }
        let (Some(cert), Some(key)) = (non_empty(&self.cert_file), non_empty(&self.key_file))
        else {
            if !self.cert_file.is_empty() || !self.key_file.is_empty() {
                return Err(ConfigError("--cert-file and --key-file go together".into()));
            }
            return Ok(None);
        };
        Ok(Some(TlsFiles {
            cert,
            key,
            trusted_ca,
            client_cert_auth: self.client_cert_auth,
            client_cert: None,
            versions: self.versions()?,
        }))
    }

    /// The peer port's TLS files: `None` without `--peer-cert-file`/`--peer-key-file`.
    pub fn peer_tls(&self) -> Result<Option<TlsFiles>, ConfigError> {
        let trusted_ca = non_empty(&self.peer_trusted_ca_file);
        if self.peer_client_cert_auth && trusted_ca.is_none() {
            return Err(ConfigError(
                "--peer-client-cert-auth needs --peer-trusted-ca-file (the CA peer certificates must chain to)".into(),
            ));
        }
        let client_cert = match (
            non_empty(&self.peer_client_cert_file),
            non_empty(&self.peer_client_key_file),
        ) {
            (Some(c), Some(k)) => Some((c, k)),
            (None, None) => None,
            _ => {
                return Err(ConfigError(
                    "--peer-client-cert-file and --peer-client-key-file go together".into(),
                ))
            }
        };
        let (Some(cert), Some(key)) = (
            non_empty(&self.peer_cert_file),
            non_empty(&self.peer_key_file),
        ) else {
            if !self.peer_cert_file.is_empty() || !self.peer_key_file.is_empty() {
                return Err(ConfigError(
                    "--peer-cert-file and --peer-key-file go together".into(),
                ));
            }
            return Ok(None);
        };
        Ok(Some(TlsFiles {
            cert,
            key,
            trusted_ca,
            client_cert_auth: self.peer_client_cert_auth,
            client_cert,
            versions: self.versions()?,
        }))
    }

    /// `https://` URLs need the certificate and key of their side (etcd's check); TLS files
    /// that load.
    fn validate_tls(&self) -> Result<(), ConfigError> {
        let client = self.client_tls()?;
        if client.is_none() {
            if let Some(u) = split_urls(&self.listen_client_urls)
                .into_iter()
                .find(|u| u.starts_with("https://"))
            {
                return Err(ConfigError(format!(
                    "TLS key/cert (--cert-file, --key-file) must be provided for client url {u} with HTTPS scheme"
                )));
            }
        }
        let peer = self.peer_tls()?;
        if peer.is_none() {
            let https = split_urls(&self.listen_peer_urls)
                .into_iter()
                .chain(self.advertise_peer_urls())
                .find(|u| u.starts_with("https://"));
            if let Some(u) = https {
                return Err(ConfigError(format!(
                    "TLS key/cert (--peer-cert-file, --peer-key-file) must be provided for peer url {u} with HTTPS scheme"
                )));
            }
        }
        if let Some(u) = split_urls(&self.listen_metrics_urls)
            .into_iter()
            .find(|u| u.starts_with("https://"))
        {
            return Err(ConfigError(format!(
                "{u}: pgraftd serves metrics over http:// only"
            )));
        }
        Ok(())
    }
}

/// One client listener's place.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Listen {
    Tcp {
        addr: SocketAddr,
        tls: bool,
    },
    /// A Unix socket: reachable only by who may open its path (pgraft's extension serves its
    /// backends this way, so that no other local process reaches the member).
    Unix(PathBuf),
}

fn non_empty(s: &str) -> Option<PathBuf> {
    (!s.is_empty()).then(|| PathBuf::from(s))
}

fn listen_addrs(urls: &str) -> Result<Vec<(SocketAddr, bool)>, ConfigError> {
    split_urls(urls)
        .iter()
        .map(|u| Ok((parse_url(u)?, u.starts_with("https://"))))
        .collect()
}

fn split_urls(s: &str) -> Vec<String> {
    s.split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(String::from)
        .collect()
}

/// `http://host:port` to a socket address (`localhost` is 127.0.0.1).
pub fn parse_url(u: &str) -> Result<SocketAddr, ConfigError> {
    let parsed = url::Url::parse(u).map_err(|e| ConfigError(format!("invalid URL {u:?}: {e}")))?;
    match parsed.scheme() {
        "http" | "https" => {}
        s => return Err(ConfigError(format!("{u:?}: unsupported scheme {s:?}"))),
    }
    let host = parsed
        .host_str()
        .ok_or_else(|| ConfigError(format!("{u:?}: missing host")))?;
    let host = if host == "localhost" {
        "127.0.0.1"
    } else {
        host
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port = parsed
        .port()
        .ok_or_else(|| ConfigError(format!("{u:?}: missing port")))?;
    (host, port)
        .to_socket_addrs()
        .map_err(|e| ConfigError(format!("{u:?}: {e}")))?
        .next()
        .ok_or_else(|| ConfigError(format!("{u:?}: no address")))
}

/// etcd-style durations: "10m", "500ms", "1h30m", "2s".
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let mut total = Duration::ZERO;
    let mut rest = s.trim();
    if rest.is_empty() {
        return Err("empty duration".into());
    }
    // Go's `time.ParseDuration` takes a bare "0" (etcd's way to turn an interval off).
    if rest == "0" {
        return Ok(Duration::ZERO);
    }
    while !rest.is_empty() {
        let n_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| format!("missing unit in duration {s:?}"))?;
        let n: f64 = rest[..n_end]
            .parse()
            .map_err(|_| format!("invalid duration {s:?}"))?;
        rest = &rest[n_end..];
        let u_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit = match &rest[..u_end] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            u => return Err(format!("unknown unit {u:?} in duration {s:?}")),
        };
        // Checked: a flag value must not panic the process (`from_secs_f64` does on overflow).
        total = Duration::try_from_secs_f64(n * unit)
            .ok()
            .and_then(|d| total.checked_add(d))
            .ok_or_else(|| format!("duration {s:?} is out of range"))?;
        rest = &rest[u_end..];
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strict_reconfig_check_is_a_go_style_bool_flag() {
        let parse = |args: &[&str]| {
            Config::try_parse_from(std::iter::once("pgraftd").chain(args.iter().copied()))
                .map(|c| c.strict_reconfig_check)
        };
        assert!(parse(&[]).unwrap());
        assert!(parse(&["--strict-reconfig-check"]).unwrap());
        assert!(!parse(&["--strict-reconfig-check=false"]).unwrap());
        assert!(parse(&["--strict-reconfig-check=true"]).unwrap());
        assert!(parse(&["--strict-reconfig-check=maybe"]).is_err());
    }

    #[test]
    fn defaults_match_etcd() {
        let c = Config::default();
        assert_eq!(c.name, "default");
        assert_eq!(c.data_dir(), PathBuf::from("default.etcd"));
        assert_eq!(c.max_request_bytes, 1572864);
        assert_eq!(c.max_txn_ops, 128);
        assert_eq!(c.min_lease_ttl(), 2);
        assert_eq!(
            c.client_listen_addrs().unwrap(),
            vec![Listen::Tcp {
                addr: "127.0.0.1:2379".parse().unwrap(),
                tls: false
            }]
        );
        assert_eq!(
            c.initial_members().unwrap(),
            vec![InitialMember {
                name: "default".into(),
                peer_urls: vec!["http://localhost:2380".into()]
            }]
        );
        c.validate().unwrap();
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10m").unwrap(), Duration::from_secs(600));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert!(parse_duration("10").is_err());
        assert_eq!(parse_duration("0").unwrap(), Duration::ZERO);
        assert_eq!(parse_duration("0s").unwrap(), Duration::ZERO);
        assert!(parse_duration("99999999999999999999999h").is_err());
    }

    #[test]
    fn auto_compaction_retention_is_read_as_etcd_reads_it() {
        let ac = |mode: &str, ret: &str| {
            Config::parse_from([
                "pgraftd",
                &format!("--auto-compaction-mode={mode}"),
                &format!("--auto-compaction-retention={ret}"),
            ])
            .auto_compaction()
        };
        assert_eq!(ac("periodic", "0").unwrap(), None);
        assert_eq!(
            ac("periodic", "1").unwrap(),
            Some(AutoCompaction::Periodic(Duration::from_secs(3600)))
        );
        assert_eq!(
            ac("periodic", "30m").unwrap(),
            Some(AutoCompaction::Periodic(Duration::from_secs(1800)))
        );
        assert_eq!(
            ac("periodic", "2s").unwrap(),
            Some(AutoCompaction::Periodic(Duration::from_secs(2)))
        );
        assert_eq!(
            ac("revision", "1000").unwrap(),
            Some(AutoCompaction::Revision(1000))
        );
        assert!(ac("revision", "abc")
            .unwrap_err()
            .0
            .starts_with("error parsing CompactionRetention"));
        assert_eq!(
            ac("hourly", "1").unwrap_err().0,
            "unknown auto-compaction-mode \"hourly\""
        );
    }

    #[test]
    fn logging_flags_are_checked() {
        let v = |args: &[&str]| {
            Config::parse_from(std::iter::once("pgraftd").chain(args.iter().copied())).validate()
        };
        v(&["--logger=capnslog"]).unwrap();
        v(&["--log-outputs=stderr,stdout,/tmp/x.log", "--log-level=warn"]).unwrap();
        assert_eq!(
            v(&["--logger=foo"]).unwrap_err().0,
            "unknown logger option \"foo\""
        );
        assert_eq!(
            v(&["--log-level=bogus"]).unwrap_err().0,
            "unknown level \"bogus\""
        );
        assert!(v(&["--logger=capnslog", "--log-outputs=stderr,stdout"]).is_err());
        assert!(v(&["--listen-metrics-urls=ftp://x:1"]).is_err());
        v(&["--force-new-cluster"]).unwrap();
        v(&["--force-new-cluster=false"]).unwrap();
        assert!(v(&["--discovery-srv=example.com"]).is_err());
    }

    #[test]
    fn bad_flags_are_rejected() {
        let c = Config::parse_from(["pgraftd", "--initial-cluster-state", "maybe"]);
        assert!(c.validate().is_err());
        let c = Config::parse_from(["pgraftd", "--initial-cluster", "other=http://127.0.0.1:1"]);
        assert!(c.validate().is_err());
        // https:// needs its side's certificate and key, as etcd says.
        let c = Config::parse_from(["pgraftd", "--listen-client-urls", "https://127.0.0.1:1"]);
        let e = c.validate().unwrap_err().0;
        assert!(e.contains("--cert-file, --key-file"), "{e}");
        let c = Config::parse_from(["pgraftd", "--listen-peer-urls", "https://127.0.0.1:1"]);
        let e = c.validate().unwrap_err().0;
        assert!(e.contains("--peer-cert-file"), "{e}");
        let c = Config::parse_from(["pgraftd", "--cert-file", "/x.pem"]);
        assert!(c.validate().is_err());
        let c = Config::parse_from([
            "pgraftd",
            "--listen-client-urls",
            "unix:///run/pg.sock,unix://rel.sock,http://127.0.0.1:1",
        ]);
        assert_eq!(
            c.client_listen_addrs().unwrap()[..2],
            [
                Listen::Unix("/run/pg.sock".into()),
                Listen::Unix("rel.sock".into())
            ]
        );
        let c = Config::parse_from(["pgraftd", "--listen-client-urls", "unix://"]);
        assert!(c.validate().is_err());
        let c = Config::parse_from(["pgraftd", "--client-cert-auth"]);
        assert!(c.validate().unwrap_err().0.contains("--trusted-ca-file"));
        let c = Config::parse_from(["pgraftd", "--tls-min-version", "TLS1.1"]);
        let c = c.client_tls().map(|_| ()).and(c.peer_tls().map(|_| ()));
        assert!(c.is_ok(), "versions are read only with TLS files");
    }
}
