//! Rust types for etcd's v3 API and for pgraft's own peer protocol.
//!
//! pgraft speaks etcd's gRPC API (and its JSON gateway), so it needs etcd's messages
//! with etcd's exact package names, field names and wire numbers. The `.proto` files
//! under `proto/` are our own, written from the API tables; `build.rs` turns them
//! into prost messages, tonic clients and servers, and pbjson serde impls, with no
//! `protoc` needed at build time.
//!
//! Each protobuf package is a module at the crate root, so generated cross-package
//! paths such as `super::mvccpb::KeyValue` resolve. The serde impls use the proto
//! field names (`create_revision`, `TTL`, `ID`), write 64-bit integers as strings and
//! bytes as base64, omit default values, and accept camelCase names, numeric 64-bit
//! integers and unknown fields on input, as etcd's gateway does.

/// Serialized `FileDescriptorSet` of every proto in this crate (for gRPC reflection).
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/descriptors.bin"));

/// Storage-level key/value types: `KeyValue` and watch `Event`.
#[allow(
    clippy::all,
    clippy::pedantic,
    clippy::nursery,
    missing_docs,
    rustdoc::all
)]
pub mod mvccpb {
    include!(concat!(env!("OUT_DIR"), "/mvccpb.rs"));
    include!(concat!(env!("OUT_DIR"), "/mvccpb.serde.rs"));
}

/// Auth storage types: users, roles and permissions.
#[allow(
    clippy::all,
    clippy::pedantic,
    clippy::nursery,
    missing_docs,
    rustdoc::all
)]
pub mod authpb {
    include!(concat!(env!("OUT_DIR"), "/authpb.rs"));
    include!(concat!(env!("OUT_DIR"), "/authpb.serde.rs"));
}

/// etcd's v3 client API: KV, Watch, Lease, Cluster, Maintenance and Auth services.
#[allow(
    clippy::all,
    clippy::pedantic,
    clippy::nursery,
    missing_docs,
    rustdoc::all
)]
pub mod etcdserverpb {
    include!(concat!(env!("OUT_DIR"), "/etcdserverpb.rs"));
    include!(concat!(env!("OUT_DIR"), "/etcdserverpb.serde.rs"));
}

/// etcd's server-side Lock service.
#[allow(
    clippy::all,
    clippy::pedantic,
    clippy::nursery,
    missing_docs,
    rustdoc::all
)]
pub mod v3lockpb {
    include!(concat!(env!("OUT_DIR"), "/v3lockpb.rs"));
    include!(concat!(env!("OUT_DIR"), "/v3lockpb.serde.rs"));
}

/// etcd's server-side Election service.
#[allow(
    clippy::all,
    clippy::pedantic,
    clippy::nursery,
    missing_docs,
    rustdoc::all
)]
pub mod v3electionpb {
    include!(concat!(env!("OUT_DIR"), "/v3electionpb.rs"));
    include!(concat!(env!("OUT_DIR"), "/v3electionpb.serde.rs"));
}

/// pgraft's peer protocol: Raft message batches and request forwarding (gRPC only).
#[allow(
    clippy::all,
    clippy::pedantic,
    clippy::nursery,
    missing_docs,
    rustdoc::all
)]
pub mod pgraftpb {
    include!(concat!(env!("OUT_DIR"), "/pgraftpb.rs"));
}
