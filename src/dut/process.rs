//! Processes stopfuzz starts (vhost-user back-ends, QEMU): owned by handle, ended by pid.
//!
//! Every process stopfuzz starts is registered by pid. It is ended when its handle drops
//! (also on a panic unwinding through the run), by [`end_all`] at the end of a command, by
//! the SIGINT/SIGTERM handler, and by the kernel if stopfuzz dies (`PR_SET_PDEATHSIG`).
//! Nothing else is ever signalled.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Once;
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Pids of the processes alive now; 0 is a free slot. Fixed size so the signal handler
/// can read it without locking.
static PIDS: [AtomicI32; 64] = [const { AtomicI32::new(0) }; 64];

/// Names each scratch directory uniquely within this process.
static NEXT_DIR: AtomicU64 = AtomicU64::new(0);

fn register(pid: i32) -> bool {
    PIDS.iter().any(|slot| {
        slot.compare_exchange(0, pid, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
    })
}

fn unregister(pid: i32) {
    for slot in &PIDS {
        let _ = slot.compare_exchange(pid, 0, Ordering::SeqCst, Ordering::SeqCst);
    }
}

/// Kills every registered process. Async-signal-safe: only atomics and `kill`.
pub fn end_all() {
    for slot in &PIDS {
        let pid = slot.swap(0, Ordering::SeqCst);
        if pid > 0 {
            // SAFETY: plain syscall on a pid this process started and has not reaped.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

extern "C" fn on_signal(sig: libc::c_int) {
    end_all();
    // SAFETY: restore the default action and re-raise, so the exit status says why.
    unsafe {
        libc::signal(sig, libc::SIG_DFL);
        libc::raise(sig);
    }
}

fn install_signal_handlers() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            // SAFETY: the handler only touches atomics and async-signal-safe calls.
            unsafe { libc::signal(sig, on_signal as *const () as libc::sighandler_t) };
        }
    });
}

/// Why a back-end process could not be started.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    /// The scratch directory or a file in it could not be made.
    #[error("cannot prepare {path}: {source}")]
    Scratch {
        /// What could not be made.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The program could not be executed.
    #[error("cannot start `{program}`: {source}")]
    Exec {
        /// The program.
        program: String,
        /// Why.
        source: std::io::Error,
    },
    /// Too many back-ends at once.
    #[error("more than {0} back-end processes at once")]
    TooMany(usize),
    /// It exited before its socket appeared.
    #[error("the back-end exited ({status}) before listening on its socket; its stderr:\n{stderr}")]
    Exited {
        /// Its exit status.
        status: String,
        /// What it printed.
        stderr: String,
    },
    /// Its socket did not appear in time.
    #[error("the back-end did not listen on {socket} within {secs} s; its stderr:\n{stderr}")]
    NoSocket {
        /// The socket path.
        socket: PathBuf,
        /// The time allowed.
        secs: u64,
        /// What it printed.
        stderr: String,
    },
}

/// A scratch directory that is removed when dropped.
#[derive(Debug)]
pub struct Scratch {
    path: PathBuf,
}

impl Scratch {
    /// A fresh directory under the system's temp directory, named
    /// `stopfuzz-KIND-PID-N`: the pid lets a test or script find this run's processes, whose
    /// command lines name files in it.
    pub fn new(kind: &str) -> Result<Scratch, SpawnError> {
        let path = std::env::temp_dir().join(format!(
            "stopfuzz-{kind}-{}-{}",
            std::process::id(),
            NEXT_DIR.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&path).map_err(|source| SpawnError::Scratch {
            path: path.clone(),
            source,
        })?;
        Ok(Scratch { path })
    }

    /// A path inside it.
    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// What a kind of process is called in reports, and the stderr lines that mean it died
/// even though it still runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Watch {
    /// Its name in death reports ("the back-end exited: ...").
    pub name: &'static str,
    /// A stderr line containing one of these is a death.
    pub markers: &'static [&'static str],
    /// What such a line says it did ("panicked").
    pub verb: &'static str,
}

impl Watch {
    /// A vhost-user back-end: libvhost-user's `vu_panic:`, Rust's `panicked at`.
    pub const BACKEND: Watch = Watch {
        name: "the back-end",
        markers: &["vu_panic:", "panicked at"],
        verb: "panicked",
    };
    /// QEMU: a failed `assert` (glibc's `Assertion`, GLib's `assertion failed`,
    /// `g_assert_not_reached`), fatal messages, a core dump noted by a shell.
    pub const QEMU: Watch = Watch {
        name: "QEMU",
        markers: &[
            "Assertion",
            "assertion failed",
            "should not be reached",
            "qemu: fatal",
            "core dumped",
        ],
        verb: "failed",
    };
}

/// A running process: ended, by pid, when dropped.
#[derive(Debug)]
pub struct Process {
    child: Child,
    pid: i32,
    stderr_path: PathBuf,
    watch: Watch,
    /// How much of the stderr log has been scanned for the markers.
    scanned: u64,
    /// Why it is dead, once known.
    dead: Option<String>,
}

/// How long a back-end may take to create its socket.
const START_TIMEOUT: Duration = Duration::from_secs(10);

impl Process {
    /// Starts the back-end `argv` with stderr to a log in `scratch` named after `socket`
    /// (each back-end on a site has its own), and waits for `socket` to appear.
    pub fn spawn(argv: &[String], scratch: &Scratch, socket: &Path) -> Result<Process, SpawnError> {
        Self::spawn_watched(Watch::BACKEND, argv, scratch, socket)
    }

    /// Like [`spawn`](Self::spawn), for a process of the kind `watch` describes.
    pub fn spawn_watched(
        watch: Watch,
        argv: &[String],
        scratch: &Scratch,
        socket: &Path,
    ) -> Result<Process, SpawnError> {
        install_signal_handlers();
        let name = socket
            .file_name()
            .map_or_else(|| "backend".into(), |n| n.to_string_lossy().into_owned());
        let stderr_path = scratch.join(&format!("{name}.stderr.log"));
        let log = File::create(&stderr_path).map_err(|source| SpawnError::Scratch {
            path: stderr_path.clone(),
            source,
        })?;
        let (program, args) = argv.split_first().ok_or_else(|| SpawnError::Exec {
            program: String::new(),
            source: std::io::Error::other("the command is empty"),
        })?;
        let mut cmd = Command::new(program);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        // SAFETY: prctl is async-signal-safe; the child dies with the thread that made it.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = cmd.spawn().map_err(|source| SpawnError::Exec {
            program: program.clone(),
            source,
        })?;
        let pid = child.id() as i32;
        let mut process = Process {
            child,
            pid,
            stderr_path,
            watch,
            scanned: 0,
            dead: None,
        };
        if !register(pid) {
            return Err(SpawnError::TooMany(PIDS.len()));
        }
        let start = Instant::now();
        while !socket.exists() {
            if let Ok(Some(status)) = process.child.try_wait() {
                return Err(SpawnError::Exited {
                    status: status.to_string(),
                    stderr: process.stderr(),
                });
            }
            if start.elapsed() > START_TIMEOUT {
                return Err(SpawnError::NoSocket {
                    socket: socket.to_path_buf(),
                    secs: START_TIMEOUT.as_secs(),
                    stderr: process.stderr(),
                });
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        Ok(process)
    }

    /// Its pid.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Everything it printed on stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read(&self.stderr_path)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// Why it is no longer working: it exited, or it logged one of its [`Watch`]'s markers
    /// (a libvhost-user panic, a QEMU assertion). Cheap when nothing changed: one `waitpid`
    /// and one `stat`.
    pub fn death(&mut self) -> Option<String> {
        if self.dead.is_some() {
            return self.dead.clone();
        }
        if let Ok(Some(status)) = self.child.try_wait() {
            unregister(self.pid);
            self.dead = Some(format!("{} exited: {status}", self.watch.name));
        } else if let Some(line) = self.new_panic_line() {
            self.dead = Some(format!("{} {}: {line}", self.watch.name, self.watch.verb));
        }
        if self.dead.is_some() && self.watch != Watch::BACKEND {
            // QEMU says why only on stderr (the back-end's report keeps it separately).
            let stderr = self.stderr();
            if let Some(dead) = &mut self.dead {
                dead.push_str("; its stderr:\n");
                dead.push_str(&stderr);
            }
        }
        self.dead.clone()
    }

    fn new_panic_line(&mut self) -> Option<String> {
        let len = std::fs::metadata(&self.stderr_path).ok()?.len();
        if len <= self.scanned {
            return None;
        }
        let mut f = File::open(&self.stderr_path).ok()?;
        // Back up a little: a marker may straddle two scans.
        let from = self.scanned.saturating_sub(16);
        f.seek(SeekFrom::Start(from)).ok()?;
        let mut text = String::new();
        let _ = f.take(len - from).read_to_string(&mut text);
        self.scanned = len;
        let markers = self.watch.markers;
        text.lines()
            .find(|l| markers.iter().any(|m| l.contains(m)))
            .map(str::to_string)
    }

    /// Ends it now and reaps it.
    pub fn end(&mut self) {
        if self.dead.is_none() || self.child.try_wait().ok().flatten().is_none() {
            // SAFETY: the pid is this handle's own child, not yet reaped.
            unsafe { libc::kill(self.pid, libc::SIGKILL) };
            let _ = self.child.wait();
        }
        unregister(self.pid);
        self.dead.get_or_insert_with(|| "ended by stopfuzz".into());
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.end();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alive(pid: i32) -> bool {
        // SAFETY: signal 0 only checks that the pid exists.
        unsafe { libc::kill(pid, 0) == 0 }
    }

    #[test]
    fn a_process_is_ended_by_its_handle_and_its_scratch_removed() {
        let scratch = Scratch::new("vu").unwrap();
        let socket = scratch.join("sock");
        let argv: Vec<String> = [
            "sh",
            "-c",
            &format!("touch {}; exec sleep 30", socket.display()),
        ]
        .map(String::from)
        .to_vec();
        let mut p = Process::spawn(&argv, &scratch, &socket).unwrap();
        let pid = p.pid();
        assert!(alive(pid));
        assert_eq!(p.death(), None);
        drop(p);
        assert!(!alive(pid), "dropping the handle ends the process");
        let dir = scratch.path.clone();
        drop(scratch);
        assert!(!dir.exists());
    }

    #[test]
    fn exit_and_panic_lines_are_deaths_with_stderr() {
        let scratch = Scratch::new("vu").unwrap();
        let socket = scratch.join("sock");
        let argv: Vec<String> = [
            "sh",
            "-c",
            &format!(
                "touch {}; echo 'vu_panic: Virtqueue size exceeded' >&2; exec sleep 30",
                socket.display()
            ),
        ]
        .map(String::from)
        .to_vec();
        let mut p = Process::spawn(&argv, &scratch, &socket).unwrap();
        let start = Instant::now();
        while p.death().is_none() && start.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(
            p.death()
                .unwrap()
                .contains("vu_panic: Virtqueue size exceeded")
        );
        let exits = ["sh", "-c", "echo no socket for you >&2; exit 3"].map(String::from);
        match Process::spawn(&exits, &scratch, &scratch.join("never")) {
            Err(SpawnError::Exited { stderr, .. }) => assert!(stderr.contains("no socket")),
            other => panic!("expected an early exit, got {other:?}"),
        }
        let qemu = [
            "sh",
            "-c",
            "touch \"$0\"; echo 'qemu: fatal: bad' >&2; exec sleep 30",
        ]
        .map(String::from);
        let mut argv = qemu.to_vec();
        argv.push(scratch.join("q").display().to_string());
        let mut q =
            Process::spawn_watched(Watch::QEMU, &argv, &scratch, &scratch.join("q")).unwrap();
        let start = Instant::now();
        while q.death().is_none() && start.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(5));
        }
        let death = q.death().unwrap();
        assert!(
            death.starts_with("QEMU failed: qemu: fatal: bad"),
            "{death}"
        );
        assert!(death.contains("its stderr"), "{death}");
        let missing = ["/nonexistent/backend".to_string()];
        assert!(matches!(
            Process::spawn(&missing, &scratch, &socket),
            Err(SpawnError::Exec { .. })
        ));
    }
}
