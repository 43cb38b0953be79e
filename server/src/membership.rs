//! Cluster membership and identity (etcd's `api/membership`): member IDs derived from peer URLs
//! and the cluster token, the cluster ID from the initial member IDs, both persisted so a restart
//! never changes them. The member list changes only when the applier applies a conf change (or
//! a member update) from the log, in the same batch as the applied index.

use crate::backend::{meta_key, Backend};
use crate::config::InitialMember;
use crate::error::{Error, Result};
use etcd_proto::etcdserverpb::Member;
use fjall::OwnedWriteBatch;
use parking_lot::RwLock;
use prost::Message;
use sha1::{Digest, Sha1};
use std::collections::HashSet;

/// Meta key of the IDs of members removed from the cluster (8 bytes each, big-endian).
const REMOVED_MEMBERS: &str = "removed_members";

/// etcd's `computeMemberID`: sha1(sorted peer URLs + token [+ unix seconds]), first 8 bytes,
/// big-endian. Initial members use no time, so every member computes the same IDs.
pub fn member_id(peer_urls: &[String], token: &str, now: Option<u64>) -> u64 {
    let mut urls = peer_urls.to_vec();
    urls.sort();
    let mut h = Sha1::new();
    h.update(urls.concat().as_bytes());
    h.update(token.as_bytes());
    if let Some(t) = now {
        h.update(t.to_string().as_bytes());
    }
    u64::from_be_bytes(h.finalize()[..8].try_into().unwrap())
}

/// etcd's `genID`: sha1 over the sorted member IDs (8 bytes each, big-endian).
pub fn cluster_id(member_ids: &[u64]) -> u64 {
    let mut ids = member_ids.to_vec();
    ids.sort_unstable();
    let mut h = Sha1::new();
    for id in ids {
        h.update(id.to_be_bytes());
    }
    u64::from_be_bytes(h.finalize()[..8].try_into().unwrap())
}

pub struct Membership {
    backend: Backend,
    pub member_id: u64,
    pub cluster_id: u64,
    members: RwLock<Vec<Member>>,
    /// Members removed for good: their peer traffic is refused, which tells a removed member
    /// that missed its own removal to stop.
    removed: RwLock<HashSet<u64>>,
}

/// How this start found its identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// Loaded from the data directory.
    Restarted,
    /// A new cluster from `--initial-cluster`.
    Bootstrapped,
    /// Joined an existing cluster whose members already list this one.
    Joined,
}

impl Membership {
    /// The persisted identity, if this data directory has one.
    pub fn load(backend: Backend) -> Result<Option<Self>> {
        let id = backend.get_meta_u64(meta_key::MEMBER_ID)?;
        let cid = backend.get_meta_u64(meta_key::CLUSTER_ID)?;
        let (Some(member_id), Some(cluster_id)) = (id, cid) else {
            return Ok(None);
        };
        let members = read_members(&backend)?;
        let removed = read_removed(&backend)?;
        Ok(Some(Membership {
            backend,
            member_id,
            cluster_id,
            members: RwLock::new(members),
            removed: RwLock::new(removed),
        }))
    }

    /// A new cluster: IDs computed from `--initial-cluster`.
    pub fn bootstrap(
        backend: Backend,
        name: &str,
        initial: &[InitialMember],
        token: &str,
    ) -> Result<Self> {
        let members: Vec<Member> = initial
            .iter()
            .map(|im| Member {
                id: member_id(&im.peer_urls, token, None),
                name: im.name.clone(),
                peer_ur_ls: im.peer_urls.clone(),
                client_ur_ls: Vec::new(),
                is_learner: false,
            })
            .collect();
        let me = members
            .iter()
            .find(|m| m.name == name)
            .ok_or_else(|| Error::internal("local member missing from initial cluster"))?
            .id;
        let cid = cluster_id(&members.iter().map(|m| m.id).collect::<Vec<_>>());
        Self::persist_identity(backend, me, cid, members)
    }

    /// Joining: the cluster (learned from a peer) must already list a member with our peer URLs.
    pub fn join(
        backend: Backend,
        cluster_id: u64,
        members: Vec<Member>,
        my_peer_urls: &[String],
    ) -> Result<Self> {
        let mut mine = my_peer_urls.to_vec();
        mine.sort();
        let me = members
            .iter()
            .find(|m| {
                let mut urls = m.peer_ur_ls.clone();
                urls.sort();
                urls == mine
            })
            .ok_or_else(|| {
                Error::Internal(format!(
                    "no member of the existing cluster has peer URLs {my_peer_urls:?}; \
                     add this member first (etcdctl member add)"
                ))
            })?
            .id;
        Self::persist_identity(backend, me, cluster_id, members)
    }

    fn persist_identity(
        backend: Backend,
        member_id: u64,
        cluster_id: u64,
        members: Vec<Member>,
    ) -> Result<Self> {
        let mut batch = backend.db.batch();
        for m in &members {
            batch.insert(&backend.members, m.id.to_be_bytes(), m.encode_to_vec());
        }
        batch.insert(
            &backend.meta,
            meta_key::MEMBER_ID,
            member_id.to_be_bytes().to_vec(),
        );
        batch.insert(
            &backend.meta,
            meta_key::CLUSTER_ID,
            cluster_id.to_be_bytes().to_vec(),
        );
        batch
            .durability(Some(fjall::PersistMode::SyncData))
            .commit()?;
        Ok(Membership {
            backend,
            member_id,
            cluster_id,
            members: RwLock::new(members),
            removed: RwLock::default(),
        })
    }

    /// Re-reads the member list after a snapshot replaced it.
    pub fn reload(&self) -> Result<()> {
        *self.members.write() = read_members(&self.backend)?;
        Ok(())
    }

    pub fn members(&self) -> Vec<Member> {
        self.members.read().clone()
    }

    pub fn get(&self, id: u64) -> Option<Member> {
        self.members.read().iter().find(|m| m.id == id).cloned()
    }

    pub fn voter_ids(&self) -> Vec<u64> {
        self.members
            .read()
            .iter()
            .filter(|m| !m.is_learner)
            .map(|m| m.id)
            .collect()
    }

    /// Every other member with its first peer URL.
    pub fn peers(&self) -> Vec<(u64, String)> {
        self.members
            .read()
            .iter()
            .filter(|m| m.id != self.member_id)
            .filter_map(|m| m.peer_ur_ls.first().map(|u| (m.id, u.clone())))
            .collect()
    }

    /// Adds `m`, or promotes it when it is a learner being added as a voter.
    pub fn add(&self, batch: &mut OwnedWriteBatch, m: Member) {
        let mut members = self.members.write();
        let stored = match members.iter_mut().find(|x| x.id == m.id) {
            Some(x) => {
                x.is_learner = m.is_learner;
                if !m.peer_ur_ls.is_empty() {
                    x.peer_ur_ls = m.peer_ur_ls;
                }
                x.clone()
            }
            None => {
                members.push(m.clone());
                m
            }
        };
        batch.insert(
            &self.backend.members,
            stored.id.to_be_bytes(),
            stored.encode_to_vec(),
        );
    }

    pub fn remove(&self, batch: &mut OwnedWriteBatch, id: u64) {
        self.members.write().retain(|m| m.id != id);
        batch.remove(&self.backend.members, id.to_be_bytes());
        let mut removed = self.removed.write();
        removed.insert(id);
        let bytes: Vec<u8> = removed.iter().flat_map(|i| i.to_be_bytes()).collect();
        batch.insert(&self.backend.meta, REMOVED_MEMBERS, bytes);
    }

    /// Whether `id` is a member (voter or learner) as far as this member has applied.
    pub fn contains(&self, id: u64) -> bool {
        self.members.read().iter().any(|m| m.id == id)
    }

    pub fn is_removed(&self, id: u64) -> bool {
        self.removed.read().contains(&id)
    }

    /// Changes a member's fields in place (name, URLs); false when it is not a member.
    pub fn update(
        &self,
        batch: &mut OwnedWriteBatch,
        id: u64,
        f: impl FnOnce(&mut Member),
    ) -> bool {
        let mut members = self.members.write();
        let Some(m) = members.iter_mut().find(|m| m.id == id) else {
            return false;
        };
        f(m);
        batch.insert(&self.backend.members, id.to_be_bytes(), m.encode_to_vec());
        true
    }
}

fn read_removed(backend: &Backend) -> Result<HashSet<u64>> {
    Ok(match backend.meta.get(REMOVED_MEMBERS)? {
        Some(v) => v
            .chunks_exact(8)
            .map(|c| u64::from_be_bytes(c.try_into().unwrap()))
            .collect(),
        None => HashSet::new(),
    })
}

fn read_members(backend: &Backend) -> Result<Vec<Member>> {
    let mut members = Vec::new();
    for item in backend.members.iter() {
        let (_, v) = item.into_inner()?;
        members.push(Member::decode(v.as_ref()).map_err(Error::internal)?);
    }
    Ok(members)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_deterministic() {
        let a = member_id(
            &["http://b:2380".into(), "http://a:2380".into()],
            "tok",
            None,
        );
        let b = member_id(
            &["http://a:2380".into(), "http://b:2380".into()],
            "tok",
            None,
        );
        assert_eq!(a, b);
        assert_ne!(a, member_id(&["http://a:2380".into()], "tok", None));
        assert_ne!(
            a,
            member_id(
                &["http://a:2380".into(), "http://b:2380".into()],
                "tok",
                Some(1)
            )
        );
        assert_eq!(cluster_id(&[3, 1, 2]), cluster_id(&[1, 2, 3]));
    }
}
