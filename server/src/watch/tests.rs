//! The hub's memory bounds: the history in bytes, and one catch-up read in bytes.

use super::*;
use crate::backend::Backend;

/// A store on a fresh backend, and `n` puts of `value_len`-byte values to one key (so that
/// every revision after the first carries a `prev_kv` as large as its value), published to a
/// hub as the applier publishes them.
fn hub_with_puts(
    dir: &std::path::Path,
    max_history: usize,
    n: usize,
    value_len: usize,
) -> WatchHub {
    let backend = Backend::open(dir).unwrap();
    let (store, _) = Store::open(backend).unwrap();
    let hub = WatchHub::with_history_bytes(Arc::new(store), max_history);
    for i in 0..n {
        let mut w = hub.store().write();
        w.begin_txn();
        w.put(b"key", vec![b'a' + (i % 26) as u8; value_len], 0, false)
            .unwrap();
        let current = w.end_txn();
        let events = w.commit().unwrap();
        hub.publish(events, current);
    }
    hub
}

#[test]
fn history_stays_under_its_byte_cap() {
    let dir = tempfile::tempdir().unwrap();
    let cap = 1 << 20;
    // 64 revisions of 100 KiB values, each with a 100 KiB prev_kv: about 12.5 MiB.
    let hub = hub_with_puts(dir.path(), cap, 64, 100 << 10);
    let held = hub.history_bytes();
    assert!(held <= cap, "history holds {held} bytes, cap {cap}");
    // Still the latest revisions, contiguous, and more than none.
    let recent = hub.recent.read();
    assert!(
        recent.revs.len() >= 4,
        "{} revisions kept",
        recent.revs.len()
    );
    assert_eq!(recent.revs.back().unwrap().0.rev, hub.current_rev());
    for pair in recent.revs.iter().collect::<Vec<_>>().windows(2) {
        assert_eq!(pair[0].0.rev + 1, pair[1].0.rev);
    }
    assert_eq!(
        recent.bytes,
        recent.revs.iter().map(|(r, _)| rev_bytes(r)).sum::<usize>()
    );
}

#[test]
fn catch_up_reads_are_bounded_in_bytes() {
    let dir = tempfile::tempdir().unwrap();
    // Nothing in memory: every read comes from the store.
    let hub = hub_with_puts(dir.path(), 0, 40, 50 << 10);
    assert_eq!(hub.history_bytes(), 0);
    let current = hub.current_rev();
    let max = 300 << 10;
    let mut from = 2;
    let mut seen = Vec::new();
    while from <= current {
        let b = hub.events(from, current, max).unwrap();
        let bytes: usize = b.revs.iter().map(|r| rev_bytes(r)).sum();
        // At most the budget plus the first small window's overshoot.
        assert!(bytes <= max + 4 * (101 << 10), "{bytes} bytes in one read");
        assert!(!b.revs.is_empty() && b.upto >= from);
        seen.extend(b.revs.iter().map(|r| r.rev));
        from = b.upto + 1;
    }
    assert_eq!(
        seen,
        (2..=current).collect::<Vec<_>>(),
        "every revision once, in order"
    );
    // From memory: the batch shares the history's revisions and stops near the budget too.
    let dir = tempfile::tempdir().unwrap();
    let hub = hub_with_puts(dir.path(), 64 << 20, 40, 50 << 10);
    let b = hub.events(2, hub.current_rev(), max).unwrap();
    let bytes: usize = b.revs.iter().map(|r| rev_bytes(r)).sum();
    assert!(
        bytes <= max + (101 << 10) && b.upto < hub.current_rev(),
        "{bytes}"
    );
    assert!(Arc::ptr_eq(&b.revs[0], &hub.recent.read().revs[0].0));
}
