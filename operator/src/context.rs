//! What every reconcile shares: the client, the operator's settings, metrics, and the lock that
//! makes build admission (count running builds, then start one) atomic within the leader.

use std::sync::Arc;

use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Client, Resource};
use tokio::sync::Mutex;

use crate::build::Defaults;
use crate::metrics::Metrics;

pub struct Context {
    pub client: Client,
    pub defaults: Defaults,
    pub metrics: Metrics,
    pub admission: Mutex<()>,
    reporter: Reporter,
}

impl Context {
    pub fn new(client: Client, defaults: Defaults, identity: &str) -> Arc<Context> {
        let reporter = Reporter { controller: crate::build::MANAGER.into(), instance: Some(identity.into()) };
        Arc::new(Context { client, defaults, metrics: Metrics::default(), admission: Mutex::new(()), reporter })
    }

    /// Records an Event on `obj`; failures to record are logged, never fatal.
    pub async fn event<K: Resource<DynamicType = ()>>(
        &self,
        obj: &K,
        warning: bool,
        reason: &str,
        action: &str,
        note: String,
    ) {
        let recorder = Recorder::new(self.client.clone(), self.reporter.clone());
        let ev = Event {
            type_: if warning { EventType::Warning } else { EventType::Normal },
            reason: reason.into(),
            note: Some(note),
            action: action.into(),
            secondary: None,
        };
        if let Err(e) = recorder.publish(&ev, &obj.object_ref(&())).await {
            tracing::warn!(error = %e, reason, "cannot record event");
        }
    }
}
