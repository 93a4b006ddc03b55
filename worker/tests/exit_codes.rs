//! The real `kim-worker` binary exits with a configuration code on errors a retry cannot fix and
//! with other codes on those it may (kim_api::exit); docs/cli.md lists the same codes.

use std::path::{Path, PathBuf};
use std::process::Command;

use kim_api::exit;

fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_kim-worker"))
}

/// Runs the worker; returns (exit code, stderr, termination message).
fn run(dir: &Path, args: &[&str]) -> (i32, String, String) {
    let msg = dir.join("termination-log");
    let _ = std::fs::remove_file(&msg);
    let mut cmd = Command::new(bin());
    cmd.args(args).env("KIM_LOG", "warn").env_remove("KIM_STORAGE");
    if args.first() == Some(&"index") {
        cmd.arg("--termination-message-path").arg(&msg);
    }
    let out = cmd.output().unwrap();
    let code = out.status.code().expect("exited, not signalled");
    (code, String::from_utf8_lossy(&out.stderr).into_owned(), std::fs::read_to_string(&msg).unwrap_or_default())
}

struct Data {
    dir: tempfile::TempDir,
}

impl Data {
    /// 40 descriptors of 32 u8 dimensions with ids, under `<dir>/data`.
    fn new() -> Data {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new(bin())
            .args(["gen", "--out", dir.path().join("data").to_str().unwrap(), "--identities", "10", "--samples", "4"])
            .args(["--dimensions", "32", "--intrinsic", "8", "--mated-probes", "5", "--nonmated-probes", "5"])
            .output()
            .unwrap();
        assert!(out.status.success(), "gen: {}", String::from_utf8_lossy(&out.stderr));
        Data { dir }
    }

    fn p(&self, rel: &str) -> String {
        self.dir.path().join(rel).to_str().unwrap().to_string()
    }

    /// `kim-worker index` of `source` with `extra` flags (32 dimensions unless `extra` says).
    fn index(&self, source: &str, extra: &[&str]) -> (i32, String, String) {
        let (storage, src, ids) = (self.p("storage"), self.p(source), self.p("data/ids.txt"));
        let mut args = vec!["index", "--label", "faces", "--storage", &storage, "--source", &src, "--ids", &ids];
        args.extend(["--version", "59", "--threads", "1"]);
        if !extra.contains(&"--dimensions") {
            args.extend(["--dimensions", "32"]);
        }
        args.extend_from_slice(extra);
        run(self.dir.path(), &args)
    }
}

#[test]
fn bad_flags_are_configuration_errors_and_help_is_not() {
    let dir = tempfile::tempdir().unwrap();
    let (code, err, _) = run(dir.path(), &["index", "--no-such-flag"]);
    assert_eq!(code, i32::from(exit::CONFIG), "{err}");
    assert!(err.contains("--no-such-flag"), "{err}");
    let (code, err, _) = run(dir.path(), &["index", "--label", "x"]);
    assert_eq!(code, i32::from(exit::CONFIG), "missing required flags: {err}");
    let (code, err, _) = run(dir.path(), &["match", "--storage", "/s", "--block", "soon"]);
    assert_eq!(code, i32::from(exit::CONFIG), "unparsable duration: {err}");
    assert_eq!(run(dir.path(), &["--help"]).0, 0);
    assert_eq!(run(dir.path(), &["index", "--help"]).0, 0);
    assert_eq!(run(dir.path(), &["--version"]).0, 0);
}

#[test]
fn deterministic_build_errors_exit_with_config() {
    let d = Data::new();
    // The same source built as 64-dimensional: the dimension mismatch the operator must not retry.
    let (code, err, msg) = d.index("data/base.npy", &["--dimensions", "64"]);
    assert_eq!(code, i32::from(exit::CONFIG), "{err}");
    assert!(msg.contains("source has 32 dimensions, index expects 64"), "termination message: {msg}");
    for (what, source, extra) in [
        ("bad HNSW settings", "data/base.npy", vec!["--m", "16", "--ef-construction", "4"]),
        ("a directory as source", "data", vec![]),
        ("an unsupported source format", "data/ids.txt", vec![]),
        ("an f32 source for a u8 index", "data/base.npy", vec!["--encoding", "f32"]),
    ] {
        let (code, err, msg) = d.index(source, &extra);
        assert_eq!(code, i32::from(exit::CONFIG), "{what}: {err}");
        assert!(msg.starts_with("{\"error\":"), "{what}: termination message {msg}");
    }
    // Ids that do not fit the rows.
    std::fs::write(d.dir.path().join("short-ids.txt"), "a\nb\n").unwrap();
    let (storage, src, ids) = (d.p("storage"), d.p("data/base.npy"), d.p("short-ids.txt"));
    let (code, err, _) = run(
        d.dir.path(),
        &["index", "--label", "faces", "--storage", &storage, "--source", &src, "--ids", &ids, "--version", "59"],
    );
    assert_eq!(code, i32::from(exit::CONFIG), "{err}");
    assert!(err.contains("2 ids for 40 descriptors"), "{err}");
    // A label that cannot be a directory name, in index and clean.
    let (code, err, _) =
        run(d.dir.path(), &["index", "--label", "../x", "--storage", &storage, "--source", &src, "--version", "59"]);
    assert_eq!(code, i32::from(exit::CONFIG), "{err}");
    let (code, err, _) = run(d.dir.path(), &["clean", "--label", "../x", "--storage", &storage]);
    assert_eq!(code, i32::from(exit::CONFIG), "{err}");
}

#[test]
fn missing_inputs_and_storage_failures_are_not_configuration_errors() {
    let d = Data::new();
    let (code, err, msg) = d.index("data/none.npy", &[]);
    assert_eq!(code, i32::from(exit::NO_INPUT), "{err}");
    assert!(msg.contains("none.npy") && msg.contains("No such file"), "{msg}");
    let (storage, src, gone) = (d.p("storage"), d.p("data/base.npy"), d.p("data/no-ids.txt"));
    let (code, err, _) = run(
        d.dir.path(),
        &["index", "--label", "faces", "--storage", &storage, "--source", &src, "--ids", &gone, "--version", "59"],
    );
    assert_eq!(code, i32::from(exit::NO_INPUT), "{err}");
    // Storage that cannot be written (a file where the root directory should be).
    std::fs::write(d.dir.path().join("storage"), "not a directory").unwrap();
    let (code, err, _) = d.index("data/base.npy", &[]);
    assert_eq!(code, i32::from(exit::TRANSIENT), "{err}");
    std::fs::remove_file(d.dir.path().join("storage")).unwrap();
    // Agents that cannot be reached.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let agents = format!("agents://127.0.0.1:{port}");
    let (code, err, _) = run(
        d.dir.path(),
        &[
            "index",
            "--label",
            "faces",
            "--storage",
            &storage,
            "--source",
            &agents,
            "--version",
            "1",
            "--encoding",
            "f32",
        ],
    );
    assert_eq!(code, i32::from(exit::TRANSIENT), "{err}");
    // And the same inputs, all present, build.
    let (code, err, _) = d.index("data/base.npy", &[]);
    assert_eq!(code, 0, "{err}");
}

#[test]
fn docs_list_every_exit_code() {
    let doc = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/cli.md")).unwrap();
    let section = doc.split("## Exit codes").nth(1).expect("docs/cli.md has an `## Exit codes` section");
    for (name, code) in exit::ALL {
        let row = format!("| {code} | `{name}` |");
        assert!(section.contains(&row), "docs/cli.md lacks the row {row:?}");
    }
}
