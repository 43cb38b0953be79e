//! A snapshot captured from one store, streamed in small chunks, staged and installed on
//! another; the receiver's refusals; an install interrupted after its marker, redone at the
//! next open.

use super::install::{self, MARKER};
use super::receive::receive;
use super::source::SnapshotSource;
use super::*;
use crate::backend::meta_key;
use crate::raft::RaftStorage;
use etcd_proto::pgraftpb::SnapshotChunk;
use protobuf::Message as PbMessage;
use raft::eraftpb::{ConfState, Entry, Message, MessageType, Snapshot, SnapshotMetadata};
use raft::Storage as _;
use tonic::{Code, Status};

const CLUSTER: u64 = 7;

type Pairs = Vec<(Vec<u8>, Vec<u8>)>;

fn dump(ks: &Keyspace) -> Pairs {
    ks.iter()
        .map(|g| {
            let (k, v) = g.into_inner().unwrap();
            (k.to_vec(), v.to_vec())
        })
        .collect()
}

fn state(b: &Backend) -> [Pairs; 3] {
    [dump(&b.kv), dump(&b.lease), dump(&b.members)]
}

/// A store of a few hundred KB, with values bigger than the chunks they travel in.
fn leader_backend(dir: &Path) -> Backend {
    let b = Backend::open(dir).unwrap();
    for i in 0u32..200 {
        let len = if i % 50 == 0 { 5000 } else { 1000 };
        b.kv.insert(i.to_be_bytes(), vec![i as u8; len]).unwrap();
    }
    b.lease
        .insert(5i64.to_be_bytes(), 60i64.to_be_bytes())
        .unwrap();
    b.members.insert(1u64.to_be_bytes(), b"member one").unwrap();
    b.meta
        .insert(meta_key::CURRENT_REV, 300i64.to_be_bytes())
        .unwrap();
    b.meta
        .insert(meta_key::COMPACT_REV, 12i64.to_be_bytes())
        .unwrap();
    b.meta
        .insert(meta_key::APPLIED_INDEX, 40u64.to_be_bytes())
        .unwrap();
    b
}

/// The leader's snapshot stream: header, data chunks of `chunk` bytes, done.
fn capture_chunks(b: &Backend, chunk: usize) -> Vec<SnapshotChunk> {
    let source = SnapshotSource::default();
    let captured = source
        .capture(b, |index| {
            let mut meta = SnapshotMetadata {
                index,
                term: 3,
                ..Default::default()
            };
            meta.set_conf_state(ConfState {
                voters: vec![1, 2],
                ..Default::default()
            });
            Ok(meta)
        })
        .unwrap();
    // Writes after the capture are not in it.
    b.kv.insert(999u32.to_be_bytes(), b"later").unwrap();
    let mut m = Message::default();
    m.set_msg_type(MessageType::MsgSnapshot);
    m.from = 1;
    m.to = 2;
    m.set_snapshot(captured.raft_snapshot());
    let mut chunks = vec![SnapshotChunk {
        message: m.write_to_bytes().unwrap(),
        cluster_id: CLUSTER,
        ..Default::default()
    }];
    let streamed = captured
        .stream(chunk, |data| {
            assert!(data.len() <= chunk);
            chunks.push(SnapshotChunk {
                data,
                cluster_id: CLUSTER,
                ..Default::default()
            });
            true
        })
        .unwrap();
    chunks.push(SnapshotChunk {
        cluster_id: CLUSTER,
        done: true,
        length: streamed.length,
        sha1: streamed.sha1,
        ..Default::default()
    });
    chunks
}

async fn receive_all(dir: &Path, chunks: Vec<SnapshotChunk>) -> Result<Message, Status> {
    receive(
        dir,
        CLUSTER,
        futures::stream::iter(chunks.into_iter().map(Ok)),
    )
    .await
}

fn files(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .collect()
}

#[tokio::test]
async fn receiver_refuses_oversized_chunks_and_truncated_streams() {
    let src = tempfile::tempdir().unwrap();
    let leader = leader_backend(src.path());
    let chunks = capture_chunks(&leader, 4096);
    assert!(chunks.len() > 50, "{} chunks", chunks.len());
    let dst = tempfile::tempdir().unwrap();
    let dir = staging_dir(dst.path());

    let mut oversized = chunks[..3].to_vec();
    oversized.push(SnapshotChunk {
        data: vec![1; MAX_CHUNK + 1],
        cluster_id: CLUSTER,
        ..Default::default()
    });
    let e = receive_all(&dir, oversized).await.unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert!(files(&dir).is_empty(), "left behind: {:?}", files(&dir));

    // Cut before the done chunk, or before the last data chunk (done claims more).
    let truncated = chunks[..chunks.len() - 1].to_vec();
    let e = receive_all(&dir, truncated).await.unwrap_err();
    assert_eq!(e.code(), Code::DataLoss, "{e:?}");
    let mut short = chunks.clone();
    short.remove(short.len() - 2);
    let e = receive_all(&dir, short).await.unwrap_err();
    assert_eq!(e.code(), Code::DataLoss, "{e:?}");
    assert!(files(&dir).is_empty(), "left behind: {:?}", files(&dir));

    // No header; another cluster; garbage records.
    let e = receive_all(&dir, chunks[1..].to_vec()).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    let mut foreign = chunks.clone();
    foreign[0].cluster_id = CLUSTER + 1;
    assert!(receive_all(&dir, foreign).await.is_err());
    let mut garbage = chunks[..1].to_vec();
    garbage.push(SnapshotChunk {
        data: vec![0xff; 64],
        cluster_id: CLUSTER,
        ..Default::default()
    });
    let e = receive_all(&dir, garbage).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(files(&dir).is_empty(), "left behind: {:?}", files(&dir));

    // The whole stream is staged, with a descriptor that names and checks the file.
    let m = receive_all(&dir, chunks).await.unwrap();
    let desc = Descriptor::decode_from(&m.get_snapshot().data).unwrap();
    assert_eq!(files(&dir), [PathBuf::from(&desc.file)]);
    assert_eq!(std::fs::metadata(&desc.file).unwrap().len(), desc.length);
    assert_eq!(
        (desc.index, desc.current_rev, desc.compact_rev),
        (40, 300, 12)
    );

    // A staged file cut short afterwards is refused before the state is touched.
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&desc.file)
        .unwrap();
    f.set_len(desc.length - 1).unwrap();
    let b = Backend::open(dst.path()).unwrap();
    b.kv.insert(b"mine", b"kept").unwrap();
    let e = install::install(&b, m.get_snapshot(), b.db.batch()).unwrap_err();
    assert!(e.to_string().contains("expected"), "{e}");
    assert!(b.raft_meta.get(MARKER).unwrap().is_none());
    assert_eq!(b.kv.get(b"mine").unwrap().as_deref(), Some(&b"kept"[..]));
}

/// The leader's snapshot, sent in `chunk`-byte chunks and staged under `dst`, with the state
/// it holds (the leader's, less the write made after the capture).
async fn staged_from_leader(dst: &Path, chunk: usize) -> (Snapshot, [Pairs; 3]) {
    let src = tempfile::tempdir().unwrap();
    let leader = leader_backend(src.path());
    let chunks = capture_chunks(&leader, chunk);
    let mut expected = state(&leader);
    expected[0].retain(|(k, _)| k.as_slice() != 999u32.to_be_bytes());
    let m = receive_all(&staging_dir(dst), chunks).await.unwrap();
    (m.get_snapshot().clone(), expected)
}

/// A follower with older state and a raft log of its own.
fn follower(dir: &Path) -> (Backend, RaftStorage) {
    let b = Backend::open(dir).unwrap();
    for i in 0u32..50 {
        b.kv.insert((1000 + i).to_be_bytes(), b"old").unwrap();
    }
    b.lease
        .insert(9i64.to_be_bytes(), 10i64.to_be_bytes())
        .unwrap();
    let storage = RaftStorage::open(b.clone()).unwrap();
    storage.bootstrap(vec![1, 2]).unwrap();
    let entries: Vec<Entry> = (2..=5)
        .map(|index| Entry {
            index,
            term: 1,
            ..Default::default()
        })
        .collect();
    storage.persist(&entries, None).unwrap();
    b.sync_journal().unwrap();
    (b, storage)
}

#[tokio::test]
async fn install_interrupted_after_its_marker_is_redone_at_the_next_open() {
    let dst = tempfile::tempdir().unwrap();
    let (snap, expected) = staged_from_leader(dst.path(), 1000).await;
    let desc = Descriptor::decode_from(&snap.data).unwrap();
    {
        let (b, _storage) = follower(dst.path());
        // The install starts: its marker, then the first batches (the state is half gone).
        install::write_marker(&b, &snap).unwrap();
        install::clear(&b).unwrap();
        b.kv.insert(1u32.to_be_bytes(), b"half").unwrap();
        b.sync_journal().unwrap();
        // The member stops here.
    }
    let b = Backend::open(dst.path()).unwrap();
    install::recover(&b, dst.path()).unwrap();
    assert_eq!(state(&b), expected);
    assert_eq!(b.get_meta_i64(meta_key::CURRENT_REV).unwrap(), Some(300));
    assert_eq!(b.get_meta_i64(meta_key::COMPACT_REV).unwrap(), Some(12));
    assert_eq!(b.get_meta_u64(meta_key::APPLIED_INDEX).unwrap(), Some(40));
    assert!(b.raft_meta.get(MARKER).unwrap().is_none(), "marker kept");
    assert!(!Path::new(&desc.file).exists(), "staged file kept");
    let storage = RaftStorage::open(b.clone()).unwrap();
    assert_eq!(storage.first_index().unwrap(), 41);
    assert_eq!(storage.term(40).unwrap(), 3);
    assert_eq!(storage.conf_state().voters, [1, 2]);
    assert!(b.raft_log.iter().next().is_none(), "old log entries kept");
    assert!(stats().installed >= 1);

    // A marker whose file is gone: the member refuses to start.
    install::write_marker(&b, &snap).unwrap();
    let e = install::recover(&b, dst.path()).unwrap_err();
    assert!(e.to_string().contains("which is gone"), "{e}");
}

/// The install in two steps (the raft thread stages, an installer thread fills) stopped in
/// between, after raft appended entries past the snapshot: the next open redoes the fill and
/// keeps those entries (they may have been acknowledged to the leader).
#[tokio::test]
async fn staged_install_interrupted_keeps_the_entries_appended_since() {
    let dst = tempfile::tempdir().unwrap();
    let (snap, expected) = staged_from_leader(dst.path(), 1000).await;
    {
        let (b, storage) = follower(dst.path());
        install::stage(&b, &storage, &snap).unwrap();
        assert!(b.raft_meta.get(MARKER).unwrap().is_some());
        assert_eq!(storage.first_index().unwrap(), 41);
        // Raft goes on: entries after the snapshot, made durable.
        let after: Vec<Entry> = (41..=43)
            .map(|index| Entry {
                index,
                term: 3,
                ..Default::default()
            })
            .collect();
        storage.persist(&after, None).unwrap();
        install::clear(&b).unwrap();
        b.sync_journal().unwrap();
        // The member stops here, the state half replaced.
    }
    let b = Backend::open(dst.path()).unwrap();
    install::recover(&b, dst.path()).unwrap();
    assert_eq!(state(&b), expected);
    assert_eq!(b.get_meta_u64(meta_key::APPLIED_INDEX).unwrap(), Some(40));
    assert!(b.raft_meta.get(MARKER).unwrap().is_none(), "marker kept");
    let storage = RaftStorage::open(b.clone()).unwrap();
    assert_eq!(storage.first_index().unwrap(), 41);
    assert_eq!(
        storage.last_index().unwrap(),
        43,
        "entries after the snapshot lost"
    );
    assert_eq!(storage.term(43).unwrap(), 3);
}

/// Raft's snapshot is a small descriptor of a capture kept in the slot: reused while recent
/// enough, dropped once the log compaction passed it.
#[test]
fn raft_snapshot_is_a_descriptor_of_a_capture_reused_then_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let (b, storage) = follower(dir.path());
    let source = storage.snapshot_source();
    let applied = |i: u64| {
        b.meta
            .insert(meta_key::APPLIED_INDEX, i.to_be_bytes())
            .unwrap()
    };
    applied(3);
    let s1 = storage.snapshot(0, 2).unwrap();
    assert_eq!((s1.get_metadata().index, s1.get_metadata().term), (3, 1));
    assert_eq!(s1.get_metadata().get_conf_state().voters, [1, 2]);
    assert!(s1.data.len() < 64, "{} bytes of data", s1.data.len());
    let d1 = Descriptor::decode_from(&s1.data).unwrap();
    assert!(source.get(&d1).is_some());

    applied(5);
    assert_eq!(storage.snapshot(3, 2).unwrap().data, s1.data, "not reused");
    let s2 = storage.snapshot(4, 2).unwrap();
    assert_eq!(s2.get_metadata().index, 5);
    assert!(source.get(&d1).is_none(), "superseded capture kept");
    let d2 = Descriptor::decode_from(&s2.data).unwrap();
    storage.compact(5).unwrap();
    assert!(
        source.get(&d2).is_some(),
        "a capture the log still needs was dropped"
    );
    // The log moves past the capture: raft can no longer use it, fjall need not keep it.
    storage
        .persist(
            &[Entry {
                index: 6,
                term: 1,
                ..Default::default()
            }],
            None,
        )
        .unwrap();
    storage.compact(6).unwrap();
    assert!(source.get(&d2).is_none(), "a capture behind the log kept");
}

/// A record as a test writes it: tag, key, value.
type Crafted<'a> = (u8, &'a [u8], &'a [u8]);

fn encode_records(records: &[Crafted]) -> Vec<u8> {
    records
        .iter()
        .flat_map(|(tag, k, v)| backup::encode_record(*tag, k, v))
        .collect()
}

/// A stream of `records` under the leader's snapshot header.
fn crafted_chunks(leader: &Backend, records: &[Crafted]) -> Vec<SnapshotChunk> {
    use sha1::{Digest, Sha1};
    let mut chunks = capture_chunks(leader, 1 << 20);
    chunks.truncate(1);
    let data = encode_records(records);
    let sha1 = Sha1::digest(&data).to_vec();
    let length = data.len() as u64;
    // Split in small chunks, so that keys arrive in pieces.
    for piece in data.chunks(3) {
        chunks.push(SnapshotChunk {
            data: piece.to_vec(),
            cluster_id: CLUSTER,
            ..Default::default()
        });
    }
    chunks.push(SnapshotChunk {
        cluster_id: CLUSTER,
        done: true,
        length,
        sha1,
        ..Default::default()
    });
    chunks
}

/// Records an install can only refuse: keys going back or repeated, keyspaces coming again
/// or out of order.
const OUT_OF_ORDER: [&[Crafted]; 4] = [
    &[(1, b"b", b"1"), (1, b"a", b"2")],
    &[(1, b"a", b"1"), (1, b"a", b"2")],
    &[(2, b"a", b"1"), (1, b"b", b"2")],
    &[(1, b"a", b"1"), (2, b"b", b"2"), (1, b"c", b"3")],
];

/// The install writes each keyspace as one ascending run of new tables (fjall's ingestion,
/// which panics on keys out of order, empty or over 65535 bytes): the receiver refuses such a
/// stream before it is staged, so before the state is touched.
#[tokio::test]
async fn streams_the_install_cannot_take_are_refused_before_staging() {
    let src = tempfile::tempdir().unwrap();
    let leader = leader_backend(src.path());
    let long = vec![b'k'; 65536];
    let bad_keys: [&[Crafted]; 2] = [&[(1, b"", b"1")], &[(1, &long, b"1")]];
    for (i, records) in OUT_OF_ORDER.iter().chain(&bad_keys).enumerate() {
        let dst = tempfile::tempdir().unwrap();
        let dir = staging_dir(dst.path());
        let e = receive_all(&dir, crafted_chunks(&leader, records))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "case {i}: {e:?}");
        assert!(files(&dir).is_empty(), "case {i} left {:?}", files(&dir));
    }
    // In order, with the longest key fjall takes: staged.
    let longest = vec![b'k'; 65535];
    let dst = tempfile::tempdir().unwrap();
    let ok: &[Crafted] = &[
        (1, b"a", b"1"),
        (1, &longest, b""),
        (2, b"a", b"2"),
        (5, b"a", b""),
    ];
    receive_all(&staging_dir(dst.path()), crafted_chunks(&leader, ok))
        .await
        .unwrap();
}

/// The install checks the order again (the staged file is its own input, e.g. at a restart's
/// redo): a file out of order is refused as corrupt, with no panic, and the marker stays.
#[tokio::test]
async fn a_staged_file_out_of_order_is_refused_without_a_panic() {
    use sha1::{Digest, Sha1};
    let src = tempfile::tempdir().unwrap();
    let leader = leader_backend(src.path());
    for (i, records) in OUT_OF_ORDER.iter().enumerate() {
        let dst = tempfile::tempdir().unwrap();
        let m = receive_all(&staging_dir(dst.path()), capture_chunks(&leader, 1 << 20))
            .await
            .unwrap();
        // The staged file replaced by one out of order, its descriptor to match.
        let mut snap = m.get_snapshot().clone();
        let mut desc = Descriptor::decode_from(&snap.data).unwrap();
        let data = encode_records(records);
        std::fs::write(&desc.file, &data).unwrap();
        desc.length = data.len() as u64;
        desc.sha1 = Sha1::digest(&data).to_vec();
        snap.data = prost::Message::encode_to_vec(&desc).into();
        let b = Backend::open(dst.path()).unwrap();
        let e = install::install(&b, &snap, b.db.batch()).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("out of key order") || msg.contains("after keyspace"),
            "case {i}: {msg}"
        );
        assert!(
            b.raft_meta.get(MARKER).unwrap().is_some(),
            "case {i}: marker gone"
        );
    }
}

/// A whole install over a member's older state, then writes, then a restart: the journal's
/// replay at the open brings back neither the removed keys nor anything over the installed
/// tables, and the writes after the install stay. The install shows every kv record, in order.
#[tokio::test]
async fn installed_state_survives_a_restart_with_later_writes() {
    let dst = tempfile::tempdir().unwrap();
    let (snap, expected) = staged_from_leader(dst.path(), 4096).await;
    {
        let (b, storage) = follower(dst.path());
        install::stage(&b, &storage, &snap).unwrap();
        let mut seen = Vec::new();
        install::install_staged(&b, &snap, &mut |k, v| {
            seen.push((k.to_vec(), v.to_vec()));
            Ok(())
        })
        .unwrap();
        assert_eq!(
            seen, expected[0],
            "the visitor saw another set of kv records"
        );
        assert_eq!(state(&b), expected);
        // Writes after the install, as the applier makes them: one over an installed key,
        // one new; durable through the journal only.
        b.kv.insert(7u32.to_be_bytes(), b"after").unwrap();
        b.kv.insert(5000u32.to_be_bytes(), b"new").unwrap();
        b.sync_journal().unwrap();
    }
    let b = Backend::open(dst.path()).unwrap();
    install::recover(&b, dst.path()).unwrap();
    let mut want = expected.clone();
    for (k, v) in &mut want[0] {
        if k.as_slice() == 7u32.to_be_bytes() {
            *v = b"after".to_vec();
        }
    }
    want[0].push((5000u32.to_be_bytes().to_vec(), b"new".to_vec()));
    assert_eq!(state(&b), want);
    assert!(b.raft_meta.get(MARKER).unwrap().is_none(), "marker kept");
    assert_eq!(b.get_meta_u64(meta_key::APPLIED_INDEX).unwrap(), Some(40));
}
