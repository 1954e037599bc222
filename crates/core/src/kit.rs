//! The recovery kit: what new nodes need to come back as a cluster and read a snapshot, stored beside
//! it. It is the upstream operator's state Secret, key for key (`<cluster>-state` in the control
//! plane's namespace, label `talos.alperen.cloud/type: state`, keys `secretBundle`, `bundleConfig`,
//! `state`, `config`, `observedKubeVersion`: `ensureStateSecret` in upstream v0.5.4's
//! internal/controller/taloscontrolplane_controller.go), with this backup's own facts added, at the key
//! upstream uses (`state-<timestamp>.yaml`). Applied with `kubectl apply`, upstream restores the
//! control plane's status from it (`restoreFromStateSecret`); its `state` is always one upstream never
//! bootstraps etcd in, so the wiped nodes wait for a restore instead of starting an empty etcd. It
//! holds the cluster's secrets: it is sealed to the backup's age recipients (`….yaml.age`), and
//! stored plain only when the user asks for it.

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use teb_pipeline::codec::{self, Identity, Recipient};
use teb_pipeline::{Error as PipelineError, Storage};

use crate::Error;

/// The kit's facts. Debug output never shows the secrets bundle.
#[derive(Clone, PartialEq, Eq)]
pub struct RecoveryKit {
    /// The control plane's name (the snapshot's `cluster` metadata).
    pub cluster: String,
    /// The secrets bundle, as `talosctl gen secrets` writes it (the OS CA, the secretbox key, ...).
    pub secrets_bundle: String,
    /// The TalosControlPlane's `status.bundleConfig`: cluster name, endpoints, versions (JSON).
    pub bundle_config: String,
    /// The control plane's namespace (the Secret's), when known.
    pub namespace: Option<String>,
    /// Upstream's `state` as the kit records it: see [`upstream_state`].
    pub state: String,
    /// The control-plane machine config upstream applied (`status.config`), when it had one.
    pub machine_config: Option<String>,
    pub observed_kube_version: Option<String>,
    /// The snapshot the kit goes with: its key, SHA-256 (when known), node and time.
    pub backup_key: String,
    pub backup_sha256: Option<String>,
    pub backup_node: String,
    pub backup_time: String,
}

impl std::fmt::Debug for RecoveryKit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RecoveryKit({} for {})", self.cluster, self.backup_key)
    }
}

/// How a backup's kit is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KitPolicy {
    /// Sealed to the backup's age recipients; none without recipients.
    Encrypted,
    /// In plain text too when the backup has no recipients, as the upstream operator stores it.
    Plaintext,
    /// Never.
    Never,
}

/// The Secret shape of the upstream operator's state backup.
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct StateSecret {
    api_version: String,
    kind: String,
    metadata: Metadata,
    #[serde(rename = "type", default)]
    type_: String,
    #[serde(default)]
    data: BTreeMap<String, String>,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Metadata {
    name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    namespace: Option<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
}

/// The label that marks a state Secret as this writer's kit.
const KIT_LABEL: &str = "talos.alperen.cloud/recovery-kit";
/// Upstream's label of its state Secrets (`StateSecretLabelKey`/`Value`, api/v1alpha1/common.go).
pub const STATE_LABEL: (&str, &str) = ("talos.alperen.cloud/type", "state");
/// The keys of upstream's state Secret, in its order.
pub const UPSTREAM_KEYS: [&str; 5] = ["secretBundle", "bundleConfig", "state", "config", "observedKubeVersion"];

/// The `state` a kit records for a control plane whose status says `observed`. A snapshot exists only
/// of a bootstrapped etcd, and upstream's BootstrapCluster returns at once in `Bootstrapped` and
/// `Ready` (and bootstraps only from `Available`): any other state, or none, is recorded as
/// `Bootstrapped`, so that applying the kit never makes upstream bootstrap an empty etcd.
pub fn upstream_state(observed: Option<&str>) -> &'static str {
    match observed {
        Some("Ready") => "Ready",
        _ => "Bootstrapped",
    }
}

impl RecoveryKit {
    /// The kit as the upstream operator's state Secret YAML, with the backup's facts.
    pub fn to_yaml(&self) -> String {
        let mut data = BTreeMap::new();
        let mut put = |key: &str, value: &str| {
            data.insert(key.to_owned(), BASE64.encode(value));
        };
        put("secretBundle", &self.secrets_bundle);
        put("bundleConfig", &self.bundle_config);
        put("state", &self.state);
        put("config", self.machine_config.as_deref().unwrap_or_default());
        put("observedKubeVersion", self.observed_kube_version.as_deref().unwrap_or_default());
        put("cluster", &self.cluster);
        put("backupKey", &self.backup_key);
        put("backupNode", &self.backup_node);
        put("backupTime", &self.backup_time);
        if let Some(sha) = &self.backup_sha256 {
            put("backupSHA256", sha);
        }
        let labels = BTreeMap::from([
            (KIT_LABEL.to_owned(), "v1".to_owned()),
            (STATE_LABEL.0.to_owned(), STATE_LABEL.1.to_owned()),
        ]);
        let secret = StateSecret {
            api_version: "v1".into(),
            kind: "Secret".into(),
            metadata: Metadata { name: format!("{}-state", self.cluster), namespace: self.namespace.clone(), labels },
            type_: "Opaque".into(),
            data,
        };
        serde_yaml::to_string(&secret).unwrap_or_default()
    }

    /// A kit read back; errors say what is missing or broken, never quote a secret.
    pub fn from_yaml(text: &str) -> Result<Self, String> {
        let secret: StateSecret = serde_yaml::from_str(text).map_err(|e| {
            format!(
                "it is not a state Secret (YAML): {}",
                e.location().map_or_else(String::new, |l| format!("line {}", l.line()))
            )
        })?;
        if secret.kind != "Secret" {
            return Err(format!("it is a {:?}, not a state Secret", secret.kind));
        }
        let value = |key: &str| -> Result<String, String> {
            let encoded = secret.data.get(key).ok_or_else(|| format!("it has no {key}"))?;
            let bytes = BASE64.decode(encoded.trim()).map_err(|_| format!("its {key} is not base64"))?;
            String::from_utf8(bytes).map_err(|_| format!("its {key} is not text"))
        };
        let cluster = value("cluster").or_else(|_| {
            secret
                .metadata
                .name
                .strip_suffix("-state")
                .map(str::to_owned)
                .ok_or_else(|| "it names no cluster".to_owned())
        })?;
        let optional = |key: &str| value(key).ok().filter(|v| !v.is_empty());
        Ok(RecoveryKit {
            cluster,
            secrets_bundle: value("secretBundle")?,
            bundle_config: value("bundleConfig")?,
            namespace: secret.metadata.namespace,
            state: upstream_state(optional("state").as_deref()).to_owned(),
            machine_config: optional("config"),
            observed_kube_version: optional("observedKubeVersion"),
            backup_key: value("backupKey").unwrap_or_default(),
            backup_sha256: value("backupSHA256").ok(),
            backup_node: value("backupNode").unwrap_or_default(),
            backup_time: value("backupTime").unwrap_or_default(),
        })
    }
}

/// The kit's key beside the snapshot at `snapshot_key`, as the upstream operator names it:
/// `…/etcd-snapshot-<timestamp>.db` → `…/state-<timestamp>.yaml`, `.age` added when sealed.
pub fn kit_key(snapshot_key: &str, sealed: bool) -> String {
    crate::backup::companion_key(snapshot_key, "state-", ".yaml", sealed)
}

/// Stores `kit` beside its snapshot: sealed to `recipients`, or plain when there are none and
/// `policy` allows it. Returns its key, or None when no kit may be stored.
pub async fn store(
    storage: &Storage,
    kit: &RecoveryKit,
    recipients: &[Recipient],
    policy: KitPolicy,
) -> Result<Option<String>, Error> {
    let (key, bytes) = match (policy, recipients.is_empty()) {
        (KitPolicy::Never, _) | (KitPolicy::Encrypted, true) => return Ok(None),
        (_, false) => {
            (kit_key(&kit.backup_key, true), codec::seal(kit.to_yaml().as_bytes(), recipients).map_err(Error::Upload)?)
        }
        (KitPolicy::Plaintext, true) => (kit_key(&kit.backup_key, false), kit.to_yaml().into_bytes()),
    };
    put(storage, &key, bytes, &kit.cluster).await?;
    Ok(Some(key))
}

/// Writes a kit's bytes at `key`, with the metadata kits carry.
async fn put(storage: &Storage, key: &str, bytes: Vec<u8>, cluster: &str) -> Result<(), Error> {
    let metadata = [("cluster", cluster.to_owned()), ("format", "talos-etcd-backup-recovery-kit".to_owned())];
    storage.put(key, bytes, &metadata).await.map_err(|cause| Error::KitNotStored { key: key.to_owned(), cause })
}

/// Seals the plaintext kit beside the snapshot at `snapshot_key` — the upstream operator's
/// `state-<timestamp>.yaml`, or a `Plaintext` kit — to `recipients`, as `….yaml.age`, with the
/// snapshot's facts added (its key, `sha256` when known, the time in its key). The plaintext is
/// deleted only once the sealed copy read back is what was written (and, with `identities`, opens to
/// the same kit). Its sealed key, or None when there is no plaintext kit.
pub async fn seal_plaintext(
    storage: &Storage,
    snapshot_key: &str,
    sha256: Option<&str>,
    recipients: &[Recipient],
    identities: &[Identity],
) -> Result<Option<String>, Error> {
    let plain_key = kit_key(snapshot_key, false);
    let Some(bytes) = storage.get(&plain_key).await.map_err(Error::Upload)? else {
        return Ok(None);
    };
    let failed = |key: &str, reason: String| Error::Kit { key: key.to_owned(), reason };
    let text = String::from_utf8(bytes.to_vec()).map_err(|_| failed(&plain_key, "it is not text".into()))?;
    let mut kit = RecoveryKit::from_yaml(&text).map_err(|reason| failed(&plain_key, reason))?;
    if kit.backup_key.is_empty() {
        kit.backup_key = snapshot_key.to_owned();
    }
    if kit.backup_sha256.is_none() {
        kit.backup_sha256 = sha256.map(str::to_owned);
    }
    if kit.backup_time.is_empty() {
        kit.backup_time = crate::backup::time_of_key(snapshot_key).map(|t| t.to_string()).unwrap_or_default();
    }
    let sealed_key = kit_key(snapshot_key, true);
    let sealed = codec::seal(kit.to_yaml().as_bytes(), recipients).map_err(Error::Upload)?;
    put(storage, &sealed_key, sealed.clone(), &kit.cluster).await?;
    let back = storage.get(&sealed_key).await.map_err(Error::Upload)?;
    if back.as_deref() != Some(sealed.as_slice()) {
        return Err(failed(&sealed_key, "read back, it is not what was written: the plaintext kit stays".into()));
    }
    if !identities.is_empty() {
        let opened = codec::open(&sealed, identities).map_err(|e| failed(&sealed_key, e.to_string()))?;
        let reread = String::from_utf8(opened).ok().and_then(|t| RecoveryKit::from_yaml(&t).ok());
        if reread.as_ref() != Some(&kit) {
            return Err(failed(&sealed_key, "opened, it is not the kit sealed: the plaintext kit stays".into()));
        }
    }
    let deleting = |cause| Error::Bucket { action: "delete a plaintext recovery kit from", cause };
    storage.delete(&plain_key).await.map_err(deleting)?;
    Ok(Some(sealed_key))
}

/// The kit stored beside the snapshot at `snapshot_key`, if any: its key and what it holds, opened
/// with `identities` when sealed. It must belong to the snapshot's cluster (`cluster`).
pub async fn read(
    storage: &Storage,
    snapshot_key: &str,
    cluster: &str,
    identities: &[Identity],
) -> Result<Option<(String, RecoveryKit)>, Error> {
    for sealed in [true, false] {
        let key = kit_key(snapshot_key, sealed);
        let failed = |reason: String| Error::Kit { key: key.clone(), reason };
        let Some(bytes) = storage.get(&key).await.map_err(Error::Upload)? else {
            continue;
        };
        let plain = if sealed {
            codec::open(&bytes, identities).map_err(|e: PipelineError| failed(e.to_string()))?
        } else {
            bytes.to_vec()
        };
        let text = String::from_utf8(plain).map_err(|_| failed("it is not text".into()))?;
        let kit = RecoveryKit::from_yaml(&text).map_err(failed)?;
        if kit.cluster != cluster {
            return Err(failed(format!("it is the kit of cluster {:?}, not of {cluster:?}", kit.cluster)));
        }
        teb_talos::SecretsBundle::from_yaml(&kit.secrets_bundle).map_err(|e| failed(e.to_string()))?;
        return Ok(Some((key, kit)));
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kit() -> RecoveryKit {
        RecoveryKit {
            cluster: "prod".into(),
            secrets_bundle: "certs:\n  os:\n    crt: Zm9v\n    key: YmFy\n".into(),
            bundle_config: "{\"clusterName\":\"prod\"}".into(),
            namespace: Some("clusters".into()),
            state: "Ready".into(),
            machine_config: Some("version: v1alpha1\n".into()),
            observed_kube_version: Some("v1.34.1".into()),
            backup_key: "talos-operator-etcd-backups/prod/etcd-snapshot-2025-10-04T11-30-00Z.db.zst.age".into(),
            backup_sha256: Some("ab".repeat(32)),
            backup_node: "10.0.0.2".into(),
            backup_time: "2025-10-04T11:30:00Z".into(),
        }
    }

    #[test]
    fn the_kit_is_the_upstream_state_secret_and_reads_back() {
        let yaml = kit().to_yaml();
        assert!(
            yaml.starts_with("apiVersion: v1\nkind: Secret\nmetadata:\n  name: prod-state\n  namespace: clusters\n"),
            "{yaml}"
        );
        assert!(yaml.contains("talos.alperen.cloud/type: state"), "{yaml}");
        for key in UPSTREAM_KEYS {
            assert!(yaml.contains(&format!("  {key}: ")), "upstream's key {key}: {yaml}");
        }
        assert!(yaml.contains("secretBundle: ") && yaml.contains("bundleConfig: "), "{yaml}");
        assert!(!yaml.contains("crt: Zm9v"), "data is base64, as in a Secret");
        assert_eq!(RecoveryKit::from_yaml(&yaml).unwrap(), kit());
        assert!(!format!("{:?}", kit()).contains("Zm9v"), "Debug never shows the bundle");
        let err = RecoveryKit::from_yaml("kind: ConfigMap\napiVersion: v1\nmetadata: {name: x}\n").unwrap_err();
        assert!(err.contains("ConfigMap"), "{err}");
    }

    #[test]
    fn a_kit_never_records_a_state_upstream_bootstraps_from() {
        for (observed, recorded) in [
            (Some("Ready"), "Ready"),
            (Some("Bootstrapped"), "Bootstrapped"),
            (Some("Available"), "Bootstrapped"),
            (Some("UpgradingKubernetes"), "Bootstrapped"),
            (Some(""), "Bootstrapped"),
            (None, "Bootstrapped"),
        ] {
            assert_eq!(upstream_state(observed), recorded, "{observed:?}");
        }
        // An older kit without `state` reads as Bootstrapped too.
        let mut old = kit();
        old.state = "Bootstrapped".into();
        let yaml = old.to_yaml().replace(&format!("  state: {}\n", BASE64.encode("Bootstrapped")), "");
        assert!(!yaml.contains("  state: "), "{yaml}");
        assert_eq!(RecoveryKit::from_yaml(&yaml).unwrap().state, "Bootstrapped");
    }

    #[test]
    fn kit_keys_follow_the_upstream_pattern() {
        let key = "talos-operator-etcd-backups/prod/etcd-snapshot-2025-10-04T11-30-00Z.db";
        assert_eq!(kit_key(key, false), "talos-operator-etcd-backups/prod/state-2025-10-04T11-30-00Z.yaml");
        assert_eq!(
            kit_key(&format!("{key}.zst.age"), true),
            "talos-operator-etcd-backups/prod/state-2025-10-04T11-30-00Z.yaml.age"
        );
        assert_eq!(
            kit_key("talos-operator-etcd-backups/prod/etcd-snapshot-2025-10-04T11-30-00Z-2.db", true),
            "talos-operator-etcd-backups/prod/state-2025-10-04T11-30-00Z-2.yaml.age"
        );
    }
}
