//! Async client for kim matchers: `XADD`s a request to the label's stream and waits for the
//! reply on one pub/sub channel shared by every request of this client (multiplexed by `rid`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use kim_api::{ErrorCode, MatchRequest, MatchResponse, MAX_LIMIT};
use redis::aio::MultiplexedConnection;
use tokio::sync::oneshot;

pub use kim_api::{LabelInfo, MatchError};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("the reply listener stopped; create a new client")]
    ListenerGone,
}

/// Connection settings beyond the URL.
#[derive(Debug, Clone)]
pub struct Options {
    /// Prepended to stream and registry key names (default empty, as LIM).
    pub prefix: String,
    /// `MAXLEN ~` bound of label streams.
    pub stream_maxlen: usize,
    /// How long a positive label check is trusted before asking Redis again.
    pub label_cache: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options { prefix: String::new(), stream_maxlen: 100_000, label_cache: Duration::from_secs(2) }
    }
}

/// One match call.
#[derive(Debug, Clone)]
pub struct Match {
    pub descriptor: Vec<u8>,
    pub version: u32,
    pub label: String,
    pub limit: u32,
    /// Passed through to the reply; generated in LUNA's form when absent.
    pub luna_request_id: Option<String>,
    pub timeout: Duration,
}

type Pending = Arc<Mutex<HashMap<String, oneshot::Sender<MatchResponse>>>>;

#[derive(Clone)]
pub struct Client {
    conn: MultiplexedConnection,
    opts: Options,
    channel: String,
    pending: Pending,
    live_labels: Arc<Mutex<HashMap<String, Instant>>>,
    listener: Arc<tokio::task::JoinHandle<()>>,
}

impl Client {
    pub async fn connect(url: &str) -> Result<Client, ClientError> {
        Self::connect_with(url, Options::default()).await
    }

    pub async fn connect_with(url: &str, opts: Options) -> Result<Client, ClientError> {
        let redis = redis::Client::open(url)?;
        let conn = redis.get_multiplexed_async_connection().await?;
        let channel = format!("{}kim:reply:{}", opts.prefix, kim_api::new_rid());
        let pending: Pending = Arc::default();
        let mut pubsub = redis.get_async_pubsub().await?;
        pubsub.subscribe(&channel).await?;
        let listener = tokio::spawn(listen(pubsub, pending.clone()));
        Ok(Client { conn, opts, channel, pending, live_labels: Arc::default(), listener: Arc::new(listener) })
    }

    /// Matches one descriptor. Protocol errors (unknown label, timeout, bad descriptor, ...)
    /// come back as a response with `error` set; `Err` means Redis itself failed.
    pub async fn match_descriptor(&self, m: Match) -> Result<MatchResponse, ClientError> {
        let luna_id = m.luna_request_id.clone().unwrap_or_else(kim_api::new_luna_request_id);
        let rid = kim_api::new_rid();
        if m.label.is_empty() || !(1..=MAX_LIMIT).contains(&m.limit) {
            let why = format!("label must be non-empty and limit in 1..={MAX_LIMIT}");
            return Ok(MatchResponse::failed(&rid, &luna_id, ErrorCode::ValidationFailed, why));
        }
        if !self.check_matching_label(&m.label).await? {
            let why = format!("no matcher serves label {:?}", m.label);
            return Ok(MatchResponse::failed(&rid, &luna_id, ErrorCode::IndexNotFound, why));
        }
        if self.listener.is_finished() {
            return Err(ClientError::ListenerGone);
        }
        let req = MatchRequest {
            descriptor: m.descriptor,
            version: m.version,
            label: m.label.clone(),
            limit: m.limit,
            response_channel: self.channel.clone(),
            luna_request_id: luna_id.clone(),
            rid: rid.clone(),
            deadline: Some(kim_api::unix_ms() + m.timeout.as_millis() as u64),
        };
        let (tx, rx) = oneshot::channel();
        self.pending.lock().unwrap().insert(rid.clone(), tx);
        let mut cmd = redis::cmd("XADD");
        cmd.arg(kim_api::stream_key(&self.opts.prefix, &m.label)).arg("MAXLEN").arg("~").arg(self.opts.stream_maxlen).arg("*");
        for (k, v) in req.fields() {
            cmd.arg(k).arg(v);
        }
        let mut conn = self.conn.clone();
        if let Err(e) = cmd.query_async::<String>(&mut conn).await {
            self.pending.lock().unwrap().remove(&rid);
            return Err(e.into());
        }
        match tokio::time::timeout(m.timeout, rx).await {
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(_)) => Err(ClientError::ListenerGone),
            Err(_) => {
                self.pending.lock().unwrap().remove(&rid);
                let why = format!("no reply within {} ms", m.timeout.as_millis());
                Ok(MatchResponse::failed(&rid, &luna_id, ErrorCode::Timeout, why))
            }
        }
    }

    /// Labels some live matcher serves, sorted.
    pub async fn read_matching_labels(&self) -> Result<Vec<String>, ClientError> {
        let keys = self.scan(&kim_api::registry_pattern_all(&self.opts.prefix), false).await?;
        let mut labels: Vec<String> = keys.iter().filter_map(|k| kim_api::label_of_registry_key(&self.opts.prefix, k)).map(str::to_string).collect();
        labels.sort();
        labels.dedup();
        Ok(labels)
    }

    /// True iff some live matcher serves `label`.
    pub async fn check_matching_label(&self, label: &str) -> Result<bool, ClientError> {
        if let Some(t) = self.live_labels.lock().unwrap().get(label) {
            if t.elapsed() < self.opts.label_cache {
                return Ok(true);
            }
        }
        let live = !self.scan(&kim_api::registry_pattern(&self.opts.prefix, label), true).await?.is_empty();
        let mut cache = self.live_labels.lock().unwrap();
        if live {
            cache.insert(label.to_string(), Instant::now());
        } else {
            cache.remove(label);
        }
        Ok(live)
    }

    /// What each live matcher reports for `label` (version, vectors, snapshot, ...).
    pub async fn label_info(&self, label: &str) -> Result<Vec<LabelInfo>, ClientError> {
        let keys = self.scan(&kim_api::registry_pattern(&self.opts.prefix, label), false).await?;
        let mut conn = self.conn.clone();
        let mut out = Vec::new();
        for k in keys {
            let v: Option<String> = redis::cmd("GET").arg(&k).query_async(&mut conn).await?;
            out.extend(v.and_then(|v| serde_json::from_str(&v).ok()));
        }
        Ok(out)
    }

    async fn scan(&self, pattern: &str, first_only: bool) -> Result<Vec<String>, ClientError> {
        let mut conn = self.conn.clone();
        let mut cursor = 0u64;
        let mut found = Vec::new();
        loop {
            let (next, keys): (u64, Vec<String>) =
                redis::cmd("SCAN").arg(cursor).arg("MATCH").arg(pattern).arg("COUNT").arg(1000).query_async(&mut conn).await?;
            found.extend(keys);
            if next == 0 || (first_only && !found.is_empty()) {
                return Ok(found);
            }
            cursor = next;
        }
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        if Arc::strong_count(&self.listener) == 1 {
            self.listener.abort();
        }
    }
}

async fn listen(pubsub: redis::aio::PubSub, pending: Pending) {
    let mut messages = pubsub.into_on_message();
    while let Some(msg) = messages.next().await {
        let Ok(payload) = msg.get_payload::<String>() else { continue };
        match serde_json::from_str::<MatchResponse>(&payload) {
            Ok(resp) => {
                if let Some(tx) = pending.lock().unwrap().remove(&resp.rid) {
                    let _ = tx.send(resp);
                }
            }
            Err(e) => tracing::warn!(error = %e, "unparseable reply on response channel"),
        }
    }
    tracing::warn!("reply subscription closed");
    pending.lock().unwrap().clear();
}
