//! Master resolution through Sentinel: ask each sentinel in turn, then check that the address
//! it names really is a master (a sentinel can lag a fail-over by a moment).

use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, ErrorKind, RedisError, RedisResult};

use crate::config::Target;

/// How long one sentinel may take to answer before the next one is asked.
const ASK_TIMEOUT: Duration = Duration::from_secs(2);

/// The current master's address.
pub(crate) async fn resolve(t: &Target, sentinels: &[(String, u16)], master: &str) -> RedisResult<(String, u16)> {
    let mut last: Option<RedisError> = None;
    for (host, port) in sentinels {
        let ask = async {
            let client = t.client_for(host, *port, 0, &t.sentinel_creds)?;
            let cfg =
                AsyncConnectionConfig::new().set_connection_timeout(ASK_TIMEOUT).set_response_timeout(ASK_TIMEOUT);
            let mut c = client.get_multiplexed_async_connection_with_config(&cfg).await?;
            redis::cmd("SENTINEL")
                .arg("get-master-addr-by-name")
                .arg(master)
                .query_async::<Option<(String, u16)>>(&mut c)
                .await
        };
        match tokio::time::timeout(ASK_TIMEOUT * 2, ask).await {
            Ok(Ok(Some(addr))) => return Ok(addr),
            Ok(Ok(None)) => {
                last = Some(RedisError::from((
                    ErrorKind::ResponseError,
                    "sentinel does not know the master",
                    format!("{master} at sentinel {host}:{port}"),
                )))
            }
            Ok(Err(e)) => {
                tracing::debug!(sentinel = %format!("{host}:{port}"), error = %e, "sentinel unavailable");
                last = Some(e);
            }
            Err(_) => {
                last = Some(RedisError::from(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("sentinel {host}:{port} did not answer"),
                )))
            }
        }
    }
    Err(last.unwrap_or_else(|| RedisError::from((ErrorKind::InvalidClientConfig, "no sentinels configured"))))
}

/// Fails unless `c` is connected to a master (so writes never go to a demoted node).
pub(crate) async fn ensure_master(c: &mut MultiplexedConnection, addr: &(String, u16)) -> RedisResult<()> {
    let role: Vec<redis::Value> = redis::cmd("ROLE").query_async(c).await?;
    match role.first() {
        Some(redis::Value::BulkString(r)) if r == b"master" => Ok(()),
        Some(redis::Value::SimpleString(r)) if r == "master" => Ok(()),
        _ => Err(RedisError::from((
            ErrorKind::ReadOnly,
            "sentinel named a node that is not a master (fail-over in progress)",
            format!("{}:{}", addr.0, addr.1),
        ))),
    }
}
