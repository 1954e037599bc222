//! This operator's finalizer, for any of its resources: held while deleting an object must wait for
//! the operator to clean up after it.

use kube::api::{Patch, PatchParams};
use kube::{Api, Resource, ResourceExt};
use serde::de::DeserializeOwned;

use crate::Error;

/// The finalizer's name.
pub const FINALIZER: &str = "talos.alperen.cloud/snapshot-cleanup";

/// Whether `object` holds the finalizer.
pub fn held<K: Resource>(object: &K) -> bool {
    object.finalizers().iter().any(|f| f == FINALIZER)
}

/// Adds or removes the finalizer. The patch names the resourceVersion it read, so a concurrent change
/// makes it fail (and the reconcile retry) rather than drop another finalizer.
pub async fn set<K>(api: &Api<K>, object: &K, present: bool) -> Result<(), Error>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    if held(object) == present {
        return Ok(());
    }
    let mut finalizers = object.finalizers().to_vec();
    if present {
        finalizers.push(FINALIZER.to_owned());
    } else {
        finalizers.retain(|f| f != FINALIZER);
    }
    let patch = serde_json::json!({
        "metadata": {"finalizers": finalizers, "resourceVersion": object.resource_version()},
    });
    api.patch(&object.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await?;
    Ok(())
}
