//! Builds and runs one member from a [`Config`]: opens the database, finds or creates the
//! member's identity (restart, new cluster, or joining an existing one), restores state, starts
//! the raft loop, the peer and client listeners, and the leader's lease duty. The `pgraftd`
//! binary and the PostgreSQL extension's background worker both run a member through this.

use crate::alarm::AlarmStore;
use crate::api::conn::Listener;
use crate::apply::{load_leases, Applier};
use crate::backend::{meta_key, Backend};
use crate::config::Listen;
use crate::config::{Config, ConfigError};
use crate::error::{Error, Result};
use crate::lease::Lessor;
use crate::membership::{Membership, Origin};
use crate::mvcc::Store;
use crate::raft::dial::Dialer;
use crate::raft::{self, RaftConfig, RaftStorage};
use crate::service::{EtcdServer, IdGen, LEASE_CHECK_INTERVAL};
use crate::tls::{ClientTls, ServerTls};
use crate::wait::Wait;
use crate::watch::WatchHub;
use etcd_proto::pgraftpb::raft_peer_client::RaftPeerClient;
use etcd_proto::pgraftpb::MembersRequest;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

pub struct Node {
    pub server: Arc<EtcdServer>,
    /// The TCP client addresses actually bound (useful with port 0); Unix sockets are where
    /// `--listen-client-urls` put them.
    pub client_addrs: Vec<SocketAddr>,
    /// The peer addresses actually bound.
    pub peer_addrs: Vec<SocketAddr>,
    /// The `--listen-metrics-urls` addresses actually bound.
    pub metrics_addrs: Vec<SocketAddr>,
    shutdown: watch::Sender<bool>,
    tasks: JoinSet<()>,
    raft_thread: Option<std::thread::JoinHandle<()>>,
    /// True once clients are served (see [`Node::ready`]).
    ready: watch::Receiver<bool>,
}

/// How long a joining member keeps asking the existing members for the cluster's identity.
const JOIN_TIMEOUT: Duration = Duration::from_secs(30);
/// How long open client streams get to finish when the member stops.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

fn cfg_err(ConfigError(e): ConfigError) -> Error {
    Error::Internal(e)
}

/// Binds every listen address, each with whether it serves TLS (an `https://` URL).
async fn bind_all(addrs: Vec<(SocketAddr, bool)>, what: &str) -> Result<Vec<(TcpListener, bool)>> {
    let mut out = Vec::new();
    for (addr, tls) in addrs {
        let l = TcpListener::bind(addr)
            .await
            .map_err(|e| Error::Internal(format!("listen for {what} on {addr}: {e}")))?;
        let scheme = if tls { "https" } else { "http" };
        tracing::info!(address = %l.local_addr().map_err(Error::internal)?, scheme, "serving {what} traffic");
        out.push((l, tls));
    }
    Ok(out)
}

/// Binds the client listeners: TCP, each with whether it serves TLS, and Unix sockets (a stale
/// socket file from an earlier run is removed first, as etcd does).
async fn bind_clients(places: Vec<Listen>) -> Result<Vec<(Listener, bool)>> {
    let mut out = Vec::new();
    for place in places {
        match place {
            Listen::Tcp { addr, tls } => {
                let mut l = bind_all(vec![(addr, tls)], "client").await?;
                let (l, tls) = l.remove(0);
                out.push((Listener::Tcp(l), tls));
            }
            Listen::Unix(path) => {
                let _ = std::fs::remove_file(&path);
                let l = tokio::net::UnixListener::bind(&path).map_err(|e| {
                    Error::Internal(format!("listen for client on {}: {e}", path.display()))
                })?;
                tracing::info!(path = %path.display(), scheme = "unix", "serving client traffic");
                out.push((Listener::Unix(l), false));
            }
        }
    }
    Ok(out)
}

/// Asks the other members of `--initial-cluster` for the cluster's ID and member list.
async fn fetch_cluster(
    cfg: &Config,
    dialer: &Dialer,
) -> Result<(u64, Vec<etcd_proto::etcdserverpb::Member>)> {
    let mine = cfg.advertise_peer_urls();
    let urls: Vec<String> = cfg
        .initial_members()
        .map_err(cfg_err)?
        .into_iter()
        .flat_map(|m| m.peer_urls)
        .filter(|u| !mine.contains(u))
        .collect();
    let deadline = tokio::time::Instant::now() + JOIN_TIMEOUT;
    while tokio::time::Instant::now() < deadline {
        for url in &urls {
            let Ok(ch) = dialer.channel(url) else {
                continue;
            };
            let asked = tokio::time::timeout(
                Duration::from_secs(2),
                RaftPeerClient::new(ch).members(MembersRequest {}),
            )
            .await;
            if let Ok(Ok(r)) = asked {
                let r = r.into_inner();
                return Ok((r.cluster_id, r.members));
            }
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    Err(Error::Internal(format!(
        "could not reach any existing member at {urls:?} to join the cluster"
    )))
}

impl Node {
    /// Starts a member; must run inside a tokio runtime.
    pub async fn start(cfg: Config) -> Result<Node> {
        cfg.validate().map_err(cfg_err)?;
        // Bind first, so a port conflict fails before anything is written.
        let peer_listeners = bind_all(cfg.peer_listen_addrs().map_err(cfg_err)?, "peer").await?;
        let client_listeners = bind_clients(cfg.client_listen_addrs().map_err(cfg_err)?).await?;
        let metrics_listeners = bind_all(
            cfg.metrics_listen_addrs()
                .map_err(cfg_err)?
                .into_iter()
                .map(|a| (a, false))
                .collect(),
            "metrics",
        )
        .await?;
        // Certificates are loaded now, so that a bad file stops the start.
        let tls_err = |e: String| Error::Internal(format!("TLS: {e}"));
        let client_tls = match cfg.client_tls().map_err(cfg_err)? {
            Some(f) => Some(Arc::new(ServerTls::new(f, None).map_err(tls_err)?)),
            None => None,
        };
        // One set of peer files: this member's peer port, and the dialing of its peers.
        let (peer_tls, dialer) = match cfg.peer_tls().map_err(cfg_err)? {
            Some(f) => {
                let allowed_cn = (!cfg.peer_cert_allowed_cn.is_empty())
                    .then(|| cfg.peer_cert_allowed_cn.clone());
                let dialer =
                    Dialer::new(Some(Arc::new(ClientTls::new(f.clone()).map_err(tls_err)?)));
                let server = Arc::new(ServerTls::new(f, allowed_cn).map_err(tls_err)?);
                (Some(server), dialer)
            }
            None => (None, Dialer::default()),
        };

        let backend = Backend::open(&cfg.data_dir())?;
        // Before anything reads the state: a snapshot install a stop interrupted is redone.
        crate::snapshot::install::recover(&backend, &cfg.data_dir())?;
        let (membership, origin) = match Membership::load(backend.clone())? {
            Some(m) => (m, Origin::Restarted),
            None if cfg.initial_cluster_state == "existing" => {
                let (cid, members) = fetch_cluster(&cfg, &dialer).await?;
                let m =
                    Membership::join(backend.clone(), cid, members, &cfg.advertise_peer_urls())?;
                (m, Origin::Joined)
            }
            None => {
                let initial = cfg.initial_members().map_err(cfg_err)?;
                let m = Membership::bootstrap(
                    backend.clone(),
                    &cfg.name,
                    &initial,
                    &cfg.initial_cluster_token,
                )?;
                (m, Origin::Bootstrapped)
            }
        };
        let membership = Arc::new(membership);

        let raft_storage = RaftStorage::open(backend.clone())?;
        if origin == Origin::Bootstrapped {
            raft_storage.bootstrap(membership.voter_ids())?;
            backend
                .meta
                .insert(meta_key::APPLIED_INDEX, 1u64.to_be_bytes().to_vec())?;
        }
        let applied = backend.get_meta_u64(meta_key::APPLIED_INDEX)?.unwrap_or(0);
        raft_storage.ensure_commit(applied)?;
        if cfg.force_new_cluster && origin == Origin::Restarted {
            let removed = raft_storage.force_new_cluster(membership.member_id, applied)?;
            tracing::warn!(
                removed = ?removed.iter().map(|m| format!("{m:x}")).collect::<Vec<_>>(),
                "--force-new-cluster: this member is now the cluster's only one; add members \
                 back with `member add`, each from an empty data directory"
            );
        }

        let (store, leased_keys) = Store::open(backend.clone())?;
        let store = Arc::new(store);
        store.start_compactor()?;
        let lessor = Arc::new(Lessor::new(cfg.min_lease_ttl()));
        load_leases(&backend, &lessor, leased_keys)?;
        let hub = Arc::new(WatchHub::new(store.clone()));
        let wait = Arc::new(Wait::default());
        let alarms = Arc::new(AlarmStore::open(backend.clone())?);
        let tokens = crate::auth::Tokens::from_flag(
            &cfg.auth_token,
            Duration::from_secs(cfg.auth_token_ttl),
        )
        .map_err(Error::Internal)?;
        let auth = Arc::new(crate::auth::AuthStore::open(&backend, tokens)?);
        let applier = Applier {
            auth: auth.clone(),
            backend: backend.clone(),
            store: store.clone(),
            lessor: lessor.clone(),
            hub: hub.clone(),
            membership: membership.clone(),
            wait: wait.clone(),
            alarms: alarms.clone(),
            lease_extend: cfg.election(),
        };
        let rc = RaftConfig {
            id: membership.member_id,
            cluster_id: membership.cluster_id,
            heartbeat: cfg.heartbeat(),
            election_ticks: (cfg.election_timeout / cfg.heartbeat_interval) as usize,
            catch_up_entries: cfg.snapshot_catchup_entries.min(cfg.snapshot_count),
            snapshot_count: cfg.snapshot_count,
            pre_vote: cfg.pre_vote,
            dialer,
        };
        let (raft, raft_thread) = raft::node::start(
            rc,
            raft_storage,
            applied,
            applier,
            tokio::runtime::Handle::current(),
        )?;
        // A learner that joined has no raft membership until its first snapshot: take its role
        // from the member list so it refuses what learners refuse from the start.
        if membership
            .get(membership.member_id)
            .is_some_and(|m| m.is_learner)
        {
            raft.status.is_learner.store(true, Ordering::Release);
        }
        let server = Arc::new(EtcdServer {
            ids: IdGen::new(membership.member_id),
            cfg: cfg.clone(),
            backend,
            store,
            lessor,
            hub,
            membership,
            auth,
            raft,
            wait,
            alarms,
        });
        tracing::info!(
            name = %cfg.name,
            member_id = %format!("{:x}", server.member_id()),
            cluster_id = %format!("{:x}", server.cluster_id()),
            origin = ?origin,
            data_dir = %cfg.data_dir().display(),
            "member started"
        );

        let (shutdown, _) = watch::channel(false);
        let mut tasks = JoinSet::new();
        let stopped = |mut rx: watch::Receiver<bool>| async move {
            let _ = rx.changed().await;
        };
        {
            let server = server.clone();
            let stop = stopped(shutdown.subscribe());
            tasks.spawn(async move {
                let mut tick = tokio::time::interval(LEASE_CHECK_INTERVAL);
                tokio::pin!(stop);
                loop {
                    tokio::select! {
                        _ = tick.tick() => server.revoke_expired_leases(),
                        _ = &mut stop => return,
                    }
                }
            });
        }
        if !cfg.corrupt_check_time.is_zero() {
            let server = server.clone();
            let stop = stopped(shutdown.subscribe());
            let period = cfg.corrupt_check_time;
            tasks.spawn(async move {
                let mut tick = tokio::time::interval(period);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                tick.tick().await;
                tokio::pin!(stop);
                loop {
                    tokio::select! {
                        _ = tick.tick() => if let Err(e) = server.check_corruption().await {
                            tracing::warn!(error = %e, "corruption check failed");
                        },
                        _ = &mut stop => return,
                    }
                }
            });
        }
        // Like etcd, clients are served once this member has published its name and client
        // URLs through the log (until then connections wait in the listen backlog), so that a
        // client never sees a member list without it.
        let (ready_tx, ready_rx) = watch::channel(false);
        {
            let server = server.clone();
            let stop = stopped(shutdown.subscribe());
            let ready = ready_tx;
            tasks.spawn(async move {
                tokio::select! {
                    _ = server.publish_attributes() => { let _ = ready.send(true); }
                    _ = stop => {}
                }
            });
        }
        if let Some(policy) = cfg.auto_compaction().map_err(cfg_err)? {
            let server = server.clone();
            let stop = stopped(shutdown.subscribe());
            let interval = cfg
                .auto_compaction_revision_interval
                .unwrap_or(crate::service::autocompact::REVISION_INTERVAL);
            tasks.spawn(crate::service::autocompact::run(
                server, policy, interval, stop,
            ));
        }
        let mut metrics_addrs = Vec::new();
        for (l, _) in metrics_listeners {
            metrics_addrs.push(l.local_addr().map_err(Error::internal)?);
            let app = crate::api::http::metrics_router(server.clone());
            let stop = stopped(shutdown.subscribe());
            tasks.spawn(async move {
                if let Err(e) = axum::serve(l, app).with_graceful_shutdown(stop).await {
                    tracing::error!(error = %e, "metrics listener failed");
                }
            });
        }
        let mut peer_addrs = Vec::new();
        for (l, https) in peer_listeners {
            peer_addrs.push(l.local_addr().map_err(Error::internal)?);
            let server = server.clone();
            let stop = stopped(shutdown.subscribe());
            let tls = if https { peer_tls.clone() } else { None };
            tasks.spawn(async move {
                if let Err(e) = crate::api::peer::serve_peer(server, l, tls, stop).await {
                    tracing::error!(error = %e, "peer listener failed");
                }
            });
        }
        let mut client_addrs = Vec::new();
        for (l, https) in client_listeners {
            if let Listener::Tcp(t) = &l {
                client_addrs.push(t.local_addr().map_err(Error::internal)?);
            }
            let tls = if https { client_tls.clone() } else { None };
            let server = server.clone();
            let mut ready = ready_rx.clone();
            let mut stop_wait = shutdown.subscribe();
            let stop = stopped(shutdown.subscribe());
            tasks.spawn(async move {
                tokio::select! {
                    r = ready.wait_for(|r| *r) => if r.is_err() { return },
                    _ = stop_wait.changed() => return,
                }
                if let Err(e) = crate::api::serve_client(server, l, tls, stop).await {
                    tracing::error!(error = %e, "client listener failed");
                }
            });
        }
        Ok(Node {
            server,
            client_addrs,
            peer_addrs,
            metrics_addrs,
            shutdown,
            tasks,
            raft_thread: Some(raft_thread),
            ready: ready_rx,
        })
    }

    /// Resolves once this member serves clients: it has published its name and client URLs
    /// through the log (etcd's `ReadyNotify`). Never, if it stops first.
    pub async fn ready(&self) {
        let mut ready = self.ready.clone();
        if ready.wait_for(|r| *r).await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// On the leader: moves leadership to the voter with the longest matching log among those
    /// heard from recently, and waits (at most an election timeout) for it to take over.
    async fn transfer_leadership(&self) {
        let raft = &self.server.raft;
        if !raft.status.is_leader() {
            return;
        }
        let Ok(report) = raft.report().await else {
            return;
        };
        let Some(target) = report
            .progress
            .iter()
            .filter(|p| p.id != raft.status.id && p.recent_active && !p.is_learner)
            .max_by_key(|p| p.matched)
            .map(|p| p.id)
        else {
            return;
        };
        if raft.transfer_leader(target).is_err() {
            return;
        }
        let deadline = tokio::time::Instant::now() + self.server.cfg.election();
        while raft.status.is_leader() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tracing::info!(
            target = %format!("{target:x}"),
            transferred = !raft.status.is_leader(),
            "handed over leadership before stopping"
        );
    }

    /// Resolves when this member has been removed from the cluster.
    pub fn removed(&self) -> impl Future<Output = ()> + Send + 'static {
        let server = self.server.clone();
        async move {
            while !server.raft.status.removed.load(Ordering::Acquire) {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }

    /// Stops serving (streams still open after a grace period are cut), lets the raft loop
    /// finish its turn, and flushes the database. A leader first hands its leadership to the
    /// most up-to-date active voter, as etcd does, so that a clean stop costs the cluster no
    /// election timeout.
    pub async fn stop(mut self) {
        self.transfer_leadership().await;
        let _ = self.shutdown.send(true);
        let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
            while self.tasks.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            self.tasks.abort_all();
            while self.tasks.join_next().await.is_some() {}
        }
        self.server.raft.stop();
        if let Some(t) = self.raft_thread.take() {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
        if let Err(e) = self.server.backend.db.persist(fjall::PersistMode::SyncAll) {
            tracing::error!(error = %e, "final flush failed");
        }
    }
}
