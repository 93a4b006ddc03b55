//! Which agents the gateway can reach. Every agent call's outcome and a periodic probe
//! (vald.v1.Index/IndexInfo with a short deadline) update it; searches give agents marked
//! unreachable only the probe timeout, so a partitioned or stopped agent costs that instead
//! of every search's whole deadline. `/status` and `kim_gateway_agent_up` report it.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use kim_proto::payload::v1::Empty;
use kim_proto::vald::v1::index_client::IndexClient;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::gauge::ConstGauge;
use serde::Serialize;
use tonic::{Code, Status};

use super::placement::Agents;
use crate::online::pool::Pool;

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentStatus {
    pub address: String,
    pub reachable: bool,
    /// Unix seconds of the last change (or of the first observation).
    pub since: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Default)]
pub struct Health {
    agents: Mutex<BTreeMap<String, AgentStatus>>,
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Whether a failed call means the agent could not be reached (as opposed to an answer).
fn unreachable(s: &Status) -> bool {
    matches!(s.code(), Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown)
}

impl Health {
    /// Records a call's outcome: any answer, even an error status, means reachable.
    pub fn record(&self, addr: &str, outcome: Result<(), &Status>) {
        let reachable = !matches!(outcome, Err(s) if unreachable(s));
        let error = match outcome {
            Err(s) if !reachable => Some(format!("{:?}: {}", s.code(), s.message())),
            _ => None,
        };
        let mut m = self.agents.lock().unwrap();
        let prev = m.get(addr).map(|a| a.reachable);
        if prev != Some(reachable) {
            if prev.is_some() {
                tracing::warn!(agent = %addr, reachable, error = ?error, "agent reachability changed");
            }
            m.insert(addr.to_string(), AgentStatus { address: addr.to_string(), reachable, since: unix_now(), error });
        } else if let Some(a) = m.get_mut(addr) {
            a.error = error;
        }
    }

    /// False only for an agent last seen unreachable.
    pub fn is_reachable(&self, addr: &str) -> bool {
        self.agents.lock().unwrap().get(addr).is_none_or(|a| a.reachable)
    }

    /// The status of every agent in `current` (agents never called yet count as reachable).
    pub fn report(&self, current: &[String]) -> Vec<AgentStatus> {
        let m = self.agents.lock().unwrap();
        current
            .iter()
            .map(|a| {
                m.get(a).cloned().unwrap_or(AgentStatus {
                    address: a.clone(),
                    reachable: true,
                    since: unix_now(),
                    error: None,
                })
            })
            .collect()
    }

    /// Probes every agent each `every`, each with `timeout`. Runs until the process ends.
    pub async fn probe(self: Arc<Self>, agents: Arc<Agents>, pool: Arc<Pool>, every: Duration, timeout: Duration) {
        loop {
            let list = agents.all();
            let calls = list.iter().map(|addr| {
                let (pool, health) = (pool.clone(), self.clone());
                async move {
                    let r = match pool.agent(addr) {
                        Ok(ch) => {
                            let mut req = tonic::Request::new(Empty {});
                            req.set_timeout(timeout);
                            match tokio::time::timeout(timeout, IndexClient::new(ch).index_info(req)).await {
                                Ok(r) => r.map(|_| ()),
                                Err(_) => Err(Status::deadline_exceeded(format!("no answer within {timeout:?}"))),
                            }
                        }
                        Err(s) => Err(s),
                    };
                    health.record(addr, r.as_ref().map(|_| ()));
                }
            });
            futures::future::join_all(calls).await;
            tokio::time::sleep(every).await;
        }
    }
}

/// `kim_gateway_agent_up{agent}` (1 reachable, 0 not) and `kim_gateway_agents_unreachable`.
pub struct HealthCollector {
    pub health: Arc<Health>,
    pub agents: Arc<Agents>,
}

impl std::fmt::Debug for HealthCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HealthCollector")
    }
}

impl Collector for HealthCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let report = self.health.report(&self.agents.all());
        let down = report.iter().filter(|a| !a.reachable).count() as i64;
        let g = ConstGauge::new(down);
        g.encode(enc.encode_descriptor(
            "agents_unreachable",
            "Agents the last call or probe could not reach",
            None,
            g.metric_type(),
        )?)?;
        let mut family = enc.encode_descriptor(
            "agent_up",
            "1 if the agent answered the last call or probe, else 0",
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        for a in &report {
            let labels = [("agent", a.address.as_str())];
            ConstGauge::new(i64::from(a.reachable)).encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }
}
