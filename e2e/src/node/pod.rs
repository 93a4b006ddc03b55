//! One pod on the harness node: prepare volumes and environment, run its containers as
//! processes (restarting them per restartPolicy), probe readiness, report status, and stop
//! the processes and finish the deletion when the pod is deleted.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Container, Pod, Probe};
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use kube::ResourceExt;
use serde_json::json;
use tokio::sync::watch;

use super::launch::{self, Launch, Mount};
use super::status::{self, PodView, State};
use super::{process, volumes, Error, Shared, Stop};

/// Longest time a stopping container gets between SIGTERM and SIGKILL.
const MAX_GRACE: Duration = Duration::from_secs(10);
const TICK: Duration = Duration::from_millis(250);
const MAX_MESSAGE: usize = 4096;

/// What the harness knows about one container.
struct Run {
    launch: Launch,
    restart: bool,
    on_failure_only: bool,
    log: PathBuf,
    workdir: PathBuf,
    termination_log: PathBuf,
    fallback_to_logs: bool,
    probe: Readiness,
    child: Option<Child>,
    started_at: String,
    next_start: Option<Instant>,
    backoff: Duration,
}

/// How readiness is decided.
#[derive(Clone, Debug)]
enum Readiness {
    Http { port: u16, path: String },
    Tcp(u16),
    Started,
}

pub async fn run(sh: Arc<Shared>, pod: Pod, mut stop: watch::Receiver<Stop>) {
    let ns = pod.namespace().unwrap_or_default();
    let name = pod.name_any();
    let uid = pod.uid().unwrap_or_default();
    let pods: Api<Pod> = Api::namespaced(sh.client.clone(), &ns);
    let pod_dir = sh.root.join("pods").join(format!("{ns}_{name}_{}", &uid[..8.min(uid.len())]));
    let mut view = PodView {
        phase: "Pending",
        start_time: status::now(),
        containers: Vec::new(),
        ready_since: status::now(),
        message: None,
    };
    let containers = pod.spec.as_ref().map(|s| s.containers.clone()).unwrap_or_default();
    view.containers = containers
        .iter()
        .map(|c| status::Container {
            name: c.name.clone(),
            image: c.image.clone().unwrap_or_default(),
            state: State::Waiting { reason: "ContainerCreating".into(), message: String::new() },
            last: None,
            ready: false,
            restarts: 0,
        })
        .collect();
    let mut reported: Option<PodView> = None;

    // Prepare until it works (a Secret may not exist yet, like a kubelet's
    // CreateContainerConfigError), or until the pod goes.
    let mut runs = loop {
        match prepare(&sh, &pod, &pod_dir).await {
            Ok(r) => break r,
            Err(e) => {
                let msg = e.to_string();
                if view.message.as_deref() != Some(msg.as_str()) {
                    tracing::warn!(pod = %format!("{ns}/{name}"), error = %msg, "cannot start pod yet");
                }
                view.message = Some(msg.clone());
                for c in &mut view.containers {
                    c.state = State::Waiting { reason: "CreateContainerConfigError".into(), message: msg.clone() };
                }
                report(&pods, &name, &view, &mut reported).await;
                if wait_stop(&mut stop, Duration::from_secs(2)).await {
                    let how = *stop.borrow();
                    finish(&pods, &pod, how).await;
                    return;
                }
            }
        }
    };
    view.message = None;
    view.phase = "Running";

    loop {
        for (run, c) in runs.iter_mut().zip(view.containers.iter_mut()) {
            step(&sh, run, c, &ns, &name);
        }
        let done = view.containers.iter().all(|c| matches!(c.state, State::Terminated { .. }));
        if done && runs.iter().all(|r| r.next_start.is_none()) {
            let ok = view.containers.iter().all(|c| matches!(c.state, State::Terminated { exit_code: 0, .. }));
            view.phase = if ok { "Succeeded" } else { "Failed" };
        }
        let was_ready = reported.as_ref().is_some_and(PodView::ready);
        if view.ready() != was_ready {
            view.ready_since = status::now();
        }
        report(&pods, &name, &view, &mut reported).await;
        if wait_stop(&mut stop, TICK).await {
            break;
        }
    }
    let how = *stop.borrow();
    let grace = pod
        .spec
        .as_ref()
        .and_then(|s| s.termination_grace_period_seconds)
        .map(|s| Duration::from_secs(s.max(0) as u64))
        .unwrap_or(MAX_GRACE)
        .min(MAX_GRACE);
    let grace = if how == Stop::Shutdown { Duration::ZERO } else { grace };
    for r in &mut runs {
        if let Some(child) = r.child.take() {
            stop_child(&sh, child, grace).await;
        }
    }
    finish(&pods, &pod, how).await;
}

/// Waits up to `d` for a stop request; true if one came (or the sender went away).
async fn wait_stop(stop: &mut watch::Receiver<Stop>, d: Duration) -> bool {
    if *stop.borrow() != Stop::Run {
        return true;
    }
    match tokio::time::timeout(d, stop.changed()).await {
        Ok(Ok(())) => *stop.borrow() != Stop::Run,
        Ok(Err(_)) => true,
        Err(_) => false,
    }
}

/// After the processes are gone: complete a deletion the way a kubelet does (grace 0).
async fn finish(pods: &Api<Pod>, pod: &Pod, how: Stop) {
    if how != Stop::Delete {
        return;
    }
    let dp = DeleteParams {
        grace_period_seconds: Some(0),
        preconditions: Some(Preconditions { uid: pod.uid(), resource_version: None }),
        ..DeleteParams::default()
    };
    if let Err(e) = pods.delete(&pod.name_any(), &dp).await {
        if !matches!(&e, kube::Error::Api(s) if s.code == 404 || s.code == 409) {
            tracing::warn!(pod = %pod.name_any(), error = %e, "final delete failed");
        }
    }
}

async fn stop_child(sh: &Shared, mut child: Child, grace: Duration) {
    let pid = child.id();
    process::signal_group(pid, libc::SIGTERM);
    let t = Instant::now();
    while t.elapsed() < grace && matches!(child.try_wait(), Ok(None)) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    process::signal_group(pid, libc::SIGKILL);
    let _ = child.kill();
    let _ = tokio::task::spawn_blocking(move || child.wait()).await;
    sh.forget(pid);
}

/// Writes the status if it changed since the last successful write.
async fn report(pods: &Api<Pod>, name: &str, view: &PodView, reported: &mut Option<PodView>) {
    if reported.as_ref() == Some(view) {
        return;
    }
    let patch = json!({"status": view.to_status()});
    match pods.patch_status(name, &PatchParams::default(), &Patch::Merge(&patch)).await {
        Ok(_) => *reported = Some(view.clone()),
        Err(e) => tracing::debug!(pod = name, error = %e, "status patch failed; retrying next tick"),
    }
}

/// One supervision step of a container: notice exits, restart when due, probe readiness.
fn step(sh: &Shared, r: &mut Run, c: &mut status::Container, ns: &str, pod: &str) {
    if let Some(child) = r.child.as_mut() {
        match child.try_wait() {
            Ok(Some(st)) => {
                use std::os::unix::process::ExitStatusExt;
                let code = st.code().unwrap_or_else(|| 128 + st.signal().unwrap_or(9));
                sh.forget(child.id());
                r.child = None;
                let message = termination_message(r, code);
                let reason = if code == 0 { "Completed" } else { "Error" };
                c.state = State::Terminated {
                    exit_code: code,
                    reason: reason.into(),
                    message,
                    started_at: r.started_at.clone(),
                    finished_at: status::now(),
                };
                c.ready = false;
                tracing::info!(pod = %format!("{ns}/{pod}"), container = %c.name, code, "container exited");
                if r.restart && (code != 0 || !r.on_failure_only) {
                    r.next_start = Some(Instant::now() + r.backoff);
                    r.backoff = (r.backoff * 2).min(Duration::from_secs(10));
                }
            }
            Ok(None) => {
                if !c.ready {
                    c.ready = ready(&r.probe);
                }
            }
            Err(e) => tracing::warn!(container = %c.name, error = %e, "waiting for container failed"),
        }
        return;
    }
    let due = match r.next_start {
        Some(t) => Instant::now() >= t,
        None => !matches!(c.state, State::Terminated { .. }),
    };
    if !due {
        return;
    }
    if matches!(c.state, State::Terminated { .. }) {
        c.last = Some(c.state.clone());
        c.restarts += 1;
    }
    r.next_start = None;
    let _ = std::fs::write(&r.termination_log, b"");
    match process::spawn(&r.launch, &r.workdir, &r.log, sh.enforce_read_only) {
        Ok(child) => {
            sh.remember(child.id());
            tracing::info!(pod = %format!("{ns}/{pod}"), container = %c.name, pid = child.id(), program = %r.launch.program.display(), "container started");
            r.started_at = status::now();
            c.state = State::Running { started_at: r.started_at.clone() };
            r.child = Some(child);
        }
        Err(e) => {
            c.state = State::Terminated {
                exit_code: 128,
                reason: "StartError".into(),
                message: e.to_string(),
                started_at: status::now(),
                finished_at: status::now(),
            };
            if r.restart {
                r.next_start = Some(Instant::now() + r.backoff);
            }
        }
    }
}

/// The file at terminationMessagePath, or the log tail for FallbackToLogsOnError.
fn termination_message(r: &Run, code: i32) -> String {
    let msg = std::fs::read_to_string(&r.termination_log).unwrap_or_default();
    let msg = if msg.trim().is_empty() && code != 0 && r.fallback_to_logs {
        let log = std::fs::read_to_string(&r.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(80)..].join("\n")
    } else {
        msg
    };
    let mut end = msg.len().min(MAX_MESSAGE);
    while !msg.is_char_boundary(end) {
        end -= 1;
    }
    msg[msg.len() - end..].to_string()
}

fn ready(p: &Readiness) -> bool {
    use std::io::{Read, Write};
    let addr = |port: u16| std::net::SocketAddr::from(([127, 0, 0, 1], port));
    match p {
        Readiness::Started => true,
        Readiness::Tcp(port) => std::net::TcpStream::connect_timeout(&addr(*port), Duration::from_millis(200)).is_ok(),
        Readiness::Http { port, path } => {
            let Ok(mut s) = std::net::TcpStream::connect_timeout(&addr(*port), Duration::from_millis(200)) else {
                return false;
            };
            let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
            if write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").is_err() {
                return false;
            }
            let mut head = [0u8; 12];
            s.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/1.") && matches!(head[9], b'2' | b'3')
        }
    }
}

/// Everything that must exist before the containers start.
async fn prepare(sh: &Shared, pod: &Pod, pod_dir: &Path) -> Result<Vec<Run>, Error> {
    let spec = pod.spec.as_ref().ok_or_else(|| Error::Invalid("pod has no spec".into()))?;
    if spec.init_containers.as_ref().is_some_and(|i| !i.is_empty()) {
        return Err(Error::Unsupported("init containers".into()));
    }
    std::fs::create_dir_all(pod_dir)?;
    let vols = volumes::prepare(sh, pod, pod_dir).await?;
    let policy = spec.restart_policy.clone().unwrap_or_else(|| "Always".into());
    let mut runs = Vec::new();
    for c in &spec.containers {
        let dir = pod_dir.join(&c.name);
        std::fs::create_dir_all(&dir)?;
        let mut mounts: Vec<Mount> = Vec::new();
        let mut kubeconfig = None;
        for m in c.volume_mounts.iter().flatten() {
            let v = vols
                .get(&m.name)
                .ok_or_else(|| Error::Invalid(format!("container {} mounts unknown volume {}", c.name, m.name)))?;
            let host = match m.sub_path.as_deref().filter(|s| !s.is_empty()) {
                Some(sub) => v.path.join(sub),
                None => v.path.clone(),
            };
            kubeconfig = kubeconfig.or(v.kubeconfig.clone());
            mounts.push(Mount {
                container: m.mount_path.clone(),
                host,
                read_only: m.read_only.unwrap_or(false) || v.read_only,
            });
        }
        let termination_log = dir.join("termination-log");
        let tpath = c.termination_message_path.clone().unwrap_or_else(|| "/dev/termination-log".into());
        mounts.push(Mount { container: tpath, host: termination_log.clone(), read_only: false });
        let ports: BTreeMap<i32, u16> = c
            .ports
            .iter()
            .flatten()
            .map(|p| Ok((p.container_port, kim_testkit::try_free_port()?)))
            .collect::<Result<_, std::io::Error>>()?;
        let mut env = vec![
            ("PATH".to_string(), "/usr/local/bin:/usr/bin:/bin".to_string()),
            ("HOSTNAME".to_string(), pod.name_any()),
            ("HOME".to_string(), dir.display().to_string()),
        ];
        if let Some(kc) = &kubeconfig {
            env.push(("KUBECONFIG".into(), kc.display().to_string()));
        }
        for (k, v) in container_env(sh, pod, c).await? {
            let v = launch::expand(&v, &env);
            env.push((k, v));
        }
        let env: Vec<(String, String)> =
            env.into_iter().map(|(k, v)| (k, launch::rewrite(&v, &mounts, &ports))).collect();
        let (program, mut args) = launch::program(
            &sh.images,
            c.image.as_deref().unwrap_or_default(),
            c.command.as_deref().unwrap_or_default(),
        )?;
        args.extend(c.args.iter().flatten().cloned());
        let args = args.iter().map(|a| launch::rewrite(&launch::expand(a, &env), &mounts, &ports)).collect();
        let probe = readiness(c.readiness_probe.as_ref(), c, &ports);
        runs.push(Run {
            launch: Launch { program, args, env, mounts },
            restart: policy != "Never",
            on_failure_only: policy == "OnFailure",
            log: sh.root.join("logs").join(format!(
                "{}_{}_{}.log",
                pod.namespace().unwrap_or_default(),
                pod.name_any(),
                c.name
            )),
            workdir: dir,
            termination_log,
            fallback_to_logs: c.termination_message_policy.as_deref() == Some("FallbackToLogsOnError"),
            probe,
            child: None,
            started_at: String::new(),
            next_start: None,
            backoff: Duration::from_secs(1),
        });
    }
    Ok(runs)
}

/// httpGet and tcpSocket probes against the mapped port; without a probe, Ready once the
/// first declared port accepts connections, or once started if none is declared.
fn readiness(p: Option<&Probe>, c: &Container, ports: &BTreeMap<i32, u16>) -> Readiness {
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    let host = |port: &IntOrString| -> Option<u16> {
        let n = match port {
            IntOrString::Int(n) => *n,
            IntOrString::String(name) => {
                c.ports.iter().flatten().find(|p| p.name.as_deref() == Some(name.as_str()))?.container_port
            }
        };
        ports.get(&n).copied().or_else(|| u16::try_from(n).ok())
    };
    if let Some(h) = p.and_then(|p| p.http_get.as_ref()) {
        if let Some(port) = host(&h.port) {
            return Readiness::Http { port, path: h.path.clone().unwrap_or_else(|| "/".into()) };
        }
    }
    if let Some(port) = p.and_then(|p| p.tcp_socket.as_ref()).and_then(|t| host(&t.port)) {
        return Readiness::Tcp(port);
    }
    match ports.values().next() {
        Some(port) => Readiness::Tcp(*port),
        None => Readiness::Started,
    }
}

/// envFrom and env of a container, with valueFrom resolved.
async fn container_env(sh: &Shared, pod: &Pod, c: &Container) -> Result<Vec<(String, String)>, Error> {
    let ns = pod.namespace().unwrap_or_default();
    let mut out = Vec::new();
    for from in c.env_from.iter().flatten() {
        let prefix = from.prefix.clone().unwrap_or_default();
        let data = match (&from.config_map_ref, &from.secret_ref) {
            (Some(r), _) => volumes::config_map(&sh.client, &ns, &r.name, r.optional.unwrap_or(false)).await?,
            (None, Some(r)) => volumes::secret(&sh.client, &ns, &r.name, r.optional.unwrap_or(false)).await?,
            (None, None) => continue,
        };
        out.extend(data.into_iter().map(|(k, v)| (format!("{prefix}{k}"), String::from_utf8_lossy(&v).into_owned())));
    }
    for e in c.env.iter().flatten() {
        let value = match &e.value_from {
            None => e.value.clone().unwrap_or_default(),
            Some(f) => {
                if let Some(r) = &f.field_ref {
                    field(pod, &r.field_path)?
                } else if let Some(r) = &f.secret_key_ref {
                    let d = volumes::secret(&sh.client, &ns, &r.name, r.optional.unwrap_or(false)).await?;
                    key(&d, &r.key, &r.name, r.optional)?
                } else if let Some(r) = &f.config_map_key_ref {
                    let d = volumes::config_map(&sh.client, &ns, &r.name, r.optional.unwrap_or(false)).await?;
                    key(&d, &r.key, &r.name, r.optional)?
                } else {
                    return Err(Error::Unsupported(format!(
                        "env {} uses a valueFrom the harness does not resolve",
                        e.name
                    )));
                }
            }
        };
        out.push((e.name.clone(), value));
    }
    Ok(out)
}

fn key(d: &BTreeMap<String, Vec<u8>>, key: &str, from: &str, optional: Option<bool>) -> Result<String, Error> {
    match d.get(key) {
        Some(v) => Ok(String::from_utf8_lossy(v).into_owned()),
        None if optional == Some(true) => Ok(String::new()),
        None => Err(Error::Invalid(format!("{from} has no key {key}"))),
    }
}

/// A downward-API field of the pod.
pub fn field(pod: &Pod, path: &str) -> Result<String, Error> {
    let in_map = |m: &BTreeMap<String, String>, rest: &str| {
        let k = rest.trim_start_matches("['").trim_end_matches("']");
        m.get(k).cloned().unwrap_or_default()
    };
    Ok(match path {
        "metadata.name" => pod.name_any(),
        "metadata.namespace" => pod.namespace().unwrap_or_default(),
        "metadata.uid" => pod.uid().unwrap_or_default(),
        "spec.nodeName" => pod.spec.as_ref().and_then(|s| s.node_name.clone()).unwrap_or_default(),
        "spec.serviceAccountName" => pod.spec.as_ref().and_then(|s| s.service_account_name.clone()).unwrap_or_default(),
        "status.podIP" | "status.hostIP" => "127.0.0.1".into(),
        p if p.starts_with("metadata.labels[") => in_map(pod.labels(), &p["metadata.labels".len()..]),
        p if p.starts_with("metadata.annotations[") => in_map(pod.annotations(), &p["metadata.annotations".len()..]),
        other => return Err(Error::Unsupported(format!("fieldRef {other}"))),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_of_the_downward_api() {
        let pod: Pod = serde_json::from_value(json!({"metadata": {"name": "p", "namespace": "n", "labels": {"a": "b"}}, "spec": {"containers": [], "nodeName": "x"}})).unwrap();
        assert_eq!(field(&pod, "metadata.name").unwrap(), "p");
        assert_eq!(field(&pod, "spec.nodeName").unwrap(), "x");
        assert_eq!(field(&pod, "metadata.labels['a']").unwrap(), "b");
        assert!(field(&pod, "spec.bogus").is_err());
    }

    #[test]
    fn probes_use_mapped_ports() {
        let c: Container =
            serde_json::from_value(json!({"name": "m", "ports": [{"name": "http", "containerPort": 8080}],
            "readinessProbe": {"httpGet": {"path": "/readyz", "port": "http"}}}))
            .unwrap();
        let ports = BTreeMap::from([(8080, 30001u16)]);
        match readiness(c.readiness_probe.as_ref(), &c, &ports) {
            Readiness::Http { port, path } => assert_eq!((port, path.as_str()), (30001, "/readyz")),
            other => panic!("{other:?}"),
        }
        assert!(matches!(readiness(None, &c, &ports), Readiness::Tcp(30001)));
        let bare: Container = serde_json::from_value(json!({"name": "b"})).unwrap();
        assert!(matches!(readiness(None, &bare, &BTreeMap::new()), Readiness::Started));
    }
}
