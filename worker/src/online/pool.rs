//! Pooled gRPC channels to agents and filters, one per address. Channels connect lazily and
//! reconnect by themselves, so a backend that restarts is picked up without intervention.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tonic::transport::Channel;
use tonic::Status;

use super::tls::Dialer;

pub struct Pool {
    /// Keyed by address and whether it is an agent (agents may be checked against another
    /// TLS server name).
    channels: Mutex<HashMap<(String, bool), Channel>>,
    connect_timeout: Duration,
    dialer: Dialer,
}

impl Pool {
    pub fn new(connect_timeout: Duration, dialer: Dialer) -> Pool {
        Pool { channels: Mutex::new(HashMap::new()), connect_timeout, dialer }
    }

    /// The channel to the vectorizer or filter at `addr` (HOST:PORT), created on first use.
    pub fn channel(&self, addr: &str) -> Result<Channel, Status> {
        self.get(addr, false)
    }

    /// The channel to the agent at `addr`.
    pub fn agent(&self, addr: &str) -> Result<Channel, Status> {
        self.get(addr, true)
    }

    fn get(&self, addr: &str, agent: bool) -> Result<Channel, Status> {
        let mut map = self.channels.lock().unwrap();
        let key = (addr.to_string(), agent);
        if let Some(c) = map.get(&key) {
            return Ok(c.clone());
        }
        let ep = if agent { self.dialer.agent_endpoint(addr) } else { self.dialer.endpoint(addr) };
        let ep = ep
            .map_err(|e| Status::invalid_argument(e.to_string()))?
            .connect_timeout(self.connect_timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_while_idle(true);
        let c = ep.connect_lazy();
        map.insert(key, c.clone());
        Ok(c)
    }
}
