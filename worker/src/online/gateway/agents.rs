//! The gateway's calls to agents: to the owners of an id (writes, removes, reads by id) or to
//! every agent (searches, listings, index figures, flush), each bounded by the call timeout
//! and recorded in the agents' health.

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use futures::future::join_all;
use kim_proto::payload::v1::{object, remove, search, update, upsert};
use kim_proto::vald::v1::{
    object_client::ObjectClient, remove_client::RemoveClient, search_client::SearchClient, update_client::UpdateClient,
    upsert_client::UpsertClient,
};
use tonic::transport::Channel;
use tonic::{Code, Status};

use super::{agent_error, backend_error, sized, sort, with_timeout, Gateway};
use crate::online::limits::SearchPlan;

/// Whether an agent's error is its answer about the request (passed on to the caller)
/// rather than a failure to answer.
fn is_verdict(s: &Status) -> bool {
    matches!(s.code(), Code::NotFound | Code::AlreadyExists | Code::InvalidArgument | Code::FailedPrecondition)
}

/// The answers of several agents as one: every success, or else the first verdict (one
/// other than NOT_FOUND first: asked every agent, those that do not hold the id say NOT_FOUND
/// while a holder's ALREADY_EXISTS is the answer), or else the first failure.
pub(super) fn settle<T>(what: &str, answers: Vec<(String, Result<T, Status>)>) -> Result<Vec<T>, Status> {
    let mut oks = Vec::new();
    let mut verdict: Option<Status> = None;
    let mut failure = None;
    for (addr, r) in answers {
        match r {
            Ok(t) => oks.push(t),
            Err(s) if is_verdict(&s) => {
                if verdict.as_ref().is_none_or(|v| v.code() == Code::NotFound && s.code() != Code::NotFound) {
                    verdict = Some(Status::new(s.code(), format!("agent {addr}: {}", s.message())));
                }
            }
            Err(s) => {
                tracing::warn!(agent = %addr, code = ?s.code(), error = %s.message(), "{what} failed on an agent");
                failure.get_or_insert(backend_error("agent", &addr, s));
            }
        }
    }
    if !oks.is_empty() {
        return Ok(oks);
    }
    Err(verdict.or(failure).unwrap_or_else(|| Status::unavailable("no agents")))
}

/// One Location for the replicas that took a write.
fn location(id: String, locations: Vec<object::Location>) -> object::Location {
    let names: Vec<String> = locations.iter().map(|l| l.name.clone()).collect();
    object::Location { name: names.join(","), uuid: id, ips: locations.into_iter().flat_map(|l| l.ips).collect() }
}

impl Gateway {
    /// One agent call with the call timeout, recorded in the agent's health.
    async fn call<T, Fut>(&self, addr: &str, f: impl FnOnce(Channel) -> Fut) -> Result<T, Status>
    where
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let ch = self.pool.agent(addr)?;
        let limit = self.call_timeout;
        let r = match tokio::time::timeout(limit, f(ch)).await {
            Ok(r) => r,
            Err(_) => Err(Status::deadline_exceeded(format!("no answer within {limit:?}"))),
        };
        self.health.record(addr, r.as_ref().map(|_| ()));
        r.map(tonic::Response::into_inner)
    }

    /// `f` on each of `addrs` at once; answers in the order of `addrs`.
    async fn on_each<T, Fut>(&self, addrs: &[String], f: impl Fn(Channel) -> Fut) -> Vec<(String, Result<T, Status>)>
    where
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        join_all(addrs.iter().map(|a| async { (a.clone(), self.call(a, &f).await) })).await
    }

    /// The agents that own `id`; UNAVAILABLE when there are none.
    pub(super) fn owners(&self, id: &str) -> Result<Vec<String>, Status> {
        let owners = self.agents.owners(id, self.replicas);
        if owners.is_empty() {
            return Err(Status::unavailable("no agents"));
        }
        Ok(owners)
    }

    /// Every agent; UNAVAILABLE when there are none.
    pub(super) fn every(&self) -> Result<Vec<String>, Status> {
        let all = self.agents.all().to_vec();
        if all.is_empty() {
            return Err(Status::unavailable("no agents"));
        }
        Ok(all)
    }

    /// The agents that hold `id` now, every agent asked: after the agent set changed, an id
    /// may still sit on an agent that no longer owns it. An error if no agent answered.
    pub(super) async fn holders(&self, id: &str) -> Result<Vec<String>, Status> {
        let m = self.max_message;
        let req = object::Id { id: id.to_string() };
        let answers = self
            .on_each(&self.every()?, |ch| {
                let r = req.clone();
                async move { sized!(ObjectClient::new(ch), m).exists(r).await }
            })
            .await;
        let (mut held, mut answered, mut failure) = (Vec::new(), false, None);
        for (addr, r) in answers {
            match r {
                Ok(_) => {
                    held.push(addr);
                    answered = true;
                }
                Err(s) if s.code() == Code::NotFound => answered = true,
                Err(s) => {
                    tracing::warn!(agent = %addr, code = ?s.code(), error = %s.message(), "exists failed on an agent");
                    failure.get_or_insert(backend_error("agent", &addr, s));
                }
            }
        }
        if !answered {
            return Err(failure.unwrap_or_else(|| Status::unavailable("no agents")));
        }
        Ok(held)
    }

    /// Whether any agent holds `id` (strict inserts and updates see every copy, wherever the
    /// agent set put it).
    pub(super) async fn exists(&self, id: &str) -> Result<bool, Status> {
        Ok(!self.holders(id).await?.is_empty())
    }

    /// Writes the vector to every owner; succeeds when at least one acknowledged (the
    /// others are logged and repaired by the next write of that id). Copies on agents that
    /// are not owners (`holders` minus the owners: the id's owners changed with the agent set)
    /// are removed after, so no agent keeps serving the old vector.
    pub(super) async fn put(&self, v: object::Vector, holders: &[String]) -> Result<object::Location, Status> {
        let m = self.max_message;
        let owners = self.owners(&v.id)?;
        let req = upsert::Request {
            config: Some(upsert::Config { timestamp: v.timestamp, ..Default::default() }),
            vector: Some(v.clone()),
        };
        let answers = self
            .on_each(&owners, |ch| {
                let r = req.clone();
                async move { sized!(UpsertClient::new(ch), m).upsert(r).await }
            })
            .await;
        let written = settle("replica write", answers).map(|ls| location(v.id.clone(), ls))?;
        let stale: Vec<String> = holders.iter().filter(|h| !owners.contains(h)).cloned().collect();
        if !stale.is_empty() {
            let r = remove::Request { id: Some(object::Id { id: v.id.clone() }), config: None };
            for (addr, res) in self
                .on_each(&stale, |ch| {
                    let r = r.clone();
                    async move { sized!(RemoveClient::new(ch), m).remove(r).await }
                })
                .await
            {
                match res {
                    Ok(_) => {
                        tracing::info!(agent = %addr, id = %v.id, "removed the copy of an agent that no longer owns the id")
                    }
                    Err(s) if s.code() == Code::NotFound => {}
                    Err(s) => {
                        tracing::warn!(agent = %addr, id = %v.id, error = %s.message(), "cannot remove a stale copy")
                    }
                }
            }
        }
        Ok(written)
    }

    /// Removes `id` from every agent (a former owner may still hold it): OK when one removed
    /// it, NOT_FOUND when none held it.
    pub(super) async fn remove(&self, r: remove::Request) -> Result<object::Location, Status> {
        let id = r.id.as_ref().map(|i| i.id.clone()).unwrap_or_default();
        let m = self.max_message;
        let answers = self
            .on_each(&self.every()?, |ch| {
                let r = r.clone();
                async move { sized!(RemoveClient::new(ch), m).remove(r).await }
            })
            .await;
        settle("remove", answers).map(|ls| location(id, ls))
    }

    /// RemoveByTimestamp on every agent; the ids removed anywhere (NOT_FOUND if none).
    pub(super) async fn remove_by_timestamp(&self, r: remove::TimestampRequest) -> Result<object::Locations, Status> {
        let m = self.max_message;
        let answers = self
            .on_each(&self.every()?, |ch| {
                let r = r.clone();
                async move { sized!(RemoveClient::new(ch), m).remove_by_timestamp(r).await }
            })
            .await;
        if let Some((addr, s)) =
            answers.iter().find_map(|(a, r)| r.as_ref().err().filter(|s| !is_verdict(s)).map(|s| (a, s)))
        {
            // Some agents may have removed their matches: the caller should retry.
            return Err(backend_error("agent", addr, s.clone()));
        }
        let mut by_id: HashMap<String, Vec<object::Location>> = HashMap::new();
        for l in settle("remove by timestamp", answers)?.into_iter().flat_map(|ls| ls.locations) {
            by_id.entry(l.uuid.clone()).or_default().push(l);
        }
        let mut locations: Vec<object::Location> = by_id.into_iter().map(|(id, ls)| location(id, ls)).collect();
        locations.sort_by(|a, b| a.uuid.cmp(&b.uuid));
        Ok(object::Locations { locations })
    }

    /// UpdateTimestamp wherever the id is held.
    pub(super) async fn update_timestamp(&self, r: update::TimestampRequest) -> Result<object::Location, Status> {
        let m = self.max_message;
        let answers = self
            .on_each(&self.every()?, |ch| {
                let r = r.clone();
                async move { sized!(UpdateClient::new(ch), m).update_timestamp(r).await }
            })
            .await;
        settle("timestamp update", answers).map(|ls| location(r.id, ls))
    }

    /// The newest version of `id` on any agent.
    pub(super) async fn get(&self, id: &str) -> Result<object::Vector, Status> {
        let m = self.max_message;
        let req = object::VectorRequest { id: Some(object::Id { id: id.to_string() }), filters: None };
        let answers = self
            .on_each(&self.every()?, |ch| {
                let r = req.clone();
                async move { sized!(ObjectClient::new(ch), m).get_object(r).await }
            })
            .await;
        let found = settle("get", answers)?;
        Ok(found.into_iter().max_by_key(|v| v.timestamp).expect("settle returns at least one answer"))
    }

    /// Every object of every agent, each id once (the newest version), sorted by id. The
    /// gateway holds the merged listing while it is sent.
    pub(super) async fn list(&self) -> Result<Vec<object::Vector>, Status> {
        let m = self.max_message;
        let lists = join_all(self.every()?.into_iter().map(|addr| async move {
            let ch = self.pool.agent(&addr)?;
            let r = crate::online::list_objects(sized!(ObjectClient::new(ch), m)).await;
            self.health.record(&addr, r.as_ref().map(|_| ()));
            r.map_err(|s| backend_error("agent", &addr, s))
        }))
        .await;
        let mut merged: HashMap<String, object::Vector> = HashMap::new();
        for v in lists.into_iter().collect::<Result<Vec<_>, _>>()?.into_iter().flatten() {
            if merged.get(&v.id).is_none_or(|o| v.timestamp > o.timestamp) {
                merged.insert(v.id.clone(), v);
            }
        }
        let mut out: Vec<object::Vector> = merged.into_values().collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    /// Searches every agent and merges: best distance per id, closest first, at most `num`.
    /// Agents get 90 % of `budget`, so one that stops answering costs its results, not the
    /// search; agents last seen unreachable get only the probe timeout, so a partitioned one
    /// costs little per search and one that came back is answered from at once. Each agent
    /// is asked for `plan.per_agent` results (`ratio`) with no minimum: `min_num` applies to
    /// the merged answer. `exact` runs LinearSearch on the agents.
    pub(super) async fn search_agents(
        &self,
        vector: Vec<f32>,
        cfg: &search::Config,
        plan: &SearchPlan,
        budget: Duration,
        exact: bool,
    ) -> Result<Vec<object::Distance>, Status> {
        let agents = self.every()?;
        let budget = budget.mul_f64(0.9);
        let agent_cfg = search::Config {
            num: plan.per_agent as u32,
            min_num: 0,
            ratio: None,
            egress_filters: None,
            ingress_filters: None,
            ..cfg.clone()
        };
        let calls = agents.iter().map(|addr| {
            let req = search::Request { vector: vector.clone(), config: Some(agent_cfg.clone()) };
            let budget = if self.health.is_reachable(addr) { budget } else { budget.min(self.probe_timeout) };
            async move {
                let mut c = sized!(SearchClient::new(self.pool.agent(addr)?), self.max_message);
                let req = with_timeout(req, budget);
                let call = async {
                    if exact {
                        c.linear_search(req).await
                    } else {
                        c.search(req).await
                    }
                };
                let r = match tokio::time::timeout(budget, call).await {
                    Ok(r) => r,
                    Err(_) => Err(Status::deadline_exceeded(format!("no answer within {budget:?}"))),
                };
                self.health.record(addr, r.as_ref().map(|_| ()));
                r.map(|r| r.into_inner().results).map_err(|s| agent_error(addr, s))
            }
        });
        let mut best: HashMap<String, f32> = HashMap::new();
        let mut failures = Vec::new();
        for r in join_all(calls).await {
            match r {
                Ok(results) => {
                    for d in results {
                        let e = best.entry(d.id).or_insert(d.distance);
                        *e = e.min(d.distance);
                    }
                }
                Err(s) => failures.push(s),
            }
        }
        // A request an agent finds invalid (e.g. a query of the wrong length) is the caller's.
        if let Some(i) = failures.iter().position(|s| s.code() == Code::InvalidArgument) {
            return Err(failures.swap_remove(i));
        }
        if failures.len() == agents.len() {
            return Err(failures.swap_remove(0));
        }
        for f in &failures {
            tracing::warn!(request_id = %cfg.request_id, error = %f.message(), "agent search failed; answering from the others");
        }
        let mut merged: Vec<object::Distance> =
            best.into_iter().map(|(id, distance)| object::Distance { id, distance }).collect();
        sort(&mut merged);
        merged.truncate(plan.num);
        Ok(merged)
    }

    /// `f` on every agent; every agent must answer (index figures, flush).
    pub(super) async fn all_agents<T, Fut>(&self, f: impl Fn(Channel) -> Fut) -> Result<Vec<(String, T)>, Status>
    where
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        self.on_each(&self.every()?, f)
            .await
            .into_iter()
            .map(|(a, r)| r.map(|t| (a.clone(), t)).map_err(|s| backend_error("agent", &a, s)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_holders_verdict_beats_the_not_found_of_agents_without_the_id() {
        let nf = || Err::<(), _>(Status::not_found("no such object"));
        let answers =
            vec![("a".to_string(), nf()), ("b".into(), Err(Status::already_exists("not newer"))), ("c".into(), nf())];
        assert_eq!(settle("t", answers).unwrap_err().code(), Code::AlreadyExists);
        assert_eq!(settle("t", vec![("a".to_string(), nf()), ("b".into(), nf())]).unwrap_err().code(), Code::NotFound);
        assert_eq!(settle("t", vec![("a".to_string(), nf()), ("b".into(), Ok(()))]).unwrap().len(), 1);
    }
}
