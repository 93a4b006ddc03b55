//! Without a cluster: lint, rendered properties, and drift between the generated copies.

use std::collections::BTreeSet;
use std::process::Command;

use crate::support::{docs, find, kinds, ok, render, repo, run, text};
use serde_json::Value;

#[test]
fn helm_lint_is_clean_for_every_mode() {
    for set in [
        vec![],
        vec!["--set", "watchNamespace=team", "--set", "replicaCount=2"],
        vec!["--set", "redis.deploy=true", "--set", "metrics.serviceMonitor.enabled=true"],
        vec!["--set", "redis.existingSecret=my-redis", "--set", "metrics.service.enabled=false"],
    ] {
        let mut args = vec!["lint", "--strict", "charts/kim", "--namespace", "kim-system"];
        args.extend_from_slice(&set);
        let out = run("helm", &args, &[], None);
        let t = text(&out);
        assert!(out.status.success(), "helm lint {set:?}: {t}");
        assert!(t.contains("1 chart(s) linted, 0 chart(s) failed"), "{t}");
        assert!(!t.contains("[WARNING]") && !t.contains("[ERROR]"), "helm lint {set:?}: {t}");
    }
}

fn operator(d: &[Value]) -> &Value {
    find(d, "Deployment", "kim-operator")
}

fn env(dep: &Value) -> Vec<(String, Value)> {
    dep["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["name"].as_str().unwrap().to_string(),
                e.get("value").or(e.get("valueFrom")).cloned().unwrap_or(Value::Null),
            )
        })
        .collect()
}

fn env_value(dep: &Value, name: &str) -> Option<Value> {
    env(dep).into_iter().find(|(n, _)| n == name).map(|(_, v)| v)
}

#[test]
fn operator_deployment_is_hardened_and_wired() {
    let d = docs(&render(&[]));
    let dep = operator(&d);
    let pod = &dep["spec"]["template"]["spec"];
    let c = &pod["containers"][0];
    assert_eq!(dep["spec"]["replicas"], 1);
    assert_eq!(c["image"], "kim-operator:0.1.0", "tag defaults to appVersion");
    let sc = &c["securityContext"];
    assert_eq!(sc["runAsNonRoot"], true);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["capabilities"]["drop"], serde_json::json!(["ALL"]));
    assert_eq!(sc["seccompProfile"]["type"], "RuntimeDefault");
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert!(pod["securityContext"]["runAsUser"].as_i64().unwrap() > 0);
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert!(
        c["resources"]["requests"]["cpu"].is_string() && c["resources"]["limits"]["memory"].is_string(),
        "resources: {}",
        c["resources"]
    );
    assert_eq!(env_value(dep, "KIM_WORKER_IMAGE").unwrap(), "kim-worker:0.1.0");
    assert_eq!(env_value(dep, "KIM_IMAGE_PULL_POLICY").unwrap(), "IfNotPresent");
    assert_eq!(env_value(dep, "KIM_LEASE_NAME").unwrap(), "kim-operator");
    assert_eq!(env_value(dep, "KIM_HTTP").unwrap(), "0.0.0.0:8080");
    assert_eq!(env_value(dep, "POD_NAME").unwrap()["fieldRef"]["fieldPath"], "metadata.name");
    assert_eq!(env_value(dep, "POD_NAMESPACE").unwrap()["fieldRef"]["fieldPath"], "metadata.namespace");
    assert_eq!(env_value(dep, "KIM_WATCH_NAMESPACE"), None, "cluster mode watches all namespaces");
    assert_eq!(c["args"], serde_json::json!(["--lease-duration=15s"]));
    // Every env name and flag the chart passes is one the operator's parser knows.
    let mut argv = vec!["kim-operator".to_string()];
    argv.extend(c["args"].as_array().unwrap().iter().map(|a| a.as_str().unwrap().to_string()));
    <kim_operator::run::Config as clap::Parser>::try_parse_from(&argv).unwrap();
    let known: BTreeSet<&str> = [
        "KIM_WORKER_IMAGE",
        "KIM_IMAGE_PULL_POLICY",
        "KIM_WATCH_NAMESPACE",
        "KIM_HTTP",
        "KIM_LOG_FORMAT",
        "KIM_LOG",
        "KIM_LEASE_NAME",
        "POD_NAMESPACE",
        "POD_NAME",
    ]
    .into();
    for (name, _) in env(dep) {
        assert!(known.contains(name.as_str()), "env {name} is not read by kim-operator");
    }
    // The ServiceAccount the pod runs as is the one the bindings name.
    let sa = pod["serviceAccountName"].as_str().unwrap();
    find(&d, "ServiceAccount", sa);
    for (kind, name) in [("ClusterRoleBinding", "kim-operator"), ("RoleBinding", "kim-operator-leader-election")] {
        let b = find(&d, kind, name);
        assert_eq!(b["subjects"][0]["name"], sa);
        assert_eq!(b["subjects"][0]["namespace"], "kim-system");
    }
    // The metrics Service selects exactly the operator pods and targets the named port.
    let svc = find(&d, "Service", "kim-operator-metrics");
    let labels = &dep["spec"]["template"]["metadata"]["labels"];
    for (k, v) in svc["spec"]["selector"].as_object().unwrap() {
        assert_eq!(&labels[k], v, "selector {k}");
    }
    assert_eq!(svc["spec"]["ports"][0]["targetPort"], c["ports"][0]["name"]);
    assert!(
        !d.iter().any(|x| x["kind"] == "ServiceMonitor" || x["kind"] == "Secret"),
        "optional objects off by default: {:?}",
        kinds(&d)
    );
    assert!(pod["affinity"].is_null(), "one replica: no anti-affinity");
}

#[test]
fn values_change_what_is_rendered() {
    let d = docs(&render(&[
        "--set",
        "replicaCount=2",
        "--set",
        "image.repository=reg.example/kim-operator",
        "--set",
        "image.tag=dev",
        "--set",
        "workerImage.repository=reg.example/kim-worker",
        "--set",
        "workerImage.tag=dev",
        "--set",
        "workerImage.pullPolicy=Never",
        "--set",
        "leaderElection.leaseName=kim-lock",
        "--set",
        "leaderElection.leaseDuration=7s",
        "--set",
        "logFormat=text",
    ]));
    let dep = operator(&d);
    assert_eq!(dep["spec"]["replicas"], 2);
    let spread = &dep["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]
        ["preferredDuringSchedulingIgnoredDuringExecution"][0]["podAffinityTerm"];
    assert_eq!(spread["topologyKey"], "kubernetes.io/hostname", "two replicas prefer two nodes");
    assert_eq!(&spread["labelSelector"]["matchLabels"], &dep["spec"]["selector"]["matchLabels"]);
    assert_eq!(dep["spec"]["template"]["spec"]["containers"][0]["image"], "reg.example/kim-operator:dev");
    assert_eq!(dep["spec"]["template"]["spec"]["containers"][0]["args"][0], "--lease-duration=7s");
    assert_eq!(env_value(dep, "KIM_WORKER_IMAGE").unwrap(), "reg.example/kim-worker:dev");
    assert_eq!(env_value(dep, "KIM_IMAGE_PULL_POLICY").unwrap(), "Never");
    assert_eq!(env_value(dep, "KIM_LOG_FORMAT").unwrap(), "text");
    assert_eq!(env_value(dep, "KIM_LEASE_NAME").unwrap(), "kim-lock");
    let role = find(&d, "Role", "kim-operator-leader-election");
    assert!(role["rules"].as_array().unwrap().iter().any(|r| r["resourceNames"] == serde_json::json!(["kim-lock"])));

    // External Redis: a Secret with the URL; demo Redis: Deployment + Service + Secret pointing there.
    let d = docs(&render(&["--set", "redis.url=rediss://user:pw@redis.example:6380/0"]));
    assert_eq!(find(&d, "Secret", "kim-redis")["stringData"]["url"], "rediss://user:pw@redis.example:6380/0");
    assert!(
        find(&d, "Secret", "kim-redis")["stringData"].get("password").is_none(),
        "no password key unless one is given"
    );
    // Kept by `helm uninstall`: finalizers of MatchingIndexes still present read it.
    let keep = &find(&d, "Secret", "kim-redis")["metadata"]["annotations"]["helm.sh/resource-policy"];
    assert_eq!(keep, "keep", "the Redis Secret must outlive the release");
    // ACL credentials sit beside the URL under the keys spec.redis.auth defaults to.
    let d = docs(&render(&[
        "--set",
        "redis.url=rediss://redis.example:6380",
        "--set",
        "redis.username=kim",
        "--set",
        "redis.password=s3cret",
    ]));
    let data = &find(&d, "Secret", "kim-redis")["stringData"];
    let auth: kim_operator::crd::RedisAuth =
        serde_json::from_value(serde_json::json!({"secretName": "kim-redis"})).unwrap();
    assert_eq!((data[&auth.username_key].as_str(), data[&auth.password_key].as_str()), (Some("kim"), Some("s3cret")));
    let d = docs(&render(&["--set", "redis.deploy=true"]));
    assert_eq!(find(&d, "Secret", "kim-redis")["stringData"]["url"], "redis://kim-redis.kim-system.svc:6379");
    let redis = find(&d, "Deployment", "kim-redis");
    assert_eq!(redis["spec"]["template"]["spec"]["containers"][0]["securityContext"]["readOnlyRootFilesystem"], true);
    let svc = find(&d, "Service", "kim-redis");
    assert_eq!(svc["spec"]["selector"]["app.kubernetes.io/component"], "redis");
    let d = docs(&render(&["--set", "redis.existingSecret=mine"]));
    assert!(!d.iter().any(|x| x["kind"] == "Secret"), "existing Secret: the chart writes none");

    let d = docs(&render(&[
        "--set",
        "metrics.serviceMonitor.enabled=true",
        "--set",
        "metrics.serviceMonitor.labels.release=prom",
    ]));
    let sm = find(&d, "ServiceMonitor", "kim-operator");
    assert_eq!(sm["metadata"]["labels"]["release"], "prom");
    assert_eq!(
        sm["spec"]["endpoints"][0]["port"],
        find(&d, "Service", "kim-operator-metrics")["spec"]["ports"][0]["name"]
    );

    // A release name without "kim" gets it appended.
    let out = ok("helm", &["template", "search", "charts/kim", "--namespace", "x"]);
    find(&docs(&out), "Deployment", "search-kim-operator");
}

#[test]
fn bad_values_fail_with_a_clear_message() {
    for (set, msg) in [
        ("redis.url=http://redis:6379", "redis.url must start with redis:// or rediss://"),
        ("logFormat=xml", "at '/logFormat': value must be one of 'text', 'json'"),
        ("replicaCount=0", "at '/replicaCount': minimum: got 0, want 1"),
        ("replicas=2", "additional properties 'replicas' not allowed"),
        ("workerImage.pullPolicy=Sometimes", "at '/workerImage/pullPolicy': value must be one of"),
        ("httpPort=http", "at '/httpPort': got string, want integer"),
        ("serviceAccount.create=false", "serviceAccount.name is required"),
    ] {
        let out = run("helm", &["template", "kim", "charts/kim", "--set", set], &[], None);
        assert!(!out.status.success(), "{set} rendered");
        assert!(text(&out).contains(msg), "{set}: {}", text(&out));
    }
    let out = run(
        "helm",
        &["template", "kim", "charts/kim", "--set", "redis.url=redis://a:1", "--set", "redis.existingSecret=s"],
        &[],
        None,
    );
    assert!(text(&out).contains("set at most one of redis.url and redis.existingSecret"), "{}", text(&out));
    let out = run(
        "helm",
        &[
            "template",
            "kim",
            "charts/kim",
            "--set",
            "metrics.serviceMonitor.enabled=true",
            "--set",
            "metrics.service.enabled=false",
        ],
        &[],
        None,
    );
    assert!(text(&out).contains("metrics.serviceMonitor.enabled needs metrics.service.enabled"), "{}", text(&out));
}

fn rules(role: &Value) -> Vec<Value> {
    role["rules"].as_array().unwrap().clone()
}

fn grants(rules: &[Value], group: &str, resource: &str, verb: &str) -> bool {
    rules.iter().any(|r| {
        let has = |k: &str, v: &str| r[k].as_array().is_some_and(|a| a.iter().any(|x| x == v));
        has("apiGroups", group) && has("resources", resource) && has("verbs", verb)
    })
}

#[test]
fn rbac_is_least_privilege_and_namespaced_mode_uses_roles() {
    let d = docs(&render(&[]));
    let cr = rules(find(&d, "ClusterRole", "kim-operator"));
    for r in &cr {
        for k in ["apiGroups", "resources", "verbs"] {
            assert!(!r[k].as_array().unwrap().iter().any(|x| x == "*"), "wildcard in {r}");
        }
    }
    // What the operator calls (operator/src) and nothing broader.
    for (g, res, verb) in [
        ("kim.dev", "matchingindexes", "watch"),
        ("kim.dev", "matchingindexes", "patch"),
        ("kim.dev", "indexers/status", "patch"),
        ("batch", "jobs", "create"),
        ("batch", "jobs", "deletecollection"),
        ("apps", "deployments", "patch"),
        ("apps", "statefulsets", "watch"),
        ("apps", "deployments", "delete"),
        ("policy", "poddisruptionbudgets", "patch"),
        ("", "services", "delete"),
        ("", "persistentvolumeclaims", "create"),
        // The agents' claims, deleted with a MatchingIndex whose deletionPolicy is Delete.
        ("", "persistentvolumeclaims", "delete"),
        ("", "pods", "list"),
        ("", "secrets", "get"),
        ("events.k8s.io", "events", "create"),
    ] {
        assert!(grants(&cr, g, res, verb), "ClusterRole lacks {verb} {g}/{res}");
    }
    for (g, res, verb) in [
        ("", "secrets", "list"),
        ("", "secrets", "watch"),
        ("", "pods", "delete"),
        ("", "pods", "create"),
        ("kim.dev", "indexers", "delete"),
        ("kim.dev", "matchingindexes", "create"),
        ("coordination.k8s.io", "leases", "create"),
        ("", "persistentvolumeclaims", "deletecollection"),
        ("", "namespaces", "get"),
        ("", "nodes", "list"),
    ] {
        assert!(!grants(&cr, g, res, verb), "ClusterRole grants {verb} {g}/{res}, which the operator never does");
    }
    // Leases only in the release namespace, get/update only of the one Lease.
    let le = find(&d, "Role", "kim-operator-leader-election");
    assert_eq!(le["metadata"]["namespace"], "kim-system");
    for r in rules(le) {
        assert_eq!(r["resources"], serde_json::json!(["leases"]));
        if r["verbs"].as_array().unwrap().iter().any(|v| v == "update" || v == "get") {
            assert_eq!(r["resourceNames"], serde_json::json!(["kim-operator"]));
        }
    }

    let d = docs(&render(&["--set", "watchNamespace=team"]));
    assert!(!d.iter().any(|x| x["kind"] == "ClusterRole" || x["kind"] == "ClusterRoleBinding"), "{:?}", kinds(&d));
    let role = find(&d, "Role", "kim-operator");
    assert_eq!(role["metadata"]["namespace"], "team");
    assert_eq!(rules(role), cr, "namespaced mode grants the same rules, in one namespace");
    let rb = find(&d, "RoleBinding", "kim-operator");
    assert_eq!(rb["metadata"]["namespace"], "team");
    assert_eq!(rb["roleRef"]["kind"], "Role");
    assert_eq!(rb["subjects"][0]["namespace"], "kim-system");
    assert_eq!(env_value(operator(&d), "KIM_WATCH_NAMESPACE").unwrap(), "team");
}

/// The Kubernetes resources operator/src builds an `Api` for, and their RBAC resource names.
const API_TYPES: &[(&str, &str)] = &[
    ("MatchingIndex", "matchingindexes"),
    ("Indexer", "indexers"),
    ("Job", "jobs"),
    ("Deployment", "deployments"),
    ("StatefulSet", "statefulsets"),
    ("PodDisruptionBudget", "poddisruptionbudgets"),
    ("Service", "services"),
    ("PersistentVolumeClaim", "persistentvolumeclaims"),
    ("Pod", "pods"),
    ("Secret", "secrets"),
    ("Lease", "leases"),
    ("ScaledObject", "scaledobjects"),
    ("K", ""),
];

#[test]
fn every_api_the_operator_uses_has_a_commented_rule() {
    // Scan operator/src for `Api<T>` and `Api::<T>`: a new type there must get a rule here.
    let mut used = BTreeSet::new();
    let mut stack = vec![repo().join("operator/src")];
    while let Some(p) = stack.pop() {
        for e in std::fs::read_dir(&p).unwrap() {
            let path = e.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|x| x == "rs") {
                let src = std::fs::read_to_string(&path).unwrap();
                for pat in ["Api<", "Api::<"] {
                    for (i, _) in src.match_indices(pat) {
                        let rest = &src[i + pat.len()..];
                        used.insert(rest[..rest.find('>').unwrap()].to_string());
                    }
                }
            }
        }
    }
    assert!(used.contains("Job") && used.contains("Lease"), "scan found {used:?}");
    let d = docs(&render(&[]));
    let mut all = rules(find(&d, "ClusterRole", "kim-operator"));
    all.extend(rules(find(&d, "Role", "kim-operator-leader-election")));
    for t in &used {
        let res = API_TYPES
            .iter()
            .find(|(k, _)| k == t)
            .unwrap_or_else(|| {
                panic!(
                    "operator/src uses Api<{t}>: add its RBAC rule to charts/kim/templates/rbac.yaml and to API_TYPES"
                )
            })
            .1;
        if !res.is_empty() {
            assert!(
                all.iter().any(|r| r["resources"].as_array().unwrap().iter().any(|x| x == res)),
                "no rule for {res}"
            );
        }
    }
    // Each rule in the template carries a comment saying why (the line above it is a comment).
    let tpl = std::fs::read_to_string(repo().join("charts/kim/templates/rbac.yaml")).unwrap();
    let lines: Vec<&str> = tpl.lines().collect();
    let mut n = 0;
    for (i, l) in lines.iter().enumerate() {
        if l.trim_start().starts_with("- apiGroups:") {
            n += 1;
            assert!(lines[i - 1].trim_start().starts_with('#'), "rule without a comment at rbac.yaml:{}: {l}", i + 1);
        }
    }
    assert_eq!(n, all.len(), "every rendered rule comes from a commented line");
}

fn yaml_files(dir: &str) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(repo().join(dir))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".yaml"))
        .collect();
    v.sort();
    v
}

#[test]
fn crd_copies_are_identical() {
    let want = yaml_files("crds");
    assert_eq!(want, ["indexers.kim.dev.yaml", "matchingindexes.kim.dev.yaml"]);
    for dir in ["charts/kim/crds", "deploy/base/crds"] {
        assert_eq!(yaml_files(dir), want, "{dir} has other files than crds/: run `make crds`");
        for f in &want {
            let a = std::fs::read(repo().join("crds").join(f)).unwrap();
            let b = std::fs::read(repo().join(dir).join(f)).unwrap();
            assert!(a == b, "{dir}/{f} differs from crds/{f}: run `make crds`");
        }
    }
}

fn without_managed_by(mut v: Value) -> Value {
    let meta = v["metadata"].as_object_mut().unwrap();
    if let Some(l) = meta.get_mut("labels").and_then(Value::as_object_mut) {
        l.remove("app.kubernetes.io/managed-by");
        if l.is_empty() {
            meta.remove("labels");
        }
    }
    v
}

/// The start of a document, enough to see a difference in metadata.
fn short(v: &Value) -> String {
    v.to_string().chars().take(600).collect()
}

#[test]
fn kustomize_base_is_the_chart_render() {
    let rendered = render(&["-f", "deploy/base/values.yaml"]);
    let file = std::fs::read_to_string(repo().join("deploy/base/kim.yaml")).unwrap();
    let body = file.split_once('\n').map(|x| x.1).unwrap_or("");
    assert!(body == rendered, "deploy/base/kim.yaml is stale: run `make crds`");

    let built = docs(&ok("kubectl", &["kustomize", "deploy/base"]));
    for d in &built {
        assert_eq!(d["metadata"]["labels"]["app.kubernetes.io/managed-by"], "kustomize", "{}", d["metadata"]["name"]);
    }
    let mut want = docs(&rendered);
    want.extend(docs(&std::fs::read_to_string(repo().join("deploy/base/namespace.yaml")).unwrap()));
    for f in yaml_files("crds") {
        want.extend(docs(&std::fs::read_to_string(repo().join("crds").join(f)).unwrap()));
    }
    let key = |v: &Value| format!("{}/{}/{}", v["kind"], v["metadata"]["namespace"], v["metadata"]["name"]);
    let mut a: Vec<Value> = built.into_iter().map(without_managed_by).collect();
    let mut b: Vec<Value> = want.into_iter().map(without_managed_by).collect();
    a.sort_by_key(key);
    b.sort_by_key(key);
    assert_eq!(a.iter().map(key).collect::<Vec<_>>(), b.iter().map(key).collect::<Vec<_>>());
    for (x, y) in a.iter().zip(&b) {
        assert!(x == y, "kustomize output differs from the chart for {}:\n{}\nvs\n{}", key(x), short(x), short(y));
    }
}

#[test]
fn samples_are_consistent_with_each_other() {
    let mut all = Vec::new();
    for f in yaml_files("deploy/samples") {
        all.extend(docs(&std::fs::read_to_string(repo().join("deploy/samples").join(f)).unwrap()));
    }
    let claim = find(&all, "PersistentVolumeClaim", "kim-sample");
    let job = find(&all, "Job", "kim-sample-gen");
    let ix = find(&all, "Indexer", "kim-sample");
    let mi = find(&all, "MatchingIndex", "faces");
    let pod = &job["spec"]["template"]["spec"];
    assert_eq!(pod["volumes"][0]["persistentVolumeClaim"]["claimName"], claim["metadata"]["name"]);
    assert_eq!(ix["spec"]["storage"]["existingClaim"], claim["metadata"]["name"]);
    assert_eq!(mi["spec"]["indexerRef"]["name"], ix["metadata"]["name"]);
    // The generator's arguments parse with the worker and match the MatchingIndex's descriptor.
    let args: Vec<String> =
        pod["containers"][0]["args"].as_array().unwrap().iter().map(|a| a.as_str().unwrap().to_string()).collect();
    let cli =
        <kim_worker::cli::Cli as clap::Parser>::try_parse_from(std::iter::once("kim-worker".to_string()).chain(args))
            .unwrap();
    let kim_worker::cli::Command::Gen(g) = cli.command else { panic!("not gen") };
    let mount = pod["containers"][0]["volumeMounts"][0]["mountPath"].as_str().unwrap();
    let dir = g.out.strip_prefix(mount).unwrap().to_str().unwrap().to_string();
    assert_eq!(mi["spec"]["source"]["path"], format!("{dir}/base.npy"));
    assert_eq!(mi["spec"]["source"]["idsPath"], format!("{dir}/ids.txt"));
    assert_eq!(mi["spec"]["descriptor"]["dimensions"], g.dimensions as i64);
    assert_eq!(mi["spec"]["descriptor"]["encoding"], g.encoding.as_str());
    assert_eq!(mi["spec"]["descriptor"]["metric"], g.metric.as_str());
    assert_eq!(g.identities * g.samples, 2000, "small sample: 2k vectors");
    // The Redis Secret is the one the chart writes for release "kim".
    let d = docs(&render(&["--set", "redis.deploy=true"]));
    let s = find(&d, "Secret", mi["spec"]["redis"]["secretRef"]["name"].as_str().unwrap());
    assert!(s["stringData"][mi["spec"]["redis"]["secretRef"]["key"].as_str().unwrap()].is_string());
}

#[test]
fn kind_script_parses_and_refuses_bad_use() {
    let script = repo().join("e2e/kind.sh");
    // Absolute paths: a child's PATH also decides where Command looks for the program.
    let which = |t: &str| {
        String::from_utf8(Command::new("bash").args(["-c", &format!("command -v {t}")]).output().unwrap().stdout)
            .unwrap()
            .trim()
            .to_string()
    };
    let bash_bin = which("bash");
    let bash =
        |args: &[&str], path: &str| Command::new(&bash_bin).arg(&script).args(args).env("PATH", path).output().unwrap();
    let out = Command::new("bash").arg("-n").arg(&script).output().unwrap();
    assert!(out.status.success(), "bash -n e2e/kind.sh: {}", text(&out));
    let out = bash(&["sideways"], "/usr/bin:/bin");
    assert!(!out.status.success() && text(&out).contains("unknown argument 'sideways'"), "{}", text(&out));
    // Only `dirname` on PATH: it says which tool is missing before doing anything.
    let bin = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(which("dirname"), bin.path().join("dirname")).unwrap();
    let out = bash(&["up"], bin.path().to_str().unwrap());
    assert!(!out.status.success() && text(&out).contains("docker is not on PATH"), "{}", text(&out));
    let out = bash(&["--help"], "/usr/bin:/bin");
    assert!(out.status.success() && text(&out).contains("e2e/kind.sh down"), "{}", text(&out));
}

#[test]
fn uninstall_hook_releases_finalizers_with_least_privilege() {
    let d = docs(&render(&[]));
    let job = find(&d, "Job", "kim-release");
    let hook = |v: &Value| v["metadata"]["annotations"]["helm.sh/hook"].as_str().unwrap_or("").to_string();
    for (kind, name) in [
        ("Job", "kim-release"),
        ("ServiceAccount", "kim-release"),
        ("ClusterRole", "kim-release"),
        ("ClusterRoleBinding", "kim-release"),
        ("Role", "kim-release-lease"),
        ("RoleBinding", "kim-release-lease"),
    ] {
        assert_eq!(hook(find(&d, kind, name)), "post-delete", "{kind}/{name}");
    }
    let pod = &job["spec"]["template"]["spec"];
    assert_eq!(pod["serviceAccountName"], "kim-release");
    assert_eq!(pod["restartPolicy"], "Never");
    // The operator's own parser accepts what the chart passes.
    let args: Vec<String> =
        pod["containers"][0]["args"].as_array().unwrap().iter().map(|a| a.as_str().unwrap().to_string()).collect();
    let cfg = <kim_operator::run::Config as clap::Parser>::try_parse_from(
        std::iter::once("kim-operator".to_string()).chain(args.iter().cloned()),
    )
    .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(cfg.release_finalizers, "{args:?}");
    // Only what releasing needs: list and patch MatchingIndexes, Events, the one Lease.
    let cr = rules(find(&d, "ClusterRole", "kim-release"));
    assert!(grants(&cr, "kim.dev", "matchingindexes", "patch") && grants(&cr, "kim.dev", "matchingindexes", "list"));
    assert!(grants(&cr, "events.k8s.io", "events", "create"));
    for (g, res, verb) in
        [("kim.dev", "matchingindexes", "delete"), ("", "secrets", "get"), ("batch", "jobs", "create")]
    {
        assert!(!grants(&cr, g, res, verb), "the hook needs no {verb} {g}/{res}");
    }
    assert!(grants(&rules(find(&d, "Role", "kim-release-lease")), "coordination.k8s.io", "leases", "update"));

    // Namespaced mode: a Role in the watched namespace; and the hook can be turned off.
    let d = docs(&render(&["--set", "watchNamespace=team"]));
    assert_eq!(find(&d, "Role", "kim-release")["metadata"]["namespace"], "team");
    let off = docs(&render(&["--set", "uninstall.releaseFinalizers=false"]));
    assert!(!off.iter().any(|v| !hook(v).is_empty()), "{:?}", kinds(&off));
}
