//! Label registry: one TTL key per served label, `matching_label__<label>__<matcher id>`,
//! whose value describes what is served. Clients list labels from these keys. The same value
//! goes into the label's served hash (`kim_api::served_key`), where the operator reads every
//! matcher of a label at once.

use std::sync::Arc;

use kim_api::LabelInfo;
use kim_redis::Conn;

use super::Matcher;

/// Refreshes the keys every third of their TTL until shutdown.
pub async fn heartbeat(m: Arc<Matcher>, mut conn: Conn) {
    loop {
        register(&m, &mut conn).await;
        if m.pause(m.args.label_ttl / 3).await {
            return;
        }
    }
}

/// Writes (or refreshes) the keys of every served label.
pub async fn register(m: &Matcher, conn: &mut Conn) {
    let ttl_ms = m.args.label_ttl.as_millis() as u64;
    let mut pipe = redis::pipe();
    for label in m.label_names() {
        let Some(s) = m.served(&label) else { continue };
        let cur = s.current.load();
        let d = &cur.manifest.descriptor;
        let info = LabelInfo {
            version: d.version,
            dimensions: d.dimensions,
            encoding: d.encoding.to_string(),
            metric: d.metric.to_string(),
            vectors: cur.tail.live(&cur.index),
            snapshot: cur.manifest.id.clone(),
            rejected: s.rejected(),
            deltas: cur.tail.deltas(),
            tail: cur.tail.rows(),
            tombstones: cur.tail.tombstones(),
            shard: m.args.shard.sharded().then_some(m.args.shard.shard),
            shards: m.args.shard.sharded().then_some(m.args.shard.shards),
        };
        let key = kim_api::registry_key(&m.args.prefix, &label, &m.id);
        pipe.cmd("SET").arg(key).arg(serde_json::to_string(&info).unwrap()).arg("PX").arg(ttl_ms).ignore();
        let served = kim_api::served_key(&m.args.prefix, &label);
        let entry = kim_api::Served { info, until: kim_api::unix_ms() + ttl_ms };
        pipe.cmd("HSET").arg(&served).arg(&m.id).arg(serde_json::to_string(&entry).unwrap()).ignore();
        pipe.cmd("PEXPIRE").arg(&served).arg(ttl_ms).ignore();
    }
    if let Err(e) = pipe.query_async::<()>(conn).await {
        tracing::warn!(error = %e, "cannot refresh label registry");
    }
}

/// Removes this matcher's keys so clients stop routing to it at once.
pub async fn unregister(m: &Matcher, mut conn: Conn) {
    unregister_labels(m, &mut conn, &m.label_names()).await;
}

/// Removes this matcher's registry keys and served-hash entries of `labels`, in one round trip.
pub async fn unregister_labels(m: &Matcher, conn: &mut Conn, labels: &[String]) {
    if labels.is_empty() {
        return;
    }
    let keys: Vec<String> = labels.iter().map(|l| kim_api::registry_key(&m.args.prefix, l, &m.id)).collect();
    let mut pipe = redis::pipe();
    pipe.cmd("DEL").arg(&keys).ignore();
    for l in labels {
        pipe.cmd("HDEL").arg(kim_api::served_key(&m.args.prefix, l)).arg(&m.id).ignore();
    }
    if let Err(e) = pipe.query_async::<()>(conn).await {
        tracing::warn!(error = %e, "cannot remove label registry keys");
    }
}
