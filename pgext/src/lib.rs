//! pgraft's PostgreSQL extension: PostgreSQL as the control plane of a pgraft cluster.
//!
//! - [`settings`]: the `pgraft.*` GUCs, and the mode they select (member or client).
//! - [`worker`]: the background workers: one hosting a full pgraft member (member mode), or
//!   one registering this PostgreSQL server in an external cluster (client mode).
//! - [`client`]: how backends reach the cluster (the etcd v3 gRPC client API, loopback to
//!   the local member in member mode).
//! - [`functions`]: the `pgraft_*` SQL functions.
//!
//! Backends never open the member's database; only the worker process does.

use pgrx::bgworkers::BackgroundWorkerBuilder;
use pgrx::prelude::*;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

pub mod client;
pub mod functions;
pub mod settings;
mod shmem;
pub mod worker;

::pgrx::pg_module_magic!(name, version);

static PRELOADED: AtomicBool = AtomicBool::new(false);

/// Whether the library was loaded through shared_preload_libraries (so the workers and the
/// shared memory exist).
pub fn preloaded() -> bool {
    PRELOADED.load(Ordering::Relaxed)
}

/// How soon the postmaster restarts a worker that failed.
const WORKER_RESTART: Duration = Duration::from_secs(5);

#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    // SAFETY: a PostgreSQL global, read on the thread that loads the library.
    let preloading = unsafe { pg_sys::process_shared_preload_libraries_in_progress };
    settings::register(preloading);
    if !preloading {
        return;
    }
    PRELOADED.store(true, Ordering::Relaxed);
    shmem::init();
    match settings::mode() {
        // Invalid settings stop the server from starting, with the reason.
        Err(e) => {
            ereport!(
                FATAL,
                PgSqlErrorCode::ERRCODE_CONFIG_FILE_ERROR,
                format!("pgraft: {e}")
            );
        }
        Ok(settings::Mode::Member(m)) => {
            if let Err(e) = settings::tls().and_then(|t| m.server_config(&t)) {
                ereport!(
                    FATAL,
                    PgSqlErrorCode::ERRCODE_CONFIG_FILE_ERROR,
                    format!("pgraft: invalid member settings: {e}")
                );
            }
            BackgroundWorkerBuilder::new("pgraft member")
                .set_type("pgraft member")
                .set_library("pgraft")
                .set_function("pgraft_member_main")
                .enable_shmem_access(None)
                .set_restart_time(Some(WORKER_RESTART))
                .load();
        }
        Ok(settings::Mode::Client(_)) => {
            BackgroundWorkerBuilder::new("pgraft registration")
                .set_type("pgraft registration")
                .set_library("pgraft")
                .set_function("pgraft_registration_main")
                .enable_shmem_access(None)
                .set_restart_time(Some(WORKER_RESTART))
                .load();
        }
        Ok(settings::Mode::Unconfigured) => {}
    }
}

// Roles and privileges: writes and membership changes are for superusers and members of
// pgraft_admin; reads for pgraft_reader (pgraft_admin includes it). Roles are cluster-wide, so
// they may already exist from another database.
pgrx::extension_sql!(
    r#"
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'pgraft_reader') THEN
        CREATE ROLE pgraft_reader NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'pgraft_admin') THEN
        CREATE ROLE pgraft_admin NOLOGIN;
    END IF;
END
$$;
GRANT pgraft_reader TO pgraft_admin;

REVOKE ALL ON FUNCTION
    pgraft_kv_put(text, text), pgraft_kv_delete(text),
    pgraft_add_node(bigint, text, integer, boolean), pgraft_remove_node(bigint),
    pgraft_kv_get(text), pgraft_kv_exists(text), pgraft_kv_list_keys(text),
    pgraft_is_leader(), pgraft_get_leader(), pgraft_get_term(),
    pgraft_get_cluster_status(), pgraft_get_nodes(), pgraft_log_get_stats(),
    pgraft_log_get_replication_status(), pgraft_get_postgres_servers()
FROM PUBLIC;
GRANT EXECUTE ON FUNCTION
    pgraft_kv_put(text, text), pgraft_kv_delete(text),
    pgraft_add_node(bigint, text, integer, boolean), pgraft_remove_node(bigint)
TO pgraft_admin;
GRANT EXECUTE ON FUNCTION
    pgraft_kv_get(text), pgraft_kv_exists(text), pgraft_kv_list_keys(text),
    pgraft_is_leader(), pgraft_get_leader(), pgraft_get_term(),
    pgraft_get_cluster_status(), pgraft_get_nodes(), pgraft_log_get_stats(),
    pgraft_log_get_replication_status(), pgraft_get_postgres_servers()
TO pgraft_reader;
"#,
    name = "pgraft_privileges",
    finalize,
);

#[cfg(any(test, feature = "pg_test"))]
mod tests;

/// Required by `cargo pgrx test`: the test server runs a single-member cluster in member mode.
#[cfg(test)]
pub mod pg_test {
    pub fn setup(_options: Vec<&str>) {}

    /// The member's peer port is picked free when the test server starts.
    #[must_use]
    pub fn postgresql_conf_options() -> Vec<&'static str> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free loopback port");
        let leak = |s: String| -> &'static str { Box::leak(s.into_boxed_str()) };
        vec![
            "shared_preload_libraries = 'pgraft'",
            "pgraft.name = 'test1'",
            leak(format!("pgraft.initial_cluster = 'test1=127.0.0.1:{port}'")),
            leak(format!("pgraft.data_dir = 'pgraft_test_{port}'")),
            "pgraft.election_timeout = 500",
            "pgraft.heartbeat_interval = 50",
        ]
    }
}
