//! How every kim process reaches Redis, so the matcher, the Rust client and the operator agree:
//! `redis://`, `rediss://` (TLS with a CA file, optional client certificate for mutual TLS) and
//! `redis+sentinel://host:port,host:port/master/db` (master resolved through Sentinel, again
//! after every lost connection). Credentials come from the environment or mounted files, never
//! from flags, and every URL shown in a log line or error is redacted.

mod backlog;
mod backoff;
mod config;
mod conn;
mod redact;
mod scan;
mod sentinel;

pub use backlog::{backlog, Backlog};
pub use backoff::Backoff;
pub use config::{Credentials, RedisArgs, Target};
pub use conn::{connect_checked, retryable, Conn};
pub use redact::redact;
pub use scan::scan;

/// Why a Redis target cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid Redis URL {url}: {why}")]
    Url { url: String, why: String },
    #[error("refusing plaintext Redis URL {0}: TLS is required (--redis-require-tls / KIM_REDIS_REQUIRE_TLS); use rediss:// or rediss+sentinel://")]
    PlaintextRefused(String),
    #[error("{what} ({path}) cannot be read: {source}")]
    File { what: &'static str, path: String, source: std::io::Error },
    #[error("{0}")]
    Config(String),
    #[error("Redis at {url}: {source}{hint}")]
    Redis { url: String, source: redis::RedisError, hint: &'static str },
}
