//! The content report against a real etcd filled through a real kube-apiserver: thousands of
//! ConfigMaps, Secrets and custom resources, some overwritten, some deleted, then a compaction. Its
//! counts equal what kube-apiserver lists, resource by resource and namespace by namespace, and its
//! keys what etcd counts.

use std::process::Command;

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret};
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, PostParams};
use teb_core::etcd_db::Scan;
use teb_core::objects::{Filter, Keep, Listing};
use teb_core::report::{ContentReport, Counter};
use teb_testkit::kube::{KubeEnv, apply_yaml, widget_resource};

const NAMESPACES: [&str; 3] = ["team-a", "team-b", "team-c"];

/// Runs `each` for 0..n, 16 at a time.
async fn each<F: std::future::Future<Output = ()>>(n: usize, each: impl Fn(usize) -> F) {
    futures::stream::iter(0..n).for_each_concurrent(16, each).await;
}

/// What kube-apiserver lists of `api`, counted.
async fn listed<K>(api: &Api<K>) -> usize
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    api.list(&ListParams::default()).await.unwrap().items.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_report_counts_what_kube_apiserver_lists() {
    let kube = KubeEnv::start().await.unwrap();
    let client = kube.admin_client().await.unwrap();
    apply_yaml(&client, teb_testkit::kube::WIDGET_CRD, None).await.unwrap();
    let namespaces: Api<Namespace> = Api::all(client.clone());
    for ns in NAMESPACES {
        let namespace = serde_json::from_value(serde_json::json!({"metadata": {"name": ns}})).unwrap();
        namespaces.create(&PostParams::default(), &namespace).await.unwrap();
    }
    // Let the CRD be served before its objects are created.
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    for (n, ns) in NAMESPACES.iter().enumerate() {
        let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
        let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
        let widgets: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &widget_resource());
        let count = 400 + 100 * n;
        each(count, |i| {
            let configmaps = configmaps.clone();
            async move {
                let cm =
                    serde_json::json!({"metadata": {"name": format!("cm-{i}")}, "data": {"v": "x".repeat(i % 300)}});
                configmaps.create(&PostParams::default(), &serde_json::from_value(cm).unwrap()).await.unwrap();
            }
        })
        .await;
        each(count / 2, |i| {
            let secrets = secrets.clone();
            async move {
                let secret =
                    serde_json::json!({"metadata": {"name": format!("s-{i}")}, "stringData": {"k": format!("v{i}")}});
                secrets.create(&PostParams::default(), &serde_json::from_value(secret).unwrap()).await.unwrap();
            }
        })
        .await;
        each(count / 4, |i| {
            let widgets = widgets.clone();
            async move {
                let widget = serde_json::json!({"apiVersion": "example.com/v1", "kind": "Widget",
                    "metadata": {"name": format!("w-{i}")}, "spec": {"size": i}});
                widgets.create(&PostParams::default(), &serde_json::from_value(widget).unwrap()).await.unwrap();
            }
        })
        .await;
        // Overwritten and deleted keys: the report counts each key once, and no deleted one.
        each(count / 4, |i| {
            let configmaps = configmaps.clone();
            async move {
                let mut cm = configmaps.get(&format!("cm-{i}")).await.unwrap();
                cm.data = Some([("v".to_owned(), "changed".to_owned())].into());
                configmaps.replace(&format!("cm-{i}"), &PostParams::default(), &cm).await.unwrap();
            }
        })
        .await;
        each(count / 5, |i| {
            let (configmaps, secrets) = (configmaps.clone(), secrets.clone());
            async move {
                configmaps.delete(&format!("cm-{}", count - 1 - i), &DeleteParams::default()).await.unwrap();
                if i % 2 == 0 {
                    secrets.delete(&format!("s-{i}"), &DeleteParams::default()).await.unwrap();
                }
            }
        })
        .await;
    }

    let assets = teb_testkit::assets::assets().unwrap();
    let etcdctl = |args: &[&str]| {
        let output = Command::new(&assets.etcdctl)
            .arg(format!("--endpoints={}", kube.etcd_endpoints()))
            .args(args)
            .output()
            .unwrap();
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8(output.stdout).unwrap()
    };
    // A compaction at the current revision: history goes, the newest revision of each key stays.
    let status: serde_json::Value = serde_json::from_str(&etcdctl(&["endpoint", "status", "-w", "json"])).unwrap();
    let revision = status[0]["Status"]["header"]["revision"].as_i64().unwrap();
    etcdctl(&["compact", &revision.to_string(), "--physical"]);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("snapshot.db");
    etcdctl(&["snapshot", "save", file.to_str().unwrap()]);

    // etcd's own count of its live keys, every key, not only objects.
    let counted: serde_json::Value =
        serde_json::from_str(&etcdctl(&["get", "", "--prefix", "--keys-only", "-w", "json"])).unwrap();
    let live_keys = counted["count"].as_u64().unwrap();

    // Scanned in one pass, whatever the chunking: the same report.
    let bytes = std::fs::read(&file).unwrap();
    let scan = |chunk: usize| {
        let mut scan = Scan::new(Counter::default());
        bytes.chunks(chunk).for_each(|c| scan.update(c));
        let (scanned, counter) = scan.finish().unwrap();
        ContentReport::of(&scanned, &counter).unwrap()
    };
    let report = scan(1 << 20);
    assert_eq!(scan(1000), report);
    assert_eq!(report.keys, live_keys, "live keys");
    // A budget too small for the database: no report, and a reason (never a wrong count).
    let mut scan = Scan::new(Counter::with_budget(teb_core::report::REVISION_COST * 1000));
    scan.update(&bytes);
    let (scanned, counter) = scan.finish().unwrap();
    let refused = ContentReport::of(&scanned, &counter).unwrap_err();
    assert!(refused.contains("more revisions than a report of 0 MiB counts (1000)"), "{refused}");
    // With a scratch folder, any budget gives the same report: what memory cannot hold is counted
    // from the folder, which is gone afterwards.
    let scratch = tempfile::tempdir().unwrap();
    for (revisions, chunk) in [(0, 1 << 20), (100, 4096), (1000, 1000), (2000, 1 << 16)] {
        let counter =
            Counter::with_budget(teb_core::report::REVISION_COST * revisions).with_scratch(scratch.path().into());
        let mut scan = Scan::new(counter);
        bytes.chunks(chunk).for_each(|c| scan.update(c));
        let (scanned, counter) = scan.finish().unwrap();
        assert_eq!(ContentReport::of(&scanned, &counter).as_ref(), Ok(&report), "{revisions} revisions in memory");
        assert!(counter.scratch_bytes() > 0, "{revisions} revisions in memory");
        drop(counter);
        assert_eq!(std::fs::read_dir(scratch.path()).unwrap().count(), 0, "scratch left behind");
    }
    // A scratch folder that cannot be made: no report, and why.
    let counter =
        Counter::with_budget(teb_core::report::REVISION_COST * 1000).with_scratch(scratch.path().join("missing"));
    let mut scan = Scan::new(counter);
    scan.update(&bytes);
    let (scanned, counter) = scan.finish().unwrap();
    let refused = ContentReport::of(&scanned, &counter).unwrap_err();
    assert!(refused.contains("its scratch folder failed (making a folder in"), "{refused}");
    assert!(report.revision >= revision, "{} < {revision}", report.revision);
    assert_eq!(report.compacted_revision, Some(revision));
    let mut compared = 0;
    for ns in NAMESPACES {
        let pairs = [
            ("configmaps", listed(&Api::<ConfigMap>::namespaced(client.clone(), ns)).await),
            ("secrets", listed(&Api::<Secret>::namespaced(client.clone(), ns)).await),
            (
                "widgets.example.com",
                listed(&Api::<DynamicObject>::namespaced_with(client.clone(), ns, &widget_resource())).await,
            ),
        ];
        for (resource, listed) in pairs {
            assert_eq!(report.count(resource, Some(ns)) as usize, listed, "{resource} in {ns}");
            compared += listed;
        }
    }
    assert_eq!(report.count("namespaces", None) as usize, listed(&namespaces).await);
    // One by one: the objects a backup lists are those kube-apiserver lists, name by name.
    for ns in NAMESPACES {
        let objects = |resource: &str| {
            let filter =
                Filter { resource: Some(resource.into()), namespace: Some(ns.into()), prefix: None, name: None };
            let mut scan = Scan::new(Listing::new(filter, Keep::Nothing, 64 << 20));
            bytes.chunks(1 << 16).for_each(|c| scan.update(c));
            let keys = scan.finish().unwrap().1.keys().unwrap();
            keys.into_iter().map(|k| k.object.unwrap().name).collect::<Vec<_>>()
        };
        let names = |list: Vec<String>| {
            let mut list = list;
            list.sort();
            list
        };
        let configmaps = Api::<ConfigMap>::namespaced(client.clone(), ns).list(&ListParams::default()).await.unwrap();
        assert_eq!(
            objects("configmaps"),
            names(configmaps.items.into_iter().filter_map(|c| c.metadata.name).collect())
        );
        let widgets = Api::<DynamicObject>::namespaced_with(client.clone(), ns, &widget_resource());
        let widgets = widgets.list(&ListParams::default()).await.unwrap();
        assert_eq!(
            objects("widgets.example.com"),
            names(widgets.items.into_iter().filter_map(|w| w.metadata.name).collect())
        );
    }
    assert_eq!(report.count("configmaps", None) as usize, listed(&Api::<ConfigMap>::all(client.clone())).await);
    assert!(compared > 2000, "{compared} objects compared");
    eprintln!(
        "revision {}, {} keys, {} objects in {} resources; {compared} compared with kube-apiserver's lists",
        report.revision,
        report.keys,
        report.objects,
        report.resources.len()
    );
}
