//! etcd's server-side Lock service (`v3lockpb.Lock`, etcd's `v3lock` over `concurrency.Mutex`):
//! a lock on `name` is the key `name/<lease id in hex>`, attached to the lease; its holder is
//! the oldest such key. Compatible with `etcdctl lock` and every client of etcd's Mutex, which
//! use the same layout from the client side.

use super::concurrency::{
    compare_create, contender_key, contender_prefix, delete_op, get_first_created, get_key, get_op,
    put_op, range_kvs, CleanupOnDrop,
};
use super::EtcdServer;
use crate::auth::Caller;
use crate::error::{Error, Result};
use etcd_proto::etcdserverpb::{DeleteRangeRequest, RangeResponse, TxnRequest};
use etcd_proto::v3lockpb::{LockRequest, LockResponse, UnlockRequest, UnlockResponse};
use std::sync::Arc;

impl EtcdServer {
    /// Lock: waits until the caller holds the lock, then answers the key that proves it. A
    /// lease that does not exist answers `etcdserver: requested lease not found`; a lease that
    /// expires while waiting, etcd 3.5's `mutex: session is expired`. If the client goes away
    /// while waiting, its key is deleted.
    pub async fn lock(self: &Arc<Self>, who: &Caller, r: LockRequest) -> Result<LockResponse> {
        self.check_not_learner()?;
        let lease = self.session_lease(r.lease).await?;
        let prefix = contender_prefix(&r.name);
        let key = contender_key(&prefix, lease);
        // Join the queue (or find this lease already in it), and see who holds the lock.
        let resp = self
            .txn_if(
                who,
                compare_create(&key, 0),
                vec![put_op(&key, b"", lease), get_op(get_first_created(&prefix))],
                vec![get_op(get_key(&key)), get_op(get_first_created(&prefix))],
            )
            .await?;
        let mut my_rev = resp.header.as_ref().map_or(0, |h| h.revision);
        if !resp.succeeded {
            my_rev = range_kvs(&resp, 0)
                .first()
                .map_or(0, |kv| kv.create_revision);
        }
        let owner = range_kvs(&resp, 1).first();
        if owner.is_none_or(|kv| kv.create_revision == my_rev) {
            return Ok(LockResponse {
                header: resp.header,
                key,
            });
        }

        let unlock = TxnRequest {
            success: vec![delete_op(&key)],
            ..Default::default()
        };
        let cleanup = CleanupOnDrop::new(self, who, unlock);
        let waited = self.wait_for_lock(who, &prefix, my_rev, &key).await;
        cleanup.disarm();
        let mine = match waited {
            Ok(mine) => mine,
            Err(e) => {
                self.release(who, &key).await;
                return Err(e);
            }
        };
        if mine.kvs.is_empty() {
            return Err(Error::SessionExpired);
        }
        Ok(LockResponse {
            header: mine.header,
            key,
        })
    }

    /// Waits until every contender older than `my_rev` is gone, then reads `key` again: the
    /// lock is the caller's only if its key outlived the wait (etcd 3.5's check).
    async fn wait_for_lock(
        &self,
        who: &Caller,
        prefix: &[u8],
        my_rev: i64,
        key: &[u8],
    ) -> Result<RangeResponse> {
        self.wait_deletes(who, prefix, my_rev - 1).await?;
        self.range(who, get_key(key)).await
    }

    /// Deletes a lock key after a failed wait (etcd's `Mutex.Unlock` there); the wait's own
    /// error is the answer, so a failure here is only logged.
    async fn release(&self, who: &Caller, key: &[u8]) {
        let r = DeleteRangeRequest {
            key: key.to_vec(),
            ..Default::default()
        };
        if let Err(e) = self.delete_range(who, r).await {
            tracing::warn!(error = %e, "could not release a lock key after a failed wait");
        }
    }

    /// Unlock: deletes the key Lock answered (whoever holds it now).
    pub async fn unlock(&self, who: &Caller, r: UnlockRequest) -> Result<UnlockResponse> {
        let resp = self
            .delete_range(
                who,
                DeleteRangeRequest {
                    key: r.key,
                    ..Default::default()
                },
            )
            .await?;
        Ok(UnlockResponse {
            header: resp.header,
        })
    }
}
