//! What `kit --out` writes, so that rebuilt nodes match the lost ones: the secrets bundle as
//! `talosctl gen config --with-secrets` loads it, the machine config upstream applied, the upstream
//! state Secret for `kubectl apply`, and the cluster's settings (from `bundleConfig`) as
//! `talosctl gen config` flags and a patch, for a kit without a machine config.

use teb_api::BundleConfig;
use teb_core::kit::RecoveryKit;

/// One file of the folder: its name and text.
pub struct KitFile {
    pub name: &'static str,
    pub text: String,
}

/// The files of `kit`, in the order a user reads them. `talosconfig` is the minted client config.
pub fn kit_files(kit: &RecoveryKit, talosconfig: String) -> Result<Vec<KitFile>, String> {
    let config: BundleConfig =
        serde_json::from_str(&kit.bundle_config).map_err(|_| "the kit's bundleConfig is not valid JSON".to_owned())?;
    let mut files = vec![
        KitFile { name: "secrets.yaml", text: kit.secrets_bundle.clone() },
        KitFile { name: "talosconfig", text: talosconfig },
        KitFile { name: "state-secret.yaml", text: kit.to_yaml() },
        KitFile { name: "cluster-patch.yaml", text: cluster_patch(&config) },
        KitFile { name: "gen-config.sh", text: gen_config_script(&config) },
    ];
    if let Some(machine_config) = &kit.machine_config {
        files.push(KitFile { name: "controlplane.yaml", text: machine_config.clone() });
    }
    Ok(files)
}

/// `cluster.network` as the control plane had it: pod and service subnets and the CNI. A different
/// service subnet breaks every restored Service (their cluster IPs are in etcd).
fn cluster_patch(config: &BundleConfig) -> String {
    let mut network = serde_json::Map::new();
    if !config.pod_cidr.is_empty() {
        network.insert("podSubnets".into(), config.pod_cidr.clone().into());
    }
    if !config.service_cidr.is_empty() {
        network.insert("serviceSubnets".into(), config.service_cidr.clone().into());
    }
    if let Some(cni) = config.cni.as_ref().and_then(|c| c.as_object()) {
        // Talos's cluster.network.cni has name and urls; upstream's flannel options are in the
        // applied machine config (controlplane.yaml) when the kit has it.
        let cni: serde_json::Map<_, _> = cni
            .iter()
            .filter(|(k, _)| matches!(k.as_str(), "name" | "urls"))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if !cni.is_empty() {
            network.insert("cni".into(), cni.into());
        }
    }
    let patch = serde_json::json!({ "cluster": { "network": network } });
    serde_yaml::to_string(&patch).unwrap_or_default()
}

/// The `talosctl gen config` command that makes configs for this cluster from the kit's secrets.
fn gen_config_script(config: &BundleConfig) -> String {
    let endpoint = config.endpoint.clone().unwrap_or_else(|| format!("https://{}:6443", config.cluster_name));
    let mut args = vec![
        format!("talosctl gen config {} {}", shell_quote(&config.cluster_name), shell_quote(&endpoint)),
        "--with-secrets secrets.yaml".to_owned(),
        "--config-patch @cluster-patch.yaml".to_owned(),
    ];
    if let Some(version) = config.version.as_deref().filter(|v| !v.is_empty()) {
        args.push(format!("--talos-version {}", shell_quote(version)));
    }
    if let Some(version) = config.kube_version.as_deref().filter(|v| !v.is_empty()) {
        args.push(format!("--kubernetes-version {}", shell_quote(version.trim_start_matches('v'))));
    }
    if !config.sans.is_empty() {
        args.push(format!("--additional-sans {}", shell_quote(&config.sans.join(","))));
    }
    format!(
        "#!/bin/sh\n# The cluster's settings from its recovery kit. Prefer controlplane.yaml (the machine config the\n\
         # control plane ran) when the kit has one; add your own patches (install disk, ...) to this command.\n\
         set -e\ncd \"$(dirname \"$0\")\"\n{}\n",
        args.join(" \\\n  ")
    )
}

/// `value` in single quotes for a POSIX shell.
fn shell_quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kit(bundle_config: &str) -> RecoveryKit {
        RecoveryKit {
            cluster: "prod".into(),
            secrets_bundle: "cluster: {}\n".into(),
            bundle_config: bundle_config.into(),
            namespace: Some("clusters".into()),
            state: "Ready".into(),
            machine_config: None,
            observed_kube_version: None,
            backup_key: "k".into(),
            backup_sha256: None,
            backup_node: "n".into(),
            backup_time: "t".into(),
        }
    }

    #[test]
    fn the_cluster_settings_become_gen_config_flags_and_a_patch() {
        let metal = r#"{"clusterName":"prod","endpoint":"https://10.0.0.10:6443","version":"v1.10.3","kubeVersion":"v1.33.1","sans":["api.example.com"],"podCIDR":["10.244.0.0/16"],"serviceCIDR":["10.96.0.0/12"],"clientEndpoint":["10.0.0.2"],"cni":{"name":"custom","urls":["https://example.com/cni.yaml"]}}"#;
        let files = kit_files(&kit(metal), "tc".into()).unwrap();
        let names: Vec<_> = files.iter().map(|f| f.name).collect();
        assert_eq!(names, ["secrets.yaml", "talosconfig", "state-secret.yaml", "cluster-patch.yaml", "gen-config.sh"]);
        let patch: serde_yaml::Value = serde_yaml::from_str(&files[3].text).unwrap();
        let network = &patch["cluster"]["network"];
        assert_eq!(network["serviceSubnets"][0].as_str(), Some("10.96.0.0/12"));
        assert_eq!(network["podSubnets"][0].as_str(), Some("10.244.0.0/16"));
        assert_eq!(network["cni"]["name"].as_str(), Some("custom"));
        let script = &files[4].text;
        for expected in [
            "talosctl gen config 'prod' 'https://10.0.0.10:6443'",
            "--with-secrets secrets.yaml",
            "--config-patch @cluster-patch.yaml",
            "--talos-version 'v1.10.3'",
            "--kubernetes-version '1.33.1'",
            "--additional-sans 'api.example.com'",
        ] {
            assert!(script.contains(expected), "{expected} in {script}");
        }
        // A container-mode bundle config (nulls) works too, and a machine config is written as is.
        let mut container = kit(
            r#"{"clusterName":"c'1","endpoint":"https://c:6443","version":"v1.10.3","kubeVersion":"","podCIDR":null,"serviceCIDR":null,"clientEndpoint":null}"#,
        );
        container.machine_config = Some("version: v1alpha1\n".into());
        let files = kit_files(&container, "tc".into()).unwrap();
        assert_eq!(files.last().map(|f| (f.name, f.text.as_str())), Some(("controlplane.yaml", "version: v1alpha1\n")));
        assert!(
            files[4].text.contains(r"'c'\''1'") && !files[4].text.contains("--kubernetes-version"),
            "{}",
            files[4].text
        );
        assert!(kit_files(&kit("{not json"), "tc".into()).is_err());
    }
}
