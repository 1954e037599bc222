use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY: build scripts are single-threaded.
    unsafe { std::env::set_var("PROTOC", protoc) };
    let wkt = protoc_bin_vendored::include_path()?;
    // The Talos side of the wire: the emulator is a server of the same protos the operator's client uses.
    tonic_prost_build::configure()
        .build_client(false)
        .bytes(".common.Data.bytes")
        .compile_protos(
            &[PathBuf::from("../talos/proto/machine/machine.proto")],
            &[PathBuf::from("../talos/proto"), wkt.clone()],
        )?;
    // The etcd side: the emulator reads real snapshots and status from real etcd members.
    tonic_prost_build::configure()
        .build_server(false)
        .bytes(".etcdserverpb.SnapshotResponse.blob")
        .compile_protos(&[PathBuf::from("proto/etcd/rpc.proto")], &[PathBuf::from("proto"), wkt])?;
    println!("cargo:rerun-if-changed=proto");
    println!("cargo:rerun-if-changed=../talos/proto");
    Ok(())
}
