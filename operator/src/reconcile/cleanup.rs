//! Finalizer of a MatchingIndex: delete its children, its Redis keys and its files.
//!
//! Children are deleted explicitly by label (not only left to owner-reference garbage
//! collection) so nothing lingers even where no garbage collector runs. Files are removed by a
//! short Job that mounts the Indexer's claim, because the operator mounts no storage.
//! Annotate `kim.dev/skip-cleanup: "true"` to let a deletion through when Redis or the storage
//! is gone for good.

use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams, ListParams};
use kube::ResourceExt;

use super::jobs::{self, JobState};
use super::{apply, Error, Result};
use crate::build::{self, Children, LABEL_MI};
use crate::context::Context;
use crate::crd::{Indexer, MatchingIndex};

pub const FINALIZER: &str = "kim.dev/cleanup";
pub const SKIP_ANNOTATION: &str = "kim.dev/skip-cleanup";

/// Where a cleanup stands.
#[derive(Debug, Clone, PartialEq)]
pub enum Progress {
    /// Everything is removed: the finalizer may go.
    Done,
    /// A step waits for something (a Job, Redis); look again after this long.
    Wait(Duration),
}

/// How long a waiting step waits before it looks again.
const RETRY: Duration = Duration::from_secs(2);

pub async fn cleanup(mi: &MatchingIndex, ctx: &Context) -> Result<Progress> {
    let ns = mi.namespace().unwrap_or_default();
    let skip = mi.annotations().get(SKIP_ANNOTATION).is_some_and(|v| v == "true");
    delete_children(mi, ctx, &ns).await?;
    if !skip {
        if let Progress::Wait(d) = clean_redis(mi, ctx, &ns).await? {
            return Ok(Progress::Wait(d));
        }
        if let Progress::Wait(d) = clean_files(mi, ctx, &ns).await? {
            return Ok(Progress::Wait(d));
        }
    }
    ctx.event(
        mi,
        false,
        "CleanedUp",
        "Delete",
        format!("removed children{} of label {}", if skip { "" } else { ", Redis keys and files" }, mi.label()),
    )
    .await;
    Ok(Progress::Done)
}

/// Every child but the cleanup Job: the long-lived ones by wanting none of them, then the
/// build Jobs.
async fn delete_children(mi: &MatchingIndex, ctx: &Context, ns: &str) -> Result<()> {
    super::children::sync_all(&ctx.client, ns, &mi.name_any(), &Children::default()).await?;
    let jobs: Api<Job> = Api::namespaced(ctx.client.clone(), ns);
    let not_cleanup =
        ListParams::default().labels(&format!("{LABEL_MI}={},{}!=cleanup", mi.name_any(), build::LABEL_COMPONENT));
    jobs.delete_collection(&DeleteParams::background(), &not_cleanup).await.map_err(|source| Error::Prune {
        kind: "Job".into(),
        name: format!("build Jobs of {}", mi.name_any()),
        source,
    })?;
    Ok(())
}

/// The keys of one Secret in `ns` (read once however many keys are used).
struct SecretData {
    name: String,
    data: std::collections::BTreeMap<String, k8s_openapi::ByteString>,
}

impl SecretData {
    async fn get(ctx: &Context, ns: &str, name: &str) -> Result<SecretData> {
        let secret = Api::<Secret>::namespaced(ctx.client.clone(), ns)
            .get(name)
            .await
            .map_err(Error::reading(format!("Secret {ns}/{name}")))?;
        Ok(SecretData { name: name.to_string(), data: secret.data.unwrap_or_default() })
    }

    fn optional(&self, key: &str) -> Option<Vec<u8>> {
        self.data.get(key).map(|b| b.0.clone())
    }

    fn required(&self, key: &str) -> Result<Vec<u8>> {
        self.optional(key).ok_or_else(|| cleanup_error(format!("secret {} has no key {key}", self.name)))
    }
}

fn cleanup_error(message: String) -> Error {
    Error::Cleanup(message)
}

fn utf8(bytes: Vec<u8>, what: &str) -> Result<String> {
    String::from_utf8(bytes).map_err(|_| cleanup_error(format!("{what} is not UTF-8")))
}

/// The same Redis target the matchers use: URL, credentials and TLS material from the
/// MatchingIndex's Secrets, through kim-redis.
async fn redis_target(mi: &MatchingIndex, ctx: &Context, ns: &str) -> Result<kim_redis::Target> {
    let r = &mi.spec.redis;
    let url = match (&r.url, &r.secret_ref) {
        (Some(u), _) => u.clone(),
        (None, Some(s)) => utf8(SecretData::get(ctx, ns, &s.name).await?.required(&s.key)?, "redis URL in secret")?,
        (None, None) => return Err(cleanup_error("no redis settings".into())),
    };
    let mut creds = kim_redis::Credentials::default();
    if let Some(a) = &r.auth {
        let secret = SecretData::get(ctx, ns, &a.secret_name).await?;
        creds.username = secret.optional(&a.username_key).map(|b| utf8(b, "redis user name")).transpose()?;
        creds.password = Some(utf8(secret.required(&a.password_key)?, "redis password")?);
    }
    let (mut ca, mut client) = (None, None);
    if let Some(t) = &r.tls {
        let secret = SecretData::get(ctx, ns, &t.secret_name).await?;
        ca = Some(secret.required("ca.crt")?);
        if t.client_certificate {
            client = Some((secret.required("tls.crt")?, secret.required("tls.key")?));
        }
    }
    kim_redis::Target::from_parts(&url, creds, ca, client).map_err(|e| cleanup_error(e.to_string()))
}

/// Deletes the label's stream and every registry key of it.
async fn clean_redis(mi: &MatchingIndex, ctx: &Context, ns: &str) -> Result<Progress> {
    let target = std::sync::Arc::new(redis_target(mi, ctx, ns).await?);
    let prefix = mi.spec.redis.key_prefix.clone().unwrap_or_default();
    let label = mi.label();
    let shown = target.to_string();
    let work = async {
        let mut conn = kim_redis::Conn::lazy(target, std::time::Duration::from_secs(10));
        let pattern = kim_api::registry_pattern(&prefix, &label);
        let mut keys: Vec<String> = vec![kim_api::stream_key(&prefix, &label)];
        let mut cursor = 0u64;
        loop {
            let (next, found): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut conn)
                .await?;
            keys.extend(found);
            if next == 0 {
                break;
            }
            cursor = next;
        }
        redis::cmd("DEL").arg(&keys).query_async::<()>(&mut conn).await?;
        Ok::<usize, redis::RedisError>(keys.len())
    };
    match tokio::time::timeout(std::time::Duration::from_secs(10), work).await {
        Ok(Ok(n)) => {
            tracing::info!(label, keys = n, redis = %shown, "removed Redis keys");
            Ok(Progress::Done)
        }
        Ok(Err(e)) => {
            tracing::info!(label, redis = %shown, error = %e, "Redis cleanup waits");
            Ok(Progress::Wait(RETRY))
        }
        Err(_) => {
            tracing::info!(label, redis = %shown, "Redis cleanup timed out; waiting");
            Ok(Progress::Wait(RETRY))
        }
    }
}

/// Runs the cleanup Job to completion, then deletes it.
async fn clean_files(mi: &MatchingIndex, ctx: &Context, ns: &str) -> Result<Progress> {
    let ix_name = &mi.spec.indexer_ref.name;
    let found = Api::<Indexer>::namespaced(ctx.client.clone(), ns).get_opt(ix_name).await;
    let Some(ix) = found.map_err(Error::reading(format!("Indexer {ns}/{ix_name}")))? else {
        ctx.event(
            mi,
            true,
            "CleanupSkipped",
            "Delete",
            format!(
                "Indexer {} is gone; index files of label {} were not removed",
                mi.spec.indexer_ref.name,
                mi.label()
            ),
        )
        .await;
        return Ok(Progress::Done);
    };
    let jobs_api: Api<Job> = Api::namespaced(ctx.client.clone(), ns);
    let job = build::cleanup_job(mi, &ix, &ctx.defaults);
    let name = job.name_any();
    let current = match jobs_api.get_opt(&name).await.map_err(Error::reading(format!("Job {ns}/{name}")))? {
        Some(j) => j,
        None => apply(&jobs_api, &name, &job).await.map_err(|source| Error::Apply {
            kind: "Job".into(),
            name: name.clone(),
            source,
        })?,
    };
    let delete = |source| Error::Prune { kind: "Job".into(), name: name.clone(), source };
    match jobs::state(&current) {
        JobState::Running => Ok(Progress::Wait(RETRY)),
        JobState::Succeeded => {
            jobs_api.delete(&name, &DeleteParams::background()).await.map_err(delete)?;
            Ok(Progress::Done)
        }
        JobState::Failed(why) => {
            ctx.event(
                mi,
                true,
                "CleanupFailed",
                "Delete",
                format!("cleanup Job {name} failed ({why}); files of label {} may remain", mi.label()),
            )
            .await;
            jobs_api.delete(&name, &DeleteParams::background()).await.map_err(delete)?;
            Ok(Progress::Done)
        }
    }
}
