//! A change of `online.agents`, carried out so that every read covers every agent a write may
//! have reached, and no object is lost even with one replica:
//!
//! - up (3 → 4): the StatefulSet grows and the gateways read the new agent; once it is ready
//!   and every gateway pod reads it, it becomes an owner; once every gateway writes to it, a
//!   rebalance Job moves to it the objects it now owns;
//! - down (4 → 3): the gateways stop writing to the leaving agent but still read it; once
//!   every gateway pod does, a rebalance Job drains it (its objects copied to their owners,
//!   then removed from it); then the gateways stop reading it, and once every gateway pod
//!   does, the StatefulSet shrinks.
//!
//! Status (`online`) holds the owners and the agents read; the rebalance Job's report ends up
//! in `online.rebalance`. The decisions are [`advance`] and [`running`], pure functions.

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams};
use kube::ResourceExt;

use super::jobs::{self, JobState};
use super::{apply, Error, Result};
use crate::context::Context;
use crate::crd::{Indexer, MatchingIndex, MatchingIndexStatus, OnlineStatus, RebalanceStatus};
use crate::online::{self, AgentSet};

/// What the live objects show.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Live {
    /// Every gateway pod runs the arguments of the status' agent set (before [`advance`]).
    pub gateway_current: bool,
    /// Agent pods ready, and the StatefulSet's replicas now.
    pub agents_ready: i32,
    pub agents_running: i32,
}

pub const PENDING: &str = "Pending";
const RUNNING: &str = "Running";
const SUCCEEDED: &str = "Succeeded";
const FAILED: &str = "Failed";

/// The next step of a change towards `spec` agents; `job` names the rebalance Job a new
/// owner set needs. Returns what changed, for an Event (`None` when nothing did).
pub fn advance(spec: i32, o: &mut OnlineStatus, live: Live, job: impl Fn(&OnlineStatus) -> String) -> Option<String> {
    let before = (o.agents, o.reading);
    if spec > o.agents {
        if o.reading < spec {
            o.reading = spec;
            return Some(format!("online.agents {} → {spec}: starting the new agents; gateways read them", o.agents));
        }
        if !(live.gateway_current && live.agents_ready >= o.reading) {
            return None;
        }
        o.agents = spec;
    } else if spec < o.agents {
        o.agents = spec;
    } else if o.reading > o.agents && !o.rebalance.as_ref().is_some_and(|r| settles(r, o) && r.state != SUCCEEDED) {
        // Back to the owners before the joining agents owned anything: drain them anyway.
    } else {
        return None;
    }
    o.rebalance = Some(pending(o, job(o)));
    let drained = o.reading - o.agents;
    Some(match o.agents.cmp(&before.0) {
        std::cmp::Ordering::Greater => format!(
            "online.agents {} → {}: the new agents own objects; rebalancing once every gateway writes to them",
            before.0, o.agents
        ),
        std::cmp::Ordering::Less => format!(
            "online.agents {} → {}: gateways stop writing to {drained} agent(s) and read them until a rebalance drains them",
            before.0, o.agents
        ),
        std::cmp::Ordering::Equal => {
            format!("online.agents back to {}: draining the {drained} agent(s) only read meanwhile", o.agents)
        }
    })
}

/// A rebalance of `o`'s owners, draining the agents read beyond them.
fn pending(o: &OnlineStatus, job: String) -> RebalanceStatus {
    RebalanceStatus { job, state: PENDING.into(), agents: o.agents, drain: o.reading - o.agents, message: None }
}

/// Whether `r` leaves the agents as `o` has them: its owners, and it drains exactly the
/// agents read beyond them (a newer scale-up may read more by the time it ends).
fn settles(r: &RebalanceStatus, o: &OnlineStatus) -> bool {
    r.agents == o.agents && r.drain == o.reading - o.agents
}

/// Agent pods to run: the agents read, and until every gateway pod has stopped reading the
/// ones leaving, as many as run now.
pub fn running(o: &OnlineStatus, gateway_current: bool, live_running: i32) -> i32 {
    if gateway_current {
        o.reading
    } else {
        o.reading.max(live_running)
    }
}

/// The arguments of `d`'s (the gateway's) container.
fn container_args(d: &Deployment) -> Option<&[String]> {
    let pod = d.spec.as_ref().and_then(|s| s.template.spec.as_ref());
    pod.and_then(|p| p.containers.first()).and_then(|c| c.args.as_deref())
}

/// Whether `d` is a gateway from before agents had names: it found them by `--agents-dns`.
fn finds_agents_by_dns(d: &Deployment) -> bool {
    container_args(d).is_some_and(|a| a.iter().any(|x| x == "--agents-dns"))
}

/// Whether `d` runs `args` on every pod: the spec applied, observed and rolled out.
pub fn rolled_out(d: &Deployment, args: &[String]) -> bool {
    let same = container_args(d).is_some_and(|a| a == args);
    let want = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let Some(s) = d.status.as_ref() else { return false };
    same && s.observed_generation >= d.metadata.generation
        && s.updated_replicas.unwrap_or(0) >= want
        && s.replicas.unwrap_or(0) == want
        && s.available_replicas.unwrap_or(0) >= want
}

fn job_name(mi: &MatchingIndex, o: &OnlineStatus) -> String {
    let base: String = mi.name_any().chars().take(40).collect();
    let key = format!("{}/{:?}/{}/{}", mi.uid().unwrap_or_default(), mi.metadata.generation, o.agents, o.reading);
    format!(
        "{}-rebalance-{:010x}",
        base.trim_end_matches('-'),
        xxhash_rust::xxh3::xxh3_64(key.as_bytes()) & 0xff_ffff_ffff
    )
}

/// Advances a change of the agent set and runs its rebalance Job; returns the agents the
/// gateways use and how many run, and whether a change is under way.
pub async fn step(
    mi: &MatchingIndex,
    ix: &Indexer,
    ctx: &Context,
    st: &mut MatchingIndexStatus,
) -> Result<(AgentSet, bool)> {
    let Some(spec) = mi.spec.online.as_ref().map(|o| o.agents.max(1)) else {
        st.online = None;
        return Ok((AgentSet::steady(mi), false));
    };
    let ns = mi.namespace().unwrap_or_default();
    let name = mi.name_any();
    let gateway = Api::<Deployment>::namespaced(ctx.client.clone(), &ns)
        .get_opt(&format!("{name}-gateway"))
        .await
        .map_err(Error::reading(format!("Deployment {ns}/{name}-gateway")))?;
    let sts = Api::<StatefulSet>::namespaced(ctx.client.clone(), &ns)
        .get_opt(&format!("{name}-agent"))
        .await
        .map_err(Error::reading(format!("StatefulSet {ns}/{name}-agent")))?;
    let mut o = st.online.clone().unwrap_or_else(|| {
        let mut o = OnlineStatus { agents: spec, reading: spec, rebalance: None };
        // An online path from before this status existed placed objects by the agents' IPs
        // (its gateway found them by DNS): one rebalance puts them where owners by name are.
        // Not the missing status itself: a new MatchingIndex's first status write may not be
        // visible yet to the next reconcile, beside the gateway that reconcile created.
        if gateway.as_ref().is_some_and(finds_agents_by_dns) {
            o.rebalance = Some(pending(&o, job_name(mi, &o)));
        }
        o
    });
    let set = |o: &OnlineStatus, running: i32| AgentSet { owners: o.agents, reading: o.reading, running };
    let current =
        |o: &OnlineStatus| gateway.as_ref().is_some_and(|d| rolled_out(d, &online::gateway_args(mi, set(o, 0))));
    let live = Live {
        gateway_current: current(&o),
        agents_ready: sts.as_ref().and_then(|s| s.status.as_ref()).and_then(|s| s.ready_replicas).unwrap_or(0),
        agents_running: sts.as_ref().and_then(|s| s.spec.as_ref()).and_then(|s| s.replicas).unwrap_or(0),
    };
    let previous = o.rebalance.clone();
    if let Some(what) = advance(spec, &mut o, live, |o| job_name(mi, o)) {
        ctx.event(mi, false, "AgentsChanging", "Scale", what).await;
    }
    let superseded = |p: &RebalanceStatus| p.state == RUNNING && o.rebalance.as_ref().is_some_and(|r| r.job != p.job);
    if let Some(old) = previous.filter(superseded) {
        // A newer owner set supersedes it: its moves would fight the new owners'.
        let jobs: Api<Job> = Api::namespaced(ctx.client.clone(), &ns);
        if let Err(e) = jobs.delete(&old.job, &DeleteParams::background()).await {
            tracing::warn!(job = %old.job, error = %e, "cannot stop a superseded rebalance Job");
        }
    }
    if let Some(r) = o.rebalance.clone().filter(|r| r.state != SUCCEEDED) {
        if current(&o) || r.state != PENDING {
            let r = run_job(mi, ix, ctx, r).await?;
            if r.state == SUCCEEDED && settles(&r, &o) {
                o.reading = o.agents;
            }
            o.rebalance = Some(r);
        }
    }
    let agents = set(&o, running(&o, current(&o), live.agents_running));
    let changing = spec != o.agents
        || o.reading != o.agents
        || agents.running != o.reading
        || o.rebalance.as_ref().is_some_and(|r| r.state == PENDING || r.state == RUNNING);
    st.online = Some(o);
    Ok((agents, changing))
}

/// Creates the rebalance Job (again, if it is gone) or reads how it went.
async fn run_job(mi: &MatchingIndex, ix: &Indexer, ctx: &Context, mut r: RebalanceStatus) -> Result<RebalanceStatus> {
    let set = AgentSet { owners: r.agents, reading: r.agents + r.drain, running: 0 };
    let ns = mi.namespace().unwrap_or_default();
    let api: Api<Job> = Api::namespaced(ctx.client.clone(), &ns);
    let name = r.job.clone();
    let Some(job) = api.get_opt(&name).await.map_err(Error::reading(format!("Job {ns}/{name}")))? else {
        let job = online::rebalance_job(mi, ix, &ctx.defaults, name.clone(), set);
        apply(&api, &name, &job).await.map_err(|source| Error::Build { job: name.clone(), source })?;
        let what = format!("Job {name}: {} owners, {} agents drained", set.owners, set.reading - set.owners);
        ctx.event(mi, false, "RebalanceStarted", "Rebalance", what).await;
        r.state = RUNNING.into();
        return Ok(r);
    };
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    match jobs::state(&job) {
        JobState::Running => r.state = RUNNING.into(),
        JobState::Succeeded => {
            let report = jobs::Reports::read(&pods, &name).await?.json();
            let message = report.as_ref().map_or_else(|| "succeeded without a report".into(), describe);
            if r.state != SUCCEEDED {
                ctx.event(mi, false, "Rebalanced", "Rebalance", format!("Job {name}: {message}")).await;
            }
            (r.state, r.message) = (SUCCEEDED.into(), Some(message));
        }
        JobState::Failed(why) => {
            let report = jobs::Reports::read(&pods, &name).await?.json();
            let message = report.and_then(|v| v["error"].as_str().map(String::from)).unwrap_or(why);
            if r.state != FAILED {
                let note = format!("Job {name} failed: {message}; it runs again once the Job is deleted");
                ctx.event(mi, true, "RebalanceFailed", "Rebalance", note).await;
            }
            (r.state, r.message) = (FAILED.into(), Some(message));
        }
    }
    Ok(r)
}

/// A rebalance report in one line.
fn describe(v: &serde_json::Value) -> String {
    let n = |k: &str| v[k].as_u64().unwrap_or(0);
    format!(
        "{} objects on {} agents ({} drained): {} copies written, {} removed",
        n("objects"),
        n("agents"),
        n("drained"),
        n("copied"),
        n("removed")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(agents: i32, reading: i32) -> OnlineStatus {
        OnlineStatus { agents, reading, rebalance: None }
    }
    const READY: Live = Live { gateway_current: true, agents_ready: 9, agents_running: 9 };
    const ROLLING: Live = Live { gateway_current: false, agents_ready: 9, agents_running: 9 };
    fn name(o: &OnlineStatus) -> String {
        format!("job-{}-{}", o.agents, o.reading)
    }

    #[test]
    fn scaling_up_reads_first_then_owns_then_rebalances() {
        let mut o = status(3, 3);
        assert!(advance(4, &mut o, READY, name).is_some());
        assert_eq!((o.agents, o.reading, o.rebalance.is_none()), (3, 4, true), "read the new agent first");
        // Not before every gateway pod reads it and it is ready.
        assert!(advance(4, &mut o, ROLLING, name).is_none());
        assert!(advance(4, &mut o, Live { agents_ready: 3, ..READY }, name).is_none());
        assert_eq!(o.agents, 3);
        assert!(advance(4, &mut o, READY, name).is_some());
        let r = o.rebalance.clone().unwrap();
        assert_eq!((o.agents, o.reading, r.state.as_str(), r.agents, r.drain), (4, 4, PENDING, 4, 0));
        assert_eq!(r.job, "job-4-4");
        assert!(advance(4, &mut o, READY, name).is_none(), "nothing more to decide");
        assert_eq!(running(&o, true, 3), 4);
    }

    #[test]
    fn scaling_down_stops_writes_first_and_keeps_the_pods_until_gateways_stop_reading() {
        let mut o = status(4, 4);
        assert!(advance(3, &mut o, ROLLING, name).is_some(), "owners shrink at once");
        let r = o.rebalance.clone().unwrap();
        assert_eq!((o.agents, o.reading, r.agents, r.drain, r.job.as_str()), (3, 4, 3, 1, "job-3-4"));
        assert_eq!(running(&o, false, 4), 4);
        // The drain succeeded (step sets reading to the owners): the fourth pod runs until
        // every gateway pod has stopped reading it.
        o.reading = 3;
        assert_eq!(running(&o, false, 4), 4);
        assert_eq!(running(&o, true, 4), 3);
    }

    #[test]
    fn a_reversal_mid_scale_up_drains_the_agents_that_were_only_read() {
        let mut o = status(3, 3);
        advance(5, &mut o, READY, name);
        assert_eq!((o.agents, o.reading), (3, 5));
        assert!(advance(3, &mut o, READY, name).is_some());
        let r = o.rebalance.clone().unwrap();
        assert_eq!((r.agents, r.drain), (3, 2));
        // Once it is pending for this set nothing is decided again.
        assert!(advance(3, &mut o, READY, name).is_none());
    }

    #[test]
    fn a_scale_down_during_a_scale_up_supersedes_its_rebalance() {
        let mut o = status(3, 3);
        advance(4, &mut o, READY, name);
        advance(4, &mut o, READY, name);
        assert_eq!(o.rebalance.as_ref().unwrap().job, "job-4-4");
        advance(2, &mut o, ROLLING, name);
        let r = o.rebalance.unwrap();
        assert_eq!((r.job.as_str(), r.agents, r.drain), ("job-2-4", 2, 2));
    }

    #[test]
    fn rolled_out_needs_the_args_on_every_pod() {
        let args = vec!["filter".to_string(), "--agents".into(), "a:1".into()];
        let d = |gen: i64, observed: i64, updated: i32, total: i32, args: &[String]| -> Deployment {
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": "g", "generation": gen},
                "spec": {"replicas": 2, "selector": {}, "template": {"spec": {"containers": [{"name": "gateway", "args": args}]}}},
                "status": {"observedGeneration": observed, "updatedReplicas": updated, "replicas": total, "availableReplicas": total}
            }))
            .unwrap()
        };
        assert!(rolled_out(&d(3, 3, 2, 2, &args), &args));
        assert!(!rolled_out(&d(3, 2, 2, 2, &args), &args), "not yet observed");
        assert!(!rolled_out(&d(3, 3, 1, 3, &args), &args), "an old pod still runs");
        assert!(!rolled_out(&d(3, 3, 2, 2, &args[..2]), &args), "other arguments");
    }

    #[test]
    fn only_a_gateway_finding_agents_by_dns_is_from_before_agent_names() {
        let d = |args: &[&str]| -> Deployment {
            serde_json::from_value(serde_json::json!({
                "spec": {"selector": {}, "template": {"spec": {"containers": [{"name": "gateway", "args": args}]}}}
            }))
            .unwrap()
        };
        assert!(finds_agents_by_dns(&d(&["filter", "--agents-dns", "t-agent.ns.svc:8081"])));
        assert!(!finds_agents_by_dns(&d(&["filter", "--agents", "t-agent-0.t-agent.ns.svc:8081"])));
    }

    #[test]
    fn reports_read_as_one_line() {
        let v = serde_json::json!({"agents": 4, "drained": 1, "objects": 60, "done": 60, "copied": 12, "removed": 12});
        assert_eq!(describe(&v), "60 objects on 4 agents (1 drained): 12 copies written, 12 removed");
    }
}
