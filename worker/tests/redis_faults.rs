//! Redis killed (SIGKILL) and restarted empty on the same port while the Rust client keeps a
//! bounded load on a real matcher: every call ends with a match or the timeout error 26309
//! within its timeout, and the matcher serves again after the restart without being touched.

mod common;
mod redis_support;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use kim_client::{Client, Match};
use redis_support::*;

const TIMEOUT: Duration = Duration::from_secs(3);
const MAX_REQUESTS: usize = 200_000;

struct Outcome {
    started: Instant,
    elapsed: Duration,
    status: u16,
    error_code: Option<u32>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_and_restarted_under_load() {
    let f = Fixture::new(500);
    let mut redis = Server::start(f.path(), Mode::Plain, None, &[]);
    let url = format!("redis://127.0.0.1:{}", redis.port);
    let mut m = start_matcher("m1", f.path(), &f.storage, &url, &[], &[]);
    m.wait_ready();
    let client = Client::connect(&url).await.unwrap();
    let probes = f.matrix("mated.npy");

    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicUsize::new(0));
    let outcomes = Arc::new(Mutex::new(Vec::<Outcome>::new()));
    let mut workers = Vec::new();
    for w in 0..8 {
        let (client, stop, sent, outcomes) = (client.clone(), stop.clone(), sent.clone(), outcomes.clone());
        let rows: Vec<Vec<u8>> = (0..probes.rows).map(|i| probes.row(i).to_vec()).collect();
        workers.push(tokio::spawn(async move {
            let mut i = w;
            while !stop.load(Ordering::SeqCst) && sent.fetch_add(1, Ordering::SeqCst) < MAX_REQUESTS {
                let req = Match {
                    descriptor: rows[i % rows.len()].clone(),
                    version: 59,
                    label: "faces".into(),
                    limit: 3,
                    threshold: None,
                    luna_request_id: None,
                    timeout: TIMEOUT,
                };
                let started = Instant::now();
                let r = client
                    .match_descriptor(req)
                    .await
                    .unwrap_or_else(|e| panic!("call failed instead of answering: {e}"));
                let o = Outcome {
                    started,
                    elapsed: started.elapsed(),
                    status: r.status_code,
                    error_code: r.error.as_ref().map(|e| e.error_code),
                };
                outcomes.lock().unwrap().push(o);
                i += 8;
            }
        }));
    }

    // Besides the closed loop above, a new call every 25 ms, so calls also start mid-outage.
    let pacer = {
        let (client, stop, outcomes) = (client.clone(), stop.clone(), outcomes.clone());
        let rows: Vec<Vec<u8>> = (0..probes.rows).map(|i| probes.row(i).to_vec()).collect();
        tokio::spawn(async move {
            let mut calls = Vec::new();
            for i in 0..1000 {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let (client, outcomes) = (client.clone(), outcomes.clone());
                let req = Match {
                    descriptor: rows[i % rows.len()].clone(),
                    version: 59,
                    label: "faces".into(),
                    limit: 3,
                    threshold: None,
                    luna_request_id: None,
                    timeout: TIMEOUT,
                };
                calls.push(tokio::spawn(async move {
                    let started = Instant::now();
                    let r = client
                        .match_descriptor(req)
                        .await
                        .unwrap_or_else(|e| panic!("call failed instead of answering: {e}"));
                    outcomes.lock().unwrap().push(Outcome {
                        started,
                        elapsed: started.elapsed(),
                        status: r.status_code,
                        error_code: r.error.as_ref().map(|e| e.error_code),
                    });
                }));
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            for c in calls {
                c.await.unwrap();
            }
        })
    };
    workers.push(pacer);

    tokio::time::sleep(Duration::from_millis(700)).await;
    let before_kill = outcomes.lock().unwrap().len();
    redis.kill();
    let killed_at = Instant::now();
    tokio::time::sleep(Duration::from_secs(1)).await;
    redis.restart();
    let restarted_at = Instant::now();
    tokio::time::sleep(Duration::from_secs(5)).await;
    stop.store(true, Ordering::SeqCst);
    // Each worker finishes its current call within the timeout (plus scheduling slack).
    for w in workers {
        tokio::time::timeout(TIMEOUT + Duration::from_secs(5), w).await.expect("a call hung past its timeout").unwrap();
    }

    let outcomes = std::mem::take(&mut *outcomes.lock().unwrap());
    let n = outcomes.len();
    let ok = outcomes.iter().filter(|o| o.status == 201).count();
    let timeouts = outcomes.iter().filter(|o| o.error_code == Some(26309)).count();
    let slowest = outcomes.iter().map(|o| o.elapsed).max().unwrap();
    let first_ok_after = outcomes
        .iter()
        .filter(|o| o.status == 201 && o.started >= restarted_at)
        .map(|o| o.started + o.elapsed - restarted_at)
        .min();
    let last_ok_before_kill = outcomes.iter().filter(|o| o.status == 201 && o.started < killed_at).count();
    let during_outage = outcomes.iter().filter(|o| o.started >= killed_at && o.started < restarted_at).count();
    eprintln!(
        "redis fault: {n} calls ({before_kill} before the kill, {during_outage} started while Redis was down): {ok} matched, {timeouts} timed out (26309), slowest {slowest:?}; first match after restart {first_ok_after:?} after it",
    );
    assert!(before_kill > 0 && last_ok_before_kill > 0, "load ran before the kill");
    assert!(during_outage > 0, "calls were made while Redis was down");
    for o in outcomes.iter() {
        assert!(
            o.status == 201 || o.error_code == Some(26309),
            "answer neither a match nor a timeout: status {} code {:?}",
            o.status,
            o.error_code
        );
        assert!(
            o.elapsed <= TIMEOUT + Duration::from_secs(1),
            "a call took {:?} with a {TIMEOUT:?} timeout",
            o.elapsed
        );
    }
    let recovered = first_ok_after.expect("matches resumed after the restart");
    assert!(recovered < Duration::from_secs(4), "recovery took {recovered:?}");
    assert!(m.proc.child.try_wait().unwrap().is_none(), "matcher exited; log:\n{}", m.proc.log_text());
    drop(outcomes);

    // After the storm: the same client and matcher serve every request.
    for i in 0..20 {
        let req = Match {
            descriptor: probes.row(i).to_vec(),
            version: 59,
            label: "faces".into(),
            limit: 3,
            threshold: None,
            luna_request_id: None,
            timeout: TIMEOUT,
        };
        let r = client.match_descriptor(req).await.unwrap();
        assert_eq!(r.status_code, 201, "{r:?}");
    }
    // A client made after the restart works too, and the registry was rewritten by the matcher.
    let fresh = Client::connect(&url).await.unwrap();
    assert_eq!(fresh.read_matching_labels().await.unwrap(), vec!["faces".to_string()]);
    let log = m.proc.log_text();
    assert!(log.contains("re-registering labels"), "matcher noticed the restart:\n{log}");
    let _ = &mut m;
}
