//! Starting and stopping container processes.
//!
//! Each process leads its own process group (so a stop reaches anything it forks), dies with
//! the harness thread that started it (`PR_SET_PDEATHSIG`), and, where the harness may create
//! mount namespaces (root), sees its read-only volumes through read-only bind mounts in a
//! private mount namespace, so `readOnly: true` is enforced rather than trusted.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use super::launch::Launch;

/// Starts `l` with output appended to `log`, in `workdir`, with only the container's env.
pub fn spawn(l: &Launch, workdir: &Path, log: &Path, enforce_read_only: bool) -> io::Result<Child> {
    let out = File::options().create(true).append(true).open(log)?;
    let read_only: Vec<CString> = if enforce_read_only {
        l.mounts
            .iter()
            .filter(|m| m.read_only && m.host.exists())
            .map(|m| CString::new(m.host.as_os_str().as_bytes()))
            .collect::<Result<_, _>>()?
    } else {
        Vec::new()
    };
    let mut cmd = Command::new(&l.program);
    cmd.args(&l.args)
        .env_clear()
        .envs(l.env.iter().map(|(k, v)| (k, v)))
        .current_dir(workdir)
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out);
    // SAFETY: only async-signal-safe libc calls between fork and exec; all memory they use
    // (the CStrings) was allocated before the fork.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setsid() < 0 || libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) < 0 {
                return Err(io::Error::last_os_error());
            }
            if !read_only.is_empty() {
                read_only_view(&read_only)?;
            }
            Ok(())
        });
    }
    cmd.spawn()
}

/// In a new mount namespace, remounts each path as a read-only bind of itself.
fn read_only_view(paths: &[CString]) -> io::Result<()> {
    let ok = |r: libc::c_int| if r < 0 { Err(io::Error::last_os_error()) } else { Ok(()) };
    // SAFETY: plain syscalls on NUL-terminated paths that outlive the calls.
    unsafe {
        ok(libc::unshare(libc::CLONE_NEWNS))?;
        let root = c"/";
        ok(libc::mount(
            std::ptr::null(),
            root.as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        ))?;
        for p in paths {
            ok(libc::mount(p.as_ptr(), p.as_ptr(), std::ptr::null(), libc::MS_BIND | libc::MS_REC, std::ptr::null()))?;
            let flags = libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY;
            ok(libc::mount(std::ptr::null(), p.as_ptr(), std::ptr::null(), flags, std::ptr::null()))?;
        }
    }
    Ok(())
}

/// Whether read-only bind mounts work here (root, or a user allowed to unshare mounts).
pub fn can_enforce_read_only(scratch: &Path) -> bool {
    let dir = scratch.join("ro-check");
    if std::fs::create_dir_all(&dir).is_err() {
        return false;
    }
    let l = Launch {
        program: "/bin/sh".into(),
        args: vec!["-c".into(), "if touch ro-check/x 2>/dev/null; then exit 1; fi".into()],
        env: Vec::new(),
        mounts: vec![super::launch::Mount { container: "/x".into(), host: dir.clone(), read_only: true }],
    };
    let ok =
        spawn(&l, scratch, &scratch.join("ro-check.log"), true).and_then(|mut c| c.wait()).is_ok_and(|s| s.success());
    let _ = std::fs::remove_dir_all(&dir);
    ok
}

/// Sends `sig` to the process group led by `pid`.
pub fn signal_group(pid: u32, sig: libc::c_int) {
    // SAFETY: kill(2) with a negative pid addresses the group; no memory is involved.
    unsafe {
        libc::kill(-(pid as libc::pid_t), sig);
    }
}
