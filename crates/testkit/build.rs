use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY: build scripts are single-threaded.
    unsafe { std::env::set_var("PROTOC", protoc) };
    let wkt = protoc_bin_vendored::include_path()?;
    // The etcd side of the emulator: it reads real snapshots and status from real etcd members.
    tonic_prost_build::configure()
        .build_server(false)
        .bytes(".etcdserverpb.SnapshotResponse.blob")
        .compile_protos(&[PathBuf::from("proto/etcd/rpc.proto")], &[PathBuf::from("proto"), wkt])?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
