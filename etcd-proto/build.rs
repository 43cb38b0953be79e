//! Compiles the protos under `proto/` without `protoc`: `protox` parses them into a
//! descriptor set, `tonic-prost-build` generates messages, clients and servers from it,
//! and `pbjson-build` generates serde impls that follow etcd's grpc-gateway JSON
//! (proto field names, int64 as strings, bytes as base64, defaults omitted).

use std::{env, path::PathBuf};

use prost::Message;

const PROTOS: &[&str] = &[
    "mvccpb/kv.proto",
    "authpb/auth.proto",
    "etcdserverpb/rpc.proto",
    "v3lockpb/v3lock.proto",
    "v3electionpb/v3election.proto",
    "pgraftpb/raft.proto",
    "pgraftpb/admin.proto",
];

/// Packages that get gateway JSON (serde) impls. `pgraftpb` is internal gRPC only.
const JSON_PACKAGES: &[&str] = &[
    ".etcdserverpb",
    ".mvccpb",
    ".authpb",
    ".v3lockpb",
    ".v3electionpb",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    for p in PROTOS {
        println!("cargo:rerun-if-changed=proto/{p}");
    }

    let out_dir = PathBuf::from(env::var("OUT_DIR")?);

    let fds = protox::compile(PROTOS, ["proto"])?;
    let descriptor_bytes = fds.encode_to_vec();
    std::fs::write(out_dir.join("descriptors.bin"), &descriptor_bytes)?;

    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)?;

    pbjson_build::Builder::new()
        .register_descriptors(&descriptor_bytes)?
        .preserve_proto_field_names()
        .ignore_unknown_fields()
        .build(JSON_PACKAGES)?;

    Ok(())
}
