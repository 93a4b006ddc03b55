//! Compiles the .proto files with protox (no system protoc) and generates tonic clients and
//! servers from the resulting descriptor set.

const PROTOS: &[&str] = &[
    "google/rpc/status.proto",
    "vald/v1/payload/payload.proto",
    "vald/v1/vald/filter.proto",
    "vald/v1/vald/insert.proto",
    "vald/v1/vald/search.proto",
    "vald/v1/vald/update.proto",
    "vald/v1/vald/upsert.proto",
    "vald/v1/vald/remove.proto",
    "vald/v1/vald/object.proto",
    "vald/v1/vald/index.proto",
    "vald/v1/vald/flush.proto",
    "vald/v1/agent/core/agent.proto",
    "vald/v1/filter/ingress/ingress_filter.proto",
    "vald/v1/filter/egress/egress_filter.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    for p in PROTOS {
        println!("cargo:rerun-if-changed={p}");
    }
    let fds = protox::compile(PROTOS, ["."])?;
    tonic_prost_build::configure().compile_fds(fds)?;
    Ok(())
}
