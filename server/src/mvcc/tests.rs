//! The store's concurrency rules: readers never hold up the applier, compaction runs in the
//! background in steps and never pulls history from under a reader, and reads fetch only the
//! values their answer needs.

use super::read::{eval_range, IndexRead, Visit};
use super::*;
use crate::backend::Backend;
use crate::error::{Error, Result};
use etcd_proto::etcdserverpb::RangeRequest;
use etcd_proto::mvccpb::KeyValue;
use std::cell::Cell;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

fn open() -> (tempfile::TempDir, Arc<Store>) {
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::open(dir.path()).unwrap();
    let (store, _) = Store::open(backend).unwrap();
    let store = Arc::new(store);
    store.start_compactor().unwrap();
    (dir, store)
}

fn key(i: u32) -> Vec<u8> {
    format!("key/{i:08}").into_bytes()
}

/// Applies one put per revision, `per_chunk` revisions per applied chunk, as the applier does.
fn put_all(store: &Store, keys: impl Iterator<Item = u32>, value: &[u8], per_chunk: usize) {
    let keys: Vec<u32> = keys.collect();
    for chunk in keys.chunks(per_chunk) {
        let mut w = store.write();
        w.skip_events();
        for &i in chunk {
            w.begin_txn();
            w.put(&key(i), value.to_vec(), 0, false).unwrap();
            w.end_txn();
        }
        w.commit().unwrap();
    }
}

fn all_keys() -> RangeRequest {
    RangeRequest {
        key: b"key/".to_vec(),
        range_end: b"key0".to_vec(),
        ..Default::default()
    }
}

fn compact(store: &Store, rev: i64) {
    let mut w = store.write();
    w.compact(rev);
    w.commit().unwrap();
}

fn stored_revisions(store: &Store) -> usize {
    store.backend.kv.iter().count()
}

/// Waits (bounded) until the compactor has finished a pass to `rev`.
fn wait_compacted(store: &Store, rev: i64) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(20), store.wait_compacted(rev))
            .await
            .expect("compaction finished in time")
    });
}

/// A reader in the middle of a long range holds no lock: 10k puts (and their chunks' commits)
/// apply meanwhile, and the reader still answers with the state it began with.
#[test]
fn a_reader_holding_a_view_does_not_stop_the_applier() {
    let (_dir, store) = open();
    put_all(&store, 0..5000, b"old", 500);
    let rev0 = store.current_rev();
    let rt = store.read();
    let range = KeyRange::new(b"key/", b"key0");
    let mut seen = Vec::new();
    let resume = rt
        .walk(&range, rev0, None, &mut |k, rev, _| {
            seen.push((k.to_vec(), rev))
        })
        .unwrap()
        .expect("5000 keys take more than one step");

    // The applier, on another thread, must get through 10k puts while the read is half done.
    let (done_tx, done_rx) = mpsc::channel();
    let writer = {
        let store = store.clone();
        std::thread::spawn(move || {
            put_all(&store, (0..10_000).map(|i| i % 7000), b"new", 100);
            done_tx.send(()).unwrap();
        })
    };
    done_rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the applier was held up by a reader");
    writer.join().unwrap();
    assert_eq!(store.current_rev(), rev0 + 10_000);

    let mut resume = Some(resume);
    while let Some(r) = resume {
        resume = rt
            .walk(&range, rev0, Some(&r), &mut |k, rev, _| {
                seen.push((k.to_vec(), rev))
            })
            .unwrap();
    }
    assert_eq!(
        seen.len(),
        5000,
        "keys put after the read began are not in it"
    );
    for (k, rev) in &seen {
        let kv = rt.fetch(*rev).unwrap().unwrap();
        assert_eq!(&kv.key, k);
        assert_eq!(kv.value, b"old");
    }
    // A whole range in the same read transaction agrees; a new one sees the new state.
    let res = rt.range(&all_keys()).unwrap();
    assert_eq!((res.count, res.rev), (5000, rev0));
    assert!(res.kvs.iter().all(|kv| kv.value == b"old"));
    let res = store.read().range(&all_keys()).unwrap();
    assert_eq!(res.count, 7000);
    assert_eq!(res.kvs[0].value, b"new");
}

/// Applying a compaction only moves the compaction revision; the compactor then drops the
/// history in steps, and a reader walking an older revision holds it off until it is done.
#[test]
fn compaction_runs_in_the_background_and_waits_for_older_readers() {
    let (_dir, store) = open();
    put_all(&store, 0..3000, b"v1", 1000);
    let rev_v1 = store.current_rev();
    put_all(&store, 0..3000, b"v2", 1000);
    assert_eq!(stored_revisions(&store), 6000);

    // A long read at rev_v1, half done.
    let rt = store.read();
    let range = KeyRange::new(b"key/", b"key0");
    let mut seen = 0;
    let mut resume = rt
        .walk(&range, rev_v1, None, &mut |_, _, _| seen += 1)
        .unwrap();
    assert!(resume.is_some());

    let target = store.current_rev();
    compact(&store, target);
    // Reads below the compaction revision fail at once.
    let old = RangeRequest {
        revision: rev_v1,
        ..all_keys()
    };
    assert!(matches!(store.read().range(&old), Err(Error::Compacted)));
    // The compactor waits for the reader: nothing is dropped meanwhile.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(stored_revisions(&store), 6000);
    while let Some(r) = resume {
        resume = rt
            .walk(&range, rev_v1, Some(&r), &mut |_, rev, _| {
                seen += 1;
                assert!(rev.main <= rev_v1);
            })
            .unwrap();
    }
    assert_eq!(seen, 3000);
    drop(rt);

    wait_compacted(&store, target);
    assert_eq!(stored_revisions(&store), 3000);
    let res = store.read().range(&all_keys()).unwrap();
    assert_eq!(res.count, 3000);
    assert!(res.kvs.iter().all(|kv| kv.value == b"v2"));
}

/// After a restart the store is loaded with whatever revisions were stored, and the history a
/// cut-short compaction left behind is dropped by a pass to the stored compaction revision.
#[test]
fn a_restart_finishes_an_unfinished_compaction() {
    let dir = tempfile::tempdir().unwrap();
    let target = {
        let backend = Backend::open(dir.path()).unwrap();
        // No compactor: the compaction is applied but its pass never runs.
        let (store, _) = Store::open(backend.clone()).unwrap();
        put_all(&store, 0..2000, b"a", 1000);
        put_all(&store, 0..2000, b"b", 1000);
        let target = store.current_rev();
        compact(&store, target);
        assert_eq!(stored_revisions(&store), 4000);
        target
    };
    let backend = Backend::open(dir.path()).unwrap();
    let (store, _) = Store::open(backend).unwrap();
    let store = Arc::new(store);
    assert_eq!(store.compact_rev(), target);
    store.start_compactor().unwrap();
    wait_compacted(&store, target);
    assert_eq!(stored_revisions(&store), 2000);
}

/// Counts the values a read fetches.
struct Counting<'a, R> {
    inner: &'a R,
    fetched: Cell<usize>,
}

impl<R: IndexRead> IndexRead for Counting<'_, R> {
    fn walk(
        &self,
        range: &KeyRange,
        at: i64,
        resume: Option<&[u8]>,
        f: Visit<'_>,
    ) -> Result<Option<Vec<u8>>> {
        self.inner.walk(range, at, resume, f)
    }

    fn fetch(&self, rev: Revision) -> Result<Option<KeyValue>> {
        self.fetched.set(self.fetched.get() + 1);
        self.inner.fetch(rev)
    }
}

/// `count_only` reads no value; `keys_only` reads none for keys whose newest value is asked
/// for (the index knows its metadata), and the answer is the same as with values.
#[test]
fn keys_only_and_count_only_read_no_values() {
    let (_dir, store) = open();
    put_all(&store, 0..3000, b"first", 1000);
    put_all(&store, 0..1000, b"second", 1000);
    let rt = store.read();
    let current = store.current_rev();
    let counting = Counting {
        inner: &rt,
        fetched: Cell::new(0),
    };
    let read = |req: RangeRequest| {
        counting.fetched.set(0);
        let res = eval_range(&counting, current, -1, &req).unwrap();
        (res, counting.fetched.get())
    };
    let (res, fetched) = read(RangeRequest {
        count_only: true,
        ..all_keys()
    });
    assert_eq!((res.count, res.kvs.len(), fetched), (3000, 0, 0));

    let (keys, fetched) = read(RangeRequest {
        keys_only: true,
        ..all_keys()
    });
    assert_eq!((keys.count, fetched), (3000, 0));
    let (full, fetched) = read(all_keys());
    assert_eq!(fetched, 3000);
    let stripped: Vec<KeyValue> = full
        .kvs
        .into_iter()
        .map(|kv| KeyValue {
            value: Vec::new(),
            ..kv
        })
        .collect();
    assert_eq!(keys.kvs, stripped, "same metadata as read from the values");
    assert_eq!(keys.kvs[0].version, 2);

    // At an older revision the index does not know the metadata: those values are read.
    let (old, fetched) = read(RangeRequest {
        keys_only: true,
        revision: current - 1000,
        ..all_keys()
    });
    assert_eq!((old.count, fetched), (3000, 1000));
    assert!(old.kvs.iter().all(|kv| kv.value.is_empty()));
    // A limit reads only what it returns (plus one, to know there is more).
    let (_, fetched) = read(RangeRequest {
        limit: 10,
        ..all_keys()
    });
    assert_eq!(fetched, 11);
}

/// Readers opening views while the applier takes the write lock over and over: a view is
/// opened under one read lock. Taking it twice (the install check, then the view) deadlocks
/// a fair lock when the applier starts waiting in between: the reader holds the first read
/// lock and waits behind the applier, which waits for that read lock to go (a leader under
/// reads and writes stopped for good this way).
#[test]
fn views_open_while_the_applier_writes_without_a_deadlock() {
    let (_dir, store) = open();
    put_all(&store, 0..10, b"v", 10);
    let (done_tx, done_rx) = mpsc::channel();
    let run_for = Duration::from_millis(1500);
    for reader in 0..3 {
        let (store, done_tx) = (store.clone(), done_tx.clone());
        std::thread::spawn(move || {
            let start = std::time::Instant::now();
            let mut opened = 0u64;
            while start.elapsed() < run_for {
                let view = store.try_read().expect("no install");
                drop(view);
                opened += 1;
            }
            let _ = done_tx.send(("reader", reader, opened));
        });
    }
    {
        let (store, done_tx) = (store.clone(), done_tx.clone());
        std::thread::spawn(move || {
            let start = std::time::Instant::now();
            let mut i = 0u32;
            while start.elapsed() < run_for {
                put_all(&store, std::iter::once(i % 10), b"w", 1);
                i += 1;
            }
            let _ = done_tx.send(("applier", 0, u64::from(i)));
        });
    }
    drop(done_tx);
    for _ in 0..4 {
        let (who, n, count) = done_rx
            .recv_timeout(Duration::from_secs(20))
            .expect("readers and the applier deadlocked on the index lock");
        assert!(count > 0, "{who} {n} made no progress");
    }
}
