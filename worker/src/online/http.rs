//! `/healthz` (process alive), `/readyz` (serving), `/metrics` for the online components.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::Router;

/// Serves the probes with readiness from `ready`, plus a component's own routes (the
/// gateway's `/status`).
pub async fn serve(
    listener: tokio::net::TcpListener,
    ready: Arc<AtomicBool>,
    metrics: kim_runtime::Metrics,
    extra: Router,
) {
    let ready: kim_runtime::Ready = Arc::new(move || ready.load(Ordering::SeqCst).then(|| "ready\n".to_string()));
    kim_runtime::serve_http(listener, extra.merge(kim_runtime::probes(ready, metrics))).await
}
