//! The cluster routes: an overview of every member as it sees itself (role, term, log indexes,
//! health, database size) with the leader's view of each follower's replication, the member
//! list and its changes (add, remove, promote), leader transfer, and the recent leader changes.
//!
//! The overview asks each other member over its advertised client URL (pgraft's
//! `Admin.RaftStatus` and etcd's `Maintenance.Status`, as `etcdctl endpoint status` does),
//! all at once and each within [`PROBE_TIMEOUT`], so one dead member makes it no slower than
//! that and shows as unhealthy.

use super::access::{authorize, Need};
use super::body::JsonBody;
use super::error::{ApiError, ErrorBody};
use super::{Api, Server};
use crate::config::{ETCD_VERSION, PGRAFT_VERSION};
use crate::raft::leader_log::LeaderChange;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::Json;
use etcd_proto::etcdserverpb::maintenance_client::MaintenanceClient;
use etcd_proto::etcdserverpb::{
    Member, MemberAddRequest, MemberListRequest, MemberPromoteRequest, MemberRemoveRequest,
    MoveLeaderRequest, StatusRequest, StatusResponse,
};
use etcd_proto::pgraftpb::admin_client::AdminClient;
use etcd_proto::pgraftpb::{RaftStatusRequest, RaftStatusResponse};
use serde::{Deserialize, Serialize};
use std::time::Duration;
use tonic::metadata::MetadataValue;
use utoipa::ToSchema;

/// How long the overview waits for another member's answer.
const PROBE_TIMEOUT: Duration = Duration::from_millis(800);

pub(super) fn routes(api: Api) -> Api {
    api.on(Method::GET, "/admin/v1/cluster", overview)
        .on(Method::GET, "/admin/v1/members", list_members)
        .on(Method::POST, "/admin/v1/members", add_member)
        .on(Method::DELETE, "/admin/v1/members/{id}", remove_member)
        .on(
            Method::POST,
            "/admin/v1/members/{id}/promote",
            promote_member,
        )
        .on(Method::POST, "/admin/v1/leader", transfer_leader)
        .on(Method::GET, "/admin/v1/leader/history", leader_history)
}

/// A member ID as etcdctl prints it: lower-case hex.
pub(super) fn hex_id(id: u64) -> String {
    format!("{id:x}")
}

/// Parses a member ID given in hex (as etcdctl prints it).
pub(super) fn parse_id(s: &str) -> Result<u64, ApiError> {
    let t = s.trim();
    if t.is_empty() || t.len() > 16 || !t.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(ApiError::bad_request(format!(
            "member ID {s:?} is not 1 to 16 hex digits"
        )));
    }
    match u64::from_str_radix(t, 16) {
        Ok(0) | Err(_) => Err(ApiError::bad_request(format!(
            "member ID {s:?} is not a non-zero hex number"
        ))),
        Ok(id) => Ok(id),
    }
}

/// A member as the membership lists it.
#[derive(Debug, Serialize, ToSchema)]
pub struct MemberInfo {
    /// Member ID, hex.
    pub id: String,
    /// Empty until the member has started and published it.
    pub name: String,
    pub peer_urls: Vec<String>,
    pub client_urls: Vec<String>,
    pub is_learner: bool,
}

impl From<&Member> for MemberInfo {
    fn from(m: &Member) -> MemberInfo {
        MemberInfo {
            id: hex_id(m.id),
            name: m.name.clone(),
            peer_urls: m.peer_ur_ls.clone(),
            client_urls: m.client_ur_ls.clone(),
            is_learner: m.is_learner,
        }
    }
}

fn member_infos(ms: &[Member]) -> Vec<MemberInfo> {
    ms.iter().map(MemberInfo::from).collect()
}

/// A follower's replication progress, as the leader tracks it.
#[derive(Debug, Serialize, ToSchema)]
pub struct Progress {
    /// The highest log index known to be on the follower.
    pub match_index: u64,
    /// The next log index the leader sends it.
    pub next_index: u64,
    /// "probe", "replicate" or "snapshot".
    pub state: String,
    /// Whether the leader heard from it within the last election timeout.
    pub recent_active: bool,
    /// Entries the follower lacks of the leader's log.
    pub lag: u64,
}

/// One member in the overview: what the membership says, and what the member says of itself.
#[derive(Debug, Serialize, ToSchema)]
pub struct MemberStatus {
    #[serde(flatten)]
    pub member: MemberInfo,
    /// Answered, with a leader and no alarm.
    pub healthy: bool,
    /// Answered at all (false: unreachable or too slow).
    pub reachable: bool,
    /// Why it is not healthy (empty when it is).
    pub errors: Vec<String>,
    /// "leader", "follower", "learner", "candidate", "pre-candidate", or "unknown" when it did
    /// not answer.
    pub role: String,
    pub term: Option<u64>,
    /// The leader this member follows, hex ("" when it knows none).
    pub leader: Option<String>,
    pub commit_index: Option<u64>,
    pub applied_index: Option<u64>,
    /// Bytes of the database on disk, and the part in use.
    pub db_size: Option<i64>,
    pub db_size_in_use: Option<i64>,
    /// The etcd API version it reports.
    pub version: Option<String>,
    /// Elections it started since it started.
    pub elections: Option<u64>,
    /// Only for followers and learners, from the leader: its replication progress.
    pub progress: Option<Progress>,
}

/// The whole cluster at a glance.
#[derive(Debug, Serialize, ToSchema)]
pub struct ClusterOverview {
    /// Cluster ID, hex.
    pub cluster_id: String,
    /// The member that answered, hex.
    pub member_id: String,
    /// The leader, hex, as the answering member knows it ("" when none).
    pub leader: String,
    /// The answering member's raft term.
    pub term: u64,
    /// etcd API version, and pgraft's own version.
    pub version: String,
    pub server_version: String,
    /// Whether etcd auth is enabled (writes then need an etcd token).
    pub auth_enabled: bool,
    /// Whether the admin API takes writes with an admin token (`--admin-token`).
    pub admin_token_configured: bool,
    pub members: Vec<MemberStatus>,
}

/// The member list.
#[derive(Debug, Serialize, ToSchema)]
pub struct MemberList {
    pub members: Vec<MemberInfo>,
}

/// A new member.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddMember {
    /// Its peer URLs (at least one), e.g. `http://10.0.0.4:2380`.
    pub peer_urls: Vec<String>,
    /// Join as a learner (a non-voting member that can be promoted later).
    #[serde(default)]
    pub learner: bool,
}

/// The member added, and the member list with it.
#[derive(Debug, Serialize, ToSchema)]
pub struct MemberAdded {
    pub member: MemberInfo,
    pub members: Vec<MemberInfo>,
}

/// Hand leadership to a voting member.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TransferLeader {
    /// The member to lead, hex.
    #[schema(pattern = "^[0-9a-fA-F]{1,16}$")]
    pub target: String,
}

/// The leader after a transfer.
#[derive(Debug, Serialize, ToSchema)]
pub struct LeaderIs {
    /// Hex.
    pub leader: String,
}

/// One change of the leader, as the answering member saw it.
#[derive(Debug, Serialize, ToSchema)]
pub struct LeaderChangeView {
    /// When, in milliseconds since the Unix epoch (this member's clock).
    pub at_ms: u64,
    pub term: u64,
    /// The leader before and after, hex ("" for none: an election was under way).
    pub from: String,
    pub to: String,
}

impl From<LeaderChange> for LeaderChangeView {
    fn from(c: LeaderChange) -> Self {
        let h = |id: u64| if id == 0 { String::new() } else { hex_id(id) };
        LeaderChangeView {
            at_ms: c.at_ms,
            term: c.term,
            from: h(c.from),
            to: h(c.to),
        }
    }
}

/// The recent leader changes and election counts of the answering member.
#[derive(Debug, Serialize, ToSchema)]
pub struct LeaderHistory {
    /// The answering member, hex.
    pub member_id: String,
    /// Elections this member started since it started.
    pub elections: u64,
    /// Leader changes this process saw since it started.
    pub leader_changes: u64,
    /// The last changes (at most 64), oldest first.
    pub changes: Vec<LeaderChangeView>,
}

/// What one member says of itself (or why it said nothing).
type Probe = Result<(RaftStatusResponse, StatusResponse), String>;

async fn probe_remote(url: String) -> Probe {
    let ask = async {
        let ch = tonic::transport::Endpoint::from_shared(url.clone())
            .map_err(|e| format!("bad client URL {url}: {e}"))?
            .connect_timeout(PROBE_TIMEOUT)
            .timeout(PROBE_TIMEOUT)
            .connect()
            .await
            .map_err(|e| format!("cannot reach {url}: {e}"))?;
        let raft = AdminClient::new(ch.clone())
            .raft_status(RaftStatusRequest {})
            .await
            .map_err(|e| format!("{url}: {}", e.message()))?
            .into_inner();
        let status = MaintenanceClient::new(ch)
            .status(StatusRequest {})
            .await
            .map_err(|e| format!("{url}: {}", e.message()))?
            .into_inner();
        Ok((raft, status))
    };
    match tokio::time::timeout(PROBE_TIMEOUT * 2, ask).await {
        Ok(r) => r,
        Err(_) => Err(format!("{url}: no answer within {PROBE_TIMEOUT:?}")),
    }
}

async fn probe(s: &Server, m: &Member) -> Probe {
    if m.id == s.member_id() {
        // The raft loop answers a report between its turns; a stuck loop is an answer too.
        let raft = tokio::time::timeout(PROBE_TIMEOUT * 2, s.raft_status())
            .await
            .map_err(|_| format!("no raft status within {:?}", PROBE_TIMEOUT * 2))?
            .map_err(|e| e.to_string())?;
        return Ok((raft, s.status()));
    }
    match m.client_ur_ls.first() {
        Some(url) => probe_remote(url.clone()).await,
        None => Err("the member has not published its client URLs (not started yet)".into()),
    }
}

#[utoipa::path(get, path = "/admin/v1/cluster", tag = "cluster",
    responses(
        (status = 200, description = "Every member's state", body = ClusterOverview),
        (status = 401, description = "Auth is on and no valid token was sent", body = ErrorBody),
        (status = 503, description = "This member cannot answer", body = ErrorBody)))]
pub(super) async fn overview(
    State(s): State<Server>,
    headers: HeaderMap,
) -> Result<Json<ClusterOverview>, ApiError> {
    authorize(&s, &headers, Need::Read).await?;
    let members = s.membership.members();
    let probes = futures::future::join_all(members.iter().map(|m| probe(&s, m))).await;
    // The leader's view of its followers.
    let leader_view = probes
        .iter()
        .filter_map(|p| p.as_ref().ok())
        .find(|(r, _)| r.role == "leader")
        .map(|(r, _)| r.clone());
    let out = members
        .iter()
        .zip(probes)
        .map(|(m, p)| member_status(m, p, leader_view.as_ref()))
        .collect();
    let leader = s.raft.status.leader();
    Ok(Json(ClusterOverview {
        cluster_id: hex_id(s.cluster_id()),
        member_id: hex_id(s.member_id()),
        leader: if leader == 0 {
            String::new()
        } else {
            hex_id(leader)
        },
        term: s.raft.status.term(),
        version: ETCD_VERSION.into(),
        server_version: PGRAFT_VERSION.into(),
        auth_enabled: s.auth.is_enabled(),
        admin_token_configured: s.cfg.admin_token.is_some(),
        members: out,
    }))
}

fn member_status(m: &Member, p: Probe, leader: Option<&RaftStatusResponse>) -> MemberStatus {
    let progress = leader.and_then(|l| {
        let f = l.progress.iter().find(|f| f.id == m.id)?;
        Some(Progress {
            match_index: f.match_index,
            next_index: f.next_index,
            state: f.state.clone(),
            recent_active: f.recent_active,
            lag: l.last_index.saturating_sub(f.match_index),
        })
    });
    let mut out = MemberStatus {
        member: MemberInfo::from(m),
        healthy: false,
        reachable: false,
        errors: Vec::new(),
        role: "unknown".into(),
        term: None,
        leader: None,
        commit_index: None,
        applied_index: None,
        db_size: None,
        db_size_in_use: None,
        version: None,
        elections: None,
        progress,
    };
    match p {
        Err(e) => out.errors.push(e),
        Ok((raft, status)) => {
            out.reachable = true;
            out.healthy = status.errors.is_empty();
            out.errors = status.errors;
            out.role = raft.role;
            out.term = Some(raft.term);
            out.leader = Some(if raft.leader == 0 {
                String::new()
            } else {
                hex_id(raft.leader)
            });
            out.commit_index = Some(raft.commit_index);
            out.applied_index = Some(raft.applied_index);
            out.db_size = Some(status.db_size);
            out.db_size_in_use = Some(status.db_size_in_use);
            out.version = Some(status.version);
            out.elections = Some(raft.elections);
        }
    }
    out
}

#[utoipa::path(get, path = "/admin/v1/members", tag = "cluster",
    responses(
        (status = 200, description = "The member list (this member's view)", body = MemberList),
        (status = 401, description = "Auth is on and no valid token was sent", body = ErrorBody),
        (status = 503, description = "This member cannot answer (a learner)", body = ErrorBody)))]
pub(super) async fn list_members(
    State(s): State<Server>,
    headers: HeaderMap,
) -> Result<Json<MemberList>, ApiError> {
    authorize(&s, &headers, Need::Read).await?;
    let r = s
        .member_list(MemberListRequest {
            linearizable: false,
        })
        .await?;
    Ok(Json(MemberList {
        members: member_infos(&r.members),
    }))
}

#[utoipa::path(post, path = "/admin/v1/members", tag = "cluster", request_body = AddMember,
    security(("token" = [])),
    responses(
        (status = 201, description = "Added; start the new member with --initial-cluster-state existing", body = MemberAdded),
        (status = 400, description = "Bad peer URLs or body", body = ErrorBody),
        (status = 401, description = "No or a wrong credential", body = ErrorBody),
        (status = 403, description = "Not permitted (not root, or writes are off)", body = ErrorBody),
        (status = 409, description = "Conflicts with the cluster: URL taken, too many learners, not enough started members", body = ErrorBody),
        (status = 413, description = "The body is too large", body = ErrorBody),
        (status = 503, description = "No leader, or the cluster is unhealthy", body = ErrorBody)))]
pub(super) async fn add_member(
    State(s): State<Server>,
    headers: HeaderMap,
    body: Result<JsonBody<AddMember>, ApiError>,
) -> Result<(StatusCode, Json<MemberAdded>), ApiError> {
    authorize(&s, &headers, Need::Admin).await?;
    let JsonBody(add) = body?;
    let r = s
        .member_add(MemberAddRequest {
            peer_ur_ls: add.peer_urls,
            is_learner: add.learner,
        })
        .await?;
    let member =
        r.member.as_ref().map(MemberInfo::from).ok_or_else(|| {
            ApiError::from(crate::error::Error::Internal("no member added".into()))
        })?;
    Ok((
        StatusCode::CREATED,
        Json(MemberAdded {
            member,
            members: member_infos(&r.members),
        }),
    ))
}

#[utoipa::path(delete, path = "/admin/v1/members/{id}", tag = "cluster",
    params(("id" = String, Path, description = "Member ID, hex", pattern = "^[0-9a-fA-F]{1,16}$")),
    security(("token" = [])),
    responses(
        (status = 200, description = "Removed; the remaining members", body = MemberList),
        (status = 400, description = "Not a member ID", body = ErrorBody),
        (status = 401, description = "No or a wrong credential", body = ErrorBody),
        (status = 403, description = "Not permitted", body = ErrorBody),
        (status = 404, description = "No such member", body = ErrorBody),
        (status = 409, description = "Removing it would leave no quorum (the last voter, say)", body = ErrorBody),
        (status = 503, description = "No leader, or the cluster is unhealthy", body = ErrorBody)))]
pub(super) async fn remove_member(
    State(s): State<Server>,
    headers: HeaderMap,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<MemberList>, ApiError> {
    authorize(&s, &headers, Need::Admin).await?;
    let id = parse_id(&id?.0)?;
    let r = s.member_remove(MemberRemoveRequest { id }).await?;
    Ok(Json(MemberList {
        members: member_infos(&r.members),
    }))
}

#[utoipa::path(post, path = "/admin/v1/members/{id}/promote", tag = "cluster",
    params(("id" = String, Path, description = "Member ID, hex", pattern = "^[0-9a-fA-F]{1,16}$")),
    security(("token" = [])),
    responses(
        (status = 200, description = "Promoted to a voter; the members", body = MemberList),
        (status = 400, description = "Not a member ID", body = ErrorBody),
        (status = 401, description = "No or a wrong credential", body = ErrorBody),
        (status = 403, description = "Not permitted", body = ErrorBody),
        (status = 404, description = "No such member", body = ErrorBody),
        (status = 409, description = "Not a learner, or not caught up with the leader yet", body = ErrorBody),
        (status = 503, description = "No leader", body = ErrorBody)))]
pub(super) async fn promote_member(
    State(s): State<Server>,
    headers: HeaderMap,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<MemberList>, ApiError> {
    authorize(&s, &headers, Need::Admin).await?;
    let id = parse_id(&id?.0)?;
    let r = s.member_promote(MemberPromoteRequest { id }).await?;
    Ok(Json(MemberList {
        members: member_infos(&r.members),
    }))
}

#[utoipa::path(post, path = "/admin/v1/leader", tag = "cluster", request_body = TransferLeader,
    security(("token" = [])),
    responses(
        (status = 200, description = "The target leads now", body = LeaderIs),
        (status = 400, description = "Not a member ID", body = ErrorBody),
        (status = 401, description = "No or a wrong credential", body = ErrorBody),
        (status = 403, description = "Not permitted", body = ErrorBody),
        (status = 404, description = "No such member", body = ErrorBody),
        (status = 409, description = "The target is a learner", body = ErrorBody),
        (status = 413, description = "The body is too large", body = ErrorBody),
        (status = 503, description = "No leader, or the transfer did not finish in time", body = ErrorBody)))]
pub(super) async fn transfer_leader(
    State(s): State<Server>,
    headers: HeaderMap,
    body: Result<JsonBody<TransferLeader>, ApiError>,
) -> Result<Json<LeaderIs>, ApiError> {
    authorize(&s, &headers, Need::Admin).await?;
    let JsonBody(t) = body?;
    let target = parse_id(&t.target)?;
    if s.membership.get(target).is_none() {
        return Err(crate::error::Error::MemberNotFound.into());
    }
    let req = MoveLeaderRequest { target_id: target };
    let leader = s.raft.status.leader();
    if leader == 0 {
        return Err(crate::error::Error::NoLeader.into());
    }
    if leader == s.member_id() {
        s.move_leader(req).await?;
    } else {
        forward_move_leader(&s, leader, &headers, req).await?;
    }
    Ok(Json(LeaderIs {
        leader: hex_id(target),
    }))
}

/// MoveLeader runs on the leader: a follower passes the call on to the leader's client URL as
/// a gRPC call with the caller's credential, so the leader's own checks decide.
async fn forward_move_leader(
    s: &Server,
    leader: u64,
    headers: &HeaderMap,
    req: MoveLeaderRequest,
) -> Result<(), ApiError> {
    let url = s
        .membership
        .get(leader)
        .and_then(|m| m.client_ur_ls.first().cloned())
        .ok_or(crate::error::Error::NoLeader)?;
    let ch = tonic::transport::Endpoint::from_shared(url.clone())
        .map_err(|e| ApiError::from(crate::error::Error::Internal(e.to_string())))?
        .connect_timeout(PROBE_TIMEOUT)
        .timeout(s.cfg.request_timeout())
        .connect()
        .await
        .map_err(|e| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                format!("cannot reach the leader at {url}: {e}"),
            )
        })?;
    let mut call = tonic::Request::new(req);
    // Only while etcd auth is on does the leader need the caller's token (the admin token
    // was checked here).
    if s.auth.is_enabled() {
        if let Some(v) = headers.get(axum::http::header::AUTHORIZATION) {
            if let Ok(v) = MetadataValue::try_from(v.as_bytes()) {
                call.metadata_mut().insert("authorization", v);
            }
        }
    }
    MaintenanceClient::new(ch).move_leader(call).await?;
    Ok(())
}

#[utoipa::path(get, path = "/admin/v1/leader/history", tag = "cluster",
    responses(
        (status = 200, description = "Recent leader changes seen by this member", body = LeaderHistory),
        (status = 401, description = "Auth is on and no valid token was sent", body = ErrorBody)))]
pub(super) async fn leader_history(
    State(s): State<Server>,
    headers: HeaderMap,
) -> Result<Json<LeaderHistory>, ApiError> {
    authorize(&s, &headers, Need::Read).await?;
    let st = &s.raft.status;
    Ok(Json(LeaderHistory {
        member_id: hex_id(s.member_id()),
        elections: st.elections.load(std::sync::atomic::Ordering::Relaxed),
        leader_changes: crate::metrics::LEADER_CHANGES.get(),
        changes: st
            .leader_log
            .recent()
            .into_iter()
            .map(LeaderChangeView::from)
            .collect(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_ids_are_hex() {
        assert_eq!(parse_id("8e9e05c52164694d").unwrap(), 0x8e9e05c52164694d);
        assert_eq!(parse_id(&hex_id(u64::MAX)).unwrap(), u64::MAX);
        for bad in ["", "0", "xyz", "11112222333344445", "-1", "+1f"] {
            assert!(parse_id(bad).is_err(), "{bad:?}");
        }
    }
}
