//! The committed CRD YAML is what the Rust types generate.

#[test]
fn committed_crds_are_fresh() {
    let committed = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy/crds.yaml")).unwrap();
    assert!(
        committed == teb_api::crds_yaml(),
        "deploy/crds.yaml is stale: run `cargo run -p talos-etcd-backup -- crds > deploy/crds.yaml`"
    );
}
