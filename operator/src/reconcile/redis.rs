//! What the operator itself does in a MatchingIndex's Redis, with the same URL, credentials and
//! TLS material the matchers read from its Secrets: the finalizer's removal of the label's
//! stream and registry keys, and the autoscaler's reading of the matchers' backlog. Every way
//! it can fail is a [`Problem`] that names its cause, so status can tell the user what to fix.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;

use crate::context::Context;
use crate::crd::MatchingIndex;

/// One attempt's bound: connecting, scanning and deleting together.
pub const ATTEMPT: Duration = Duration::from_secs(10);
/// One reading's bound: an unreachable Redis must not hold a reconcile for long.
pub const READ_BOUND: Duration = Duration::from_secs(3);

/// Why the Redis keys could not be removed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Problem {
    #[error("Secret {secret} is gone")]
    SecretMissing { secret: String },
    #[error("cannot read Secret {secret}: {error}")]
    SecretUnreadable { secret: String, error: String },
    #[error("Redis settings: {0}")]
    Invalid(String),
    #[error("Redis {target}: {error}")]
    Unreachable { target: String, error: String },
}

impl Problem {
    /// The condition reason and Event reason suffix.
    pub fn reason(&self) -> &'static str {
        match self {
            Problem::SecretMissing { .. } => "RedisSecretMissing",
            Problem::SecretUnreadable { .. } => "RedisSecretUnreadable",
            Problem::Invalid(_) => "RedisSettingsInvalid",
            Problem::Unreachable { .. } => "RedisUnreachable",
        }
    }

    /// What the user can do about it (besides the skip annotation and waiting for the give-up).
    pub fn remedy(&self) -> String {
        match self {
            Problem::SecretMissing { secret } | Problem::SecretUnreadable { secret, .. } => {
                format!("restore Secret {secret}")
            }
            Problem::Invalid(_) => "correct spec.redis or its Secrets".into(),
            Problem::Unreachable { .. } => "bring Redis back or correct spec.redis".into(),
        }
    }
}

/// The keys one Secret holds (read once however many keys are used).
struct SecretData {
    name: String,
    data: BTreeMap<String, k8s_openapi::ByteString>,
}

impl SecretData {
    async fn get(ctx: &Context, ns: &str, name: &str) -> Result<SecretData, Problem> {
        let secret = format!("{ns}/{name}");
        match Api::<Secret>::namespaced(ctx.client.clone(), ns).get_opt(name).await {
            Ok(Some(s)) => Ok(SecretData { name: secret, data: s.data.unwrap_or_default() }),
            Ok(None) => Err(Problem::SecretMissing { secret }),
            Err(e) => Err(Problem::SecretUnreadable { secret, error: e.to_string() }),
        }
    }

    fn optional(&self, key: &str) -> Option<Vec<u8>> {
        self.data.get(key).map(|b| b.0.clone())
    }

    fn required(&self, key: &str) -> Result<Vec<u8>, Problem> {
        self.optional(key).ok_or_else(|| Problem::Invalid(format!("Secret {} has no key {key}", self.name)))
    }
}

fn utf8(bytes: Vec<u8>, what: &str) -> Result<String, Problem> {
    String::from_utf8(bytes).map_err(|_| Problem::Invalid(format!("{what} is not UTF-8")))
}

/// The same Redis target the matchers use.
pub async fn target(mi: &MatchingIndex, ctx: &Context, ns: &str) -> Result<kim_redis::Target, Problem> {
    let r = &mi.spec.redis;
    let url = match (&r.url, &r.secret_ref) {
        (Some(u), _) => u.clone(),
        (None, Some(s)) => utf8(SecretData::get(ctx, ns, &s.name).await?.required(&s.key)?, "the Redis URL")?,
        (None, None) => return Err(Problem::Invalid("neither url nor secretRef is set".into())),
    };
    let mut creds = kim_redis::Credentials::default();
    if let Some(a) = &r.auth {
        let secret = SecretData::get(ctx, ns, &a.secret_name).await?;
        creds.username = secret.optional(&a.username_key).map(|b| utf8(b, "the Redis user name")).transpose()?;
        creds.password = Some(utf8(secret.required(&a.password_key)?, "the Redis password")?);
    }
    let (mut ca, mut client) = (None, None);
    if let Some(t) = &r.tls {
        let secret = SecretData::get(ctx, ns, &t.secret_name).await?;
        ca = Some(secret.required("ca.crt")?);
        if t.client_certificate {
            client = Some((secret.required("tls.crt")?, secret.required("tls.key")?));
        }
    }
    kim_redis::Target::from_parts(&url, creds, ca, client).map_err(|e| Problem::Invalid(e.to_string()))
}

/// The keys a label owns in Redis.
pub struct LabelKeys {
    /// The request stream.
    pub stream: String,
    /// The hash where each matcher says what it serves.
    pub served: String,
    /// SCAN patterns of its registry keys and of what the matchers' reply gate keeps for a
    /// while after each request.
    pub patterns: Vec<String>,
}

pub fn keys_of(mi: &MatchingIndex) -> LabelKeys {
    let (prefix, label) = (mi.spec.redis.key_prefix.clone().unwrap_or_default(), mi.label());
    let mut patterns = vec![kim_api::registry_pattern(&prefix, &label)];
    patterns.extend(kim_api::shard::gate_patterns(&prefix, &label));
    LabelKeys { stream: kim_api::stream_key(&prefix, &label), served: kim_api::served_key(&prefix, &label), patterns }
}

/// Runs `work` on a connection to the label's Redis, all within `bound`: a Redis error or no
/// answer in time is [`Problem::Unreachable`].
pub async fn run<T, F, Fut>(mi: &MatchingIndex, ctx: &Context, ns: &str, bound: Duration, work: F) -> Result<T, Problem>
where
    F: FnOnce(kim_redis::Conn) -> Fut,
    Fut: std::future::Future<Output = redis::RedisResult<T>>,
{
    let target = Arc::new(target(mi, ctx, ns).await?);
    let shown = target.to_string();
    let unreachable = |error: String| Problem::Unreachable { target: shown.clone(), error };
    match tokio::time::timeout(bound, work(kim_redis::Conn::lazy(target, bound))).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(unreachable(e.to_string())),
        Err(_) => Err(unreachable(format!("no answer within {bound:?}"))),
    }
}

/// Deletes the label's stream, its served hash and every key of its patterns; returns how many
/// keys were named.
pub async fn clean(mi: &MatchingIndex, ctx: &Context, ns: &str) -> Result<usize, Problem> {
    let LabelKeys { stream, served, patterns } = keys_of(mi);
    let n = run(mi, ctx, ns, ATTEMPT, |mut conn| async move {
        let mut keys: Vec<String> = vec![stream, served];
        for pattern in &patterns {
            keys.extend(kim_redis::scan(&mut conn, pattern, false).await?);
        }
        for batch in keys.chunks(1000) {
            redis::cmd("DEL").arg(batch).query_async::<()>(&mut conn).await?;
        }
        Ok(keys.len())
    })
    .await?;
    tracing::info!(label = %mi.label(), keys = n, "removed Redis keys");
    Ok(n)
}

/// Destroys consumer groups of the label's stream; a group (or stream) already gone is fine.
pub async fn destroy_groups(mi: &MatchingIndex, ctx: &Context, ns: &str, groups: &[String]) -> Result<(), Problem> {
    let stream = keys_of(mi).stream;
    run(mi, ctx, ns, ATTEMPT, |mut conn| async move {
        let exists: bool = redis::cmd("EXISTS").arg(&stream).query_async(&mut conn).await?;
        if !exists {
            return Ok(());
        }
        for g in groups {
            let _: i64 = redis::cmd("XGROUP").arg("DESTROY").arg(&stream).arg(g).query_async(&mut conn).await?;
        }
        Ok(())
    })
    .await?;
    tracing::info!(label = %mi.label(), groups = %groups.join(","), "destroyed the consumer groups of a retired layout");
    Ok(())
}

/// The matchers' consumer groups on the label's stream (`kim-matchers`, `kim-matchers-<I>-of-<N>`;
/// groups of anything else are left alone); none when the stream does not exist yet.
pub async fn matcher_groups(mi: &MatchingIndex, ctx: &Context, ns: &str) -> Result<Vec<String>, Problem> {
    let stream = keys_of(mi).stream;
    run(mi, ctx, ns, READ_BOUND, |mut conn| async move {
        let exists: bool = redis::cmd("EXISTS").arg(&stream).query_async(&mut conn).await?;
        if !exists {
            return Ok(Vec::new());
        }
        let info: redis::streams::StreamInfoGroupsReply =
            redis::cmd("XINFO").arg("GROUPS").arg(&stream).query_async(&mut conn).await?;
        let base = kim_api::shard::group(0, 1);
        let ours = |g: &String| *g == base || g.starts_with(&format!("{base}-"));
        Ok(info.groups.into_iter().map(|g| g.name).filter(ours).collect())
    })
    .await
}
