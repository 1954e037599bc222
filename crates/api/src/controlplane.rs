use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A Talos control plane as the upstream talos.alperen.cloud operator records it. Only the fields a
/// backup needs are typed; every other field the upstream operator writes is kept as it is.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "talos.alperen.cloud",
    version = "v1alpha1",
    kind = "TalosControlPlane",
    namespaced,
    status = "TalosControlPlaneStatus",
    shortname = "tcp"
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-preserve-unknown-fields" = true))]
pub struct TalosControlPlaneSpec {
    /// Talos version of the control plane.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// `container`, `metal` or `cloud`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    /// Number of control-plane machines.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<i32>,
    /// Kubernetes API endpoint of the cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-preserve-unknown-fields" = true))]
pub struct TalosControlPlaneStatus {
    /// YAML of the cluster's secrets bundle (`talosctl gen secrets` shape); holds the Talos OS CA.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_bundle: Option<String>,
    /// JSON of the bundle configuration; see [`BundleConfig`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bundle_config: Option<String>,
    /// Upstream's state machine: `Pending`, `Available`, `Bootstrapped`, `Ready`, ... Upstream
    /// bootstraps etcd only from `Available` and never in `Bootstrapped` or `Ready`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// The control-plane machine config upstream generated and applied (YAML).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_kube_version: Option<String>,
}

/// The JSON document in `TalosControlPlane.status.bundleConfig`, as upstream's `talos.BundleConfig`
/// (pkg/talos/bundle.go, v0.5.4) marshals it. Its list fields are Go `*[]string`: a pointer to a nil
/// slice is written as `null` (container mode writes `"clientEndpoint": null`, and `podCIDR` /
/// `serviceCIDR` are `null` when the spec has none), so every field takes `null` as absent.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BundleConfig {
    pub cluster_name: String,
    /// The Kubernetes API endpoint (`https://<name>:6443` unless the spec sets one).
    #[serde(default)]
    pub endpoint: Option<String>,
    /// Talos version.
    #[serde(default)]
    pub version: Option<String>,
    #[serde(default)]
    pub kube_version: Option<String>,
    /// Extra SANs of the API server certificate.
    #[serde(default, deserialize_with = "null_as_empty")]
    pub sans: Vec<String>,
    #[serde(default, rename = "podCIDR", deserialize_with = "null_as_empty")]
    pub pod_cidr: Vec<String>,
    #[serde(default, rename = "serviceCIDR", deserialize_with = "null_as_empty")]
    pub service_cidr: Vec<String>,
    /// Talos API endpoints; when empty, the cluster name is the endpoint.
    #[serde(default, deserialize_with = "null_as_empty")]
    pub client_endpoint: Vec<String>,
    /// The CNI settings (`name`, `urls`, `flannel`), kept as upstream wrote them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cni: Option<serde_json::Value>,
}

/// A list that may be written as `null`.
fn null_as_empty<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
    Ok(Option::<Vec<String>>::deserialize(deserializer)?.unwrap_or_default())
}

impl BundleConfig {
    /// Talos API endpoints as the upstream operator uses them: `clientEndpoint` when set, else the
    /// cluster name.
    pub fn talos_endpoints(&self) -> Vec<String> {
        if self.client_endpoint.is_empty() { vec![self.cluster_name.clone()] } else { self.client_endpoint.clone() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Byte for byte what upstream v0.5.4 writes (`json.Marshal(talos.BundleConfig)`, fields in its
    /// struct order; SetConfig in internal/controller/taloscontrolplane_controller.go).
    #[test]
    fn upstream_bundle_configs_of_both_modes_parse() {
        let container = r#"{"clusterName":"tcp-c","endpoint":"https://tcp-c:6443","version":"v1.10.3","kubeVersion":"v1.33.1","sans":["tcp-c","tcp-c-0","tcp-c-1","tcp-c-2"],"podCIDR":null,"serviceCIDR":null,"clientEndpoint":null}"#;
        let parsed: BundleConfig = serde_json::from_str(container).unwrap();
        assert_eq!(parsed.talos_endpoints(), ["tcp-c"]);
        assert_eq!(parsed.sans.len(), 4);
        assert!(parsed.pod_cidr.is_empty() && parsed.service_cidr.is_empty() && parsed.cni.is_none());
        let metal = r#"{"clusterName":"prod","endpoint":"https://10.0.0.10:6443","version":"v1.10.3","kubeVersion":"v1.33.1","podCIDR":["10.244.0.0/16"],"serviceCIDR":["10.96.0.0/12"],"clientEndpoint":["10.0.0.2","10.0.0.3","10.0.0.4"],"cni":{"name":"flannel"}}"#;
        let parsed: BundleConfig = serde_json::from_str(metal).unwrap();
        assert_eq!(parsed.talos_endpoints(), ["10.0.0.2", "10.0.0.3", "10.0.0.4"]);
        assert_eq!(
            (parsed.pod_cidr.as_slice(), parsed.service_cidr.as_slice()),
            (&["10.244.0.0/16".to_owned()][..], &["10.96.0.0/12".to_owned()][..])
        );
        assert_eq!(parsed.kube_version.as_deref(), Some("v1.33.1"));
        assert_eq!(parsed.cni, Some(serde_json::json!({"name": "flannel"})));
        for null in ["version", "endpoint", "kubeVersion", "sans", "cni"] {
            let text = metal.replacen(&format!("\"{null}\":"), &format!("\"{null}\":null,\"x{null}\":"), 1);
            assert!(serde_json::from_str::<BundleConfig>(&text).is_ok(), "{null}: null parses");
        }
    }
}
