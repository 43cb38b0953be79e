//! Cluster membership and identity (etcd's `api/membership`): member IDs derived from peer URLs
//! and the cluster token, the cluster ID from the member IDs, both persisted at bootstrap so a
//! restart never changes them.

use crate::backend::{meta_key, Backend};
use crate::config::InitialMember;
use crate::error::{Error, Result};
use etcd_proto::etcdserverpb::Member;
use parking_lot::RwLock;
use prost::Message;
use sha1::{Digest, Sha1};

/// etcd's `computeMemberID` with no time component: sha1(sorted peer URLs + token), first 8
/// bytes, big-endian.
pub fn member_id(peer_urls: &[String], token: &str) -> u64 {
    let mut urls = peer_urls.to_vec();
    urls.sort();
    let mut h = Sha1::new();
    h.update(urls.concat().as_bytes());
    h.update(token.as_bytes());
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
}

impl Membership {
    /// Loads the persisted identity, or bootstraps it from `--initial-cluster` on first start.
    /// Returns the membership and whether this start bootstrapped a new member.
    pub fn open_or_bootstrap(
        backend: Backend,
        name: &str,
        initial: &[InitialMember],
        token: &str,
    ) -> Result<(Self, bool)> {
        let stored_id = backend.get_meta_u64(meta_key::MEMBER_ID)?;
        let stored_cluster = backend.get_meta_u64(meta_key::CLUSTER_ID)?;
        let mut members = Vec::new();
        for item in backend.members.iter() {
            let (_, v) = item.into_inner()?;
            members.push(Member::decode(v.as_ref()).map_err(Error::internal)?);
        }
        if let (Some(member_id), Some(cluster_id)) = (stored_id, stored_cluster) {
            let m = Membership {
                backend,
                member_id,
                cluster_id,
                members: RwLock::new(members),
            };
            return Ok((m, false));
        }
        let members: Vec<Member> = initial
            .iter()
            .map(|im| Member {
                id: member_id(&im.peer_urls, token),
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
        let mut batch = backend.db.batch();
        for m in &members {
            batch.insert(&backend.members, m.id.to_be_bytes(), m.encode_to_vec());
        }
        batch.insert(
            &backend.meta,
            meta_key::MEMBER_ID,
            me.to_be_bytes().to_vec(),
        );
        batch.insert(
            &backend.meta,
            meta_key::CLUSTER_ID,
            cid.to_be_bytes().to_vec(),
        );
        batch
            .durability(Some(fjall::PersistMode::SyncData))
            .commit()?;
        let m = Membership {
            backend,
            member_id: me,
            cluster_id: cid,
            members: RwLock::new(members),
        };
        Ok((m, true))
    }

    pub fn members(&self) -> Vec<Member> {
        self.members.read().clone()
    }

    pub fn voter_ids(&self) -> Vec<u64> {
        self.members
            .read()
            .iter()
            .filter(|m| !m.is_learner)
            .map(|m| m.id)
            .collect()
    }

    /// Records this member's name and client URLs (etcd publishes them at startup).
    pub fn publish_self(&self, name: &str, client_urls: Vec<String>) -> Result<()> {
        let mut members = self.members.write();
        if let Some(m) = members.iter_mut().find(|m| m.id == self.member_id) {
            m.name = name.to_string();
            m.client_ur_ls = client_urls;
            self.backend
                .members
                .insert(m.id.to_be_bytes(), m.encode_to_vec())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_deterministic() {
        let a = member_id(&["http://b:2380".into(), "http://a:2380".into()], "tok");
        let b = member_id(&["http://a:2380".into(), "http://b:2380".into()], "tok");
        assert_eq!(a, b);
        assert_ne!(a, member_id(&["http://a:2380".into()], "tok"));
        assert_eq!(cluster_id(&[3, 1, 2]), cluster_id(&[1, 2, 3]));
    }
}
