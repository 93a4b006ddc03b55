//! Storage full during a build: `kim-worker index` runs with RLIMIT_FSIZE (SIGXFSZ ignored,
//! so writes past the limit fail with EFBIG the way they fail with ENOSPC on a full volume;
//! a tmpfs of fixed size would need mount privileges CI does not have). The build must fail
//! with a clear error, CURRENT must keep naming the previous snapshot, the matcher must keep
//! serving it, and the next build with room must succeed and clear the half-written one.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;
use kim_client::{Client, Match};

fn current(f: &Fixture) -> String {
    std::fs::read_to_string(f.storage.join("default/faces/CURRENT")).unwrap().trim().to_string()
}

fn ask(descriptor: Vec<u8>) -> Match {
    Match {
        descriptor,
        version: 59,
        label: "faces".into(),
        limit: 1,
        threshold: None,
        luna_request_id: None,
        timeout: Duration::from_secs(10),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_storage_fails_the_build_and_the_previous_snapshot_keeps_serving() {
    let f = Fixture::new(300);
    let before = current(&f);
    let redis = Redis::start(f.path());
    let m = Matcher::start("m1", f.path(), &f.storage, &redis, &[]);
    m.wait_ready();
    let client = Client::connect(&redis.url()).await.unwrap();
    let base = f.matrix("base.npy");
    let ids = f.lines("ids.txt");
    let r = client.match_descriptor(ask(base.row(7).to_vec())).await.unwrap();
    assert_eq!((r.status_code, r.result[0].0.as_str()), (201, ids[7].as_str()), "{r:?}");

    // 64 KiB per file: less than vectors.bin (1200 × 512 bytes).
    let script = "trap '' XFSZ; ulimit -f 64; exec \"$@\"";
    let out = Command::new("bash")
        .args(["-c", script, "bash"])
        .arg(worker_bin())
        .args([
            "index",
            "--label",
            "faces",
            "--storage",
            f.storage.to_str().unwrap(),
            "--source",
            f.data.join("base.npy").to_str().unwrap(),
        ])
        .args(["--ids", f.data.join("ids.txt").to_str().unwrap(), "--version", "59", "--threads", "2"])
        .env("KIM_LOG", "warn")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the build succeeded with a full disk: {stderr}");
    assert!(stderr.contains("File too large") && stderr.contains("vectors.bin"), "no clear error: {stderr}");
    assert!(out.stdout.is_empty(), "no success line on stdout");
    let last = stderr.lines().last().unwrap_or_default();
    assert_eq!(last.matches("File too large").count(), 1, "the OS error is said once: {last}");
    eprintln!("build on a full disk: {last}");

    assert_eq!(current(&f), before, "CURRENT still names the previous snapshot");
    let snaps = f.storage.join("default/faces/snapshots");
    let names: Vec<String> =
        std::fs::read_dir(&snaps).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    assert!(
        names.iter().all(|n| n == &before || n.starts_with(".tmp-")),
        "only the live snapshot and the half-written temp dir: {names:?}"
    );
    tokio::time::sleep(Duration::from_millis(500)).await; // two reload intervals
    for i in [7usize, 100, 1199] {
        let r = client.match_descriptor(ask(base.row(i).to_vec())).await.unwrap();
        assert_eq!((r.status_code, r.result[0].0.as_str()), (201, ids[i].as_str()), "{r:?}");
    }
    assert!(m.proc.log_text().lines().all(|l| !l.contains("ERROR")), "{}", m.proc.log_text());

    // With room again the build succeeds and the half-written directory is collected.
    let summary = f.index("faces", "base.npy");
    let after = summary["snapshot"].as_str().unwrap().to_string();
    assert_ne!(after, before);
    assert_eq!(current(&f), after);
    let names: Vec<String> =
        std::fs::read_dir(&snaps).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    assert!(names.iter().all(|n| !n.starts_with(".tmp-")), "{names:?}");
}
