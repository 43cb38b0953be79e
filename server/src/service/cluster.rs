//! Membership and leadership requests (etcd's `Cluster` service and MoveLeader): validated here,
//! then proposed as raft conf changes (or member updates) and answered once applied.

use super::EtcdServer;
use crate::apply::Applied;
use crate::config::parse_url;
use crate::error::{Error, Result};
use crate::membership::member_id;
use crate::request::{ConfChangeContext, Op};
use etcd_proto::etcdserverpb::*;
use etcd_proto::pgraftpb::{FollowerProgress, RaftStatusResponse};
use prost::Message;
use raft::eraftpb::{ConfChangeSingle, ConfChangeType, ConfChangeV2};
use raft::StateRole;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// A learner may be promoted once it has this share of the leader's log.
const PROMOTE_READY: f64 = 0.9;
/// At most this many learners at once (etcd 3.4/3.5's hard limit).
const MAX_LEARNERS: usize = 1;
/// With `--strict-reconfig-check`, voting members must have been connected this long before
/// a reconfiguration (etcd's `HealthInterval`).
const HEALTH_INTERVAL: Duration = Duration::from_secs(5);

/// A member that has published its name has started (etcd's `IsStarted`).
fn is_started(m: &Member) -> bool {
    !m.name.is_empty()
}

/// etcd's quorum-of-started rule: `started` of `members` voters can form a quorum.
fn quorum_started(members: usize, started: usize) -> bool {
    started > members / 2
}

impl EtcdServer {
    async fn propose_conf_change(
        &self,
        change: ConfChangeType,
        node_id: u64,
        member: Option<Member>,
    ) -> Result<Vec<Member>> {
        let id = self.ids.next();
        let mut single = ConfChangeSingle::default();
        single.set_change_type(change);
        single.node_id = node_id;
        let mut cc = ConfChangeV2::default();
        cc.set_changes(vec![single].into());
        cc.context = ConfChangeContext {
            request_id: id,
            member,
        }
        .encode_to_vec()
        .into();
        let rx = self.wait.register(id);
        if let Err(e) = self.raft.propose_conf_change(id, cc) {
            self.wait.cancel(id);
            return Err(e);
        }
        match self.await_applied(id, rx).await? {
            Applied::Members(m) => Ok(m),
            other => Err(Error::Internal(format!(
                "pgraft: unexpected apply result {other:?}"
            ))),
        }
    }

    fn voters(&self) -> Vec<Member> {
        let mut v = self.membership.members();
        v.retain(|m| !m.is_learner);
        v
    }

    /// Whether this member has heard from `id` without a gap since `since` (itself: always).
    fn connected_since(&self, id: u64, since: Option<Instant>) -> bool {
        id == self.member_id()
            || matches!(
                (self.raft.transport.active_since(id), since),
                (Some(t), Some(s)) if t <= s
            )
    }

    fn health_since() -> Option<Instant> {
        Instant::now().checked_sub(HEALTH_INTERVAL)
    }

    /// etcd's `mayAddMember`: a new voter must leave a quorum of started members, and every
    /// voting member must have been connected for [`HEALTH_INTERVAL`].
    fn may_add_member(&self, is_learner: bool) -> Result<()> {
        if !self.cfg.strict_reconfig_check {
            return Ok(());
        }
        let voters = self.voters();
        if !is_learner {
            let members = voters.len() + 1;
            let started = voters.iter().filter(|m| is_started(m)).count();
            // Adding a second member to a lone one (restoring a cluster) is allowed.
            let restoring = started == 1 && members == 2;
            if !restoring && !quorum_started(members, started) {
                return Err(Error::NotEnoughStartedMembers);
            }
        }
        let since = Self::health_since();
        if !voters.iter().all(|m| self.connected_since(m.id, since)) {
            return Err(Error::Unhealthy);
        }
        Ok(())
    }

    /// etcd's `mayRemoveMember`: learners and disconnected members may always go; removing a
    /// connected voter must leave a connected quorum.
    fn may_remove_member(&self, id: u64) -> Result<()> {
        if !self.cfg.strict_reconfig_check || self.membership.get(id).is_some_and(|m| m.is_learner)
        {
            return Ok(());
        }
        let voters = self.voters();
        let rest = voters.iter().filter(|m| m.id != id);
        let (members, started) =
            rest.fold((0, 0), |(n, s), m| (n + 1, s + usize::from(is_started(m))));
        if !quorum_started(members, started) {
            return Err(Error::NotEnoughStartedMembers);
        }
        if id != self.member_id() && self.raft.transport.active_since(id).is_none() {
            return Ok(());
        }
        let since = Self::health_since();
        let active = voters
            .iter()
            .filter(|m| self.connected_since(m.id, since))
            .count();
        if active.saturating_sub(1) < 1 + (voters.len().saturating_sub(1)) / 2 {
            return Err(Error::Unhealthy);
        }
        Ok(())
    }

    /// etcd's `mayPromoteMember`: the voters plus the learner must have a started quorum.
    fn may_promote_member(&self) -> Result<()> {
        if !self.cfg.strict_reconfig_check {
            return Ok(());
        }
        let voters = self.voters();
        let started = voters.iter().filter(|m| is_started(m)).count() + 1;
        if !quorum_started(voters.len() + 1, started) {
            return Err(Error::NotEnoughStartedMembers);
        }
        Ok(())
    }

    fn check_peer_urls(&self, urls: &[String], except: Option<u64>) -> Result<()> {
        if urls.is_empty() || urls.iter().any(|u| parse_url(u).is_err()) {
            return Err(Error::MemberBadUrls);
        }
        let taken = self
            .membership
            .members()
            .into_iter()
            .any(|m| Some(m.id) != except && m.peer_ur_ls.iter().any(|u| urls.contains(u)));
        if taken {
            return Err(Error::PeerUrlExist);
        }
        Ok(())
    }

    pub async fn member_add(&self, r: MemberAddRequest) -> Result<MemberAddResponse> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let id = member_id(&r.peer_ur_ls, &self.cfg.initial_cluster_token, Some(now));
        self.add_member(id, r.peer_ur_ls, r.is_learner).await
    }

    /// MemberAdd under an ID the caller chose (pgraft's Admin API; the PostgreSQL extension's
    /// `pgraft_add_node`). The joining member adopts it by its peer URLs.
    pub async fn member_add_with_id(
        &self,
        id: u64,
        peer_urls: Vec<String>,
        is_learner: bool,
    ) -> Result<MemberAddResponse> {
        if id == 0 {
            return Err(Error::Remote(
                tonic::Code::InvalidArgument,
                "pgraft: member ID must not be 0".into(),
            ));
        }
        if self.membership.is_removed(id) {
            return Err(Error::Remote(
                tonic::Code::FailedPrecondition,
                format!(
                    "pgraft: member ID {id:x} was removed from this cluster and cannot be reused"
                ),
            ));
        }
        self.add_member(id, peer_urls, is_learner).await
    }

    async fn add_member(
        &self,
        id: u64,
        peer_urls: Vec<String>,
        is_learner: bool,
    ) -> Result<MemberAddResponse> {
        self.check_not_learner()?;
        self.may_add_member(is_learner)?;
        // etcd's order: the ID, the peer URLs, then the learner limit.
        let members = self.membership.members();
        if members.iter().any(|m| m.id == id) {
            return Err(Error::MemberExist);
        }
        self.check_peer_urls(&peer_urls, None)?;
        if is_learner && members.iter().filter(|m| m.is_learner).count() >= MAX_LEARNERS {
            return Err(Error::TooManyLearners);
        }
        let member = Member {
            id,
            name: String::new(),
            peer_ur_ls: peer_urls,
            client_ur_ls: Vec::new(),
            is_learner,
        };
        let change = if is_learner {
            ConfChangeType::AddLearnerNode
        } else {
            ConfChangeType::AddNode
        };
        let members = self
            .propose_conf_change(change, id, Some(member.clone()))
            .await?;
        Ok(MemberAddResponse {
            header: Some(self.header(0)),
            member: Some(member),
            members,
        })
    }

    pub async fn member_remove(&self, r: MemberRemoveRequest) -> Result<MemberRemoveResponse> {
        self.check_not_learner()?;
        let Some(target) = self.membership.get(r.id) else {
            return Err(Error::MemberNotFound);
        };
        // Raft refuses to remove the last voter (the proposal would only time out): refused
        // here whatever --strict-reconfig-check says.
        if !target.is_learner && self.voters().len() == 1 {
            return Err(Error::NotEnoughStartedMembers);
        }
        self.may_remove_member(r.id)?;
        let members = self
            .propose_conf_change(ConfChangeType::RemoveNode, r.id, None)
            .await?;
        Ok(MemberRemoveResponse {
            header: Some(self.header(0)),
            members,
        })
    }

    pub async fn member_update(&self, r: MemberUpdateRequest) -> Result<MemberUpdateResponse> {
        self.check_not_learner()?;
        if self.membership.get(r.id).is_none() {
            return Err(Error::MemberNotFound);
        }
        self.check_peer_urls(&r.peer_ur_ls, Some(r.id))?;
        let m = Member {
            id: r.id,
            peer_ur_ls: r.peer_ur_ls,
            ..Default::default()
        };
        let members = match self.propose(Op::MemberUpdate(m)).await? {
            Applied::Members(m) => m,
            other => {
                return Err(Error::Internal(format!(
                    "pgraft: unexpected apply result {other:?}"
                )))
            }
        };
        Ok(MemberUpdateResponse {
            header: Some(self.header(0)),
            members,
        })
    }

    /// Promotes a learner that has caught up; decided by the leader (followers forward).
    pub async fn member_promote(&self, r: MemberPromoteRequest) -> Result<MemberPromoteResponse> {
        self.check_not_learner()?;
        if !self.raft.status.is_leader() {
            let mut resp = self.leader_client()?.member_promote(r).await?.into_inner();
            resp.header = Some(self.header(0));
            return Ok(resp);
        }
        let m = self.membership.get(r.id).ok_or(Error::MemberNotFound)?;
        if !m.is_learner {
            return Err(Error::MemberNotLearner);
        }
        self.may_promote_member()?;
        let progress = self.raft.report().await?.progress;
        let matched = |id| {
            progress
                .iter()
                .find(|p| p.id == id)
                .map_or(0, |p| p.matched)
        };
        let (leader_match, learner_match) = (matched(self.member_id()), matched(r.id));
        if (learner_match as f64) < PROMOTE_READY * leader_match as f64 {
            return Err(Error::LearnerNotReady);
        }
        let member = Member {
            is_learner: false,
            ..m
        };
        let members = self
            .propose_conf_change(ConfChangeType::AddNode, r.id, Some(member))
            .await?;
        Ok(MemberPromoteResponse {
            header: Some(self.header(0)),
            members,
        })
    }

    pub async fn member_list(&self, r: MemberListRequest) -> Result<MemberListResponse> {
        self.check_not_learner()?;
        if r.linearizable {
            self.linearizable_barrier().await?;
        }
        Ok(MemberListResponse {
            header: Some(self.header(0)),
            members: self.membership.members(),
        })
    }

    /// MoveLeader: on the leader, hands leadership to a voting member and waits for it.
    pub async fn move_leader(&self, r: MoveLeaderRequest) -> Result<MoveLeaderResponse> {
        self.check_not_learner()?;
        if !self.raft.status.is_leader() {
            return Err(Error::NotLeader);
        }
        match self.membership.get(r.target_id) {
            Some(m) if !m.is_learner => {}
            _ => return Err(Error::BadLeaderTransferee),
        }
        if r.target_id == self.member_id() {
            return Ok(MoveLeaderResponse { header: None });
        }
        self.raft.transfer_leader(r.target_id)?;
        let deadline = tokio::time::Instant::now() + self.cfg.request_timeout();
        while tokio::time::Instant::now() < deadline {
            if self.raft.status.leader() == r.target_id {
                return Ok(MoveLeaderResponse { header: None });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Err(Error::LeaderTransferTimeout)
    }

    /// Publishes this member's name and client URLs through the log (etcd's `publish`),
    /// retrying until it is applied or `stop` fires.
    pub async fn publish_attributes(&self) {
        let me = Member {
            id: self.member_id(),
            name: self.cfg.name.clone(),
            client_ur_ls: self.cfg.advertise_client_urls(),
            ..Default::default()
        };
        loop {
            match self.propose(Op::MemberAttributes(me.clone())).await {
                Ok(_) => {
                    tracing::info!("published member attributes");
                    return;
                }
                Err(e) => {
                    tracing::debug!(error = %e, "publishing member attributes, will retry");
                    // Clients are served once this is applied. Without a leader (a member just
                    // started), the retry goes as soon as one is known, which the leader's
                    // first heartbeat tells; otherwise after 200 ms.
                    let leader = || self.raft.status.leader.load(Ordering::Acquire);
                    let retry = tokio::time::Instant::now() + Duration::from_millis(200);
                    if leader() != 0 {
                        tokio::time::sleep_until(retry).await;
                    }
                    while leader() == 0 && tokio::time::Instant::now() < retry {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                }
            }
        }
    }
}

impl EtcdServer {
    /// pgraft's Admin.RaftStatus: this member's raft view, with followers' progress on the
    /// leader. Served by any member, learners included, without a leader.
    pub async fn raft_status(&self) -> Result<RaftStatusResponse> {
        let rep = self.raft.report().await?;
        let st = &self.raft.status;
        let role = match rep.role {
            _ if st.is_learner() => "learner",
            StateRole::Leader => "leader",
            StateRole::Follower => "follower",
            StateRole::Candidate => "candidate",
            StateRole::PreCandidate => "pre-candidate",
        };
        Ok(RaftStatusResponse {
            header: Some(self.header(0)),
            id: self.member_id(),
            role: role.into(),
            leader: st.leader(),
            term: st.term(),
            commit_index: st.commit_index(),
            applied_index: st.applied_index(),
            first_index: rep.first_index,
            last_index: rep.last_index,
            // The log starts right after the last compaction.
            snapshot_index: rep.first_index.saturating_sub(1),
            elections: st.elections.load(Ordering::Relaxed),
            leader_changes: crate::metrics::LEADER_CHANGES.get(),
            progress: rep
                .progress
                .into_iter()
                .filter(|p| p.id != self.member_id())
                .map(|p| FollowerProgress {
                    id: p.id,
                    match_index: p.matched,
                    next_index: p.next_idx,
                    state: p.state.into(),
                    recent_active: p.recent_active,
                    is_learner: p.is_learner,
                })
                .collect(),
        })
    }
}
