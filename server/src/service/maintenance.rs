//! Maintenance (etcd's `maintenanceServer` and `quotaKVServer`): Status, alarms, hashes,
//! defragmentation, and the backend quota every space-taking write is held against.
//!
//! Hashing and defragmentation walk or rewrite the whole store, so they run on tokio's
//! blocking pool, never on the raft thread or an async worker.
//!
//! The corruption check (`--experimental-corrupt-check-time`, etcd's `monitorKVHash`): the
//! leader hashes its key space at its current revision and asks every other member for its
//! hash at that revision over the peer port; a member that has the same compaction revision
//! and a different hash diverged, and the leader raises CORRUPT for it through the log, which
//! stops every member's writes.

use super::EtcdServer;
use crate::alarm::describe;
use crate::config::ETCD_VERSION;
use crate::error::{Error, Result};
use crate::request::Op;
use etcd_proto::etcdserverpb::alarm_request::AlarmAction;
use etcd_proto::etcdserverpb::request_op::Request;
use etcd_proto::etcdserverpb::*;
use etcd_proto::pgraftpb::raft_peer_client::RaftPeerClient;

/// etcd's quota costs: bytes a stored key-value takes beyond its key and value, and a lease.
const KV_OVERHEAD: u64 = 256;
const LEASE_OVERHEAD: u64 = 64;

/// What a write is expected to add to the backend (0: nothing, never refused by the quota).
pub(super) trait QuotaCost {
    fn quota_cost(&self) -> u64;
}

impl QuotaCost for PutRequest {
    fn quota_cost(&self) -> u64 {
        KV_OVERHEAD + (self.key.len() + self.value.len()) as u64
    }
}

impl QuotaCost for TxnRequest {
    /// The costlier branch's puts (nested txns included).
    fn quota_cost(&self) -> u64 {
        let branch = |ops: &[RequestOp]| -> u64 {
            ops.iter()
                .map(|op| match &op.request {
                    Some(Request::RequestPut(p)) => p.quota_cost(),
                    Some(Request::RequestTxn(t)) => t.quota_cost(),
                    _ => 0,
                })
                .sum()
        };
        branch(&self.success).max(branch(&self.failure))
    }
}

impl QuotaCost for LeaseGrantRequest {
    fn quota_cost(&self) -> u64 {
        LEASE_OVERHEAD
    }
}

/// Runs blocking work (a walk or rewrite of the store) on tokio's blocking pool.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Internal(format!("pgraft: maintenance task failed: {e}")))?
}

impl EtcdServer {
    /// etcd's quota check before a write is proposed: a write that would take the backend
    /// past `--quota-backend-bytes` raises the NOSPACE alarm (through the log, for every
    /// member) and is refused. Writes that take no space pass.
    pub(super) async fn check_quota(&self, req: &impl QuotaCost) -> Result<()> {
        let cost = req.quota_cost();
        let Some(quota) = self.cfg.quota_bytes() else {
            return Ok(());
        };
        if cost == 0 || self.backend.backend_size().saturating_add(cost) <= quota {
            return Ok(());
        }
        let me = self.member_id();
        let raised = self.alarms.get(AlarmType::Nospace);
        if !raised.iter().any(|a| a.member_id == me) {
            let raise = AlarmRequest {
                action: AlarmAction::Activate as i32,
                member_id: me,
                alarm: AlarmType::Nospace as i32,
            };
            if let Err(e) = self.propose(Op::Alarm(raise)).await {
                tracing::warn!(error = %e, "could not raise the NOSPACE alarm");
            }
        }
        Err(Error::NoSpace)
    }

    pub fn status(&self) -> StatusResponse {
        let st = &self.raft.status;
        let mut errors = Vec::new();
        if st.leader() == 0 {
            errors.push(Error::NoLeader.to_string());
        }
        errors.extend(self.alarms.get(AlarmType::None).iter().map(describe));
        StatusResponse {
            header: Some(self.header(self.store.current_rev())),
            version: ETCD_VERSION.to_string(),
            db_size: self.backend.disk_space() as i64,
            leader: st.leader(),
            raft_index: st.commit_index(),
            raft_term: st.term(),
            raft_applied_index: st.applied_index(),
            errors,
            db_size_in_use: self.backend.backend_size() as i64,
            is_learner: st.is_learner(),
            ..Default::default()
        }
    }

    /// Alarm GET lists the raised alarms (as applied here); ACTIVATE and DEACTIVATE go
    /// through the log, so every member changes its alarms at the same point.
    pub async fn alarm(&self, r: AlarmRequest) -> Result<AlarmResponse> {
        let action = AlarmAction::try_from(r.action)
            .map_err(|_| Error::Unimplemented(format!("unknown alarm action {}", r.action)))?;
        if action == AlarmAction::Get {
            let alarm = AlarmType::try_from(r.alarm).unwrap_or(AlarmType::None);
            return Ok(AlarmResponse {
                header: Some(self.header(self.store.current_rev())),
                alarms: self.alarms.get(alarm),
            });
        }
        self.check_not_learner()?;
        let applied = self.propose(Op::Alarm(r)).await?;
        let mut resp = expect_applied!(applied, Alarm)?;
        self.fill(&mut resp.header);
        Ok(resp)
    }

    /// The hash of the whole replicated state (etcd's `Hash`).
    pub async fn hash(&self) -> Result<HashResponse> {
        let store = self.store.clone();
        let (hash, rev) = blocking(move || store.hash()).await?;
        Ok(HashResponse {
            header: Some(self.header(rev)),
            hash,
        })
    }

    /// The hash of the key space at a revision (etcd's `HashKV`).
    pub async fn hash_kv(&self, r: HashKvRequest) -> Result<HashKvResponse> {
        let store = self.store.clone();
        let h = blocking(move || store.hash_kv(r.revision)).await?;
        Ok(HashKvResponse {
            header: Some(self.header(self.store.current_rev())),
            hash: h.hash,
            compact_revision: h.compact_revision,
            hash_revision: h.revision,
        })
    }

    /// Reclaims the space compaction and deletes freed (see `Backend::defragment`); the
    /// member serves reads and writes meanwhile.
    pub async fn defragment(&self) -> Result<DefragmentResponse> {
        let backend = self.backend.clone();
        let before = backend.disk_space();
        blocking(move || backend.defragment()).await?;
        tracing::info!(
            before,
            after = self.backend.disk_space(),
            "finished defragmenting the backend"
        );
        // etcd answers an empty message here, without a header.
        Ok(DefragmentResponse { header: None })
    }

    /// One pass of the corruption check, on the leader (a follower does nothing). Members
    /// that are unreachable, or have not applied the revision yet, are skipped this time.
    pub async fn check_corruption(&self) -> Result<()> {
        if !self.raft.status.is_leader() {
            return Ok(());
        }
        let store = self.store.clone();
        let local = blocking(move || store.hash_kv(0)).await?;
        for (id, _) in self.membership.peers() {
            let Some(channel) = self.raft.transport.channel(id) else {
                continue;
            };
            let req = HashKvRequest {
                revision: local.revision,
            };
            let call = async { RaftPeerClient::new(channel).hash_kv(req).await };
            let peer = match tokio::time::timeout(self.cfg.request_timeout(), call).await {
                Ok(Ok(r)) => r.into_inner(),
                Ok(Err(e)) => {
                    tracing::debug!(member = %format!("{id:x}"), error = %e.message(), "no hash from member");
                    continue;
                }
                Err(_) => continue,
            };
            if peer.compact_revision != local.compact_revision || peer.hash == local.hash {
                continue;
            }
            tracing::error!(
                member = %format!("{id:x}"),
                revision = local.revision,
                local_hash = local.hash,
                member_hash = peer.hash,
                "found data inconsistency with member: raising CORRUPT"
            );
            let raise = AlarmRequest {
                action: AlarmAction::Activate as i32,
                member_id: id,
                alarm: AlarmType::Corrupt as i32,
            };
            self.propose(Op::Alarm(raise)).await?;
        }
        Ok(())
    }
}
