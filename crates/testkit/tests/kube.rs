//! The Kubernetes environment is a real apiserver: it stores the CRDs, serves watches and enforces
//! RBAC on the operator's own manifests.

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::runtime::{WatchStreamExt as _, watcher};
use teb_api::TalosEtcdBackup;
use teb_testkit::kube::KubeEnv;

fn backup(name: &str) -> TalosEtcdBackup {
    serde_yaml::from_str(&teb_testkit::spec::backup_yaml(name, "")).unwrap()
}

#[tokio::test]
async fn stores_crds_and_serves_watches() {
    let env = KubeEnv::shared().unwrap();
    let ns = env.namespace("kube-watch").await.unwrap();
    let admin = env.admin_client().await.unwrap();
    let api: Api<TalosEtcdBackup> = Api::namespaced(admin, &ns);
    let mut events = watcher(api.clone(), watcher::Config::default()).applied_objects().boxed();
    api.create(&PostParams::default(), &backup("watched")).await.unwrap();
    let seen =
        tokio::time::timeout(std::time::Duration::from_secs(20), events.try_next()).await.unwrap().unwrap().unwrap();
    assert_eq!(seen.metadata.name.as_deref(), Some("watched"));
    assert_eq!(seen.spec.backup_storage.s3.unwrap().bucket, "my-etcd-backups");
}

#[tokio::test]
async fn operator_client_holds_only_what_rbac_grants() {
    let env = KubeEnv::shared().unwrap();
    let ns = env.namespace("kube-rbac").await.unwrap();
    let admin = env.admin_client().await.unwrap();
    let operator = env.operator_client().await.unwrap();
    Api::<Secret>::namespaced(admin.clone(), &ns)
        .create(&PostParams::default(), &teb_testkit::fixtures::secret("s", &ns, &[("k", "v")]))
        .await
        .unwrap();
    Api::<TalosEtcdBackup>::namespaced(admin, &ns).create(&PostParams::default(), &backup("b")).await.unwrap();

    // Granted: get secrets, list/watch backups.
    let secrets = Api::<Secret>::namespaced(operator.clone(), &ns);
    secrets.get("s").await.expect("get secret is granted");
    let backups = Api::<TalosEtcdBackup>::namespaced(operator.clone(), &ns);
    assert_eq!(backups.list(&ListParams::default()).await.unwrap().items.len(), 1);

    // Granted too: creating and deleting backups (schedules' runs and retention).
    backups.create(&PostParams::default(), &backup("c")).await.expect("create backup is granted");
    backups.delete("c", &DeleteParams::default()).await.expect("delete backup is granted");

    // Refused: listing or deleting secrets, deleting schedules, listing control planes.
    let forbidden = |e: kube::Error| matches!(e, kube::Error::Api(ref s) if s.code == 403);
    assert!(forbidden(secrets.list(&ListParams::default()).await.unwrap_err()));
    assert!(forbidden(secrets.delete("s", &DeleteParams::default()).await.unwrap_err()));
    let schedules = Api::<teb_api::TalosEtcdBackupSchedule>::namespaced(operator.clone(), &ns);
    assert!(forbidden(schedules.delete("any", &DeleteParams::default()).await.unwrap_err()));
    let control_planes = Api::<teb_api::TalosControlPlane>::namespaced(operator, &ns);
    assert!(forbidden(control_planes.list(&ListParams::default()).await.unwrap_err()));
}
