//! Generates the etcd v3 API (and qetcd's internal Raft request envelope) from the
//! `.proto` files under `proto/`. protox compiles them in-process, so no `protoc` is needed.
//!
//! The compiled descriptors are also written to `$OUT_DIR/etcd_api_descriptors.bin`: the
//! HTTP/JSON gateway reads them at run time to translate proto3 JSON to and from the
//! same generated messages the gRPC services take (`prost::Name` gives each message's
//! full name to look its descriptor up by).

use prost::Message as _;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let files = [
        "proto/etcdserverpb/rpc.proto",
        "proto/mvccpb/kv.proto",
        "proto/authpb/auth.proto",
        "proto/qetcdpb/raft_request.proto",
    ];
    let descriptors = protox::compile(files, ["proto"])?;
    let out_dir = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out_dir.join("etcd_api_descriptors.bin"),
        descriptors.encode_to_vec(),
    )?;
    let mut config = tonic_prost_build::Config::new();
    config.enable_type_names();
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds_with_config(descriptors, config)?;
    Ok(())
}
