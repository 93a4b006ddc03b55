//! Async client for kim matchers: `XADD`s a request to the label's stream and waits for the
//! reply on one pub/sub channel shared by every request of this client (multiplexed by `rid`).
//!
//! Redis may restart or fail over under a client: commands reconnect with backoff, the reply
//! subscription is re-established, and a request whose reply may have been lost meanwhile is
//! sent again once if its deadline allows, else answered with the timeout error (26309). A call
//! never outlives its timeout.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use kim_api::{ErrorCode, MatchRequest, MatchResponse, MAX_LIMIT};
use kim_redis::{Backoff, Conn, Target};
use tokio::sync::{oneshot, watch};

pub use kim_api::{LabelInfo, MatchError};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error(transparent)]
    Config(#[from] kim_redis::Error),
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
    /// For this long after reconnecting, an unknown label is asked again until the request's
    /// deadline instead of failing with 26304: a restarted Redis has an empty registry until
    /// the matchers notice and re-register.
    pub reconnect_grace: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            prefix: String::new(),
            stream_maxlen: 100_000,
            label_cache: Duration::from_secs(2),
            reconnect_grace: Duration::from_secs(5),
        }
    }
}

/// One match call.
#[derive(Debug, Clone)]
pub struct Match {
    pub descriptor: Vec<u8>,
    pub version: u32,
    pub label: String,
    pub limit: u32,
    /// Only candidates at least this similar (0..=1) come back; `None` = no minimum.
    pub threshold: Option<f64>,
    /// Passed through to the reply; generated in LUNA's form when absent.
    pub luna_request_id: Option<String>,
    pub timeout: Duration,
}

/// A request waiting for its reply.
struct InFlight {
    tx: oneshot::Sender<MatchResponse>,
    xadd: redis::Cmd,
    rid: String,
    luna_request_id: String,
    deadline: Instant,
    /// Subscription generation the request was sent under; None until its XADD succeeded.
    sent_under: Option<u64>,
    resent: bool,
}

#[derive(Default)]
struct Shared {
    pending: Mutex<HashMap<String, InFlight>>,
}

#[derive(Clone)]
pub struct Client {
    conn: Conn,
    opts: Options,
    channel: String,
    shared: Arc<Shared>,
    /// Generation of the live reply subscription; None while it is being re-established.
    subscribed: watch::Receiver<Option<u64>>,
    live_labels: Arc<Mutex<HashMap<String, Instant>>>,
    listener: Arc<tokio::task::JoinHandle<()>>,
}

/// Outcome of one attempt at a Redis step inside a call.
enum Step<T> {
    Done(T),
    Retry,
}

impl Client {
    /// Connects to `url` (`redis://`, `rediss://`, `redis+sentinel://`) with credentials and TLS
    /// files from `KIM_REDIS_*` variables.
    pub async fn connect(url: &str) -> Result<Client, ClientError> {
        Self::connect_with(url, Options::default()).await
    }

    pub async fn connect_with(url: &str, opts: Options) -> Result<Client, ClientError> {
        Self::connect_target(Target::from_env(url)?, opts).await
    }

    pub async fn connect_target(target: Target, opts: Options) -> Result<Client, ClientError> {
        let target = Arc::new(target);
        let conn = kim_redis::connect_checked(target.clone(), Duration::from_secs(10), Duration::ZERO).await?;
        let channel = format!("{}kim:reply:{}", opts.prefix, kim_api::new_rid());
        let mut pubsub = target.pubsub().await?;
        pubsub.subscribe(&channel).await?;
        let shared: Arc<Shared> = Arc::default();
        let (sub_tx, subscribed) = watch::channel(Some(1));
        let listener = tokio::spawn(listen(target, conn.clone(), channel.clone(), pubsub, shared.clone(), sub_tx));
        Ok(Client {
            conn,
            opts,
            channel,
            shared,
            subscribed,
            live_labels: Arc::default(),
            listener: Arc::new(listener),
        })
    }

    /// Matches one descriptor. Protocol errors (unknown label, timeout, bad descriptor, ...)
    /// come back as a response with `error` set; `Err` means Redis refused the client itself
    /// (authentication, permissions, wrong key type). Lost connections are retried until the
    /// timeout, which then comes back as a 26309 response.
    pub async fn match_descriptor(&self, m: Match) -> Result<MatchResponse, ClientError> {
        let started = Instant::now();
        let deadline = started + m.timeout;
        let luna_id = m.luna_request_id.clone().unwrap_or_else(kim_api::new_luna_request_id);
        let rid = kim_api::new_rid();
        let timed_out = || {
            let why = format!("no reply within {} ms", m.timeout.as_millis());
            MatchResponse::failed(&rid, &luna_id, ErrorCode::Timeout, why)
        };
        if m.label.is_empty() || !(1..=MAX_LIMIT).contains(&m.limit) {
            let why = format!("label must be non-empty and limit in 1..={MAX_LIMIT}");
            return Ok(MatchResponse::failed(&rid, &luna_id, ErrorCode::ValidationFailed, why));
        }
        if m.threshold.is_some_and(|t| !(0.0..=1.0).contains(&t)) {
            let why = "threshold must be a similarity in [0, 1]";
            return Ok(MatchResponse::failed(&rid, &luna_id, ErrorCode::ValidationFailed, why));
        }
        let mut backoff = Backoff::new(Duration::from_millis(20), Duration::from_millis(500));
        // Find the label, riding out Redis outages and a registry not yet rewritten after one.
        loop {
            let step = match self.check_matching_label(&m.label).await {
                Ok(true) => Step::Done(()),
                Ok(false) if !self.just_reconnected() => {
                    let why = format!("no matcher serves label {:?}", m.label);
                    return Ok(MatchResponse::failed(&rid, &luna_id, ErrorCode::IndexNotFound, why));
                }
                Ok(false) => Step::Retry,
                Err(ClientError::Redis(e)) if kim_redis::retryable(&e) => Step::Retry,
                Err(e) => return Err(e),
            };
            match step {
                Step::Done(()) => break,
                Step::Retry if !sleep_before(deadline, backoff.next_delay()).await => return Ok(timed_out()),
                Step::Retry => {}
            }
        }
        let req = MatchRequest {
            descriptor: m.descriptor,
            version: Some(m.version),
            label: m.label.clone(),
            limit: m.limit,
            response_channel: self.channel.clone(),
            luna_request_id: luna_id.clone(),
            rid: rid.clone(),
            deadline: Some(kim_api::unix_ms() + m.timeout.as_millis() as u64),
            threshold: m.threshold,
        };
        let mut xadd = redis::cmd("XADD");
        xadd.arg(kim_api::stream_key(&self.opts.prefix, &m.label))
            .arg("MAXLEN")
            .arg("~")
            .arg(self.opts.stream_maxlen)
            .arg("*");
        for (k, v) in req.fields() {
            xadd.arg(k).arg(v);
        }
        let (tx, mut rx) = oneshot::channel();
        let entry = InFlight {
            tx,
            xadd: xadd.clone(),
            rid: rid.clone(),
            luna_request_id: luna_id.clone(),
            deadline,
            sent_under: None,
            resent: false,
        };
        self.shared.pending.lock().unwrap().insert(rid.clone(), entry);
        let _forget = Forget { shared: &self.shared, rid: &rid };
        // Send once the reply subscription is live, so the reply cannot race past it.
        loop {
            let mut sub = self.subscribed.clone();
            let generation = match tokio::time::timeout_at(deadline.into(), sub.wait_for(|g| g.is_some())).await {
                Ok(Ok(g)) => g.expect("live"),
                Ok(Err(_)) => return Ok(timed_out()),
                Err(_) => return Ok(timed_out()),
            };
            let mut conn = self.conn.clone();
            match xadd.query_async::<String>(&mut conn).await {
                Ok(_) => {
                    if let Some(f) = self.shared.pending.lock().unwrap().get_mut(&rid) {
                        f.sent_under = Some(generation);
                    }
                    break;
                }
                Err(e) if kim_redis::retryable(&e) => {
                    if !sleep_before(deadline, backoff.next_delay()).await {
                        return Ok(timed_out());
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
        match tokio::time::timeout_at(deadline.into(), &mut rx).await {
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(_)) | Err(_) => Ok(timed_out()),
        }
    }

    /// True while a fresh connection may still be looking at a registry Redis lost.
    fn just_reconnected(&self) -> bool {
        let (n, when) = *self.conn.connections().borrow();
        n > 1 && when.is_some_and(|t| t.elapsed() < self.opts.reconnect_grace)
    }

    /// Labels some live matcher serves, sorted.
    pub async fn read_matching_labels(&self) -> Result<Vec<String>, ClientError> {
        let keys = self.scan(&kim_api::registry_pattern_all(&self.opts.prefix), false).await?;
        let mut labels: Vec<String> = keys
            .iter()
            .filter_map(|k| kim_api::label_of_registry_key(&self.opts.prefix, k))
            .map(str::to_string)
            .collect();
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
        Ok(kim_redis::scan(&mut self.conn.clone(), pattern, first_only).await?)
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        if Arc::strong_count(&self.listener) == 1 {
            self.listener.abort();
        }
    }
}

/// Removes a finished call's entry, however the call ended.
struct Forget<'a> {
    shared: &'a Shared,
    rid: &'a str,
}

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        self.shared.pending.lock().unwrap().remove(self.rid);
    }
}

/// Sleeps `d` unless that would pass the deadline; false when there is no time left.
async fn sleep_before(deadline: Instant, d: Duration) -> bool {
    if Instant::now() + d >= deadline {
        return false;
    }
    tokio::time::sleep(d).await;
    true
}

/// How often the idle reply subscription is pinged, so a silently dead one is noticed.
const SUB_PING: Duration = Duration::from_secs(5);

/// Routes replies to waiting calls; re-subscribes (with backoff) whenever the subscription
/// ends, then deals with the requests whose replies may have been lost meanwhile.
async fn listen(
    target: Arc<Target>,
    conn: Conn,
    channel: String,
    first: redis::aio::PubSub,
    shared: Arc<Shared>,
    subscribed: watch::Sender<Option<u64>>,
) {
    let mut pubsub = Some(first);
    let mut generation = 1u64;
    let mut backoff = Backoff::new(Duration::from_millis(20), Duration::from_secs(1));
    loop {
        let ps = match pubsub.take() {
            Some(p) => p,
            None => {
                let open = async {
                    let mut p = target.pubsub().await?;
                    p.subscribe(&channel).await?;
                    Ok::<_, redis::RedisError>(p)
                };
                match open.await {
                    Ok(p) => {
                        generation += 1;
                        tracing::info!(redis = %target, "reply subscription re-established");
                        subscribed.send_replace(Some(generation));
                        resend_lost(&shared, &conn, generation).await;
                        p
                    }
                    Err(e) => {
                        let d = backoff.next_delay();
                        tracing::debug!(error = %e, retry_in = ?d, "cannot re-subscribe yet");
                        tokio::time::sleep(d).await;
                        continue;
                    }
                }
            }
        };
        backoff.reset();
        let (mut sink, mut messages) = ps.split();
        loop {
            let msg = tokio::select! {
                m = messages.next() => match m {
                    Some(m) => m,
                    None => break,
                },
                _ = tokio::time::sleep(SUB_PING) => {
                    // A subscribed connection answers PING with the array ["pong", ""], so the
                    // reply is taken as any value: only silence or an error means it is dead.
                    match tokio::time::timeout(SUB_PING, sink.ping::<redis::Value>()).await {
                        Ok(Ok(_)) => continue,
                        _ => break,
                    }
                }
            };
            let Ok(payload) = msg.get_payload::<String>() else { continue };
            match serde_json::from_str::<MatchResponse>(&payload) {
                Ok(resp) => {
                    if let Some(f) = shared.pending.lock().unwrap().remove(&resp.rid) {
                        let _ = f.tx.send(resp);
                    }
                }
                Err(e) => tracing::warn!(error = %e, "unparseable reply on response channel"),
            }
        }
        subscribed.send_replace(None);
        tracing::warn!(redis = %target, "reply subscription lost; re-subscribing");
    }
}

/// Requests sent under an earlier subscription may have had their replies published while no
/// one listened (or lost with a restarted Redis): send each once more if its deadline allows,
/// else answer it with the timeout error now.
async fn resend_lost(shared: &Shared, conn: &Conn, generation: u64) {
    let now = Instant::now();
    let mut resend = Vec::new();
    {
        let mut pending = shared.pending.lock().unwrap();
        let lost: Vec<String> =
            pending.values().filter(|f| f.sent_under.is_some_and(|g| g < generation)).map(|f| f.rid.clone()).collect();
        for rid in lost {
            let f = pending.get_mut(&rid).expect("present");
            if !f.resent && f.deadline > now {
                f.resent = true;
                f.sent_under = Some(generation);
                resend.push((rid, f.xadd.clone()));
            } else {
                let f = pending.remove(&rid).expect("present");
                let why = "reply lost with the Redis connection and the request was already re-sent once or is past its deadline";
                let _ = f.tx.send(MatchResponse::failed(&f.rid, &f.luna_request_id, ErrorCode::Timeout, why));
            }
        }
    }
    if !resend.is_empty() {
        tracing::info!(requests = resend.len(), "re-sending requests whose replies may have been lost");
    }
    for (rid, cmd) in resend {
        let mut c = conn.clone();
        if let Err(e) = cmd.query_async::<String>(&mut c).await {
            // Left pending: the caller's own deadline answers it with a timeout.
            tracing::debug!(rid, error = %e, "re-send failed");
        }
    }
}
