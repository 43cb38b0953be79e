//! Consensus: the raft-rs `RawNode` driven by one loop thread, with its log on fjall and its
//! messages carried by the peer transport.
//!
//! The rest of the server sees a [`RaftHandle`]: propose entries and conf changes, ask for a
//! ReadIndex, read the leader and term. Committed entries reach the [`StateMachine`] in log
//! order.

mod apply_queue;
pub mod dial;
pub mod leader_log;
pub mod node;
pub mod queued;
mod round;
pub mod storage;
mod syncer;
pub mod transport;
pub mod wire;

pub use node::{Installer, RaftConfig, RaftHandle, RaftStatus, StateMachine};
pub use storage::RaftStorage;
pub use transport::Transport;

/// Starts a thread the member cannot go on without (the syncer, the applier): if it panics, the
/// process stops, as it does when the raft loop dies.
fn spawn_vital(
    name: &str,
    body: impl FnOnce() + Send + 'static,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    let label = name.to_string();
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            if std::panic::catch_unwind(std::panic::AssertUnwindSafe(body)).is_err() {
                tracing::error!(thread = %label, "a raft thread panicked");
                std::process::abort();
            }
        })
}
