//! The `pgraft.*` settings (GUCs) and what they mean together: member mode (this PostgreSQL
//! server hosts a pgraft member), client mode (the SQL functions use an external cluster), or
//! neither. Read only on a PostgreSQL thread (pgrx forbids GUC access from any other).

use pgrx::guc::{GucContext, GucFlags, GucRegistry, GucSetting};
use std::ffi::CString;

pub static NAME: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);
pub static LISTEN_ADDRESS: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);
pub static INITIAL_CLUSTER: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);
pub static INITIAL_CLUSTER_STATE: GucSetting<Option<CString>> =
    GucSetting::<Option<CString>>::new(Some(c"new"));
pub static CLUSTER_TOKEN: GucSetting<Option<CString>> =
    GucSetting::<Option<CString>>::new(Some(c"pgraft"));
pub static DATA_DIR: GucSetting<Option<CString>> =
    GucSetting::<Option<CString>>::new(Some(c"pgraft"));
pub static ELECTION_TIMEOUT: GucSetting<i32> = GucSetting::<i32>::new(1000);
pub static HEARTBEAT_INTERVAL: GucSetting<i32> = GucSetting::<i32>::new(100);
pub static SNAPSHOT_COUNT: GucSetting<i32> = GucSetting::<i32>::new(100_000);
pub static CLIENT_ADDRESS: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);
pub static ENDPOINTS: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);
pub static REGISTRATION_TTL: GucSetting<i32> = GucSetting::<i32>::new(10);
pub static ADVERTISE_HOST: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);
pub static REQUEST_TIMEOUT: GucSetting<i32> = GucSetting::<i32>::new(5000);
pub static USERNAME: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);
pub static PASSWORD_FILE: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);
pub static CA_FILE: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);
pub static CERT_FILE: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);
pub static KEY_FILE: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);

/// The Unix socket, relative to the data directory (every PostgreSQL process runs there), on
/// which the member hosted here (member mode) serves this server's backends: only the server's
/// OS user can open it, so no other local process reaches the member around the SQL roles.
pub const MEMBER_SOCKET: &str = "pgraft-client.sock";

/// Where registration keys live (client mode): `<prefix><name>`.
pub const REGISTRATION_PREFIX: &str = "pgraft/postgres/";

/// Defines the settings. Loaded through shared_preload_libraries they take effect at server
/// start (`postmaster`); loaded later by a backend (client mode without the registration
/// worker) PostgreSQL no longer accepts such settings, so they are reloadable (`sighup`).
pub fn register(preloading: bool) {
    let ctx = || {
        if preloading {
            GucContext::Postmaster
        } else {
            GucContext::Sighup
        }
    };
    GucRegistry::define_string_guc(
        c"pgraft.name",
        c"This member's name (member mode; must appear in pgraft.initial_cluster). In client mode, the name this server registers under.",
        c"",
        &NAME,
        ctx(),
        GucFlags::default(),
    );
    GucRegistry::define_string_guc(
        c"pgraft.listen_address",
        c"host:port to listen on for Raft peer traffic (member mode).",
        c"Defaults to this member's address in pgraft.initial_cluster.",
        &LISTEN_ADDRESS,
        ctx(),
        GucFlags::default(),
    );
    GucRegistry::define_string_guc(
        c"pgraft.initial_cluster",
        c"The cluster's members as name=host:port,... (member mode; identical on every member).",
        c"Setting it turns member mode on: a background worker hosts a pgraft member.",
        &INITIAL_CLUSTER,
        ctx(),
        GucFlags::default(),
    );
    GucRegistry::define_string_guc(
        c"pgraft.initial_cluster_state",
        c"'new' to bootstrap with pgraft.initial_cluster, 'existing' to join a running cluster.",
        c"",
        &INITIAL_CLUSTER_STATE,
        ctx(),
        GucFlags::default(),
    );
    GucRegistry::define_string_guc(
        c"pgraft.cluster_token",
        c"Initial cluster token: keeps the member IDs of different clusters apart.",
        c"",
        &CLUSTER_TOKEN,
        ctx(),
        GucFlags::default(),
    );
    GucRegistry::define_string_guc(
        c"pgraft.data_dir",
        c"Directory of this member's raft log and state (relative paths are under the PostgreSQL data directory).",
        c"",
        &DATA_DIR,
        ctx(),
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"pgraft.election_timeout",
        c"Raft election timeout.",
        c"",
        &ELECTION_TIMEOUT,
        10,
        600_000,
        ctx(),
        GucFlags::UNIT_MS,
    );
    GucRegistry::define_int_guc(
        c"pgraft.heartbeat_interval",
        c"Raft heartbeat interval.",
        c"",
        &HEARTBEAT_INTERVAL,
        1,
        60_000,
        ctx(),
        GucFlags::UNIT_MS,
    );
    GucRegistry::define_int_guc(
        c"pgraft.snapshot_count",
        c"Applied entries after which the raft log is compacted.",
        c"",
        &SNAPSHOT_COUNT,
        1,
        i32::MAX,
        ctx(),
        GucFlags::default(),
    );
    GucRegistry::define_string_guc(
        c"pgraft.client_address",
        c"host:port on which the member also serves the etcd v3 API (member mode; optional).",
        c"",
        &CLIENT_ADDRESS,
        ctx(),
        GucFlags::default(),
    );
    GucRegistry::define_string_guc(
        c"pgraft.endpoints",
        c"Client URLs of an external pgraft cluster, comma-separated (client mode).",
        c"Setting it turns client mode on; it excludes pgraft.initial_cluster.",
        &ENDPOINTS,
        ctx(),
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"pgraft.registration_ttl",
        c"TTL of this server's registration lease (client mode).",
        c"",
        &REGISTRATION_TTL,
        2,
        3600,
        ctx(),
        GucFlags::UNIT_S,
    );
    GucRegistry::define_string_guc(
        c"pgraft.advertise_host",
        c"Host name this server registers under (client mode; default: the machine's host name).",
        c"",
        &ADVERTISE_HOST,
        ctx(),
        GucFlags::default(),
    );
    GucRegistry::define_string_guc(
        c"pgraft.username",
        c"etcd user the pgraft_* functions and the workers act as, once the cluster has auth on.",
        c"Its password is read from pgraft.password_file.",
        &USERNAME,
        ctx(),
        GucFlags::default(),
    );
    GucRegistry::define_string_guc(
        c"pgraft.password_file",
        c"File holding the password of pgraft.username (its first line).",
        c"",
        &PASSWORD_FILE,
        ctx(),
        GucFlags::SUPERUSER_ONLY,
    );
    GucRegistry::define_string_guc(
        c"pgraft.ca_file",
        c"CA bundle (PEM) that https:// cluster URLs must present certificates from.",
        c"Member mode: peers and clients of pgraft.client_address must present certificates from it too. Default: the system's CAs.",
        &CA_FILE,
        ctx(),
        GucFlags::default(),
    );
    GucRegistry::define_string_guc(
        c"pgraft.cert_file",
        c"Certificate (PEM) presented on TLS connections: to the cluster (client mode), on the peer and client ports (member mode).",
        c"",
        &CERT_FILE,
        ctx(),
        GucFlags::default(),
    );
    GucRegistry::define_string_guc(
        c"pgraft.key_file",
        c"Private key (PEM) of pgraft.cert_file.",
        c"",
        &KEY_FILE,
        ctx(),
        GucFlags::SUPERUSER_ONLY,
    );
    GucRegistry::define_int_guc(
        c"pgraft.request_timeout",
        c"How long a pgraft_* function waits for the cluster before it fails.",
        c"",
        &REQUEST_TIMEOUT,
        10,
        3_600_000,
        GucContext::Userset,
        GucFlags::UNIT_MS,
    );
}

/// `pgraft.advertise_host`: the host this server registers under.
pub fn advertise_host() -> Option<String> {
    text(&ADVERTISE_HOST)
}

fn text(s: &GucSetting<Option<CString>>) -> Option<String> {
    s.get()
        .map(|c| c.to_string_lossy().trim().to_string())
        .filter(|s| !s.is_empty())
}

/// What the settings ask this server to be.
#[derive(Debug, Clone)]
pub enum Mode {
    Member(MemberSettings),
    Client(ClientSettings),
    /// Neither: the SQL functions explain what to set.
    Unconfigured,
}

#[derive(Debug, Clone)]
pub struct MemberSettings {
    pub name: String,
    /// `name -> http://host:port`, in the order given.
    pub initial_cluster: Vec<(String, String)>,
    pub listen_peer_url: String,
    pub initial_cluster_state: String,
    pub token: String,
    pub data_dir: String,
    pub election_timeout: u64,
    pub heartbeat_interval: u64,
    pub snapshot_count: u64,
    pub client_url: Option<String>,
}

#[derive(Debug, Clone)]
pub struct ClientSettings {
    pub endpoints: Vec<String>,
    pub name: Option<String>,
    pub registration_ttl: i64,
    pub advertise_host: Option<String>,
}

/// `host:port` (or an http:// or https:// URL) as a URL, checked; `http://` when no scheme
/// is given.
pub fn http_url(what: &str, s: &str) -> Result<String, String> {
    let s = s.trim();
    let url = if s.contains("://") {
        s.to_string()
    } else {
        format!("http://{s}")
    };
    let parsed =
        url::Url::parse(&url).map_err(|e| format!("{what}: '{s}' is not host:port ({e})"))?;
    let scheme = parsed.scheme();
    if scheme != "http" && scheme != "https" {
        return Err(format!(
            "{what}: '{s}': only http:// and https:// are supported"
        ));
    }
    if parsed.host_str().is_none_or(str::is_empty) || parsed.port().is_none() {
        return Err(format!("{what}: '{s}' must have a host and a port"));
    }
    Ok(format!(
        "{scheme}://{}:{}",
        parsed.host_str().unwrap_or_default(),
        parsed.port().unwrap_or_default()
    ))
}

/// The TLS files the settings name (`pgraft.ca_file`, `pgraft.cert_file`, `pgraft.key_file`).
#[derive(Debug, Clone, Default)]
pub struct Tls {
    pub ca_file: Option<String>,
    /// Certificate and key, set together.
    pub identity: Option<(String, String)>,
}

pub fn tls() -> Result<Tls, String> {
    let identity = match (text(&CERT_FILE), text(&KEY_FILE)) {
        (Some(c), Some(k)) => Some((c, k)),
        (None, None) => None,
        _ => return Err("pgraft.cert_file and pgraft.key_file are set together".into()),
    };
    Ok(Tls {
        ca_file: text(&CA_FILE),
        identity,
    })
}

/// `pgraft.username` and where its password is (`pgraft.password_file`). Read from the
/// settings on a PostgreSQL thread; the file itself is read at each login (so a changed
/// password needs no reload), from any thread.
#[derive(Debug, Clone)]
pub struct Credentials {
    pub user: String,
    pub password_file: String,
}

/// The credentials the settings name; `None` without a user name.
pub fn credentials() -> Result<Option<Credentials>, String> {
    let Some(user) = text(&USERNAME) else {
        return Ok(None);
    };
    let password_file =
        text(&PASSWORD_FILE).ok_or("pgraft.username is set but pgraft.password_file is not")?;
    Ok(Some(Credentials {
        user,
        password_file,
    }))
}

impl Credentials {
    /// The user name and the password (the file's first line).
    pub fn read(&self) -> Result<(String, String), String> {
        let content = std::fs::read_to_string(&self.password_file).map_err(|e| {
            format!(
                "pgraft.password_file: cannot read '{}': {e}",
                self.password_file
            )
        })?;
        let password = content.lines().next().unwrap_or_default().to_string();
        Ok((self.user.clone(), password))
    }
}

/// Reads and checks every setting; an error says which setting is wrong and why.
pub fn mode() -> Result<Mode, String> {
    let endpoints = text(&ENDPOINTS);
    let initial = text(&INITIAL_CLUSTER);
    match (initial, endpoints) {
        (Some(_), Some(_)) => Err(
            "pgraft.initial_cluster (member mode) and pgraft.endpoints (client mode) are both set; set one"
                .into(),
        ),
        (Some(ic), None) => member_settings(&ic).map(Mode::Member),
        (None, Some(eps)) => {
            let endpoints = eps
                .split(',')
                .filter(|e| !e.trim().is_empty())
                .map(|e| http_url("pgraft.endpoints", e))
                .collect::<Result<Vec<_>, _>>()?;
            if endpoints.is_empty() {
                return Err("pgraft.endpoints lists no endpoint".into());
            }
            Ok(Mode::Client(ClientSettings {
                endpoints,
                name: text(&NAME),
                registration_ttl: REGISTRATION_TTL.get() as i64,
                advertise_host: text(&ADVERTISE_HOST),
            }))
        }
        (None, None) => Ok(Mode::Unconfigured),
    }
}

fn member_settings(ic: &str) -> Result<MemberSettings, String> {
    let name = text(&NAME)
        .ok_or("pgraft.name must be set in member mode (pgraft.initial_cluster is set)")?;
    let mut initial_cluster = Vec::new();
    for entry in ic.split(',').filter(|e| !e.trim().is_empty()) {
        let (n, addr) = entry
            .split_once('=')
            .ok_or_else(|| format!("pgraft.initial_cluster: '{entry}' is not name=host:port"))?;
        let (n, url) = (
            n.trim().to_string(),
            http_url("pgraft.initial_cluster", addr)?,
        );
        if initial_cluster.iter().any(|(m, _)| *m == n) {
            return Err(format!("pgraft.initial_cluster names '{n}' twice"));
        }
        initial_cluster.push((n, url));
    }
    let own = initial_cluster
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, u)| u.clone())
        .ok_or_else(|| format!("pgraft.name '{name}' does not appear in pgraft.initial_cluster"))?;
    let listen_peer_url = match text(&LISTEN_ADDRESS) {
        Some(a) => http_url("pgraft.listen_address", &a)?,
        None => own,
    };
    let state = text(&INITIAL_CLUSTER_STATE).unwrap_or_else(|| "new".into());
    if state != "new" && state != "existing" {
        return Err(format!(
            "pgraft.initial_cluster_state must be 'new' or 'existing', not '{state}'"
        ));
    }
    let election_timeout = ELECTION_TIMEOUT.get() as u64;
    let heartbeat_interval = HEARTBEAT_INTERVAL.get() as u64;
    if election_timeout < 5 * heartbeat_interval {
        return Err(format!(
            "pgraft.election_timeout ({election_timeout} ms) must be at least 5 times pgraft.heartbeat_interval ({heartbeat_interval} ms)"
        ));
    }
    let client_url = text(&CLIENT_ADDRESS)
        .map(|a| http_url("pgraft.client_address", &a))
        .transpose()?;
    Ok(MemberSettings {
        name,
        initial_cluster,
        listen_peer_url,
        initial_cluster_state: state,
        token: text(&CLUSTER_TOKEN).unwrap_or_else(|| "pgraft".into()),
        data_dir: text(&DATA_DIR).unwrap_or_else(|| "pgraft".into()),
        election_timeout,
        heartbeat_interval,
        snapshot_count: SNAPSHOT_COUNT.get() as u64,
        client_url,
    })
}

impl MemberSettings {
    /// This member's advertised peer URL: its entry in the initial cluster.
    pub fn advertise_peer_url(&self) -> &str {
        self.initial_cluster
            .iter()
            .find(|(n, _)| *n == self.name)
            .map(|(_, u)| u.as_str())
            .unwrap_or_default()
    }

    /// The pgraftd configuration of this member: its backends reach it on
    /// [`MEMBER_SOCKET`]; TLS on https:// peer and client URLs from `tls`.
    pub fn server_config(&self, tls: &Tls) -> Result<pgraft_server::Config, String> {
        use clap::Parser;
        let internal = format!("unix://{MEMBER_SOCKET}");
        let mut listen = vec![internal.clone()];
        let mut advertise = internal;
        if let Some(c) = &self.client_url {
            listen.push(c.clone());
            advertise = advertised_client_url(c, self.advertise_peer_url());
        }
        let https_peers = self.listen_peer_url.starts_with("https://")
            || self
                .initial_cluster
                .iter()
                .any(|(_, u)| u.starts_with("https://"));
        let https_client = self
            .client_url
            .as_deref()
            .is_some_and(|u| u.starts_with("https://"));
        let mut tls_args = Vec::new();
        if https_peers || https_client {
            let (cert, key) = tls
                .identity
                .as_ref()
                .ok_or("https:// member URLs need pgraft.cert_file and pgraft.key_file")?;
            // The same files for each side that serves https: `--peer-*` flags, then the
            // client port's (the CA, when given, also requires the other end's certificate).
            for (on, flag) in [(https_peers, "--peer-"), (https_client, "--")] {
                if !on {
                    continue;
                }
                tls_args.push(format!("{flag}cert-file={cert}"));
                tls_args.push(format!("{flag}key-file={key}"));
                if let Some(ca) = &tls.ca_file {
                    tls_args.push(format!("{flag}trusted-ca-file={ca}"));
                    tls_args.push(format!("{flag}client-cert-auth=true"));
                }
            }
        }
        let ic = self
            .initial_cluster
            .iter()
            .map(|(n, u)| format!("{n}={u}"))
            .collect::<Vec<_>>()
            .join(",");
        let args: Vec<String> = vec![
            "pgraft".into(),
            format!("--name={}", self.name),
            format!("--data-dir={}", self.data_dir),
            format!("--listen-peer-urls={}", self.listen_peer_url),
            format!(
                "--initial-advertise-peer-urls={}",
                self.advertise_peer_url()
            ),
            format!("--initial-cluster={ic}"),
            format!("--initial-cluster-state={}", self.initial_cluster_state),
            format!("--initial-cluster-token={}", self.token),
            format!("--election-timeout={}", self.election_timeout),
            format!("--heartbeat-interval={}", self.heartbeat_interval),
            format!("--snapshot-count={}", self.snapshot_count),
            format!("--listen-client-urls={}", listen.join(",")),
            format!("--advertise-client-urls={advertise}"),
        ];
        let args = args.into_iter().chain(tls_args).collect::<Vec<_>>();
        let cfg = pgraft_server::Config::try_parse_from(args).map_err(|e| e.to_string())?;
        cfg.validate().map_err(|e| e.0)?;
        Ok(cfg)
    }
}

/// A client URL that listens on every address is advertised with the host of the peer URL.
fn advertised_client_url(client: &str, peer: &str) -> String {
    let (Ok(c), Ok(p)) = (url::Url::parse(client), url::Url::parse(peer)) else {
        return client.to_string();
    };
    match c.host_str() {
        Some("0.0.0.0") | Some("[::]") => format!(
            "{}://{}:{}",
            c.scheme(),
            p.host_str().unwrap_or("127.0.0.1"),
            c.port().unwrap_or_default()
        ),
        _ => client.to_string(),
    }
}
