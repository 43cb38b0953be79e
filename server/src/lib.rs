//! pgraft's server: an etcd v3 compatible key-value store. One state machine (MVCC store,
//! leases) changed only by applying the raft log, and faces (gRPC today) that translate wire
//! formats to the [`service::EtcdServer`] pipeline. See `DESIGN.md` for the whole picture.

pub mod alarm;
pub mod api;
pub mod apply;
pub mod auth;
pub mod backend;
pub mod config;
pub mod config_file;
pub mod error;
pub mod etcd_flags;
pub mod lease;
pub mod logging;
pub mod membership;
pub mod metrics;
pub mod mvcc;
pub mod node;
pub mod raft;
pub mod request;
pub mod service;
pub mod snapshot;
pub mod systemd;
pub mod tls;
pub mod txn;
pub mod wait;
pub mod watch;

pub use config::Config;
pub use node::Node;
