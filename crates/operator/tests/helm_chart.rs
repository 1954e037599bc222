//! The Helm chart (`charts/talos-etcd-backup`), linted and installed by Helm's own engine (through
//! `scripts/helm-chart.py`) into the proving ground's kube-apiserver, with every value that maps to an
//! operator flag set and the optional monitoring objects on.

use std::path::PathBuf;
use std::process::Command;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, PolicyRule, Role};
use kube::api::{Api, DynamicObject};
use kube::discovery::ApiResource;
use serde::Deserialize as _;
use teb_testkit::kube::{KubeEnv, apply_yaml};

fn repo(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..").join(path)
}

fn helm(args: &[&str]) -> serde_json::Value {
    let output = Command::new("python3").arg(repo("scripts/helm-chart.py")).args(args).output().unwrap();
    assert!(output.status.success(), "helm-chart.py {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).unwrap()
}

/// A prometheus-operator kind, schema-less: enough for the API server to take the chart's
/// ServiceMonitor and PrometheusRule.
fn monitoring_crd(kind: &str, plural: &str) -> String {
    let singular = kind.to_lowercase();
    format!(
        "apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {{name: {plural}.monitoring.coreos.com}}
spec:
  group: monitoring.coreos.com
  names: {{kind: {kind}, plural: {plural}, singular: {singular}}}
  scope: Namespaced
  versions:
  - name: v1
    served: true
    storage: true
    schema: {{openAPIV3Schema: {{type: object, x-kubernetes-preserve-unknown-fields: true}}}}
"
    )
}

#[test]
fn the_chart_lints_without_errors() {
    let lint = helm(&["lint", repo("charts/talos-etcd-backup").to_str().unwrap()]);
    assert_eq!(lint["TotalChartsLinted"], 1, "{lint}");
    assert!(lint["Errors"].is_null(), "{lint}");
    // Helm's severities: 1 info, 2 warning, 3 error.
    for message in lint["Messages"].as_array().unwrap() {
        assert!(message["Severity"].as_i64().unwrap() < 3, "{message}");
    }
}

fn rules(rules: Option<Vec<PolicyRule>>) -> Vec<(Vec<String>, Vec<String>, Vec<String>)> {
    rules
        .unwrap_or_default()
        .into_iter()
        .map(|r| (r.api_groups.unwrap_or_default(), r.resources.unwrap_or_default(), r.verbs))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chart_installs_with_every_operator_flag_and_the_rbac_of_deploy() {
    let env = KubeEnv::shared().unwrap();
    let admin = env.admin_client().await.unwrap();
    for (kind, plural) in [("ServiceMonitor", "servicemonitors"), ("PrometheusRule", "prometheusrules")] {
        apply_yaml(&admin, &monitoring_crd(kind, plural), None).await.unwrap();
    }
    tokio::time::sleep(std::time::Duration::from_secs(2)).await; // the new kinds reach discovery
    let ns = env.namespace("helm").await.unwrap();
    let values = serde_json::json!({
        "operator": {
            "watchNamespace": "backups", "concurrency": 7, "maxAttempts": 5, "retryBackoff": "30s",
            "partSizeMiB": 16, "partsInFlight": 2, "idleTimeout": "90s", "totalTimeout": "2h",
            "reportMemoryMiB": 48, "reportScratchSizeLimit": "2Gi", "minObjectsPercent": 30,
            "logFormat": "text", "healthPort": 9090,
            "leaderElection": {"enabled": true, "name": "teb-lease", "leaseDuration": "20s",
                               "renewDeadline": "12s", "retryPeriod": "3s"},
            "extraEnv": [{"name": "AWS_REGION", "value": "eu-central-1"}],
        },
        "serviceAccount": {"annotations": {"eks.amazonaws.com/role-arn": "arn:aws:iam::123456789012:role/etcd"}},
        "metrics": {"serviceMonitor": {"enabled": true}, "prometheusRule": {"enabled": true}},
    });
    let kubeconfig = env.kubeconfig_path("admin");
    let release = helm(&[
        "install",
        repo("charts/talos-etcd-backup").to_str().unwrap(),
        "--kubeconfig",
        kubeconfig.to_str().unwrap(),
        "--namespace",
        &ns,
        "--release",
        "teb",
        "--values",
        &values.to_string(),
    ]);
    assert!(release.to_string().contains("deployed"), "{release}");
    let name = "teb-talos-etcd-backup";

    // Every flag of `talos-etcd-backup operator` that a pod sets is set, from the values.
    let help = Command::new(env!("CARGO_BIN_EXE_talos-etcd-backup")).args(["operator", "--help"]).output().unwrap();
    let help = String::from_utf8(help.stdout).unwrap();
    let flags: Vec<&str> = help.split("[env: ").skip(1).map(|rest| rest.split(['=', ']']).next().unwrap()).collect();
    assert!(flags.len() >= 15, "{help}");
    let deployment = Api::<Deployment>::namespaced(admin.clone(), &ns).get(name).await.unwrap();
    let pod = deployment.spec.unwrap().template.spec.unwrap();
    let container = &pod.containers[0];
    // The content report's scratch folder: an emptyDir (the root filesystem is read-only) of the
    // size asked for.
    let scratch = pod.volumes.iter().flatten().find(|v| v.name == "report-scratch").expect("a report-scratch volume");
    let limit = scratch.empty_dir.as_ref().and_then(|d| d.size_limit.clone());
    assert_eq!(limit.map(|q| q.0), Some("2Gi".to_owned()));
    assert!(container.volume_mounts.iter().flatten().any(|m| m.name == "report-scratch" && m.mount_path == "/scratch"));
    let set: std::collections::BTreeMap<String, Option<String>> =
        container.env.clone().unwrap().into_iter().map(|e| (e.name, e.value)).collect();
    for flag in &flags {
        // In a pod the operator uses the in-cluster configuration.
        if *flag != "KUBECONFIG" {
            assert!(set.contains_key(*flag), "the chart sets no {flag}: {set:?}");
        }
    }
    for (env_name, value) in [
        ("WATCH_NAMESPACE", "backups"),
        ("CONCURRENCY", "7"),
        ("MAX_ATTEMPTS", "5"),
        ("RETRY_BACKOFF", "30s"),
        ("PART_SIZE_MIB", "16"),
        ("PARTS_IN_FLIGHT", "2"),
        ("IDLE_TIMEOUT", "90s"),
        ("TOTAL_TIMEOUT", "2h"),
        ("REPORT_MEMORY_MIB", "48"),
        ("REPORT_SCRATCH_DIR", "/scratch"),
        ("MIN_OBJECTS_PERCENT", "30"),
        ("LOG_FORMAT", "text"),
        ("HEALTH_ADDR", "0.0.0.0:9090"),
        ("LEADER_ELECT", "true"),
        ("LEADER_ELECTION_NAME", "teb-lease"),
        ("LEASE_DURATION", "20s"),
        ("RENEW_DEADLINE", "12s"),
        ("RETRY_PERIOD", "3s"),
        ("AWS_REGION", "eu-central-1"),
    ] {
        assert_eq!(set[env_name].as_deref(), Some(value), "{env_name}");
    }

    // The same permissions as deploy/rbac.yaml, which the end-to-end tests run the operator with.
    let deploy: Vec<serde_yaml::Value> = serde_yaml::Deserializer::from_str(teb_testkit::kube::RBAC_YAML)
        .map(|d| serde_yaml::Value::deserialize(d).unwrap())
        .collect();
    let of_kind = |kind: &str| -> Vec<PolicyRule> {
        let doc = deploy.iter().find(|d| d["kind"].as_str() == Some(kind)).unwrap();
        serde_yaml::from_value(doc["rules"].clone()).unwrap()
    };
    let cluster_role = Api::<ClusterRole>::all(admin.clone()).get(name).await.unwrap();
    assert_eq!(rules(cluster_role.rules), rules(Some(of_kind("ClusterRole"))));
    let role = Api::<Role>::namespaced(admin.clone(), &ns).get(&format!("{name}-leader-election")).await.unwrap();
    assert_eq!(rules(role.rules), rules(Some(of_kind("Role"))));

    let account = Api::<ServiceAccount>::namespaced(admin.clone(), &ns).get(name).await.unwrap();
    assert!(account.metadata.annotations.unwrap().contains_key("eks.amazonaws.com/role-arn"));
    let service = Api::<Service>::namespaced(admin.clone(), &ns).get(&format!("{name}-metrics")).await.unwrap();
    assert_eq!(service.spec.unwrap().ports.unwrap()[0].port, 9090);
    for (group, version, kind, plural) in [
        ("policy", "v1beta1", "PodDisruptionBudget", "poddisruptionbudgets"),
        ("monitoring.coreos.com", "v1", "ServiceMonitor", "servicemonitors"),
        ("monitoring.coreos.com", "v1", "PrometheusRule", "prometheusrules"),
    ] {
        let resource = ApiResource {
            group: group.into(),
            version: version.into(),
            api_version: if group.is_empty() { version.into() } else { format!("{group}/{version}") },
            kind: kind.into(),
            plural: plural.into(),
        };
        let api = Api::<DynamicObject>::namespaced_with(admin.clone(), &ns, &resource);
        assert!(api.get_opt(name).await.unwrap().is_some(), "no {kind} {name}");
    }
}
