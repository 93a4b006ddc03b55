//! What every reconcile shares: the client, the operator's settings, metrics, the lock that
//! makes build admission (count running builds, then start one) atomic within the leader, and
//! the memory of which Events were already recorded.

use std::collections::HashMap;
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

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
    /// How long after a deletion the finalizer keeps trying to remove the label's Redis keys.
    pub cleanup_timeout: Duration,
    /// How often a MatchingIndex with backlog autoscaling reads its backlog.
    pub autoscale_interval: Duration,
    reporter: Reporter,
    /// Last note recorded per (object uid, reason): an Event is recorded once per change.
    recorded: StdMutex<HashMap<(String, String), String>>,
}

impl Context {
    /// `timing`: the cleanup timeout and the autoscaling interval.
    pub fn new(client: Client, defaults: Defaults, identity: &str, timing: (Duration, Duration)) -> Arc<Context> {
        let (cleanup_timeout, autoscale_interval) = timing;
        let reporter = Reporter { controller: crate::build::MANAGER.into(), instance: Some(identity.into()) };
        Arc::new(Context {
            client,
            defaults,
            metrics: Metrics::default(),
            admission: Mutex::new(()),
            cleanup_timeout,
            autoscale_interval,
            reporter,
            recorded: StdMutex::default(),
        })
    }

    /// Records an Event on `obj` unless the last one of this `reason` on it had the same note
    /// (reconciles triggered by the operator's own writes do not repeat Events). Failures to
    /// record are logged, never fatal.
    pub async fn event<K: Resource<DynamicType = ()>>(
        &self,
        obj: &K,
        warning: bool,
        reason: &str,
        action: &str,
        note: String,
    ) {
        let key = (obj.meta().uid.clone().unwrap_or_default(), reason.to_string());
        {
            let mut seen = self.recorded.lock().unwrap_or_else(|p| p.into_inner());
            if seen.get(&key) == Some(&note) {
                return;
            }
            seen.insert(key, note.clone());
        }
        let ev = Event {
            type_: if warning { EventType::Warning } else { EventType::Normal },
            reason: reason.into(),
            note: Some(note),
            action: action.into(),
            secondary: None,
        };
        // A Recorder per Event: a shared one would fold a new note of the same reason into the
        // first Event's series, showing the old note.
        let recorder = Recorder::new(self.client.clone(), self.reporter.clone());
        if let Err(e) = recorder.publish(&ev, &obj.object_ref(&())).await {
            tracing::warn!(error = %e, reason, "cannot record event");
        }
    }

    /// Forgets the Events recorded on an object that is gone.
    pub fn forget<K: Resource<DynamicType = ()>>(&self, obj: &K) {
        let uid = obj.meta().uid.clone().unwrap_or_default();
        self.recorded.lock().unwrap_or_else(|p| p.into_inner()).retain(|(u, _), _| *u != uid);
    }
}
