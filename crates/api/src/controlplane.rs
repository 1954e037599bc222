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
}

/// The JSON document in `TalosControlPlane.status.bundleConfig`.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BundleConfig {
    pub cluster_name: String,
    #[serde(default)]
    pub endpoint: Option<String>,
    #[serde(default)]
    pub version: Option<String>,
    /// Talos API endpoints; when empty, the cluster name is the endpoint.
    #[serde(default)]
    pub client_endpoint: Vec<String>,
}

impl BundleConfig {
    /// Talos API endpoints as the upstream operator uses them: `clientEndpoint` when set, else the
    /// cluster name.
    pub fn talos_endpoints(&self) -> Vec<String> {
        if self.client_endpoint.is_empty() { vec![self.cluster_name.clone()] } else { self.client_endpoint.clone() }
    }
}
