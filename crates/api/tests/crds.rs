//! The committed CRD YAML (the manifests' and the Helm chart's) is what the Rust types generate.

#[test]
fn committed_crds_are_fresh() {
    for path in ["deploy/crds.yaml", "charts/talos-etcd-backup/crds/crds.yaml"] {
        let committed = std::fs::read_to_string(format!("{}/../../{path}", env!("CARGO_MANIFEST_DIR"))).unwrap();
        assert!(
            committed == teb_api::crds_yaml(),
            "{path} is stale: run `cargo run -p talos-etcd-backup -- crds | tee deploy/crds.yaml \
             charts/talos-etcd-backup/crds/crds.yaml`"
        );
    }
}
