//! The pieces etcd's server-side Lock and Election services share (etcd builds both on its
//! `concurrency` package: a session lease, a key `<prefix><lease id in hex>` per contender, and
//! "wait until every older contender's key is deleted"). Here they run directly on the service
//! layer's Txn/Range/DeleteRange and on the watch hub, so they take the same paths, limits and
//! errors as any client request.
//!
//! Waiting is one subscription to the hub per waiter, woken on each new revision and reading
//! only the revisions it has not seen yet (a watch, not a poll): nothing is held per waiter but
//! a revision number and one bounded batch of events while it is being read.

use super::EtcdServer;
use crate::auth::Caller;
use crate::error::{Error, Result};
use crate::mvcc::{KvRead, RevEvents};
use crate::watch::WatchHub;
use etcd_proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use etcd_proto::etcdserverpb::range_request::{SortOrder, SortTarget};
use etcd_proto::etcdserverpb::request_op::Request;
use etcd_proto::etcdserverpb::response_op::Response as OpResponse;
use etcd_proto::etcdserverpb::{
    Compare, DeleteRangeRequest, LeaseGrantRequest, RangeRequest, RangeResponse, RequestOp,
    ResponseHeader, TxnRequest, TxnResponse,
};
use etcd_proto::mvccpb::{event::EventType, KeyValue};
use std::sync::Arc;

/// etcd's `concurrency` default session TTL: the lease a Lock or Campaign without one gets.
/// The server never keeps it alive (etcd's servers orphan their sessions), so such a lock or
/// leadership ends after this many seconds unless the client renews the returned lease.
pub const SESSION_TTL: i64 = 60;

/// Bytes of events one read of the hub takes while a waiter catches up.
const FEED_BYTES: usize = 256 << 10;

/// `<prefix><lease>`, the lease in Go's `%x` form (lower-case hex, `-` for a negative ID).
pub fn contender_key(prefix: &[u8], lease: i64) -> Vec<u8> {
    let hex = if lease < 0 {
        format!("-{:x}", lease.unsigned_abs())
    } else {
        format!("{lease:x}")
    };
    let mut key = prefix.to_vec();
    key.extend_from_slice(hex.as_bytes());
    key
}

/// The end of the range of keys starting with `prefix` (etcd's `GetPrefixRangeEnd`).
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // Every byte 0xff (or empty): the range runs to the end of the keyspace.
    vec![0]
}

/// `<name>/`: the prefix etcd's Mutex and Election put their contenders under.
pub fn contender_prefix(name: &[u8]) -> Vec<u8> {
    let mut p = name.to_vec();
    p.push(b'/');
    p
}

pub fn compare_create(key: &[u8], rev: i64) -> Compare {
    Compare {
        result: CompareResult::Equal as i32,
        target: CompareTarget::Create as i32,
        key: key.to_vec(),
        target_union: Some(TargetUnion::CreateRevision(rev)),
        range_end: Vec::new(),
    }
}

pub fn put_op(key: &[u8], value: &[u8], lease: i64) -> RequestOp {
    RequestOp {
        request: Some(Request::RequestPut(etcd_proto::etcdserverpb::PutRequest {
            key: key.to_vec(),
            value: value.to_vec(),
            lease,
            ..Default::default()
        })),
    }
}

pub fn get_op(r: RangeRequest) -> RequestOp {
    RequestOp {
        request: Some(Request::RequestRange(r)),
    }
}

pub fn delete_op(key: &[u8]) -> RequestOp {
    RequestOp {
        request: Some(Request::RequestDeleteRange(DeleteRangeRequest {
            key: key.to_vec(),
            ..Default::default()
        })),
    }
}

/// The key-values of the `i`th answer of a Txn (a Range in it).
pub fn range_kvs(resp: &TxnResponse, i: usize) -> &[KeyValue] {
    match resp.responses.get(i).and_then(|r| r.response.as_ref()) {
        Some(OpResponse::ResponseRange(r)) => &r.kvs,
        _ => &[],
    }
}

pub fn get_key(key: &[u8]) -> RangeRequest {
    RangeRequest {
        key: key.to_vec(),
        ..Default::default()
    }
}

/// The oldest key under `prefix` (etcd's `WithFirstCreate`): the lock holder or the leader.
pub fn get_first_created(prefix: &[u8]) -> RangeRequest {
    RangeRequest {
        key: prefix.to_vec(),
        range_end: prefix_end(prefix),
        limit: 1,
        sort_order: SortOrder::Ascend as i32,
        sort_target: SortTarget::Create as i32,
        ..Default::default()
    }
}

/// The newest key under `prefix` created at or before `max_create_rev` (etcd's
/// `WithLastCreate` + `WithMaxCreateRev`): the contender just ahead of a waiter.
fn get_last_created_before(prefix: &[u8], max_create_rev: i64) -> RangeRequest {
    RangeRequest {
        key: prefix.to_vec(),
        range_end: prefix_end(prefix),
        limit: 1,
        sort_order: SortOrder::Descend as i32,
        sort_target: SortTarget::Create as i32,
        max_create_revision: max_create_rev,
        ..Default::default()
    }
}

/// The revisions after a point, as they are applied: one hub subscription, read in bounded
/// batches of whole revisions.
pub struct RevisionFeed {
    hub: Arc<WatchHub>,
    changes: tokio::sync::watch::Receiver<i64>,
    next: i64,
}

impl RevisionFeed {
    /// A feed of the revisions from `from` on. Subscribed before anything is read, so no
    /// revision applied after this call is missed.
    pub fn new(hub: &Arc<WatchHub>, from: i64) -> Self {
        RevisionFeed {
            hub: hub.clone(),
            changes: hub.subscribe(),
            next: from,
        }
    }

    /// Moves the feed on to `rev` (after the caller read the state up to `rev - 1` directly).
    pub fn skip_to(&mut self, rev: i64) {
        self.next = self.next.max(rev);
    }

    /// The next revisions that have events, waiting until there are some. `Compacted` when
    /// the revisions the feed still needs were compacted away (the caller then reads the
    /// current state and [`RevisionFeed::skip_to`] past it); `Stopped` when the member stops.
    pub async fn next(&mut self) -> Result<Vec<Arc<RevEvents>>> {
        loop {
            let current = *self.changes.borrow_and_update();
            while self.next <= current {
                let batch = self.hub.events(self.next, current, FEED_BYTES)?;
                self.next = batch.upto + 1;
                if !batch.revs.is_empty() {
                    return Ok(batch.revs);
                }
            }
            self.changes.changed().await.map_err(|_| Error::Stopped)?;
        }
    }
}

/// What happened to a key a waiter follows.
pub enum KeyChange {
    /// A new value (or, after a compaction, the value as it is now).
    Put(KeyValue),
    Deleted,
}

impl EtcdServer {
    /// The lease a server-side session uses (etcd's `concurrency.NewSession` as its lock and
    /// election servers call it): the client's, or a new [`SESSION_TTL`] lease when it gave
    /// none.
    pub(super) async fn session_lease(&self, lease: i64) -> Result<i64> {
        if lease != 0 {
            return Ok(lease);
        }
        let r = self
            .lease_grant(LeaseGrantRequest {
                ttl: SESSION_TTL,
                id: 0,
            })
            .await?;
        Ok(r.id)
    }

    /// The key as this member has it now (a local read), with the revision it was read at;
    /// while a snapshot install replaces the stored state, once it is done.
    async fn local_get(&self, key: &[u8]) -> Result<(Option<KeyValue>, i64)> {
        let rr = self.read_view().await?.range(&get_key(key))?;
        Ok((rr.kvs.into_iter().next(), rr.rev))
    }

    /// The changes to `key` from the feed's next revision on, oldest first, waiting until there
    /// is one. When history was compacted past the feed, the key as it is now stands for what
    /// was missed: gone or re-created (not `create_rev`) is a delete.
    pub(super) async fn key_changes(
        &self,
        feed: &mut RevisionFeed,
        key: &[u8],
        create_rev: i64,
    ) -> Result<Vec<KeyChange>> {
        loop {
            let revs = match feed.next().await {
                Ok(revs) => revs,
                Err(Error::Compacted) => {
                    let (kv, rev) = self.local_get(key).await?;
                    feed.skip_to(rev + 1);
                    return Ok(vec![match kv {
                        Some(kv) if kv.create_revision == create_rev => KeyChange::Put(kv),
                        _ => KeyChange::Deleted,
                    }]);
                }
                Err(e) => return Err(e),
            };
            let changes: Vec<KeyChange> = revs
                .iter()
                .flat_map(|r| r.events.iter())
                .filter_map(|e| {
                    let kv = e.kv.as_ref().filter(|kv| kv.key == key)?;
                    Some(if e.r#type == EventType::Delete as i32 {
                        KeyChange::Deleted
                    } else {
                        KeyChange::Put(kv.clone())
                    })
                })
                .collect();
            if !changes.is_empty() {
                return Ok(changes);
            }
        }
    }

    /// Waits until `key` (created at `create_rev`) is deleted at revision `from` or later
    /// (etcd's `waitDelete`).
    async fn wait_delete(&self, key: &[u8], create_rev: i64, from: i64) -> Result<()> {
        let mut feed = RevisionFeed::new(&self.hub, from);
        loop {
            let changes = self.key_changes(&mut feed, key, create_rev).await?;
            if changes.iter().any(|c| matches!(c, KeyChange::Deleted)) {
                return Ok(());
            }
        }
    }

    /// Waits until no key under `prefix` created at or before `max_create_rev` is left (etcd's
    /// `waitDeletes`): each time the newest such key, until there is none. Returns the header of
    /// the read that found none.
    pub(super) async fn wait_deletes(
        &self,
        who: &Caller,
        prefix: &[u8],
        max_create_rev: i64,
    ) -> Result<ResponseHeader> {
        loop {
            let RangeResponse { header, kvs, .. } = self
                .range(who, get_last_created_before(prefix, max_create_rev))
                .await?;
            let header = header.unwrap_or_default();
            let Some(kv) = kvs.into_iter().next() else {
                return Ok(header);
            };
            self.wait_delete(&kv.key, kv.create_revision, header.revision)
                .await?;
        }
    }

    /// The oldest key under `prefix`, linearizably read, with the read's header.
    pub(super) async fn first_created(
        &self,
        who: &Caller,
        prefix: &[u8],
    ) -> Result<(ResponseHeader, Option<KeyValue>)> {
        let r = self.range(who, get_first_created(prefix)).await?;
        Ok((r.header.unwrap_or_default(), r.kvs.into_iter().next()))
    }

    /// One Txn: `If compare Then then Else otherwise`.
    pub(super) async fn txn_if(
        &self,
        who: &Caller,
        compare: Compare,
        then: Vec<RequestOp>,
        otherwise: Vec<RequestOp>,
    ) -> Result<TxnResponse> {
        self.txn(
            who,
            TxnRequest {
                compare: vec![compare],
                success: then,
                failure: otherwise,
            },
        )
        .await
    }
}

/// Work left to do if a waiting request is dropped (its client went away): etcd's servers
/// cancel the wait with the client's context and then remove the waiter's key, so no lock or
/// candidacy outlives the request that asked for it. Spawned on drop, since the request's own
/// future is gone by then.
pub struct CleanupOnDrop {
    server: Option<Arc<EtcdServer>>,
    /// Who asked: the cleanup runs as that caller, as etcd's runs with the client's context.
    who: Caller,
    txn: TxnRequest,
}

impl CleanupOnDrop {
    pub fn new(server: &Arc<EtcdServer>, who: &Caller, txn: TxnRequest) -> Self {
        CleanupOnDrop {
            server: Some(server.clone()),
            who: who.clone(),
            txn,
        }
    }

    /// The request finished (either way) and handled its key itself.
    pub fn disarm(mut self) {
        self.server = None;
    }
}

impl Drop for CleanupOnDrop {
    fn drop(&mut self) {
        let Some(server) = self.server.take() else {
            return;
        };
        let txn = std::mem::take(&mut self.txn);
        let who = self.who.clone();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                if let Err(e) = server.txn(&who, txn).await {
                    tracing::warn!(error = %e, "could not remove the key of a cancelled lock or campaign");
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_follow_etcd_layout() {
        assert_eq!(
            contender_key(b"n/", 0x694d71ddfa0bb44),
            b"n/694d71ddfa0bb44"
        );
        assert_eq!(contender_key(b"n/", -26), b"n/-1a");
        assert_eq!(contender_prefix(b"lk"), b"lk/");
        assert_eq!(prefix_end(b"a/"), b"a0");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff\xff"), vec![0]);
    }
}
