//! A child process with its output in a log file, killed and reaped on drop.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

pub struct Proc {
    pub child: Child,
    /// stdout and stderr, interleaved.
    pub log: PathBuf,
    pub name: String,
}

impl Proc {
    /// Starts `cmd` with stdin closed and stdout/stderr in `dir/<name>.log`.
    pub fn try_spawn(name: &str, cmd: &mut Command, dir: &Path) -> std::io::Result<Proc> {
        let log = dir.join(format!("{name}.log"));
        let f = std::fs::File::create(&log)?;
        let child = cmd.stdout(f.try_clone()?).stderr(f).stdin(Stdio::null()).spawn().map_err(|e| {
            std::io::Error::new(e.kind(), format!("starting {name} ({}): {e}", cmd.get_program().to_string_lossy()))
        })?;
        Ok(Proc { child, log, name: name.into() })
    }

    /// [`Proc::try_spawn`], panicking when the program cannot be started.
    pub fn spawn(name: &str, cmd: &mut Command, dir: &Path) -> Proc {
        Proc::try_spawn(name, cmd, dir).unwrap_or_else(|e| panic!("{e}"))
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// True until the process has exited.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Sends a signal by name (`TERM`, `STOP`, `CONT`, `KILL`…); panics if it cannot be sent.
    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill").arg(format!("-{sig}")).arg(self.pid().to_string()).status();
        assert!(matches!(ok, Ok(s) if s.success()), "kill -{sig} {} ({})", self.name, self.pid());
    }

    /// Waits for exit, up to `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let t = Instant::now();
        while t.elapsed() < limit {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// SIGTERM, up to `grace` to exit, then SIGKILL.
    pub fn stop(&mut self, grace: Duration) {
        if !self.alive() {
            return;
        }
        // SAFETY: signalling our own child by its pid.
        unsafe { libc::kill(self.pid() as libc::pid_t, libc::SIGTERM) };
        if self.wait_exit(grace).is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
