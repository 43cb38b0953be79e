//! Writes a run of snapshot records straight into new tables of their keyspaces (fjall's
//! ingestion: no journal, no memtable, no flush or compaction of what was just written), for
//! the two places that fill keyspaces from a file: a raft snapshot's install
//! ([`super::install`]) and `pgraftd snapshot restore` ([`super::restore`]).
//!
//! Ingestion needs each keyspace's keys in one strictly ascending run, and fjall panics on
//! anything else (as on keys of 0 or over 65535 bytes, which `parse_header` refuses). Records
//! come that way from the leader and from backups (keyspace by keyspace, by ascending tag,
//! each in key order); [`KeyOrder`] is the one check of that order, used here before every
//! write and by the receiver before a stream is staged.

use super::KV_TAG;
use crate::error::{Error, Result};
use fjall::Keyspace;

/// A record: its keyspace tag, key and value.
pub type Record = (u8, Vec<u8>, Vec<u8>);

/// What sees each record of the kv keyspace (key, value) as it is written, in key order: the
/// store's index loader, so that it need not read the whole state back.
pub type KvVisitor<'a> = &'a mut dyn FnMut(&[u8], &[u8]) -> Result<()>;

/// The order records must come in: keyspaces by ascending tag, each one run of strictly
/// ascending keys. Holds the previous key.
#[derive(Default)]
pub(crate) struct KeyOrder {
    /// The previous record's tag (0: none yet) and key.
    tag: u8,
    key: Vec<u8>,
}

impl KeyOrder {
    /// Checks that a record of `tag` with `key` may follow the previous one, and remembers it.
    pub(crate) fn check(&mut self, tag: u8, key: &[u8]) -> std::result::Result<(), String> {
        if tag < self.tag {
            return Err(format!(
                "snapshot records of keyspace {tag} after keyspace {}",
                self.tag
            ));
        }
        if tag == self.tag && key <= self.key.as_slice() {
            return Err(format!(
                "snapshot records of keyspace {tag} out of key order"
            ));
        }
        self.tag = tag;
        self.key.clear();
        self.key.extend_from_slice(key);
        Ok(())
    }
}

/// Writes every record `next` yields into the keyspace `keyspace_of` gives its tag (records of
/// a tag without one are skipped), one ingestion per keyspace, each finished (its tables
/// fsynced and registered) before the next starts; shows `on_kv` each kv record first. A
/// record out of order is refused with `bad` of the reason before it is written; what was
/// ingested before it stays, so callers write into state they can redo or throw away.
///
/// Each finish holds fjall's journal (every write of the database) while it flushes what the
/// keyspace holds in memory and registers the new tables: callers flush memtables first.
pub(crate) fn ingest<'k>(
    mut next: impl FnMut() -> Result<Option<Record>>,
    keyspace_of: impl Fn(u8) -> Option<&'k Keyspace>,
    on_kv: KvVisitor<'_>,
    bad: impl Fn(String) -> Error,
) -> Result<()> {
    let mut order = KeyOrder::default();
    let mut pending = next()?;
    while let Some((tag, key, value)) = pending.take() {
        order.check(tag, &key).map_err(&bad)?;
        let Some(ks) = keyspace_of(tag) else {
            pending = next()?;
            continue;
        };
        let mut ingestion = ks.start_ingestion()?;
        let (mut key, mut value) = (key, value);
        loop {
            if tag == KV_TAG {
                on_kv(&key, &value)?;
            }
            ingestion.write(key, value)?;
            match next()? {
                Some((t, k, v)) if t == tag => {
                    order.check(t, &k).map_err(&bad)?;
                    (key, value) = (k, v);
                }
                other => {
                    pending = other;
                    break;
                }
            }
        }
        ingestion.finish()?;
    }
    Ok(())
}
