//! Child processes of a test: the workspace's binaries (built once),
//! daemons killed by PID when dropped, and what `/proc` says about them.

use anyhow::{anyhow, Context as _, Result};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use crate::*;

/// Path to a workspace binary, built once per test run — unless
/// `CLAIMS_TEST_BUILT` is set: the scripts build the workspace first, and a
/// build of `claim-service` alone unifies features differently, so it would
/// compile it (and the crates it shares) again.
pub fn binary(name: &str) -> PathBuf {
    let root = workspace_root();
    let profile = std::env::var("CLAIMS_TEST_PROFILE").unwrap_or_else(|_| "debug".into());
    let prebuilt = std::env::var_os("CLAIMS_TEST_BUILT").is_some_and(|v| !v.is_empty());
    if !prebuilt {
        build_once(&root, &profile);
    }
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| root.join("target"));
    let path = target.join(profile).join(name);
    if prebuilt && !path.exists() {
        panic!(
            "CLAIMS_TEST_BUILT is set but {} is missing: build it first",
            path.display()
        );
    }
    path
}

/// Builds the binaries for `profile`, the first time it is called.
pub(crate) fn build_once(root: &Path, profile: &str) {
    static BUILT: OnceLock<std::result::Result<(), String>> = OnceLock::new();
    let built = BUILT.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.current_dir(root)
            .args(["build", "--quiet", "-p", "claim-service", "-p", "claimctl"]);
        if profile == "release" {
            cmd.arg("--release");
        }
        match cmd.status() {
            Ok(s) if s.success() => Ok(()),
            Ok(s) => Err(format!("cargo build of the binaries failed: {s}")),
            Err(e) => Err(format!("cannot run cargo: {e}")),
        }
    });
    if let Err(e) = built {
        panic!("{e}");
    }
}

pub(crate) fn scratch_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "claims-{tag}-{}-{:x}",
        std::process::id(),
        rand_u64()
    ));
    std::fs::create_dir_all(&dir).expect("temp dir is writable");
    dir
}
pub(crate) fn kill(child: &mut Child, signal: &str) {
    let _ = Command::new("kill")
        .args([signal, &child.id().to_string()])
        .status();
}
/// A process a test started, logging to a file in its own scratch folder;
/// killed by its PID when dropped.
pub struct Daemon {
    child: Option<Child>,
    what: &'static str,
    pub log: PathBuf,
    dir: PathBuf,
}

impl Daemon {
    /// Spawns `cmd` with stdout and stderr going to the log file.
    pub fn spawn(what: &'static str, mut cmd: Command) -> Result<Self> {
        let dir = scratch_dir(what);
        let log = dir.join(format!("{what}.log"));
        let file = std::fs::File::create(&log)?;
        let child = cmd
            .stdout(file.try_clone()?)
            .stderr(file)
            .stdin(Stdio::null())
            .spawn()
            .with_context(|| {
                format!("cannot start {what} (scripts/test.sh installs what is missing)")
            })?;
        Ok(Self {
            child: Some(child),
            what,
            log,
            dir,
        })
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits (up to [`WAIT`]) until the log says `needle`; the log then.
    pub async fn wait_log(&self, needle: &str) -> Result<String> {
        until(
            Duration::from_millis(50),
            async || Ok(self.log_text()),
            |log| log.contains(needle),
        )
        .await
        .with_context(|| format!("{} never logged {needle:?}", self.what))
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    pub fn alive(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Waits for the process to exit by itself, returning its status.
    pub async fn wait_exit(&mut self) -> Result<std::process::ExitStatus> {
        let what = self.what;
        let child = self
            .child
            .as_mut()
            .ok_or_else(|| anyhow!("{what} not running"))?;
        let status = until(
            Duration::from_millis(20),
            async || Ok(child.try_wait()?),
            |status| status.is_some(),
        )
        .await
        .with_context(|| format!("{what} still running"))?;
        self.child = None;
        status.ok_or_else(|| anyhow!("{what} still running"))
    }

    /// SIGTERM, then wait for the process to exit.
    pub async fn terminate(&mut self) -> Result<std::process::ExitStatus> {
        if let Some(child) = self.child.as_mut() {
            kill(child, "-TERM");
        }
        let status = self.wait_exit().await;
        if status.is_err() {
            self.kill();
        }
        status
    }

    /// Sends `signal` (e.g. `libc::SIGSTOP`) to the process, if it runs.
    pub fn signal(&self, signal: libc::c_int) {
        if let Some(pid) = self.pid() {
            unsafe {
                libc::kill(pid as libc::pid_t, signal);
            }
        }
    }

    /// SIGKILL, as a crash.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
        if std::env::var_os("CLAIMS_KEEP_LOGS").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
/// A `/proc/PID/status` field in KiB, e.g. `VmRSS:`.
pub fn proc_status_kib(pid: u32, field: &str) -> Result<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))?
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .with_context(|| format!("{field} not in /proc/{pid}/status"))
}

/// Resident memory of process `pid`, in bytes.
pub fn rss(pid: u32) -> Result<u64> {
    Ok(proc_status_kib(pid, "VmRSS:")? * 1024)
}

/// Open file descriptors of process `pid`.
pub fn open_files(pid: u32) -> Result<usize> {
    Ok(std::fs::read_dir(format!("/proc/{pid}/fd"))?.count())
}

/// User + system CPU time of a process, in clock ticks (1/100 s).
pub fn cpu_ticks(pid: u32) -> Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .context("unexpected /proc/PID/stat format")?
        .1
        .split_whitespace()
        .collect();
    Ok(fields[11].parse::<u64>()? + fields[12].parse::<u64>()?)
}

/// Gives a process handle the [`Daemon`] methods (log, pid, kill, ...).
macro_rules! daemon_handle {
    ($ty:ty, $field:tt) => {
        impl std::ops::Deref for $ty {
            type Target = Daemon;
            fn deref(&self) -> &Daemon {
                &self.$field
            }
        }

        impl std::ops::DerefMut for $ty {
            fn deref_mut(&mut self) -> &mut Daemon {
                &mut self.$field
            }
        }
    };
}
pub(crate) use daemon_handle;
