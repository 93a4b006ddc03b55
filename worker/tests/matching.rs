//! The Redis matching protocol against real processes: redis-server, `kim-worker index` and
//! `kim-worker match`, driven through the Rust client and raw Redis commands.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::*;
use kim_api::MatchResponse;
use kim_client::{Client, Match};
use redis::Commands;

fn req(descriptor: Vec<u8>, label: &str, limit: u32) -> Match {
    Match {
        descriptor,
        version: 59,
        label: label.into(),
        limit,
        threshold: None,
        luna_request_id: None,
        timeout: Duration::from_secs(10),
    }
}

fn code(r: &MatchResponse) -> Option<u32> {
    r.error.as_ref().map(|e| e.error_code)
}

/// Sends a raw stream entry and waits for the reply on its own channel.
fn raw_request(redis: &Redis, fields: &[(&str, &[u8])], channel: Option<&str>) -> Option<MatchResponse> {
    raw_reply(redis, fields, channel).map(|v| serde_json::from_value(v).unwrap())
}

/// [`raw_request`], the reply as the JSON published.
fn raw_reply(redis: &Redis, fields: &[(&str, &[u8])], channel: Option<&str>) -> Option<serde_json::Value> {
    let mut sub = redis.conn();
    let mut ps = sub.as_pubsub();
    if let Some(ch) = channel {
        ps.subscribe(ch).unwrap();
    }
    ps.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut c = redis.conn();
    let mut cmd = redis::cmd("XADD");
    cmd.arg("faces").arg("*");
    for (k, v) in fields {
        cmd.arg(*k).arg(*v);
    }
    let _: String = cmd.query(&mut c).unwrap();
    channel?;
    let msg = ps.get_message().ok()?;
    Some(serde_json::from_str(&msg.get_payload::<String>().unwrap()).unwrap())
}

fn pending(redis: &Redis) -> i64 {
    let v: redis::Value = redis::cmd("XPENDING").arg("faces").arg("kim-matchers").query(&mut redis.conn()).unwrap();
    match v {
        redis::Value::Array(items) => match items.first() {
            Some(redis::Value::Int(n)) => *n,
            _ => 0,
        },
        _ => 0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_scenarios_on_20k() {
    let f = Fixture::new(5_000);
    let redis = Redis::start(f.path());
    let mut m = Matcher::start("m1", f.path(), &f.storage, &redis, &[]);
    m.wait_ready();
    assert_eq!(m.get("/healthz").unwrap().0, 200);
    let client = Client::connect(&redis.url()).await.unwrap();

    // Recall@10 through Redis against exact ground truth, mated and non-mated probes.
    for set in ["mated", "nonmated"] {
        let probes = f.matrix(&format!("{set}.npy"));
        let truth = f.lines(&format!("{set}_truth.txt"));
        let mut found = 0usize;
        #[allow(clippy::needless_range_loop)] // i indexes both the probes and their truth
        for i in 0..probes.rows {
            let r = client.match_descriptor(req(probes.row(i).to_vec(), "faces", 10)).await.unwrap();
            assert_eq!(r.status_code, 201, "{r:?}");
            assert!(r.result.windows(2).all(|w| w[0].1 >= w[1].1), "sorted by similarity");
            assert!(r.result.iter().all(|(_, s)| (0.0..=1.0).contains(s)));
            found += truth[i].split(' ').filter(|t| r.result.iter().any(|(id, _)| id == t)).count();
        }
        let recall = found as f64 / (10 * probes.rows) as f64;
        eprintln!("{set} recall@10 through redis: {recall:.4}");
        assert!(recall >= 0.95, "{set} recall {recall}");
    }
    let probes = f.matrix("mated.npy");
    let bare = probes.row(0).to_vec();
    let sdk = kim_index::descriptor::sdk_form(59, &bare);

    // The SDK form and the bare form give identical answers; the luna id is passed through.
    let a = client.match_descriptor(req(bare.clone(), "faces", 5)).await.unwrap();
    let mut with_id = req(sdk.clone(), "faces", 5);
    with_id.luna_request_id = Some("1700000000,my-id".into());
    let b = client.match_descriptor(with_id).await.unwrap();
    assert_eq!(a.result, b.result);
    assert_eq!(b.luna_request_id, "1700000000,my-id");
    assert!(a.luna_request_id.contains(','));

    // LUNA LIM's documented message, built by hand: no version field (the SDK header has it).
    let lim = |descriptor: &[u8], rid: &str, channel: &str| {
        raw_reply(
            &redis,
            &[
                ("descriptor", descriptor),
                ("label", b"faces"),
                ("limit", b"5"),
                ("response_channel", channel.as_bytes()),
                ("luna_request_id", b"1763800000,5d0e4a1c-0000-4000-8000-000000000001"),
                ("rid", rid.as_bytes()),
            ],
            Some(channel),
        )
        .unwrap()
    };
    let v = lim(&sdk, "lim-1", "lim-ch-1");
    assert_eq!((v["status_code"].as_u64(), &v["error"]), (Some(201), &serde_json::Value::Null), "{v}");
    assert_eq!(serde_json::from_value::<MatchResponse>(v.clone()).unwrap().result, a.result, "same candidates");
    assert_eq!(v["luna_request_id"], "1763800000,5d0e4a1c-0000-4000-8000-000000000001");
    // A version-0 SDK descriptor: 26305, result null.
    let v = lim(&kim_index::descriptor::sdk_form(0, &bare), "lim-2", "lim-ch-2");
    assert_eq!((v["status_code"].as_u64(), v["error"]["error_code"].as_u64()), (Some(400), Some(26305)), "{v}");
    assert_eq!(v["result"], serde_json::Value::Null, "{v}");
    assert_eq!(v["error"]["detail"], "Descriptor of version 0 cannot be searched in index of version 59");
    // A bare payload needs the version: 26301 saying so.
    let v = lim(&bare, "lim-3", "lim-ch-3");
    assert_eq!((v["status_code"].as_u64(), v["error"]["error_code"].as_u64()), (Some(400), Some(26301)), "{v}");
    assert_eq!(v["error"]["detail"], kim_api::VERSION_NEEDED);
    assert_eq!((&v["result"], &v["rid"]), (&serde_json::Value::Null, &serde_json::json!("lim-3")));

    // Threshold: only candidates at least that similar, as a prefix of the unfiltered answer.
    let all10 = client.match_descriptor(req(bare.clone(), "faces", 10)).await.unwrap();
    let cut = all10.result[3].1;
    let mut t = req(bare.clone(), "faces", 10);
    t.threshold = Some(cut);
    let r = client.match_descriptor(t.clone()).await.unwrap();
    assert_eq!(r.status_code, 201);
    let want: Vec<_> = all10.result.iter().filter(|(_, s)| *s >= cut).cloned().collect();
    assert!(want.len() >= 4 && want.len() < 10, "{all10:?}");
    assert_eq!(r.result, want);
    t.threshold = Some(1.0);
    let r = client.match_descriptor(t.clone()).await.unwrap();
    assert_eq!((r.status_code, r.result.len()), (201, 0), "a mated probe is not identical to any enrolled row");
    t.threshold = Some(1.5);
    let r = client.match_descriptor(t).await.unwrap();
    assert_eq!(code(&r), Some(26301), "checked by the client, nothing sent");

    // Version mismatch, in the request or inside the SDK header.
    let mut wrong = req(bare.clone(), "faces", 5);
    wrong.version = 60;
    let r = client.match_descriptor(wrong).await.unwrap();
    assert_eq!((r.status_code, code(&r)), (400, Some(26305)));
    let e = r.error.unwrap();
    assert_eq!(e.detail, "Descriptor of version 60 cannot be searched in index of version 59");
    assert_eq!(e.desc, "Descriptor version mismatch");
    assert_eq!(e.link, "docs/errors.md#26305");
    let r = client.match_descriptor(req(kim_index::descriptor::sdk_form(61, &bare), "faces", 5)).await.unwrap();
    assert_eq!(code(&r), Some(26305));

    // Unknown label answers at once, not after the timeout.
    let t = Instant::now();
    let r = client.match_descriptor(req(bare.clone(), "nobody", 5)).await.unwrap();
    assert_eq!((r.status_code, code(&r)), (404, Some(26304)));
    assert!(t.elapsed() < Duration::from_secs(2));

    // Wrong descriptor length.
    let r = client.match_descriptor(req(bare[..100].to_vec(), "faces", 5)).await.unwrap();
    assert_eq!((r.status_code, code(&r)), (400, Some(26302)));

    // Malformed entry with a response channel: 26301.
    let v = b"59".as_slice();
    let r = raw_request(
        &redis,
        &[
            ("descriptor", &bare),
            ("version", v),
            ("label", b"faces"),
            ("limit", b"abc"),
            ("response_channel", b"t1"),
            ("rid", b"r1"),
        ],
        Some("t1"),
    )
    .unwrap();
    assert_eq!((r.status_code, code(&r), r.rid.as_str()), (400, Some(26301), "r1"));
    assert!(r.error.unwrap().detail.contains("limit"));
    // Label field that contradicts the stream: 26301.
    let r = raw_request(
        &redis,
        &[
            ("descriptor", &bare),
            ("version", v),
            ("label", b"other"),
            ("limit", b"1"),
            ("response_channel", b"t2"),
            ("rid", b"r2"),
        ],
        Some("t2"),
    )
    .unwrap();
    assert_eq!(code(&r), Some(26301));
    // Expired deadline: 26309 without a search.
    let past = (kim_api::unix_ms() - 1000).to_string();
    let r = raw_request(
        &redis,
        &[
            ("descriptor", &bare),
            ("version", v),
            ("label", b"faces"),
            ("limit", b"1"),
            ("response_channel", b"t3"),
            ("rid", b"r3"),
            ("deadline", past.as_bytes()),
        ],
        Some("t3"),
    )
    .unwrap();
    assert_eq!((r.status_code, code(&r)), (504, Some(26309)));
    assert!(r.result.is_empty());
    // Malformed entry with no channel: acknowledged and dropped, matcher keeps serving.
    raw_request(&redis, &[("descriptor", &bare), ("garbage", b"1")], None);
    // Nothing is pending until the matcher has read the entry, so wait for its log line too.
    wait_until(Duration::from_secs(5), "malformed entry to be logged and acked", || {
        m.proc.log_text().contains("no response channel") && pending(&redis) == 0
    });
    let r = client.match_descriptor(req(bare.clone(), "faces", 5)).await.unwrap();
    assert_eq!(r.result, a.result);

    // Registry: labels, info, TTL.
    assert_eq!(client.read_matching_labels().await.unwrap(), vec!["faces".to_string()]);
    assert!(client.check_matching_label("faces").await.unwrap());
    let info = client.label_info("faces").await.unwrap();
    assert_eq!((info.len(), info[0].vectors, info[0].version, info[0].encoding.as_str()), (1, 20_000, 59, "u8"));
    let ttl: i64 = redis.conn().pttl("matching_label__faces__m1").unwrap();
    assert!(ttl > 0 && ttl <= 10_000, "ttl {ttl}");

    // Metrics reflect what happened.
    assert!(m.metric("kim_matcher_requests_total{label=\"faces\",status=\"201\"}") >= 200.0);
    assert_eq!(m.metric("kim_matcher_requests_total{label=\"faces\",status=\"504\"}"), 1.0);
    assert_eq!(m.metric("kim_matcher_index_vectors{label=\"faces\"}"), 20_000.0);

    // SIGTERM: clean exit, registry key gone.
    m.proc.signal("TERM");
    let status = m.proc.wait_exit(Duration::from_secs(10)).expect("matcher exits after SIGTERM");
    assert!(status.success(), "exit {status:?}");
    let exists: bool = redis.conn().exists("matching_label__faces__m1").unwrap();
    assert!(!exists);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_groups_backlog_is_exported() {
    let f = Fixture::new(500);
    let redis = Redis::start(f.path());
    let m = Matcher::start("m", f.path(), &f.storage, &redis, &["--claim-idle", "120s"]);
    m.wait_ready();
    // Three requests read by a consumer that never answers (in one transaction, so the live
    // matcher never sees them): pending with the group until claimed, 120 s from now.
    let mut pipe = redis::pipe();
    pipe.atomic();
    for i in 0..3 {
        pipe.cmd("XADD").arg("faces").arg("*").arg("rid").arg(i).ignore();
    }
    pipe.cmd("XREADGROUP").arg("GROUP").arg("kim-matchers").arg("ghost").arg("COUNT").arg(3);
    pipe.arg("STREAMS").arg("faces").arg(">").ignore();
    pipe.exec(&mut redis.conn()).unwrap();
    assert_eq!(pending(&redis), 3);
    wait_until(Duration::from_secs(12), "the pending count exported", || {
        m.metric("kim_matcher_stream_pending{label=\"faces\"}") == 3.0
    });
    assert_eq!(m.metric("kim_matcher_stream_lag{label=\"faces\"}"), 0.0);
    assert!(m.get("/metrics").unwrap().1.contains("kim_matcher_stream_lag{label=\"faces\"} 0"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_matcher_requests_are_answered_by_another() {
    let f = Fixture::new(500);
    let redis = Redis::start(f.path());
    // A long blocking read keeps matcher a's XREADGROUP parked in Redis while it is stopped.
    let a = Matcher::start("a", f.path(), &f.storage, &redis, &["--block", "30s"]);
    a.wait_ready();
    let client = Client::connect(&redis.url()).await.unwrap();
    let probes = f.matrix("mated.npy");
    wait_until(Duration::from_secs(10), "matcher a to park a blocking read", || {
        let info: String = redis::cmd("INFO").arg("clients").query(&mut redis.conn()).unwrap();
        info.lines().any(|l| l.strip_prefix("blocked_clients:").is_some_and(|n| n.trim() != "0"))
    });
    a.signal_stop();
    let n = 40;
    let mut tasks = Vec::new();
    for i in 0..n {
        let c = client.clone();
        let d = probes.row(i % probes.rows).to_vec();
        tasks.push(tokio::spawn(async move {
            let mut m = req(d, "faces", 3);
            m.timeout = Duration::from_secs(30);
            c.match_descriptor(m).await.unwrap()
        }));
    }
    // Redis hands the first entries to the parked read of the stopped matcher.
    let owned_by_a = || -> i64 {
        let v: Vec<(String, i64)> = redis::cmd("XPENDING")
            .arg("faces")
            .arg("kim-matchers")
            .query::<redis::Value>(&mut redis.conn())
            .ok()
            .and_then(|v| match v {
                redis::Value::Array(items) => {
                    items.get(3).and_then(|c| redis::from_redis_value::<Vec<(String, String)>>(c).ok())
                }
                _ => None,
            })
            .unwrap_or_default()
            .into_iter()
            .map(|(c, n)| (c, n.parse().unwrap_or(0)))
            .collect();
        v.iter().filter(|(c, _)| c == "a").map(|(_, n)| *n).sum()
    };
    wait_until(Duration::from_secs(10), "entries pending on the stopped matcher", || owned_by_a() >= 1);
    let mut a = a;
    a.proc.signal("KILL");
    a.proc.wait_exit(Duration::from_secs(5)).unwrap();
    let b = Matcher::start("b", f.path(), &f.storage, &redis, &[]);
    b.wait_ready();
    for t in tasks {
        let r = t.await.unwrap();
        assert_eq!(r.status_code, 201, "{r:?}");
        assert_eq!(r.result.len(), 3);
    }
    wait_until(Duration::from_secs(5), "nothing left pending", || pending(&redis) == 0);
    assert!(b.proc.log_text().contains("claimed entries abandoned"), "b reclaimed a's entries");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_swaps_under_load_and_corrupt_ones_are_rejected() {
    let f = Fixture::new(1_000);
    let redis = Redis::start(f.path());
    let m = Matcher::start("m", f.path(), &f.storage, &redis, &[]);
    m.wait_ready();
    let client = Client::connect(&redis.url()).await.unwrap();
    let first = client.label_info("faces").await.unwrap()[0].snapshot.clone();
    let probes = f.matrix("mated.npy");

    // Load while a rebuild swaps a new snapshot in: no request fails.
    let load = {
        let c = client.clone();
        let rows: Vec<Vec<u8>> = (0..probes.rows).map(|i| probes.row(i).to_vec()).collect();
        tokio::spawn(async move {
            let started = Instant::now();
            let mut answered = 0;
            let mut failed = Vec::new();
            while started.elapsed() < Duration::from_secs(20) && answered < 20_000 {
                let batch: Vec<_> = (0..8)
                    .map(|k| c.match_descriptor(req(rows[(answered + k) % rows.len()].clone(), "faces", 5)))
                    .collect();
                for r in futures::future::join_all(batch).await {
                    let r = r.unwrap();
                    if r.status_code != 201 {
                        failed.push(r);
                    }
                    answered += 1;
                }
                if c.label_info("faces").await.unwrap()[0].snapshot != first && answered > 2_000 {
                    break;
                }
            }
            (answered, failed)
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rebuilt = f.index("faces", "base.npy");
    let (answered, failed) = load.await.unwrap();
    assert!(failed.is_empty(), "{} failed, first {:?}", failed.len(), failed.first());
    let now = client.label_info("faces").await.unwrap()[0].snapshot.clone();
    assert_eq!(now, rebuilt["snapshot"].as_str().unwrap(), "after {answered} requests");
    assert!(m.proc.log_text().contains("snapshot swapped in"));

    // A corrupt snapshot named by CURRENT is rejected; the previous one keeps serving.
    let dir = f.storage.join("default/faces");
    let bad = "29991231t000000000z-badbad";
    let src = dir.join("snapshots").join(&now);
    let dst = dir.join("snapshots").join(bad);
    std::fs::create_dir_all(&dst).unwrap();
    for e in std::fs::read_dir(&src).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dst.join(e.file_name())).unwrap();
    }
    let vb = dst.join("vectors.bin");
    let mut bytes = std::fs::read(&vb).unwrap();
    bytes[1234] ^= 0xff;
    std::fs::write(&vb, bytes).unwrap();
    std::fs::write(dir.join("CURRENT"), format!("{bad}\n")).unwrap();
    wait_until(Duration::from_secs(10), "rejection of the corrupt snapshot", || {
        m.metric("kim_matcher_snapshots_rejected_total{label=\"faces\"}") == 1.0
    });
    assert!(m.proc.log_text().contains("error_code=26308"));
    assert_eq!(client.label_info("faces").await.unwrap()[0].snapshot, now);
    let r = client.match_descriptor(req(probes.row(0).to_vec(), "faces", 5)).await.unwrap();
    assert_eq!(r.status_code, 201);

    // The next good build is picked up again.
    let fixed = f.index("faces", "base.npy");
    let want = fixed["snapshot"].as_str().unwrap().to_string();
    let mut seen = String::new();
    for _ in 0..200 {
        seen = client.label_info("faces").await.unwrap()[0].snapshot.clone();
        if seen == want {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(seen, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_matchers_share_one_label() {
    let f = Fixture::new(500);
    let redis = Redis::start(f.path());
    let a = Matcher::start("a", f.path(), &f.storage, &redis, &["--batch", "4"]);
    // b searches with its own beam (efSearch is a matcher setting, no rebuild).
    let b = Matcher::start("b", f.path(), &f.storage, &redis, &["--batch", "4", "--ef-search", "40"]);
    a.wait_ready();
    b.wait_ready();
    let ef = "kim_matcher_ef_search{label=\"faces\"}";
    let built_with = a.metric(ef);
    assert!(built_with > 0.0 && built_with != 40.0, "a serves the snapshot's own efSearch, got {built_with}");
    assert_eq!(b.metric(ef), 40.0);
    let client = Client::connect(&redis.url()).await.unwrap();
    let probes = f.matrix("mated.npy");
    let mut answers = HashMap::new();
    for round in 0..25 {
        let batch: Vec<_> = (0..16)
            .map(|k| client.match_descriptor(req(probes.row((round * 16 + k) % probes.rows).to_vec(), "faces", 3)))
            .collect();
        for r in futures::future::join_all(batch).await {
            let r = r.unwrap();
            assert_eq!(r.status_code, 201);
            answers.insert(r.rid.clone(), r);
        }
    }
    assert_eq!(answers.len(), 400);
    let series = "kim_matcher_requests_total{label=\"faces\",status=\"201\"}";
    // A matcher counts a request just after its reply is published: let the last batch land.
    wait_until(Duration::from_secs(5), "every answer counted", || a.metric(series) + b.metric(series) >= 400.0);
    let (na, nb) = (a.metric(series), b.metric(series));
    assert_eq!(na + nb, 400.0);
    assert!(na > 0.0 && nb > 0.0, "a answered {na}, b answered {nb}");
}

#[test]
fn index_rejects_bad_input_and_keeps_current() {
    let f = Fixture::new(100);
    let dir = f.storage.join("default/faces");
    let before = std::fs::read_to_string(dir.join("CURRENT")).unwrap();
    let st = f.storage.to_str().unwrap();
    let data = |n: &str| f.data.join(n).to_str().unwrap().to_string();
    let tm = f.path().join("termination");
    let base = data("base.npy");
    let ids = data("ids.txt");
    let short_ids = f.path().join("short.txt");
    std::fs::write(&short_ids, "a\nb\n").unwrap();
    let dup_ids = f.path().join("dup.txt");
    std::fs::write(&dup_ids, "x\n".repeat(400)).unwrap();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--dimensions", "128"], "dimensions"),
        (vec!["--ids", short_ids.to_str().unwrap()], "2 ids for 400"),
        (vec!["--ids", dup_ids.to_str().unwrap()], "duplicate id"),
        (vec!["--encoding", "f32"], "source elements are u8"),
        (vec!["--m", "1"], "m must be"),
    ];
    for (extra, want) in cases {
        let mut args = vec![
            "index",
            "--label",
            "faces",
            "--storage",
            st,
            "--source",
            &base,
            "--version",
            "59",
            "--termination-message-path",
            tm.to_str().unwrap(),
        ];
        if !extra.contains(&"--ids") {
            args.extend(["--ids", &ids]);
        }
        args.extend(extra.iter().copied());
        let err = worker_fails(&args);
        assert!(err.contains(want), "{extra:?}: {err}");
        let msg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&tm).unwrap()).unwrap();
        assert!(msg["error"].as_str().unwrap().contains(want));
    }
    let err = worker_fails(&["index", "--label", "../x", "--storage", st, "--source", &base, "--version", "59"]);
    assert!(err.contains("label"), "{err}");
    let err = worker_fails(&[
        "index",
        "--label",
        "faces",
        "--storage",
        st,
        "--source",
        "/nonexistent.npy",
        "--version",
        "59",
    ]);
    assert!(err.contains("nonexistent"), "{err}");
    assert_eq!(std::fs::read_to_string(dir.join("CURRENT")).unwrap(), before, "CURRENT untouched by failed builds");
}

/// An f32 cosine snapshot is served with 8-bit codes of its rows (the graph walked on the
/// codes, the best candidates re-ranked on the f32 rows): through Redis, every similarity must
/// equal the one computed from the exact f32 vectors, and recall must hold.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f32_index_answers_with_exact_similarities() {
    let dir = tempfile::tempdir().unwrap();
    let (data, storage) = (dir.path().join("data"), dir.path().join("storage"));
    let d = |n: &str| data.join(n).to_str().unwrap().to_string();
    worker(&[
        "gen",
        "--out",
        data.to_str().unwrap(),
        "--identities",
        "2000",
        "--samples",
        "4",
        "--encoding",
        "f32",
        "--mated-probes",
        "100",
        "--nonmated-probes",
        "100",
    ]);
    worker(&[
        "index",
        "--label",
        "faces",
        "--storage",
        storage.to_str().unwrap(),
        "--source",
        &d("base.npy"),
        "--ids",
        &d("ids.txt"),
        "--version",
        "59",
        "--encoding",
        "f32",
        "--threads",
        "2",
    ]);
    let redis = Redis::start(dir.path());
    let m = Matcher::start("m1", dir.path(), &storage, &redis, &[]);
    m.wait_ready();
    let client = Client::connect(&redis.url()).await.unwrap();

    let spec = kim_index::DescriptorSpec::new(59, 512, kim_index::Encoding::F32, kim_index::Metric::Cosine);
    let store =
        kim_index::VectorStore::from_matrix(&spec, &kim_index::Matrix::read(&data.join("base.npy")).unwrap()).unwrap();
    let ids: Vec<String> = std::fs::read_to_string(data.join("ids.txt")).unwrap().lines().map(str::to_string).collect();
    let row_of: HashMap<&str, usize> = ids.iter().enumerate().map(|(i, id)| (id.as_str(), i)).collect();
    let (mut found, mut total) = (0usize, 0usize);
    for set in ["mated", "nonmated"] {
        let probes = kim_index::Matrix::read(&data.join(format!("{set}.npy"))).unwrap();
        let truth: Vec<String> = std::fs::read_to_string(data.join(format!("{set}_truth.txt")))
            .unwrap()
            .lines()
            .map(str::to_string)
            .collect();
        #[allow(clippy::needless_range_loop)] // i indexes both the probes and their truth
        for i in 0..probes.rows {
            let r = client.match_descriptor(req(probes.row(i).to_vec(), "faces", 10)).await.unwrap();
            assert_eq!(r.status_code, 201, "{r:?}");
            let q = spec.decode(probes.row(i), 59).unwrap();
            let p = store.prepare(&q);
            for (id, sim) in &r.result {
                let want = kim_index::vectors::similarity(spec.metric, store.distance(&p, row_of[id.as_str()]));
                assert_eq!(*sim, want, "{set} probe {i}, {id}: similarity from the exact f32 distance");
            }
            found += truth[i].split(' ').filter(|t| r.result.iter().any(|(id, _)| id == t)).count();
            total += 10;
        }
    }
    let recall = found as f64 / total as f64;
    eprintln!("f32 recall@10 through redis: {recall:.4}");
    assert!(recall >= 0.95, "recall {recall}");
}

/// A reply that takes longer than the client's idle-subscription ping (5 s) still arrives: the
/// ping must keep the subscription, not tear it down and fail the waiting call early.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_slower_than_the_subscription_ping_still_arrives() {
    let f = Fixture::new(200);
    let redis = Redis::start(f.path());
    let m = Matcher::start("slow", f.path(), &f.storage, &redis, &[]);
    m.wait_ready();
    let client = Client::connect(&redis.url()).await.unwrap();
    let probe = f.matrix("mated.npy").row(0).to_vec();
    assert_eq!(client.match_descriptor(req(probe.clone(), "faces", 1)).await.unwrap().status_code, 201);
    let connections = |redis: &Redis| -> u64 {
        let info: String = redis::cmd("INFO").arg("stats").query(&mut redis.conn()).unwrap();
        let line = info.lines().find_map(|l| l.strip_prefix("total_connections_received:")).unwrap();
        line.trim().parse().unwrap()
    };
    m.signal_stop();
    let before = connections(&redis);
    let started = Instant::now();
    let call = {
        let client = client.clone();
        tokio::spawn(async move {
            let mut slow = req(probe, "faces", 1);
            slow.timeout = Duration::from_secs(40);
            client.match_descriptor(slow).await.unwrap()
        })
    };
    // Two ping periods and more pass while the only matcher is stopped.
    tokio::time::sleep(Duration::from_secs(12)).await;
    assert!(!call.is_finished(), "the call ended while its matcher was stopped: {:?}", call.await.unwrap());
    // One connection is the INFO probe itself; a torn-down subscription would add one per ping.
    assert_eq!(connections(&redis), before + 1, "the client re-subscribed while its call was waiting");
    m.proc.signal("CONT");
    let r = call.await.unwrap();
    assert_eq!(r.status_code, 201, "{r:?}");
    assert!(started.elapsed() >= Duration::from_secs(12));
}
