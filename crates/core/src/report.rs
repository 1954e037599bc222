//! What is inside a backup: its database read offline ([`crate::etcd_db`]) and counted as Kubernetes
//! sees it. kube-apiserver stores an object at `/registry/<resource>/<namespace>/<name>` (cluster
//! scoped: `/registry/<resource>/<name>`), a resource of another group at
//! `/registry/<group>/<resource>/…` (k8s.io/apiserver storage: `ResourcePrefix`); a few core
//! resources keep older prefixes (`services/specs`, `services/endpoints`, `minions`).

use std::collections::BTreeMap;

use crate::etcd_db::Contents;

/// A backup's contents, counted.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContentReport {
    /// The cluster's revision when the snapshot was taken.
    pub revision: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compacted_revision: Option<i64>,
    /// Live keys, and the bytes of their values.
    pub keys: u64,
    pub bytes: u64,
    /// The database file's size (live data plus free pages and history).
    pub db_size: u64,
    /// Kubernetes objects, of every resource.
    pub objects: u64,
    /// By resource (`configmaps`, `widgets.example.com`), most objects first.
    pub resources: Vec<ResourceCount>,
}

/// The objects of one resource.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ResourceCount {
    pub resource: String,
    pub objects: u64,
    pub bytes: u64,
    /// Objects by namespace; cluster-scoped ones under "".
    pub namespaces: BTreeMap<String, u64>,
}

/// Where kube-apiserver keeps one object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectKey {
    /// `configmaps`, or `<resource>.<group>` for another group than the core and the legacy ones.
    pub resource: String,
    /// Empty for a cluster-scoped object.
    pub namespace: String,
    pub name: String,
}

impl ObjectKey {
    /// The object `key` names, when it is a key kube-apiserver writes for one.
    pub fn parse(key: &[u8]) -> Option<Self> {
        let key = std::str::from_utf8(key).ok()?.strip_prefix("/registry/")?;
        let segments: Vec<&str> = key.split('/').collect();
        let (resource, rest) = match segments.as_slice() {
            ["services", "specs", rest @ ..] => ("services".to_owned(), rest),
            ["services", "endpoints", rest @ ..] => ("endpoints".to_owned(), rest),
            ["minions", rest @ ..] => ("nodes".to_owned(), rest),
            [group, resource, rest @ ..] if group.contains('.') => (format!("{resource}.{group}"), rest),
            [resource, rest @ ..] => ((*resource).to_owned(), rest),
            [] => return None,
        };
        let (namespace, name) = match rest {
            [name] => (String::new(), (*name).to_owned()),
            [namespace, name] => ((*namespace).to_owned(), (*name).to_owned()),
            _ => return None,
        };
        (!name.is_empty()).then_some(ObjectKey { resource, namespace, name })
    }
}

impl ContentReport {
    /// The report of what `contents` holds.
    pub fn of(contents: &Contents) -> Self {
        let mut report = ContentReport {
            revision: contents.revision,
            compacted_revision: contents.compacted,
            keys: contents.keys.len() as u64,
            db_size: contents.db_size,
            ..Default::default()
        };
        let mut resources: BTreeMap<String, ResourceCount> = BTreeMap::new();
        for (key, latest) in &contents.keys {
            report.bytes += latest.value_size;
            let Some(object) = ObjectKey::parse(key) else {
                continue;
            };
            report.objects += 1;
            let count = resources.entry(object.resource.clone()).or_default();
            count.resource = object.resource;
            count.objects += 1;
            count.bytes += latest.value_size;
            *count.namespaces.entry(object.namespace).or_default() += 1;
        }
        report.resources = resources.into_values().collect();
        report.resources.sort_by(|a, b| b.objects.cmp(&a.objects).then_with(|| a.resource.cmp(&b.resource)));
        report
    }

    /// The objects of `resource` (in `namespace`, when given).
    pub fn count(&self, resource: &str, namespace: Option<&str>) -> u64 {
        let Some(count) = self.resources.iter().find(|r| r.resource == resource) else {
            return 0;
        };
        match namespace {
            Some(namespace) => count.namespaces.get(namespace).copied().unwrap_or(0),
            None => count.objects,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(key: &str) -> Option<(String, String, String)> {
        ObjectKey::parse(key.as_bytes()).map(|o| (o.resource, o.namespace, o.name))
    }

    fn object(resource: &str, namespace: &str, name: &str) -> Option<(String, String, String)> {
        Some((resource.to_owned(), namespace.to_owned(), name.to_owned()))
    }

    #[test]
    fn keys_name_their_resource_namespace_and_object() {
        assert_eq!(parsed("/registry/configmaps/default/cm-1"), object("configmaps", "default", "cm-1"));
        assert_eq!(parsed("/registry/namespaces/kube-system"), object("namespaces", "", "kube-system"));
        assert_eq!(parsed("/registry/services/specs/default/kubernetes"), object("services", "default", "kubernetes"));
        assert_eq!(
            parsed("/registry/services/endpoints/default/kubernetes"),
            object("endpoints", "default", "kubernetes")
        );
        assert_eq!(parsed("/registry/minions/cp-1"), object("nodes", "", "cp-1"));
        assert_eq!(parsed("/registry/example.com/widgets/team-a/w-1"), object("widgets.example.com", "team-a", "w-1"));
        assert_eq!(
            parsed("/registry/apiextensions.k8s.io/customresourcedefinitions/widgets.example.com"),
            object("customresourcedefinitions.apiextensions.k8s.io", "", "widgets.example.com")
        );
        for other in ["compact_rev_key", "/registry/", "/registry/masterleases/a/b/c", "/other/x"] {
            assert_eq!(parsed(other), None, "{other}");
        }
    }
}
