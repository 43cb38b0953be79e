//! Watch semantics (reference §2.9): IDs, start revisions, compaction, filters, progress,
//! cancel, fragments, atomic revisions and slow watchers. Every read is bounded.

mod common;
use common::{put_op, TestNode, WatchConn, TIMEOUT};
use etcd_proto::etcdserverpb::watch_create_request::FilterType;
use etcd_proto::etcdserverpb::watch_request::RequestUnion;
use etcd_proto::etcdserverpb::{
    CompactionRequest, DeleteRangeRequest, PutRequest, TxnRequest, WatchCancelRequest,
    WatchCreateRequest, WatchProgressRequest, WatchResponse,
};
use etcd_proto::mvccpb::event::EventType;
use etcd_proto::mvccpb::{Event, KeyValue};
use std::time::{Duration, Instant};

const QUIET: Duration = Duration::from_millis(300);

fn create(key: &str) -> WatchCreateRequest {
    WatchCreateRequest {
        key: key.into(),
        ..Default::default()
    }
}

fn prefix(p: &str) -> WatchCreateRequest {
    let mut end = p.as_bytes().to_vec();
    *end.last_mut().unwrap() += 1;
    WatchCreateRequest {
        key: p.into(),
        range_end: end,
        ..Default::default()
    }
}

/// (type, key, mod_revision) of each event.
fn summary(events: &[Event]) -> Vec<(EventType, String, i64)> {
    events
        .iter()
        .map(|e| {
            let kv = e.kv.as_ref().unwrap();
            (
                EventType::try_from(e.r#type).unwrap(),
                String::from_utf8(kv.key.clone()).unwrap(),
                kv.mod_revision,
            )
        })
        .collect()
}

/// Reads event responses until `n` events arrived (failing on anything else).
async fn events(w: &mut WatchConn, id: i64, n: usize) -> Vec<Event> {
    let mut out = Vec::new();
    while out.len() < n {
        let r = w.next().await;
        assert_eq!(r.watch_id, id, "{r:?}");
        assert!(!r.created && !r.canceled, "{r:?}");
        assert!(!r.events.is_empty(), "unexpected non-event response {r:?}");
        out.extend(r.events);
    }
    assert_eq!(out.len(), n, "more events than expected: {out:?}");
    out
}

async fn delete(n: &TestNode, key: &str) -> i64 {
    n.kv()
        .delete_range(DeleteRangeRequest {
            key: key.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .header
        .unwrap()
        .revision
}

async fn compact(n: &TestNode, revision: i64) {
    n.kv()
        .compact(CompactionRequest {
            revision,
            physical: true,
        })
        .await
        .unwrap();
}

#[tokio::test]
async fn watch_ids_start_at_0_per_stream_and_increase() {
    let n = TestNode::start().await;
    let mut w = n.watch_stream().await;
    assert_eq!(w.watch_key("a").await, 0);
    assert_eq!(w.watch_key("a").await, 1);
    // A client-chosen ID is used as given...
    let r = w
        .create(WatchCreateRequest {
            watch_id: 3,
            ..create("a")
        })
        .await;
    assert_eq!(r.watch_id, 3);
    // ...and auto-assignment skips IDs in use.
    assert_eq!(w.watch_key("a").await, 2);
    assert_eq!(w.watch_key("a").await, 4);
    let r = w
        .create(WatchCreateRequest {
            watch_id: 100,
            ..create("a")
        })
        .await;
    assert_eq!(r.watch_id, 100);
    // Another stream starts again at 0.
    let mut w2 = n.watch_stream().await;
    assert_eq!(w2.watch_key("a").await, 0);
    // Every watcher gets the event, under its own ID.
    let rev = n.put("a", "1").await;
    let mut ids = Vec::new();
    for _ in 0..6 {
        let r = w.next().await;
        assert_eq!(summary(&r.events), [(EventType::Put, "a".into(), rev)]);
        assert_eq!(r.header.unwrap().revision, rev);
        ids.push(r.watch_id);
    }
    ids.sort();
    assert_eq!(ids, [0, 1, 2, 3, 4, 100]);
    assert_eq!(w2.next().await.watch_id, 0);
}

#[tokio::test]
async fn duplicate_watch_id_is_rejected() {
    let n = TestNode::start().await;
    n.put("x", "1").await;
    let mut w = n.watch_stream().await;
    let r = w
        .create(WatchCreateRequest {
            watch_id: 7,
            ..create("a")
        })
        .await;
    assert_eq!(r.watch_id, 7);
    assert_eq!(w.watch_key("a").await, 0);
    // Twice: a rejection does not remove the watcher that holds the ID.
    for _ in 0..2 {
        w.send(RequestUnion::CreateRequest(WatchCreateRequest {
            watch_id: 7,
            ..create("b")
        }))
        .await;
        let r = w.next().await;
        assert!(r.created && r.canceled, "{r:?}");
        assert_eq!(r.watch_id, -1);
        assert_eq!(
            r.cancel_reason,
            "mvcc: duplicate watch ID provided on the WatchStream"
        );
        assert!(r.events.is_empty());
    }
    // 0 means "assign one", never a duplicate.
    assert_eq!(w.watch_key("a").await, 1);
    // A duplicate of an auto-assigned ID too.
    w.send(RequestUnion::CreateRequest(WatchCreateRequest {
        watch_id: 1,
        ..create("b")
    }))
    .await;
    let r = w.next().await;
    assert_eq!((r.created, r.canceled, r.watch_id), (true, true, -1));
    // The original watcher 7 is untouched and the rejected one does not exist.
    n.put("b", "1").await;
    w.expect_silence(QUIET).await;
    let rev = n.put("a", "1").await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        let r = w.next().await;
        assert_eq!(r.header.as_ref().unwrap().revision, rev);
        ids.push(r.watch_id);
    }
    ids.sort();
    assert_eq!(ids, [0, 1, 7]);
}

#[tokio::test]
async fn created_response_carries_the_current_revision() {
    let n = TestNode::start().await;
    n.put("a", "1").await;
    n.put("a", "2").await;
    let mut w = n.watch_stream().await;
    let r = w.create(create("a")).await;
    let h = r.header.unwrap();
    assert_eq!(h.revision, 3);
    assert_ne!(h.cluster_id, 0);
    assert_ne!(h.member_id, 0);
    assert!(!r.canceled);
    assert!(r.events.is_empty());
    // Even when replaying from the past, created comes first, at the current revision.
    let r = w
        .create(WatchCreateRequest {
            start_revision: 2,
            ..create("a")
        })
        .await;
    assert_eq!(r.header.unwrap().revision, 3);
    let ev = events(&mut w, r.watch_id, 2).await;
    assert_eq!(
        summary(&ev),
        [
            (EventType::Put, "a".into(), 2),
            (EventType::Put, "a".into(), 3)
        ]
    );
}

#[tokio::test]
async fn start_revision_0_means_from_now() {
    let n = TestNode::start().await;
    n.put("a", "before").await;
    let mut w = n.watch_stream().await;
    let id = w.watch_key("a").await;
    w.expect_silence(QUIET).await;
    let rev = n.put("a", "after").await;
    let ev = events(&mut w, id, 1).await;
    assert_eq!(ev[0].kv.as_ref().unwrap().value, b"after");
    assert_eq!(ev[0].kv.as_ref().unwrap().mod_revision, rev);
    // Keys outside the range are not reported.
    n.put("b", "x").await;
    n.put("aa", "x").await;
    w.expect_silence(QUIET).await;
}

#[tokio::test]
async fn past_start_revision_replays_history_then_follows() {
    let n = TestNode::start().await;
    n.put("p/a", "1").await; // 2
    n.put("p/b", "1").await; // 3
    n.put("q", "1").await; // 4
    n.put("p/a", "2").await; // 5
    delete(&n, "p/b").await; // 6
    let mut w = n.watch_stream().await;
    let r = w
        .create(WatchCreateRequest {
            start_revision: 3,
            ..prefix("p/")
        })
        .await;
    let ev = events(&mut w, r.watch_id, 3).await;
    assert_eq!(
        summary(&ev),
        [
            (EventType::Put, "p/b".into(), 3),
            (EventType::Put, "p/a".into(), 5),
            (EventType::Delete, "p/b".into(), 6),
        ]
    );
    let kv = ev[1].kv.as_ref().unwrap();
    assert_eq!(
        (kv.create_revision, kv.version, kv.value.as_slice()),
        (2, 2, &b"2"[..])
    );
    // Then live events, none twice.
    n.put("p/c", "1").await; // 7
    let ev = events(&mut w, r.watch_id, 1).await;
    assert_eq!(summary(&ev), [(EventType::Put, "p/c".into(), 7)]);
    w.expect_silence(QUIET).await;
    // A replay from revision 1 sees everything.
    let mut w2 = n.watch_stream().await;
    let r = w2
        .create(WatchCreateRequest {
            start_revision: 1,
            ..prefix("p/")
        })
        .await;
    let ev = events(&mut w2, r.watch_id, 5).await;
    let revs: Vec<i64> = summary(&ev).into_iter().map(|e| e.2).collect();
    assert_eq!(revs, [2, 3, 5, 6, 7]);
}

#[tokio::test]
async fn future_start_revision_waits_for_it() {
    let n = TestNode::start().await;
    n.put("a", "1").await; // 2
    let mut w = n.watch_stream().await;
    let r = w
        .create(WatchCreateRequest {
            start_revision: 5,
            ..create("a")
        })
        .await;
    assert_eq!(r.header.unwrap().revision, 2);
    n.put("a", "2").await; // 3
    n.put("a", "3").await; // 4
    w.expect_silence(QUIET).await;
    n.put("a", "4").await; // 5
    let ev = events(&mut w, r.watch_id, 1).await;
    assert_eq!(summary(&ev), [(EventType::Put, "a".into(), 5)]);
}

#[tokio::test]
async fn compacted_start_revision_is_created_then_canceled() {
    let n = TestNode::start().await;
    for v in ["1", "2", "3", "4"] {
        n.put("foo", v).await;
    } // rev 5
    compact(&n, 4).await;
    let mut w = n.watch_stream().await;
    let r = w
        .create(WatchCreateRequest {
            start_revision: 2,
            ..create("foo")
        })
        .await;
    assert!(!r.canceled);
    assert_eq!(r.header.unwrap().revision, 5);
    let id = r.watch_id;
    let c = w.next().await;
    assert_eq!(c.watch_id, id);
    assert!(c.canceled && !c.created, "{c:?}");
    assert_eq!(c.compact_revision, 4);
    assert!(c.events.is_empty());
    // The compaction cancel carries header revision 0 (observed on 3.4.23).
    assert_eq!(c.header.unwrap().revision, 0);
    // The watcher is gone.
    n.put("foo", "5").await;
    w.expect_silence(QUIET).await;
    // Watching from the compact revision itself works.
    let r = w
        .create(WatchCreateRequest {
            start_revision: 4,
            ..create("foo")
        })
        .await;
    let ev = events(&mut w, r.watch_id, 3).await;
    let revs: Vec<i64> = summary(&ev).into_iter().map(|e| e.2).collect();
    assert_eq!(revs, [4, 5, 6]);
}

#[tokio::test]
async fn negative_start_revision_is_rejected() {
    let n = TestNode::start().await;
    n.put("a", "1").await;
    let mut w = n.watch_stream().await;
    w.send(RequestUnion::CreateRequest(WatchCreateRequest {
        start_revision: -1,
        ..create("a")
    }))
    .await;
    let r = w.next().await;
    assert_eq!(
        (r.created, r.canceled, r.watch_id),
        (true, true, -1),
        "{r:?}"
    );
    assert_eq!(
        r.cancel_reason,
        "etcdserver: mvcc: required revision has been compacted"
    );
    n.put("a", "2").await;
    w.expect_silence(QUIET).await;
    // The stream still works, and the rejection did not use up ID 0.
    assert_eq!(w.watch_key("a").await, 0);
}

#[tokio::test]
async fn empty_range_is_rejected() {
    let n = TestNode::start().await;
    let mut w = n.watch_stream().await;
    for (key, end) in [("foo", "a"), ("foo", "foo")] {
        w.send(RequestUnion::CreateRequest(WatchCreateRequest {
            key: key.into(),
            range_end: end.into(),
            ..Default::default()
        }))
        .await;
        let r = w.next().await;
        assert_eq!(
            (r.created, r.canceled, r.watch_id),
            (true, true, -1),
            "{r:?}"
        );
        assert_eq!(r.cancel_reason, "mvcc: watcher range is empty");
    }
    n.put("foo", "1").await;
    w.expect_silence(QUIET).await;
}

#[tokio::test]
async fn empty_key_with_from_key_end_watches_everything() {
    let n = TestNode::start().await;
    let mut w = n.watch_stream().await;
    let r = w
        .create(WatchCreateRequest {
            key: Vec::new(),
            range_end: b"\0".to_vec(),
            ..Default::default()
        })
        .await;
    n.put("\x01", "1").await;
    n.put("zzz", "1").await;
    let ev = events(&mut w, r.watch_id, 2).await;
    assert_eq!(ev[0].kv.as_ref().unwrap().key, b"\x01");
    assert_eq!(ev[1].kv.as_ref().unwrap().key, b"zzz");
}

#[tokio::test]
async fn prev_kv_and_delete_event_shape() {
    let n = TestNode::start().await;
    n.put("foo", "bar").await; // 2
    let mut w = n.watch_stream().await;
    let with = w
        .create(WatchCreateRequest {
            prev_kv: true,
            ..create("foo")
        })
        .await
        .watch_id;
    let without = w.watch_key("foo").await;
    n.put("foo", "baz").await; // 3
    let rev = delete(&n, "foo").await; // 4
    n.put("foo", "new").await; // 5
    let mut got_with = Vec::new();
    let mut got_without = Vec::new();
    while got_with.len() < 3 || got_without.len() < 3 {
        let r = w.next().await;
        if r.watch_id == with {
            got_with.extend(r.events);
        } else {
            assert_eq!(r.watch_id, without);
            got_without.extend(r.events);
        }
    }
    // Put with prev_kv: the previous value.
    let prev = got_with[0].prev_kv.as_ref().unwrap();
    assert_eq!(prev.value, b"bar");
    assert_eq!((prev.mod_revision, prev.version), (2, 1));
    // A DELETE event: key and mod_revision only.
    assert_eq!(got_with[1].r#type, EventType::Delete as i32);
    assert_eq!(
        got_with[1].kv,
        Some(KeyValue {
            key: b"foo".to_vec(),
            mod_revision: rev,
            ..Default::default()
        })
    );
    let prev = got_with[1].prev_kv.as_ref().unwrap();
    assert_eq!(
        (prev.value.as_slice(), prev.mod_revision, prev.version),
        (&b"baz"[..], 3, 2)
    );
    // A re-create has no previous value.
    assert!(got_with[2].prev_kv.is_none());
    assert_eq!(got_with[2].kv.as_ref().unwrap().version, 1);
    // Without the flag, no prev_kv at all.
    assert!(got_without.iter().all(|e| e.prev_kv.is_none()));
    assert_eq!(
        summary(&got_with),
        summary(&got_without),
        "same events either way"
    );
}

#[tokio::test]
async fn prev_kv_is_omitted_when_the_previous_revision_was_compacted() {
    let n = TestNode::start().await;
    n.put("a", "1").await; // 2
    n.put("b", "1").await; // 3
    n.put("a", "2").await; // 4
    n.put("b", "2").await; // 5
    n.put("a", "3").await; // 6
    compact(&n, 5).await;
    let mut w = n.watch_stream().await;
    let id = w
        .create(WatchCreateRequest {
            key: "a".into(),
            range_end: "c".into(),
            start_revision: 5,
            prev_kv: true,
            ..Default::default()
        })
        .await
        .watch_id;
    let ev = events(&mut w, id, 2).await;
    // b@5: its previous value (at revision 4) is compacted, so there is none.
    assert_eq!(summary(&ev[..1]), [(EventType::Put, "b".into(), 5)]);
    assert!(ev[0].prev_kv.is_none(), "{:?}", ev[0]);
    // a@6: the previous value as of revision 5 (a@4) is still readable.
    let prev = ev[1].prev_kv.as_ref().expect("prev_kv of a@6");
    assert_eq!((prev.value.as_slice(), prev.mod_revision), (&b"2"[..], 4));
}

#[tokio::test]
async fn filters_drop_puts_or_deletes() {
    let n = TestNode::start().await;
    let mut noput = n.watch_stream().await;
    let id_noput = noput
        .create(WatchCreateRequest {
            filters: vec![FilterType::Noput as i32],
            ..create("k")
        })
        .await
        .watch_id;
    let mut nodel = n.watch_stream().await;
    let id_nodel = nodel
        .create(WatchCreateRequest {
            filters: vec![FilterType::Nodelete as i32],
            ..create("k")
        })
        .await
        .watch_id;
    let mut both = n.watch_stream().await;
    both.create(WatchCreateRequest {
        filters: vec![FilterType::Noput as i32, FilterType::Nodelete as i32],
        ..create("k")
    })
    .await;
    let put_rev = n.put("k", "1").await;
    // A batch that the filter empties is not sent at all.
    noput.expect_silence(QUIET).await;
    let del_rev = delete(&n, "k").await;
    let ev = events(&mut noput, id_noput, 1).await;
    assert_eq!(summary(&ev), [(EventType::Delete, "k".into(), del_rev)]);
    let ev = events(&mut nodel, id_nodel, 1).await;
    assert_eq!(summary(&ev), [(EventType::Put, "k".into(), put_rev)]);
    nodel.expect_silence(QUIET).await;
    both.expect_silence(Duration::from_millis(50)).await;
}

#[tokio::test]
async fn progress_request_answers_with_watch_id_minus_1() {
    let n = TestNode::start().await;
    n.put("a", "1").await; // 2
    let mut w = n.watch_stream().await;
    // Even with no watchers.
    w.send(RequestUnion::ProgressRequest(WatchProgressRequest {}))
        .await;
    let r = w.next().await;
    assert_eq!(r.watch_id, -1);
    assert!(!r.created && !r.canceled && r.events.is_empty());
    assert_eq!(r.header.unwrap().revision, 2);
    let id = w.watch_key("a").await;
    w.watch_key("b").await;
    n.put("b", "x").await; // 3
    n.put("c", "x").await; // 4
    w.send(RequestUnion::ProgressRequest(WatchProgressRequest {}))
        .await;
    // The event for b comes first (every later event is newer than the progress revision).
    let mut progress = None;
    for _ in 0..2 {
        let r = w.next().await;
        if r.watch_id == -1 {
            progress = Some(r);
        } else {
            assert!(progress.is_none(), "event after the progress notify: {r:?}");
            assert_eq!(summary(&r.events), [(EventType::Put, "b".into(), 3)]);
        }
    }
    let p = progress.unwrap();
    assert!(p.events.is_empty() && p.compact_revision == 0);
    assert_eq!(p.header.unwrap().revision, 4);
    // The watchers are still there.
    n.put("a", "2").await;
    assert_eq!(events(&mut w, id, 1).await.len(), 1);
}

#[tokio::test]
async fn progress_notify_on_an_interval() {
    let n = TestNode::start_with(&["--experimental-watch-progress-notify-interval=200ms"]).await;
    n.put("x", "1").await; // 2
    let mut w = n.watch_stream().await;
    let id = w
        .create(WatchCreateRequest {
            progress_notify: true,
            ..create("a")
        })
        .await
        .watch_id;
    // A second watcher that did not ask for progress notifications.
    w.watch_key("a").await;
    let mut notifies = 0;
    let start = Instant::now();
    while notifies < 3 {
        assert!(start.elapsed() < TIMEOUT, "progress notifications too slow");
        let r = w.next().await;
        assert_eq!(
            r.watch_id, id,
            "only the watcher that asked gets them: {r:?}"
        );
        assert!(!r.created && !r.canceled && r.events.is_empty() && r.compact_revision == 0);
        assert_eq!(r.header.unwrap().revision, 2);
        notifies += 1;
    }
    // The revision moves with the store.
    n.put("x", "2").await; // 3
    loop {
        let r = w.next().await;
        assert_eq!(r.watch_id, id);
        if r.header.unwrap().revision == 3 {
            break;
        }
    }
}

/// etcd reads an interval of 0 as "no periodic notifications"; a zero-period timer used to
/// panic the stream's task, so the watch never answered.
#[tokio::test]
async fn progress_notify_interval_0_turns_them_off() {
    let n = TestNode::start_with(&["--experimental-watch-progress-notify-interval=0"]).await;
    let mut w = n.watch_stream().await;
    let id = w
        .create(WatchCreateRequest {
            progress_notify: true,
            ..create("a")
        })
        .await
        .watch_id;
    let rev = n.put("a", "1").await;
    let events = events(&mut w, id, 1).await;
    assert_eq!(summary(&events), vec![(EventType::Put, "a".into(), rev)]);
    w.expect_silence(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn cancel_stops_a_watcher() {
    let n = TestNode::start().await;
    let mut w = n.watch_stream().await;
    let a = w.watch_key("k").await;
    let b = w.watch_key("k").await;
    let rev = n.put("other", "1").await;
    w.send(RequestUnion::CancelRequest(WatchCancelRequest {
        watch_id: a,
    }))
    .await;
    let r = w.next().await;
    assert_eq!((r.watch_id, r.canceled, r.created), (a, true, false));
    assert_eq!(r.header.unwrap().revision, rev);
    assert!(r.cancel_reason.is_empty());
    // Cancelling an unknown ID is ignored.
    w.send(RequestUnion::CancelRequest(WatchCancelRequest {
        watch_id: 42,
    }))
    .await;
    w.expect_silence(QUIET).await;
    n.put("k", "1").await;
    let r = w.next().await;
    assert_eq!(r.watch_id, b);
    w.expect_silence(QUIET).await;
    // A cancelled ID is free again for a client that asks for it.
    w.send(RequestUnion::CancelRequest(WatchCancelRequest {
        watch_id: b,
    }))
    .await;
    assert!(w.next().await.canceled);
    let r = w
        .create(WatchCreateRequest {
            watch_id: b,
            ..create("k")
        })
        .await;
    assert_eq!((r.watch_id, r.canceled), (b, false));
}

#[tokio::test]
async fn many_watchers_on_one_stream() {
    let n = TestNode::start().await;
    let mut w = n.watch_stream().await;
    let mut ids = Vec::new();
    for i in 0..20 {
        ids.push(w.watch_key(&format!("k{i:02}")).await);
    }
    let all = w.create(prefix("k")).await.watch_id;
    let t = n
        .kv()
        .txn(TxnRequest {
            success: (0..20).map(|i| put_op(&format!("k{i:02}"), "v")).collect(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let rev = t.header.unwrap().revision;
    let mut seen = std::collections::BTreeMap::new();
    for _ in 0..21 {
        let r = w.next().await;
        assert_eq!(r.header.as_ref().unwrap().revision, rev);
        assert!(
            seen.insert(r.watch_id, r.events).is_none(),
            "two responses for one watcher"
        );
    }
    for (i, id) in ids.iter().enumerate() {
        assert_eq!(
            summary(&seen[id]),
            [(EventType::Put, format!("k{i:02}"), rev)]
        );
    }
    assert_eq!(seen[&all].len(), 20);
    w.expect_silence(QUIET).await;
}

#[tokio::test]
async fn several_streams_each_get_the_events() {
    let n = TestNode::start().await;
    let mut streams = Vec::new();
    for _ in 0..4 {
        let mut w = n.watch_stream().await;
        assert_eq!(w.watch_key("k").await, 0);
        streams.push(w);
    }
    let r1 = n.put("k", "1").await;
    let r2 = n.put("k", "2").await;
    for w in &mut streams {
        let ev = events(w, 0, 2).await;
        assert_eq!(
            summary(&ev),
            [
                (EventType::Put, "k".into(), r1),
                (EventType::Put, "k".into(), r2)
            ]
        );
    }
    // Closing one stream does not disturb the others.
    drop(streams.pop());
    let r3 = n.put("k", "3").await;
    for w in &mut streams {
        assert_eq!(
            events(w, 0, 1).await[0].kv.as_ref().unwrap().mod_revision,
            r3
        );
    }
}

#[tokio::test]
async fn events_of_one_txn_arrive_in_one_response() {
    let n = TestNode::start().await;
    n.put("p/z", "old").await;
    let mut w = n.watch_stream().await;
    let id = w.create(prefix("p/")).await.watch_id;
    let t = n
        .kv()
        .txn(TxnRequest {
            success: vec![
                put_op("p/c", "1"),
                put_op("p/a", "1"),
                common::delete_op("p/z", ""),
                put_op("p/b", "1"),
                put_op("q", "outside"),
            ],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let rev = t.header.unwrap().revision;
    let r = w.next().await;
    assert_eq!(r.watch_id, id);
    assert_eq!(r.header.unwrap().revision, rev);
    // Whole, in the txn's own order.
    assert_eq!(
        summary(&r.events),
        [
            (EventType::Put, "p/c".into(), rev),
            (EventType::Put, "p/a".into(), rev),
            (EventType::Delete, "p/z".into(), rev),
            (EventType::Put, "p/b".into(), rev),
        ]
    );
    assert!(!r.fragment);
    w.expect_silence(QUIET).await;
}

#[tokio::test]
async fn client_half_close_keeps_the_stream_open() {
    let n = TestNode::start().await;
    let mut w = n.watch_stream().await;
    let id = w.watch_key("k").await;
    drop(w.tx.take());
    tokio::time::sleep(Duration::from_millis(100)).await;
    let rev = n.put("k", "1").await;
    let ev = events(&mut w, id, 1).await;
    assert_eq!(ev[0].kv.as_ref().unwrap().mod_revision, rev);
}

#[tokio::test]
async fn large_revisions_are_fragmented_only_on_request() {
    // Responses above max-request-bytes + 512 KiB (589,824 bytes here) are split for watchers
    // that set `fragment`.
    let n = TestNode::start_with(&["--max-request-bytes=65536"]).await;
    let value = vec![b'v'; 60_000];
    for i in 0..12 {
        n.kv()
            .put(PutRequest {
                key: format!("big/{i:02}").into(),
                value: value.clone(),
                ..Default::default()
            })
            .await
            .unwrap();
    }
    let mut frag = n.watch_stream().await;
    let fid = frag
        .create(WatchCreateRequest {
            prev_kv: true,
            fragment: true,
            ..prefix("big/")
        })
        .await
        .watch_id;
    let mut whole = n.watch_stream().await;
    let wid = whole
        .create(WatchCreateRequest {
            prev_kv: true,
            ..prefix("big/")
        })
        .await
        .watch_id;
    // One revision deleting all 12 keys: about 720 KB of events with their prev_kv.
    let rev = n
        .kv()
        .delete_range(DeleteRangeRequest {
            key: "big/".into(),
            range_end: "big0".into(),
            prev_kv: false,
        })
        .await
        .unwrap()
        .into_inner()
        .header
        .unwrap()
        .revision;
    // Not fragmenting: one response with every event.
    let r = whole.next().await;
    assert_eq!(r.watch_id, wid);
    assert!(!r.fragment);
    assert_eq!(r.events.len(), 12);
    // Fragmenting: several responses, all but the last marked, together the whole revision.
    let mut parts: Vec<WatchResponse> = Vec::new();
    loop {
        let r = frag.next().await;
        assert_eq!(r.watch_id, fid);
        assert_eq!(r.header.as_ref().unwrap().revision, rev);
        let last = !r.fragment;
        parts.push(r);
        if last {
            break;
        }
    }
    assert!(parts.len() >= 2, "expected fragments, got {}", parts.len());
    let merged: Vec<Event> = parts.into_iter().flat_map(|p| p.events).collect();
    assert_eq!(merged.len(), 12);
    for (i, e) in merged.iter().enumerate() {
        assert_eq!(e.r#type, EventType::Delete as i32);
        assert_eq!(e.kv.as_ref().unwrap().key, format!("big/{i:02}").as_bytes());
        assert_eq!(e.prev_kv.as_ref().unwrap().value.len(), 60_000);
    }
    frag.expect_silence(QUIET).await;
}

#[tokio::test]
async fn a_watcher_that_never_reads_does_not_block_writes() {
    let n = TestNode::start().await;
    // A stream whose responses nobody reads, watching everything from revision 1.
    let mut slow = n.watch_stream().await;
    slow.create(WatchCreateRequest {
        key: b"\0".to_vec(),
        range_end: b"\0".to_vec(),
        start_revision: 1,
        prev_kv: true,
        ..Default::default()
    })
    .await;
    let value = "x".repeat(16 * 1024);
    let start = Instant::now();
    let mut slowest = Duration::ZERO;
    for i in 0..400 {
        let t = Instant::now();
        let rev = tokio::time::timeout(TIMEOUT, n.put(&format!("k{}", i % 50), &value))
            .await
            .expect("a write stalled behind a slow watcher");
        assert_eq!(rev, i + 2);
        slowest = slowest.max(t.elapsed());
    }
    assert!(
        slowest < Duration::from_secs(2),
        "slowest write took {slowest:?}"
    );
    assert!(start.elapsed() < Duration::from_secs(60));
    // Other watchers still get events promptly.
    let mut w = n.watch_stream().await;
    let id = w.watch_key("fresh").await;
    let rev = n.put("fresh", "1").await;
    let ev = events(&mut w, id, 1).await;
    assert_eq!(ev[0].kv.as_ref().unwrap().mod_revision, rev);
    // And the slow stream, once read, delivers everything in order, nothing lost.
    let mut next = 2;
    while next <= rev {
        let r = slow.next().await;
        for e in &r.events {
            assert_eq!(e.kv.as_ref().unwrap().mod_revision, next);
            next += 1;
        }
    }
}

/// Revisions written while no stream is open build no events (the applier skips them); a
/// watcher opened later still replays every revision from the store, including the gap after
/// revisions that were kept in memory while an earlier stream was open.
#[tokio::test]
async fn history_written_while_nobody_watched_is_replayed() {
    let n = TestNode::start().await;
    let hub = n.node.as_ref().unwrap().server.hub.clone();
    let mut w = n.watch_stream().await;
    w.watch_key("k").await;
    n.put("k", "1").await; // 2: kept in memory, a stream is open
    n.put("k", "2").await; // 3
    drop(w);
    let deadline = Instant::now() + TIMEOUT;
    while hub.stream_count() > 0 {
        assert!(
            Instant::now() < deadline,
            "the closed stream is still counted"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    n.put("k", "3").await; // 4: nobody watches
    n.put("k", "4").await; // 5
    let mut w = n.watch_stream().await;
    let r = w
        .create(WatchCreateRequest {
            start_revision: 2,
            prev_kv: true,
            ..create("k")
        })
        .await;
    n.put("k", "5").await; // 6: live again
    let ev = events(&mut w, r.watch_id, 5).await;
    let revs: Vec<i64> = summary(&ev).into_iter().map(|e| e.2).collect();
    assert_eq!(revs, [2, 3, 4, 5, 6]);
    let prevs: Vec<&[u8]> = ev[1..]
        .iter()
        .map(|e| e.prev_kv.as_ref().unwrap().value.as_slice())
        .collect();
    assert_eq!(prevs, [&b"1"[..], b"2", b"3", b"4"]);
}
