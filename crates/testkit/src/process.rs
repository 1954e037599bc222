//! Child processes that never outlive the test process.

use std::path::Path;
use std::process::{Child, Command, Stdio};

/// A child process killed when dropped, and (through PR_SET_PDEATHSIG) when the thread that spawned
/// it ends, so a crashed or aborted test leaves no server behind.
pub struct ChildProcess {
    child: Child,
    name: String,
}

impl ChildProcess {
    /// Starts `command` with stdout and stderr appended to `log`.
    pub fn spawn(name: &str, mut command: Command, log: &Path) -> anyhow::Result<Self> {
        use std::os::unix::process::CommandExt;
        let out = std::fs::OpenOptions::new().create(true).append(true).open(log)?;
        command.stdin(Stdio::null()).stdout(out.try_clone()?).stderr(out);
        // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child =
            command.spawn().map_err(|e| anyhow::anyhow!("cannot start {name} ({:?}): {e}", command.get_program()))?;
        Ok(ChildProcess { child, name: name.to_owned() })
    }

    /// Fails if the process has exited (it should be serving).
    pub fn check_running(&mut self) -> anyhow::Result<()> {
        match self.child.try_wait()? {
            Some(status) => anyhow::bail!("{} exited: {status}", self.name),
            None => Ok(()),
        }
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
