//! What a serving label's matchers actually serve, from the hash each refreshes beside its
//! registry key (`kim_api::served_key`): the deltas applied on top of the current snapshot and
//! the tail they make, and any matcher that found the snapshot CURRENT names corrupt and
//! serves the newest intact one before it (status says which, on which matcher).
//! While some matcher has not yet moved to a snapshot built in the last ten minutes (nor
//! rejected it), the MatchingIndex is looked at again soon, so a rejection shows within
//! seconds of the swap.

use std::time::Duration;

use kim_api::Served;

use super::redis::Problem;
use crate::context::Context;
use crate::crd::{MatchingIndex, MatchingIndexStatus, RejectedSnapshot, SnapshotStatus};

/// How long after its matcher stopped refreshing it an entry is removed.
const STALE_GRACE_MS: u64 = 60_000;

/// How long after a build the operator looks again soon for matchers still moving to it.
const SWAP_WAIT: Duration = Duration::from_secs(600);

/// Whether the snapshot was written less than `within` ago (unknown: no).
fn built_within(s: &SnapshotStatus, within: Duration) -> bool {
    let Some(at) = s.built_at.as_deref().and_then(|t| t.parse::<k8s_openapi::jiff::Timestamp>().ok()) else {
        return false;
    };
    let age = k8s_openapi::jiff::Timestamp::now().as_millisecond() - at.as_millisecond();
    age < within.as_millis() as i64
}

/// What the label's matchers report.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Report {
    /// Matchers serving an older snapshot because the current one failed verification on them.
    pub rejected: Vec<RejectedSnapshot>,
    /// Live matchers that serve neither the snapshot status names nor said they rejected it.
    pub behind: usize,
    /// Live matchers that serve the snapshot status names.
    pub current: usize,
    /// Of the matchers serving the current snapshot: the most deltas applied and the largest
    /// tail (`None`: no matcher serves it).
    pub deltas: Option<(u64, usize)>,
}

/// Reads the label's served hash (and removes entries long stale).
pub async fn read(mi: &MatchingIndex, ctx: &Context, ns: &str) -> Result<Vec<(String, Served)>, Problem> {
    let key = super::redis::keys_of(mi).served;
    super::redis::run(mi, ctx, ns, super::redis::READ_BOUND, |mut conn| async move {
        let raw: Vec<(String, String)> = redis::cmd("HGETALL").arg(&key).query_async(&mut conn).await?;
        let now = kim_api::unix_ms();
        let mut entries = Vec::new();
        let mut gone = Vec::new();
        for (matcher, json) in raw {
            match serde_json::from_str::<Served>(&json) {
                Ok(s) if s.until + STALE_GRACE_MS < now => gone.push(matcher),
                Ok(s) => entries.push((matcher, s)),
                // Written by something else (a newer matcher, by hand): not ours to judge.
                Err(e) => tracing::warn!(matcher = %matcher, error = %e, "unreadable entry in {key}"),
            }
        }
        if !gone.is_empty() {
            redis::cmd("HDEL").arg(&key).arg(&gone).query_async::<()>(&mut conn).await?;
        }
        Ok(entries)
    })
    .await
}

/// What the entries live at `now` say about the snapshot status names (`current`; a split
/// label's shards each have their own id).
pub fn report(current: &SnapshotStatus, entries: &[(String, Served)], now: u64) -> Report {
    let ids: Vec<&str> =
        std::iter::once(current.id.as_str()).chain(current.shards.iter().map(|s| s.id.as_str())).collect();
    let mut out = Report::default();
    for (matcher, s) in entries.iter().filter(|(_, s)| s.until >= now) {
        match &s.info.rejected {
            Some(bad) => out.rejected.push(RejectedSnapshot {
                matcher: matcher.clone(),
                rejected: bad.clone(),
                serving: s.info.snapshot.clone(),
            }),
            None if !ids.contains(&s.info.snapshot.as_str()) => out.behind += 1,
            None => {
                out.current += 1;
                let (d, t) = out.deltas.unwrap_or_default();
                out.deltas = Some((d.max(s.info.deltas), t.max(s.info.tail)));
            }
        }
    }
    out.rejected.sort_by(|a, b| a.matcher.cmp(&b.matcher));
    out
}

/// What one look at the served hash found.
#[derive(Debug, Default)]
pub struct Seen {
    /// How soon to look again: a matcher is still moving to the current snapshot, or one
    /// rejected it.
    pub again: Option<Duration>,
    /// Live matchers serving the current snapshot; `None` when the hash could not be read.
    pub serving: Option<usize>,
}

/// Updates `status.rejectedSnapshots` and the current snapshot's deltas and tail. An
/// unreadable hash leaves status as it was (and is logged).
pub async fn step(mi: &MatchingIndex, ctx: &Context, ns: &str, st: &mut MatchingIndexStatus) -> Seen {
    let Some(current) = st.current_snapshot.clone() else { return Seen::default() };
    match read(mi, ctx, ns).await {
        Ok(entries) => {
            let r = report(&current, &entries, kim_api::unix_ms());
            st.rejected_snapshots = r.rejected;
            if let (Some((deltas, tail)), Some(cur)) = (r.deltas, st.current_snapshot.as_mut()) {
                cur.deltas = Some(deltas as i64);
                cur.tail_rows = Some(tail as i64);
            }
            // A matcher serving something else long after the build (a rollback by hand) is
            // not waited for.
            let waiting = r.behind > 0 && built_within(&current, SWAP_WAIT);
            let again = (waiting || !st.rejected_snapshots.is_empty()).then_some(Duration::from_secs(10));
            Seen { again, serving: Some(r.current) }
        }
        Err(p) => {
            tracing::warn!(label = %mi.label(), problem = %p, "cannot read what the matchers serve");
            Seen::default()
        }
    }
}
