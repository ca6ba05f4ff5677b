//! Compiles proto/steward/v1/*.proto with protox (pure Rust, no system `protoc`) and
//! writes the encoded descriptor set that gRPC reflection serves.

use std::path::PathBuf;

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/steward/v1/raft.proto",
        "proto/steward/v1/admin.proto",
        "proto/steward/v1/agent.proto",
        "proto/steward/v1/inventory.proto",
        "proto/steward/v1/jobs.proto",
        "proto/steward/v1/common.proto",
        "proto/steward/v1/chunks.proto",
        "proto/steward/v1/objects.proto",
    ];
    for f in &files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["proto"])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("steward_descriptor.bin"), fds.encode_to_vec())?;
    // Chunk data as `bytes::Bytes`: decoded without a copy out of the receive buffer, and
    // sent as slices of one buffer.
    tonic_prost_build::configure()
        .bytes(".steward.v1.PutChunkRequest.data")
        .bytes(".steward.v1.GetChunkReply.data")
        .compile_fds(fds)?;
    Ok(())
}
