//! Matcher and Rust client reaching Redis through Sentinel (`redis+sentinel://`), surviving a
//! fail-over forced with `SENTINEL FAILOVER`: the replica is promoted, the old master demoted,
//! and both re-resolve the master and keep answering.

mod common;
mod redis_support;

use std::time::{Duration, Instant};

use common::*;
use kim_client::{Client, Match};
use redis_support::*;

fn probe(f: &Fixture, i: usize, timeout: Duration) -> Match {
    let probes = f.matrix("mated.npy");
    Match {
        descriptor: probes.row(i % probes.rows).to_vec(),
        version: 59,
        label: "faces".into(),
        limit: 3,
        threshold: None,
        luna_request_id: None,
        timeout,
    }
}

fn replica_in_sync(port: u16) -> bool {
    let info: String = redis::cmd("INFO").arg("replication").query(&mut plain_conn(port)).unwrap_or_default();
    info.contains("master_link_status:up")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_resolution_and_failover() {
    let f = Fixture::new(500);
    let master = Server::start(f.path(), Mode::Plain, None, &[]);
    let replica = Server::start(f.path(), Mode::Plain, None, &["--replicaof", "127.0.0.1", &master.port.to_string()]);
    wait_until(Duration::from_secs(20), "replica in sync", || replica_in_sync(replica.port));
    let (sentinel, _sentinel_proc) = start_sentinel(f.path(), master.port);
    wait_until(Duration::from_secs(20), "sentinel to see the replica", || {
        let v: redis::Value = redis::cmd("SENTINEL")
            .arg("replicas")
            .arg("kimmaster")
            .query(&mut plain_conn(sentinel))
            .unwrap_or(redis::Value::Nil);
        matches!(v, redis::Value::Array(ref a) if !a.is_empty())
    });
    // The first sentinel in the URL is down: resolution falls through to the next one.
    let dead = free_port();
    let url = format!("redis+sentinel://127.0.0.1:{dead},127.0.0.1:{sentinel}/kimmaster/0");
    let m = start_matcher("m1", f.path(), &f.storage, &url, &[], &[]);
    m.wait_ready();
    let client = Client::connect(&url).await.unwrap();
    for i in 0..10 {
        let r = client.match_descriptor(probe(&f, i, Duration::from_secs(5))).await.unwrap();
        assert_eq!(r.status_code, 201, "{r:?}");
    }
    let xlen = |port: u16| -> i64 { redis::cmd("XLEN").arg("faces").query(&mut plain_conn(port)).unwrap_or(-1) };
    assert!(xlen(master.port) >= 10, "requests went to the master");

    // Fail over while requests are in flight.
    let load = {
        let (client, rows) =
            (client.clone(), (0..200).map(|i| probe(&f, i, Duration::from_secs(5))).collect::<Vec<_>>());
        tokio::spawn(async move {
            let mut codes = Vec::new();
            for req in rows {
                let t = Instant::now();
                let r = client.match_descriptor(req).await.unwrap();
                codes.push((r.status_code, r.error.map(|e| e.error_code), t.elapsed()));
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            codes
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let failover_at = Instant::now();
    let _: String = redis::cmd("SENTINEL").arg("failover").arg("kimmaster").query(&mut plain_conn(sentinel)).unwrap();
    wait_until(Duration::from_secs(30), "sentinel to promote the replica", || {
        sentinel_master(sentinel) == Some(replica.port)
    });
    let promoted_in = failover_at.elapsed();
    // Sentinel demotes the old master a few seconds later (REPLICAOF + CLIENT KILL); until
    // then it still takes writes, so wait for the fail-over to be complete.
    // Demotion kills the old master's clients: a reset connection is "not yet".
    let role = |port: u16| -> Option<String> {
        let v: Vec<redis::Value> = redis::cmd("ROLE").query(&mut try_conn(port)?).ok()?;
        redis::from_redis_value(v.first()?).ok()
    };
    wait_until(Duration::from_secs(30), "sentinel to demote the old master", || {
        role(master.port).as_deref() == Some("slave")
    });
    let demoted_in = failover_at.elapsed();
    let codes = tokio::time::timeout(Duration::from_secs(60), load).await.expect("load finished").unwrap();
    for (status, code, took) in &codes {
        assert!(*status == 201 || *code == Some(26309), "status {status} code {code:?}");
        assert!(*took <= Duration::from_millis(5500), "call took {took:?}");
    }
    let matched = codes.iter().filter(|c| c.0 == 201).count();

    // After the fail-over every request is answered by way of the new master.
    let before = xlen(replica.port);
    let t = Instant::now();
    let mut first_ok = None;
    for i in 0..20 {
        let r = client.match_descriptor(probe(&f, i, Duration::from_secs(10))).await.unwrap();
        assert_eq!(r.status_code, 201, "{r:?}");
        first_ok.get_or_insert(t.elapsed());
    }
    assert!(
        xlen(replica.port) >= before + 20,
        "requests reach the promoted master: xlen {before} -> {} (old master {}), roles {:?} {:?}",
        xlen(replica.port),
        xlen(master.port),
        role(replica.port),
        role(master.port)
    );
    eprintln!("sentinel fail-over: promoted after {promoted_in:?}, old master demoted after {demoted_in:?}; first call after it took {:?}; {matched}/{} calls during it matched, the rest timed out", first_ok.unwrap(), codes.len());
    let log = m.proc.log_text();
    assert!(log.contains("reconnected to Redis"), "matcher reconnected:\n{log}");
}
