//! Compiles the .proto files with protox (pure Rust: no system `protoc`).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/metastore.proto",
        "proto/raft.proto",
        "proto/distributor.proto",
        "proto/relay.proto",
    ];
    for file in files {
        println!("cargo:rerun-if-changed={file}");
    }
    let descriptors = protox::compile(files, ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // Ordered maps keep iteration (and so the simulator) deterministic.
        .btree_map(".")
        // Payloads are shared, not copied, on their way through fan-out.
        .bytes(".")
        .compile_fds(descriptors)?;
    Ok(())
}
