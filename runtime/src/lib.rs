//! Process plumbing shared by kim's long-running services — the matcher, the online agents,
//! gateway and vectorizer, and the operator — so each behaves the same way to a cluster:
//! logs on stderr as text or JSON filtered by `KIM_LOG`, a clean stop on SIGTERM or SIGINT,
//! and `/healthz`, `/readyz` and `/metrics` on the HTTP port.

use std::sync::Arc;

use axum::http::{header, StatusCode};
use axum::routing::get;
use axum::Router;
use tracing_subscriber::EnvFilter;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One human-readable line per event.
    Text,
    /// One JSON object per event, fields flattened, for log collectors.
    Json,
}

/// Installs the global `tracing` subscriber on stderr. `KIM_LOG` (an `EnvFilter` directive
/// such as `info,kim_worker=debug`) overrides `default_filter`.
pub fn init_logging(format: LogFormat, default_filter: &str) {
    let filter = EnvFilter::try_from_env("KIM_LOG").unwrap_or_else(|_| EnvFilter::new(default_filter));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let b = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    match format {
        LogFormat::Text => b.init(),
        LogFormat::Json => b.json().flatten_event(true).init(),
    }
}

/// Resolves on SIGTERM (how Kubernetes stops a pod) or SIGINT (Ctrl-C). If SIGTERM cannot be
/// watched, says so and waits for Ctrl-C alone rather than failing the process.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        },
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch SIGTERM; stopping on Ctrl-C only");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
    tracing::info!("shutdown requested");
}

/// The content type of Prometheus' OpenMetrics text, which `prometheus-client` encodes.
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Readiness: `Some(detail)` when ready (served with 200), `None` when not (503).
pub type Ready = Arc<dyn Fn() -> Option<String> + Send + Sync>;

/// The current metrics text.
pub type Metrics = Arc<dyn Fn() -> String + Send + Sync>;

/// `/healthz` (the process answers), `/readyz` (from `ready`) and `/metrics` (from `metrics`),
/// to be merged with a service's own routes.
pub fn probes(ready: Ready, metrics: Metrics) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(move || {
                let r = ready();
                async move {
                    match r {
                        Some(detail) => (StatusCode::OK, detail),
                        None => (StatusCode::SERVICE_UNAVAILABLE, "not ready\n".to_string()),
                    }
                }
            }),
        )
        .route(
            "/metrics",
            get(move || {
                let body = metrics();
                async move { ([(header::CONTENT_TYPE, OPENMETRICS)], body) }
            }),
        )
}

/// Serves `app` until the process ends; a failing listener is logged, not fatal.
pub async fn serve_http(listener: tokio::net::TcpListener, app: Router) {
    if let Err(e) = axum::serve(listener, app).await {
        tracing::error!(error = %e, "http server stopped");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    /// (status, lower-cased head, body) of a plain HTTP/1.0 GET, off the runtime's threads.
    async fn get(port: u16, path: &str) -> (u16, String, String) {
        let path = path.to_string();
        tokio::task::spawn_blocking(move || {
            use std::io::{Read, Write};
            let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
            write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
            let mut buf = String::new();
            s.read_to_string(&mut buf).unwrap();
            let (head, body) = buf.split_once("\r\n\r\n").unwrap();
            (head.split_whitespace().nth(1).unwrap().parse().unwrap(), head.to_lowercase(), body.to_string())
        })
        .await
        .unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn probes_answer_readiness_and_metrics_over_real_http() {
        let ready = Arc::new(AtomicBool::new(false));
        let r = ready.clone();
        let app = probes(
            Arc::new(move || r.load(Ordering::SeqCst).then(|| "ready: faces\n".to_string())),
            Arc::new(|| "# EOF\n".to_string()),
        )
        .route("/leader", axum::routing::get(|| async { "leader" }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(serve_http(listener, app));

        assert_eq!(get(port, "/healthz").await.0, 200);
        assert_eq!(get(port, "/readyz").await.0, 503);
        ready.store(true, Ordering::SeqCst);
        let (code, _, body) = get(port, "/readyz").await;
        assert_eq!((code, body.as_str()), (200, "ready: faces\n"));
        let (code, head, body) = get(port, "/metrics").await;
        assert_eq!((code, body.as_str()), (200, "# EOF\n"));
        assert!(head.contains("content-type: application/openmetrics-text"), "{head}");
        assert_eq!(get(port, "/leader").await.2, "leader");
        assert_eq!(get(port, "/nope").await.0, 404);
    }
}
