//! `cargo pgrx test pg15`: every SQL function, its errors and its privileges, against the
//! single-member cluster that the test server hosts in member mode (see `pg_test` in lib.rs).
use pgrx::prelude::*;

#[pg_schema]
mod tests {
    use pgrx::prelude::*;
    use std::time::{Duration, Instant};

    /// Waits until the test server's member serves and leads (it starts with the server).
    fn ready() {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let leads = crate::client::endpoints().is_ok()
                && crate::functions::raft_status().is_ok_and(|s| s.leader != 0 && s.leader == s.id);
            if leads {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the member did not start within 20 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Tests run in parallel, each in its own session: those that change the membership, or
    /// count members, take this lock (until their transaction ends) so they see only their own.
    fn membership_lock() {
        Spi::run("SELECT pg_advisory_xact_lock(7391)").unwrap();
    }

    fn one<T: FromDatum + IntoDatum>(sql: &str) -> Option<T> {
        Spi::get_one::<T>(sql).unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    #[pg_test]
    fn version_names_the_etcd_api() {
        let v = one::<String>("SELECT pgraft_version()").unwrap();
        assert!(
            v.starts_with("pgraft ") && v.contains("etcd API 3.5"),
            "{v}"
        );
    }

    #[pg_test]
    fn put_get_exists_delete() {
        ready();
        assert_eq!(
            one::<bool>("SELECT pgraft_kv_put('t/a', 'hello')"),
            Some(true)
        );
        assert_eq!(
            one::<String>("SELECT pgraft_kv_get('t/a')").as_deref(),
            Some("hello")
        );
        assert_eq!(one::<bool>("SELECT pgraft_kv_exists('t/a')"), Some(true));
        assert_eq!(
            one::<bool>("SELECT pgraft_kv_put('t/a', 'again')"),
            Some(true)
        );
        assert_eq!(
            one::<String>("SELECT pgraft_kv_get('t/a')").as_deref(),
            Some("again")
        );
        assert_eq!(one::<bool>("SELECT pgraft_kv_delete('t/a')"), Some(true));
        assert_eq!(one::<bool>("SELECT pgraft_kv_delete('t/a')"), Some(false));
        assert_eq!(one::<bool>("SELECT pgraft_kv_exists('t/a')"), Some(false));
        assert_eq!(
            one::<bool>("SELECT pgraft_kv_get('t/a') IS NULL"),
            Some(true)
        );
        // Non-ASCII text and an empty value round-trip.
        assert_eq!(one::<bool>("SELECT pgraft_kv_put('t/ü', '')"), Some(true));
        assert_eq!(
            one::<String>("SELECT pgraft_kv_get('t/ü')").as_deref(),
            Some("")
        );
    }

    #[pg_test(error = "pgraft: etcdserver: key is not provided")]
    fn put_with_empty_key_fails() {
        ready();
        Spi::run("SELECT pgraft_kv_put('', 'v')").unwrap();
    }

    #[pg_test]
    fn list_keys_by_prefix_without_truncation() {
        ready();
        Spi::run("SELECT pgraft_kv_put('list/' || lpad(i::text, 5, '0'), 'v') FROM generate_series(1, 1234) i")
            .unwrap();
        Spi::run("SELECT pgraft_kv_put('lisu', 'outside'), pgraft_kv_put('lis', 'outside')")
            .unwrap();
        assert_eq!(
            one::<i64>("SELECT count(*) FROM pgraft_kv_list_keys('list/')"),
            Some(1234)
        );
        assert_eq!(
            one::<String>("SELECT min(k) || ' ' || max(k) FROM pgraft_kv_list_keys('list/') k")
                .as_deref(),
            Some("list/00001 list/01234")
        );
        // In key order, with every key once.
        assert_eq!(
            one::<bool>(
                "SELECT array_agg(k) = array_agg(k ORDER BY k COLLATE \"C\") AND count(DISTINCT k) = count(*) \
                 FROM pgraft_kv_list_keys('list/') k"
            ),
            Some(true)
        );
        // The default prefix lists every key.
        assert!(one::<i64>("SELECT count(*) FROM pgraft_kv_list_keys()").unwrap() >= 1236);
        assert_eq!(
            one::<i64>("SELECT count(*) FROM pgraft_kv_list_keys('no/such/')"),
            Some(0)
        );
    }

    #[pg_test]
    fn leadership_and_status() {
        ready();
        membership_lock();
        assert_eq!(one::<bool>("SELECT pgraft_is_leader()"), Some(true));
        assert!(one::<i64>("SELECT pgraft_get_term()").unwrap() >= 1);
        let (id, state) =
            Spi::get_two::<i64, String>("SELECT node_id, state FROM pgraft_get_cluster_status()")
                .unwrap();
        assert_eq!(state.as_deref(), Some("leader"));
        assert_eq!(one::<i64>("SELECT pgraft_get_leader()"), id);
        assert_eq!(
            one::<bool>(
                "SELECT name = 'test1' AND num_nodes = 1 AND num_voters = 1 AND leader_id = node_id \
                 AND current_term = pgraft_get_term() AND applied_index <= commit_index \
                 AND commit_index <= last_index AND member_id = to_hex(node_id) \
                 AND length(cluster_id) > 0 FROM pgraft_get_cluster_status()"
            ),
            Some(true)
        );
        assert_eq!(
            one::<bool>(
                "SELECT count(*) = 1 AND bool_and(is_self AND is_leader AND NOT is_learner \
                 AND name = 'test1' AND address = '127.0.0.1' AND port > 0 \
                 AND cardinality(peer_urls) = 1 AND cardinality(client_urls) = 1) \
                 FROM pgraft_get_nodes()"
            ),
            Some(true)
        );
    }

    #[pg_test]
    fn log_stats_follow_writes() {
        ready();
        membership_lock();
        let before = one::<i64>("SELECT commit_index FROM pgraft_log_get_stats()").unwrap();
        Spi::run("SELECT pgraft_kv_put('stats/' || i, 'v') FROM generate_series(1, 5) i").unwrap();
        assert!(
            one::<i64>("SELECT commit_index FROM pgraft_log_get_stats()").unwrap() >= before + 5
        );
        assert_eq!(
            one::<bool>(
                "SELECT first_index >= 1 AND first_index <= last_index + 1 \
                 AND entries = last_index - first_index + 1 AND applied_index <= commit_index \
                 AND snapshot_index = first_index - 1 AND current_term >= 1 \
                 FROM pgraft_log_get_stats()"
            ),
            Some(true)
        );
        // A single member has no followers.
        assert_eq!(
            one::<i64>("SELECT count(*) FROM pgraft_log_get_replication_status()"),
            Some(0)
        );
    }

    #[pg_test]
    fn add_and_remove_a_learner() {
        ready();
        membership_lock();
        // A learner: adding a voter that never starts would cost this single member its quorum.
        assert_eq!(
            one::<bool>("SELECT pgraft_add_node(4242, '127.0.0.1', 1, true)"),
            Some(true)
        );
        assert_eq!(
            one::<bool>(
                "SELECT is_learner AND NOT is_leader AND member_id = '1092' AND address = '127.0.0.1' \
                 AND port = 1 FROM pgraft_get_nodes() WHERE node_id = 4242"
            ),
            Some(true)
        );
        assert_eq!(
            one::<bool>(
                "SELECT count(*) = 1 AND bool_and(is_learner) FROM pgraft_log_get_replication_status() \
                 WHERE node_id = 4242"
            ),
            Some(true)
        );
        assert_eq!(one::<bool>("SELECT pgraft_remove_node(4242)"), Some(true));
        assert_eq!(
            one::<i64>("SELECT count(*) FROM pgraft_get_nodes()"),
            Some(1)
        );
    }

    #[pg_test(error = "pgraft: etcdserver: member not found")]
    fn removing_an_unknown_node_fails() {
        ready();
        Spi::run("SELECT pgraft_remove_node(987654321)").unwrap();
    }

    #[pg_test(error = "pgraft: etcdserver: member ID already exist")]
    fn adding_an_existing_id_fails() {
        ready();
        membership_lock();
        let id = one::<i64>("SELECT pgraft_get_leader()").unwrap();
        Spi::run(&format!(
            "SELECT pgraft_add_node({id}, '127.0.0.1', 2, true)"
        ))
        .unwrap();
    }

    #[pg_test(error = "pgraft: etcdserver: Peer URLs already exists")]
    fn adding_a_taken_address_fails() {
        ready();
        membership_lock();
        let (addr, port) =
            Spi::get_two::<String, i32>("SELECT address, port FROM pgraft_get_nodes()").unwrap();
        Spi::run(&format!(
            "SELECT pgraft_add_node(77, '{}', {}, true)",
            addr.unwrap(),
            port.unwrap()
        ))
        .unwrap();
    }

    #[pg_test(error = "pgraft: member ID 1f5 was removed from this cluster and cannot be reused")]
    fn a_removed_id_is_not_reused() {
        ready();
        membership_lock();
        Spi::run("SELECT pgraft_add_node(501, '127.0.0.1', 3, true)").unwrap();
        Spi::run("SELECT pgraft_remove_node(501)").unwrap();
        Spi::run("SELECT pgraft_add_node(501, '127.0.0.1', 3, true)").unwrap();
    }

    #[pg_test(error = "pgraft: port 70000 is out of range (1..65535)")]
    fn add_node_checks_the_port() {
        Spi::run("SELECT pgraft_add_node(9, '127.0.0.1', 70000)").unwrap();
    }

    #[pg_test(error = "pgraft: node_id must not be 0")]
    fn add_node_refuses_id_zero() {
        Spi::run("SELECT pgraft_add_node(0, '127.0.0.1', 7000)").unwrap();
    }

    #[pg_test]
    fn settings_are_gucs() {
        assert_eq!(
            one::<String>("SELECT setting FROM pg_settings WHERE name = 'pgraft.name'").as_deref(),
            Some("test1")
        );
        assert_eq!(
            one::<String>(
                "SELECT setting || ' ' || unit || ' ' || context FROM pg_settings \
                 WHERE name = 'pgraft.election_timeout'"
            )
            .as_deref(),
            Some("500 ms postmaster")
        );
        assert_eq!(
            one::<String>("SELECT context FROM pg_settings WHERE name = 'pgraft.request_timeout'")
                .as_deref(),
            Some("user")
        );
        assert_eq!(
            one::<i64>("SELECT count(*) FROM pg_settings WHERE name LIKE 'pgraft.%'"),
            Some(19)
        );
    }

    /// Backends reach the member hosted here on a Unix socket in the data directory that only
    /// the server's OS user may open: no TCP port on which any local process could talk to
    /// the member around the SQL roles.
    #[pg_test]
    fn the_member_serves_backends_on_a_private_socket() {
        use std::os::unix::fs::{FileTypeExt, PermissionsExt};
        ready();
        let meta = std::fs::metadata(crate::settings::MEMBER_SOCKET).expect("member socket");
        assert!(meta.file_type().is_socket());
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert!(one::<bool>("SELECT pgraft_kv_put('over-the-socket', 'v')").unwrap());
    }

    /// Runs `sql` as a new role with no privileges beyond `grants`.
    fn as_role(grants: &[&str], sql: &str) {
        Spi::run("CREATE ROLE pgraft_test_user").unwrap();
        for g in grants {
            Spi::run(&format!("GRANT {g} TO pgraft_test_user")).unwrap();
        }
        Spi::run("SET ROLE pgraft_test_user").unwrap();
        Spi::run(sql).unwrap();
        Spi::run("RESET ROLE").unwrap();
    }

    #[pg_test(error = "permission denied for function pgraft_kv_put")]
    fn writes_need_a_privilege() {
        as_role(&[], "SELECT pgraft_kv_put('p', 'v')");
    }

    #[pg_test(error = "permission denied for function pgraft_kv_get")]
    fn reads_need_a_privilege() {
        as_role(&[], "SELECT pgraft_kv_get('p')");
    }

    #[pg_test(error = "permission denied for function pgraft_remove_node")]
    fn readers_cannot_change_membership() {
        ready();
        as_role(
            &["pgraft_reader"],
            "SELECT pgraft_kv_get('p'), pgraft_get_nodes(), pgraft_is_leader(); SELECT pgraft_remove_node(1)",
        );
    }

    #[pg_test(error = "permission denied for function pgraft_kv_delete")]
    fn readers_cannot_write() {
        ready();
        as_role(&["pgraft_reader"], "SELECT pgraft_kv_delete('p')");
    }

    #[pg_test]
    fn admins_read_and_write() {
        ready();
        as_role(
            &["pgraft_admin"],
            "SELECT pgraft_kv_put('adm', 'v'), pgraft_kv_get('adm'), pgraft_kv_delete('adm'), \
             pgraft_log_get_stats(), pgraft_get_cluster_status()",
        );
        assert_eq!(one::<bool>("SELECT pgraft_kv_exists('adm')"), Some(false));
    }
}
