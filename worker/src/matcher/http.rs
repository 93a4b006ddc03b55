//! `/healthz` (process alive), `/readyz` (labels loaded, not shutting down), `/metrics`.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

use super::Matcher;

pub async fn serve(m: Arc<Matcher>, listener: tokio::net::TcpListener) {
    let app = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready))
        .route("/metrics", get(metrics))
        .with_state(m);
    if let Err(e) = axum::serve(listener, app).await {
        tracing::error!(error = %e, "http server stopped");
    }
}

async fn ready(State(m): State<Arc<Matcher>>) -> impl IntoResponse {
    if m.ready.load(Ordering::SeqCst) && m.reading.load(Ordering::SeqCst) && !m.stopping() {
        let mut body = format!("ready: {}\n", m.label_names().join(","));
        for s in m.label_names().iter().filter_map(|l| m.served(l)) {
            let l = s.current.load();
            let t = &l.tail;
            body += &format!(
                "{} snapshot={} deltas={} tail={} tombstones={} vectors={}\n",
                s.label,
                l.manifest.id,
                t.deltas(),
                t.rows(),
                t.tombstones(),
                t.live(&l.index)
            );
            if let Some(bad) = s.rejected() {
                body += &format!(
                    "{}: CURRENT names {bad}, which failed verification (26308); serving {}\n",
                    s.label, l.manifest.id
                );
            }
        }
        (StatusCode::OK, body)
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n".to_string())
    }
}

async fn metrics(State(m): State<Arc<Matcher>>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], m.metrics.encode())
}
