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

use crate::settings::{self, Mode};
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
    // Registered under pgraft/postgres/<name> as the server hosting this member.
    let reg = Registration::new(
        Some(m.name.clone()),
        settings::advertise_host(),
        Some(node.server.member_id()),
    );
    let access =
        crate::client::Access::from_settings().unwrap_or_else(|f| error!("{}", f.message()));
    let registrar = Registrar::new(
        reg,
        vec![format!("unix://{}", settings::MEMBER_SOCKET)],
        access,
        settings::REGISTRATION_TTL.get() as i64,
    );
    let recovery = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(in_recovery()));
    let (stop_registering, stop) = tokio::sync::watch::channel(false);
    let registering = rt.spawn(registrar.run(recovery.clone(), stop));
    while BackgroundWorker::wait_latch(Some(Duration::from_millis(200))) {
        if removed.is_finished() {
            log!("pgraft: member '{}' was removed from the cluster", m.name);
            break;
        }
        recovery.store(in_recovery(), std::sync::atomic::Ordering::Release);
    }
    let _ = stop_registering.send(true);
    if let Ok(mut registrar) = rt.block_on(registering) {
        registrar.withdraw(&rt);
    }
    crate::shmem::set_serving(false);
    log!("pgraft: member '{}' stopping", m.name);
    rt.block_on(node.stop());
    rt.shutdown_timeout(Duration::from_secs(2));
    // Returning exits with 0, which tells the postmaster not to restart the worker: right on
    // shutdown, and for a removed member, which must stay stopped.
}

/// The registration key and value of this server: in client mode, a server using the
/// cluster; in member mode, the server hosting member `member_id` (so that the dashboard and
/// etcdctl show which members live in which PostgreSQL server).
struct Registration {
    key: String,
    name: String,
    host: String,
    port: i32,
    /// The member hosted here (member mode).
    member_id: Option<u64>,
}

impl Registration {
    fn new(name: Option<String>, advertise_host: Option<String>, member_id: Option<u64>) -> Self {
        // SAFETY: PostgreSQL globals, read on the worker's main thread.
        let port = unsafe { pg_sys::PostPortNumber };
        let host = advertise_host.unwrap_or_else(|| {
            hostname::get()
                .map(|h| h.to_string_lossy().into_owned())
                .unwrap_or_else(|_| "localhost".into())
        });
        let name = name.unwrap_or_else(|| format!("{host}:{port}"));
        Registration {
            key: format!("{}{name}", settings::REGISTRATION_PREFIX),
            name,
            host,
            port,
            member_id,
        }
    }

    fn value(&self, in_recovery: bool) -> Vec<u8> {
        let mut v = serde_json::json!({
            "name": self.name,
            "host": self.host,
            "port": self.port,
            "in_recovery": in_recovery,
            "pid": std::process::id(),
            "server_version": env!("CARGO_PKG_VERSION"),
            "mode": if self.member_id.is_some() { "member" } else { "client" },
        });
        if let Some(id) = self.member_id {
            v["member_id"] = format!("{id:x}").into();
        }
        v.to_string().into_bytes()
    }
}

/// One lease-backed registration at a time; remade when the lease is lost.
struct Registrar {
    reg: Registration,
    endpoints: Vec<String>,
    /// TLS and credentials, read from the settings on the worker's main thread.
    access: crate::client::Access,
    ttl: i64,
    lease: i64,
    written_recovery: Option<bool>,
    channel: Option<crate::client::AuthChannel>,
    /// When to renew next (well within the TTL; sooner after a failure).
    next: Instant,
    failing: bool,
    /// Renewals run on the worker's main thread (client mode), not on a runtime thread.
    on_main_thread: bool,
}

type AnyResult<T> = std::result::Result<T, String>;

/// Whether this server is a standby (on a worker's main thread).
fn in_recovery() -> bool {
    // SAFETY: a PostgreSQL function, called on the worker's main thread.
    unsafe { pg_sys::RecoveryInProgress() }
}

impl Registrar {
    /// A channel with `pgraft.username`'s token, made again after any failure (a new login
    /// then also replaces a token that expired).
    async fn channel(&mut self) -> AnyResult<crate::client::AuthChannel> {
        if let Some(c) = &self.channel {
            return Ok(c.clone());
        }
        let ch = crate::client::connect(&self.endpoints, &self.access)
            .await
            .map_err(|f| f.message())?;
        let token = crate::client::authenticate(&ch, &self.access)
            .await
            .map_err(|f| f.message())?;
        let ch = tonic::service::interceptor::InterceptedService::new(ch, token);
        self.channel = Some(ch.clone());
        Ok(ch)
    }

    fn new(
        reg: Registration,
        endpoints: Vec<String>,
        access: crate::client::Access,
        ttl: i64,
    ) -> Self {
        log!(
            "pgraft: registering this server as '{}' at {}",
            reg.key,
            endpoints.join(",")
        );
        Registrar {
            reg,
            endpoints,
            access,
            ttl,
            lease: 0,
            written_recovery: None,
            channel: None,
            next: Instant::now(),
            failing: false,
            on_main_thread: true,
        }
    }

    /// Called on the client worker's main thread every latch wakeup: renews the registration
    /// when due or when the server's recovery state changed.
    fn tick(&mut self, rt: &tokio::runtime::Runtime) {
        rt.block_on(self.step(in_recovery()));
    }

    /// Logs to the server log: through PostgreSQL on the client worker's main thread, through
    /// tracing (stderr, which is the server log too) from the member worker's runtime, whose
    /// threads must never call into PostgreSQL.
    fn say(&self, warn: bool, m: &str) {
        match (self.on_main_thread, warn) {
            (true, true) => warning!("pgraft: {m}"),
            (true, false) => log!("pgraft: {m}"),
            (false, true) => tracing::warn!("pgraft: {m}"),
            (false, false) => tracing::info!("pgraft: {m}"),
        }
    }

    /// Renews the registration when due or when `in_recovery` changed (at most 5 s).
    async fn step(&mut self, in_recovery: bool) {
        if Instant::now() < self.next && self.written_recovery == Some(in_recovery) {
            return;
        }
        let r = tokio::time::timeout(Duration::from_secs(5), self.refresh(in_recovery))
            .await
            .unwrap_or_else(|_| Err("timed out".into()));
        match r {
            Ok(()) => {
                if self.failing {
                    self.say(false, &format!("registration '{}' restored", self.reg.key));
                }
                self.failing = false;
                let period = Duration::from_millis((self.ttl as u64 * 1000 / 3).max(500));
                self.next = Instant::now() + period;
            }
            Err(e) => {
                self.channel = None;
                if !self.failing {
                    let m = format!("cannot register '{}': {e}; retrying", self.reg.key);
                    self.say(true, &m);
                }
                self.failing = true;
                self.next = Instant::now() + Duration::from_secs(1);
            }
        }
    }

    /// For the member worker, whose main thread must stay free for its latch: renews on the
    /// runtime, with the recovery state the main thread publishes in `recovery`, until `stop`
    /// changes; gives the registrar back for its withdrawal.
    async fn run(
        mut self,
        recovery: std::sync::Arc<std::sync::atomic::AtomicBool>,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) -> Self {
        use std::sync::atomic::Ordering;
        self.on_main_thread = false;
        loop {
            tokio::select! {
                _ = self.step(recovery.load(Ordering::Acquire)) => {}
                _ = stop.changed() => return self,
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                _ = stop.changed() => return self,
            }
        }
    }

    /// Revokes the lease, so the key goes at once (bounded: the cluster may be gone).
    fn withdraw(&mut self, rt: &tokio::runtime::Runtime) {
        rt.block_on(async {
            let _ = tokio::time::timeout(Duration::from_secs(2), self.revoke()).await;
        });
        log!("pgraft: registration '{}' withdrawn", self.reg.key);
    }

    /// Makes sure the key is there with the current recovery state, renewing the lease.
    async fn refresh(&mut self, in_recovery: bool) -> AnyResult<()> {
        let ch = self.channel().await?;
        let r = self.refresh_on(ch, in_recovery).await;
        if r.is_err() {
            self.channel = None;
        }
        r
    }

    async fn refresh_on(
        &mut self,
        ch: crate::client::AuthChannel,
        in_recovery: bool,
    ) -> AnyResult<()> {
        let reg = &self.reg;
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
    let reg = Registration::new(c.name.clone(), c.advertise_host.clone(), None);
    let access =
        crate::client::Access::from_settings().unwrap_or_else(|f| error!("{}", f.message()));
    let mut registrar = Registrar::new(reg, c.endpoints.clone(), access, c.registration_ttl);
    while BackgroundWorker::wait_latch(Some(Duration::from_millis(250))) {
        registrar.tick(&rt);
    }
    registrar.withdraw(&rt);
}
