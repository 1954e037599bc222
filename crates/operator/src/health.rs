//! `/healthz` (the process serves), `/readyz` (the controller reached the API server and its CRD) and
//! `/metrics` (Prometheus, OpenMetrics text).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use http::{Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};

use crate::metrics::Metrics;

type Body = http_body_util::Full<Bytes>;

pub async fn serve(addr: SocketAddr, ready: Arc<AtomicBool>, metrics: Arc<Metrics>) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, "health and metrics endpoints listening");
    loop {
        let (socket, _) = listener.accept().await?;
        let (ready, metrics) = (ready.clone(), metrics.clone());
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request: http::Request<hyper::body::Incoming>| {
                let response = if request.uri().path() == "/metrics" {
                    let mut response = Response::new(Body::from(metrics.encode()));
                    response.headers_mut().insert(
                        http::header::CONTENT_TYPE,
                        http::HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
                    );
                    response
                } else {
                    answer(request.uri().path(), ready.load(Ordering::SeqCst))
                };
                async move { Ok::<_, std::convert::Infallible>(response) }
            });
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            let _ = builder.serve_connection(TokioIo::new(socket), service).await;
        });
    }
}

fn answer(path: &str, ready: bool) -> Response<Body> {
    let (status, text) = match path {
        "/healthz" | "/livez" => (StatusCode::OK, "ok"),
        "/readyz" if ready => (StatusCode::OK, "ok"),
        "/readyz" => (StatusCode::SERVICE_UNAVAILABLE, "not ready"),
        _ => (StatusCode::NOT_FOUND, "not found"),
    };
    let mut response = Response::new(Body::from(text));
    *response.status_mut() = status;
    response
}
