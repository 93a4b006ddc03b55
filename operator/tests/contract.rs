//! Every argument list the operator generates parses with the worker's own command line, and
//! the checked-in CRDs are exactly what the Rust types generate.

use clap::Parser;
use kim_operator::build::{self, Defaults};
use kim_operator::crd::{Indexer, IndexerSpec, MatchingIndex, MatchingIndexSpec};
use kim_operator::online::AgentSet;
use kim_worker::cli::{Cli, Command};
use kube::CustomResourceExt;
use serde_json::json;

fn fixtures() -> (MatchingIndex, Indexer) {
    let spec: MatchingIndexSpec = serde_json::from_value(json!({
        "label": "watch-list.v2",
        "indexerRef": {"name": "pool"},
        "descriptor": {"version": 59, "dimensions": 512, "encoding": "u8", "metric": "cosine"},
        "source": {"path": "in/base.npy", "idsPath": "in/ids.txt", "claim": "uploads"},
        "hnsw": {"m": 24, "efConstruction": 300, "efSearch": 128},
        "matcher": {"replicas": 2, "threads": 4},
        "redis": {"url": "redis://redis:6379", "keyPrefix": "kim:"},
    }))
    .unwrap();
    let mut mi = MatchingIndex::new("faces", spec);
    mi.metadata.namespace = Some("team-a".into());
    let mut ix = Indexer::new(
        "pool",
        serde_json::from_value::<IndexerSpec>(json!({"storage": {"size": "1Gi"}, "snapshotsToKeep": 5})).unwrap(),
    );
    ix.metadata.namespace = Some("team-a".into());
    (mi, ix)
}

fn parse(args: &[String]) -> Cli {
    let argv = std::iter::once("kim-worker".to_string()).chain(args.iter().cloned());
    Cli::try_parse_from(argv).unwrap_or_else(|e| panic!("worker rejects {args:?}: {e}"))
}

#[test]
fn index_args_parse_with_the_worker() {
    let (mi, ix) = fixtures();
    let Command::Index(a) = parse(&build::index_args(&mi, &ix)).command else { panic!("not index") };
    assert_eq!(a.label, "watch-list.v2");
    assert_eq!(a.namespace, "team-a");
    assert_eq!(a.source.to_str(), Some("/source/in/base.npy"));
    assert_eq!(a.ids.unwrap().to_str(), Some("/source/in/ids.txt"));
    assert_eq!((a.m, a.ef_construction, a.ef_search, a.keep), (24, 300, 128, 5));
    assert_eq!(
        a.descriptor.spec(),
        kim_index::DescriptorSpec::new(59, 512, kim_index::Encoding::U8, kim_index::Metric::Cosine)
    );
    assert_eq!(a.termination_message_path.unwrap().to_str(), Some("/dev/termination-log"));
}

#[test]
fn match_and_clean_args_parse_with_the_worker() {
    let (mi, ix) = fixtures();
    let dep = build::matcher_deployment(
        &mi,
        &ix,
        &Defaults { worker_image: "w".into(), image_pull_policy: "Never".into() },
        build::Shard::WHOLE,
        Some(1),
    );
    let args = dep.spec.unwrap().template.spec.unwrap().containers[0].args.clone().unwrap();
    // The Redis URL comes from the environment in the pod.
    std::env::set_var("KIM_REDIS_URL", "redis://redis:6379");
    let Command::Match(a) = parse(&args).command else { panic!("not match") };
    assert_eq!(a.labels, vec!["watch-list.v2".to_string()]);
    assert_eq!((a.prefix.as_str(), a.threads, a.http.port()), ("kim:", Some(4), 8080));
    let job = build::cleanup_job(&mi, &ix, &Defaults { worker_image: "w".into(), image_pull_policy: "Never".into() });
    let args = job.spec.unwrap().template.spec.unwrap().containers[0].args.clone().unwrap();
    let Command::Clean(c) = parse(&args).command else { panic!("not clean") };
    assert_eq!((c.label.as_str(), c.namespace.as_str()), ("watch-list.v2", "team-a"));
}

#[test]
fn a_split_label_gives_an_indexed_build_and_one_matcher_per_shard_the_worker_accepts() {
    let (mut mi, ix) = fixtures();
    mi.spec.shards = 3;
    let d = Defaults { worker_image: "w".into(), image_pull_policy: "Never".into() };
    let job = build::build_job(&mi, &ix, "0123456789abcdef", 600, &d);
    let spec = job.spec.unwrap();
    assert_eq!((spec.completion_mode.as_deref(), spec.completions), (Some("Indexed"), Some(3)));
    assert_eq!(spec.parallelism, Some(3.min(ix.spec.max_concurrent_builds)));
    let c = &spec.template.spec.unwrap().containers[0];
    let shard_env = c.env.as_ref().unwrap().iter().find(|e| e.name == "KIM_SHARD").expect("KIM_SHARD");
    let field = shard_env.value_from.as_ref().unwrap().field_ref.as_ref().unwrap();
    assert_eq!(field.field_path, "metadata.annotations['batch.kubernetes.io/job-completion-index']");
    // The completion index arrives as KIM_SHARD, which the worker reads as --shard (set here as
    // the flag: the environment is shared with the other tests of this binary).
    let mut args = c.args.clone().unwrap();
    args.extend(["--shard".to_string(), "2".to_string()]);
    let Command::Index(a) = parse(&args).command else { panic!("not index") };
    assert_eq!((a.shard.shards, a.shard.shard), (3, 2));
    std::env::set_var("KIM_REDIS_URL", "redis://redis:6379");
    // Matchers follow the layout of the snapshot served (3 shards once it is built).
    let children = build::children(&mi, &ix, &d, build::Matchers::Fixed(2), 3, AgentSet::steady(&mi));
    let names: Vec<String> = children.deployments.iter().map(|d| d.metadata.name.clone().unwrap()).collect();
    assert_eq!(names, ["faces-matcher-0-of-3", "faces-matcher-1-of-3", "faces-matcher-2-of-3"].map(String::from));
    for (i, dep) in children.deployments.iter().enumerate() {
        let spec = dep.spec.clone().unwrap();
        assert_eq!(spec.replicas, Some(2));
        let selector = spec.selector.match_labels.unwrap();
        assert_eq!((&selector["kim.dev/shard"], &selector["kim.dev/shards"]), (&i.to_string(), &"3".to_string()));
        let args = spec.template.spec.unwrap().containers[0].args.clone().unwrap();
        let Command::Match(m) = parse(&args).command else { panic!("not match") };
        assert_eq!((m.shard.shards, m.shard.shard), (3, i as u32));
    }
    assert_eq!(children.disruption_budgets.len(), 1, "one budget over every shard's matchers");
}

#[test]
fn checked_in_crds_match_the_types() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../crds");
    for (file, crd) in
        [("indexers.kim.dev.yaml", Indexer::crd()), ("matchingindexes.kim.dev.yaml", MatchingIndex::crd())]
    {
        let want = serde_yaml::to_string(&crd).unwrap();
        let have = std::fs::read_to_string(root.join(file)).unwrap();
        assert!(have == want, "crds/{file} is stale: run `cargo run --release --bin crdgen -- crds`");
    }
}

#[test]
fn online_args_parse_with_the_worker() {
    let (mut mi, ix) = fixtures();
    mi.spec.online = Some(
        serde_json::from_value(
            json!({"agents": 3, "replicas": 2, "vectorizer": "vec:8081", "egressFilters": ["eg:1"]}),
        )
        .unwrap(),
    );
    let Command::Agent(a) = parse(&kim_operator::online::agent_args(&mi)).command else { panic!("not agent") };
    assert_eq!((a.dimensions, a.m, a.listen.port()), (512, 24, 8081));
    let steady = AgentSet::steady(&mi);
    let Command::Filter(f) = parse(&kim_operator::online::gateway_args(&mi, steady)).command else {
        panic!("not filter")
    };
    let agent = |i: usize| format!("faces-agent-{i}.faces-agent.team-a.svc:8081");
    assert_eq!((f.agents.clone(), f.read_agents.clone()), ((0..3).map(agent).collect(), vec![]));
    assert_eq!(
        (f.replicas, f.vectorizer.as_deref(), f.egress_filter.clone()),
        (2, Some("vec:8081"), vec!["eg:1".to_string()])
    );
    // An agents:// source names every agent pod.
    mi.spec.source = serde_json::from_value(json!({"agents": true})).unwrap();
    let Command::Index(i) = parse(&build::index_args(&mi, &ix)).command else { panic!("not index") };
    assert_eq!(i.source.to_str(), Some("agents://faces-agent-0.faces-agent.team-a.svc:8081,faces-agent-1.faces-agent.team-a.svc:8081,faces-agent-2.faces-agent.team-a.svc:8081"));
    let d = Defaults { worker_image: "w".into(), image_pull_policy: "Never".into() };
    let sts = kim_operator::online::agent_statefulset(&mi, &ix, &d, steady);
    let spec = sts.spec.unwrap();
    assert_eq!((spec.replicas, spec.service_name.as_deref()), (Some(3), Some("faces-agent")));
    assert_eq!(spec.volume_claim_templates.unwrap()[0].metadata.name.as_deref(), Some("data"));

    // Mid-change (owners 2, the third read while it drains, four pods still running): the
    // gateway reads the third without writing it, the rebalance drains it, the pods stay.
    let changing = AgentSet { owners: 2, reading: 3, running: 4 };
    let Command::Filter(f) = parse(&kim_operator::online::gateway_args(&mi, changing)).command else { panic!() };
    assert_eq!((f.agents, f.read_agents), ((0..2).map(agent).collect(), vec![agent(2)]));
    let Command::Rebalance(r) = parse(&kim_operator::online::rebalance_args(&mi, changing)).command else { panic!() };
    assert_eq!((r.agents, r.drain, r.replicas), ((0..2).map(agent).collect(), vec![agent(2)], 2));
    assert_eq!(r.termination_message_path.unwrap().to_str(), Some("/dev/termination-log"));
    let job = kim_operator::online::rebalance_job(&mi, &ix, &d, "faces-rebalance-1".into(), changing);
    let pod = job.spec.unwrap().template.spec.unwrap();
    assert_eq!(pod.containers[0].args.as_deref(), Some(&kim_operator::online::rebalance_args(&mi, changing)[..]));
    let sts = kim_operator::online::agent_statefulset(&mi, &ix, &d, changing);
    assert_eq!(sts.spec.unwrap().replicas, Some(4));
}

#[test]
fn online_tls_mounts_the_secrets_and_its_flags_parse() {
    let (mut mi, ix) = fixtures();
    let d = Defaults { worker_image: "w".into(), image_pull_policy: "Never".into() };
    mi.spec.online = Some(
        serde_json::from_value(
            json!({"agents": 2, "tls": {"serverSecretName": "kim-tls", "clientSecretName": "kim-client"}}),
        )
        .unwrap(),
    );
    let Command::Agent(a) = parse(&kim_operator::online::agent_args(&mi)).command else { panic!("not agent") };
    assert_eq!(a.tls.tls_cert.unwrap().to_str(), Some("/etc/kim/tls/server/tls.crt"));
    assert_eq!(
        a.tls.tls_client_ca.unwrap().to_str(),
        Some("/etc/kim/tls/server/ca.crt"),
        "a client Secret means mutual TLS"
    );
    let steady = AgentSet::steady(&mi);
    let Command::Filter(f) = parse(&kim_operator::online::gateway_args(&mi, steady)).command else {
        panic!("not filter")
    };
    assert_eq!(f.tls.tls_key.unwrap().to_str(), Some("/etc/kim/tls/server/tls.key"));
    assert_eq!(f.backend_tls.tls_ca.unwrap().to_str(), Some("/etc/kim/tls/server/ca.crt"));
    assert_eq!(f.backend_tls.tls_client_cert.unwrap().to_str(), Some("/etc/kim/tls/client/tls.crt"));
    assert_eq!(f.backend_tls.tls_server_name.as_deref(), Some("faces-agent.team-a.svc"));
    // The agents:// build Job dials the agents the same way, with both Secrets mounted.
    mi.spec.source = serde_json::from_value(json!({"agents": true})).unwrap();
    let Command::Index(i) = parse(&build::index_args(&mi, &ix)).command else { panic!("not index") };
    assert_eq!(i.agents_tls.tls_client_key.unwrap().to_str(), Some("/etc/kim/tls/client/tls.key"));
    let job = build::build_job(&mi, &ix, "0123456789abcdef", 600, &d);
    let pod = job.spec.unwrap().template.spec.unwrap();
    let secrets: Vec<String> =
        pod.volumes.unwrap().iter().filter_map(|v| v.secret.as_ref()?.secret_name.clone()).collect();
    assert_eq!(secrets, ["kim-tls", "kim-client"]);
    let mounts = pod.containers[0].volume_mounts.clone().unwrap();
    assert!(mounts.iter().any(|m| m.mount_path == "/etc/kim/tls/client" && m.read_only == Some(true)), "{mounts:?}");
    for (name, spec) in [
        ("agents", kim_operator::online::agent_statefulset(&mi, &ix, &d, steady).spec.unwrap().template.spec.unwrap()),
        (
            "gateway",
            kim_operator::online::gateway_deployment(&mi, &ix, &d, steady).spec.unwrap().template.spec.unwrap(),
        ),
    ] {
        let secrets: Vec<String> =
            spec.volumes.unwrap().iter().filter_map(|v| v.secret.as_ref()?.secret_name.clone()).collect();
        assert_eq!(secrets, ["kim-tls", "kim-client"], "{name}");
        let paths: Vec<String> =
            spec.containers[0].volume_mounts.clone().unwrap().into_iter().map(|m| m.mount_path).collect();
        assert!(paths.contains(&"/etc/kim/tls/server".to_string()), "{name}: {paths:?}");
    }
    // TLS without a client Secret: servers do not ask for client certificates.
    mi.spec.online = Some(
        serde_json::from_value(json!({"tls": {"serverSecretName": "kim-tls", "agentServerName": "agents.example"}}))
            .unwrap(),
    );
    let Command::Agent(a) = parse(&kim_operator::online::agent_args(&mi)).command else { panic!("not agent") };
    assert!(a.tls.tls_client_ca.is_none());
    let steady = AgentSet::steady(&mi);
    let Command::Filter(f) = parse(&kim_operator::online::gateway_args(&mi, steady)).command else {
        panic!("not filter")
    };
    assert_eq!(
        (f.backend_tls.tls_server_name.as_deref(), f.backend_tls.tls_client_cert),
        (Some("agents.example"), None)
    );
}

#[test]
fn object_storage_args_parse_with_the_worker() {
    let (mi, mut ix) = fixtures();
    ix.spec.storage = serde_json::from_value(json!({"s3": {
        "url": "s3://snaps/kim", "endpoint": "http://seaweed:8333", "region": "eu-1", "allowHttp": true,
        "caSecret": "s3-ca",
    }}))
    .unwrap();
    let check = |s: &kim_worker::cli::StorageArgs| {
        assert_eq!(s.storage, "s3://snaps/kim");
        assert_eq!((s.s3_endpoint.as_deref(), s.s3_region.as_deref()), (Some("http://seaweed:8333"), Some("eu-1")));
        assert!(s.s3_allow_http);
        assert_eq!(s.s3_ca.as_ref().and_then(|p| p.to_str()), Some("/etc/kim/s3-ca/ca.crt"));
        assert_eq!(s.cache_dir.as_ref().and_then(|p| p.to_str()), Some("/cache"));
    };
    let Command::Index(a) = parse(&build::index_args(&mi, &ix)).command else { panic!("not index") };
    check(&a.storage);
    assert_eq!(a.source.to_str(), Some("/source/in/base.npy"));
    let d = Defaults { worker_image: "w".into(), image_pull_policy: "Never".into() };
    let dep = build::matcher_deployment(&mi, &ix, &d, build::Shard::WHOLE, Some(1));
    let args = dep.spec.unwrap().template.spec.unwrap().containers[0].args.clone().unwrap();
    std::env::set_var("KIM_REDIS_URL", "redis://redis:6379");
    let Command::Match(m) = parse(&args).command else { panic!("not match") };
    check(&m.storage);
    let job = build::cleanup_job(&mi, &ix, &d);
    let args = job.spec.unwrap().template.spec.unwrap().containers[0].args.clone().unwrap();
    let Command::Clean(c) = parse(&args).command else { panic!("not clean") };
    check(&c.storage);
}

#[test]
fn rollback_args_parse_with_the_worker() {
    let (mi, ix) = fixtures();
    let args = build::rollback_args(&mi, &ix, "20261122t104825896z-688392");
    let Command::Snapshot(kim_worker::cli::SnapshotCommand::Rollback(r)) = parse(&args).command else {
        panic!("not snapshot rollback")
    };
    assert_eq!(
        (r.to.as_str(), r.target.label.as_str(), r.target.namespace.as_str()),
        ("20261122t104825896z-688392", "watch-list.v2", "team-a")
    );
    assert_eq!(r.target.storage.storage, "/storage");
    assert_eq!(r.termination_message_path.unwrap().to_str(), Some("/dev/termination-log"));
}
