//! The one fjall database a member owns, and its keyspaces. Everything durable lives here, so a
//! single journal fsync covers the raft log and the state machine alike.
//!
//! | keyspace    | key                          | value                                   |
//! |-------------|------------------------------|-----------------------------------------|
//! | `kv`        | revision (main, sub) BE      | tag byte + `mvccpb.KeyValue`            |
//! | `meta`      | name (see [`meta_key`])      | BE integers / identity                  |
//! | `lease`     | lease ID BE                  | granted TTL BE                          |
//! | `members`   | member ID BE                 | `etcdserverpb.Member`                   |
//! | `auth`      | see [`crate::auth::store`]   | enabled flag, revision, users, roles    |
//! | `raft_log`  | entry index BE               | `eraftpb.Entry` (protobuf)              |
//! | `raft_meta` | name                         | hard state, conf state, log start       |
//! | `alarm`     | member ID BE, alarm type BE  | empty (see [`crate::alarm`])            |
//!
//! Durability ([`Backend::sync_journal`]): fjall holds its journal lock through an fsync, which
//! would stall every other write (the raft thread's next batch, the applier) for the length of
//! the disk flush. So the journal buffer is handed to the OS under the lock, and the
//! fdatasync runs on our own descriptor of the active journal file, without it.

use crate::error::{Error, Result};
use fjall::{AbstractTree, Database, Keyspace, KeyspaceCreateOptions, PersistMode};
use parking_lot::Mutex;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Block cache shared by every keyspace. Reads of recent revisions hit the memtables; the
/// cache serves older ones.
const CACHE_BYTES: u64 = 16 * 1024 * 1024;
/// A keyspace's memtable is flushed to disk at this size. Memtables are most of a member's
/// memory at rest: 4 MiB (rather than 16) took the idle RSS of a benchmarked member from 59 to
/// 45 MiB, with put throughput unchanged within the run-to-run noise.
const MEMTABLE_BYTES: u64 = 4 * 1024 * 1024;
/// fjall's own trigger for sealing a memtable, set far above [`MEMTABLE_BYTES`]: a backstop
/// only, as pgraft seals them itself (see [`Backend::rotate_full_memtables`]).
const FJALL_ROTATION_BACKSTOP: u64 = 64 * 1024 * 1024;
/// Journal bytes past which fjall flushes the memtables that keep old journals alive: its
/// least (512 MiB by default, which the rarely written keyspaces of a small database can pin
/// on disk: a one-member soak of a few MB of state held 74 MB of journals after 7 minutes).
const MAX_JOURNAL_BYTES: u64 = 64 * 1024 * 1024;

/// fjall's background threads (memtable flushes, compactions). One: with two, fjall 3.1's first
/// worker hands every compaction request back to the queue for the other, and while that one is
/// busy the two bounce the requests between them (a sixth of a follower's fjall CPU). Measured
/// (3 members, 100k keys, 256-byte puts, 4 interleaved runs each): 64-client puts 18.2k -> 19.2k
/// per second, 69 -> 64 µs of server CPU per put.
///
/// Also required for safety: committed entries are applied before they are synced here
/// (`Loop::apply_ahead`, on the raft thread or the applier's), which needs every SST to come from a memtable whose journal was synced
/// first. fjall's flush task syncs the journal, then flushes the sealed memtables; a second
/// worker could seal a memtable holding unsynced writes in between.
pub(crate) const FJALL_WORKERS: usize = 1;
const _: () = assert!(
    FJALL_WORKERS == 1,
    "the raft loop's apply_ahead relies on one fjall worker"
);

pub mod meta_key {
    pub const CURRENT_REV: &str = "current_rev";
    pub const COMPACT_REV: &str = "compact_rev";
    pub const APPLIED_INDEX: &str = "applied_index";
    pub const MEMBER_ID: &str = "member_id";
    pub const CLUSTER_ID: &str = "cluster_id";
}

#[derive(Clone)]
pub struct Backend {
    pub db: Database,
    pub kv: Keyspace,
    pub meta: Keyspace,
    pub lease: Keyspace,
    pub members: Keyspace,
    pub auth: Keyspace,
    pub raft_log: Keyspace,
    pub raft_meta: Keyspace,
    pub alarm: Keyspace,
    /// The member's data directory (the database lives in its `db` subdirectory).
    dir: PathBuf,
    journal: Arc<Mutex<ActiveJournal>>,
    /// Held while a defragmentation runs: one at a time.
    defrag: Arc<Mutex<()>>,
}

/// The journal file fjall appends to: `<db>/<id>.jnl`. fjall seals a journal by syncing it
/// (`SyncAll`) before it creates `<id + 1>.jnl`, so once a successor exists every write to the
/// old one is durable, and only the newest file ever needs our fdatasync.
struct ActiveJournal {
    dir: PathBuf,
    /// `None` when no journal file was found at open (an unknown layout): then syncs go
    /// through fjall's own, locking, persist.
    id: Option<u64>,
    file: Option<File>,
}

/// The highest-numbered journal file in `dir`: the one fjall writes now.
fn newest_journal(dir: &Path) -> Option<u64> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            e.file_name()
                .to_str()?
                .strip_suffix(".jnl")?
                .parse::<u64>()
                .ok()
        })
        .max()
}

impl ActiveJournal {
    fn find(dir: PathBuf) -> Self {
        let id = newest_journal(&dir);
        if id.is_none() {
            tracing::warn!(dir = %dir.display(), "no fjall journal file found; syncs will hold the journal lock");
        }
        ActiveJournal {
            dir,
            id,
            file: None,
        }
    }

    fn path(&self, id: u64) -> PathBuf {
        self.dir.join(format!("{id}.jnl"))
    }

    /// The newest journal file, following rotations since the last call.
    fn current(&mut self) -> Result<Option<&File>> {
        let Some(id) = self.id else {
            return Ok(None);
        };
        // fjall moved on to a successor, or this file is gone (several rotations, the sealed
        // journals already deleted): look for the newest file again.
        if self.path(id + 1).exists() || !self.path(id).exists() {
            self.file = None;
            self.id = newest_journal(&self.dir);
        }
        let Some(id) = self.id else {
            return Ok(None);
        };
        if self.file.is_none() {
            self.file = Some(File::open(self.path(id)).map_err(Error::internal)?);
        }
        Ok(self.file.as_ref())
    }
}

impl Backend {
    pub fn open(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(Error::internal)?;
        let db_dir = dir.join("db");
        let db = Database::builder(&db_dir)
            .cache_size(CACHE_BYTES)
            .worker_threads(FJALL_WORKERS)
            .max_journaling_size(MAX_JOURNAL_BYTES)
            .open()?;
        let ks = |name: &str| {
            db.keyspace(name, || {
                KeyspaceCreateOptions::default().max_memtable_size(FJALL_ROTATION_BACKSTOP)
            })
        };
        Ok(Backend {
            kv: ks("kv")?,
            meta: ks("meta")?,
            lease: ks("lease")?,
            members: ks("members")?,
            auth: ks("auth")?,
            raft_log: ks("raft_log")?,
            raft_meta: ks("raft_meta")?,
            alarm: ks("alarm")?,
            db,
            dir: dir.to_path_buf(),
            defrag: Arc::new(Mutex::new(())),
            journal: Arc::new(Mutex::new(ActiveJournal::find(db_dir))),
        })
    }

    /// Makes every write committed so far durable (one fdatasync of the journal), without
    /// holding fjall's journal lock during the flush to disk: writers go on meanwhile.
    pub fn sync_journal(&self) -> Result<()> {
        // Hands fjall's buffered journal bytes to the OS (a write, under its lock); the
        // fdatasync below covers them whichever descriptor it goes through, and a rotation in
        // between synced them already.
        let start = std::time::Instant::now();
        self.db.persist(PersistMode::Buffer)?;
        slow_disk_failpoint(&self.dir);
        let mut journal = self.journal.lock();
        match journal.current()? {
            Some(file) => file.sync_data().map_err(Error::internal)?,
            None => self.db.persist(PersistMode::SyncData)?,
        }
        let took = start.elapsed();
        crate::metrics::WAL_FSYNC.observe(took);
        crate::metrics::WAL_FSYNC_FINE.observe(took);
        crate::metrics::warn_if_slow("journal fdatasync", start);
        Ok(())
    }

    pub fn get_meta_i64(&self, key: &str) -> Result<Option<i64>> {
        get_i64(&self.meta, key)
    }

    pub fn get_meta_u64(&self, key: &str) -> Result<Option<u64>> {
        Ok(get_i64(&self.meta, key)?.map(|v| v as u64))
    }

    fn keyspaces(&self) -> [&Keyspace; 8] {
        [
            &self.kv,
            &self.meta,
            &self.lease,
            &self.members,
            &self.auth,
            &self.raft_log,
            &self.raft_meta,
            &self.alarm,
        ]
    }

    /// Seals every keyspace memtable that holds [`MEMTABLE_BYTES`] or more, for fjall's worker
    /// to flush. Called by each writer after its commits (the raft loop once a turn, the
    /// compactor and the snapshot installer after each batch): cheap when nothing is due.
    ///
    /// fjall's own trigger cannot be relied on: past its size, every commit to a keyspace
    /// queues a rotation request (its queue holds 1000) until the one worker gets to it, and
    /// the worker, rotating, queues the flush with a blocking send on that same queue. Under a
    /// heavy load with the worker busy the queue filled, the worker blocked on itself, no
    /// memtable was flushed again, and at 4 sealed memtables fjall halted every write for
    /// good: the raft loop stopped inside a commit holding the index lock, every reader
    /// behind it, and the member answered nothing (seen once in a dozen scale-test runs).
    /// Sealed here, a memtable never reaches fjall's trigger, and the worker only sends to
    /// its queue what pgraft's rotations put there: a flush each, never 1000.
    pub fn rotate_full_memtables(&self) -> Result<()> {
        for ks in self.keyspaces() {
            if ks.tree.active_memtable().size() >= MEMTABLE_BYTES {
                ks.rotate_memtable()?;
            }
        }
        Ok(())
    }

    /// Bytes the data directory takes on disk: allocated blocks, not apparent sizes (fjall's
    /// journal is a sparse file whose apparent size is its 64 MB reservation). etcd's `dbSize`.
    pub fn disk_space(&self) -> u64 {
        allocated_bytes(&self.dir)
    }

    /// The state machine's size, as etcd's backend is apart from its WAL: the tables of the
    /// replicated state (not the raft log's, nor the journal: pgraft's write-ahead log) plus
    /// the memtables not yet flushed (fjall counts them for the whole database, raft log
    /// included; a few MB at most). Like bbolt's file, it grows with writes and deletes alike
    /// and shrinks when a defragmentation rewrites the tables without what compaction
    /// dropped. Reported as `dbSizeInUse` and held against `--quota-backend-bytes`.
    pub fn backend_size(&self) -> u64 {
        let state = [
            &self.kv,
            &self.meta,
            &self.lease,
            &self.members,
            &self.alarm,
        ];
        let tables: u64 = state.iter().map(|ks| ks.disk_space()).sum();
        tables + self.db.write_buffer_size()
    }

    /// etcd's defragmentation: flushes every keyspace's memtable, then rewrites its tables in
    /// one major compaction, which drops the versions no reader can see any more (deleted raft
    /// log entries, MVCC history a compaction removed). Blocking (run it off the async
    /// runtime); writes and reads go on meanwhile, as fjall compacts beside them. One at a
    /// time: a second caller waits for the first.
    pub fn defragment(&self) -> Result<()> {
        let _one = self.defrag.lock();
        for ks in self.keyspaces() {
            ks.rotate_memtable_and_wait()?;
            ks.major_compact()?;
        }
        Ok(())
    }
}

/// The slow-disk fault of the robustness tests (compat-tests/jepsen): with
/// `PGRAFT_FAILPOINT_SLOW_DISK=1` in its environment, every journal sync of a member first
/// sleeps the milliseconds written in `<data-dir>/failpoint-fsync-delay-ms` (while that file
/// exists), so that a test can make one member's disk slow and fast again. Read once; never
/// set it outside those tests.
fn slow_disk_failpoint(dir: &Path) {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let on = *ON.get_or_init(|| {
        let on = std::env::var_os("PGRAFT_FAILPOINT_SLOW_DISK").is_some_and(|v| v == "1");
        if on {
            tracing::warn!(
                "PGRAFT_FAILPOINT_SLOW_DISK=1: journal syncs wait for what \
                 failpoint-fsync-delay-ms in the data directory says (a test fault)"
            );
        }
        on
    });
    if !on {
        return;
    }
    let ms = std::fs::read_to_string(dir.join("failpoint-fsync-delay-ms"))
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(0)
        .min(60_000);
    if ms > 0 {
        std::thread::sleep(std::time::Duration::from_millis(ms));
    }
}

/// Allocated bytes of the files under `dir`, recursively (unreadable entries count 0).
fn allocated_bytes(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let Ok(md) = entry.metadata() else { continue };
            if md.is_dir() {
                pending.push(entry.path());
            } else {
                // st_blocks counts 512-byte units whatever the filesystem's block size.
                total += md.blocks() * 512;
            }
        }
    }
    total
}

pub fn get_i64(ks: &Keyspace, key: &str) -> Result<Option<i64>> {
    match ks.get(key)? {
        Some(v) => {
            let b: [u8; 8] = v
                .as_ref()
                .try_into()
                .map_err(|_| Error::internal(format!("bad {key} in meta")))?;
            Ok(Some(i64::from_be_bytes(b)))
        }
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Fills more than one journal (fjall rotates past 64 MB when it flushes a memtable).
    fn fill_a_journal(b: &Backend) {
        // Incompressible (fjall may compress journal items), generated once.
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let value: Vec<u8> = (0..1 << 20)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        for i in 0..66u32 {
            b.kv.insert(i.to_be_bytes(), &value).unwrap();
            b.rotate_full_memtables().unwrap();
        }
        b.meta.insert("x", "y").unwrap();
        b.meta.rotate_memtable_and_wait().unwrap();
    }

    /// The fdatasync goes to the journal fjall is writing now, also after fjall sealed one or
    /// several and started the next, and deleted the sealed ones.
    #[test]
    fn journal_sync_follows_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let b = Backend::open(dir.path()).unwrap();
        let first = b.journal.lock().id.expect("journal file found at open");
        b.kv.insert("a", "1").unwrap();
        b.sync_journal().unwrap();
        assert_eq!(b.journal.lock().id, Some(first));
        fill_a_journal(&b);
        b.sync_journal().unwrap();
        let second = b.journal.lock().id.unwrap();
        assert!(
            second > first,
            "still syncing journal {first} after a rotation"
        );
        // Two more rotations between syncs: the journal synced last is gone by now.
        fill_a_journal(&b);
        fill_a_journal(&b);
        b.kv.insert("b", "2").unwrap();
        b.sync_journal().unwrap();
        let now = b.journal.lock().id.unwrap();
        assert!(now >= second + 2, "syncing journal {now}, not the newest");
        assert_eq!(newest_journal(&dir.path().join("db")), Some(now));
    }

    /// pgraft seals memtables at MEMTABLE_BYTES itself, far below fjall's own trigger: a
    /// writer that goes on committing past that size keeps its memtable bounded, and what it
    /// wrote is flushed to tables by fjall's worker.
    #[test]
    fn memtables_are_sealed_at_their_size_by_pgraft() {
        let dir = tempfile::tempdir().unwrap();
        let b = Backend::open(dir.path()).unwrap();
        let value = vec![7u8; 4096];
        let mut largest = 0;
        // 24 MiB in 4 KiB puts, a batch of 16 at a time.
        for i in 0..384u32 {
            let mut batch = b.db.batch();
            for j in 0..16u32 {
                batch.insert(&b.kv, (i * 16 + j).to_be_bytes(), &value);
            }
            batch.commit().unwrap();
            b.rotate_full_memtables().unwrap();
            largest = largest.max(b.kv.tree.active_memtable().size());
        }
        assert!(
            largest < MEMTABLE_BYTES + 16 * 8192,
            "the active memtable reached {largest} bytes"
        );
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while b.kv.table_count() == 0 {
            assert!(std::time::Instant::now() < deadline, "nothing was flushed");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(
            b.kv.get(1000u32.to_be_bytes()).unwrap().as_deref(),
            Some(&value[..])
        );
    }
}
