//! Consensus: the raft-rs `RawNode` driven by one loop thread, with its log on fjall.
//!
//! The rest of the server sees a [`RaftHandle`]: propose opaque entries, ask for a ReadIndex,
//! read the leader and term. Committed entries reach the [`StateMachine`] in log order.

pub mod node;
pub mod storage;

pub use node::{RaftConfig, RaftHandle, RaftStatus, StateMachine};
pub use storage::RaftStorage;
