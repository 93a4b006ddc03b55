//! The request path: read entries from label streams, answer them, acknowledge them.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use kim_api::{ErrorCode, MatchError, MatchRequest, MatchResponse};
use kim_index::vectors::similarity;
use kim_index::{DecodeError, Hit, Metric};
use kim_redis::{Backoff, Conn};
use rayon::prelude::*;
use redis::streams::{StreamAutoClaimReply, StreamId, StreamReadOptions};
use redis::Value;

use super::shards::{self, Outcome, Req};
use super::{registry, Loaded, Matcher};

/// One stream entry of a label. The field names and values are moved out of the Redis reply,
/// not copied, and kept as a list (an entry has a handful of fields; no map per entry).
struct Entry {
    label: Arc<str>,
    id: String,
    fields: Vec<(Vec<u8>, Vec<u8>)>,
}

impl Entry {
    fn from_stream_id(label: &Arc<str>, s: StreamId) -> Entry {
        let fields = s.map.into_iter().map(|(k, v)| (k.into_bytes(), value_bytes(v))).collect();
        Entry { label: label.clone(), id: s.id, fields }
    }

    /// The value of field `name`; when a name repeats, the last one counts (as in a map
    /// built from the entry).
    fn field(&self, name: &str) -> Option<&[u8]> {
        self.fields.iter().rev().find(|(k, _)| k.as_slice() == name.as_bytes()).map(|(_, v)| v.as_slice())
    }

    /// Milliseconds part of the entry id: when the client added it.
    fn added_ms(&self) -> Option<u64> {
        self.id.split('-').next()?.parse().ok()
    }
}

/// The bytes of a field name or value as the reader keeps them.
fn value_bytes(v: Value) -> Vec<u8> {
    match v {
        Value::BulkString(b) => b,
        Value::SimpleString(s) => s.into_bytes(),
        other => format!("{other:?}").into_bytes(),
    }
}

fn reply_error(what: &str) -> redis::RedisError {
    redis::RedisError::from((redis::ErrorKind::TypeError, "unexpected XREADGROUP reply", what.to_string()))
}

/// Key/value pairs of a map-shaped reply: a RESP3 map, or a RESP2 array of alternating keys
/// and values; nil is empty.
fn pairs(v: Value) -> redis::RedisResult<Vec<(Value, Value)>> {
    match v {
        Value::Nil => Ok(Vec::new()),
        Value::Map(kv) => Ok(kv),
        Value::Array(items) => {
            if items.len() % 2 != 0 {
                return Err(reply_error("odd number of items in a key/value list"));
            }
            let mut out = Vec::with_capacity(items.len() / 2);
            let mut it = items.into_iter();
            while let (Some(k), Some(v)) = (it.next(), it.next()) {
                out.push((k, v));
            }
            Ok(out)
        }
        _ => Err(reply_error("expected a key/value list")),
    }
}

/// Items of an array-shaped reply (a RESP3 map counts as its pairs, one item each); nil is empty.
fn items(v: Value) -> redis::RedisResult<Vec<Value>> {
    match v {
        Value::Nil => Ok(Vec::new()),
        Value::Array(items) | Value::Set(items) => Ok(items),
        Value::Map(kv) => Ok(kv.into_iter().map(|kv| Value::Map(vec![kv])).collect()),
        _ => Err(reply_error("expected an array")),
    }
}

fn text(v: Value) -> redis::RedisResult<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b).map_err(|_| reply_error("stream key or entry id is not UTF-8")),
        Value::SimpleString(s) => Ok(s),
        _ => Err(reply_error("expected a stream key or entry id")),
    }
}

/// Entries of an `XREADGROUP` reply, per stream key in reply order, each `(key, entries)`.
/// The same shapes the `redis` crate's `StreamReadReply` accepts (RESP2 arrays, RESP3 maps, a
/// nil reply when the block timed out, nil fields for an entry deleted while pending), without
/// its per-entry `HashMap<String, Value>`.
/// Entries of one stream: (entry id, fields as (name, value) bytes).
type Entries = Vec<(String, Vec<(Vec<u8>, Vec<u8>)>)>;

fn parse_read_reply(v: Value) -> redis::RedisResult<Vec<(String, Entries)>> {
    let mut out = Vec::new();
    for stream in items(v)? {
        for (key, entries) in pairs(stream)? {
            let key = text(key)?;
            let mut list = Vec::new();
            for entry in items(entries)? {
                for (id, fields) in pairs(entry)? {
                    let fields = pairs(fields)?.into_iter().map(|(k, v)| (value_bytes(k), value_bytes(v))).collect();
                    list.push((text(id)?, fields));
                }
            }
            out.push((key, list));
        }
    }
    Ok(out)
}

/// Creates the matcher's consumer group on the label's stream (and the stream) if missing:
/// `kim-matchers` from the stream's start; a shard's group from the entries of the last
/// minute (`shards::GROUP_LOOKBACK_MS`), so shards starting one after another all see the
/// requests added meanwhile without re-reading old history.
pub async fn ensure_group(m: &Matcher, conn: &mut Conn, label: &str) -> redis::RedisResult<()> {
    let key = kim_api::stream_key(&m.args.prefix, label);
    let start = shards::group_start(m.args.shard.sharded());
    let mut create = redis::cmd("XGROUP");
    create.arg("CREATE").arg(&key).arg(&m.group).arg(start).arg("MKSTREAM");
    match create.query_async::<()>(conn).await {
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
            // Ready with no label to read (an empty pool): consuming all it serves, so /readyz
            // passes and the pool's Deployment can roll out before any label joins.
            if m.ready.load(std::sync::atomic::Ordering::SeqCst) {
                m.reading.store(true, std::sync::atomic::Ordering::SeqCst);
            }
            m.pause(Duration::from_millis(20)).await;
            continue;
        }
        let keys: Vec<String> = labels.iter().map(|l| kim_api::stream_key(&m.args.prefix, l)).collect();
        // While recovering, each read starts after the last pending entry seen, so an entry
        // that cannot be answered is left to the claimer instead of being re-read forever.
        let ids: Vec<String> = keys
            .iter()
            .map(|k| if recovering { after.get(k).cloned().unwrap_or_else(|| "0".into()) } else { ">".into() })
            .collect();
        let mut opts = StreamReadOptions::default().group(&m.group, &m.id).count(m.args.batch);
        if !recovering {
            opts = opts.block(m.args.block.as_millis() as usize);
        }
        let read = redis::AsyncCommands::xread_options::<_, _, Value>(&mut reader, &keys, &ids, &opts);
        // The command is queued on the connection once polled; mark readiness just after.
        let reply: redis::RedisResult<Value> = {
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
        match reply.and_then(parse_read_reply) {
            Ok(reply) => {
                backoff.reset();
                if failed {
                    failed = false;
                    tracing::info!("Redis reachable again; re-registering labels and re-reading own pending entries");
                    registry::register(&m, &mut conn).await;
                }
                if recovering {
                    for (key, ids) in &reply {
                        if let Some((last, _)) = ids.last() {
                            after.insert(key.clone(), last.clone());
                        }
                    }
                }
                let mut entries: Vec<Entry> = Vec::with_capacity(reply.iter().map(|(_, ids)| ids.len()).sum());
                for (key, ids) in reply {
                    let label: Arc<str> = key.strip_prefix(m.args.prefix.as_str()).unwrap_or(&key).into();
                    entries.extend(ids.into_iter().map(|(id, fields)| Entry { label: label.clone(), id, fields }));
                }
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
                    ensure_group(&m, &mut conn, l).await.ok();
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
                    .arg(&m.group)
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
                    tracing::info!(
                        label,
                        entries = reply.claimed.len(),
                        "claimed entries abandoned by another consumer"
                    );
                    let label: Arc<str> = label.as_str().into();
                    let entries = reply.claimed.into_iter().map(|s| Entry::from_stream_id(&label, s)).collect();
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

/// The snapshot each label of a batch is searched in, looked up once per label and batch.
#[derive(Default)]
struct BatchLabels(Vec<(Arc<str>, Option<Arc<Loaded>>)>);

impl BatchLabels {
    fn get(&mut self, m: &Matcher, label: &Arc<str>) -> Option<Arc<Loaded>> {
        if let Some((_, l)) = self.0.iter().find(|(name, _)| Arc::ptr_eq(name, label) || **name == **label) {
            return l.clone();
        }
        let l = m.served(label).map(|s| s.current.load_full());
        self.0.push((label.clone(), l.clone()));
        l
    }
}

fn triage(m: &Matcher, labels: &mut BatchLabels, e: &Entry, now_ms: u64) -> Work {
    let mut req = match MatchRequest::parse_with(|k| e.field(k)) {
        Ok(r) => r,
        Err(rej) => {
            if rej.response_channel.is_none() {
                tracing::warn!(label = %e.label, entry = %e.id, reason = %rej.reason, "malformed entry with no response channel: acknowledged and dropped");
            }
            let resp = MatchResponse::failed(&rej.rid, &rej.luna_request_id, ErrorCode::ValidationFailed, rej.reason);
            return Work::Reply(rej.response_channel, resp);
        }
    };
    let fail = |code: ErrorCode, detail: String| {
        Work::Reply(
            Some(req.response_channel.clone()),
            MatchResponse::failed(&req.rid, &req.luna_request_id, code, detail),
        )
    };
    if req.label != *e.label {
        return fail(
            ErrorCode::ValidationFailed,
            format!("label field {:?} differs from stream label {:?}", req.label, e.label),
        );
    }
    if m.args.shard.sharded() && req.deadline.is_none() {
        // Every shard must answer by then, or the reply is 26309.
        let added = e.added_ms().unwrap_or(now_ms);
        req.deadline = Some(added.saturating_add(m.args.shard_deadline.as_millis() as u64));
    }
    if req.deadline.is_some_and(|d| d <= now_ms) {
        return fail(ErrorCode::Timeout, "deadline passed before the search started".into());
    }
    match labels.get(m, &e.label) {
        Some(loaded) => Work::Search(req, loaded),
        None => fail(ErrorCode::IndexNotFound, format!("this matcher does not serve label {:?}", e.label)),
    }
}

/// Search hits as the reply's `result`: `[[id, similarity], ...]`, serialised straight from
/// the index (no `String` per id).
struct HitsJson<'a, F: Fn(u32) -> &'a str> {
    hits: &'a [Hit],
    id: F,
    metric: Metric,
}

impl<'a, F: Fn(u32) -> &'a str> serde::Serialize for HitsJson<'a, F> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.hits.iter().map(|h| ((self.id)(h.row), similarity(self.metric, h.distance))))
    }
}

/// A finished answer to entry number `entry` of the batch: the reply JSON and what the
/// metrics and logs need.
struct Reply {
    entry: usize,
    channel: Option<String>,
    json: Vec<u8>,
    status_code: u16,
    rid: String,
    luna_request_id: String,
    hits: usize,
    error: Option<MatchError>,
    /// Set when `json` is a shard's partial answer (`[[id, similarity], ...]`) of this request.
    partial: Option<Partial>,
}

/// What merging a shard's partial answer needs of its request.
struct Partial {
    limit: u32,
    threshold: Option<f64>,
    deadline: u64,
}

impl Reply {
    fn from_response(entry: usize, channel: Option<String>, resp: MatchResponse) -> Reply {
        let json = resp.to_json().into_bytes();
        Reply {
            entry,
            channel,
            json,
            status_code: resp.status_code,
            rid: resp.rid,
            luna_request_id: resp.luna_request_id,
            hits: resp.result.len(),
            error: resp.error,
            partial: None,
        }
    }
}

/// Decodes and searches one request and writes its reply (or, for a shard, its partial
/// answer); never panics.
fn search_reply(entry: usize, req: MatchRequest, loaded: &Loaded, sharded: bool) -> Reply {
    let spec = loaded.index.vectors.spec;
    let failed = |code: ErrorCode, detail: String| {
        Reply::from_response(
            entry,
            Some(req.response_channel.clone()),
            MatchResponse::failed(&req.rid, &req.luna_request_id, code, detail),
        )
    };
    let q = match spec.decode_request(&req.descriptor, req.version) {
        Ok(q) => q,
        Err(e @ DecodeError::VersionMismatch { .. }) => return failed(ErrorCode::VersionMismatch, e.to_string()),
        Err(DecodeError::VersionMissing) => return failed(ErrorCode::ValidationFailed, kim_api::VERSION_NEEDED.into()),
        Err(e) => return failed(ErrorCode::DecodeFailed, e.to_string()),
    };
    let (index, tail) = (&*loaded.index, &loaded.tail);
    let searched =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| tail.search(index, &q, req.limit as usize, 0)));
    let Ok(mut hits) = searched else {
        return failed(ErrorCode::SearchFailed, "internal error during search".to_string());
    };
    if let Some(t) = req.threshold {
        // Hits are sorted by similarity, most similar first: keep the prefix at or above it.
        let keep = hits.iter().take_while(|h| similarity(spec.metric, h.distance) >= t).count();
        hits.truncate(keep);
    }
    let mut json = Vec::with_capacity(128 + 40 * hits.len());
    let result = HitsJson { hits: &hits, id: |row| tail.id(index, row), metric: spec.metric };
    let partial = sharded.then(|| {
        serde_json::to_writer(&mut json, &result).expect("hits serialise");
        Partial { limit: req.limit, threshold: req.threshold, deadline: req.deadline.unwrap_or(0) }
    });
    if partial.is_none() {
        kim_api::write_response_json(
            &mut json,
            &req.rid,
            &req.luna_request_id,
            kim_api::STATUS_OK,
            Some(&result),
            None,
        );
    }
    Reply {
        entry,
        channel: Some(req.response_channel),
        json,
        status_code: kim_api::STATUS_OK,
        rid: req.rid,
        luna_request_id: req.luna_request_id,
        hits: hits.len(),
        error: None,
        partial,
    }
}

/// Searches on the rayon pool (the search threads) and hands the replies back; `None` when
/// the search task died, so its entries stay pending for a retry.
async fn search_batch(searches: Vec<(usize, MatchRequest, Arc<Loaded>)>, sharded: bool) -> Option<Vec<Reply>> {
    let (tx, rx) = futures::channel::oneshot::channel();
    rayon::spawn(move || {
        let done = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
            searches
                .into_par_iter()
                .map(|(entry, req, loaded)| search_reply(entry, req, &loaded, sharded))
                .collect::<Vec<_>>()
        }));
        tx.send(done).ok();
    });
    match rx.await {
        Ok(Ok(replies)) => Some(replies),
        Ok(Err(_)) | Err(_) => {
            tracing::error!("search task failed; its entries stay pending for a retry");
            None
        }
    }
}

/// Answers a batch: searches in parallel, then delivers the replies through the gate
/// (`shards::deliver`: one round trip that publishes and acknowledges; two for a shard's
/// partials). Entries without an answer (their search task died) are not acknowledged, so the
/// claimer retries them.
/// Returns false when the replies could not be delivered (the entries stay pending).
async fn answer(m: &Arc<Matcher>, conn: &mut Conn, entries: Vec<Entry>) -> bool {
    let now_ms = kim_api::unix_ms();
    m.metrics.batch(entries.len());
    let mut replies = Vec::with_capacity(entries.len());
    let mut searches = Vec::with_capacity(entries.len());
    let mut labels = BatchLabels::default();
    for (i, e) in entries.iter().enumerate() {
        match triage(m, &mut labels, e, now_ms) {
            Work::Reply(channel, resp) => replies.push(Reply::from_response(i, channel, resp)),
            Work::Search(req, loaded) => searches.push((i, req, loaded)),
        }
    }
    drop(labels);
    if !searches.is_empty() {
        if let Some(mut r) = search_batch(searches, m.args.shard.sharded()).await {
            replies.append(&mut r);
        }
    }
    let mut acks: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for r in &replies {
        let e = &entries[r.entry];
        acks.entry(&e.label).or_default().push(e.id.as_str());
    }
    let delivered = shards::deliver(m, &m.gate, conn, outcomes(&entries, &replies), &acks).await;
    if !delivered {
        return false;
    }
    let now = kim_api::unix_ms();
    // Counters once per (label, status) of the batch; latencies per request.
    let mut counts: HashMap<(&str, u16), u64> = HashMap::new();
    for r in &replies {
        let e = &entries[r.entry];
        let waited = e.added_ms().map(|t| now.saturating_sub(t) as f64 / 1000.0);
        m.metrics.latency(waited);
        *counts.entry((&e.label, r.status_code)).or_default() += 1;
        match &r.error {
            None => {
                tracing::debug!(rid = %r.rid, luna_request_id = %r.luna_request_id, label = %e.label, hits = r.hits, "matched")
            }
            Some(err) => {
                tracing::info!(rid = %r.rid, luna_request_id = %r.luna_request_id, label = %e.label, error_code = err.error_code, detail = %err.detail, "request failed")
            }
        }
    }
    for ((label, status), n) in counts {
        // A label dropped from its pool meanwhile keeps no series.
        m.while_served(label, || m.metrics.requests(label, status, n));
    }
    true
}

/// The answers as the gate takes them: a shard's partial answers to offer, and replies
/// (every unsharded reply; a shard's errors and timeouts) to publish once.
fn outcomes<'a>(entries: &'a [Entry], replies: &'a [Reply]) -> Vec<Outcome<'a>> {
    let mut out = Vec::with_capacity(replies.len());
    for r in replies {
        let e = &entries[r.entry];
        let Some(channel) = r.channel.as_deref() else { continue };
        let (label, entry, json) = (&e.label, e.id.as_str(), r.json.as_slice());
        out.push(match &r.partial {
            Some(p) => {
                let (rid, luna_request_id) = (r.rid.as_str(), r.luna_request_id.as_str());
                let (limit, threshold, deadline) = (p.limit, p.threshold, p.deadline);
                Outcome::Partial {
                    label,
                    entry,
                    json,
                    req: Req { rid, luna_request_id, channel, limit, threshold, deadline },
                }
            }
            None => {
                let timeout = r.error.as_ref().is_some_and(|e| e.error_code == ErrorCode::Timeout.code());
                Outcome::Final { label, entry, channel, json, timeout }
            }
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use kim_index::flat::Ids;
    use redis::streams::StreamReadReply;
    use redis::FromRedisValue;

    fn bulk(s: &[u8]) -> Value {
        Value::BulkString(s.to_vec())
    }

    /// Streams with their entries, fields in a map (what both readers are compared on).
    type ByStream = Vec<(String, Vec<(String, HashMap<Vec<u8>, Vec<u8>>)>)>;

    /// What the reader made of a reply before: the `redis` crate's `StreamReadReply`, fields
    /// turned into bytes the same way.
    fn via_crate(v: &Value) -> ByStream {
        let r = StreamReadReply::from_redis_value(v).unwrap();
        r.keys
            .into_iter()
            .map(|k| {
                (
                    k.key,
                    k.ids
                        .into_iter()
                        .map(|s| (s.id, s.map.into_iter().map(|(k, v)| (k.into_bytes(), value_bytes(v))).collect()))
                        .collect(),
                )
            })
            .collect()
    }

    fn ours(v: Value) -> ByStream {
        parse_read_reply(v)
            .unwrap()
            .into_iter()
            .map(|(k, ids)| (k, ids.into_iter().map(|(id, f)| (id, f.into_iter().collect())).collect()))
            .collect()
    }

    #[test]
    fn read_reply_parses_as_the_redis_crate_does() {
        let entry = |id: &str, fields: &[(&[u8], &[u8])]| {
            Value::Array(vec![
                bulk(id.as_bytes()),
                Value::Array(fields.iter().flat_map(|(k, v)| [bulk(k), bulk(v)]).collect()),
            ])
        };
        let resp2 = Value::Array(vec![
            Value::Array(vec![
                bulk(b"faces"),
                Value::Array(vec![
                    entry("1-0", &[(b"descriptor", &[0, 255, 7]), (b"rid", b"r1")]),
                    entry("1-1", &[(b"rid", b"a"), (b"rid", b"b")]),
                ]),
            ]),
            Value::Array(vec![
                bulk(b"p:cars"),
                Value::Array(vec![Value::Array(vec![bulk(b"2-0"), Value::Nil]), entry("2-1", &[])]),
            ]),
            Value::Array(vec![bulk(b"empty"), Value::Array(vec![])]),
        ]);
        assert_eq!(ours(resp2.clone()), via_crate(&resp2));
        assert_eq!(ours(resp2.clone())[0].1[1].1[&b"rid".to_vec()], b"b", "a repeated field: the last one counts");
        let resp3 = Value::Map(vec![
            (bulk(b"faces"), Value::Array(vec![entry("1-0", &[(b"limit", b"3")])])),
            (bulk(b"cars"), Value::Array(vec![])),
        ]);
        assert_eq!(ours(resp3.clone()), via_crate(&resp3));
        assert_eq!(ours(Value::Nil), via_crate(&Value::Nil));
        // A field name that is not UTF-8 fails the crate's whole reply (and so every later
        // read of the stream); here it is one more field the request parser ignores.
        let odd = Value::Array(vec![Value::Array(vec![
            bulk(b"faces"),
            Value::Array(vec![entry("3-0", &[(b"\xff", b"x"), (b"rid", b"r")])]),
        ])]);
        assert!(StreamReadReply::from_redis_value(&odd).is_err());
        assert_eq!(ours(odd)[0].1[0].1.len(), 2);
        assert!(parse_read_reply(Value::Int(3)).is_err());
        assert!(parse_read_reply(Value::Array(vec![Value::Array(vec![bulk(b"k")])])).is_err());
    }

    #[test]
    fn entry_fields_last_wins_and_bytes_are_kept() {
        let e = Entry {
            label: "l".into(),
            id: "5-1".into(),
            fields: vec![
                (b"rid".to_vec(), b"a".to_vec()),
                (b"x\xff".to_vec(), vec![1]),
                (b"rid".to_vec(), b"b".to_vec()),
            ],
        };
        assert_eq!(e.field("rid"), Some(&b"b"[..]));
        assert_eq!(e.field("limit"), None);
        assert_eq!(e.added_ms(), Some(5));
    }

    #[test]
    fn hits_serialise_like_the_owned_result() {
        let ids = Ids::from_vec(&["a\"b".to_string(), "face-0002094-0".to_string(), "ü".to_string()]);
        let hits =
            [Hit { row: 1, distance: 0.297_8 }, Hit { row: 0, distance: 0.5 }, Hit { row: 2, distance: f32::NAN }];
        for metric in [Metric::Cosine, Metric::Dot, Metric::L2] {
            let owned: Vec<(String, f64)> =
                hits.iter().map(|h| (ids.get(h.row as usize).to_string(), similarity(metric, h.distance))).collect();
            let want = MatchResponse::ok("rid", "1,x", owned).to_json();
            let mut got = Vec::new();
            kim_api::write_response_json(
                &mut got,
                "rid",
                "1,x",
                kim_api::STATUS_OK,
                Some(&HitsJson { hits: &hits, id: |row| ids.get(row as usize), metric }),
                None,
            );
            assert_eq!(String::from_utf8(got).unwrap(), want);
        }
    }
}
