//! TalosEtcdRestore: recovering a wiped etcd through the endpoints it names, refusing a live one.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_resource_recovers_a_wiped_etcd_and_refuses_a_live_one() {
    use teb_api::TalosEtcdRestore;
    let options = EmulatorOptions { control_planes: 3, workers: 0, ..Default::default() };
    let scenario = Scenario::start_with("e2e-restore", options, false, test_config()).await;
    for i in 0..100 {
        scenario.emulator.etcd().put(format!("/registry/secrets/ns/before-{i}").as_bytes(), b"kept").await.unwrap();
    }
    scenario.control_plane_with_bundle().await;
    scenario.apply(SPEC_SECRET).await;
    scenario.apply(&backup_yaml("source", &endpoint_field(&scenario.s3.endpoint))).await;
    let backup = scenario.wait_finished("source").await;
    assert!(condition(&backup, READY).is_some(), "{backup:?}");
    scenario.emulator.etcd().put(b"/registry/secrets/ns/after", b"lost").await.unwrap();

    let restores: Api<TalosEtcdRestore> = Api::namespaced(scenario.admin.clone(), &scenario.ns);
    let restore_yaml = |name: &str, extra: &str| {
        format!(
            "apiVersion: talos.alperen.cloud/v1alpha1\nkind: TalosEtcdRestore\nmetadata:\n  name: {name}\nspec:\n  \
             talosControlPlaneRef:\n    name: my-controlplane\n  backupRef:\n    name: source\n{extra}"
        )
    };
    let failed = |status: &teb_api::TalosEtcdRestoreStatus| {
        status.conditions.iter().find(|c| c.type_ == FAILED).map(|c| (c.reason.clone(), c.message.clone()))
    };

    // etcd is live: refused, and nothing is uploaded to the node.
    scenario.apply(&restore_yaml("too-early", "")).await;
    let status = scenario.restore_finished("too-early").await;
    let (reason, message) = failed(&status).expect("Failed");
    assert_eq!(reason, "RestoreRefused");
    assert!(message.contains("restoring over a live etcd is refused"), "{message}");
    assert!(!scenario.emulator.has_recovery_snapshot());

    // A spec naming two sources is refused with what to set.
    scenario.apply(&restore_yaml("two-sources", "  key: some/key.db\n")).await;
    let (reason, message) = failed(&scenario.restore_finished("two-sources").await).expect("Failed");
    assert_eq!(reason, "RestoreFailed");
    assert!(
        message.contains("set spec.backupRef (a TalosEtcdBackup), or spec.backupStorage and spec.key"),
        "{message}"
    );

    // Wiped. spec.endpoints replaces the control plane's: a dead VIP fails saying to name a node, a
    // node address restores the backup with its keys, the later one gone.
    scenario.emulator.wipe_etcd();
    scenario.apply(&restore_yaml("through-vip", "  endpoints: [\"127.0.0.9:1\"]\n")).await;
    let (_, message) = failed(&scenario.restore_finished("through-vip").await).expect("Failed");
    assert!(message.contains("Talos VIP") && message.contains("spec.endpoints"), "{message}");
    let endpoints = format!("  endpoints: [\"{}\"]\n", scenario.emulator.endpoint);
    scenario.apply(&restore_yaml("recover", &endpoints)).await;
    let status = scenario.restore_finished("recover").await;
    let ready = status.conditions.iter().find(|c| c.type_ == READY).unwrap_or_else(|| panic!("{status:?}"));
    assert_eq!(ready.reason, "RestoreSucceeded");
    assert_eq!(status.sha256, backup.sha256);
    assert_eq!(status.key, backup.filename);
    assert!(status.member_id.is_some() && status.completion_time.is_some());
    // The other control-plane nodes joined the restored member; status lists them.
    let members: Vec<(&str, &str, bool)> =
        status.members.iter().map(|m| (m.node.as_str(), m.state.as_str(), m.member_id.is_some())).collect();
    assert_eq!(members, [("127.0.10.2", "joined", true), ("127.0.10.3", "joined", true)], "{status:?}");
    assert!(ready.message.contains("2 of 2 other control-plane nodes joined"), "{}", ready.message);
    let (kept, lost) = (
        scenario.emulator.restored_get("/registry/secrets/ns/before-42").await,
        scenario.emulator.restored_get("/registry/secrets/ns/after").await,
    );
    assert_eq!((kept.as_deref(), lost), (Some("kept"), None));
    scenario.expect_event(None, "RestoreSucceeded").await;
    scenario.expect_event(None, "RestoreRefused").await;

    // Only whoever RBAC allows creates restores: the operator itself may not.
    let operator = scenario.env.operator_client().await.unwrap();
    let as_operator: Api<TalosEtcdRestore> = Api::namespaced(operator, &scenario.ns);
    let mut copy = restores.get("recover").await.unwrap();
    copy.metadata = kube::api::ObjectMeta { name: Some("by-operator".into()), ..Default::default() };
    copy.status = None;
    let refused = as_operator.create(&PostParams::default(), &copy).await.unwrap_err();
    assert!(matches!(refused, kube::Error::Api(ref s) if s.code == 403), "{refused:?}");
}
