//! The request pipeline every face shares (etcd's `EtcdServer` v3 methods): validate, then
//! writes are proposed through raft and answered once applied; linearizable reads wait for a
//! ReadIndex, serializable reads are local. Faces only translate wire formats.

mod auth;
pub mod autocompact;
mod backup;
mod cluster;
mod concurrency;
pub(crate) use concurrency::prefix_end;
mod election;
mod idgen;
mod lock;

use crate::alarm::AlarmStore;
use crate::apply::{Applied, ApplyResult};
use crate::auth::{check, AuthStore, Caller};
use crate::backend::Backend;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::lease::{Lessor, MAX_LEASE_TTL};
use crate::membership::Membership;
use crate::mvcc::{KvRead, Store};
use crate::raft::RaftHandle;
use crate::request::{InternalRequest, Op};
use crate::txn;
use crate::wait::Wait;
use crate::watch::WatchHub;
use etcd_proto::etcdserverpb::*;
pub use idgen::IdGen;
use prost::Message;
use std::sync::Arc;
use std::time::Duration;

pub struct EtcdServer {
    pub cfg: Config,
    pub backend: Backend,
    pub store: Arc<Store>,
    pub lessor: Arc<Lessor>,
    pub hub: Arc<WatchHub>,
    pub membership: Arc<Membership>,
    pub auth: Arc<AuthStore>,
    pub raft: RaftHandle,
    pub wait: Arc<Wait<ApplyResult>>,
    pub ids: IdGen,
    pub alarms: Arc<AlarmStore>,
}

/// A failpoint for the robustness tests (compat-tests/jepsen): with
/// `PGRAFT_FAILPOINT_LOCAL_READS=1` in its environment a member answers linearizable reads
/// from its own state, without a ReadIndex round: the stale-read bug their linearizability
/// checker must catch under a partition. Read once; never set it outside those tests.
fn local_reads_failpoint() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| {
        let on = std::env::var_os("PGRAFT_FAILPOINT_LOCAL_READS").is_some_and(|v| v == "1");
        if on {
            tracing::warn!(
                "PGRAFT_FAILPOINT_LOCAL_READS=1: linearizable reads are served from local state \
                 (a deliberate bug for tests)"
            );
        }
        on
    })
}

/// Unwraps the expected variant of an applied result.
macro_rules! expect_applied {
    ($res:expr, $variant:ident) => {
        match $res {
            $crate::apply::Applied::$variant(r) => Ok(r),
            other => Err(Error::Internal(format!(
                "pgraft: unexpected apply result {other:?}"
            ))),
        }
    };
}
pub(crate) use expect_applied;

mod maintenance;

impl EtcdServer {
    pub fn member_id(&self) -> u64 {
        self.membership.member_id
    }

    pub fn cluster_id(&self) -> u64 {
        self.membership.cluster_id
    }

    /// A full response header at store revision `revision` (0 leaves it out).
    pub fn header(&self, revision: i64) -> ResponseHeader {
        ResponseHeader {
            cluster_id: self.cluster_id(),
            member_id: self.member_id(),
            revision,
            raft_term: self.raft.status.term(),
        }
    }

    fn fill(&self, h: &mut Option<ResponseHeader>) {
        let rev = h.as_ref().map_or(0, |h| h.revision);
        *h = Some(self.header(rev));
    }

    /// Proposes a write that needs no user (member and lease bookkeeping).
    async fn propose(&self, op: Op) -> Result<Applied> {
        self.propose_as(&Caller::Anonymous, op).await
    }

    /// Proposes one write by `who` (stamped on the entry, for the applier's auth check) and
    /// waits until this member has applied it. Refused first, as etcd refuses it, while this
    /// member's apply lags its commit too far behind.
    async fn propose_as(&self, who: &Caller, op: Op) -> Result<Applied> {
        let st = &self.raft.status;
        check_apply_gap(st.commit_index(), st.applied_index())?;
        let id = self.ids.next();
        let (username, auth_revision, internal) = who.stamp();
        let data = InternalRequest {
            id,
            op: Some(op),
            proposer_term: 0,
            username,
            auth_revision,
            internal,
        }
        .encode_to_vec();
        if data.len() > self.cfg.max_request_bytes {
            return Err(Error::RequestTooLarge);
        }
        let _pending = crate::metrics::PendingProposal::start();
        let start = std::time::Instant::now();
        let rx = self.wait.register(id);
        if let Err(e) = self.raft.propose(id, data) {
            self.wait.cancel(id);
            crate::metrics::PROPOSALS_FAILED.inc();
            return Err(e);
        }
        let res = self.await_applied(id, rx).await;
        if !lost_on_the_way(&res) {
            crate::metrics::PROPOSAL_DURATION.since(start);
        }
        res
    }

    /// Waits for the applier to report on request `id`.
    async fn await_applied(
        &self,
        id: u64,
        rx: tokio::sync::oneshot::Receiver<ApplyResult>,
    ) -> Result<Applied> {
        let res = match tokio::time::timeout(self.cfg.request_timeout(), rx).await {
            Ok(Ok(res)) => res,
            Ok(Err(_)) => Err(Error::Stopped),
            Err(_) => {
                self.wait.cancel(id);
                Err(Error::Timeout)
            }
        };
        if lost_on_the_way(&res) {
            crate::metrics::PROPOSALS_FAILED.inc();
        }
        res
    }

    /// etcd's learner gate: a learner serves only Status and serializable Range.
    pub fn check_not_learner(&self) -> Result<()> {
        if self.raft.status.is_learner() {
            return Err(Error::NotSupportedForLearner);
        }
        Ok(())
    }

    /// A client to the current leader's peer service, for leader-only requests.
    fn leader_client(
        &self,
    ) -> Result<etcd_proto::pgraftpb::raft_peer_client::RaftPeerClient<tonic::transport::Channel>>
    {
        let leader = self.raft.status.leader();
        if leader == 0 {
            return Err(Error::NoLeader);
        }
        let ch = self.raft.transport.channel(leader).ok_or(Error::NoLeader)?;
        Ok(etcd_proto::pgraftpb::raft_peer_client::RaftPeerClient::new(
            ch,
        ))
    }

    /// A read view of the store. While a snapshot install replaces the stored state (on a
    /// member that fell behind), reads wait until it is done, within the request timeout.
    async fn read_view(&self) -> Result<crate::mvcc::ReadTxn<'_>> {
        let deadline = tokio::time::Instant::now() + self.cfg.request_timeout();
        loop {
            let index = match self.store.try_read() {
                Ok(view) => return Ok(view),
                Err(index) => index,
            };
            let wait = async {
                self.raft.status.wait_applied(index).await;
                // The applied index is raised once the views are reloaded; should it already
                // be past the snapshot's, do not spin.
                tokio::time::sleep(Duration::from_millis(5)).await;
            };
            if tokio::time::timeout_at(deadline, wait).await.is_err() {
                return Err(Error::Timeout);
            }
        }
    }

    /// Waits for a linearizable read point.
    async fn linearizable_barrier(&self) -> Result<()> {
        if local_reads_failpoint() {
            return Ok(());
        }
        match tokio::time::timeout(self.cfg.request_timeout(), self.raft.read_index()).await {
            Ok(r) => r.map(|_| ()),
            Err(_) => Err(Error::Timeout),
        }
    }

    pub async fn range(&self, who: &Caller, r: RangeRequest) -> Result<RangeResponse> {
        txn::check_range(&r)?;
        check::range(&self.auth, who, &r)?;
        if !r.serializable {
            self.check_not_learner()?;
            self.linearizable_barrier().await?;
        }
        let rr = self.read_view().await?.range(&r)?;
        Ok(RangeResponse {
            header: Some(self.header(rr.rev)),
            kvs: rr.kvs,
            more: rr.more,
            count: rr.count,
        })
    }

    pub async fn put(&self, who: &Caller, r: PutRequest) -> Result<PutResponse> {
        self.check_not_learner()?;
        txn::check_put_request(&r)?;
        check::put(&self.auth, &self.lessor, who, &r)?;
        self.check_quota(&r).await?;
        let mut resp = expect_applied!(self.propose_as(who, Op::Put(r)).await?, Put)?;
        self.fill(&mut resp.header);
        Ok(resp)
    }

    pub async fn delete_range(
        &self,
        who: &Caller,
        r: DeleteRangeRequest,
    ) -> Result<DeleteRangeResponse> {
        self.check_not_learner()?;
        txn::check_delete(&r)?;
        check::delete(&self.auth, who, &r)?;
        let op = Op::DeleteRange(r);
        let mut resp = expect_applied!(self.propose_as(who, op).await?, DeleteRange)?;
        self.fill(&mut resp.header);
        Ok(resp)
    }

    pub async fn txn(&self, who: &Caller, r: TxnRequest) -> Result<TxnResponse> {
        self.check_not_learner()?;
        txn::check_txn_request(&r, self.cfg.max_txn_ops)?;
        check::txn(&self.auth, &self.lessor, who, &r)?;
        let mut resp = if txn::is_read_only(&r) {
            // Not a proposal, so max-request-bytes does not apply (as in etcd).
            if !txn::is_serializable(&r) {
                self.linearizable_barrier().await?;
            }
            // A read-only txn runs locally, against one consistent view of the store, without
            // holding up the applier.
            txn::apply(&mut self.read_view().await?, &self.lessor, &r)?
        } else {
            self.check_quota(&r).await?;
            expect_applied!(self.propose_as(who, Op::Txn(r)).await?, Txn)?
        };
        self.fill(&mut resp.header);
        Ok(resp)
    }

    /// Compaction (no permission needed: etcd checks none).
    pub async fn compact(&self, who: &Caller, r: CompactionRequest) -> Result<CompactionResponse> {
        self.check_not_learner()?;
        let physical = r.physical;
        let rev = r.revision;
        let op = Op::Compaction(r);
        let mut resp = expect_applied!(self.propose_as(who, op).await?, Compaction)?;
        if physical {
            // etcd answers a physical compaction once this member dropped the history.
            self.store.wait_compacted(rev).await;
        }
        self.fill(&mut resp.header);
        Ok(resp)
    }

    pub async fn lease_grant(&self, mut r: LeaseGrantRequest) -> Result<LeaseGrantResponse> {
        self.check_not_learner()?;
        if r.ttl > MAX_LEASE_TTL {
            return Err(Error::LeaseTtlTooLarge);
        }
        self.check_quota(&r).await?;
        if r.id == 0 {
            r.id = self.ids.next_lease_id();
        }
        let mut resp = expect_applied!(self.propose(Op::LeaseGrant(r)).await?, LeaseGrant)?;
        self.fill(&mut resp.header);
        Ok(resp)
    }

    pub async fn lease_revoke(
        &self,
        who: &Caller,
        r: LeaseRevokeRequest,
    ) -> Result<LeaseRevokeResponse> {
        self.check_not_learner()?;
        check::lease_keys(&self.auth, &self.lessor, who, r.id)?;
        let op = Op::LeaseRevoke(r);
        let mut resp = expect_applied!(self.propose_as(who, op).await?, LeaseRevoke)?;
        self.fill(&mut resp.header);
        Ok(resp)
    }

    /// One keepalive: the renewed TTL, or `LeaseNotFound`. Only the leader keeps lease
    /// deadlines, so a follower forwards it.
    pub async fn lease_renew(&self, id: i64) -> Result<LeaseKeepAliveResponse> {
        self.check_not_learner()?;
        if !self.raft.status.is_leader() {
            let req = LeaseKeepAliveRequest { id };
            let resp = self.leader_client()?.lease_renew(req).await?;
            let mut resp = resp.into_inner();
            resp.header = Some(self.header(self.store.current_rev()));
            return Ok(resp);
        }
        self.lease_renew_local(id).await
    }

    /// A keepalive on the leader (from a client, or forwarded by a follower). Only once a
    /// quorum confirmed this member still leads (etcd's `ensureLeadership`): a leader cut off
    /// from its peers, or whose loop is stuck, believes it leads until it hears otherwise,
    /// and renewing there would tell the client its lease lives while the real leader
    /// expires it. On failure, etcd's `lease.ErrNotPrimary`, so the client tries elsewhere.
    pub async fn lease_renew_local(&self, id: i64) -> Result<LeaseKeepAliveResponse> {
        self.lease_state_as_leader(Error::NotPrimary).await?;
        let header = Some(self.header(self.store.current_rev()));
        let ttl = self.lessor.renew(id)?;
        Ok(LeaseKeepAliveResponse { header, id, ttl })
    }

    /// Confirms that this member leads now: a ReadIndex round (a quorum answered a heartbeat
    /// sent in the term this member leads in), and the same term still led after it. Bounded
    /// by the election timeout (1 s at least, for the ReadIndex retry of a leader that has not
    /// yet committed in its term): a leader that cannot hear a quorum for that long steps
    /// down anyway (check-quorum), so waiting longer would only delay the client's failover.
    /// Returns the confirmed commit index.
    async fn confirm_leadership(&self) -> Result<u64> {
        let term = self.raft.status.leader_term();
        if term == 0 {
            return Err(Error::NotLeader);
        }
        let bound = self.cfg.election().max(Duration::from_secs(1));
        match tokio::time::timeout(bound, self.raft.quorum_index()).await {
            Ok(Ok(index)) if self.raft.status.leader_term() == term => Ok(index),
            Ok(Ok(_)) => Err(Error::LeaderChanged),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(Error::Timeout),
        }
    }

    /// What a lease answer on the leader needs first: this member leads (`NotLeader`), a
    /// quorum confirms it still does (`refused` otherwise), and it applied what was committed
    /// when it confirmed, so that a lease granted just before is known (etcd's
    /// `waitAppliedIndex`; timed apart from the confirmation: a slow applier is not a lost
    /// leadership).
    async fn lease_state_as_leader(&self, refused: Error) -> Result<()> {
        if !self.raft.status.is_leader() {
            return Err(Error::NotLeader);
        }
        let index = self.confirm_leadership().await.map_err(|_| refused)?;
        tokio::time::timeout(
            self.cfg.request_timeout(),
            self.raft.status.wait_applied(index),
        )
        .await
        .map_err(|_| Error::Timeout)
    }

    /// TimeToLive: the remaining time is known to the leader only, so followers ask it.
    pub async fn lease_time_to_live(
        &self,
        r: LeaseTimeToLiveRequest,
    ) -> Result<LeaseTimeToLiveResponse> {
        self.check_not_learner()?;
        if !self.raft.status.is_leader() {
            let mut resp = self
                .leader_client()?
                .lease_time_to_live(r)
                .await?
                .into_inner();
            resp.header = Some(self.header(self.store.current_rev()));
            return Ok(resp);
        }
        self.lease_time_to_live_local(r).await
    }

    /// TimeToLive on the leader, once it confirmed it leads (see
    /// [`EtcdServer::lease_renew_local`]); a leader that cannot confirm it answers etcd's
    /// `leader changed` (as etcd does for a lessor demoted during the lookup), which clients
    /// retry.
    pub async fn lease_time_to_live_local(
        &self,
        r: LeaseTimeToLiveRequest,
    ) -> Result<LeaseTimeToLiveResponse> {
        self.lease_state_as_leader(Error::LeaderChanged).await?;
        let header = Some(self.header(self.store.current_rev()));
        let info = self.lessor.time_to_live(r.id);
        // Demoted meanwhile: the remaining time just read may be no deadline at all.
        if !self.lessor.is_primary() {
            return Err(Error::LeaderChanged);
        }
        Ok(match info {
            Some(info) => LeaseTimeToLiveResponse {
                header,
                id: r.id,
                ttl: info.remaining,
                granted_ttl: info.granted,
                keys: if r.keys { info.keys } else { Vec::new() },
            },
            None => LeaseTimeToLiveResponse {
                header,
                id: r.id,
                ttl: -1,
                ..Default::default()
            },
        })
    }

    pub async fn lease_leases(&self) -> Result<LeaseLeasesResponse> {
        self.check_not_learner()?;
        Ok(LeaseLeasesResponse {
            header: Some(self.header(self.store.current_rev())),
            leases: self
                .lessor
                .ids()
                .into_iter()
                .map(|id| LeaseStatus { id })
                .collect(),
        })
    }

    /// The leader's lease expiry duty: propose a revoke for every expired lease, stamped with
    /// the term it leads in, so that the revoke takes effect only if this leader appends it
    /// in that term (see [`InternalRequest::proposer_term`]).
    pub fn revoke_expired_leases(&self) {
        let term = self.raft.status.leader_term();
        if term == 0 {
            return;
        }
        for id in self.lessor.expired() {
            let req = InternalRequest {
                id: self.ids.next(),
                op: Some(Op::LeaseRevoke(LeaseRevokeRequest { id })),
                proposer_term: term,
                ..Default::default()
            };
            if self.raft.propose(req.id, req.encode_to_vec()).is_err() {
                return;
            }
            tracing::debug!(lease = id, "proposed revoke of expired lease");
        }
    }
}

/// etcd's `maxGapBetweenApplyAndCommitIndex`: committed entries this member may have left to
/// apply before it refuses new proposals.
pub const MAX_APPLY_GAP: u64 = 5000;

/// A proposal that did not enter the log or did not come back from it (a failed proposal);
/// an applied request's own error is its answer.
fn lost_on_the_way(res: &Result<Applied>) -> bool {
    matches!(
        res,
        Err(Error::NoLeader | Error::Stopped | Error::Timeout | Error::LeaderChanged)
    )
}

/// etcd's check before a proposal: `etcdserver: too many requests` when the committed index is
/// more than [`MAX_APPLY_GAP`] entries past the applied one, so that a member whose apply fell
/// behind sheds writes instead of queueing more behind it.
pub fn check_apply_gap(commit_index: u64, applied_index: u64) -> Result<()> {
    if commit_index > applied_index.saturating_add(MAX_APPLY_GAP) {
        return Err(Error::TooManyRequests);
    }
    Ok(())
}

/// How often the leader looks for expired leases.
pub const LEASE_CHECK_INTERVAL: Duration = Duration::from_millis(500);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn too_many_requests_when_apply_lags_commit_by_more_than_5000() {
        assert_eq!(check_apply_gap(0, 0), Ok(()));
        assert_eq!(check_apply_gap(5100, 100), Ok(()));
        assert_eq!(check_apply_gap(5101, 100), Err(Error::TooManyRequests));
        assert_eq!(check_apply_gap(1_000_000, 0), Err(Error::TooManyRequests));
        // Applied ahead of commit (applied before its fsync, see raft::node): never refused.
        assert_eq!(check_apply_gap(10, 20), Ok(()));
        assert_eq!(check_apply_gap(u64::MAX, u64::MAX - 1), Ok(()));
        let e = Error::TooManyRequests;
        assert_eq!(e.to_string(), "etcdserver: too many requests");
        // etcd sends it as a client-side error type, so grpc-go's code is Unknown.
        assert_eq!(e.code(), tonic::Code::Unknown);
    }
}
