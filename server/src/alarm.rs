//! The alarms a cluster has raised (etcd's `v3alarm.AlarmStore`): NOSPACE when a member's
//! backend passed `--quota-backend-bytes`, CORRUPT when the members' hashes of one revision
//! differ. Alarms are changed only by applying an `AlarmRequest` from the raft log, so every
//! member holds the same set; it is persisted in the `alarm` keyspace (carried by raft
//! snapshots) and read back at start.
//!
//! While an alarm is active the applier refuses writes as etcd's capped and corrupt appliers
//! do (see [`AlarmStore::gate`]).

use crate::backend::Backend;
use crate::error::{Error, Result};
use etcd_proto::etcdserverpb::{AlarmMember, AlarmType};
use parking_lot::RwLock;
use std::collections::BTreeSet;

/// The raised alarms: (member ID, alarm type), the member being the one that raised it (for
/// CORRUPT, the member found diverging).
pub struct AlarmStore {
    backend: Backend,
    active: RwLock<BTreeSet<(u64, i32)>>,
}

/// What an alarm's stored key is: member ID and alarm type, big-endian.
fn key(member: u64, alarm: i32) -> [u8; 12] {
    let mut k = [0u8; 12];
    k[..8].copy_from_slice(&member.to_be_bytes());
    k[8..].copy_from_slice(&alarm.to_be_bytes());
    k
}

fn parse_key(k: &[u8]) -> Option<(u64, i32)> {
    let member = u64::from_be_bytes(k.get(..8)?.try_into().ok()?);
    let alarm = i32::from_be_bytes(k.get(8..12)?.try_into().ok()?);
    Some((member, alarm))
}

/// How etcd prints an alarm in Status `errors` (gogoproto's compact text of `AlarmMember`).
pub fn describe(m: &AlarmMember) -> String {
    let name = AlarmType::try_from(m.alarm)
        .map(|a| a.as_str_name().to_string())
        .unwrap_or_else(|_| m.alarm.to_string());
    format!("memberID:{} alarm:{} ", m.member_id, name)
}

impl AlarmStore {
    /// Loads the stored alarms.
    pub fn open(backend: Backend) -> Result<Self> {
        let store = AlarmStore {
            active: RwLock::new(BTreeSet::new()),
            backend,
        };
        store.reload()?;
        Ok(store)
    }

    /// Reads the stored set again (after a snapshot replaced the state).
    pub fn reload(&self) -> Result<()> {
        let mut set = BTreeSet::new();
        for item in self.backend.alarm.iter() {
            let (k, _) = item.into_inner()?;
            let entry = parse_key(&k).ok_or_else(|| Error::internal("bad alarm key"))?;
            set.insert(entry);
        }
        *self.active.write() = set;
        Ok(())
    }

    /// Raises an alarm in `batch`; the alarm if it was not raised before.
    pub fn activate(
        &self,
        batch: &mut fjall::OwnedWriteBatch,
        member: u64,
        alarm: i32,
    ) -> Option<AlarmMember> {
        if !self.active.write().insert((member, alarm)) {
            return None;
        }
        batch.insert(&self.backend.alarm, key(member, alarm), Vec::new());
        Some(member_alarm(member, alarm))
    }

    /// Clears an alarm in `batch`; the alarm if it was raised.
    pub fn deactivate(
        &self,
        batch: &mut fjall::OwnedWriteBatch,
        member: u64,
        alarm: i32,
    ) -> Option<AlarmMember> {
        if !self.active.write().remove(&(member, alarm)) {
            return None;
        }
        batch.remove(&self.backend.alarm, key(member, alarm));
        Some(member_alarm(member, alarm))
    }

    /// The raised alarms of type `alarm` (every type for `NONE`), as etcd's `Get`.
    pub fn get(&self, alarm: AlarmType) -> Vec<AlarmMember> {
        self.active
            .read()
            .iter()
            .filter(|(_, a)| alarm == AlarmType::None || *a == alarm as i32)
            .map(|&(m, a)| member_alarm(m, a))
            .collect()
    }

    fn raised(&self, alarm: AlarmType) -> bool {
        self.active.read().iter().any(|(_, a)| *a == alarm as i32)
    }

    /// Whether a write may apply now: CORRUPT refuses every write (etcd's `applierV3Corrupt`),
    /// NOSPACE those that take space, puts and lease grants (etcd's `applierV3Capped`).
    pub fn gate(&self, write: WriteKind) -> Result<()> {
        if write == WriteKind::None {
            return Ok(());
        }
        if self.raised(AlarmType::Corrupt) {
            return Err(Error::Corrupt);
        }
        if write == WriteKind::TakesSpace && self.raised(AlarmType::Nospace) {
            return Err(Error::NoSpace);
        }
        Ok(())
    }
}

/// What an applied request does to the store, for the alarm gate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteKind {
    /// Changes no user state (alarms, member attributes).
    None,
    /// Deletes, compacts or revokes: frees space.
    Frees,
    /// Puts or grants a lease.
    TakesSpace,
}

fn member_alarm(member: u64, alarm: i32) -> AlarmMember {
    AlarmMember {
        member_id: member,
        alarm,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alarms_persist_and_gate_writes() {
        let dir = tempfile::tempdir().unwrap();
        let backend = Backend::open(dir.path()).unwrap();
        let store = AlarmStore::open(backend.clone()).unwrap();
        assert_eq!(store.gate(WriteKind::TakesSpace), Ok(()));
        let mut b = backend.db.batch();
        let raised = store.activate(&mut b, 7, AlarmType::Nospace as i32);
        assert_eq!(raised.unwrap().member_id, 7);
        assert!(store
            .activate(&mut b, 7, AlarmType::Nospace as i32)
            .is_none());
        b.commit().unwrap();
        assert_eq!(store.gate(WriteKind::TakesSpace), Err(Error::NoSpace));
        assert_eq!(store.gate(WriteKind::Frees), Ok(()));
        assert_eq!(store.get(AlarmType::Corrupt), vec![]);
        assert_eq!(
            describe(&store.get(AlarmType::None)[0]),
            "memberID:7 alarm:NOSPACE "
        );

        let again = AlarmStore::open(backend.clone()).unwrap();
        assert_eq!(again.get(AlarmType::Nospace).len(), 1);
        let mut b = backend.db.batch();
        again.activate(&mut b, 9, AlarmType::Corrupt as i32);
        assert!(again
            .deactivate(&mut b, 7, AlarmType::Nospace as i32)
            .is_some());
        b.commit().unwrap();
        assert_eq!(again.gate(WriteKind::Frees), Err(Error::Corrupt));
        store.reload().unwrap();
        assert_eq!(store.get(AlarmType::None), again.get(AlarmType::None));
    }
}
