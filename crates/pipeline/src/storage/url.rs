//! A bucket or container named as a URL, in object_store's conventions: `s3://bucket/key`,
//! `az://container/key`, `gs://bucket/key`. object_store's own parser (`ObjectStoreScheme::parse`)
//! says which backend a URL names and what its path is; this module says which of those this tool
//! takes, and where each backend's bucket is in the URL.

use object_store::ObjectStoreScheme;

/// The backend a URL names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheme {
    S3,
    Azure,
    Gcs,
}

/// A bucket or container as a URL, and the key after it, if any.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectUrl {
    pub scheme: Scheme,
    /// What the URL wrote for the scheme (`s3`, `s3a`, `az`, `azure`, `gs`), to show it back.
    pub written: String,
    pub container: String,
    pub key: Option<String>,
}

impl ObjectUrl {
    /// The URL in `text`, or None when `text` is no URL (a bucket name, or a key).
    pub fn parse(text: &str) -> Result<Option<Self>, String> {
        if !text.contains("://") {
            return Ok(None);
        }
        let url = url::Url::parse(text).map_err(|e| format!("{text:?} is not a URL: {e}"))?;
        let refused = || format!("{text}: give a bucket or container as s3://bucket, az://container or gs://bucket");
        let (known, path) = ObjectStoreScheme::parse(&url).map_err(|_| refused())?;
        // The forms whose host is the bucket; object_store's https and abfs forms name an account there.
        let scheme = match (known, url.scheme()) {
            (ObjectStoreScheme::AmazonS3, "s3" | "s3a") => Scheme::S3,
            (ObjectStoreScheme::MicrosoftAzure, "az" | "azure") => Scheme::Azure,
            (ObjectStoreScheme::GoogleCloudStorage, "gs") => Scheme::Gcs,
            _ => return Err(refused()),
        };
        let container = url.host_str().ok_or_else(refused)?.to_owned();
        let key = Some(path.to_string()).filter(|key| !key.is_empty());
        Ok(Some(ObjectUrl { scheme, written: url.scheme().to_owned(), container, key }))
    }

    /// `s3://bucket`: the bucket or container as the URL named it.
    pub fn container_url(&self) -> String {
        format!("{}://{}", self.written, self.container)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_their_backend_bucket_and_key() {
        let url = ObjectUrl::parse("s3://my-etcd-backups/talos-operator-etcd-backups/cp/etcd-snapshot.db").unwrap();
        let url = url.unwrap();
        assert_eq!((url.scheme, url.container.as_str()), (Scheme::S3, "my-etcd-backups"));
        assert_eq!(url.key.as_deref(), Some("talos-operator-etcd-backups/cp/etcd-snapshot.db"));
        let url = ObjectUrl::parse("az://backups").unwrap().unwrap();
        assert_eq!((url.scheme, url.container_url(), url.key), (Scheme::Azure, "az://backups".to_owned(), None));
        assert_eq!(ObjectUrl::parse("gs://b/").unwrap().unwrap().key, None);
        assert_eq!(ObjectUrl::parse("s3a://b/k").unwrap().unwrap().scheme, Scheme::S3);
        assert_eq!(ObjectUrl::parse("my-etcd-backups").unwrap(), None);
        for refused in ["ftp://b/k", "file:///tmp/x", "https://example.com/b", "abfs://c@a.dfs.core.windows.net/k"] {
            let error = ObjectUrl::parse(refused).unwrap_err();
            assert!(error.contains("s3://bucket, az://container or gs://bucket"), "{refused}: {error}");
        }
    }
}
