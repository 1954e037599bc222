//! A value kube-apiserver keeps in etcd, read back as the object it serves. In order:
//!
//! - encrypted at rest (`k8s:enc:<provider>:v1:<key name>:<payload>`): opened with the key of that
//!   name. `secretbox` (XSalsa20-Poly1305: a 24-byte nonce, then NaCl's box, tag first) and `aescbc`
//!   (a 16-byte IV, then AES-CBC with PKCS#7 padding), as k8s.io/apiserver's
//!   `storage/value/encrypt/{secretbox,aes}` write them, neither with additional data;
//! - a built-in object: `k8s\0`, then a `runtime.Unknown` naming its apiVersion and kind around the
//!   object's protobuf. Secrets and ConfigMaps are decoded whole, every other kind's metadata only;
//! - a custom resource (or anything else kube-apiserver stores as JSON): the JSON itself.
//!
//! The object comes out ready for `kubectl apply`: its metadata without what the cluster assigned
//! ([`ASSIGNED_METADATA`]).

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use k8s_pb::api::core::v1::{ConfigMap, Secret};
use k8s_pb::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_pb::apimachinery::pkg::runtime::Unknown;
use prost::Message as _;
use serde_json::{Map, Value, json};

/// Metadata the cluster assigns, left out of an object brought back: a new object gets its own.
/// Owner references go too: they name owners by uid, and the garbage collector deletes an object
/// whose owners are all gone, as they are for an object brought back into a new cluster.
pub const ASSIGNED_METADATA: [&str; 9] = [
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "selfLink",
    "managedFields",
    "ownerReferences",
];

/// The keys kube-apiserver encrypts Secrets with, by the name its encryption configuration gives them.
#[derive(Clone, Default)]
pub struct EncryptionKeys {
    keys: BTreeMap<String, Vec<u8>>,
}

impl std::fmt::Debug for EncryptionKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "EncryptionKeys({:?})", self.keys.keys().collect::<Vec<_>>())
    }
}

impl EncryptionKeys {
    /// Talos's keys, from a secrets bundle (`talosctl gen secrets`, the recovery kit's): Talos names
    /// `secrets.secretboxencryptionsecret` `key2` and `secrets.aescbcencryptionsecret` `key1` in the
    /// encryption configuration it writes for kube-apiserver (secretbox first, then aescbc, then
    /// identity: internal/app/machined/pkg/controllers/k8s/internal/k8stemplates/apiserver.go,
    /// v1.11.0; the names are kept by pkg/machinery/config/generate/kubernetes.go for 1.14's
    /// contract, which puts `key1` under a secretbox provider: a key is found by its name).
    pub fn from_secrets_bundle(bundle: &str) -> Result<Self, String> {
        #[derive(serde::Deserialize)]
        struct Bundle {
            #[serde(default)]
            secrets: Secrets,
        }
        #[derive(serde::Deserialize, Default)]
        struct Secrets {
            secretboxencryptionsecret: Option<String>,
            aescbcencryptionsecret: Option<String>,
        }
        let bundle: Bundle =
            serde_yaml::from_str(bundle).map_err(|e| format!("the secrets bundle is not YAML of its shape: {e}"))?;
        let mut keys = EncryptionKeys::default();
        let named =
            [("key2", bundle.secrets.secretboxencryptionsecret), ("key1", bundle.secrets.aescbcencryptionsecret)];
        for (name, secret) in named {
            if let Some(secret) = secret.filter(|s| !s.is_empty()) {
                keys.insert(name, &secret)?;
            }
        }
        Ok(keys)
    }

    /// Adds the key `name`, its secret base64 as in an encryption configuration.
    pub fn insert(&mut self, name: &str, secret: &str) -> Result<(), String> {
        let key = BASE64.decode(secret.trim()).map_err(|_| format!("the encryption key {name} is not base64"))?;
        if ![16, 24, 32].contains(&key.len()) {
            return Err(format!("the encryption key {name} has {} bytes, not 16, 24 or 32", key.len()));
        }
        self.keys.insert(name.to_owned(), key);
        Ok(())
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// `value` opened, when it is encrypted at rest; `None` when it is not.
    pub fn open(&self, value: &[u8]) -> Result<Option<Vec<u8>>, String> {
        let Some(rest) = value.strip_prefix(b"k8s:enc:") else {
            return Ok(None);
        };
        let mut fields = rest.splitn(4, |&b| b == b':');
        let (Some(provider), Some(_version), Some(name), Some(payload)) =
            (fields.next(), fields.next(), fields.next(), fields.next())
        else {
            return Err("it is encrypted at rest, but its prefix is cut short".into());
        };
        let (provider, name) = (String::from_utf8_lossy(provider), String::from_utf8_lossy(name));
        if !matches!(provider.as_ref(), "secretbox" | "aescbc") {
            return Err(format!(
                "it is encrypted at rest by the {provider} provider: only secretbox and aescbc (Talos's) are read here"
            ));
        }
        let Some(key) = self.keys.get(name.as_ref()) else {
            return Err(format!(
                "it is encrypted at rest with the {provider} key {name:?}, which was not given ({}): pass the \
                 cluster's secrets bundle (the backup's recovery kit holds it)",
                if self.keys.is_empty() { "no key was".to_owned() } else { format!("known: {self:?}") }
            ));
        };
        let opened = if provider == "secretbox" { open_secretbox(key, payload) } else { open_aescbc(key, payload) };
        opened
            .map(Some)
            .ok_or_else(|| format!("it does not open with the {provider} key {name:?}: not this cluster's key"))
    }
}

fn open_secretbox(key: &[u8], payload: &[u8]) -> Option<Vec<u8>> {
    use crypto_secretbox::aead::{Aead as _, KeyInit as _};
    const NONCE: usize = 24;
    if key.len() != 32 || payload.len() < NONCE {
        return None;
    }
    let cipher = crypto_secretbox::XSalsa20Poly1305::new_from_slice(key).ok()?;
    let (nonce, sealed) = payload.split_at(NONCE);
    cipher.decrypt(crypto_secretbox::Nonce::from_slice(nonce), sealed).ok()
}

fn open_aescbc(key: &[u8], payload: &[u8]) -> Option<Vec<u8>> {
    use cbc::cipher::block_padding::Pkcs7;
    use cbc::cipher::{BlockDecryptMut as _, KeyIvInit as _};
    const BLOCK: usize = 16;
    if payload.len() < 2 * BLOCK || !payload.len().is_multiple_of(BLOCK) {
        return None;
    }
    let (iv, data) = payload.split_at(BLOCK);
    match key.len() {
        16 => cbc::Decryptor::<aes::Aes128>::new_from_slices(key, iv).ok()?.decrypt_padded_vec_mut::<Pkcs7>(data).ok(),
        24 => cbc::Decryptor::<aes::Aes192>::new_from_slices(key, iv).ok()?.decrypt_padded_vec_mut::<Pkcs7>(data).ok(),
        32 => cbc::Decryptor::<aes::Aes256>::new_from_slices(key, iv).ok()?.decrypt_padded_vec_mut::<Pkcs7>(data).ok(),
        _ => None,
    }
}

/// An object as read back from its stored value.
#[derive(Clone, Debug, PartialEq)]
pub struct Decoded {
    /// The object as kube-apiserver serves it (JSON), less [`ASSIGNED_METADATA`].
    pub object: Value,
    /// Whether all of it was decoded: false for a built-in kind other than Secret and ConfigMap,
    /// of which only the metadata is.
    pub complete: bool,
}

/// The object stored as `value`, opened with `keys` when encrypted at rest.
pub fn decode(value: &[u8], keys: &EncryptionKeys) -> Result<Decoded, String> {
    let opened = keys.open(value)?;
    let value = opened.as_deref().unwrap_or(value);
    if let Some(envelope) = value.strip_prefix(b"k8s\0") {
        return decode_protobuf(envelope);
    }
    let mut object: Value = serde_json::from_slice(value)
        .map_err(|_| "it is neither kube-apiserver's protobuf (k8s\\0) nor JSON".to_owned())?;
    let metadata = object.get_mut("metadata").and_then(Value::as_object_mut).ok_or("its JSON has no metadata")?;
    for field in ASSIGNED_METADATA {
        metadata.remove(field);
    }
    Ok(Decoded { object, complete: true })
}

/// A message's metadata alone: every Kubernetes object has its ObjectMeta as field 1.
#[derive(Clone, PartialEq, prost::Message)]
struct Metadata {
    #[prost(message, optional, tag = "1")]
    metadata: Option<ObjectMeta>,
}

fn decode_protobuf(envelope: &[u8]) -> Result<Decoded, String> {
    let broken = |what: &str, e: prost::DecodeError| format!("its protobuf {what} cannot be decoded: {e}");
    let unknown = Unknown::decode(envelope).map_err(|e| broken("envelope", e))?;
    let type_meta = unknown.type_meta.unwrap_or_default();
    let (api_version, kind) = (type_meta.api_version.unwrap_or_default(), type_meta.kind.unwrap_or_default());
    let raw = unknown.raw.unwrap_or_default();
    let mut object = Map::new();
    object.insert("apiVersion".into(), json!(api_version));
    object.insert("kind".into(), json!(kind));
    let complete = match (api_version.as_str(), kind.as_str()) {
        ("v1", "Secret") => {
            let secret = Secret::decode(raw.as_slice()).map_err(|e| broken("Secret", e))?;
            object.insert("metadata".into(), metadata(secret.metadata));
            let data: Map<String, Value> =
                secret.data.iter().map(|(k, v)| (k.clone(), json!(BASE64.encode(v)))).collect();
            insert_map(&mut object, "data", data);
            if let Some(type_) = secret.r#type {
                object.insert("type".into(), json!(type_));
            }
            if let Some(immutable) = secret.immutable {
                object.insert("immutable".into(), json!(immutable));
            }
            true
        }
        ("v1", "ConfigMap") => {
            let config_map = ConfigMap::decode(raw.as_slice()).map_err(|e| broken("ConfigMap", e))?;
            object.insert("metadata".into(), metadata(config_map.metadata));
            insert_map(&mut object, "data", config_map.data.into_iter().map(|(k, v)| (k, json!(v))).collect());
            let binary = config_map.binary_data.iter().map(|(k, v)| (k.clone(), json!(BASE64.encode(v)))).collect();
            insert_map(&mut object, "binaryData", binary);
            if let Some(immutable) = config_map.immutable {
                object.insert("immutable".into(), json!(immutable));
            }
            true
        }
        _ => {
            let only = Metadata::decode(raw.as_slice()).map_err(|e| broken("metadata", e))?;
            object.insert("metadata".into(), metadata(only.metadata));
            false
        }
    };
    Ok(Decoded { object: Value::Object(object), complete })
}

fn insert_map(object: &mut Map<String, Value>, field: &str, map: Map<String, Value>) {
    if !map.is_empty() {
        object.insert(field.into(), Value::Object(map));
    }
}

/// The metadata a new object keeps: names, labels, annotations, finalizers.
fn metadata(meta: Option<ObjectMeta>) -> Value {
    let meta = meta.unwrap_or_default();
    let mut out = Map::new();
    let strings = [("name", meta.name), ("generateName", meta.generate_name), ("namespace", meta.namespace)];
    for (field, value) in strings {
        if let Some(value) = value.filter(|v| !v.is_empty()) {
            out.insert(field.into(), json!(value));
        }
    }
    insert_map(&mut out, "labels", meta.labels.into_iter().map(|(k, v)| (k, json!(v))).collect());
    insert_map(&mut out, "annotations", meta.annotations.into_iter().map(|(k, v)| (k, json!(v))).collect());
    if !meta.finalizers.is_empty() {
        out.insert("finalizers".into(), json!(meta.finalizers));
    }
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> EncryptionKeys {
        let bundle = format!(
            "secrets:\n  secretboxencryptionsecret: {}\n  aescbcencryptionsecret: {}\n",
            BASE64.encode([7u8; 32]),
            BASE64.encode([9u8; 32])
        );
        EncryptionKeys::from_secrets_bundle(&bundle).unwrap()
    }

    #[test]
    fn values_that_are_not_encrypted_pass_and_unknown_keys_or_providers_say_why() {
        assert_eq!(keys().open(b"k8s\0abc").unwrap(), None);
        let missing = keys().open(b"k8s:enc:secretbox:v1:key9:xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx").unwrap_err();
        assert!(missing.contains("the secretbox key \"key9\", which was not given"), "{missing}");
        let kms = keys().open(b"k8s:enc:kms:v2:kms-1:abc").unwrap_err();
        assert!(kms.contains("by the kms provider"), "{kms}");
        let wrong = keys().open(&[b"k8s:enc:secretbox:v1:key2:".as_slice(), &[0u8; 60]].concat()).unwrap_err();
        assert!(wrong.contains("does not open with the secretbox key \"key2\""), "{wrong}");
        let short = keys().open(b"k8s:enc:aescbc:v1:key1").unwrap_err();
        assert!(short.contains("cut short"), "{short}");
        let none = EncryptionKeys::default().open(b"k8s:enc:aescbc:v1:key1:abc").unwrap_err();
        assert!(none.contains("no key was") && none.contains("secrets bundle"), "{none}");
        assert!(EncryptionKeys::from_secrets_bundle("secrets:\n  aescbcencryptionsecret: abc\n").is_err());
        assert!(EncryptionKeys::from_secrets_bundle("cluster: {}\n").unwrap().is_empty());
    }

    #[test]
    fn neither_protobuf_nor_json_is_refused() {
        let error = decode(b"\x01\x02garbage", &keys()).unwrap_err();
        assert!(error.contains("neither"), "{error}");
        let error = decode(b"k8s\0\xff\xff\xff", &keys()).unwrap_err();
        assert!(error.contains("envelope cannot be decoded"), "{error}");
    }

    #[test]
    fn a_custom_resource_loses_what_the_cluster_assigned() {
        let stored = br#"{"apiVersion":"example.com/v1","kind":"Widget","metadata":{"name":"w","namespace":"n","uid":"u","generation":2,"creationTimestamp":"2026-01-01T00:00:00Z","managedFields":[],"labels":{"a":"b"}},"spec":{"size":3}}"#;
        let decoded = decode(stored, &keys()).unwrap();
        let expected = json!({"apiVersion":"example.com/v1","kind":"Widget",
            "metadata":{"name":"w","namespace":"n","labels":{"a":"b"}},"spec":{"size":3}});
        assert_eq!(decoded, Decoded { object: expected, complete: true });
    }
}
