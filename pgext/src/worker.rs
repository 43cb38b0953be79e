//! The background workers.
//!
//! - Member mode: `pgraft_member_main` hosts a whole pgraft member (the same
//!   [`pgraft_server::Node`] as `pgraftd`) on a tokio runtime it builds itself (never in
//!   `_PG_init`: the postmaster forks, and threads do not survive a fork). Its main thread
//!   only waits on its latch for SIGTERM; no runtime thread calls into PostgreSQL.
//! - Client mode: `pgraft_registration_main` keeps this PostgreSQL server registered in the
//!   external cluster under a lease-backed key (name, host, port, recovery state), renewing
//!   the lease, rewriting the key when the server is promoted, and revoking the lease on
//!   shutdown so the key disappears at once (or within the TTL if the server dies).

use crate::settings::{self, ClientSettings, Mode};
use etcd_proto::etcdserverpb::kv_client::KvClient;
use etcd_proto::etcdserverpb::lease_client::LeaseClient;
use etcd_proto::etcdserverpb::{
    LeaseGrantRequest, LeaseKeepAliveRequest, LeaseRevokeRequest, PutRequest,
};
use pgrx::bgworkers::{BackgroundWorker, SignalWakeFlags};
use pgrx::prelude::*;
use std::time::{Duration, Instant};

/// Logs to the server log through stderr (tracing; never PostgreSQL's elog from a runtime
/// thread).
fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("PGRAFT_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .try_init();
}

#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn pgraft_member_main(_arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    let m = match settings::mode() {
        Ok(Mode::Member(m)) => m,
        Ok(_) => return,
        Err(e) => error!("pgraft: {e}"),
    };
    let cfg = settings::tls()
        .and_then(|tls| m.server_config(&tls))
        .unwrap_or_else(|e| error!("pgraft: invalid member settings: {e}"));
    init_tracing();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("pgraft-rt")
        .enable_all()
        .build()
        .unwrap_or_else(|e| error!("pgraft: cannot start the runtime: {e}"));
    let node = match rt.block_on(pgraft_server::Node::start(cfg)) {
        Ok(n) => n,
        // The postmaster restarts the worker after a pause.
        Err(e) => error!("pgraft: member '{}' failed to start: {e}", m.name),
    };
    // Only the server's OS user (the data directory's owner) may talk to the member behind
    // the SQL roles' back: the socket is its alone, whatever the data directory's group mode.
    {
        use std::os::unix::fs::PermissionsExt;
        let owner_only = std::fs::Permissions::from_mode(0o600);
        if let Err(e) = std::fs::set_permissions(settings::MEMBER_SOCKET, owner_only) {
            error!("pgraft: cannot restrict {}: {e}", settings::MEMBER_SOCKET);
        }
    }
    crate::shmem::set_serving(true);
    log!(
        "pgraft: member '{}' (id {:x}) started; peer {}, client API {}",
        m.name,
        node.server.member_id(),
        m.listen_peer_url,
        m.client_url.clone().unwrap_or_else(|| format!(
            "this server only (Unix socket {})",
            settings::MEMBER_SOCKET
        )),
    );
    let removed = rt.spawn(node.removed());
    while BackgroundWorker::wait_latch(Some(Duration::from_millis(200))) {
        if removed.is_finished() {
            log!("pgraft: member '{}' was removed from the cluster", m.name);
            break;
        }
    }
    crate::shmem::set_serving(false);
    log!("pgraft: member '{}' stopping", m.name);
    rt.block_on(node.stop());
    rt.shutdown_timeout(Duration::from_secs(2));
    // Returning exits with 0, which tells the postmaster not to restart the worker: right on
    // shutdown, and for a removed member, which must stay stopped.
}

/// The registration key and value of this server.
struct Registration {
    key: String,
    name: String,
    host: String,
    port: i32,
}

impl Registration {
    fn new(c: &ClientSettings) -> Self {
        // SAFETY: PostgreSQL globals, read on the worker's main thread.
        let port = unsafe { pg_sys::PostPortNumber };
        let host = c.advertise_host.clone().unwrap_or_else(|| {
            hostname::get()
                .map(|h| h.to_string_lossy().into_owned())
                .unwrap_or_else(|_| "localhost".into())
        });
        let name = c.name.clone().unwrap_or_else(|| format!("{host}:{port}"));
        Registration {
            key: format!("{}{name}", settings::REGISTRATION_PREFIX),
            name,
            host,
            port,
        }
    }

    fn value(&self, in_recovery: bool) -> Vec<u8> {
        serde_json::json!({
            "name": self.name,
            "host": self.host,
            "port": self.port,
            "in_recovery": in_recovery,
            "pid": std::process::id(),
            "server_version": env!("CARGO_PKG_VERSION"),
        })
        .to_string()
        .into_bytes()
    }
}

/// One lease-backed registration at a time; remade when the lease is lost.
struct Registrar {
    endpoints: Vec<String>,
    ttl: i64,
    lease: i64,
    written_recovery: Option<bool>,
    channel: Option<crate::client::AuthChannel>,
}

type AnyResult<T> = std::result::Result<T, String>;

impl Registrar {
    /// A channel with `pgraft.username`'s token, made again after any failure (a new login
    /// then also replaces a token that expired).
    async fn channel(&mut self) -> AnyResult<crate::client::AuthChannel> {
        if let Some(c) = &self.channel {
            return Ok(c.clone());
        }
        let ch = crate::client::connect(&self.endpoints)
            .await
            .map_err(|f| f.message())?;
        let token = crate::client::authenticate(&ch)
            .await
            .map_err(|f| f.message())?;
        let ch = tonic::service::interceptor::InterceptedService::new(ch, token);
        self.channel = Some(ch.clone());
        Ok(ch)
    }

    /// Makes sure the key is there with the current recovery state, renewing the lease.
    async fn refresh(&mut self, reg: &Registration, in_recovery: bool) -> AnyResult<()> {
        let ch = self.channel().await?;
        let r = self.refresh_on(ch, reg, in_recovery).await;
        if r.is_err() {
            self.channel = None;
        }
        r
    }

    async fn refresh_on(
        &mut self,
        ch: crate::client::AuthChannel,
        reg: &Registration,
        in_recovery: bool,
    ) -> AnyResult<()> {
        let mut lease = LeaseClient::new(ch.clone());
        if self.lease != 0 {
            // A unary keepalive: one request on a stream, one answer.
            let req = LeaseKeepAliveRequest { id: self.lease };
            let mut answers = lease
                .lease_keep_alive(tokio_stream::once(req))
                .await
                .map_err(|e| e.message().to_string())?
                .into_inner();
            let alive = matches!(answers.message().await, Ok(Some(r)) if r.ttl > 0);
            if !alive {
                self.lease = 0;
                self.written_recovery = None;
            }
        }
        if self.lease == 0 {
            let g = lease
                .lease_grant(LeaseGrantRequest {
                    ttl: self.ttl,
                    id: 0,
                })
                .await
                .map_err(|e| e.message().to_string())?
                .into_inner();
            self.lease = g.id;
        }
        if self.written_recovery != Some(in_recovery) {
            KvClient::new(ch)
                .put(PutRequest {
                    key: reg.key.clone().into_bytes(),
                    value: reg.value(in_recovery),
                    lease: self.lease,
                    ..Default::default()
                })
                .await
                .map_err(|e| e.message().to_string())?;
            self.written_recovery = Some(in_recovery);
        }
        Ok(())
    }

    async fn revoke(&mut self) {
        if self.lease == 0 {
            return;
        }
        if let Ok(ch) = self.channel().await {
            let _ = LeaseClient::new(ch)
                .lease_revoke(LeaseRevokeRequest { id: self.lease })
                .await;
        }
    }
}

#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn pgraft_registration_main(_arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    let c = match settings::mode() {
        Ok(Mode::Client(c)) => c,
        Ok(_) => return,
        Err(e) => error!("pgraft: {e}"),
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| error!("pgraft: cannot start the runtime: {e}"));
    let reg = Registration::new(&c);
    let mut registrar = Registrar {
        endpoints: c.endpoints.clone(),
        ttl: c.registration_ttl,
        lease: 0,
        written_recovery: None,
        channel: None,
    };
    // Renew well within the TTL; retry sooner after a failure.
    let period = Duration::from_millis((c.registration_ttl as u64 * 1000 / 3).max(500));
    let mut next = Instant::now();
    let mut failing = false;
    log!(
        "pgraft: registering this server as '{}' at {}",
        reg.key,
        c.endpoints.join(",")
    );
    while BackgroundWorker::wait_latch(Some(Duration::from_millis(250))) {
        // SAFETY: a PostgreSQL function, called on the worker's main thread.
        let in_recovery = unsafe { pg_sys::RecoveryInProgress() };
        if Instant::now() < next && registrar.written_recovery == Some(in_recovery) {
            continue;
        }
        let r = rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(5), registrar.refresh(&reg, in_recovery))
                .await
                .unwrap_or_else(|_| Err("timed out".into()))
        });
        match r {
            Ok(()) => {
                if failing {
                    log!("pgraft: registration '{}' restored", reg.key);
                }
                failing = false;
                next = Instant::now() + period;
            }
            Err(e) => {
                registrar.channel = None;
                if !failing {
                    warning!("pgraft: cannot register '{}': {e}; retrying", reg.key);
                }
                failing = true;
                next = Instant::now() + Duration::from_secs(1);
            }
        }
    }
    rt.block_on(async {
        let _ = tokio::time::timeout(Duration::from_secs(2), registrar.revoke()).await;
    });
    log!("pgraft: registration '{}' withdrawn", reg.key);
}
