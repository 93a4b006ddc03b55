//! Leader election on a coordination.k8s.io Lease: one replica acts, the others wait and take
//! over when the holder stops renewing (or releases the lease on shutdown).

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ObjectMeta, PostParams};
use kube::Client;

pub struct Elector {
    api: Api<Lease>,
    name: String,
    identity: String,
    duration: Duration,
}

#[derive(Debug, PartialEq)]
enum Attempt {
    Acquired,
    HeldBy(String),
}

impl Elector {
    pub fn new(client: Client, namespace: &str, name: &str, identity: &str, duration: Duration) -> Elector {
        Elector { api: Api::namespaced(client, namespace), name: name.into(), identity: identity.into(), duration }
    }

    /// Blocks until this process holds the lease.
    pub async fn acquire(&self) -> kube::Result<()> {
        let mut last_holder = None;
        loop {
            match self.try_acquire().await {
                Ok(Attempt::Acquired) => {
                    tracing::info!(lease = %self.name, identity = %self.identity, "became leader");
                    return Ok(());
                }
                Ok(Attempt::HeldBy(h)) => {
                    if last_holder.as_ref() != Some(&h) {
                        tracing::info!(lease = %self.name, holder = %h, "waiting for leadership");
                        last_holder = Some(h);
                    }
                }
                Err(e) => tracing::warn!(error = %e, "leader election attempt failed"),
            }
            tokio::time::sleep(self.duration / 3).await;
        }
    }

    /// Renews the lease until renewal fails or another holder is seen; returns then.
    pub async fn hold(&self) {
        loop {
            tokio::time::sleep(self.duration / 3).await;
            match self.try_acquire().await {
                Ok(Attempt::Acquired) => {}
                Ok(Attempt::HeldBy(h)) => {
                    tracing::error!(holder = %h, "lost leadership");
                    return;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot renew lease");
                    if !self.still_valid().await {
                        return;
                    }
                }
            }
        }
    }

    /// Gives the lease up so a standby takes over at once.
    pub async fn release(&self) {
        if let Ok(Some(mut lease)) = self.api.get_opt(&self.name).await {
            let spec = lease.spec.get_or_insert_with(Default::default);
            if spec.holder_identity.as_deref() == Some(&self.identity) {
                spec.holder_identity = None;
                spec.renew_time = None;
                if self.api.replace(&self.name, &PostParams::default(), &lease).await.is_ok() {
                    tracing::info!("released leadership");
                }
            }
        }
    }

    async fn still_valid(&self) -> bool {
        matches!(self.api.get_opt(&self.name).await, Ok(Some(l)) if l.spec.as_ref().is_some_and(|s| s.holder_identity.as_deref() == Some(&self.identity) && !expired(s, self.duration)))
    }

    async fn try_acquire(&self) -> kube::Result<Attempt> {
        let now = MicroTime(Timestamp::now());
        let secs = self.duration.as_secs().max(1) as i32;
        match self.api.get_opt(&self.name).await? {
            None => {
                let lease = Lease {
                    metadata: ObjectMeta { name: Some(self.name.clone()), ..Default::default() },
                    spec: Some(LeaseSpec {
                        holder_identity: Some(self.identity.clone()),
                        lease_duration_seconds: Some(secs),
                        acquire_time: Some(now.clone()),
                        renew_time: Some(now),
                        lease_transitions: Some(0),
                        ..Default::default()
                    }),
                };
                match self.api.create(&PostParams::default(), &lease).await {
                    Ok(_) => Ok(Attempt::Acquired),
                    Err(kube::Error::Api(e)) if e.code == 409 => Ok(Attempt::HeldBy("(racing)".into())),
                    Err(e) => Err(e),
                }
            }
            Some(mut lease) => {
                let spec = lease.spec.get_or_insert_with(Default::default);
                let holder = spec.holder_identity.clone().unwrap_or_default();
                let mine = holder == self.identity;
                if !mine && !holder.is_empty() && !expired(spec, self.duration) {
                    return Ok(Attempt::HeldBy(holder));
                }
                if !mine {
                    spec.acquire_time = Some(now.clone());
                    spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
                }
                spec.holder_identity = Some(self.identity.clone());
                spec.lease_duration_seconds = Some(secs);
                spec.renew_time = Some(now);
                // resourceVersion makes this a compare-and-swap: a concurrent taker gets 409.
                match self.api.replace(&self.name, &PostParams::default(), &lease).await {
                    Ok(_) => Ok(Attempt::Acquired),
                    Err(kube::Error::Api(e)) if e.code == 409 => Ok(Attempt::HeldBy("(racing)".into())),
                    Err(e) => Err(e),
                }
            }
        }
    }
}

fn expired(spec: &LeaseSpec, default: Duration) -> bool {
    let Some(renew) = &spec.renew_time else { return true };
    let dur = spec.lease_duration_seconds.map(|s| s as i64).unwrap_or(default.as_secs() as i64);
    Timestamp::now().as_second() > renew.0.as_second() + dur
}
