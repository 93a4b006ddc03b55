//! The backlog of every served label's consumer group (this matcher's: `kim-matchers`, or its
//! shard's), exported as metrics
//! (`kim_matcher_stream_lag`, `kim_matcher_stream_pending`) for dashboards and autoscalers.

use std::sync::Arc;
use std::time::Duration;

use kim_redis::Conn;

use super::Matcher;

/// How often the group is read.
const EVERY: Duration = Duration::from_secs(5);

/// Reads each served label's group every few seconds until shutdown; a failed reading keeps
/// the last figures (the other tasks report Redis trouble).
pub async fn watch(m: Arc<Matcher>, mut conn: Conn) {
    loop {
        for label in m.label_names() {
            let stream = kim_api::stream_key(&m.args.prefix, &label);
            match kim_redis::backlog(&mut conn, &stream, &m.group).await {
                Ok(b) => m.while_served(&label, || m.metrics.set_backlog(&label, b.lag, b.pending)),
                Err(e) => tracing::debug!(label = %label, error = %e, "reading the group's backlog"),
            }
        }
        if m.pause(EVERY).await {
            return;
        }
    }
}
