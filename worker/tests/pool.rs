//! Matcher pools against real processes: `kim-worker match --pool` serves the members of a
//! Redis set, loading each as its snapshot appears and dropping those that leave the set.

mod common;

use std::time::Duration;

use common::*;
use kim_client::{Client, Match};
use kim_testkit::eventually_async;
use redis::Commands;

const POOL: &str = "p1";
const MATCHER: &str = "pool-m1";

/// The pool's labels: `l00` to `l49`.
fn members() -> Vec<String> {
    (0..50).map(|i| format!("l{i:02}")).collect()
}

fn ask(descriptor: &[u8], label: &str) -> Match {
    Match {
        descriptor: descriptor.to_vec(),
        version: 59,
        label: label.into(),
        limit: 1,
        threshold: None,
        luna_request_id: None,
        timeout: Duration::from_secs(2),
    }
}

/// Builds a snapshot of the fixture's base rows for each label, two builds at a time.
fn index_all(f: &Fixture, labels: &[String]) {
    std::thread::scope(|s| {
        for half in labels.chunks(labels.len().div_ceil(2)) {
            s.spawn(move || {
                for l in half {
                    f.index(l, "base.npy");
                }
            });
        }
    });
}

fn pool_add(redis: &Redis, labels: &[String]) {
    let _: usize = redis.conn().sadd(kim_api::pool_key("", POOL), labels).unwrap();
}

/// Whether this matcher's registry key and its entry in the label's served hash exist.
fn advertised(redis: &Redis, label: &str) -> (bool, bool) {
    let mut c = redis.conn();
    let key: bool = c.exists(kim_api::registry_key("", label, MATCHER)).unwrap();
    let field: bool = c.hexists(kim_api::served_key("", label), MATCHER).unwrap();
    (key, field)
}

/// Waits until `label` answers a stored row with that row's id, at similarity ~1.
async fn served(client: &Client, row: &[u8], id: &str, label: &str) {
    eventually_async(30, &format!("{label} to be served"), || async move {
        let r = client.match_descriptor(ask(row, label)).await.unwrap();
        (r.status_code == 201).then_some(())?;
        let (top, sim) = r.result.first().unwrap_or_else(|| panic!("{label}: no hit in {r:?}"));
        assert_eq!(top, id, "{label}: {r:?}");
        assert!(*sim > 0.999, "{label}: {r:?}");
        Some(())
    })
    .await
}

/// Waits until the client is told no matcher serves `label` (26304).
async fn not_served(client: &Client, row: &[u8], label: &str) {
    eventually_async(30, &format!("{label} to be unknown"), || async move {
        let r = client.match_descriptor(ask(row, label)).await.unwrap();
        r.error.as_ref().is_some_and(|e| e.error_code == kim_api::ErrorCode::IndexNotFound.code()).then_some(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_serves_its_members_and_drops_those_that_leave() {
    let f = Fixture::new(20);
    let labels = members();
    index_all(&f, &[labels.clone(), vec!["outside".into()]].concat());
    let redis = Redis::start(f.path());
    let row = f.matrix("base.npy").row(0).to_vec();
    let id = f.lines("ids.txt").remove(0);

    // A pool with no member yet is ready, so its Deployment can roll out.
    let empty = Matcher::start("pool-empty", f.path(), &f.storage, &redis, &["--pool", "empty"]);
    empty.wait_ready();
    let (code, body) = empty.get("/readyz").unwrap();
    assert_eq!((code, body.trim()), (200, "ready:"), "serving no label");
    drop(empty);

    // Half the members before the matcher starts, half while it runs.
    pool_add(&redis, &labels[..25]);
    let m = Matcher::start(MATCHER, f.path(), &f.storage, &redis, &["--pool", POOL]);
    m.wait_ready();
    pool_add(&redis, &labels[25..]);
    let client = Client::connect(&redis.url()).await.unwrap();
    for l in &labels {
        served(&client, &row, &id, l).await;
        assert_eq!(advertised(&redis, l), (true, true), "{l}");
    }
    for outside in ["outside", "faces"] {
        not_served(&client, &row, outside).await;
        assert_eq!(advertised(&redis, outside), (false, false), "{outside} is stored but not in the pool");
    }

    // A label that leaves the set is dropped: registry, served hash, metrics, answers.
    let gone = "l07";
    let series = format!("label=\"{gone}\"");
    assert!(m.get("/metrics").unwrap().1.contains(&series), "served labels have metrics");
    let _: usize = redis.conn().srem(kim_api::pool_key("", POOL), gone).unwrap();
    wait_until(Duration::from_secs(10), "the dropped label's registry entries to go", || {
        advertised(&redis, gone) == (false, false)
    });
    let metrics = m.get("/metrics").unwrap().1;
    let stale: Vec<&str> = metrics.lines().filter(|l| l.contains(&series)).collect();
    assert!(stale.is_empty(), "series of a dropped label remain: {stale:?}");
    not_served(&client, &row, gone).await;
    for l in labels.iter().filter(|l| *l != gone) {
        served(&client, &row, &id, l).await;
    }
    assert!(m.proc.log_text().contains("label left the pool: no longer served"));

    // A member without a snapshot is loaded once one appears; a dropped label can come back.
    pool_add(&redis, &["late".to_string(), gone.to_string()]);
    served(&client, &row, &id, gone).await;
    std::thread::sleep(Duration::from_millis(600));
    not_served(&client, &row, "late").await;
    f.index("late", "base.npy");
    served(&client, &row, &id, "late").await;
    assert_eq!(advertised(&redis, "late"), (true, true));
    assert_eq!(m.get("/readyz").unwrap().0, 200);
}
