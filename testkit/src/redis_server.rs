//! A `redis-server` (installed by scripts/deps.sh) on a free loopback port, without persistence.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::{free_port, wait_until, Proc};

pub struct Redis {
    pub port: u16,
    pub proc: Proc,
}

impl Redis {
    /// Starts it with its log in `dir/redis.log`; returns once it accepts connections.
    pub fn start(dir: &Path) -> Redis {
        Redis::start_named("redis", dir)
    }

    /// [`Redis::start`] with the log in `dir/<name>.log`, for tests that run several.
    pub fn start_named(name: &str, dir: &Path) -> Redis {
        let port = free_port();
        let mut cmd = Command::new("redis-server");
        cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]);
        let proc = Proc::try_spawn(name, &mut cmd, dir)
            .unwrap_or_else(|e| panic!("{e} (scripts/deps.sh installs redis-server)"));
        wait_until(Duration::from_secs(10), "redis-server to accept connections", || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        Redis { port, proc }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// A blocking connection.
    pub fn conn(&self) -> redis::Connection {
        redis::Client::open(self.url()).unwrap().get_connection().unwrap()
    }
}
