//! The watchers of one stream (etcd's `watcherGroup`), indexed by key: a new revision's events
//! are matched to the watchers of their keys with one lookup per event, where a scan compared
//! every event with every watcher's range. With 10,000 watchers on 100 keys, over 100 streams,
//! every put woke each stream to compare its key with 100 ranges, and only one matched.
//!
//! Single-key watchers (most: Patroni's and etcd's own clients watch a key or a prefix) are
//! found by their key; range watchers are kept apart and tested one by one.

use crate::mvcc::{KeyRange, RevEvents};
use etcd_proto::mvccpb::{event::EventType, Event};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

pub struct Watcher {
    pub range: KeyRange,
    /// The first revision this watcher has not been sent yet.
    pub next_rev: i64,
    pub prev_kv: bool,
    pub no_put: bool,
    pub no_delete: bool,
    pub progress_notify: bool,
    pub fragment: bool,
    pub notified_since_tick: bool,
}

impl Watcher {
    /// This watcher's events among `revs` from revision `from` on, shaped for it.
    pub fn events_from(&self, revs: &[Arc<RevEvents>], from: i64, compact_rev: i64) -> Vec<Event> {
        revs.iter()
            .filter(|r| r.rev >= from)
            .flat_map(|r| r.events.iter())
            .filter(|e| self.wants(e))
            .map(|e| self.shape(e, compact_rev))
            .collect()
    }

    fn wants(&self, e: &Event) -> bool {
        let Some(kv) = &e.kv else { return false };
        if !self.range.contains(&kv.key) {
            return false;
        }
        let is_delete = e.r#type == EventType::Delete as i32;
        !(is_delete && self.no_delete || !is_delete && self.no_put)
    }

    /// The event as this watcher gets it. `prev_kv` is the value as of `mod_revision - 1`, which
    /// etcd reads at send time: omitted once that revision is below the compaction point.
    fn shape(&self, e: &Event, compact_rev: i64) -> Event {
        let prev_readable =
            e.kv.as_ref()
                .is_some_and(|kv| kv.mod_revision > compact_rev);
        Event {
            r#type: e.r#type,
            kv: e.kv.clone(),
            prev_kv: if self.prev_kv && prev_readable {
                e.prev_kv.clone()
            } else {
                None
            },
        }
    }
}

/// A stream's watchers by id, with the key index.
#[derive(Default)]
pub struct Watchers {
    by_id: BTreeMap<i64, Watcher>,
    /// Single-key watchers by their key.
    by_key: HashMap<Vec<u8>, Vec<i64>>,
    /// Watchers of a range (a prefix, `--from-key`, an interval).
    ranged: BTreeSet<i64>,
}

impl Watchers {
    pub fn insert(&mut self, id: i64, w: Watcher) {
        self.remove(id);
        if w.range.is_single() {
            self.by_key
                .entry(w.range.start.clone())
                .or_default()
                .push(id);
        } else {
            self.ranged.insert(id);
        }
        self.by_id.insert(id, w);
    }

    pub fn remove(&mut self, id: i64) -> Option<Watcher> {
        let w = self.by_id.remove(&id)?;
        if w.range.is_single() {
            if let Some(ids) = self.by_key.get_mut(&w.range.start) {
                ids.retain(|i| *i != id);
                if ids.is_empty() {
                    self.by_key.remove(&w.range.start);
                }
            }
        } else {
            self.ranged.remove(&id);
        }
        Some(w)
    }

    pub fn contains_key(&self, id: i64) -> bool {
        self.by_id.contains_key(&id)
    }

    pub fn get_mut(&mut self, id: i64) -> Option<&mut Watcher> {
        self.by_id.get_mut(&id)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&i64, &Watcher)> {
        self.by_id.iter()
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = (&i64, &mut Watcher)> {
        self.by_id.iter_mut()
    }

    /// The watchers that may have an event among `revs` (their range holds one of its keys),
    /// in id order; the caller still filters by revision and event type.
    pub fn touched_by(&self, revs: &[Arc<RevEvents>]) -> BTreeSet<i64> {
        let mut ids = BTreeSet::new();
        for e in revs.iter().flat_map(|r| r.events.iter()) {
            let Some(kv) = &e.kv else { continue };
            if let Some(found) = self.by_key.get(&kv.key) {
                ids.extend(found);
            }
            for id in &self.ranged {
                if self.by_id[id].range.contains(&kv.key) {
                    ids.insert(*id);
                }
            }
        }
        ids
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use etcd_proto::mvccpb::KeyValue;

    fn watcher(key: &[u8], end: &[u8]) -> Watcher {
        Watcher {
            range: KeyRange::new(key, end),
            next_rev: 1,
            prev_kv: false,
            no_put: false,
            no_delete: false,
            progress_notify: false,
            fragment: false,
            notified_since_tick: false,
        }
    }

    fn rev(rev: i64, keys: &[&[u8]]) -> Arc<RevEvents> {
        Arc::new(RevEvents {
            rev,
            events: keys
                .iter()
                .map(|k| Event {
                    kv: Some(KeyValue {
                        key: k.to_vec(),
                        ..Default::default()
                    }),
                    ..Default::default()
                })
                .collect(),
        })
    }

    #[test]
    fn events_reach_the_watchers_of_their_keys_and_ranges_only() {
        let mut ws = Watchers::default();
        ws.insert(1, watcher(b"a", b""));
        ws.insert(2, watcher(b"b", b""));
        ws.insert(3, watcher(b"a", b""));
        ws.insert(4, watcher(b"b", b"c")); // [b, c)
        ws.insert(5, watcher(b"x", b"\0")); // from x on
        let touched = |ws: &Watchers, keys: &[&[u8]]| {
            ws.touched_by(&[rev(2, keys)])
                .into_iter()
                .collect::<Vec<_>>()
        };
        assert_eq!(touched(&ws, &[b"a"]), vec![1, 3]);
        assert_eq!(touched(&ws, &[b"b"]), vec![2, 4]);
        assert_eq!(touched(&ws, &[b"bz", b"zz"]), vec![4, 5]);
        assert!(touched(&ws, &[b"c"]).is_empty());

        // Removed (and replaced) watchers leave the index.
        ws.remove(1);
        ws.insert(4, watcher(b"q", b""));
        assert_eq!(touched(&ws, &[b"a", b"bz"]), vec![3]);
        assert_eq!(touched(&ws, &[b"q"]), vec![4]);
        ws.remove(3);
        assert!(!ws.by_key.contains_key(b"a".as_slice()));
        assert!(!ws.ranged.contains(&4));
    }
}
