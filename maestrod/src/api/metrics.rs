//! A tower layer that counts every gRPC request by method and status and
//! times it to its response headers, and the `/metrics` HTTP endpoint.

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use futures::future::BoxFuture;
use tokio_util::sync::CancellationToken;
use tonic::body::Body;
use tracing::{info, warn};

use crate::autoloop::manager::LoopManager;
use crate::metrics::{MethodLabels, RpcLabels, StateLabels};
use crate::ssot::Ssot;

/// The layer (outermost, so refusals by authentication are counted too).
#[derive(Clone, Default)]
pub struct RpcMetricsLayer;

impl<S> tower_layer::Layer<S> for RpcMetricsLayer {
    type Service = Counted<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Counted { inner }
    }
}

#[derive(Clone)]
pub struct Counted<S> {
    inner: S,
}

/// The method as a label: only paths the server serves, so a client cannot
/// make up label values.
fn method_label(path: &str) -> String {
    let served = super::auth::rule_for(path).is_some()
        || ["/grpc.health.v1.Health/", "/grpc.reflection.v1.ServerReflection/", "/grpc.reflection.v1alpha."]
            .iter()
            .any(|prefix| path.starts_with(prefix));
    if served { path.to_string() } else { "other".to_string() }
}

/// The status of a response: in its headers when the call failed before any
/// message (trailers-only), else OK so far (a stream may still fail later).
fn code_of(response: &http::Response<Body>) -> String {
    let code = response
        .headers()
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok())
        .map_or(tonic::Code::Ok, tonic::Code::from_i32);
    maestro_shared::code_name(code).to_string()
}

impl<S> tower_service::Service<http::Request<Body>> for Counted<S>
where
    S: tower_service::Service<http::Request<Body>, Response = http::Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let method = method_label(request.uri().path());
        let started = Instant::now();
        Box::pin(async move {
            let result = inner.call(request).await;
            let metrics = crate::metrics::get();
            metrics
                .rpc_seconds
                .get_or_create(&MethodLabels { method: method.clone() })
                .observe(started.elapsed().as_secs_f64());
            let code = match &result {
                Ok(response) => code_of(response),
                Err(_) => "UNKNOWN".to_string(),
            };
            metrics.rpc_requests.get_or_create(&RpcLabels { method, code }).inc();
            result
        })
    }
}

/// Reads what is counted at scrape time: revision, watchers, loops by state.
async fn refresh(ssot: &Ssot, loops: &LoopManager) {
    let metrics = crate::metrics::get();
    let status = ssot.store().status();
    metrics.revision.set(i64::try_from(status.revision).unwrap_or(i64::MAX));
    metrics.watchers.set(i64::try_from(status.watchers).unwrap_or(i64::MAX));
    let mut counts = std::collections::BTreeMap::<String, i64>::new();
    let mut token = String::new();
    loop {
        match loops.list("", 1000, &token).await {
            Ok(page) => {
                for record in &page.items {
                    *counts.entry(record.value.state.as_str().to_string()).or_default() += 1;
                }
                if page.next_page_token.is_empty() {
                    break;
                }
                token = page.next_page_token;
            }
            Err(error) => {
                warn!(%error, "metrics: cannot count loops");
                return;
            }
        }
    }
    for state in crate::ssot::loops::LoopState::ALL {
        let count = counts.get(state.as_str()).copied().unwrap_or(0);
        metrics.loops.get_or_create(&StateLabels { state: state.as_str().to_string() }).set(count);
    }
}

/// Serves `GET /metrics` (OpenMetrics text, which Prometheus reads) on
/// `listener` until `cancel`.
pub async fn serve_metrics(
    listener: tokio::net::TcpListener,
    ssot: Arc<Ssot>,
    loops: Arc<LoopManager>,
    cancel: CancellationToken,
) {
    use axum::routing::get;
    let app = axum::Router::new().route(
        "/metrics",
        get(move || {
            let (ssot, loops) = (ssot.clone(), loops.clone());
            async move {
                refresh(&ssot, &loops).await;
                (
                    [(http::header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")],
                    crate::metrics::get().encode(),
                )
            }
        }),
    );
    if let Ok(addr) = listener.local_addr() {
        info!(%addr, "metrics served at /metrics");
    }
    if let Err(error) = axum::serve(listener, app).with_graceful_shutdown(cancel.cancelled_owned()).await {
        warn!(%error, "the metrics endpoint stopped");
    }
}
