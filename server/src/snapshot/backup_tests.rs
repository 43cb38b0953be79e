//! Backup files: what is written is what is read back (records, revisions, counts), the stream
//! counts its remaining bytes down to 0 and ends with the SHA-256 of the file; a corrupted,
//! truncated or foreign file is refused with a clear error; a restore builds a member of a new
//! cluster with the same state.

use super::backup::{self, Piece};
use super::restore::{restore, RestoreArgs};
use super::source::StateView;
use super::*;
use crate::backend::meta_key;
use crate::membership;
use crate::raft::RaftStorage;
use clap::Parser;
use raft::Storage as _;
use sha2::{Digest, Sha256};

type Pairs = Vec<(Vec<u8>, Vec<u8>)>;
/// A record as a test writes it: tag, key, value.
type Crafted<'a> = (u8, &'a [u8], &'a [u8]);

fn dump(ks: &Keyspace) -> Pairs {
    ks.iter()
        .map(|g| {
            let (k, v) = g.into_inner().unwrap();
            (k.to_vec(), v.to_vec())
        })
        .collect()
}

/// A store with values larger than the chunks, leases and a member.
fn source(dir: &Path) -> Backend {
    let b = Backend::open(dir).unwrap();
    for i in 0u32..300 {
        let len = if i % 60 == 0 { 9000 } else { 700 };
        b.kv.insert(i.to_be_bytes(), vec![i as u8; len]).unwrap();
    }
    b.lease
        .insert(5i64.to_be_bytes(), 60i64.to_be_bytes())
        .unwrap();
    b.members.insert(1u64.to_be_bytes(), b"old member").unwrap();
    b.auth.insert("u/alice", b"a user").unwrap();
    for (k, v) in [
        (meta_key::CURRENT_REV, 320i64),
        (meta_key::COMPACT_REV, 17),
        (meta_key::APPLIED_INDEX, 55),
    ] {
        b.meta.insert(k, v.to_be_bytes()).unwrap();
    }
    b
}

/// Writes a backup of `b` as the server streams it; returns the file's bytes and the
/// messages' remaining counts.
fn backup_of(b: &Backend, chunk: usize) -> (Vec<u8>, Vec<u64>) {
    let view = StateView::take(b).unwrap();
    // Writes after the view are not in the backup.
    b.kv.insert(9999u32.to_be_bytes(), b"later").unwrap();
    let mut file = Vec::new();
    let mut remaining = Vec::new();
    let mut digest = None;
    backup::write(&view, 0xc1, 0xa1, chunk, |piece| {
        match piece {
            Piece::Data { blob, remaining: r } => {
                assert!(digest.is_none(), "data after the digest");
                assert!(!blob.is_empty() && blob.len() <= chunk);
                file.extend_from_slice(&blob);
                remaining.push(r);
            }
            Piece::Digest(d) => digest = Some(d),
        }
        true
    })
    .unwrap();
    let digest = digest.expect("the stream ends with a digest");
    assert_eq!(digest, Sha256::digest(&file).to_vec());
    file.extend_from_slice(&digest);
    (file, remaining)
}

fn write_file(dir: &Path, bytes: &[u8]) -> PathBuf {
    let p = dir.join("backup.db");
    std::fs::write(&p, bytes).unwrap();
    p
}

#[test]
fn round_trip_keeps_every_record_and_counts_down_to_zero() {
    let dir = tempfile::tempdir().unwrap();
    let b = source(&dir.path().join("src"));
    let expected = [
        dump(&b.kv),
        dump(&b.lease),
        dump(&b.members),
        dump(&b.alarm),
        dump(&b.auth),
    ];
    let (file, remaining) = backup_of(&b, 4096);
    assert!(remaining.len() > 10, "a stream of many chunks");
    assert!(remaining.windows(2).all(|w| w[0] > w[1]));
    assert_eq!(*remaining.last().unwrap(), 0);
    assert_eq!(remaining[0], (file.len() - backup::DIGEST - 4096) as u64);
    // Found by etcdctl as bbolt files are: a whole number of 512-byte pages, then 32 bytes.
    assert_eq!(file.len() % 512, 32);

    let path = write_file(dir.path(), &file);
    let mut got: [Pairs; 5] = Default::default();
    let s = backup::read(&path, true, |tag, k, v| {
        got[usize::from(tag) - 1].push((k, v));
        Ok(())
    })
    .unwrap();
    assert_eq!(got, expected);
    assert_eq!(s.revision, 320);
    assert_eq!(s.header.compact_rev, 17);
    assert_eq!(s.header.applied_index, 55);
    assert_eq!((s.header.cluster_id, s.header.member_id), (0xc1, 0xa1));
    assert_eq!(s.total_key, 303);
    assert_eq!(s.total_size, (file.len() - backup::DIGEST) as u64);

    // The same state backed up again hashes the same (for `snapshot status`).
    b.kv.remove(9999u32.to_be_bytes()).unwrap();
    let (again, _) = backup_of(&b, 1 << 20);
    let p2 = dir.path().join("again.db");
    std::fs::write(&p2, again).unwrap();
    assert_eq!(
        backup::read(&p2, true, |_, _, _| Ok(())).unwrap().hash,
        s.hash
    );
}

#[test]
fn corrupted_file_is_refused_by_its_hash() {
    let dir = tempfile::tempdir().unwrap();
    let b = source(&dir.path().join("src"));
    let (mut file, _) = backup_of(&b, 1 << 20);
    // A byte of a value, deep in the records: the structure still parses.
    let at = file
        .windows(700)
        .position(|w| w.iter().all(|b| *b == 150))
        .unwrap()
        + 100;
    file[at] ^= 0x55;
    let path = write_file(dir.path(), &file);
    let err = backup::read(&path, true, |_, _, _| Ok(()))
        .unwrap_err()
        .to_string();
    assert!(err.contains("SHA-256 mismatch"), "{err}");
    // Told to skip the check, the reader takes it (as etcdutl's --skip-hash-check).
    assert!(backup::read(&path, false, |_, _, _| Ok(())).is_ok());
}

#[test]
fn truncated_or_foreign_files_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let b = source(&dir.path().join("src"));
    let (file, _) = backup_of(&b, 1 << 20);
    for cut in [1, 32, 33, 1000, file.len() - 20] {
        let path = write_file(dir.path(), &file[..file.len() - cut]);
        for check in [true, false] {
            let err = backup::read(&path, check, |_, _, _| Ok(()))
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("truncated") || err.contains("SHA-256"),
                "cut {cut}: {err}"
            );
        }
    }
    let mut foreign = file.clone();
    foreign[..8].copy_from_slice(b"\0\0\0\0\0\0\0\0");
    let err = backup::read(&write_file(dir.path(), &foreign), false, |_, _, _| Ok(()))
        .unwrap_err()
        .to_string();
    assert!(err.contains("not a pgraft snapshot"), "{err}");
    let mut newer = file;
    newer[11] = 9;
    let err = backup::read(&write_file(dir.path(), &newer), false, |_, _, _| Ok(()))
        .unwrap_err()
        .to_string();
    assert!(err.contains("format version 9"), "{err}");
}

fn restore_args(file: &Path, data_dir: &Path, name: &str) -> RestoreArgs {
    RestoreArgs::parse_from([
        "restore".to_string(),
        file.display().to_string(),
        format!("--name={name}"),
        format!("--data-dir={}", data_dir.display()),
        "--initial-cluster=m1=http://10.0.0.1:2380,m2=http://10.0.0.2:2380,m3=http://10.0.0.3:2380"
            .into(),
        "--initial-cluster-token=restored".into(),
        format!(
            "--initial-advertise-peer-urls=http://10.0.0.{}:2380",
            &name[1..]
        ),
    ])
}

#[test]
fn restore_builds_a_member_of_a_new_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let b = source(&dir.path().join("src"));
    let kv = dump(&b.kv);
    let leases = dump(&b.lease);
    let auth = dump(&b.auth);
    let (file, _) = backup_of(&b, 1 << 20);
    let path = write_file(dir.path(), &file);

    let mut ids = Vec::new();
    for name in ["m1", "m2"] {
        let data = dir.path().join(name);
        let r = restore(&restore_args(&path, &data, name)).unwrap();
        ids.push((r.member_id, r.cluster_id));
        let nb = Backend::open(&data).unwrap();
        assert_eq!(dump(&nb.kv), kv);
        assert_eq!(dump(&nb.lease), leases);
        assert_eq!(dump(&nb.auth), auth, "users and roles survive a restore");
        assert_eq!(nb.get_meta_i64(meta_key::CURRENT_REV).unwrap(), Some(320));
        assert_eq!(nb.get_meta_i64(meta_key::COMPACT_REV).unwrap(), Some(17));
        assert_eq!(nb.get_meta_u64(meta_key::APPLIED_INDEX).unwrap(), Some(55));
        let m = membership::Membership::load(nb.clone()).unwrap().unwrap();
        let names: Vec<_> = m.members().into_iter().map(|m| m.name).collect();
        assert_eq!(names.len(), 3, "{names:?}");
        assert!(!names.contains(&"old member".to_string()));
        let storage = RaftStorage::open(nb.clone()).unwrap();
        let st = storage.initial_state().unwrap();
        assert_eq!(st.conf_state.voters.len(), 3);
        assert_eq!(st.hard_state.commit, 55);
        assert_eq!(storage.first_index().unwrap(), 56);
        assert_eq!(storage.last_index().unwrap(), 55);
        assert!(!dir.path().join(format!("{name}.restoring")).exists());
    }
    assert_ne!(ids[0].0, ids[1].0, "members get their own IDs");
    assert_eq!(ids[0].1, ids[1].1, "one cluster ID for all");
    assert_eq!(
        ids[0].0,
        membership::member_id(&["http://10.0.0.1:2380".into()], "restored", None)
    );

    // An existing data directory is never overwritten.
    let err = restore(&restore_args(&path, &dir.path().join("m1"), "m1"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("exists"), "{err}");
    // A corrupted file creates nothing, wherever the damage is: in the last bytes, or in a
    // value the restore has already written (the records are written as they are read, under
    // a temporary name that a failed restore removes).
    let deep = file
        .windows(700)
        .position(|w| w.iter().all(|b| *b == 150))
        .unwrap()
        + 100;
    // A key's byte: the first symptom is a key out of order, but the file is damaged, and
    // the error says so. (The record of key 150; its key's last byte.)
    let record = backup::encode_record(KV_TAG, &150u32.to_be_bytes(), &[150; 700]);
    let in_key = file
        .windows(record.len())
        .position(|w| w == record)
        .unwrap()
        + RECORD_HEADER
        + 3;
    for at in [file.len() - 100, deep, in_key] {
        let mut bad = file.clone();
        bad[at] ^= 1;
        let err = refused_restore(dir.path(), &bad, "m3");
        assert!(
            err.contains("SHA-256 mismatch") || err.contains("padding"),
            "at {at}: {err}"
        );
    }
}

/// Restores the backup `file` as member `name` in `dir`, which must fail and leave neither
/// the data directory nor the one it was being built in; the error.
fn refused_restore(dir: &Path, file: &[u8], name: &str) -> String {
    let path = write_file(dir, file);
    let data_dir = dir.join(name);
    let err = restore(&restore_args(&path, &data_dir, name))
        .unwrap_err()
        .to_string();
    assert!(!data_dir.exists(), "{err}");
    assert!(!dir.join(format!("{name}.restoring")).exists(), "{err}");
    err
}

/// A backup file of `records` (tag, key, value), with a header that counts them and a
/// matching digest: what the server would write, had it such records.
fn crafted_backup(records: &[Crafted]) -> Vec<u8> {
    let body: Vec<u8> = records
        .iter()
        .flat_map(|(t, k, v)| backup::encode_record(*t, k, v))
        .collect();
    let header = prost::Message::encode_to_vec(&backup::BackupHeader {
        current_rev: 10,
        compact_rev: -1,
        applied_index: 12,
        records: records.len() as u64,
        records_bytes: body.len() as u64,
        ..Default::default()
    });
    let mut file = backup::MAGIC.to_vec();
    file.extend_from_slice(&backup::VERSION.to_be_bytes());
    file.extend_from_slice(&(header.len() as u32).to_be_bytes());
    file.extend_from_slice(&header);
    file.extend_from_slice(&body);
    file.resize(file.len().next_multiple_of(512), 0);
    let digest = Sha256::digest(&file);
    file.extend_from_slice(&digest);
    file
}

/// A restore writes each keyspace as one ascending run of new tables (fjall's ingestion,
/// which panics on keys out of order): a file whose records are not in that order, even one
/// with a good digest, is refused with an error and leaves nothing behind.
#[test]
fn restore_refuses_records_out_of_order_without_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let in_order: &[Crafted] = &[
        (1, b"a", b"1"),
        (1, b"b", b"2"),
        (2, b"l", b"3"),
        (3, b"m", b"old member"),
        (5, b"u/alice", b"4"),
    ];
    let path = write_file(dir.path(), &crafted_backup(in_order));
    restore(&restore_args(&path, &dir.path().join("m1"), "m1")).unwrap();
    let nb = Backend::open(&dir.path().join("m1")).unwrap();
    assert_eq!(dump(&nb.kv).len(), 2);
    assert_eq!(dump(&nb.lease).len(), 1);
    assert_eq!(dump(&nb.auth).len(), 1);
    drop(nb);

    let cases: [&[Crafted]; 5] = [
        &[(1, b"b", b"1"), (1, b"a", b"2")],
        &[(1, b"a", b"1"), (1, b"a", b"2")],
        &[(2, b"a", b"1"), (1, b"b", b"2")],
        &[(1, b"a", b"1"), (2, b"b", b"2"), (1, b"c", b"3")],
        // Records of a keyspace a restore drops (the old members) are checked too.
        &[(1, b"a", b"1"), (3, b"n", b"2"), (3, b"m", b"3")],
    ];
    for (i, records) in cases.iter().enumerate() {
        let err = refused_restore(dir.path(), &crafted_backup(records), "m2");
        assert!(
            err.contains("out of key order") || err.contains("after keyspace"),
            "case {i}: {err}"
        );
    }
}
