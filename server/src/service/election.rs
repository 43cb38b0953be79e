//! etcd's server-side Election service (`v3electionpb.Election`, etcd's `v3election` over
//! `concurrency.Election`): a candidate for `name` is the key `name/<lease id in hex>` holding
//! its proposal, attached to its lease; the leader is the oldest such key. Compatible with
//! `etcdctl elect` and every client of etcd's Election, which use the same layout.

use super::concurrency::{
    compare_create, contender_key, contender_prefix, delete_op, get_key, get_op, put_op, range_kvs,
    CleanupOnDrop, KeyChange, RevisionFeed,
};
use super::EtcdServer;
use crate::auth::Caller;
use crate::error::{Error, Result};
use etcd_proto::etcdserverpb::{ResponseHeader, TxnRequest};
use etcd_proto::mvccpb::{event::EventType, KeyValue};
use etcd_proto::v3electionpb::{
    CampaignRequest, CampaignResponse, LeaderKey, LeaderRequest, LeaderResponse, ProclaimRequest,
    ProclaimResponse, ResignRequest, ResignResponse,
};
use futures::Stream;
use std::collections::VecDeque;
use std::sync::Arc;

/// Resigns `leader`: deletes its key if it is still the one created at its revision.
fn resign_txn(leader: &LeaderKey) -> TxnRequest {
    TxnRequest {
        compare: vec![compare_create(&leader.key, leader.rev)],
        success: vec![delete_op(&leader.key)],
        failure: Vec::new(),
    }
}

impl EtcdServer {
    /// Campaign: enters the election with `value` and waits until the candidate is the leader.
    /// If the client goes away while waiting, the candidacy is withdrawn.
    pub async fn campaign(
        self: &Arc<Self>,
        who: &Caller,
        r: CampaignRequest,
    ) -> Result<CampaignResponse> {
        self.check_not_learner()?;
        let lease = self.session_lease(r.lease).await?;
        let prefix = contender_prefix(&r.name);
        let key = contender_key(&prefix, lease);
        let resp = self
            .txn_if(
                who,
                compare_create(&key, 0),
                vec![put_op(&key, &r.value, lease)],
                vec![get_op(get_key(&key))],
            )
            .await?;
        let mut leader = LeaderKey {
            name: r.name,
            key,
            rev: resp.header.as_ref().map_or(0, |h| h.revision),
            lease,
        };
        if !resp.succeeded {
            // Already a candidate with this lease: keep its place, update its proposal.
            let kv = range_kvs(&resp, 0).first();
            leader.rev = kv.map_or(0, |kv| kv.create_revision);
            if kv.is_some_and(|kv| kv.value != r.value) {
                if let Err(e) = self.proclaim_as(who, &leader, lease, r.value).await {
                    let _ = self.txn(who, resign_txn(&leader)).await;
                    return Err(e);
                }
            }
        }

        let cleanup = CleanupOnDrop::new(self, who, resign_txn(&leader));
        let waited = self.wait_deletes(who, &prefix, leader.rev - 1).await;
        // On an error other than the client leaving, etcd leaves the key for its lease to end.
        cleanup.disarm();
        waited?;
        Ok(CampaignResponse {
            header: resp.header,
            leader: Some(leader),
        })
    }

    /// Puts `value` on the leader key if it is still the one created at `leader.rev`.
    async fn proclaim_as(
        &self,
        who: &Caller,
        leader: &LeaderKey,
        lease: i64,
        value: Vec<u8>,
    ) -> Result<Option<ResponseHeader>> {
        let resp = self
            .txn_if(
                who,
                compare_create(&leader.key, leader.rev),
                vec![put_op(&leader.key, &value, lease)],
                Vec::new(),
            )
            .await?;
        if !resp.succeeded {
            return Err(Error::ElectionNotLeader);
        }
        Ok(resp.header)
    }

    /// Proclaim: the leader announces a new value; `election: not leader` if it no longer
    /// leads with that key.
    pub async fn proclaim(&self, who: &Caller, r: ProclaimRequest) -> Result<ProclaimResponse> {
        let leader = r.leader.ok_or(Error::MissingLeaderKey)?;
        self.check_not_learner()?;
        let lease = self.session_lease(leader.lease).await?;
        let header = self.proclaim_as(who, &leader, lease, r.value).await?;
        Ok(ProclaimResponse { header })
    }

    /// Leader: the current leader's key-value, or `election: no leader`.
    pub async fn leader(&self, who: &Caller, r: LeaderRequest) -> Result<LeaderResponse> {
        let (header, kv) = self.first_created(who, &contender_prefix(&r.name)).await?;
        let kv = kv.ok_or(Error::ElectionNoLeader)?;
        Ok(LeaderResponse {
            header: Some(header),
            kv: Some(kv),
        })
    }

    /// Resign: the leader gives up; nothing happens if that key no longer leads.
    pub async fn resign(&self, who: &Caller, r: ResignRequest) -> Result<ResignResponse> {
        let leader = r.leader.ok_or(Error::MissingLeaderKey)?;
        self.check_not_learner()?;
        self.session_lease(leader.lease).await?;
        let resp = self.txn(who, resign_txn(&leader)).await?;
        Ok(ResignResponse {
            header: resp.header,
        })
    }

    /// Observe: the leader's key-value now, then on every change of leader or of its value.
    /// As etcd's, the stream just ends (no error) when a read or watch under it fails.
    pub fn observe(
        self: &Arc<Self>,
        who: &Caller,
        r: LeaderRequest,
    ) -> impl Stream<Item = LeaderResponse> + Send + 'static {
        let st = Observer {
            server: self.clone(),
            who: who.clone(),
            prefix: contender_prefix(&r.name),
            leader: None,
            ready: VecDeque::new(),
        };
        futures::stream::unfold(st, |mut st| async move {
            let next = st.next().await.ok()?;
            Some((next, st))
        })
    }
}

/// The leader an Observe stream follows: its key, create revision, the feed of its changes,
/// and the last revision sent.
struct Followed {
    key: Vec<u8>,
    create_rev: i64,
    feed: RevisionFeed,
    sent_rev: i64,
}

struct Observer {
    server: Arc<EtcdServer>,
    /// Who observes: its reads need READ on the election's keys.
    who: Caller,
    prefix: Vec<u8>,
    leader: Option<Followed>,
    /// Answers found but not yet sent (the puts of one batch of revisions).
    ready: VecDeque<LeaderResponse>,
}

impl Observer {
    async fn next(&mut self) -> Result<LeaderResponse> {
        loop {
            if let Some(r) = self.ready.pop_front() {
                return Ok(r);
            }
            match &mut self.leader {
                None => {
                    let (header, kv) = self.find_leader().await?;
                    let resp = self.follow(kv, header);
                    return Ok(resp);
                }
                Some(f) => {
                    let changes = self
                        .server
                        .key_changes(&mut f.feed, &f.key, f.create_rev)
                        .await?;
                    for c in changes {
                        match c {
                            KeyChange::Put(kv) if kv.mod_revision > f.sent_rev => {
                                f.sent_rev = kv.mod_revision;
                                self.ready.push_back(LeaderResponse {
                                    header: Some(self.server.header(kv.mod_revision)),
                                    kv: Some(kv),
                                });
                            }
                            KeyChange::Put(..) => {}
                            KeyChange::Deleted => {
                                // The leader is gone: look for the next one (after sending
                                // what it proclaimed before it went).
                                self.leader = None;
                                break;
                            }
                        }
                    }
                }
            }
        }
    }

    /// The current leader, or else the first candidate to come (etcd's Observe waits for the
    /// first put under the prefix, whoever's it is).
    async fn find_leader(&self) -> Result<(ResponseHeader, KeyValue)> {
        let (header, kv) = self.server.first_created(&self.who, &self.prefix).await?;
        if let Some(kv) = kv {
            return Ok((header, kv));
        }
        let mut feed = RevisionFeed::new(&self.server.hub, header.revision);
        loop {
            let revs = match feed.next().await {
                Ok(revs) => revs,
                Err(Error::Compacted) => return Box::pin(self.find_leader()).await,
                Err(e) => return Err(e),
            };
            let put = revs.iter().flat_map(|r| r.events.iter()).find_map(|e| {
                let kv = e.kv.as_ref()?;
                (e.r#type == EventType::Put as i32 && kv.key.starts_with(&self.prefix))
                    .then(|| kv.clone())
            });
            if let Some(kv) = put {
                return Ok((self.server.header(kv.mod_revision), kv));
            }
        }
    }

    /// Starts following `kv`, the new leader, and answers it.
    fn follow(&mut self, kv: KeyValue, header: ResponseHeader) -> LeaderResponse {
        let from = header.revision + 1;
        self.leader = Some(Followed {
            key: kv.key.clone(),
            create_rev: kv.create_revision,
            feed: RevisionFeed::new(&self.server.hub, from),
            sent_rev: kv.mod_revision,
        });
        LeaderResponse {
            header: Some(header),
            kv: Some(kv),
        }
    }
}
