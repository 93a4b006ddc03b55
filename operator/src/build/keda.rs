//! The KEDA ScaledObjects of a MatchingIndex with `matcher.autoscaling.keda`: KEDA's
//! redis-streams scaler on the matchers' consumer group lag, one per matcher Deployment (one per
//! shard of a split label, each on its shard's group).
//! Only the fields the operator sets are modelled; KEDA's own CRD validates the object.

use std::collections::BTreeMap;

use kube::{CustomResource, ResourceExt};
use serde::{Deserialize, Serialize};

use super::{labels, pod, shard_deployment_name, Shard};
use crate::crd::{AutoscalingSpec, MatchingIndex};

#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(group = "keda.sh", version = "v1alpha1", kind = "ScaledObject", namespaced, schema = "disabled")]
#[serde(rename_all = "camelCase")]
pub struct ScaledObjectSpec {
    pub scale_target_ref: ScaleTarget,
    pub min_replica_count: i32,
    pub max_replica_count: i32,
    /// Seconds after the last active trigger before scaling back to the minimum.
    pub cooldown_period: i32,
    /// Seconds between two readings of the trigger.
    pub polling_interval: i32,
    pub triggers: Vec<Trigger>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct ScaleTarget {
    /// A Deployment of this name in the same namespace.
    pub name: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct Trigger {
    #[serde(rename = "type")]
    pub type_: String,
    pub metadata: BTreeMap<String, String>,
}

/// The ScaledObject of the matchers of `shard`, named like their Deployment, for `mi` whose
/// Redis is at `address` (`host:port`). Credentials come from the matcher container's own
/// environment (`KIM_REDIS_USERNAME`, `KIM_REDIS_PASSWORD`).
pub fn scaled_object(mi: &MatchingIndex, a: &AutoscalingSpec, address: &str, shard: Shard) -> ScaledObject {
    let r = &mi.spec.redis;
    let prefix = r.key_prefix.clone().unwrap_or_default();
    let mut metadata = BTreeMap::from([
        ("address".to_string(), address.to_string()),
        ("stream".to_string(), kim_api::stream_key(&prefix, &mi.label())),
        ("consumerGroup".to_string(), shard.group()),
        ("lagCount".to_string(), a.target_backlog.to_string()),
    ]);
    if let Some(auth) = &r.auth {
        metadata.insert("passwordFromEnv".into(), "KIM_REDIS_PASSWORD".into());
        if !auth.username_key.is_empty() {
            metadata.insert("usernameFromEnv".into(), "KIM_REDIS_USERNAME".into());
        }
    }
    if r.tls.is_some() || r.url.as_deref().is_some_and(|u| u.starts_with("rediss")) {
        metadata.insert("enableTLS".into(), "true".into());
    }
    let cooldown = crate::validate::duration("autoscaling.cooldown", &a.cooldown).map_or(300, |d| d.as_secs());
    let name = shard_deployment_name(mi, shard);
    let mut obj = ScaledObject::new(
        &name,
        ScaledObjectSpec {
            scale_target_ref: ScaleTarget { name: name.clone() },
            min_replica_count: a.min_replicas,
            max_replica_count: a.max_replicas,
            cooldown_period: i32::try_from(cooldown).unwrap_or(i32::MAX),
            polling_interval: 15,
            triggers: vec![Trigger { type_: "redis-streams".into(), metadata }],
        },
    );
    obj.metadata = pod::meta(name, mi.namespace(), &labels(mi, "matcher"), Some(pod::owner_ref(mi)));
    obj
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::mi;

    #[test]
    fn targets_the_matcher_deployment_on_the_group_lag() {
        let mut m = mi("faces");
        m.spec.redis.key_prefix = Some("kim:".into());
        let a =
            AutoscalingSpec { min_replicas: 1, max_replicas: 5, target_backlog: 40, cooldown: "2m".into(), keda: true };
        let so = scaled_object(&m, &a, "redis.kim:6379", Shard::WHOLE);
        assert_eq!(so.name_any(), "faces-matcher");
        assert_eq!(so.spec.scale_target_ref.name, "faces-matcher");
        assert_eq!((so.spec.min_replica_count, so.spec.max_replica_count, so.spec.cooldown_period), (1, 5, 120));
        let t = &so.spec.triggers[0];
        assert_eq!(t.type_, "redis-streams");
        assert_eq!(t.metadata["stream"], "kim:faces");
        assert_eq!(t.metadata["consumerGroup"], "kim-matchers");
        assert_eq!(t.metadata["lagCount"], "40");
        assert_eq!(t.metadata["address"], "redis.kim:6379");
        assert!(!t.metadata.contains_key("passwordFromEnv"));
        let v = serde_json::to_value(&so).unwrap();
        assert_eq!(v["apiVersion"], "keda.sh/v1alpha1");
        assert_eq!(v["spec"]["triggers"][0]["type"], "redis-streams");

        // Shard 2 of 3: its own Deployment, on its own group.
        let so = scaled_object(&m, &a, "redis.kim:6379", Shard { index: 2, of: 3 });
        assert_eq!(
            (so.name_any(), so.spec.scale_target_ref.name.as_str()),
            ("faces-matcher-2-of-3".into(), "faces-matcher-2-of-3")
        );
        assert_eq!(so.spec.triggers[0].metadata["consumerGroup"], "kim-matchers-2-of-3");
        assert_eq!(so.spec.triggers[0].metadata["stream"], "kim:faces", "every shard reads the one stream");
    }
}
