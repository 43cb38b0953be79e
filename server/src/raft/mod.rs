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
