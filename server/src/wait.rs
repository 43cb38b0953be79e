//! Proposers waiting for their entry to be applied (etcd's `pkg/wait`): registered by request ID
//! before proposing, woken by the applier with the result.

use parking_lot::Mutex;
use std::collections::HashMap;
use tokio::sync::oneshot;

pub struct Wait<T> {
    waiters: Mutex<HashMap<u64, oneshot::Sender<T>>>,
}

impl<T> Default for Wait<T> {
    fn default() -> Self {
        Wait {
            waiters: Mutex::new(HashMap::new()),
        }
    }
}

impl<T> Wait<T> {
    pub fn register(&self, id: u64) -> oneshot::Receiver<T> {
        let (tx, rx) = oneshot::channel();
        self.waiters.lock().insert(id, tx);
        rx
    }

    /// Wakes the waiter of `id`, if this member has one.
    pub fn trigger(&self, id: u64, value: T) {
        if let Some(tx) = self.waiters.lock().remove(&id) {
            let _ = tx.send(value);
        }
    }

    pub fn cancel(&self, id: u64) {
        self.waiters.lock().remove(&id);
    }
}
