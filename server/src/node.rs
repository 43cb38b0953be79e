//! Builds and runs one member from a [`Config`]: opens the database, restores state, starts the
//! raft loop, the leader's lease duty and the client listeners. The `pgraftd` binary and the
//! PostgreSQL extension's background worker both run a member through this.

use crate::apply::Applier;
use crate::backend::{meta_key, Backend};
use crate::config::{Config, ConfigError};
use crate::error::{Error, Result};
use crate::lease::Lessor;
use crate::membership::Membership;
use crate::mvcc::Store;
use crate::raft::{self, RaftConfig, RaftStorage};
use crate::service::{EtcdServer, IdGen, LEASE_CHECK_INTERVAL};
use crate::wait::Wait;
use crate::watch::WatchHub;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

pub struct Node {
    pub server: Arc<EtcdServer>,
    /// The client addresses actually bound (useful with port 0).
    pub client_addrs: Vec<SocketAddr>,
    shutdown: watch::Sender<bool>,
    tasks: JoinSet<()>,
    raft_thread: Option<std::thread::JoinHandle<()>>,
}

impl Node {
    /// Starts a member; must run inside a tokio runtime.
    pub async fn start(cfg: Config) -> Result<Node> {
        cfg.validate()
            .map_err(|ConfigError(e)| Error::Internal(e))?;
        let backend = Backend::open(&cfg.data_dir())?;
        let initial = cfg
            .initial_members()
            .map_err(|ConfigError(e)| Error::Internal(e))?;
        let (membership, bootstrapped) = Membership::open_or_bootstrap(
            backend.clone(),
            &cfg.name,
            &initial,
            &cfg.initial_cluster_token,
        )?;
        if bootstrapped && cfg.initial_cluster_state == "existing" {
            return Err(Error::Unimplemented(
                "joining an existing cluster (--initial-cluster-state=existing) is not supported yet"
                    .into(),
            ));
        }
        if membership.voter_ids().len() > 1 {
            return Err(Error::Unimplemented(
                "clusters of more than one member are not supported yet".into(),
            ));
        }
        let membership = Arc::new(membership);
        membership.publish_self(&cfg.name, cfg.advertise_client_urls())?;

        let raft_storage = RaftStorage::open(backend.clone())?;
        if raft_storage.is_empty() {
            raft_storage.bootstrap(membership.voter_ids())?;
        }
        let applied = backend.get_meta_u64(meta_key::APPLIED_INDEX)?.unwrap_or(0);
        raft_storage.ensure_commit(applied)?;

        let (store, leased_keys) = Store::open(backend.clone())?;
        let store = Arc::new(store);
        let lessor = Arc::new(Lessor::new(cfg.min_lease_ttl()));
        for item in backend.lease.iter() {
            let (k, v) = item.into_inner()?;
            let id = i64::from_be_bytes(k.as_ref().try_into().map_err(Error::internal)?);
            let ttl = i64::from_be_bytes(v.as_ref().try_into().map_err(Error::internal)?);
            lessor.grant(id, ttl);
        }
        for (key, lease) in leased_keys {
            lessor.attach(lease, &key);
        }
        let hub = Arc::new(WatchHub::new(store.clone()));
        let wait = Arc::new(Wait::default());
        let applier = Applier {
            backend: backend.clone(),
            store: store.clone(),
            lessor: lessor.clone(),
            hub: hub.clone(),
            wait: wait.clone(),
            lease_extend: cfg.election(),
        };
        let rc = RaftConfig {
            id: membership.member_id,
            heartbeat: cfg.heartbeat(),
            election_ticks: (cfg.election_timeout / cfg.heartbeat_interval) as usize,
            catch_up_entries: 5000,
            snapshot_count: cfg.snapshot_count,
        };
        let (raft, raft_thread) = raft::node::start(rc, raft_storage, applied, applier)?;
        let server = Arc::new(EtcdServer {
            ids: IdGen::new(membership.member_id),
            cfg: cfg.clone(),
            backend,
            store,
            lessor,
            hub,
            membership,
            raft,
            wait,
        });
        tracing::info!(
            name = %cfg.name,
            member_id = %format!("{:x}", server.member_id()),
            cluster_id = %format!("{:x}", server.cluster_id()),
            data_dir = %cfg.data_dir().display(),
            "member started"
        );

        let (shutdown, _) = watch::channel(false);
        let mut tasks = JoinSet::new();
        {
            let server = server.clone();
            let mut stop = shutdown.subscribe();
            tasks.spawn(async move {
                let mut tick = tokio::time::interval(LEASE_CHECK_INTERVAL);
                loop {
                    tokio::select! {
                        _ = tick.tick() => server.revoke_expired_leases(),
                        _ = stop.changed() => return,
                    }
                }
            });
        }
        let mut client_addrs = Vec::new();
        for addr in cfg
            .client_listen_addrs()
            .map_err(|ConfigError(e)| Error::Internal(e))?
        {
            let listener = TcpListener::bind(addr)
                .await
                .map_err(|e| Error::Internal(format!("listen on {addr}: {e}")))?;
            client_addrs.push(listener.local_addr().map_err(Error::internal)?);
            tracing::info!(address = %addr, "serving client traffic");
            let server = server.clone();
            let mut stop = shutdown.subscribe();
            tasks.spawn(async move {
                let signal = async move {
                    let _ = stop.changed().await;
                };
                if let Err(e) = crate::api::serve_client(server, listener, signal).await {
                    tracing::error!(error = %e, "client listener failed");
                }
            });
        }
        Ok(Node {
            server,
            client_addrs,
            shutdown,
            tasks,
            raft_thread: Some(raft_thread),
        })
    }

    /// Stops serving (streams still open after a grace period are cut), lets the raft loop
    /// finish its turn, and flushes the database.
    pub async fn stop(mut self) {
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

/// How long open client streams get to finish when the member stops.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(2);
