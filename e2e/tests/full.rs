//! The full end-to-end tier (issue 5 item 4), without Docker: a real control plane from
//! e2e/cluster.sh (etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kwok), the
//! node harness playing one extra node, `helm install` of charts/kim (operator as the chart's
//! ServiceAccount), `kubectl apply -f deploy/samples/`, a real `kim-worker index` build, real
//! `kim-worker match` matchers, matches through a loopback Redis with the Python client and
//! the Rust client, a rebuild under load, and a clean teardown.
//!
//! Needs `target/<profile>/kim-worker` and `kim-operator` built first (scripts/test.sh builds
//! every binary before the tests; by hand: `cargo build --release -p kim-worker -p kim-operator`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kim_e2e::node::{Config, Harness, Image};
use kim_testkit::{cache, repo, tool, Cluster, Profile, Redis};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::Client;

const NS: &str = "kim";
const NODE: &str = "kim-harness-0";
const LABEL: &str = "faces";
const VERSION: u32 = 59;

/// `target/<profile>`: this test binary lives in its `deps/`.
fn profile_dir() -> PathBuf {
    std::env::current_exe().unwrap().parent().unwrap().parent().unwrap().to_path_buf()
}

fn log(t0: Instant, what: &str) {
    eprintln!("[full {:>6.1}s] {what}", t0.elapsed().as_secs_f64());
}

/// The full control plane, with the audit log recording every request of the operator's
/// ServiceAccount (metadata only), for the RBAC check.
fn cluster_up() -> Cluster {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("audit-policy.yaml");
    let sa = format!("system:serviceaccount:{NS}:kim-operator");
    std::fs::write(&policy, format!("apiVersion: audit.k8s.io/v1\nkind: Policy\nomitStages: [RequestReceived]\nrules:\n- level: Metadata\n  users: [\"{sa}\"]\n- level: None\n")).unwrap();
    Cluster::up_with(Profile::Full, dir, &[("KIM_AUDIT_POLICY", &policy)])
}

/// A client with the admin kubeconfig, plus the server URL and CA the harness hands to pods.
async fn client(c: &Cluster) -> (Client, String, String) {
    let kc = Kubeconfig::read_from(&c.kubeconfig).unwrap();
    let cluster = kc.clusters[0].cluster.clone().unwrap();
    let server = cluster.server.clone().unwrap();
    let ca = cluster.certificate_authority_data.clone().unwrap();
    let cfg = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await.unwrap();
    (Client::try_from(cfg).unwrap(), server, ca)
}

/// Polls `f` until it returns Some, at most `secs` seconds; `why` explains a timeout.
async fn eventually<T, F: FnMut() -> Option<T>>(secs: u64, what: &str, mut f: F, why: impl Fn() -> String) -> T {
    let t = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(t.elapsed() < Duration::from_secs(secs), "timed out after {secs}s waiting for {what}\n{}", why());
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Row `row` of a 2-D u8 .npy file.
fn npy_row(path: &Path, row: usize) -> Vec<u8> {
    let b = std::fs::read(path).unwrap();
    assert_eq!(&b[..6], b"\x93NUMPY", "{} is not .npy", path.display());
    let hlen = u16::from_le_bytes([b[8], b[9]]) as usize;
    let header = String::from_utf8_lossy(&b[10..10 + hlen]);
    assert!(header.contains("'|u1'"), "expected u8 data: {header}");
    let dims: usize = header
        .split("shape': (")
        .nth(1)
        .unwrap()
        .split(',')
        .nth(1)
        .unwrap()
        .trim()
        .trim_end_matches(')')
        .parse()
        .unwrap();
    b[10 + hlen + row * dims..10 + hlen + (row + 1) * dims].to_vec()
}

/// Tail of the harness's container logs whose file name contains `part`.
fn logs(root: &Path, part: &str) -> String {
    let mut out = String::new();
    for e in std::fs::read_dir(root.join("logs")).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.contains(part) {
            let text = std::fs::read_to_string(e.path()).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            out += &format!("---- {name}\n{}\n", lines[lines.len().saturating_sub(30)..].join("\n"));
        }
    }
    out
}

/// One match through the Python client (clients/python in the test venv).
fn python_match(redis_url: &str, label: &str, descriptor: &[u8]) -> serde_json::Value {
    let venv = cache().join("venv/bin/python");
    let script = r#"
import asyncio, json, sys
from kim_client import MatcherClient, RawDescriptor
async def main():
    async with await MatcherClient.create(sys.argv[1]) as c:
        r = await c.match(RawDescriptor(bytes.fromhex(sys.argv[2]), int(sys.argv[3])), sys.argv[4], limit=3, timeout=10.0)
        print(json.dumps(r))
asyncio.run(main())
"#;
    let hex: String = descriptor.iter().map(|b| format!("{b:02x}")).collect();
    let out = Command::new(venv)
        .args(["-c", script, redis_url, &hex, &VERSION.to_string(), label])
        .env("PYTHONPATH", repo().join("clients/python/src"))
        .output()
        .unwrap();
    assert!(out.status.success(), "python client: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Matches `probe` in a loop until `stop` (bounded by count and time); returns (ok, failed, errors).
async fn match_loop(
    url: String,
    label: &'static str,
    probe: Vec<u8>,
    expected: String,
    stop: Arc<AtomicBool>,
) -> (usize, usize, Vec<String>) {
    let client = kim_client::Client::connect(&url).await.unwrap();
    let t = Instant::now();
    let (mut ok, mut failed, mut errors) = (0, 0, Vec::new());
    while !stop.load(Ordering::SeqCst) && ok + failed < 100_000 && t.elapsed() < Duration::from_secs(240) {
        let m = kim_client::Match {
            descriptor: probe.clone(),
            version: VERSION,
            label: label.into(),
            limit: 1,
            threshold: None,
            luna_request_id: None,
            timeout: Duration::from_secs(5),
        };
        match client.match_descriptor(m).await {
            Ok(r) if r.error.is_none() && r.result.first().is_some_and(|(id, _)| *id == expected) => ok += 1,
            Ok(r) => {
                failed += 1;
                errors.push(format!("{:?} {:?}", r.error, r.result.first()));
            }
            Err(e) => {
                failed += 1;
                errors.push(e.to_string());
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (ok, failed, errors)
}

/// (apiGroup, resource[/subresource], verb)
type Access = (String, String, String);

/// What the chart's ClusterRole/Roles grant the operator's ServiceAccount, from `helm template`
/// (without the uninstall hook, whose roles are bound to its own ServiceAccount).
fn granted(c: &Cluster, redis_url: &str) -> std::collections::BTreeSet<Access> {
    let chart = repo().join("charts/kim");
    let set = format!("redis.url={redis_url}");
    let yaml = c.ok("helm", &["template", "kim", chart.to_str().unwrap(), "-n", NS, "--no-hooks", "--set", &set], None);
    let mut out = std::collections::BTreeSet::new();
    for doc in yaml.split("\n---") {
        let v: serde_json::Value = serde_yaml::from_str(doc).unwrap_or_default();
        if !matches!(v["kind"].as_str(), Some("ClusterRole" | "Role")) {
            continue;
        }
        for rule in v["rules"].as_array().unwrap() {
            let strs = |k: &str| {
                rule[k].as_array().unwrap().iter().map(|x| x.as_str().unwrap().to_string()).collect::<Vec<_>>()
            };
            for g in strs("apiGroups") {
                for r in strs("resources") {
                    for verb in strs("verbs") {
                        out.insert((g.clone(), r.clone(), verb));
                    }
                }
            }
        }
    }
    out
}

/// What the operator's ServiceAccount asked the API server for, from the audit log.
fn used(c: &Cluster) -> std::collections::BTreeSet<Access> {
    let log = std::fs::read_to_string(c.cluster_dir().join("logs/audit.log")).expect("audit log");
    let mut out = std::collections::BTreeSet::new();
    for line in log.lines() {
        let e: serde_json::Value = serde_json::from_str(line).unwrap();
        let o = &e["objectRef"];
        let Some(res) = o["resource"].as_str() else { continue };
        // Self reviews (the test's `kubectl auth whoami` with the operator's kubeconfig) are
        // open to every authenticated user; they are not the chart's business.
        if matches!(o["apiGroup"].as_str(), Some("authentication.k8s.io" | "authorization.k8s.io")) {
            continue;
        }
        let res = match o["subresource"].as_str() {
            Some(sub) => format!("{res}/{sub}"),
            None => res.to_string(),
        };
        out.insert((o["apiGroup"].as_str().unwrap_or("").to_string(), res, e["verb"].as_str().unwrap().to_string()));
    }
    out
}

/// Grants this run may leave unused, each for a stated reason; any other unused grant fails
/// the test, so the chart's RBAC stays exactly what the operator needs.
fn may_be_unused(a: &Access) -> Option<&'static str> {
    let (g, r, v) = (a.0.as_str(), a.1.as_str(), a.2.as_str());
    match (g, r, v) {
        (_, _, "create")
            if matches!(
                r,
                "jobs"
                    | "deployments"
                    | "statefulsets"
                    | "services"
                    | "persistentvolumeclaims"
                    | "poddisruptionbudgets"
            ) =>
        {
            Some("server-side apply that creates an object is audited as patch but authorized for create too")
        }
        ("apps", "statefulsets", _) | ("", "services", _) => Some("online path (spec.online), not in the samples"),
        ("", "persistentvolumeclaims", "get" | "patch") => {
            Some("Indexer with storage.size; the samples use existingClaim")
        }
        ("", "persistentvolumeclaims", "delete") => Some("online agents' claims (deletionPolicy Delete)"),
        ("kim.dev", _, "update") if r.ends_with("/finalizers") => {
            Some("only with the OwnerReferencesPermissionEnforcement admission plugin")
        }
        ("events.k8s.io", "events", "patch") => Some("only when the same event repeats (event series)"),
        ("coordination.k8s.io", "leases", "create") => Some("only the first replica ever creates the Lease"),
        ("keda.sh", "scaledobjects", _) => Some("matcher.autoscaling.keda, not in the samples"),
        _ => None,
    }
}

fn field(c: &Cluster, kind: &str, name: &str, path: &str) -> String {
    let out = c.run("kubectl", &["get", kind, name, "-n", NS, "-o", &format!("jsonpath={path}")], None);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A MatchingIndex on the samples' data with other settings, in the samples' Indexer.
fn sample_mi(name: &str, dimensions: u32) -> String {
    format!(
        "apiVersion: kim.dev/v1alpha1\nkind: MatchingIndex\nmetadata: {{name: {name}}}\nspec:\n  indexerRef: {{name: kim-sample}}\n  descriptor: {{version: {VERSION}, dimensions: {dimensions}, encoding: u8, metric: cosine}}\n  source: {{path: data/base.npy, idsPath: data/ids.txt}}\n  matcher: {{replicas: 1, threads: 1}}\n  redis: {{secretRef: {{name: kim-redis, key: url}}}}\n"
    )
}

/// Deletes a MatchingIndex and waits (2 minutes at most) until the API server no longer has it,
/// i.e. its finalizer's cleanup is done.
async fn delete_mi(c: &Cluster, name: &str, why: impl Fn() -> String) {
    c.kubectl(&["delete", "mi", name, "-n", NS, "--wait=false"]);
    let gone = || c.run("kubectl", &["get", "mi", name, "-n", NS], None).status.code().filter(|&code| code != 0);
    eventually(120, &format!("MatchingIndex {name} deleted"), gone, why).await;
}

/// A label split in two shards: one Indexed build Job through the real Job controller (each
/// pod builds the shard of its completion index), a matcher Deployment per shard, and the
/// unchanged Python client gets one merged answer; deleting it runs the cleanup of every shard.
async fn split_label(c: &Cluster, root: &Path, t0: Instant, redis_url: &str, (probe, expected): (&[u8], &str)) {
    let yaml = sample_mi("split", 128).replace("spec:\n", "spec:\n  shards: 2\n");
    c.ok("kubectl", &["apply", "-n", NS, "-f", "-"], Some(&yaml));
    let why = || format!("{}\n{}", c.kubectl(&["get", "mi,jobs,pods", "-n", NS]), logs(root, "split"));
    let shards = eventually(
        180,
        "split Ready",
        || {
            let both = "{.status.phase}{\"\\n\"}{.status.currentSnapshot.shards[*].vectors}";
            let out = field(c, "mi", "split", both);
            let (phase, vectors) = out.split_once('\n').unwrap_or((&out, ""));
            (phase == "Ready").then(|| vectors.to_string())
        },
        why,
    )
    .await;
    let per_shard: Vec<u64> = shards.split_whitespace().map(|v| v.parse().unwrap()).collect();
    assert_eq!((per_shard.len(), per_shard.iter().sum::<u64>()), (2, 2000), "shards' vectors: {shards}");
    let sel = "kim.dev/matching-index=split,kim.dev/component=build";
    let job = c.kubectl(&[
        "get",
        "jobs",
        "-n",
        NS,
        "-l",
        sel,
        "-o",
        "jsonpath={.items[0].spec.completionMode} {.items[0].status.succeeded}",
    ]);
    assert_eq!(job.trim(), "Indexed 2", "the split label's build Job");
    let deployments = c.kubectl(&["get", "deployments", "-n", NS, "-l", "kim.dev/matching-index=split", "-o", "name"]);
    assert_eq!(deployments.lines().count(), 2, "{deployments}");
    let got = python_match(redis_url, "split", probe);
    assert!(got["error"].is_null(), "python client on the split label: {got}");
    assert_eq!(got["result"][0][0], expected, "python client on the split label: {got}");
    log(t0, &format!("split label Ready with shards of {shards} vectors; python client -> {}", got["result"][0]));

    // 2 → 3 shards under a steady load: the 2-shard matchers answer until all 3-shard ones are
    // ready, then go; not one request fails.
    let stop = Arc::new(AtomicBool::new(false));
    let looping =
        tokio::spawn(match_loop(redis_url.to_string(), "split", probe.to_vec(), expected.to_string(), stop.clone()));
    let switched = Instant::now();
    c.ok("kubectl", &["patch", "mi", "split", "-n", NS, "--type", "merge", "-p", r#"{"spec":{"shards":3}}"#], None);
    let names = || c.kubectl(&["get", "deployments", "-n", NS, "-l", "kim.dev/matching-index=split", "-o", "name"]);
    let want = "deployment.apps/split-matcher-0-of-3\ndeployment.apps/split-matcher-1-of-3\ndeployment.apps/split-matcher-2-of-3";
    eventually(
        240,
        "split switched to 3 shards",
        || (names().trim() == want && field(c, "mi", "split", "{.status.phase}") == "Ready").then_some(()),
        why,
    )
    .await;
    stop.store(true, Ordering::SeqCst);
    let (ok, failed, errors) = looping.await.unwrap();
    assert_eq!(failed, 0, "requests failed while the label changed its split: {errors:?}");
    assert!(ok > 0);
    let vectors = field(c, "mi", "split", "{.status.currentSnapshot.shards[*].vectors}");
    let per_shard: Vec<u64> = vectors.split_whitespace().map(|v| v.parse().unwrap()).collect();
    assert_eq!((per_shard.len(), per_shard.iter().sum::<u64>()), (3, 2000), "shards' vectors: {vectors}");
    let events = c.kubectl(&[
        "get",
        "events",
        "-n",
        NS,
        "--field-selector",
        "involvedObject.name=split",
        "-o",
        "jsonpath={.items[*].reason}",
    ]);
    for reason in ["SwitchingShards", "ShardsSwitched"] {
        assert!(events.contains(reason), "{reason} among the Events: {events}");
    }
    // The 2-shard layout's consumer groups go once its pods are gone (status lists them until
    // then).
    let mut conn = redis::Client::open(redis_url).unwrap().get_multiplexed_async_connection().await.unwrap();
    let new_groups = ["kim-matchers-0-of-3", "kim-matchers-1-of-3", "kim-matchers-2-of-3"];
    let mut groups = Vec::new();
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(60) {
        let info: redis::streams::StreamInfoGroupsReply =
            redis::cmd("XINFO").arg("GROUPS").arg("split").query_async(&mut conn).await.unwrap();
        groups = info.groups.into_iter().map(|g| g.name).collect();
        if groups == new_groups {
            break;
        }
        // Status wrote Ready together with the groups to retire: until they go, it lists them.
        assert!(
            groups.len() <= new_groups.len() || !field(c, "mi", "split", "{.status.retiredGroups}").is_empty(),
            "groups {groups:?} on the stream, none retired in status"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(groups, new_groups, "groups left on the stream");
    eventually(
        10,
        "status.retiredGroups emptied",
        || field(c, "mi", "split", "{.status.retiredGroups}").is_empty().then_some(()),
        why,
    )
    .await;
    log(
        t0,
        &format!(
            "split label switched 2 -> 3 shards ({vectors}) in {:?}; {ok} requests meanwhile, none failed",
            switched.elapsed()
        ),
    );
    delete_mi(c, "split", why).await;
}

/// Writes `rows` (whole rows of `template`'s width, appended to its data) as a 2-D u8 .npy at
/// `dst`, atomically (a temp file renamed): `template`'s header with the new row count.
fn write_npy_with(template: &Path, dst: &Path, rows: &[u8]) {
    let b = std::fs::read(template).unwrap();
    let hlen = u16::from_le_bytes([b[8], b[9]]) as usize;
    let header = String::from_utf8_lossy(&b[10..10 + hlen]).into_owned();
    let shape = header.split("shape': (").nth(1).unwrap().split(')').next().unwrap().to_string();
    let (n, d) = shape.split_once(',').unwrap();
    let (n, d): (usize, usize) = (n.trim().parse().unwrap(), d.trim().parse().unwrap());
    assert_eq!(rows.len() % d, 0);
    let grown = header.replacen(&format!("({n}, {d})"), &format!("({}, {d})", n + rows.len() / d), 1);
    assert_eq!(grown.len(), header.len(), "the row count keeps its width in the header");
    let mut out = b[..10].to_vec();
    out.extend_from_slice(grown.as_bytes());
    out.extend_from_slice(&b[10 + hlen..]);
    out.extend_from_slice(rows);
    let tmp = dst.with_extension("tmp");
    std::fs::write(&tmp, out).unwrap();
    std::fs::rename(tmp, dst).unwrap();
}

/// `rebuild.refresh` on the real cluster: a MatchingIndex over its own copy of the sample
/// data refreshes every 10 s; a descriptor enrolled in the source (appended to the .npy and
/// the ids) is written as a delta by the operator's refresh Job, applied by the running
/// matcher without a reload, and found by the Python client; status says what the Job did and
/// what the matcher applies.
async fn refresh_label(c: &Cluster, root: &Path, t0: Instant, redis_url: &str, data: &Path, probe: &[u8]) {
    std::fs::copy(data.join("base.npy"), data.join("watch.npy")).unwrap();
    std::fs::copy(data.join("ids.txt"), data.join("watch-ids.txt")).unwrap();
    let yaml = sample_mi("watch", 128)
        .replace("data/base.npy", "data/watch.npy")
        .replace("data/ids.txt", "data/watch-ids.txt")
        .replace("spec:\n", "spec:\n  rebuild: {refresh: {interval: 10s}}\n");
    c.ok("kubectl", &["apply", "-n", NS, "-f", "-"], Some(&yaml));
    let why = || {
        format!(
            "{}\n{}\n{}",
            c.kubectl(&["get", "mi,jobs,pods", "-n", NS]),
            field(c, "mi", "watch", "{.status}"),
            logs(root, "watch")
        )
    };
    eventually(120, "watch Ready", || (field(c, "mi", "watch", "{.status.phase}") == "Ready").then_some(()), why).await;
    let snapshot = field(c, "mi", "watch", "{.status.currentSnapshot.id}");

    // Enrol one descriptor: a changed copy of the probe, under a new id.
    let enrolled: Vec<u8> =
        probe.iter().enumerate().map(|(i, b)| if i < 32 { b.wrapping_add(40) } else { *b }).collect();
    write_npy_with(&data.join("watch.npy"), &data.join("watch.npy"), &enrolled);
    let ids = std::fs::read_to_string(data.join("watch-ids.txt")).unwrap();
    std::fs::write(data.join("watch-ids.tmp"), format!("{}\nenrolled-0001\n", ids.trim_end())).unwrap();
    std::fs::rename(data.join("watch-ids.tmp"), data.join("watch-ids.txt")).unwrap();
    let enrolled_at = Instant::now();
    let message = eventually(
        60,
        "a refresh that wrote the delta",
        || Some(field(c, "mi", "watch", "{.status.refresh.message}")).filter(|m| m.contains("1 rows added")),
        why,
    )
    .await;
    let got = eventually(
        30,
        "the enrolled descriptor found",
        || Some(python_match(redis_url, "watch", &enrolled)).filter(|g| g["result"][0][0] == "enrolled-0001"),
        why,
    )
    .await;
    let found_in = enrolled_at.elapsed();
    assert!(got["result"][0][1].as_f64().unwrap() > 0.999, "{got}");
    assert_eq!(field(c, "mi", "watch", "{.status.currentSnapshot.id}"), snapshot, "a delta, not a rebuild");
    eventually(
        30,
        "status with the delta the matcher applies",
        || {
            (field(c, "mi", "watch", "{.status.currentSnapshot.deltas} {.status.currentSnapshot.tailRows}") == "1 1")
                .then_some(())
        },
        why,
    )
    .await;
    let matcher_log: String = std::fs::read_dir(root.join("logs"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains("watch-matcher"))
        .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
        .collect();
    assert_eq!(matcher_log.matches("snapshot loaded").count(), 1, "loaded once, at start:\n{matcher_log}");
    assert!(!matcher_log.contains("snapshot swapped in"), "the matcher reloaded:\n{matcher_log}");
    log(
        t0,
        &format!(
            "refresh: {message}; the enrolled descriptor matched {found_in:?} after it was written -> {}",
            got["result"][0]
        ),
    );
    delete_mi(c, "watch", why).await;
}

/// A build that cannot succeed (the data has 128 dimensions, the spec says 64) exits with the
/// configuration code; the Job's podFailurePolicy fails it on that first attempt instead of
/// retrying, and the Indexer's only build slot goes at once to the build queued behind it.
async fn fail_fast(c: &Cluster, root: &Path, t0: Instant) {
    let applied = Instant::now();
    c.ok("kubectl", &["apply", "-n", NS, "-f", "-"], Some(&sample_mi("wrong-dims", 64)));
    let job_of = |mi: &str| {
        let sel = format!("kim.dev/matching-index={mi},kim.dev/component=build");
        let out =
            c.run("kubectl", &["get", "jobs", "-n", NS, "-l", &sel, "-o", "jsonpath={.items[0].metadata.name}"], None);
        Some(String::from_utf8_lossy(&out.stdout).into_owned()).filter(|j| !j.is_empty())
    };
    let why = || format!("{}\n{}", c.kubectl(&["get", "mi,jobs,pods", "-n", NS]), logs(root, "wrong-dims"));
    let job = eventually(60, "the wrong-dims build Job", || job_of("wrong-dims"), why).await;
    // Queued behind it: the Indexer allows one build at a time.
    c.ok("kubectl", &["apply", "-n", NS, "-f", "-"], Some(&sample_mi("queued", 128)));
    let message = eventually(
        60,
        "wrong-dims Failed",
        || {
            // One read of both fields: the phase and the message come from the same status write.
            let both = r#"{.status.phase}{"\n"}{.status.conditions[?(@.type=="BuildFailed")].message}"#;
            let out = field(c, "mi", "wrong-dims", both);
            let (phase, m) = out.split_once('\n').unwrap_or((&out, ""));
            (phase == "Failed").then(|| m.to_string())
        },
        why,
    )
    .await;
    let failed_after = applied.elapsed();
    assert!(failed_after < Duration::from_secs(30), "the build took {failed_after:?} to fail: {message}");
    assert!(message.contains("dimension"), "status message: {message}");
    let reason = field(c, "job", &job, r#"{.status.conditions[?(@.type=="Failed")].reason}"#);
    assert_eq!(reason, "PodFailurePolicy", "the Job should fail by its podFailurePolicy, not by retries");
    assert_eq!(field(c, "job", &job, "{.status.failed}"), "1", "one attempt only");
    let freed = Instant::now();
    eventually(30, "the queued build started", || job_of("queued"), why).await;
    let table = c.kubectl(&["get", "mi", "-n", NS]);
    log(
        t0,
        &format!(
            "wrong dimensions failed in {failed_after:?}; the queued build started {:?} later\n{table}",
            freed.elapsed()
        ),
    );
    // `queued` stays through `helm uninstall`: the chart's post-delete hook must release it.
    delete_mi(c, "wrong-dims", why).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helm_install_samples_match_rebuild_and_uninstall() {
    let t0 = Instant::now();
    let _ = tracing_subscriber::fmt().with_env_filter("kim_e2e=info").with_test_writer().try_init();
    let bins = profile_dir();
    for b in ["kim-worker", "kim-operator"] {
        assert!(
            bins.join(b).exists(),
            "{} missing: build it first (cargo build --release -p kim-worker -p kim-operator)",
            bins.join(b).display()
        );
    }
    let c = cluster_up();
    log(t0, "cluster up (full)");
    let root = c.dir.path().join("harness");
    let (client, server, ca_data) = client(&c).await;
    let redis = Redis::start(c.dir.path());

    // Every pod goes to the harness node: the kwok node takes no new pods.
    c.kubectl(&["cordon", "kim-node-0"]);
    let images = vec![
        Image { name: "kim-worker".into(), binary: bins.join("kim-worker") },
        Image { name: "kim-operator".into(), binary: bins.join("kim-operator") },
    ];
    let harness =
        Harness::start(client.clone(), Config { node: NODE.into(), root: root.clone(), images, server, ca_data })
            .await
            .unwrap();
    c.kubectl(&["wait", "--for=condition=Ready", &format!("node/{NODE}"), "--timeout=30s"]);
    log(t0, "harness node Ready");

    // helm install: two operator replicas (leader election), Redis by URL into the chart's Secret.
    let chart = repo().join("charts/kim");
    c.ok(
        "helm",
        &[
            "install",
            "kim",
            chart.to_str().unwrap(),
            "-n",
            NS,
            "--create-namespace",
            "--set",
            &format!("redis.url={}", redis.url()),
            "--set",
            "replicaCount=2",
            "--wait",
            "--timeout=120s",
        ],
        None,
    );
    log(t0, "helm install --wait done");
    let holder = eventually(
        60,
        "operator leader",
        || {
            Some(field(&c, "lease", "kim-operator", "{.spec.holderIdentity}"))
                .filter(|h| h.starts_with("kim-operator-"))
        },
        || logs(&root, "operator"),
    )
    .await;
    log(t0, &format!("leader: {holder}"));

    c.kubectl(&["apply", "-n", NS, "-f", repo().join("deploy/samples").to_str().unwrap()]);
    log(t0, "samples applied");
    let vectors = eventually(
        240,
        "MatchingIndex Ready",
        || {
            let phase = field(&c, "mi", LABEL, "{.status.phase}");
            let v = field(&c, "mi", LABEL, "{.status.currentSnapshot.vectors}");
            (phase == "Ready").then_some(v)
        },
        || {
            format!(
                "{}\n{}\n{}",
                c.kubectl(&["get", "mi,jobs,pods,pvc", "-n", NS, "-o", "wide"]),
                field(&c, "mi", LABEL, "{.status}"),
                logs(&root, "")
            )
        },
    )
    .await;
    assert_eq!(vectors, "2000");
    let table = c.kubectl(&["get", "mi", "-n", NS]);
    assert!(table.contains("Ready") && table.contains("2000"), "kubectl get mi:\n{table}");
    log(t0, &format!("MatchingIndex Ready:\n{table}"));
    let snapshot = field(&c, "mi", LABEL, "{.status.currentSnapshot.id}");

    // The build really ran kim-worker index, on the harness node, like every other pod.
    assert!(logs(&root, "faces-build-").contains("faces"), "no build log: {}", logs(&root, ""));
    let nodes = c.kubectl(&["get", "pods", "-n", NS, "-o", "jsonpath={range .items[*]}{.spec.nodeName}{\"\\n\"}{end}"]);
    assert!(nodes.lines().all(|n| n == NODE) && nodes.lines().count() >= 4, "pods not all on {NODE}:\n{nodes}");

    // A stored descriptor must find itself: read it back from the claim's directory.
    let pv = field(&c, "pvc", "kim-sample", "{.spec.volumeName}");
    let data = PathBuf::from(c.kubectl(&["get", "pv", &pv, "-o", "jsonpath={.spec.hostPath.path}"])).join("data");
    let row = 1234;
    let probe = npy_row(&data.join("base.npy"), row);
    let expected = std::fs::read_to_string(data.join("ids.txt")).unwrap().lines().nth(row).unwrap().to_string();
    let got = python_match(&redis.url(), LABEL, &probe);
    assert!(got["error"].is_null(), "python client: {got}");
    assert_eq!(got["result"][0][0], expected.as_str(), "python client: {got}");
    log(t0, &format!("python client matched row {row} -> {}", got["result"][0]));

    // Rebuild with new HNSW parameters while a bounded match loop runs: no failed match.
    let stop = Arc::new(AtomicBool::new(false));
    let looping = tokio::spawn(match_loop(redis.url(), LABEL, probe.clone(), expected.clone(), stop.clone()));
    tokio::time::sleep(Duration::from_secs(1)).await;
    c.kubectl(&["patch", "mi", LABEL, "-n", NS, "--type=merge", "-p", r#"{"spec":{"hnsw":{"efConstruction":120}}}"#]);
    let new_snapshot = eventually(
        180,
        "rebuilt snapshot",
        || Some(field(&c, "mi", LABEL, "{.status.currentSnapshot.id}")).filter(|s| !s.is_empty() && *s != snapshot),
        || format!("{}\n{}", c.kubectl(&["get", "mi,jobs,pods", "-n", NS]), logs(&root, "build")),
    )
    .await;
    let rc = kim_client::Client::connect(&redis.url()).await.unwrap();
    let t = Instant::now();
    loop {
        let info = rc.label_info(LABEL).await.unwrap();
        if !info.is_empty() && info.iter().all(|i| i.snapshot == new_snapshot) {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(60), "matchers did not load {new_snapshot}: {info:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::SeqCst);
    let (ok, failed, errors) = looping.await.unwrap();
    assert_eq!(failed, 0, "failed matches during the rebuild: {:?}", &errors[..errors.len().min(5)]);
    assert!(ok >= 20, "only {ok} matches during the rebuild");
    assert!(c.kubectl(&["get", "mi", "-n", NS]).contains("Ready"));
    log(t0, &format!("rebuild {snapshot} -> {new_snapshot} swapped in; {ok} matches, 0 failed"));

    fail_fast(&c, &root, t0).await;
    split_label(&c, &root, t0, &redis.url(), (&probe, &expected)).await;
    refresh_label(&c, &root, t0, &redis.url(), &data, &probe).await;

    // The operator ran as the chart's ServiceAccount, not as admin, and was never forbidden.
    let sa = format!("system:serviceaccount:{NS}:kim-operator");
    let kubeconfigs: Vec<PathBuf> = std::fs::read_dir(root.join("pods"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(&format!("{NS}_kim-operator-")))
        .flat_map(|e| std::fs::read_dir(e.path()).unwrap().flatten().map(|f| f.path()))
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("kubeconfig-"))
        .collect();
    assert_eq!(kubeconfigs.len(), 2, "operator pods' kubeconfigs: {kubeconfigs:?}");
    for kc in &kubeconfigs {
        let who = Command::new(tool("kubectl"))
            .arg("--kubeconfig")
            .arg(kc)
            .args(["auth", "whoami", "-o", "jsonpath={.status.userInfo.username}"])
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&who.stdout), sa, "{}", String::from_utf8_lossy(&who.stderr));
    }
    assert_eq!(c.run("kubectl", &["auth", "can-i", "list", "secrets", "-n", NS, "--as", &sa], None).stdout, b"no\n");
    let op_logs = logs(&root, "_kim-operator-");
    assert!(
        !op_logs.to_lowercase().contains("forbidden"),
        "the chart's RBAC refused the operator something:\n{op_logs}"
    );

    // Deleting the CR runs the cleanup Job and removes its children; uninstall leaves nothing.
    delete_mi(&c, LABEL, || {
        format!(
            "{}\n{}\n{}",
            c.kubectl(&["get", "mi,jobs,pods", "-n", NS, "-o", "wide"]),
            field(&c, "mi", LABEL, "{.status}"),
            logs(&root, "")
        )
    })
    .await;
    log(t0, "MatchingIndex deleted (finalizer done)");
    // Not waited for: the claim stays in use by `queued`'s pods until that MatchingIndex goes.
    let samples = repo().join("deploy/samples");
    c.kubectl(&["delete", "-n", NS, "-f", samples.to_str().unwrap(), "--ignore-not-found", "--wait=false"]);
    assert_eq!(field(&c, "mi", "queued", "{.metadata.finalizers}"), r#"["kim.dev/cleanup"]"#);
    c.ok("helm", &["uninstall", "kim", "-n", NS, "--wait", "--timeout=90s"], None);
    // The post-delete hook released the MatchingIndex left behind: no finalizer waits for the
    // operator that is gone, so deleting it (or the namespace) does not hang.
    assert_eq!(field(&c, "mi", "queued", "{.metadata.finalizers}"), "", "{}", logs(&root, "kim-release"));
    let events = c.kubectl(&["get", "events", "-n", NS, "--field-selector", "involvedObject.name=queued"]);
    assert!(events.contains("FinalizerReleased"), "{events}");
    c.kubectl(&["delete", "mi", "queued", "-n", NS, "--timeout=30s"]);
    log(t0, "helm uninstall released the MatchingIndex left; it was deleted at once");
    let left = eventually(
        90,
        "no children left",
        || {
            let s = String::from_utf8_lossy(
                &c.run(
                    "kubectl",
                    &["get", "jobs,deployments,replicasets,statefulsets,pvc,pods,mi,indexers", "-n", NS, "-o", "name"],
                    None,
                )
                .stdout,
            )
            .into_owned();
            s.trim().is_empty().then_some(s)
        },
        || c.kubectl(&["get", "all,pvc", "-n", NS]),
    )
    .await;
    assert!(left.is_empty());
    let keys: Vec<String> = {
        let mut conn = redis::Client::open(redis.url()).unwrap().get_multiplexed_async_connection().await.unwrap();
        redis::cmd("KEYS").arg("*faces*").query_async(&mut conn).await.unwrap()
    };
    assert!(keys.is_empty(), "Redis keys left for the label: {keys:?}");
    log(t0, "teardown left no children, PVCs, pods or Redis keys");

    // RBAC: everything the operator did is granted, and every grant was used or is explained.
    let (grants, uses) = (granted(&c, &redis.url()), used(&c));
    let missing: Vec<&Access> = uses.iter().filter(|u| !grants.contains(*u)).collect();
    assert!(missing.is_empty(), "the operator used access the chart does not grant: {missing:?}");
    let unexplained: Vec<&Access> =
        grants.iter().filter(|g| !uses.contains(*g) && may_be_unused(g).is_none()).collect();
    assert!(unexplained.is_empty(), "the chart grants access the run never used: {unexplained:?}\nused: {uses:?}");
    let idle: Vec<String> =
        grants.iter().filter(|g| !uses.contains(*g)).map(|g| format!("{}/{} {}", g.0, g.1, g.2)).collect();
    log(
        t0,
        &format!("RBAC: {} grants, {} used by the operator, unused but explained: {idle:?}", grants.len(), uses.len()),
    );
    harness.shutdown(Duration::from_secs(15)).await;
    drop(redis);
}
