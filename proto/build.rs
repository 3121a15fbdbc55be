//! Compiles `vpn.proto` with protox (a pure-Rust protobuf compiler, so no
//! `protoc` is needed on the build machine), generates the prost types and
//! writes the descriptor set that the JSON mapping embeds.

use std::path::PathBuf;

use protox::prost::Message as _;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=vpn.proto");
    let out = PathBuf::from(std::env::var("OUT_DIR")?);

    let mut compiler = protox::Compiler::new(["."])?;
    compiler.include_imports(true);
    compiler.include_source_info(false);
    compiler.open_file("vpn.proto")?;
    let fds = compiler.file_descriptor_set();
    std::fs::write(out.join("vpn.descriptor.bin"), fds.encode_to_vec())?;

    prost_build::Config::new()
        // `bytes` fields as `Bytes`: decoding from a `Bytes` frame then
        // shares the buffer instead of copying UUIDs and other blobs.
        .bytes(["."])
        .compile_fds(fds)?;
    Ok(())
}
