use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // A vendored protoc keeps the build free of system packages.
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY: build scripts are single-threaded.
    unsafe { std::env::set_var("PROTOC", protoc) };
    let includes = [PathBuf::from("proto"), protoc_bin_vendored::include_path()?];
    tonic_prost_build::configure()
        // The server side is only for the Talos API emulator (feature `server`).
        .build_server(std::env::var_os("CARGO_FEATURE_SERVER").is_some())
        .bytes(".common.Data.bytes")
        .compile_protos(&[PathBuf::from("proto/machine/machine.proto")], &includes)?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
