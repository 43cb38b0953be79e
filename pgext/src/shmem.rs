//! The little shared memory the extension uses: whether this server's member (member mode)
//! serves the client API yet, published by the worker, read by backends.

use pgrx::prelude::*;
use pgrx::{pg_shmem_init, PgAtomic};
use std::sync::atomic::{AtomicBool, Ordering};

static SERVING: PgAtomic<AtomicBool> = unsafe { PgAtomic::new(c"pgraft_member_serving") };

/// Called from `_PG_init` while shared_preload_libraries are loaded.
pub fn init() {
    pg_shmem_init!(SERVING);
}

/// False until the member serves on its socket, and again once it stops.
pub fn serving() -> bool {
    SERVING.get().load(Ordering::Acquire)
}

pub fn set_serving(on: bool) {
    SERVING.get().store(on, Ordering::Release);
}
