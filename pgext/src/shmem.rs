//! The little shared memory the extension uses: the loopback port on which this server's
//! member (member mode) serves the client API, published by the worker, read by backends.

use pgrx::prelude::*;
use pgrx::{pg_shmem_init, PgAtomic};
use std::sync::atomic::{AtomicU32, Ordering};

static CLIENT_PORT: PgAtomic<AtomicU32> = unsafe { PgAtomic::new(c"pgraft_client_port") };

/// Called from `_PG_init` while shared_preload_libraries are loaded.
pub fn init() {
    pg_shmem_init!(CLIENT_PORT);
}

/// 0 until the member serves.
pub fn client_port() -> u16 {
    CLIENT_PORT.get().load(Ordering::Acquire) as u16
}

pub fn set_client_port(port: u16) {
    CLIENT_PORT.get().store(port as u32, Ordering::Release);
}
