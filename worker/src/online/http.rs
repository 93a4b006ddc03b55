//! `/healthz` (process alive), `/readyz` (serving), `/metrics` for the online components.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::http::{header, StatusCode};
use axum::routing::get;
use axum::Router;

/// Renders the current metrics text.
pub type Render = Arc<dyn Fn() -> String + Send + Sync>;

pub async fn serve(listener: tokio::net::TcpListener, ready: Arc<AtomicBool>, metrics: Render) {
    serve_with(listener, ready, metrics, Router::new()).await
}

/// [`serve`] plus a component's own routes (the gateway's `/status`).
pub async fn serve_with(listener: tokio::net::TcpListener, ready: Arc<AtomicBool>, metrics: Render, extra: Router) {
    let app = extra
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(move || async move {
                if ready.load(Ordering::SeqCst) {
                    (StatusCode::OK, "ready\n")
                } else {
                    (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
                }
            }),
        )
        .route(
            "/metrics",
            get(move || async move {
                ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], metrics())
            }),
        );
    if let Err(e) = axum::serve(listener, app).await {
        tracing::error!(error = %e, "http server stopped");
    }
}
