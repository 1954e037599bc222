//! `Content-MD5` on every PutObject and UploadPart, for `checksum: MD5`. object_store sends none, so
//! this wraps its HTTP client and adds the header from the body, which it holds whole (a part, a
//! kit). It is added after signing, as SigV4 signs `host` and the `x-amz-*` headers, not this one.

use base64::Engine as _;
use http_body_util::BodyExt as _;
use md5::Digest as _;
use object_store::ClientOptions;
use object_store::client::{
    HttpClient, HttpConnector, HttpError, HttpRequest, HttpResponse, HttpService, ReqwestConnector,
};

/// Connects object_store's usual client, wrapped to add `Content-MD5`.
#[derive(Debug, Default)]
pub(super) struct ContentMd5Connector;

impl HttpConnector for ContentMd5Connector {
    fn connect(&self, options: &ClientOptions) -> object_store::Result<HttpClient> {
        Ok(HttpClient::new(ContentMd5 { inner: ReqwestConnector::default().connect(options)? }))
    }
}

#[derive(Debug)]
struct ContentMd5 {
    inner: HttpClient,
}

#[async_trait::async_trait]
impl HttpService for ContentMd5 {
    async fn call(&self, mut request: HttpRequest) -> Result<HttpResponse, HttpError> {
        // A PUT with a body writes data (PutObject, UploadPart); CopyObject's PUT has none.
        if request.method() == http::Method::PUT && request.body().content_length() > 0 {
            let digest = base64::engine::general_purpose::STANDARD.encode(md5_of(request.body().clone()).await?);
            let value = http::HeaderValue::try_from(digest).expect("base64 is a header value");
            request.headers_mut().insert("content-md5", value);
        }
        self.inner.execute(request).await
    }
}

/// The MD5 of a body, read frame by frame (its bytes are shared, not copied).
async fn md5_of(mut body: object_store::client::HttpRequestBody) -> Result<[u8; 16], HttpError> {
    let mut md5 = md5::Md5::new();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            md5.update(&data);
        }
    }
    Ok(md5.finalize().into())
}
