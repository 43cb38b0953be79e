//! The `pgraft_*` SQL functions: the original pgraft's names, with etcd's semantics. Each is a
//! thin adapter from SQL types to one or two client API calls ([`crate::client`]); failures
//! raise an ERROR carrying etcd's message (`pgraft: etcdserver: no leader`, ...).
//!
//! Node IDs are etcd's 64-bit member IDs, shown as `bigint` (the same bits, so IDs above
//! 2^63 read negative) and as `member_id`, etcdctl's hex form.

use crate::client::{self, call, or_raise, Failure, Result};
use etcd_proto::etcdserverpb::cluster_client::ClusterClient;
use etcd_proto::etcdserverpb::kv_client::KvClient;
use etcd_proto::etcdserverpb::{
    DeleteRangeRequest, Member, MemberListRequest, MemberRemoveRequest, PutRequest, RangeRequest,
};
use etcd_proto::pgraftpb::admin_client::AdminClient;
use etcd_proto::pgraftpb::{MemberAddWithIdRequest, RaftStatusRequest, RaftStatusResponse};
use pgrx::prelude::*;

/// Keys listed per request by `pgraft_kv_list_keys`.
const LIST_PAGE: i64 = 1000;

fn text(what: &str, bytes: Vec<u8>) -> Result<String> {
    String::from_utf8(bytes).map_err(|e| {
        Failure::Data(format!(
            "{what} is not valid UTF-8 text ({:?})",
            String::from_utf8_lossy(e.as_bytes())
        ))
    })
}

fn hex(id: u64) -> String {
    format!("{id:x}")
}

fn range(r: RangeRequest) -> Result<etcd_proto::etcdserverpb::RangeResponse> {
    call(|ch| {
        let r = r.clone();
        async move { KvClient::new(ch).range(r).await }
    })
}

pub(crate) fn raft_status() -> Result<RaftStatusResponse> {
    call(|ch| async move { AdminClient::new(ch).raft_status(RaftStatusRequest {}).await })
}

fn members() -> Result<Vec<Member>> {
    let r = call(|ch| async move {
        ClusterClient::new(ch)
            .member_list(MemberListRequest {
                linearizable: false,
            })
            .await
    })?;
    Ok(r.members)
}

/// etcd's prefix range end: the prefix with its last byte below 0xff incremented.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// Stores `value` under `key`; returns once the write is committed and applied.
#[pg_extern]
fn pgraft_kv_put(key: &str, value: &str) -> bool {
    let req = PutRequest {
        key: key.as_bytes().to_vec(),
        value: value.as_bytes().to_vec(),
        ..Default::default()
    };
    or_raise(call(|ch| {
        let req = req.clone();
        async move { KvClient::new(ch).put(req).await }
    }));
    true
}

/// The value of `key` (a linearizable read), or NULL when it is absent.
#[pg_extern]
fn pgraft_kv_get(key: &str) -> Option<String> {
    let r = or_raise(range(RangeRequest {
        key: key.as_bytes().to_vec(),
        ..Default::default()
    }));
    r.kvs
        .into_iter()
        .next()
        .map(|kv| or_raise(text(&format!("the value of key '{key}'"), kv.value)))
}

/// Deletes `key`; true when it existed.
#[pg_extern]
fn pgraft_kv_delete(key: &str) -> bool {
    let req = DeleteRangeRequest {
        key: key.as_bytes().to_vec(),
        ..Default::default()
    };
    let r = or_raise(call(|ch| {
        let req = req.clone();
        async move { KvClient::new(ch).delete_range(req).await }
    }));
    r.deleted > 0
}

/// Whether `key` exists (a linearizable read).
#[pg_extern]
fn pgraft_kv_exists(key: &str) -> bool {
    let r = or_raise(range(RangeRequest {
        key: key.as_bytes().to_vec(),
        count_only: true,
        ..Default::default()
    }));
    r.count > 0
}

/// Every key starting with `prefix` (all keys by default), in key order, read at one revision.
#[pg_extern]
fn pgraft_kv_list_keys(prefix: default!(&str, "''")) -> SetOfIterator<'static, String> {
    let (mut start, end) = if prefix.is_empty() {
        (vec![0], vec![0])
    } else {
        (prefix.as_bytes().to_vec(), prefix_end(prefix.as_bytes()))
    };
    let mut keys = Vec::new();
    let mut revision = 0;
    loop {
        let r = or_raise(range(RangeRequest {
            key: start.clone(),
            range_end: end.clone(),
            keys_only: true,
            limit: LIST_PAGE,
            revision,
            ..Default::default()
        }));
        if revision == 0 {
            revision = r.header.as_ref().map_or(0, |h| h.revision);
        }
        let Some(last) = r.kvs.last().map(|kv| kv.key.clone()) else {
            break;
        };
        for kv in r.kvs {
            keys.push(or_raise(text("a key", kv.key)));
        }
        if !r.more {
            break;
        }
        start = last;
        start.push(0);
    }
    SetOfIterator::new(keys)
}

/// Whether the member serving this session is the raft leader.
#[pg_extern]
fn pgraft_is_leader() -> bool {
    let s = or_raise(raft_status());
    s.leader != 0 && s.leader == s.id
}

/// The leader's node ID, or NULL while there is none (an election is under way).
#[pg_extern]
fn pgraft_get_leader() -> Option<i64> {
    let s = or_raise(raft_status());
    (s.leader != 0).then_some(s.leader as i64)
}

/// The current raft term.
#[pg_extern]
fn pgraft_get_term() -> i64 {
    or_raise(raft_status()).term as i64
}

/// One row: the raft view of the member serving this session.
#[pg_extern]
#[allow(clippy::type_complexity)]
fn pgraft_get_cluster_status() -> TableIterator<
    'static,
    (
        name!(node_id, i64),
        name!(member_id, String),
        name!(name, String),
        name!(state, String),
        name!(leader_id, Option<i64>),
        name!(current_term, i64),
        name!(num_nodes, i32),
        name!(num_voters, i32),
        name!(commit_index, i64),
        name!(applied_index, i64),
        name!(last_index, i64),
        name!(elections_triggered, i64),
        name!(leader_changes, i64),
        name!(cluster_id, String),
    ),
> {
    let s = or_raise(raft_status());
    let members = or_raise(members());
    let name = members
        .iter()
        .find(|m| m.id == s.id)
        .map(|m| m.name.clone())
        .unwrap_or_default();
    let cluster_id = s.header.as_ref().map_or(0, |h| h.cluster_id);
    TableIterator::once((
        s.id as i64,
        hex(s.id),
        name,
        s.role.clone(),
        (s.leader != 0).then_some(s.leader as i64),
        s.term as i64,
        members.len() as i32,
        members.iter().filter(|m| !m.is_learner).count() as i32,
        s.commit_index as i64,
        s.applied_index as i64,
        s.last_index as i64,
        s.elections as i64,
        s.leader_changes as i64,
        hex(cluster_id),
    ))
}

/// Host and port of a member's first peer URL.
fn address_of(m: &Member) -> (Option<String>, Option<i32>) {
    let Some(u) = m.peer_ur_ls.first().and_then(|u| url::Url::parse(u).ok()) else {
        return (None, None);
    };
    (
        u.host_str().map(str::to_string),
        u.port_or_known_default().map(i32::from),
    )
}

/// A row per member of the cluster.
#[pg_extern]
#[allow(clippy::type_complexity)]
fn pgraft_get_nodes() -> TableIterator<
    'static,
    (
        name!(node_id, i64),
        name!(member_id, String),
        name!(name, String),
        name!(address, Option<String>),
        name!(port, Option<i32>),
        name!(peer_urls, Vec<String>),
        name!(client_urls, Vec<String>),
        name!(is_leader, bool),
        name!(is_learner, bool),
        name!(is_self, bool),
    ),
> {
    let s = or_raise(raft_status());
    let mut members = or_raise(members());
    members.sort_by(|a, b| a.name.cmp(&b.name).then(a.id.cmp(&b.id)));
    TableIterator::new(members.into_iter().map(move |m| {
        let (address, port) = address_of(&m);
        (
            m.id as i64,
            hex(m.id),
            m.name,
            address,
            port,
            m.peer_ur_ls,
            m.client_ur_ls,
            m.id == s.leader,
            m.is_learner,
            m.id == s.id,
        )
    }))
}

/// A row per PostgreSQL server registered with the cluster (the `pgraft/postgres/<name>` keys
/// the extension's workers keep on a lease): servers using it in client mode, and servers
/// hosting a member (`member_id`), as the dashboard shows them. Keys whose value is not a
/// registration are listed with what can be read (their name).
#[pg_extern]
#[allow(clippy::type_complexity)]
fn pgraft_get_postgres_servers() -> TableIterator<
    'static,
    (
        name!(name, String),
        name!(host, Option<String>),
        name!(port, Option<i32>),
        name!(mode, Option<String>),
        name!(member_id, Option<String>),
        name!(in_recovery, Option<bool>),
        name!(server_version, Option<String>),
        name!(lease, i64),
    ),
> {
    let prefix = crate::settings::REGISTRATION_PREFIX.as_bytes();
    let r = or_raise(range(RangeRequest {
        key: prefix.to_vec(),
        range_end: prefix_end(prefix),
        ..Default::default()
    }));
    TableIterator::new(r.kvs.into_iter().map(|kv| {
        let v: serde_json::Value = serde_json::from_slice(&kv.value).unwrap_or_default();
        let s = |k: &str| v.get(k).and_then(|x| x.as_str()).map(str::to_string);
        let name = s("name")
            .unwrap_or_else(|| String::from_utf8_lossy(&kv.key[prefix.len()..]).into_owned());
        (
            name,
            s("host"),
            v.get("port")
                .and_then(|x| x.as_i64())
                .and_then(|p| i32::try_from(p).ok()),
            s("mode"),
            s("member_id"),
            v.get("in_recovery").and_then(|x| x.as_bool()),
            s("server_version"),
            kv.lease,
        )
    }))
}

/// One row: the raft log of the member serving this session.
#[pg_extern]
#[allow(clippy::type_complexity)]
fn pgraft_log_get_stats() -> TableIterator<
    'static,
    (
        name!(node_id, i64),
        name!(first_index, i64),
        name!(last_index, i64),
        name!(commit_index, i64),
        name!(applied_index, i64),
        name!(snapshot_index, i64),
        name!(entries, i64),
        name!(current_term, i64),
    ),
> {
    let s = or_raise(raft_status());
    let entries = (s.last_index + 1).saturating_sub(s.first_index);
    TableIterator::once((
        s.id as i64,
        s.first_index as i64,
        s.last_index as i64,
        s.commit_index as i64,
        s.applied_index as i64,
        s.snapshot_index as i64,
        entries as i64,
        s.term as i64,
    ))
}

/// The leader's status, asked of the leader itself when this member is not it.
fn leader_status() -> Result<RaftStatusResponse> {
    let s = raft_status()?;
    if s.leader == s.id && s.leader != 0 {
        return Ok(s);
    }
    if s.leader == 0 {
        return Err(Failure::Status(tonic::Status::unavailable(
            "etcdserver: no leader",
        )));
    }
    let members = members()?;
    let leader = members
        .iter()
        .find(|m| m.id == s.leader)
        .ok_or_else(|| Failure::Status(tonic::Status::not_found("etcdserver: member not found")))?;
    let mut last =
        Failure::Unreachable(format!("the leader ({}) serves no client URL", leader.name));
    for url in &leader.client_ur_ls {
        let r = client::call_at(url, |ch| async move {
            AdminClient::new(ch).raft_status(RaftStatusRequest {}).await
        });
        match r {
            Ok(st) => return Ok(st),
            Err(e) => last = e,
        }
    }
    Err(Failure::Unreachable(format!(
        "cannot reach the leader ({}) at {}: {} (set pgraft.client_address on every member, or ask the leader)",
        leader.name,
        leader.client_ur_ls.join(","),
        last.message()
    )))
}

/// A row per follower (and learner): how far its log matches the leader's, as the leader
/// sees it.
#[pg_extern]
#[allow(clippy::type_complexity)]
fn pgraft_log_get_replication_status() -> TableIterator<
    'static,
    (
        name!(node_id, i64),
        name!(member_id, String),
        name!(name, String),
        name!(match_index, i64),
        name!(next_index, i64),
        name!(lag, i64),
        name!(state, String),
        name!(recent_active, bool),
        name!(is_learner, bool),
    ),
> {
    let leader = or_raise(leader_status());
    let members = or_raise(members());
    let name_of = |id: u64| {
        members
            .iter()
            .find(|m| m.id == id)
            .map(|m| m.name.clone())
            .unwrap_or_default()
    };
    let rows: Vec<_> = leader
        .progress
        .iter()
        .map(|p| {
            (
                p.id as i64,
                hex(p.id),
                name_of(p.id),
                p.match_index as i64,
                p.next_index as i64,
                leader.last_index.saturating_sub(p.match_index) as i64,
                p.state.clone(),
                p.recent_active,
                p.is_learner,
            )
        })
        .collect();
    TableIterator::new(rows)
}

/// Adds a member with ID `node_id` whose peer address is `address:port` (a voter, or a
/// learner). The new server then starts with `pgraft.initial_cluster_state = 'existing'`.
#[pg_extern]
fn pgraft_add_node(
    node_id: i64,
    address: &str,
    port: i32,
    is_learner: default!(bool, false),
) -> bool {
    if node_id == 0 {
        Failure::Config("node_id must not be 0".into()).raise();
    }
    if !(1..=65535).contains(&port) {
        Failure::Config(format!("port {port} is out of range (1..65535)")).raise();
    }
    let address = address.trim();
    if address.is_empty() {
        Failure::Config("address must not be empty".into()).raise();
    }
    let host = if address.contains(':') && !address.starts_with('[') {
        format!("[{address}]")
    } else {
        address.to_string()
    };
    // The new member speaks the scheme this server's own member does (https:// peers when
    // the cluster's peer links use TLS).
    let scheme = match crate::settings::mode() {
        Ok(crate::settings::Mode::Member(m)) if m.listen_peer_url.starts_with("https://") => {
            "https"
        }
        _ => "http",
    };
    let req = MemberAddWithIdRequest {
        id: node_id as u64,
        peer_ur_ls: vec![format!("{scheme}://{host}:{port}")],
        is_learner,
    };
    or_raise(call(|ch| {
        let req = req.clone();
        async move { AdminClient::new(ch).member_add_with_id(req).await }
    }));
    true
}

/// Removes the member `node_id` from the cluster.
#[pg_extern]
fn pgraft_remove_node(node_id: i64) -> bool {
    let req = MemberRemoveRequest { id: node_id as u64 };
    or_raise(call(|ch| async move {
        ClusterClient::new(ch).member_remove(req).await
    }));
    true
}

/// The extension's version and the etcd API version it speaks.
#[pg_extern]
fn pgraft_version() -> String {
    format!(
        "pgraft {} (etcd API {})",
        env!("CARGO_PKG_VERSION"),
        pgraft_server::config::ETCD_VERSION
    )
}
