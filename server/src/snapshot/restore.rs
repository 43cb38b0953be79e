//! `pgraftd snapshot restore` (etcdutl's `snapshot restore`): builds the data directory of one
//! member of a NEW cluster from a backup ([`super::backup`]). Run once per member with the
//! same file, `--initial-cluster` and `--initial-cluster-token`; each then starts as a
//! restarted member of that cluster.
//!
//! What the data directory gets:
//! - the backup's keys with every revision, its current and compacted revisions, its leases
//!   (their TTLs start over when the new cluster elects a leader, as after any restart);
//! - a new identity: member IDs from the peer URLs and the token, the cluster ID from the
//!   member IDs (as a bootstrapped cluster computes them), members from `--initial-cluster`
//!   (the backup's member list is the old cluster's and is dropped);
//! - a raft log that starts empty after the backup's applied index (term 1), as if every
//!   member had just installed a raft snapshot at that index with the new voters.
//!
//! The directory is built under a temporary name and renamed into place once synced, so a
//! restore that stops half way leaves no data directory a member would start from.

use super::backup;
use super::ingest::ingest;
use crate::backend::{meta_key, Backend};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::membership::Membership;
use crate::raft::RaftStorage;
use clap::Parser;
use raft::eraftpb::{ConfState, Snapshot, SnapshotMetadata};
use std::path::{Path, PathBuf};

/// `pgraftd snapshot restore`'s flags, named and defaulted as etcdutl's.
#[derive(Parser, Debug, Clone)]
pub struct RestoreArgs {
    /// The backup file (from `etcdctl snapshot save` against pgraftd, or `pgraftd snapshot
    /// save`).
    pub file: PathBuf,
    /// Human-readable name for this member.
    #[arg(long, default_value = "default")]
    pub name: String,
    /// Path to the data directory to create (default: "<name>.etcd"); it must not exist.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Initial cluster configuration for the restored cluster.
    #[arg(long, default_value = "default=http://localhost:2380")]
    pub initial_cluster: String,
    /// Initial cluster token for the restored cluster.
    #[arg(long, default_value = "etcd-cluster")]
    pub initial_cluster_token: String,
    /// List of this member's peer URLs to advertise to the rest of the cluster.
    #[arg(long, default_value = "http://localhost:2380")]
    pub initial_advertise_peer_urls: String,
    /// Ignore the snapshot's integrity hash value.
    #[arg(long)]
    pub skip_hash_check: bool,
}

impl RestoreArgs {
    pub fn data_dir(&self) -> PathBuf {
        self.data_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(format!("{}.etcd", self.name)))
    }

    /// The member's cluster settings as a member's configuration, so that the restored
    /// identity is computed exactly as a bootstrapping member computes it.
    fn member_config(&self) -> Result<Config> {
        let cfg = Config::try_parse_from([
            "pgraftd".to_string(),
            format!("--name={}", self.name),
            format!("--initial-cluster={}", self.initial_cluster),
            format!("--initial-cluster-token={}", self.initial_cluster_token),
            format!(
                "--initial-advertise-peer-urls={}",
                self.initial_advertise_peer_urls
            ),
        ])
        .map_err(|e| Error::Internal(e.to_string()))?;
        Ok(cfg)
    }
}

/// What a restore made.
#[derive(Debug, Clone)]
pub struct Restored {
    pub member_id: u64,
    pub cluster_id: u64,
    pub revision: i64,
    pub data_dir: PathBuf,
}

/// Restores the backup into a new data directory; see the module comment.
pub fn restore(args: &RestoreArgs) -> Result<Restored> {
    let data_dir = args.data_dir();
    if data_dir.exists() {
        return Err(Error::Internal(format!(
            "data-dir {:?} exists",
            data_dir.display().to_string()
        )));
    }
    let cfg = args.member_config()?;
    let initial = cfg
        .initial_members()
        .map_err(|crate::config::ConfigError(e)| Error::Internal(e))?;
    let mut mine: Vec<String> = cfg.advertise_peer_urls();
    mine.sort();
    if let Some(me) = initial.iter().find(|m| m.name == args.name) {
        let mut listed = me.peer_urls.clone();
        listed.sort();
        if listed != mine {
            return Err(Error::Internal(format!(
                "--initial-cluster has {}={} but --initial-advertise-peer-urls is {}",
                args.name,
                listed.join(","),
                mine.join(",")
            )));
        }
    }
    let building = temporary_dir(&data_dir);
    if building.exists() {
        std::fs::remove_dir_all(&building).map_err(Error::internal)?;
    }
    let built = build(args, &cfg, &initial, &building).and_then(|b| {
        sync_dir(&building)?;
        std::fs::rename(&building, &data_dir).map_err(Error::internal)?;
        Ok(b)
    });
    let (restored, summary) = match built {
        Ok(b) => b,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&building);
            return Err(e);
        }
    };
    if let Some(parent) = data_dir.parent() {
        sync_dir(parent)?;
    }
    tracing::info!(
        data_dir = %data_dir.display(),
        member_id = %format!("{:x}", restored.0),
        cluster_id = %format!("{:x}", restored.1),
        revision = summary.revision,
        "restored snapshot"
    );
    Ok(Restored {
        member_id: restored.0,
        cluster_id: restored.1,
        revision: summary.revision,
        data_dir,
    })
}

/// `<data-dir>.restoring`, beside the data directory.
fn temporary_dir(data_dir: &Path) -> PathBuf {
    let mut name = data_dir.as_os_str().to_owned();
    name.push(".restoring");
    PathBuf::from(name)
}

fn sync_dir(dir: &Path) -> Result<()> {
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(Error::internal)
}

/// Fills a fresh database in `dir` from the backup, read once: its records go straight into
/// new tables ([`ingest`]) as they are read, and only once the whole file is read and its
/// digest checked does the raft state that makes it a member's directory follow. A file found
/// bad part way leaves a directory the caller throws away. Returns (member ID, cluster ID) and
/// what the file held.
fn build(
    args: &RestoreArgs,
    cfg: &Config,
    initial: &[crate::config::InitialMember],
    dir: &Path,
) -> Result<((u64, u64), backup::Summary)> {
    let mut reader = backup::Reader::open(&args.file)?;
    let backend = Backend::open(dir)?;
    let file = args.file.display().to_string();
    let ingested = ingest(
        || reader.next_record(),
        |tag| match tag {
            1 => Some(&backend.kv),
            2 => Some(&backend.lease),
            // Users, roles and the auth flag, as etcd's restore keeps its auth buckets.
            5 => Some(&backend.auth),
            // The old cluster's members (the new cluster's come from --initial-cluster) and
            // alarms (raised for the old members).
            _ => None,
        },
        &mut |_, _| Ok(()),
        |what| Error::Internal(format!("snapshot file {file}: {what}")),
    );
    if let Err(e) = ingested {
        // A damaged file says so, whatever its first symptom was.
        if !args.skip_hash_check {
            reader.check_rest()?;
        }
        return Err(e);
    }
    let summary = reader.finish(!args.skip_hash_check)?;
    let header = &summary.header;

    let membership = Membership::bootstrap(
        backend.clone(),
        &cfg.name,
        initial,
        &cfg.initial_cluster_token,
    )?;
    let storage = RaftStorage::open(backend.clone())?;
    let mut meta = SnapshotMetadata {
        index: header.applied_index.max(1),
        term: 1,
        ..Default::default()
    };
    meta.set_conf_state(ConfState {
        voters: membership.voter_ids(),
        ..Default::default()
    });
    let mut snap = Snapshot::default();
    snap.set_metadata(meta);
    let mut last = storage.stage_snapshot(&snap)?;
    let m = &backend.meta;
    last.insert(
        m,
        meta_key::CURRENT_REV,
        header.current_rev.to_be_bytes().to_vec(),
    );
    last.insert(
        m,
        meta_key::COMPACT_REV,
        header.compact_rev.to_be_bytes().to_vec(),
    );
    last.insert(
        m,
        meta_key::APPLIED_INDEX,
        header.applied_index.max(1).to_be_bytes().to_vec(),
    );
    last.durability(Some(fjall::PersistMode::SyncAll))
        .commit()?;
    backend.sync_journal()?;
    let ids = (membership.member_id, membership.cluster_id);
    drop(storage);
    drop(membership);
    drop(backend);
    Ok((ids, summary))
}
