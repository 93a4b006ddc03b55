//! Checks the schema cannot express (durations, names, cross-field rules). A failure becomes a
//! `SpecValid=False` condition with this message, never a crash loop.

use std::time::Duration;

use crate::crd::{IndexerSpec, MatchingIndex, S3Storage};

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidSpec(pub String);

pub fn duration(field: &str, v: &str) -> Result<Duration, InvalidSpec> {
    let d = humantime::parse_duration(v).map_err(|e| InvalidSpec(format!("{field}: {v:?} is not a duration ({e})")))?;
    if d.is_zero() {
        return Err(InvalidSpec(format!("{field} must be positive")));
    }
    Ok(d)
}

/// Relative path inside a claim, without `..`.
fn claim_path(field: &str, p: &str) -> Result<(), InvalidSpec> {
    if p.is_empty() || p.starts_with('/') || p.split('/').any(|c| c == "..") {
        return Err(InvalidSpec(format!("{field} must be a relative path inside the claim without '..', got {p:?}")));
    }
    Ok(())
}

pub fn indexer(spec: &IndexerSpec) -> Result<Duration, InvalidSpec> {
    let s = &spec.storage;
    if [s.existing_claim.is_some(), s.size.is_some(), s.s3.is_some()].iter().filter(|x| **x).count() != 1 {
        return Err(InvalidSpec("set exactly one of storage.existingClaim, storage.size and storage.s3".into()));
    }
    if let Some(s3) = &s.s3 {
        object_storage(s3)?;
    }
    if spec.max_concurrent_builds < 1 {
        return Err(InvalidSpec("maxConcurrentBuilds must be at least 1".into()));
    }
    duration("buildTimeout", &spec.build_timeout)
}

/// The settings the worker would refuse, refused here with the field's name.
fn object_storage(s3: &S3Storage) -> Result<(), InvalidSpec> {
    let bucket = s3.url.strip_prefix("s3://").map(|r| r.split('/').next().unwrap_or_default());
    if bucket.is_none_or(str::is_empty) {
        return Err(InvalidSpec(format!("storage.s3.url must be s3://bucket[/prefix], got {:?}", s3.url)));
    }
    if let Some(e) = &s3.endpoint {
        match e.split_once("://").map(|(scheme, _)| scheme) {
            Some("https") => {}
            Some("http") if s3.allow_http => {}
            Some("http") => {
                return Err(InvalidSpec(format!("storage.s3.endpoint {e:?} is plain http: set storage.s3.allowHttp")))
            }
            _ => return Err(InvalidSpec(format!("storage.s3.endpoint must be an http(s):// URL, got {e:?}"))),
        }
    }
    Ok(())
}

/// Rules between a MatchingIndex and its Indexer: on object storage nothing is mounted at
/// the storage path, so a file source names its own claim.
pub fn on_indexer(mi: &MatchingIndex, ix: &IndexerSpec) -> Result<(), InvalidSpec> {
    if ix.storage.s3.is_some() && mi.spec.source.path.is_some() && mi.spec.source.claim.is_none() {
        return Err(InvalidSpec(
            "the Indexer stores snapshots in object storage: set source.claim to the claim holding source.path".into(),
        ));
    }
    if mi.spec.matcher.pool {
        let Some(pool) = &ix.pool else {
            return Err(InvalidSpec(format!(
                "matcher.pool: Indexer {:?} has no spec.pool to serve the label",
                mi.spec.indexer_ref.name
            )));
        };
        if pool.redis != mi.spec.redis {
            return Err(InvalidSpec(format!(
                "matcher.pool: the label's redis must be the pool's (spec.pool.redis of Indexer {:?}): \
                 the pool's matchers read only that Redis",
                mi.spec.indexer_ref.name
            )));
        }
    }
    Ok(())
}

/// How often a valid MatchingIndex asks to be rebuilt and refreshed.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Intervals {
    pub rebuild: Option<Duration>,
    pub refresh: Option<Duration>,
}

pub fn matching_index(mi: &MatchingIndex) -> Result<Intervals, InvalidSpec> {
    let s = &mi.spec;
    let label = mi.label();
    if !kim_api::build::valid_label(&label) {
        return Err(InvalidSpec(format!("label {label:?} must be {}", kim_api::build::LABEL_RULE)));
    }
    match (&s.source.path, s.source.agents.unwrap_or(false)) {
        (Some(p), false) => claim_path("source.path", p)?,
        (None, true) => {
            if s.online.is_none() {
                return Err(InvalidSpec("source.agents needs spec.online".into()));
            }
            if s.descriptor.encoding != crate::crd::Encoding::F32 {
                return Err(InvalidSpec("source.agents holds f32 vectors: set descriptor.encoding to f32".into()));
            }
        }
        _ => return Err(InvalidSpec("set exactly one of source.path and source.agents: true".into())),
    }
    if let Some(ids) = &s.source.ids_path {
        claim_path("source.idsPath", ids)?;
    }
    if s.redis.url.is_some() == s.redis.secret_ref.is_some() {
        return Err(InvalidSpec("set exactly one of redis.url and redis.secretRef".into()));
    }
    if let Some(u) = &s.redis.url {
        let shown = kim_redis::redact(u);
        if !["redis://", "rediss://", "redis+sentinel://", "rediss+sentinel://"].iter().any(|p| u.starts_with(p)) {
            return Err(InvalidSpec(format!(
                "redis.url must start with redis://, rediss://, redis+sentinel:// or rediss+sentinel://, got {shown:?}"
            )));
        }
        if s.redis.tls.is_some() && !u.starts_with("rediss") {
            return Err(InvalidSpec(format!("redis.tls needs a rediss:// or rediss+sentinel:// URL, got {shown:?}")));
        }
    }
    if s.hnsw.ef_construction < s.hnsw.m {
        return Err(InvalidSpec(format!(
            "hnsw.efConstruction ({}) must be at least hnsw.m ({})",
            s.hnsw.ef_construction, s.hnsw.m
        )));
    }
    if !(1..=65_536).contains(&s.descriptor.dimensions)
        || s.descriptor.version < 0
        || s.descriptor.version > u32::MAX as i64
    {
        return Err(InvalidSpec("descriptor.dimensions must be 1..65536 and descriptor.version 0..2^32-1".into()));
    }
    if let Some(o) = &s.online {
        if o.agents < 1 || o.replicas < 1 || o.replicas > o.agents || o.gateway_replicas < 0 {
            return Err(InvalidSpec(format!(
                "online needs agents ≥ 1 and 1 ≤ replicas ≤ agents, got agents {} replicas {}",
                o.agents, o.replicas
            )));
        }
    }
    if !(1..=kim_api::shard::MAX_SHARDS as i32).contains(&s.shards) {
        return Err(InvalidSpec(format!("shards must be 1..{}, got {}", kim_api::shard::MAX_SHARDS, s.shards)));
    }
    if s.matcher.pool && (s.shards > 1 || s.matcher.autoscaling.is_some()) {
        return Err(InvalidSpec(
            "matcher.pool serves whole labels at the pool's size: it cannot be combined with shards > 1 or \
             matcher.autoscaling"
                .into(),
        ));
    }
    if let Some(a) = &s.matcher.autoscaling {
        if a.min_replicas < 1 || a.max_replicas < a.min_replicas || a.target_backlog < 1 {
            return Err(InvalidSpec(format!(
                "matcher.autoscaling needs 1 ≤ minReplicas ≤ maxReplicas and targetBacklog ≥ 1, got {}..{} and {}",
                a.min_replicas, a.max_replicas, a.target_backlog
            )));
        }
        duration("matcher.autoscaling.cooldown", &a.cooldown)?;
    }
    let mut refresh = None;
    if let Some(r) = &s.rebuild.refresh {
        let every = duration("rebuild.refresh.interval", &r.interval)?;
        let least = crate::reconcile::refresh::MIN_INTERVAL;
        if every < least {
            return Err(InvalidSpec(format!(
                "rebuild.refresh.interval must be at least {least:?}, got {:?}",
                r.interval
            )));
        }
        if !(r.max_tail > 0.0 && r.max_tail <= 1.0) {
            return Err(InvalidSpec(format!("rebuild.refresh.maxTail must be in (0, 1], got {}", r.max_tail)));
        }
        refresh = Some(every);
    }
    let rebuild = s.rebuild.interval.as_deref().map(|i| duration("rebuild.interval", i)).transpose()?;
    Ok(Intervals { rebuild, refresh })
}
