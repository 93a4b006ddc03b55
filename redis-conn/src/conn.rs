//! A Redis connection that replaces itself: after a connection-level failure the next command
//! connects again (re-resolving the master through Sentinel), so callers only need a backoff.

use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::aio::{MultiplexedConnection, PubSub};
use redis::{AsyncConnectionConfig, Cmd, ErrorKind, Pipeline, RedisError, RedisFuture, RedisResult, Value};
use tokio::sync::{watch, Mutex};

use crate::config::{Addr, Target};
use crate::{sentinel, Error};

/// How long establishing one connection (TCP, TLS, AUTH) may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// True when the error means "this connection (or this master) is gone": reconnecting, maybe to
/// another master, can help. Authentication and configuration errors are not retryable.
pub fn retryable(e: &RedisError) -> bool {
    if matches!(e.kind(), ErrorKind::AuthenticationFailed | ErrorKind::InvalidClientConfig) {
        return false;
    }
    e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_timeout()
        || e.is_unrecoverable_error()
        || matches!(e.kind(), ErrorKind::ReadOnly | ErrorKind::MasterDown | ErrorKind::BusyLoadingError)
}

impl Target {
    /// Opens one multiplexed connection (resolving the master first for Sentinel targets).
    pub async fn connect(&self, response_timeout: Duration) -> RedisResult<MultiplexedConnection> {
        let cfg =
            AsyncConnectionConfig::new().set_connection_timeout(CONNECT_TIMEOUT).set_response_timeout(response_timeout);
        match &self.addr {
            Addr::Direct(_) => {
                self.build(self.direct().expect("direct"))?.get_multiplexed_async_connection_with_config(&cfg).await
            }
            Addr::Sentinel { sentinels, master, db } => {
                let addr = sentinel::resolve(self, sentinels, master).await?;
                let mut c = self
                    .client_for(&addr.0, addr.1, *db, &self.creds)?
                    .get_multiplexed_async_connection_with_config(&cfg)
                    .await?;
                sentinel::ensure_master(&mut c, &addr).await?;
                Ok(c)
            }
        }
    }

    /// A pub/sub connection (for Sentinel targets, to the current master).
    pub async fn pubsub(&self) -> RedisResult<PubSub> {
        let open = async {
            let client = match &self.addr {
                Addr::Direct(_) => self.build(self.direct().expect("direct"))?,
                Addr::Sentinel { sentinels, master, db } => {
                    let addr = sentinel::resolve(self, sentinels, master).await?;
                    self.client_for(&addr.0, addr.1, *db, &self.creds)?
                }
            };
            client.get_async_pubsub().await
        };
        match tokio::time::timeout(CONNECT_TIMEOUT, open).await {
            Ok(r) => r,
            Err(_) => {
                Err(RedisError::from(std::io::Error::new(std::io::ErrorKind::TimedOut, "pub/sub connect timed out")))
            }
        }
    }
}

/// A cloneable connection handle that reconnects lazily; usable wherever redis-rs wants an
/// async `ConnectionLike` (commands, pipelines, stream helpers).
#[derive(Clone)]
pub struct Conn {
    inner: Arc<Inner>,
}

struct Inner {
    target: Arc<Target>,
    response_timeout: Duration,
    live: Mutex<Option<(u64, MultiplexedConnection)>>,
    /// Number of connections made so far and when the latest was made.
    connected: watch::Sender<(u64, Option<Instant>)>,
}

impl Conn {
    /// A handle that connects on first use.
    pub fn lazy(target: Arc<Target>, response_timeout: Duration) -> Conn {
        let (connected, _) = watch::channel((0, None));
        Conn { inner: Arc::new(Inner { target, response_timeout, live: Mutex::new(None), connected }) }
    }

    pub fn target(&self) -> &Arc<Target> {
        &self.inner.target
    }

    /// Changes every time a new connection is made: (count, when).
    pub fn connections(&self) -> watch::Receiver<(u64, Option<Instant>)> {
        self.inner.connected.subscribe()
    }

    async fn current(&self) -> RedisResult<(u64, MultiplexedConnection)> {
        let mut live = self.inner.live.lock().await;
        if let Some((n, c)) = &*live {
            return Ok((*n, c.clone()));
        }
        let c = self.inner.target.connect(self.inner.response_timeout).await?;
        let n = self.inner.connected.borrow().0 + 1;
        self.inner.connected.send_replace((n, Some(Instant::now())));
        if n > 1 {
            tracing::info!(redis = %self.inner.target, connection = n, "reconnected to Redis");
        }
        *live = Some((n, c.clone()));
        Ok((n, c))
    }

    /// Drops connection `n` after a failure so the next command makes a fresh one.
    async fn failed(&self, n: u64, e: &RedisError) {
        if !retryable(e) {
            return;
        }
        let mut live = self.inner.live.lock().await;
        if live.as_ref().is_some_and(|(m, _)| *m == n) {
            tracing::warn!(redis = %self.inner.target, error = %e, "Redis connection lost");
            *live = None;
        }
    }
}

impl redis::aio::ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            let (n, mut c) = self.current().await?;
            let r = c.req_packed_command(cmd).await;
            if let Err(e) = &r {
                self.failed(n, e).await;
            }
            r
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            let (n, mut c) = self.current().await?;
            let r = c.req_packed_commands(cmd, offset, count).await;
            if let Err(e) = &r {
                self.failed(n, e).await;
            }
            r
        })
    }

    fn get_db(&self) -> i64 {
        match &self.inner.target.addr {
            Addr::Direct(i) => i.redis.db,
            Addr::Sentinel { db, .. } => *db,
        }
    }
}

/// Connects and PINGs, waiting up to `wait` for a Redis that refuses connections (still
/// starting); any other failure (TLS, authentication, a TLS-only server spoken to in plaintext)
/// ends at once with an error that says what to fix.
pub async fn connect_checked(target: Arc<Target>, response_timeout: Duration, wait: Duration) -> Result<Conn, Error> {
    let conn = Conn::lazy(target.clone(), response_timeout);
    let started = Instant::now();
    let mut backoff = crate::Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
    loop {
        let mut c = conn.clone();
        match redis::cmd("PING").query_async::<String>(&mut c).await {
            Ok(_) => return Ok(conn),
            Err(e) if e.is_connection_refusal() && started.elapsed() < wait => {
                tracing::info!(redis = %target, error = %e, "Redis not reachable yet; retrying");
                tokio::time::sleep(backoff.next_delay()).await;
            }
            Err(e) => {
                let hint = if !target.is_tls()
                    && (e.is_connection_dropped()
                        || e.kind() == ErrorKind::ParseError
                        || e.is_io_error() && !e.is_connection_refusal())
                {
                    " (the server closed a plaintext connection: if it only accepts TLS, use rediss:// with --redis-ca)"
                } else {
                    ""
                };
                return Err(Error::Redis { url: target.to_string(), source: e, hint });
            }
        }
    }
}
