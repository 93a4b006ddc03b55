//! Backlog autoscaling of a MatchingIndex's matchers. The operator reads the matchers' consumer
//! group (its lag and pending count, the figures the matchers export as metrics) from Redis
//! itself, so scaling needs no metrics pipeline; [`decide`] turns a reading into a replica
//! count, and the decision goes to the Deployment, to `status.autoscaling` and to an Event.
//! With `autoscaling.keda` the operator applies a KEDA ScaledObject instead and leaves the
//! Deployment's `replicas` to KEDA.

use std::time::Duration;

use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kim_redis::Backlog;
use kube::api::{Api, DeleteParams};
use kube::ResourceExt;

use super::apply;
use super::redis::{self as store, Problem};
use crate::build::{self, keda::ScaledObject, Matchers};
use crate::context::Context;
use crate::crd::{AutoscalingSpec, AutoscalingStatus, MatchingIndex, MatchingIndexStatus};

/// A scale change worth an Event: its reason (`ScaledUp`, `ScaledDown`) and note.
pub type Change = (&'static str, String);

/// The replicas one reading asks for: `ceil(backlog / targetBacklog)` within the bounds, up at
/// once, down only once `cooldown` has passed since the last change. `fixed` (the spec's
/// replicas) is where a MatchingIndex without an earlier decision starts. An unreadable backlog
/// keeps the current count.
pub fn decide(
    spec: &AutoscalingSpec,
    cooldown: Duration,
    fixed: i32,
    last: Option<&AutoscalingStatus>,
    reading: Result<Backlog, String>,
    now: Timestamp,
) -> (AutoscalingStatus, Option<Change>) {
    let (min, max) = (spec.min_replicas, spec.max_replicas.max(spec.min_replicas));
    let current = last.map_or(fixed, |l| l.replicas).clamp(min, max);
    let last_scale = last.and_then(|l| l.last_scale_time.clone());
    let mut st = AutoscalingStatus { replicas: current, last_scale_time: last_scale.clone(), ..Default::default() };
    let b = match reading {
        Ok(b) => b,
        Err(why) => {
            st.message = format!("backlog unknown ({why}); keeping {current} matchers");
            return (st, None);
        }
    };
    (st.lag, st.pending) = (Some(b.lag), Some(b.pending));
    let total = b.total();
    let target = spec.target_backlog.max(1);
    let wanted = i32::try_from((total + target - 1) / target).unwrap_or(i32::MAX).clamp(min, max);
    let seen = format!("backlog {total} (lag {}, pending {})", b.lag, b.pending);
    let cooled = last_scale
        .as_deref()
        .and_then(|t| t.parse::<Timestamp>().ok())
        .and_then(|t| t.checked_add(SignedDuration::try_from(cooldown).ok()?).ok())
        .filter(|until| *until > now);
    let change = if wanted > current {
        Some(("ScaledUp", format!("scaled matchers up from {current} to {wanted}: {seen} at {target} per matcher")))
    } else if wanted < current {
        match cooled {
            Some(until) => {
                st.message =
                    format!("{seen} needs {wanted} matchers; keeping {current} until the cool-down ends at {until}");
                None
            }
            None => Some((
                "ScaledDown",
                format!("scaled matchers down from {current} to {wanted}: {seen} at {target} per matcher"),
            )),
        }
    } else {
        st.message = format!("{seen}: {current} matchers at {target} per matcher");
        None
    };
    if let Some((_, note)) = &change {
        st.replicas = wanted;
        st.last_scale_time = Some(now.to_string());
        st.message = note.clone();
    }
    (st, change)
}

/// Reads the backlog of the label's matchers: the group's `lag` and `pending` from
/// `XINFO GROUPS` (of a split label, the shard group with the most). No stream or no group yet
/// (no matcher has started) is an empty backlog.
pub async fn read(mi: &MatchingIndex, ctx: &Context, ns: &str, shards: i32) -> Result<Backlog, Problem> {
    let stream = store::keys_of(mi).stream;
    // Every shard's group sees every request: the slowest shard's backlog decides.
    let groups: Vec<String> = build::Shard::all(shards).map(|s| s.group()).collect();
    store::run(mi, ctx, ns, store::READ_BOUND, |mut conn| async move {
        let mut worst = Backlog::default();
        for g in &groups {
            let b = kim_redis::backlog(&mut conn, &stream, g).await?;
            if b.total() > worst.total() {
                worst = b;
            }
        }
        Ok(worst)
    })
    .await
}

/// The autoscaling step of a serving MatchingIndex: how many matchers its Deployment gets, with
/// `status.autoscaling` and an Event for each change.
pub async fn step(mi: &MatchingIndex, ctx: &Context, ns: &str, st: &mut MatchingIndexStatus) -> Matchers {
    let fixed = mi.spec.matcher.replicas;
    let Some(spec) = mi.spec.matcher.autoscaling.as_ref() else {
        remove_scaled_objects(mi, ctx, ns, st, &[]).await;
        st.autoscaling = None;
        return Matchers::Fixed(fixed);
    };
    if spec.keda {
        return keda(mi, spec, ctx, ns, st).await;
    }
    remove_scaled_objects(mi, ctx, ns, st, &[]).await;
    let cooldown =
        crate::validate::duration("autoscaling.cooldown", &spec.cooldown).unwrap_or(Duration::from_secs(300));
    let shards = st.current_snapshot.as_ref().map_or(1, |s| s.layout());
    let reading = read(mi, ctx, ns, shards).await.map_err(|p| p.to_string());
    let (next, change) = decide(spec, cooldown, fixed, st.autoscaling.as_ref(), reading, Timestamp::now());
    if let Some((reason, note)) = change {
        ctx.event(mi, false, reason, "Scale", note).await;
    }
    let replicas = next.replicas;
    st.autoscaling = Some(next);
    Matchers::Fixed(replicas)
}

/// Applies a ScaledObject per matcher Deployment of the served layout; KEDA then owns their
/// replicas. Without KEDA's CRD in the cluster the matchers keep a fixed count and status says
/// why. ScaledObjects of an earlier layout are deleted.
async fn keda(
    mi: &MatchingIndex,
    spec: &AutoscalingSpec,
    ctx: &Context,
    ns: &str,
    st: &mut MatchingIndexStatus,
) -> Matchers {
    let fallback = mi.spec.matcher.replicas.clamp(spec.min_replicas, spec.max_replicas.max(spec.min_replicas));
    let mut status = AutoscalingStatus { replicas: fallback, ..Default::default() };
    let shards = st.current_snapshot.as_ref().map_or(1, |s| s.layout());
    let address = match store::target(mi, ctx, ns).await.map(|t| t.host_port()) {
        Ok(Some(a)) => Ok(a),
        Ok(None) => Err("KEDA's redis-streams scaler needs a host:port Redis URL, not Sentinel".to_string()),
        Err(p) => Err(p.to_string()),
    };
    let applied = match address {
        Err(why) => Err(why),
        Ok(address) => {
            let api: Api<ScaledObject> = Api::namespaced(ctx.client.clone(), ns);
            let mut names = Vec::new();
            let mut failed = None;
            for shard in build::Shard::all(shards) {
                let obj = build::keda::scaled_object(mi, spec, &address, shard);
                let name = obj.name_any();
                match apply(&api, &name, &obj).await {
                    Ok(_) => names.push(name),
                    Err(e) if missing(&e) => {
                        failed = Some("KEDA is not installed: no ScaledObject resource (keda.sh/v1alpha1)".into());
                        break;
                    }
                    Err(e) => {
                        failed = Some(format!("applying ScaledObject {name}: {e}"));
                        break;
                    }
                }
            }
            failed.map_or(Ok(names), Err)
        }
    };
    let matchers = match applied {
        Ok(names) => {
            status.message = format!("KEDA scales the matchers through ScaledObject {}", names.join(", "));
            remove_scaled_objects(mi, ctx, ns, st, &names).await;
            status.scaled_objects = names;
            Matchers::External
        }
        Err(why) => {
            status.message = format!("{why}; keeping {fallback} matchers");
            ctx.event(mi, true, "AutoscalingBlocked", "Scale", status.message.clone()).await;
            Matchers::Fixed(fallback)
        }
    };
    st.autoscaling = Some(status);
    matchers
}

/// Deletes the ScaledObjects status names that are not in `keep` (a former `autoscaling.keda`,
/// or an earlier shard layout).
async fn remove_scaled_objects(mi: &MatchingIndex, ctx: &Context, ns: &str, st: &MatchingIndexStatus, keep: &[String]) {
    let named = st.autoscaling.as_ref().map(|a| a.scaled_objects.clone()).unwrap_or_default();
    let api: Api<ScaledObject> = Api::namespaced(ctx.client.clone(), ns);
    for name in named.into_iter().filter(|n| !keep.contains(n)) {
        match api.delete(&name, &DeleteParams::default()).await {
            Ok(_) => ctx.event(mi, false, "ScaledObjectRemoved", "Scale", format!("deleted ScaledObject {name}")).await,
            Err(e) if missing(&e) => {}
            Err(e) => tracing::warn!(mi = %mi.name_any(), error = %e, "deleting ScaledObject {name}"),
        }
    }
}

/// A 404: no such object, or no such resource at all (the API server answers a plain "404 page
/// not found" for a group it does not serve, such as keda.sh without KEDA's CRDs).
fn missing(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> AutoscalingSpec {
        AutoscalingSpec { min_replicas: 1, max_replicas: 4, target_backlog: 50, cooldown: "1m".into(), keda: false }
    }

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn backlog(lag: i64, pending: i64) -> Result<Backlog, String> {
        Ok(Backlog { lag, pending })
    }

    #[test]
    fn scales_up_at_once_within_the_bounds() {
        let now = at("2026-01-01T00:00:00Z");
        let (st, change) = decide(&spec(), Duration::from_secs(60), 1, None, backlog(120, 20), now);
        assert_eq!(st.replicas, 3, "140 at 50 per matcher");
        assert_eq!(change.unwrap().0, "ScaledUp");
        assert_eq!(st.last_scale_time.as_deref(), Some("2026-01-01T00:00:00Z"));
        assert!(st.message.contains("backlog 140 (lag 120, pending 20)"), "{}", st.message);
        let (st, _) = decide(&spec(), Duration::from_secs(60), 1, Some(&st), backlog(10_000, 0), now);
        assert_eq!(st.replicas, 4, "never above maxReplicas");
    }

    #[test]
    fn scales_down_only_after_the_cool_down() {
        let t0 = at("2026-01-01T00:00:00Z");
        let (up, _) = decide(&spec(), Duration::from_secs(60), 1, None, backlog(200, 0), t0);
        assert_eq!(up.replicas, 4);
        let (held, change) =
            decide(&spec(), Duration::from_secs(60), 1, Some(&up), backlog(0, 0), at("2026-01-01T00:00:59Z"));
        assert_eq!((held.replicas, change), (4, None));
        assert!(held.message.contains("until the cool-down ends at 2026-01-01T00:01:00Z"), "{}", held.message);
        let (down, change) =
            decide(&spec(), Duration::from_secs(60), 1, Some(&held), backlog(0, 0), at("2026-01-01T00:01:00Z"));
        assert_eq!((down.replicas, change.unwrap().0), (1, "ScaledDown"), "never below minReplicas");
    }

    #[test]
    fn an_unreadable_backlog_keeps_the_count() {
        let now = at("2026-01-01T00:00:00Z");
        let (st, change) = decide(&spec(), Duration::from_secs(60), 9, None, Err("Redis down".into()), now);
        assert_eq!((st.replicas, change), (4, None), "the spec's 9 clamped into 1..4");
        assert!(st.message.contains("backlog unknown (Redis down)"), "{}", st.message);
        assert_eq!((st.lag, st.pending), (None, None));
    }

    #[test]
    fn a_steady_backlog_changes_nothing() {
        let now = at("2026-01-01T00:00:00Z");
        let last = AutoscalingStatus {
            replicas: 2,
            last_scale_time: Some("2025-12-31T00:00:00Z".into()),
            ..Default::default()
        };
        let (st, change) = decide(&spec(), Duration::from_secs(60), 1, Some(&last), backlog(60, 40), now);
        assert_eq!((st.replicas, change), (2, None));
        assert_eq!(st.last_scale_time.as_deref(), Some("2025-12-31T00:00:00Z"));
    }
}
