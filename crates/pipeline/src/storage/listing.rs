//! The unfinished multipart uploads under a prefix: S3's ListMultipartUploads and the same call of
//! GCS's XML API, which object_store does not offer. Sent with a client built from the storage
//! handle's own options and signed with its own credentials (SigV4 through object_store's
//! `AwsAuthorizer`; GCS's bearer token), so recovery can find an upload a crashed attempt started
//! but never recorded.

use std::fmt;

use object_store::ClientOptions;
use object_store::aws::{AwsAuthorizer, AwsCredentialProvider};
use object_store::client::{HttpClient, HttpConnector as _, HttpRequestBody, ReqwestConnector};
use object_store::gcp::GcpCredentialProvider;

use super::check::xml_tag;

/// How a store's unfinished uploads are listed.
pub(crate) enum Lister {
    S3 { credentials: AwsCredentialProvider, region: String, client: HttpClient, base: String },
    Gcs { credentials: GcpCredentialProvider, client: HttpClient, base: String },
}

impl fmt::Debug for Lister {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Lister { .. }")
    }
}

/// Ends of pages, as a request's query: `key-marker` and `upload-id-marker`.
type Marker = Option<(String, String)>;

impl Lister {
    /// `base` is the bucket's URL (`https://host/bucket`, or S3's virtual-hosted one).
    pub(crate) fn s3(
        credentials: AwsCredentialProvider,
        region: &str,
        options: &ClientOptions,
        base: String,
    ) -> object_store::Result<Self> {
        let client = ReqwestConnector::default().connect(options)?;
        Ok(Lister::S3 { credentials, region: region.to_owned(), client, base })
    }

    pub(crate) fn gcs(
        credentials: GcpCredentialProvider,
        options: &ClientOptions,
        base: String,
    ) -> object_store::Result<Self> {
        Ok(Lister::Gcs { credentials, client: ReqwestConnector::default().connect(options)?, base })
    }

    /// (key, upload ID) of every unfinished upload whose key starts with `prefix`.
    pub(crate) async fn list(&self, prefix: &str) -> object_store::Result<Vec<(String, String)>> {
        let mut found = Vec::new();
        let mut marker: Marker = None;
        loop {
            let mut query = format!("uploads&prefix={}", encode(prefix));
            if let Some((key, id)) = &marker {
                query.push_str(&format!("&key-marker={}&upload-id-marker={}", encode(key), encode(id)));
            }
            let page = self.page(&query).await?;
            for upload in page.split("<Upload>").skip(1) {
                if let (Some(key), Some(id)) = (xml_tag(upload, "Key"), xml_tag(upload, "UploadId")) {
                    found.push((unescape(&key), id));
                }
            }
            let next = (xml_tag(&page, "IsTruncated").as_deref() == Some("true"))
                .then(|| Some((unescape(&xml_tag(&page, "NextKeyMarker")?), xml_tag(&page, "NextUploadIdMarker")?)))
                .flatten();
            if next.is_none() || next == marker {
                return Ok(found);
            }
            marker = next;
        }
    }

    /// One signed `GET <bucket>?<query>`: its body, or the store's error (its XML body kept, so
    /// that the code is named as for any other request).
    async fn page(&self, query: &str) -> object_store::Result<String> {
        let (client, base, store) = match self {
            Lister::S3 { client, base, .. } => (client, base, "S3"),
            Lister::Gcs { client, base, .. } => (client, base, "GCS"),
        };
        let generic = |source: String| object_store::Error::Generic { store, source: source.into() };
        let mut request = http::Request::builder()
            .method(http::Method::GET)
            .uri(format!("{base}?{query}"))
            .body(HttpRequestBody::empty())
            .map_err(|e| generic(e.to_string()))?;
        match self {
            Lister::S3 { credentials, region, .. } => {
                let credential = credentials.get_credential().await?;
                AwsAuthorizer::new(&credential, "s3", region).try_authorize(&mut request, None)?;
            }
            Lister::Gcs { credentials, .. } => {
                let bearer = format!("Bearer {}", credentials.get_credential().await?.bearer);
                let value = http::HeaderValue::try_from(bearer).map_err(|e| generic(e.to_string()))?;
                request.headers_mut().insert(http::header::AUTHORIZATION, value);
            }
        }
        let response = client.execute(request).await.map_err(|e| generic(e.to_string()))?;
        let status = response.status();
        let body = response.into_body().bytes().await.map_err(|e| generic(e.to_string()))?;
        let body = String::from_utf8_lossy(&body).into_owned();
        if !status.is_success() {
            return Err(generic(format!("Client error with status {status}: {body}")));
        }
        Ok(body)
    }
}

/// RFC 3986 percent-encoding of all but the unreserved characters, as SigV4 wants a query value.
fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            b => format!("%{b:02X}"),
        })
        .collect()
}

fn unescape(text: &str) -> String {
    text.replace("&quot;", "\"").replace("&apos;", "'").replace("&gt;", ">").replace("&lt;", "<").replace("&amp;", "&")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_are_percent_encoded_as_sigv4_wants() {
        assert_eq!(
            encode("talos-operator-etcd-backups/cp/etcd-snapshot-x.db"),
            "talos-operator-etcd-backups%2Fcp%2Fetcd-snapshot-x.db"
        );
        assert_eq!(encode("a b+c~"), "a%20b%2Bc~");
        assert_eq!(unescape("a&amp;b&lt;"), "a&b<");
    }
}
