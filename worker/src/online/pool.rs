//! Pooled gRPC channels to agents and filters, one per address. Channels connect lazily and
//! reconnect by themselves, so a backend that restarts is picked up without intervention.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tonic::transport::Channel;
use tonic::Status;

use super::tls::Dialer;

pub struct Pool {
    channels: Mutex<HashMap<String, Channel>>,
    connect_timeout: Duration,
    dialer: Dialer,
}

impl Pool {
    pub fn new(connect_timeout: Duration, dialer: Dialer) -> Pool {
        Pool { channels: Mutex::new(HashMap::new()), connect_timeout, dialer }
    }

    /// The channel to `addr` (HOST:PORT), created on first use.
    pub fn channel(&self, addr: &str) -> Result<Channel, Status> {
        let mut map = self.channels.lock().unwrap();
        if let Some(c) = map.get(addr) {
            return Ok(c.clone());
        }
        let ep = self
            .dialer
            .endpoint(addr)
            .map_err(|e| Status::invalid_argument(e.to_string()))?
            .connect_timeout(self.connect_timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_while_idle(true);
        let c = ep.connect_lazy();
        map.insert(addr.to_string(), c.clone());
        Ok(c)
    }
}
