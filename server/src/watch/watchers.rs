//! The watchers of one stream (etcd's `watcherGroup`s), indexed by key: a new revision's events
//! are matched to the watchers of their keys with one lookup per event, where a scan compared
//! every event with every watcher's range. With 10,000 watchers on 100 keys, over 100 streams,
//! every put woke each stream to compare its key with 100 ranges, and only one matched.
//!
//! The watchers are found through a [`KeyIndex`]: single keys by hash, ranges (prefixes,
//! `--from-key`, intervals) through an interval tree.
//!
//! Like etcd's `synced` and `unsynced` groups, the watchers that are up to date share one
//! position, [`Watchers::synced_next`]: a new revision moves that one number and touches only
//! the watchers its events are for, not every watcher of the stream. The synced watchers read
//! only the revisions the hub routed to the stream ([`super::routing`]); those still catching up
//! from history (created with a past start revision) read every revision from their own
//! position until they reach the current one, and then join the synced ones.

use super::keyindex::KeyIndex;
use crate::mvcc::{KeyRange, RevEvents};
use etcd_proto::mvccpb::{event::EventType, Event};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

pub struct Watcher {
    pub range: KeyRange,
    /// Behind (catching up): the first revision it has not been sent yet. Synced: the revision
    /// it starts at; it is owed revisions from the later of this and the synced position.
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

/// A stream's watchers by id, with the key index and the synced position.
#[derive(Default)]
pub struct Watchers {
    by_id: BTreeMap<i64, Watcher>,
    /// The watchers of each key and range.
    index: KeyIndex<BTreeSet<i64>>,
    /// The first revision not yet sent to the synced watchers (every watcher not `behind`).
    synced_next: i64,
    /// Watchers created for a revision the hub had already routed, each at its own `next_rev`
    /// until a batch takes it past the synced position and past the revision the hub had
    /// routed when it was created (kept here): revisions after that one reach the stream.
    behind: BTreeMap<i64, i64>,
}

impl Watchers {
    /// Adds a watcher whose range the hub routes to this stream after revision `routed`: it is
    /// synced if it starts after that (and not before the synced position), behind (reading
    /// every revision on its own) otherwise.
    pub fn insert(&mut self, id: i64, w: Watcher, routed: i64) {
        self.remove(id);
        self.index.entry(&w.range).insert(id);
        if w.next_rev <= routed || w.next_rev < self.synced_next {
            self.behind.insert(id, routed);
        }
        self.by_id.insert(id, w);
    }

    pub fn remove(&mut self, id: i64) -> Option<Watcher> {
        let w = self.by_id.remove(&id)?;
        self.index.release(&w.range, |ids| {
            ids.remove(&id);
            ids.is_empty()
        });
        self.behind.remove(&id);
        Some(w)
    }

    pub fn contains_key(&self, id: i64) -> bool {
        self.by_id.contains_key(&id)
    }

    pub fn get_mut(&mut self, id: i64) -> Option<&mut Watcher> {
        self.by_id.get_mut(&id)
    }

    /// Every watcher with the first revision it is still owed.
    pub fn iter(&self) -> impl Iterator<Item = (i64, &Watcher, i64)> {
        self.by_id
            .iter()
            .map(|(id, w)| (*id, w, self.next_of(*id, w)))
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = (&i64, &mut Watcher)> {
        self.by_id.iter_mut()
    }

    /// The first revision watcher `id` is still owed.
    fn next_of(&self, id: i64, w: &Watcher) -> i64 {
        if self.behind.contains_key(&id) {
            w.next_rev
        } else {
            w.next_rev.max(self.synced_next)
        }
    }

    /// The lowest revision at or below `current` that a watcher behind is still owed: where
    /// its next catch-up step starts.
    pub fn behind_from(&self, current: i64) -> Option<i64> {
        self.behind
            .keys()
            .map(|id| self.by_id[id].next_rev)
            .filter(|r| *r <= current)
            .min()
    }

    /// Whether some watcher is synced (not behind).
    pub fn has_synced(&self) -> bool {
        self.by_id.len() > self.behind.len()
    }

    /// Whether watcher `id` is behind, reading history on its own.
    pub fn is_behind(&self, id: i64) -> bool {
        self.behind.contains_key(&id)
    }

    /// The first revision the synced watchers may still be owed.
    pub fn synced_next(&self) -> i64 {
        self.synced_next
    }

    /// Every revision up to `rev` that touches the synced watchers was sent to them (the hub
    /// routed nothing else up to it).
    pub fn synced_to(&mut self, rev: i64) {
        self.synced_next = self.synced_next.max(rev + 1);
    }

    /// The compaction reached `rev`, and the watchers owed a revision below it were cancelled:
    /// the synced position moves up to it, so that a catch-up step never starts below the
    /// compaction point (that read would fail, with nothing left to cancel, over and over). The
    /// synced watchers left are owed `rev` or later already, so none of them skips anything.
    pub fn compacted(&mut self, rev: i64) {
        self.synced_next = self.synced_next.max(rev);
    }

    /// Moves the synced watchers past `upto`, the end of a batch of revisions `revs` routed to
    /// the stream (the revisions between them touch none of its keys), and returns those owed
    /// some of its events: (id, first revision owed), in id order. Only the watchers of the
    /// batch's keys are visited.
    pub fn advance_synced(&mut self, revs: &[Arc<RevEvents>], upto: i64) -> Vec<(i64, i64)> {
        let mut due = Vec::new();
        if self.synced_next > upto {
            return due;
        }
        for id in self.touched_by(revs) {
            if self.behind.contains_key(&id) {
                continue;
            }
            let from = self.by_id[&id].next_rev.max(self.synced_next);
            if from <= upto {
                due.push((id, from));
            }
        }
        self.synced_next = upto + 1;
        due
    }

    /// Moves the watchers behind past `upto`, the end of a batch holding every revision from
    /// the lowest they are owed, and returns those owed some of its events, as
    /// [`Watchers::advance_synced`] does. One that reaches the synced position joins it.
    pub fn advance_behind(&mut self, revs: &[Arc<RevEvents>], upto: i64) -> Vec<(i64, i64)> {
        let touched = self.touched_by(revs);
        let mut due = Vec::new();
        let mut joined = Vec::new();
        for (id, routed) in &self.behind {
            let w = self
                .by_id
                .get_mut(id)
                .expect("a watcher behind is a watcher");
            if w.next_rev > upto {
                continue;
            }
            if touched.contains(id) {
                due.push((*id, w.next_rev));
            }
            w.next_rev = upto + 1;
            if w.next_rev >= self.synced_next && w.next_rev > *routed {
                joined.push(*id);
            }
        }
        for id in joined {
            self.behind.remove(&id);
        }
        due.sort_unstable();
        due
    }

    /// The watchers that may have an event among `revs` (their range holds one of its keys),
    /// in id order; the caller still filters by revision and event type.
    fn touched_by(&self, revs: &[Arc<RevEvents>]) -> BTreeSet<i64> {
        let mut ids = BTreeSet::new();
        for e in revs.iter().flat_map(|r| r.events.iter()) {
            let Some(kv) = &e.kv else { continue };
            self.index.holding(&kv.key, |found| ids.extend(found));
        }
        ids
    }
}

#[cfg(test)]
pub(super) mod tests {
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

    /// A revision with a put to each of `keys`.
    pub(in crate::watch) fn rev(rev: i64, keys: &[&[u8]]) -> Arc<RevEvents> {
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
        ws.insert(1, watcher(b"a", b""), 0);
        ws.insert(2, watcher(b"b", b""), 0);
        ws.insert(3, watcher(b"a", b""), 0);
        ws.insert(4, watcher(b"b", b"c"), 0); // [b, c)
        ws.insert(5, watcher(b"x", b"\0"), 0); // from x on
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
        ws.insert(4, watcher(b"q", b""), 0);
        assert_eq!(touched(&ws, &[b"a", b"bz"]), vec![3]);
        assert_eq!(touched(&ws, &[b"q"]), vec![4]);
        ws.remove(3);
        ws.remove(4);
        ws.remove(2);
        ws.remove(5);
        assert!(ws.index.is_empty(), "emptied entries are removed");
    }

    fn at(key: &[u8], next_rev: i64) -> Watcher {
        Watcher {
            next_rev,
            ..watcher(key, b"")
        }
    }

    /// The synced watchers share one position and read what the hub routed; a watcher created
    /// in the past catches up on its own and joins them; one created for a later revision is
    /// owed nothing before it.
    #[test]
    fn watchers_behind_catch_up_and_join_the_synced_ones() {
        let mut ws = Watchers::default();
        // The hub had routed revision 10 when these were created.
        ws.insert(1, at(b"a", 11), 10); // synced
        ws.insert(2, at(b"b", 11), 10);
        ws.insert(3, at(b"a", 5), 10); // behind: from revision 5
        ws.insert(4, at(b"a", 14), 10); // synced, starts at 14
        assert_eq!(ws.behind.keys().copied().collect::<Vec<_>>(), vec![3]);
        assert_eq!(ws.behind_from(10), Some(5));
        assert_eq!(ws.behind_from(4), None);

        // Revisions 5..=8 reach only the watcher behind, which is still behind afterwards.
        let due = ws.advance_behind(&[rev(5, &[b"a"]), rev(7, &[b"b"])], 8);
        assert_eq!(due, vec![(3, 5)]);
        assert_eq!(ws.by_id[&3].next_rev, 9);
        assert_eq!(ws.behind_from(12), Some(9));

        // Revisions 11 and 12 routed: the synced watcher of "a" gets 11, that of "b" 12, the
        // later one nothing, the one behind nothing yet.
        let due = ws.advance_synced(&[rev(11, &[b"a"]), rev(12, &[b"b"])], 12);
        assert_eq!(due, vec![(1, 11), (2, 11)]);
        assert_eq!(ws.synced_next, 13);

        // The one behind reads every revision, 9..=12, and joins the synced ones.
        let due = ws.advance_behind(&[rev(9, &[b"a"]), rev(11, &[b"a"]), rev(12, &[b"b"])], 12);
        assert_eq!(due, vec![(3, 9)]);
        assert!(ws.behind.is_empty());
        let owed: Vec<(i64, i64)> = ws.iter().map(|(id, _, next)| (id, next)).collect();
        assert_eq!(owed, vec![(1, 13), (2, 13), (3, 13), (4, 14)]);

        // Revision 14 on "a": all three watchers of "a", the later one from its start.
        let due = ws.advance_synced(&[rev(14, &[b"a"])], 14);
        assert_eq!(due, vec![(1, 13), (3, 13), (4, 14)]);
        // Nothing else routed up to 20: the synced position moves there.
        ws.synced_to(20);
        assert_eq!(ws.synced_next(), 21);
        assert_eq!(ws.behind_from(25), None);

        // A new watcher is behind if it starts at or before what the hub had routed.
        ws.insert(5, at(b"c", 30), 25);
        ws.insert(6, at(b"c", 20), 25);
        ws.insert(7, at(b"c", 24), 25);
        assert_eq!(ws.behind.keys().copied().collect::<Vec<_>>(), vec![6, 7]);
        ws.remove(6);
        ws.remove(7);
        assert!(ws.behind.is_empty());
    }

    /// A compaction past the synced position, after the watchers owed a revision below it were
    /// cancelled, moves the position up: a step starting below the compaction point would fail
    /// with nothing left to cancel, and the stream would go round that forever.
    #[test]
    fn a_compaction_moves_the_synced_position_up() {
        let mut ws = Watchers::default();
        ws.insert(1, at(b"a", 11), 10);
        ws.insert(2, at(b"a", 30), 10); // synced, starts later
        ws.insert(3, at(b"b", 8), 10); // behind
        ws.synced_to(10);
        assert_eq!(ws.behind_from(25), Some(8));
        // Compacted at 20: watchers 1 and 3 are owed revisions below it and are cancelled.
        let cancelled: Vec<i64> = ws
            .iter()
            .filter(|(_, _, next)| *next < 20)
            .map(|(id, _, _)| id)
            .collect();
        assert_eq!(cancelled, vec![1, 3]);
        for id in cancelled {
            ws.remove(id);
        }
        ws.compacted(20);
        assert_eq!((ws.synced_next(), ws.behind_from(25)), (20, None));
        let owed: Vec<(i64, i64)> = ws.iter().map(|(id, _, next)| (id, next)).collect();
        assert_eq!(owed, vec![(2, 30)]);
        // An older compaction does not move it back.
        ws.compacted(5);
        assert_eq!(ws.synced_next, 20);
    }
}
