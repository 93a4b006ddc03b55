//! Pure translation of one container into a local process: which binary, which arguments and
//! environment, with container paths and listen ports rewritten to this machine's.
//!
//! Paths: every argument or environment value equal to a mount path, or starting with
//! `<mount path>/`, is rewritten to the host directory of that volume (longest mount first);
//! `--flag=value` is rewritten in its value. Ports: a value `HOST:PORT` (HOST one of
//! `0.0.0.0`, `127.0.0.1`, `localhost`, `[::]` or empty) whose PORT is a declared
//! `containerPort` becomes `127.0.0.1:<host port>`, a free port picked per pod, so two pods
//! that both listen on 8080 in their manifests do not collide on one machine.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::Error;

/// A kim image and the local binary that stands in for it.
#[derive(Clone, Debug)]
pub struct Image {
    /// Last path component of the image name without tag, e.g. `kim-worker`.
    pub name: String,
    pub binary: PathBuf,
}

/// A volume mount, resolved to a directory (or file) on this machine.
#[derive(Clone, Debug, PartialEq)]
pub struct Mount {
    pub container: String,
    pub host: PathBuf,
    pub read_only: bool,
}

/// Everything needed to start one container as a process.
#[derive(Clone, Debug)]
pub struct Launch {
    pub program: PathBuf,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub mounts: Vec<Mount>,
}

/// `registry.example/org/kim-worker:0.1.0@sha256:..` → `kim-worker`.
pub fn image_name(image: &str) -> &str {
    let no_digest = image.split('@').next().unwrap_or(image);
    let last = no_digest.rsplit('/').next().unwrap_or(no_digest);
    last.split(':').next().unwrap_or(last)
}

/// The local program for a container and the arguments in front of its `args`.
///
/// `command` replaces the image's entrypoint, as in Kubernetes; its first element must then
/// name one of the known binaries (by file name), since nothing else exists here.
pub fn program(images: &[Image], image: &str, command: &[String]) -> Result<(PathBuf, Vec<String>), Error> {
    let by_name = |n: &str| images.iter().find(|i| i.name == n).map(|i| i.binary.clone());
    match command.split_first() {
        None => by_name(image_name(image))
            .map(|b| (b, Vec::new()))
            .ok_or_else(|| Error::Unsupported(format!("no local binary for image {image:?}"))),
        Some((first, rest)) => {
            let base = Path::new(first).file_name().and_then(|f| f.to_str()).unwrap_or(first);
            by_name(base).map(|b| (b, rest.to_vec())).ok_or_else(|| {
                Error::Unsupported(format!("command {first:?} of image {image:?} is not a known binary"))
            })
        }
    }
}

/// Kubernetes' `$(VAR)` expansion in command, args and env values; `$$` escapes a `$`,
/// unknown references stay as written.
pub fn expand(s: &str, env: &[(String, String)]) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        if let Some(t) = tail.strip_prefix("$$") {
            out.push('$');
            rest = t;
        } else if let Some(close) = tail.strip_prefix("$(").and_then(|t| t.find(')')) {
            let name = &tail[2..2 + close];
            match env.iter().rev().find(|(k, _)| k == name) {
                Some((_, v)) => out.push_str(v),
                None => out.push_str(&tail[..3 + close]),
            }
            rest = &tail[3 + close..];
        } else {
            out.push('$');
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    out
}

/// Rewrites container paths and listen addresses in one value (see the module docs).
pub fn rewrite(value: &str, mounts: &[Mount], ports: &BTreeMap<i32, u16>) -> String {
    if let Some((flag, v)) = value.split_once('=').filter(|(f, _)| f.starts_with("--")) {
        return format!("{flag}={}", rewrite(v, mounts, ports));
    }
    let mut sorted: Vec<&Mount> = mounts.iter().collect();
    sorted.sort_by_key(|m| std::cmp::Reverse(m.container.len()));
    for m in sorted {
        let c = m.container.trim_end_matches('/');
        if value == c {
            return m.host.display().to_string();
        }
        if let Some(rest) = value.strip_prefix(c).and_then(|r| r.strip_prefix('/')) {
            return m.host.join(rest).display().to_string();
        }
    }
    if let Some((host, port)) = value.rsplit_once(':') {
        let local = matches!(host, "" | "0.0.0.0" | "127.0.0.1" | "localhost" | "[::]");
        if let (true, Ok(p)) = (local, port.parse::<i32>()) {
            if let Some(h) = ports.get(&p) {
                return format!("127.0.0.1:{h}");
            }
        }
    }
    value.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mounts() -> Vec<Mount> {
        vec![
            Mount { container: "/storage".into(), host: "/h/pvc-a".into(), read_only: false },
            Mount { container: "/storage/sub".into(), host: "/h/other".into(), read_only: true },
            Mount { container: "/dev/termination-log".into(), host: "/h/pod/term".into(), read_only: false },
        ]
    }

    #[test]
    fn images_map_by_last_component() {
        assert_eq!(image_name("ghcr.io/acme/kim-worker:0.1.0"), "kim-worker");
        assert_eq!(image_name("kim-operator@sha256:abc"), "kim-operator");
        assert_eq!(image_name("localhost:5000/kim-worker"), "kim-worker");
        let images = vec![Image { name: "kim-worker".into(), binary: "/bin/w".into() }];
        assert_eq!(program(&images, "x/kim-worker:1", &[]).unwrap(), ("/bin/w".into(), vec![]));
        let cmd = vec!["/usr/local/bin/kim-worker".to_string(), "gen".into()];
        assert_eq!(program(&images, "anything", &cmd).unwrap(), ("/bin/w".into(), vec!["gen".to_string()]));
        let err = program(&images, "redis:7", &[]).unwrap_err().to_string();
        assert!(err.contains("redis:7"), "{err}");
        assert!(program(&images, "kim-worker", &["sh".into(), "-c".into()]).is_err());
    }

    #[test]
    fn paths_rewrite_longest_mount_first() {
        let p = BTreeMap::new();
        assert_eq!(rewrite("/storage", &mounts(), &p), "/h/pvc-a");
        assert_eq!(rewrite("/storage/data/base.npy", &mounts(), &p), "/h/pvc-a/data/base.npy");
        assert_eq!(rewrite("/storage/sub/x", &mounts(), &p), "/h/other/x");
        assert_eq!(rewrite("/storagex", &mounts(), &p), "/storagex");
        assert_eq!(rewrite("--source=/storage/a", &mounts(), &p), "--source=/h/pvc-a/a");
        assert_eq!(rewrite("/dev/termination-log", &mounts(), &p), "/h/pod/term");
    }

    #[test]
    fn declared_ports_move_to_loopback() {
        let p = BTreeMap::from([(8080, 31000u16)]);
        assert_eq!(rewrite("0.0.0.0:8080", &[], &p), "127.0.0.1:31000");
        assert_eq!(rewrite(":8080", &[], &p), "127.0.0.1:31000");
        assert_eq!(rewrite("--http=0.0.0.0:8080", &[], &p), "--http=127.0.0.1:31000");
        assert_eq!(rewrite("0.0.0.0:9090", &[], &p), "0.0.0.0:9090");
        assert_eq!(rewrite("redis://10.0.0.1:8080", &[], &p), "redis://10.0.0.1:8080");
    }

    #[test]
    fn dollar_references_expand() {
        let env = vec![("POD".to_string(), "p-1".to_string())];
        assert_eq!(expand("id=$(POD)", &env), "id=p-1");
        assert_eq!(expand("$$(POD) $(NOPE) $x", &env), "$(POD) $(NOPE) $x");
    }
}
