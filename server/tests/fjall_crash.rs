//! Crash test for the one fjall behaviour the raft loop's `apply_ahead` and `backend.rs` rest
//! on, and the reason fjall is pinned exactly in the workspace `Cargo.toml`: a memtable reaches
//! disk (an SST) only after the journal bytes written before it did. The raft log entry and the
//! state applied from it go to the one fjall journal, the entry first; `apply_ahead` applies
//! entries before their journal was fsynced, so it needs the applied state never to survive a
//! crash without the log entries before it. fjall 3.1.13 does that in its flush task: it syncs
//! the journal (`persist(SyncAll)`, or seals it by a rotation), then writes the sealed memtables.
//!
//! How: the test re-runs its own binary as a child (selected by [`CHILD_ENV`]), which writes a
//! raft log batch, then a state batch (kv + applied index), neither synced, forces a flush of
//! the state keyspace's memtable through fjall's worker (`rotate_memtable_and_wait`), repeats
//! that a few rounds, writes one last unflushed pair and calls `std::process::abort` (no
//! destructors, no fjall shutdown). The parent reopens the database the way a member does
//! ([`Backend::open`]) and asserts that every state write that survived has its log entry too.
//!
//! What it can and cannot catch. A process crash loses fjall's user-space buffers, not the OS
//! page cache; there is no power cut here. So:
//! - [`crash_keeps_log_before_state`] runs pgraft's own configuration, where every batch commit
//!   hands the journal bytes to the OS (`PersistMode::Buffer`): it catches a fjall whose
//!   recovery loses journal entries that an SST of another keyspace has passed (a global
//!   "persisted seqno" instead of one per keyspace, a replay that stops early), or whose batch
//!   commits stop reaching the OS while flushes still write SSTs.
//! - [`crash_keeps_unsynced_log_before_flushed_state`] opens the same layout with fjall's
//!   `manual_journal_persist`, so a commit leaves its journal bytes in fjall's 8 KiB buffer: the
//!   bytes an abort loses stand for the bytes a power cut would lose. It catches a flush path
//!   that writes the SST while journal bytes before it are still in fjall's buffer, the change
//!   that would break `apply_ahead`. Checked against a fjall 3.1.13 patched (through
//!   `[patch.crates-io]`, not committed) so that its flush task neither persists the journal
//!   (`persist(SyncAll)` before `run_flush` in `worker_pool.rs`) nor asks the journal's
//!   position (`pos()`, a seek, which also empties the buffer into the file): this test then
//!   fails with "state flushed to an SST survived without the log entry written before it:
//!   [1, 2, 3]"; with only the `persist` removed it still passes, because of that seek. It
//!   cannot tell a flush path that only hands the journal to the OS from one that fsyncs it:
//!   that needs a real power cut (a VM or dm-flakey), which no test here has.
//! - [`crash_check_detects_state_flushed_ahead_of_log`] shows the check can fail: the child
//!   writes the state through fjall's ingestion API, which builds an SST directly and bypasses
//!   the journal, i.e. a flush that does not sync the journal first; the parent must find the
//!   state without its log entry.

use fjall::{Database, Keyspace, KeyspaceCreateOptions};
use pgraft_server::backend::Backend;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Stdio};

/// Set in the child's environment: `<mode>:<dir>`.
const CHILD_ENV: &str = "PGRAFT_FJALL_CRASH_CHILD";
/// Rounds whose state memtable is flushed before the abort (one more, unflushed, follows).
const ROUNDS: u64 = 3;
/// The applied-index key in the `meta` keyspace (as `backend::meta_key::APPLIED_INDEX`).
const APPLIED_INDEX: &str = pgraft_server::backend::meta_key::APPLIED_INDEX;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Mode {
    /// [`Backend::open`]: every commit reaches the OS.
    Pgraft,
    /// `manual_journal_persist`: commits stay in fjall's buffer until something persists them.
    Unsynced,
    /// As `Unsynced`, and the state goes straight to an SST, bypassing the journal.
    BrokenIngest,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Pgraft => "pgraft",
            Mode::Unsynced => "unsynced",
            Mode::BrokenIngest => "broken-ingest",
        }
    }

    fn parse(s: &str) -> Mode {
        [Mode::Pgraft, Mode::Unsynced, Mode::BrokenIngest]
            .into_iter()
            .find(|m| m.name() == s)
            .unwrap_or_else(|| panic!("unknown crash child mode {s}"))
    }
}

/// The keyspaces the child writes: the raft log, the MVCC kv and meta (the applied index).
struct Db {
    db: Database,
    raft_log: Keyspace,
    kv: Keyspace,
    meta: Keyspace,
}

/// Opens the member's layout. `manual` keeps journal writes in fjall's buffer (see the module
/// comment); otherwise this is exactly a member's [`Backend::open`].
fn open(dir: &Path, manual: bool) -> Db {
    if !manual {
        let b = Backend::open(dir).unwrap();
        return Db {
            db: b.db,
            raft_log: b.raft_log,
            kv: b.kv,
            meta: b.meta,
        };
    }
    // As `Backend::open`, with one fjall worker as there (`backend::FJALL_WORKERS`, which a
    // compile-time assertion keeps at 1).
    let db = Database::builder(dir.join("db"))
        .worker_threads(1)
        .manual_journal_persist(true)
        .open()
        .unwrap();
    let ks = |name: &str| {
        db.keyspace(name, || {
            KeyspaceCreateOptions::default().manual_journal_persist(true)
        })
        .unwrap()
    };
    Db {
        raft_log: ks("raft_log"),
        kv: ks("kv"),
        meta: ks("meta"),
        db,
    }
}

fn log_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

fn state_key(index: u64) -> [u8; 8] {
    // A revision per entry; (main, sub) in the real layout, main alone is enough here.
    (index as i64).to_be_bytes()
}

/// The child: log batch, state batch, flush of the state keyspace; a few rounds, one more pair
/// unflushed, then abort.
fn child(mode: Mode, dir: &Path) -> ! {
    let d = open(dir, mode != Mode::Pgraft);
    for index in 1..=ROUNDS + 1 {
        // The raft loop's append: the entry, in a batch of its own, not synced.
        let mut log = d.db.batch();
        log.insert(&d.raft_log, log_key(index), format!("entry {index}"));
        log.commit().unwrap();
        // The applier's batch for that entry: its effect and the applied index.
        if mode == Mode::BrokenIngest {
            let mut ingest = d.kv.start_ingestion().unwrap();
            ingest
                .write(state_key(index), format!("value {index}"))
                .unwrap();
            ingest.finish().unwrap();
        } else {
            let mut state = d.db.batch();
            state.insert(&d.kv, state_key(index), format!("value {index}"));
            state.insert(&d.meta, APPLIED_INDEX, (index as i64).to_be_bytes());
            state.commit().unwrap();
        }
        if index <= ROUNDS {
            // The memtable flush a full memtable would trigger, through fjall's worker.
            d.kv.rotate_memtable_and_wait().unwrap();
            assert!(
                d.kv.sealed_memtable_count() == 0,
                "state memtable not flushed"
            );
        }
    }
    std::process::abort();
}

/// Runs the child in `mode` on a fresh directory, then reopens what it left as a member would
/// and returns (state entries that survived, those of them whose log entry is missing).
fn crash_and_reopen(mode: Mode) -> (Vec<u64>, Vec<u64>) {
    let dir = tempfile::tempdir().unwrap();
    let test = match mode {
        Mode::Pgraft => "crash_keeps_log_before_state",
        Mode::Unsynced => "crash_keeps_unsynced_log_before_flushed_state",
        Mode::BrokenIngest => "crash_check_detects_state_flushed_ahead_of_log",
    };
    let status = Command::new(std::env::current_exe().unwrap())
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env(
            CHILD_ENV,
            format!("{}:{}", mode.name(), dir.path().display()),
        )
        // The child's test harness chatter would interleave with ours; a panic goes to stderr.
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert_eq!(
        status.signal(),
        Some(libc::SIGABRT),
        "the child must die by abort after its writes, got {status}"
    );
    let b = Backend::open(dir.path()).unwrap();
    let mut survived = Vec::new();
    let mut orphaned = Vec::new();
    for index in 1..=ROUNDS + 1 {
        if b.kv.get(state_key(index)).unwrap().is_some() {
            survived.push(index);
            if b.raft_log.get(log_key(index)).unwrap().is_none() {
                orphaned.push(index);
            }
        }
    }
    // The applied index is part of the state: its entry must be in the log as well.
    if let Some(applied) = b.meta.get(APPLIED_INDEX).unwrap() {
        let applied = i64::from_be_bytes(applied.as_ref().try_into().unwrap()) as u64;
        if b.raft_log.get(log_key(applied)).unwrap().is_none() && !orphaned.contains(&applied) {
            orphaned.push(applied);
        }
    }
    (survived, orphaned)
}

/// In the child process: does the child's work and aborts. In the parent: returns.
fn maybe_child() {
    if let Ok(arg) = std::env::var(CHILD_ENV) {
        let (mode, dir) = arg.split_once(':').expect("mode:dir");
        child(Mode::parse(mode), Path::new(dir));
    }
}

#[test]
fn crash_keeps_log_before_state() {
    maybe_child();
    let (survived, orphaned) = crash_and_reopen(Mode::Pgraft);
    // Every commit reached the OS before the abort: everything survives.
    assert_eq!(survived, (1..=ROUNDS + 1).collect::<Vec<_>>());
    assert!(
        orphaned.is_empty(),
        "state without its log entry: {orphaned:?}"
    );
}

#[test]
fn crash_keeps_unsynced_log_before_flushed_state() {
    maybe_child();
    let (survived, orphaned) = crash_and_reopen(Mode::Unsynced);
    // The flushed rounds' state is on disk (else the test proves nothing); the last pair,
    // never persisted, may be lost, but never the log entry alone.
    assert!(
        (1..=ROUNDS).all(|i| survived.contains(&i)),
        "flushed state lost: survived {survived:?}"
    );
    assert!(
        orphaned.is_empty(),
        "state flushed to an SST survived without the log entry written before it: {orphaned:?}"
    );
}

#[test]
fn crash_check_detects_state_flushed_ahead_of_log() {
    maybe_child();
    let (survived, orphaned) = crash_and_reopen(Mode::BrokenIngest);
    assert!(!survived.is_empty(), "the ingested state must survive");
    assert!(
        !orphaned.is_empty(),
        "the check missed state written to an SST ahead of its log entry (survived {survived:?})"
    );
}
