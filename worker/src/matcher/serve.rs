//! The request path: read entries from label streams, answer them, acknowledge them.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use kim_api::{ErrorCode, MatchRequest, MatchResponse, GROUP};
use kim_index::vectors::similarity;
use kim_index::DecodeError;
use rayon::prelude::*;
use kim_redis::{Backoff, Conn};
use redis::streams::{StreamAutoClaimReply, StreamId, StreamReadOptions, StreamReadReply};

use super::{registry, Loaded, Matcher};

/// One stream entry of a label.
struct Entry {
    label: String,
    id: String,
    fields: HashMap<String, Vec<u8>>,
}

impl Entry {
    fn new(label: &str, s: StreamId) -> Entry {
        let fields = s
            .map
            .into_iter()
            .map(|(k, v)| {
                let bytes = match v {
                    redis::Value::BulkString(b) => b,
                    redis::Value::SimpleString(s) => s.into_bytes(),
                    other => format!("{other:?}").into_bytes(),
                };
                (k, bytes)
            })
            .collect();
        Entry { label: label.to_string(), id: s.id, fields }
    }

    /// Milliseconds part of the entry id: when the client added it.
    fn added_ms(&self) -> Option<u64> {
        self.id.split('-').next()?.parse().ok()
    }
}

/// Creates the label's consumer group (and stream) if missing.
pub async fn ensure_group(conn: &mut Conn, prefix: &str, label: &str) -> redis::RedisResult<()> {
    let key = kim_api::stream_key(prefix, label);
    match redis::cmd("XGROUP").arg("CREATE").arg(&key).arg(GROUP).arg("0").arg("MKSTREAM").query_async::<()>(conn).await {
        Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
        other => other,
    }
}

/// Reads new entries for every served label until shutdown; each batch is answered fully
/// before the next read, so a SIGTERM never abandons work it already took.
///
/// At start and after any Redis failure the loop first re-reads this consumer's own pending
/// entries (id `0`): a batch whose replies were lost with the connection is answered again
/// (clients drop duplicate replies by `rid`), and the label registry is rewritten at once
/// because a restarted Redis may have lost it.
pub async fn read_loop(m: Arc<Matcher>, mut reader: Conn, mut conn: Conn) {
    let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(1));
    let mut recovering = true;
    let mut failed = false;
    let mut after: HashMap<String, String> = HashMap::new();
    while !m.stopping() {
        let labels = m.label_names();
        if labels.is_empty() {
            m.pause(Duration::from_millis(20)).await;
            continue;
        }
        let keys: Vec<String> = labels.iter().map(|l| kim_api::stream_key(&m.args.prefix, l)).collect();
        // While recovering, each read starts after the last pending entry seen, so an entry
        // that cannot be answered is left to the claimer instead of being re-read forever.
        let ids: Vec<String> = keys.iter().map(|k| if recovering { after.get(k).cloned().unwrap_or_else(|| "0".into()) } else { ">".into() }).collect();
        let mut opts = StreamReadOptions::default().group(GROUP, &m.id).count(m.args.batch);
        if !recovering {
            opts = opts.block(m.args.block.as_millis() as usize);
        }
        let read = redis::AsyncCommands::xread_options(&mut reader, &keys, &ids, &opts);
        // The command is queued on the connection once polled; mark readiness just after.
        let reply: redis::RedisResult<StreamReadReply> = {
            tokio::pin!(read);
            match futures::poll!(read.as_mut()) {
                std::task::Poll::Ready(r) => r,
                std::task::Poll::Pending => {
                    m.reading.store(true, std::sync::atomic::Ordering::SeqCst);
                    read.await
                }
            }
        };
        m.reading.store(true, std::sync::atomic::Ordering::SeqCst);
        match reply {
            Ok(reply) => {
                backoff.reset();
                if failed {
                    failed = false;
                    tracing::info!("Redis reachable again; re-registering labels and re-reading own pending entries");
                    registry::register(&m, &mut conn).await;
                }
                if recovering {
                    for k in &reply.keys {
                        if let Some(last) = k.ids.last() {
                            after.insert(k.key.clone(), last.id.clone());
                        }
                    }
                }
                let entries: Vec<Entry> = reply
                    .keys
                    .into_iter()
                    .flat_map(|k| {
                        let label = k.key.strip_prefix(m.args.prefix.as_str()).unwrap_or(&k.key).to_string();
                        k.ids.into_iter().map(move |s| Entry::new(&label, s))
                    })
                    .collect();
                if entries.is_empty() {
                    recovering = false;
                    after.clear();
                } else if recovering {
                    tracing::info!(entries = entries.len(), "answering entries still pending with this consumer");
                }
                if !entries.is_empty() && !answer(&m, &mut conn, entries).await {
                    recovering = true;
                    after.clear();
                    failed = true;
                    m.pause(backoff.next_delay()).await;
                }
            }
            Err(e) if e.code() == Some("NOGROUP") => {
                tracing::warn!("consumer group missing (stream deleted or Redis restarted empty); recreating");
                for l in &labels {
                    ensure_group(&mut conn, &m.args.prefix, l).await.ok();
                }
                failed = true;
            }
            Err(e) => {
                let retry_in = backoff.next_delay();
                tracing::warn!(error = %e, ?retry_in, "stream read failed");
                recovering = true;
                after.clear();
                failed = true;
                m.pause(retry_in).await;
            }
        }
    }
}

/// Takes over entries other consumers left pending longer than `claim_idle` (dead matchers).
pub async fn claim_loop(m: Arc<Matcher>, mut conn: Conn) {
    while !m.pause(m.args.claim_interval).await {
        for label in m.label_names() {
            let key = kim_api::stream_key(&m.args.prefix, &label);
            let mut cursor = "0-0".to_string();
            loop {
                let reply: redis::RedisResult<StreamAutoClaimReply> = redis::cmd("XAUTOCLAIM")
                    .arg(&key)
                    .arg(GROUP)
                    .arg(&m.id)
                    .arg(m.args.claim_idle.as_millis() as u64)
                    .arg(&cursor)
                    .arg("COUNT")
                    .arg(m.args.batch)
                    .query_async(&mut conn)
                    .await;
                let reply = match reply {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::debug!(label, error = %e, "autoclaim failed");
                        break;
                    }
                };
                if !reply.claimed.is_empty() {
                    tracing::info!(label, entries = reply.claimed.len(), "claimed entries abandoned by another consumer");
                    let entries = reply.claimed.into_iter().map(|s| Entry::new(&label, s)).collect();
                    if !answer(&m, &mut conn, entries).await {
                        break;
                    }
                }
                if reply.next_stream_id == "0-0" || m.stopping() {
                    break;
                }
                cursor = reply.next_stream_id;
            }
        }
    }
}

/// What to do with one entry after parsing.
enum Work {
    Reply(Option<String>, MatchResponse),
    Search(MatchRequest, Arc<Loaded>),
}

fn triage(m: &Matcher, e: &Entry, now_ms: u64) -> Work {
    let req = match MatchRequest::parse(&e.fields) {
        Ok(r) => r,
        Err(rej) => {
            if rej.response_channel.is_none() {
                tracing::warn!(label = %e.label, entry = %e.id, reason = %rej.reason, "malformed entry with no response channel: acknowledged and dropped");
            }
            let resp = MatchResponse::failed(&rej.rid, &rej.luna_request_id, ErrorCode::ValidationFailed, rej.reason);
            return Work::Reply(rej.response_channel, resp);
        }
    };
    let fail = |code: ErrorCode, detail: String| Work::Reply(Some(req.response_channel.clone()), MatchResponse::failed(&req.rid, &req.luna_request_id, code, detail));
    if req.label != e.label {
        return fail(ErrorCode::ValidationFailed, format!("label field {:?} differs from stream label {:?}", req.label, e.label));
    }
    if req.deadline.is_some_and(|d| d <= now_ms) {
        return fail(ErrorCode::Timeout, "deadline passed before the search started".into());
    }
    match m.served(&e.label) {
        Some(s) => Work::Search(req, s.current.load_full()),
        None => fail(ErrorCode::IndexNotFound, format!("this matcher does not serve label {:?}", e.label)),
    }
}

/// Decodes and searches one request; never panics.
pub fn search_one(req: &MatchRequest, loaded: &Loaded) -> MatchResponse {
    let spec = loaded.index.vectors.spec;
    let q = match spec.decode(&req.descriptor, req.version) {
        Ok(q) => q,
        Err(e @ DecodeError::VersionMismatch { .. }) => return MatchResponse::failed(&req.rid, &req.luna_request_id, ErrorCode::VersionMismatch, e.to_string()),
        Err(e) => return MatchResponse::failed(&req.rid, &req.luna_request_id, ErrorCode::DecodeFailed, e.to_string()),
    };
    let searched = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| loaded.index.search(&q, req.limit as usize, 0)));
    match searched {
        Ok(hits) => {
            let ids = &loaded.index.ids;
            let result = hits.iter().map(|h| (ids.get(h.row as usize).to_string(), similarity(spec.metric, h.distance))).collect();
            MatchResponse::ok(&req.rid, &req.luna_request_id, result)
        }
        Err(_) => MatchResponse::failed(&req.rid, &req.luna_request_id, ErrorCode::SearchFailed, "internal error during search".to_string()),
    }
}

/// A finished answer to entry number `entry` of the batch.
struct Reply {
    entry: usize,
    channel: Option<String>,
    resp: MatchResponse,
}

/// Answers a batch: searches in parallel, then one pipeline of PUBLISH + XACK. Entries without
/// an answer (their search task died) are not acknowledged, so the claimer retries them.
/// Returns false when the replies could not be delivered (the entries stay pending).
async fn answer(m: &Arc<Matcher>, conn: &mut Conn, entries: Vec<Entry>) -> bool {
    let now_ms = kim_api::unix_ms();
    m.metrics.batch(entries.len());
    let mut replies = Vec::with_capacity(entries.len());
    let mut searches = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        match triage(m, e, now_ms) {
            Work::Reply(channel, resp) => replies.push(Reply { entry: i, channel, resp }),
            Work::Search(req, loaded) => searches.push((i, req, loaded)),
        }
    }
    if !searches.is_empty() {
        let done = tokio::task::spawn_blocking(move || {
            searches
                .into_par_iter()
                .map(|(entry, req, loaded)| Reply { entry, resp: search_one(&req, &loaded), channel: Some(req.response_channel) })
                .collect::<Vec<_>>()
        })
        .await;
        match done {
            Ok(mut r) => replies.append(&mut r),
            Err(e) => tracing::error!(error = %e, "search task failed; its entries stay pending for a retry"),
        }
    }
    let mut pipe = redis::pipe();
    let mut acks: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for r in &replies {
        if let Some(ch) = &r.channel {
            pipe.cmd("PUBLISH").arg(ch).arg(r.resp.to_json()).ignore();
        }
        let e = &entries[r.entry];
        acks.entry(e.label.as_str()).or_default().push(e.id.as_str());
    }
    for (label, ids) in &acks {
        pipe.cmd("XACK").arg(kim_api::stream_key(&m.args.prefix, label)).arg(GROUP).arg(ids).ignore();
    }
    if let Err(e) = pipe.query_async::<()>(conn).await {
        tracing::warn!(error = %e, entries = entries.len(), "cannot deliver replies; entries stay pending and will be retried");
        return false;
    }
    let now = kim_api::unix_ms();
    for r in &replies {
        let e = &entries[r.entry];
        let waited = e.added_ms().map(|t| now.saturating_sub(t) as f64 / 1000.0);
        m.metrics.request(&e.label, r.resp.status_code, waited);
        match &r.resp.error {
            None => tracing::debug!(rid = %r.resp.rid, luna_request_id = %r.resp.luna_request_id, label = %e.label, hits = r.resp.result.len(), "matched"),
            Some(err) => tracing::info!(rid = %r.resp.rid, luna_request_id = %r.resp.luna_request_id, label = %e.label, error_code = err.error_code, detail = %err.detail, "request failed"),
        }
    }
    true
}
