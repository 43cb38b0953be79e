//! Request and lease ID generation (etcd's `pkg/idutil`): the top 16 bits come from the member
//! ID, the rest from a millisecond clock plus a counter, so IDs are unique across members and
//! restarts without coordination.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

const SUFFIX_BITS: u32 = 48;
const SUFFIX_MASK: u64 = (1 << SUFFIX_BITS) - 1;

pub struct IdGen {
    prefix: u64,
    suffix: AtomicU64,
}

impl IdGen {
    pub fn new(member_id: u64) -> Self {
        let ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        IdGen {
            prefix: (member_id & 0xffff) << SUFFIX_BITS,
            suffix: AtomicU64::new((ms << 8) & SUFFIX_MASK),
        }
    }

    pub fn next(&self) -> u64 {
        let s = self.suffix.fetch_add(1, Ordering::Relaxed).wrapping_add(1);
        self.prefix | (s & SUFFIX_MASK)
    }

    /// A positive lease ID (etcd leases are int64 and never 0 or negative when generated).
    pub fn next_lease_id(&self) -> i64 {
        loop {
            let id = (self.next() & (i64::MAX as u64)) as i64;
            if id > 0 {
                return id;
            }
        }
    }
}
