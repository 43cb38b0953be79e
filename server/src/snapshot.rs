//! State snapshots for raft: the whole replicated state machine (MVCC values, leases,
//! membership, revisions) as one blob, made when raft needs to bring a lagging or new member up
//! to date, and installed on that member in place of its own state.

use crate::backend::{meta_key, Backend};
use crate::error::{Error, Result};
use fjall::{Keyspace, Readable};
use prost::Message;

#[derive(Clone, PartialEq, prost::Message)]
struct Pair {
    #[prost(bytes = "vec", tag = "1")]
    key: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    value: Vec<u8>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct StateSnapshot {
    #[prost(message, repeated, tag = "1")]
    kv: Vec<Pair>,
    #[prost(message, repeated, tag = "2")]
    lease: Vec<Pair>,
    #[prost(message, repeated, tag = "3")]
    members: Vec<Pair>,
    #[prost(int64, tag = "4")]
    current_rev: i64,
    #[prost(int64, tag = "5")]
    compact_rev: i64,
    #[prost(uint64, tag = "6")]
    applied_index: u64,
}

/// Serializes the applied state. Must run where no apply can interleave (the raft loop); the
/// returned index is the applied index the blob reflects.
pub fn capture(backend: &Backend) -> Result<(u64, Vec<u8>)> {
    let snap = backend.db.snapshot();
    let dump = |ks: &Keyspace| -> Result<Vec<Pair>> {
        snap.iter(ks)
            .map(|g| {
                let (k, v) = g.into_inner()?;
                Ok(Pair {
                    key: k.to_vec(),
                    value: v.to_vec(),
                })
            })
            .collect()
    };
    let meta_i64 = |key: &str| -> Result<Option<i64>> {
        match snap.get(&backend.meta, key)? {
            Some(v) => Ok(Some(i64::from_be_bytes(
                v.as_ref().try_into().map_err(Error::internal)?,
            ))),
            None => Ok(None),
        }
    };
    let state = StateSnapshot {
        kv: dump(&backend.kv)?,
        lease: dump(&backend.lease)?,
        members: dump(&backend.members)?,
        current_rev: meta_i64(meta_key::CURRENT_REV)?.unwrap_or(1),
        compact_rev: meta_i64(meta_key::COMPACT_REV)?.unwrap_or(-1),
        applied_index: meta_i64(meta_key::APPLIED_INDEX)?.unwrap_or(0) as u64,
    };
    Ok((state.applied_index, state.encode_to_vec()))
}

/// Replaces the replicated state with the blob's, with the new applied index, in `batch`
/// (which also carries the raft log's reset) and commits it durably. The caller reloads every
/// in-memory view (store, lessor, membership) afterwards.
pub fn install(
    backend: &Backend,
    data: &[u8],
    index: u64,
    mut batch: fjall::OwnedWriteBatch,
) -> Result<()> {
    let state = StateSnapshot::decode(data).map_err(Error::internal)?;
    for ks in [&backend.kv, &backend.lease, &backend.members] {
        for g in ks.iter() {
            batch.remove(ks, g.key()?);
        }
    }
    for (ks, pairs) in [
        (&backend.kv, state.kv),
        (&backend.lease, state.lease),
        (&backend.members, state.members),
    ] {
        for p in pairs {
            batch.insert(ks, p.key, p.value);
        }
    }
    let meta = &backend.meta;
    batch.insert(
        meta,
        meta_key::CURRENT_REV,
        state.current_rev.to_be_bytes().to_vec(),
    );
    batch.insert(
        meta,
        meta_key::COMPACT_REV,
        state.compact_rev.to_be_bytes().to_vec(),
    );
    batch.insert(meta, meta_key::APPLIED_INDEX, index.to_be_bytes().to_vec());
    batch
        .durability(Some(fjall::PersistMode::SyncData))
        .commit()?;
    Ok(())
}
