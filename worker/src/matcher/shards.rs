//! The reply gate, and serving one shard of split labels: every shard's matchers answer every
//! request of the label's stream with their top `limit` (a *partial*), and one reply leaves
//! Redis through a gate, whatever happens to the matchers.
//!
//! Unsharded matchers finish every reply through the same gate (one more shard count sharing
//! the done key): a reclaimed entry is not answered twice, and while a label changes its
//! split the old and the new layout's matchers both read its stream, yet each request gets
//! one reply, from whichever layout finishes first.
//!
//! * `offer` (Lua, atomic): if the request is done, nothing; else the partial is stored in the
//!   request's hash (`kim_api::shard::partials_key`, field = shard number, so a shard that
//!   answers twice overwrites its own field) and, once all `N` are there, all are returned.
//! * `finish` (Lua, atomic): sets the request's done key (`kim_api::shard::done_key`, shared
//!   by every shard count) if absent and only then publishes the reply given. The merged
//!   answer, an error every shard would give (first one wins) and the 26309 of a deadline all
//!   go through it, so exactly one reply is published.
//!
//! A matcher that got the complete set merges the partials and finishes with the merged reply.
//! A crash between `offer` and `finish` leaves its entry pending: whoever reclaims it offers
//! again, gets the complete set again and finishes. Every matcher that stored a partial keeps
//! a timer at the request's deadline and then finishes with 26309: if a shard never answers
//! (all its matchers dead) the reply is the timeout, never a partial result.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use kim_api::shard::{done_key, partials_key};
use kim_api::{ErrorCode, MatchResponse};
use kim_redis::Conn;
use redis::{Script, Value};
use tokio::sync::mpsc;

use super::Matcher;

/// Stores a partial unless the request is done; returns nil (done), an empty list (stored,
/// others missing) or every partial as field/value pairs (complete).
const OFFER: &str = r"
if redis.call('EXISTS', KEYS[2]) == 1 then return false end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
if redis.call('HLEN', KEYS[1]) >= tonumber(ARGV[3]) then return redis.call('HGETALL', KEYS[1]) end
return {}
";

/// Marks the request done and publishes its one reply; returns 1 when this call did, 0 when
/// the request was already done.
const FINISH: &str = r"
if redis.call('SET', KEYS[2], '1', 'NX', 'PX', ARGV[1]) then
  redis.call('DEL', KEYS[1])
  redis.call('PUBLISH', ARGV[2], ARGV[3])
  return 1
end
return 0
";

/// How long partials outlive the request's deadline.
const PARTIAL_GRACE_MS: u64 = 30_000;
/// How long the done key outlives the deadline: an entry reclaimed later than this from a
/// dead matcher could be answered again (clients drop replies they no longer wait for).
const DONE_GRACE_MS: u64 = 120_000;
/// How far back a shard's new consumer group starts reading the stream, so requests added
/// while the shards' matchers were starting are not missed.
pub const GROUP_LOOKBACK_MS: u64 = 60_000;

/// The scripts and the deadline timers of a sharded matcher.
pub struct Gate {
    offer: Script,
    finish: Script,
    timers: mpsc::UnboundedSender<Timer>,
}

/// A request this matcher stored a partial for: at `at` (unix ms) it is finished with 26309
/// unless it is done by then.
pub struct Timer {
    at: u64,
    label: Arc<str>,
    entry: String,
    channel: String,
    reply: Vec<u8>,
}

impl Gate {
    pub fn new() -> (Gate, mpsc::UnboundedReceiver<Timer>) {
        let (timers, rx) = mpsc::unbounded_channel();
        (Gate { offer: Script::new(OFFER), finish: Script::new(FINISH), timers }, rx)
    }
}

/// The consumer group's start for a new group: `0` unsharded, else a minute back.
pub fn group_start(sharded: bool) -> String {
    if !sharded {
        return "0".into();
    }
    format!("{}-0", kim_api::unix_ms().saturating_sub(GROUP_LOOKBACK_MS))
}

/// What a shard did with one entry of a batch.
pub enum Outcome<'a> {
    /// A search result (`[[id, similarity], ...]` JSON) to offer.
    Partial { label: &'a Arc<str>, entry: &'a str, json: &'a [u8], req: Req<'a> },
    /// A complete reply to finish with (errors, timeouts).
    Final { label: &'a Arc<str>, entry: &'a str, channel: &'a str, json: &'a [u8], timeout: bool },
}

/// What the merge needs of the request.
#[derive(Clone, Copy)]
pub struct Req<'a> {
    pub rid: &'a str,
    pub luna_request_id: &'a str,
    pub channel: &'a str,
    pub limit: u32,
    pub threshold: Option<f64>,
    pub deadline: u64,
}

fn ttl(deadline: u64, now: u64, grace: u64) -> u64 {
    deadline.saturating_sub(now) + grace
}

fn finish_cmd(gate: &Gate, m: &Matcher, label: &str, entry: &str, channel: &str, json: &[u8], ttl: u64) -> redis::Cmd {
    let (prefix, shards) = (m.args.prefix.as_str(), m.args.shard.shards);
    let mut c = redis::cmd("EVALSHA");
    c.arg(gate.finish.get_hash())
        .arg(2)
        .arg(partials_key(prefix, label, entry, shards))
        .arg(done_key(prefix, label, entry))
        .arg(ttl)
        .arg(channel)
        .arg(json);
    c
}

/// Runs `pipe`, loading the scripts once if Redis does not know them (a restarted Redis).
async fn run_scripts(gate: &Gate, conn: &mut Conn, pipe: &redis::Pipeline) -> redis::RedisResult<Vec<Value>> {
    match pipe.query_async::<Vec<Value>>(conn).await {
        Err(e) if e.kind() == redis::ErrorKind::NoScriptError => {
            gate.offer.prepare_invoke().load_async(conn).await?;
            gate.finish.prepare_invoke().load_async(conn).await?;
            pipe.query_async(conn).await
        }
        other => other,
    }
}

/// The timeout reply of a request.
pub fn timeout_reply(rid: &str, luna_request_id: &str, detail: &str) -> Vec<u8> {
    MatchResponse::failed(rid, luna_request_id, ErrorCode::Timeout, detail).to_json().into_bytes()
}

/// The partials of a complete set (field/value pairs), merged into the reply's JSON; an
/// unreadable partial turns the reply into 26303.
fn merged_reply(pairs: Vec<Value>, req: &Req) -> (Vec<u8>, bool) {
    let mut partials = Vec::with_capacity(pairs.len() / 2);
    for (i, v) in pairs.into_iter().enumerate() {
        if i % 2 == 0 {
            continue;
        }
        let parsed = match &v {
            Value::BulkString(b) => kim_api::shard::decode_partial(b),
            _ => None,
        };
        match parsed {
            Some(p) => partials.push(p),
            None => {
                let detail = "a shard's partial answer is unreadable";
                let r = MatchResponse::failed(req.rid, req.luna_request_id, ErrorCode::SearchFailed, detail);
                return (r.to_json().into_bytes(), false);
            }
        }
    }
    let result = kim_api::shard::merge(partials, req.limit as usize, req.threshold);
    let mut json = Vec::with_capacity(128 + 40 * result.len());
    kim_api::write_response_json(&mut json, req.rid, req.luna_request_id, kim_api::STATUS_OK, Some(&result), None);
    (json, true)
}

/// Offers and finishes a batch's outcomes and acknowledges `acks` (label, entry ids): in one
/// round trip without partials, else in a second one that also finishes the complete sets.
/// Returns false when Redis failed (the entries stay pending).
pub async fn deliver(
    m: &Matcher,
    gate: &Gate,
    conn: &mut Conn,
    outcomes: Vec<Outcome<'_>>,
    acks: &BTreeMap<&str, Vec<&str>>,
) -> bool {
    let (prefix, shard, shards) = (m.args.prefix.as_str(), m.args.shard.shard, m.args.shard.shards);
    if outcomes.is_empty() && acks.is_empty() {
        return true;
    }
    let now = kim_api::unix_ms();
    let mut first = redis::pipe();
    for o in &outcomes {
        match o {
            Outcome::Partial { label, entry, json, req } => {
                first
                    .cmd("EVALSHA")
                    .arg(gate.offer.get_hash())
                    .arg(2)
                    .arg(partials_key(prefix, label, entry, shards))
                    .arg(done_key(prefix, label, entry))
                    .arg(shard)
                    .arg(*json)
                    .arg(shards)
                    .arg(ttl(req.deadline, now, PARTIAL_GRACE_MS));
            }
            Outcome::Final { label, entry, channel, json, .. } => {
                first.add_command(finish_cmd(gate, m, label, entry, channel, json, DONE_GRACE_MS));
            }
        }
    }
    // Without partials (every unsharded batch) nothing waits on the first round trip's
    // answers: the acknowledgements go with it.
    let partials = outcomes.iter().any(|o| matches!(o, Outcome::Partial { .. }));
    let ack = |pipe: &mut redis::Pipeline| {
        for (label, ids) in acks {
            pipe.cmd("XACK").arg(kim_api::stream_key(prefix, label)).arg(&m.group).arg(ids).ignore();
        }
    };
    if !partials {
        ack(&mut first);
    }
    let results = match run_scripts(gate, conn, &first).await {
        Ok(r) if r.len() == outcomes.len() => r,
        Ok(r) => {
            tracing::warn!(got = r.len(), want = outcomes.len(), "unexpected reply to the reply gate");
            return false;
        }
        Err(e) => {
            tracing::warn!(error = %e, entries = outcomes.len(), "cannot deliver replies; entries stay pending and will be retried");
            return false;
        }
    };
    let mut second = redis::pipe();
    // (label, merged?) of each finish in the second pipeline, for the metrics.
    let mut finishing: Vec<(&str, bool)> = Vec::new();
    let mut timers = Vec::new();
    for (o, r) in outcomes.iter().zip(results) {
        match o {
            Outcome::Final { label, timeout, .. } => {
                if *timeout && shards > 1 && matches!(r, Value::Int(1)) {
                    m.metrics.shard_timeout(label);
                }
            }
            Outcome::Partial { label, entry, req, .. } => match r {
                Value::Nil => {}
                Value::Array(pairs) if pairs.is_empty() => {
                    m.metrics.shard_partial(label);
                    let detail = "not every shard of the label answered before the deadline";
                    timers.push(Timer {
                        at: req.deadline,
                        label: (*label).clone(),
                        entry: entry.to_string(),
                        channel: req.channel.to_string(),
                        reply: timeout_reply(req.rid, req.luna_request_id, detail),
                    });
                }
                Value::Array(pairs) => {
                    m.metrics.shard_partial(label);
                    let (json, merged) = if kim_api::unix_ms() > req.deadline {
                        (timeout_reply(req.rid, req.luna_request_id, "the shards answered after the deadline"), false)
                    } else {
                        merged_reply(pairs, req)
                    };
                    let ttl = ttl(req.deadline, now, DONE_GRACE_MS);
                    second.add_command(finish_cmd(gate, m, label, entry, req.channel, &json, ttl));
                    finishing.push((label, merged));
                }
                other => {
                    tracing::warn!(reply = ?other, "unexpected reply to a partial offer; entry stays pending");
                    return false;
                }
            },
        }
    }
    if !partials {
        return true;
    }
    ack(&mut second);
    let done = match run_scripts(gate, conn, &second).await {
        Ok(d) => d,
        Err(e) => {
            tracing::warn!(error = %e, "cannot publish merged replies; entries stay pending and will be retried");
            return false;
        }
    };
    for ((label, merged), r) in finishing.into_iter().zip(done) {
        if matches!(r, Value::Int(1)) {
            if merged {
                m.metrics.shard_merge(label);
            } else {
                m.metrics.shard_timeout(label);
            }
        }
    }
    for t in timers {
        gate.timers.send(t).ok();
    }
    true
}

/// Finishes every request whose timer is due with 26309 (a no-op for those already done),
/// until shutdown.
pub async fn timers(m: Arc<Matcher>, mut rx: mpsc::UnboundedReceiver<Timer>, mut conn: Conn) {
    let gate = &m.gate;
    let mut due: BTreeMap<(u64, u64), Timer> = BTreeMap::new();
    let mut seq = 0u64;
    let mut shutdown = m.shutdown.clone();
    loop {
        let wait =
            due.first_key_value().map(|((at, _), _)| Duration::from_millis(at.saturating_sub(kim_api::unix_ms())));
        tokio::select! {
            t = rx.recv() => match t {
                Some(t) => {
                    seq += 1;
                    due.insert((t.at, seq), t);
                }
                None => return,
            },
            _ = tokio::time::sleep(wait.unwrap_or(Duration::from_secs(3600))), if wait.is_some() => {
                let now = kim_api::unix_ms();
                let mut fired = Vec::new();
                while let Some(e) = due.first_entry() {
                    if e.key().0 > now || fired.len() >= 1024 {
                        break;
                    }
                    fired.push(e.remove_entry());
                }
                let mut pipe = redis::pipe();
                for (_, t) in &fired {
                    pipe.add_command(finish_cmd(gate, &m, &t.label, &t.entry, &t.channel, &t.reply, DONE_GRACE_MS));
                }
                match run_scripts(gate, &mut conn, &pipe).await {
                    Ok(r) => {
                        for ((_, t), r) in fired.iter().zip(r) {
                            if matches!(r, Value::Int(1)) {
                                tracing::info!(label = %t.label, entry = %t.entry, "a shard missed the deadline: answered 26309");
                                m.metrics.shard_timeout(&t.label);
                            }
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, timers = fired.len(), "cannot finish timed-out requests; retrying");
                        due.extend(fired);
                        if m.pause(Duration::from_millis(200)).await {
                            return;
                        }
                    }
                }
            }
            changed = shutdown.changed() => if changed.is_err() || m.stopping() {
                return;
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merged_reply_is_the_reply_json_and_bad_partials_fail() {
        let req = Req { rid: "r", luna_request_id: "1,x", channel: "c", limit: 2, threshold: None, deadline: 0 };
        let b = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        let (json, ok) = merged_reply(vec![b("0"), b(r#"[["a",0.5]]"#), b("1"), b(r#"[["b",0.75],["c",0.25]]"#)], &req);
        assert!(ok);
        let want = MatchResponse::ok("r", "1,x", vec![("b".into(), 0.75), ("a".into(), 0.5)]).to_json();
        assert_eq!(String::from_utf8(json).unwrap(), want);
        for bad in [b("{"), Value::Int(3), b(r#"[["a","x"]]"#)] {
            let (json, ok) = merged_reply(vec![b("0"), bad], &req);
            assert!(!ok);
            let r: MatchResponse = serde_json::from_slice(&json).unwrap();
            assert_eq!(r.error.unwrap().error_code, 26303);
        }
    }
}
