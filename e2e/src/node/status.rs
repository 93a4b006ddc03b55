//! The pod status a kubelet would report, built from what the harness knows about its
//! processes.

use serde_json::{json, Value};

pub fn now() -> String {
    k8s_openapi::jiff::Timestamp::now().to_string()
}

#[derive(Clone, Debug, PartialEq)]
pub enum State {
    Waiting { reason: String, message: String },
    Running { started_at: String },
    Terminated { exit_code: i32, reason: String, message: String, started_at: String, finished_at: String },
}

impl State {
    fn to_json(&self) -> Value {
        match self {
            State::Waiting { reason, message } => json!({"waiting": {"reason": reason, "message": message}}),
            State::Running { started_at } => json!({"running": {"startedAt": started_at}}),
            State::Terminated { exit_code, reason, message, started_at, finished_at } => {
                let mut t = json!({"exitCode": exit_code, "reason": reason, "startedAt": started_at, "finishedAt": finished_at});
                if !message.is_empty() {
                    t["message"] = json!(message);
                }
                json!({"terminated": t})
            }
        }
    }
}

/// One container as the harness last saw it.
#[derive(Clone, Debug, PartialEq)]
pub struct Container {
    pub name: String,
    pub image: String,
    pub state: State,
    pub last: Option<State>,
    pub ready: bool,
    pub restarts: i32,
}

/// The pod's phase and containers; `conditions_since` keeps transition times stable.
#[derive(Clone, Debug, PartialEq)]
pub struct PodView {
    pub phase: &'static str,
    pub start_time: String,
    pub containers: Vec<Container>,
    pub ready_since: String,
    pub message: Option<String>,
}

impl PodView {
    pub fn ready(&self) -> bool {
        self.phase == "Running" && self.containers.iter().all(|c| c.ready)
    }

    pub fn to_status(&self) -> Value {
        let ready = if self.ready() { "True" } else { "False" };
        let reason = if matches!(self.phase, "Succeeded" | "Failed") { "PodCompleted" } else { "ContainersNotReady" };
        let cond = |t: &str, s: &str, since: &str| {
            let mut c = json!({"type": t, "status": s, "lastProbeTime": null, "lastTransitionTime": since});
            if s == "False" {
                c["reason"] = json!(reason);
            }
            c
        };
        let statuses: Vec<Value> = self
            .containers
            .iter()
            .map(|c| {
                let mut s = json!({"name": c.name, "image": c.image, "imageID": "", "ready": c.ready, "restartCount": c.restarts,
                    "started": matches!(c.state, State::Running { .. }), "state": c.state.to_json()});
                if let Some(l) = &c.last {
                    s["lastState"] = l.to_json();
                }
                s
            })
            .collect();
        let mut st = json!({
            "phase": self.phase,
            "hostIP": "127.0.0.1", "hostIPs": [{"ip": "127.0.0.1"}],
            "podIP": "127.0.0.1", "podIPs": [{"ip": "127.0.0.1"}],
            "startTime": self.start_time,
            "conditions": [
                cond("PodReadyToStartContainers", "True", &self.start_time),
                cond("Initialized", "True", &self.start_time),
                cond("ContainersReady", ready, &self.ready_since),
                cond("Ready", ready, &self.ready_since),
                cond("PodScheduled", "True", &self.start_time),
            ],
            "containerStatuses": statuses,
        });
        if let Some(m) = &self.message {
            st["message"] = json!(m);
            st["reason"] = json!("HarnessError");
        }
        st
    }
}
