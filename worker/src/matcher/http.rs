//! `/healthz` (process alive), `/readyz` (labels loaded, not shutting down, with what each
//! label serves), `/metrics`.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::Matcher;

pub async fn serve(m: Arc<Matcher>, listener: tokio::net::TcpListener) {
    let r = m.clone();
    let app = kim_runtime::probes(Arc::new(move || ready(&r)), Arc::new(move || m.metrics.encode()));
    kim_runtime::serve_http(listener, app).await
}

/// One line naming the labels, then per label its snapshot, deltas, tail and live vectors, and
/// a line for a CURRENT that failed verification. None while loading or stopping.
fn ready(m: &Matcher) -> Option<String> {
    if !(m.ready.load(Ordering::SeqCst) && m.reading.load(Ordering::SeqCst) && !m.stopping()) {
        return None;
    }
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
    Some(body)
}
