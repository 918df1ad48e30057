//! `stopfuzz serve`: the reference virtio-blk device as a vhost-user back-end, so that the
//! remote path can be checked against a device known to be correct.
//!
//! It is also the template for a back-end written in Rust on rust-vmm's
//! `vhost-user-backend`:
//! - [`blk`]: the `VhostUserBackend` implementation (rings in, requests out);
//! - [`disk`]: the image file, with completions and faults the front-end steers;
//! - [`control`]: the line protocol for that steering;
//! - this module: sockets, the process's life, and errors.
//!
//! One process serves one front-end connection and exits when it ends; a migration starts a
//! fresh process on the same image. The README's "Serving the reference device" section is
//! the user-facing description of the CLI, the control protocol and the contract.

pub mod blk;
pub mod control;
pub mod disk;

use std::fs::File;
use std::io;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};

use vhost_user_backend::VhostUserDaemon;
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};

use crate::backend::SECTOR_SIZE;
use blk::ServedBlk;
use control::Command;
use disk::ImageDisk;

/// What `stopfuzz serve` is asked to do.
#[derive(Clone, Debug)]
pub struct Options {
    /// The vhost-user socket to listen on.
    pub socket: PathBuf,
    /// The disk image, read and written in place.
    pub image: PathBuf,
    /// The control socket; `None` means the vhost-user socket's path plus `.ctl`.
    pub control: Option<PathBuf>,
    /// Queues offered, 1 to [`crate::device::MAX_QUEUES`].
    pub queues: u16,
    /// A `{faults}` file: disk faults in place from the start.
    pub faults: Option<PathBuf>,
}

impl Options {
    /// The control socket's path.
    pub fn control_path(&self) -> PathBuf {
        self.control.clone().unwrap_or_else(|| {
            let mut path = self.socket.clone().into_os_string();
            path.push(".ctl");
            PathBuf::from(path)
        })
    }
}

/// Why serving could not start or went wrong.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The image cannot be opened for reading and writing.
    #[error("cannot open image {path}: {source}")]
    Image {
        /// The image given.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The faults file cannot be read or parsed.
    #[error("faults file {path}: {why}")]
    Faults {
        /// The file given.
        path: PathBuf,
        /// Why.
        why: String,
    },
    /// The image holds less than one sector.
    #[error("image {0} is smaller than one 512-byte sector")]
    ImageTooSmall(PathBuf),
    /// Another process is listening on a socket path.
    #[error("socket {0} is in use by another process")]
    SocketInUse(PathBuf),
    /// A socket path names something that is not a socket.
    #[error("{0} exists and is not a socket; not replacing it")]
    NotASocket(PathBuf),
    /// A socket cannot be created.
    #[error("cannot listen on {path}: {source}")]
    Listen {
        /// The socket path.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The device or the vhost-user daemon cannot be set up.
    #[error("cannot start the back-end: {0}")]
    Setup(String),
}

/// How a served connection ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Ended {
    /// The front-end disconnected.
    Disconnected,
    /// The back-end closed the connection: the front-end sent a message it refused, or broke
    /// a ring. The reason has been printed on stderr.
    Refused(String),
}

/// Serves one front-end connection, then returns. Errors are about setup only: whatever the
/// front-end does ends in [`Ended`].
pub fn run(opts: &Options) -> Result<Ended, ServeError> {
    // Fails only if a logger is already set, e.g. by an embedding program; keep theirs.
    let _ = log::set_logger(&STDERR_LOG).map(|()| log::set_max_level(log::LevelFilter::Warn));
    let (file, sectors) = open_image(&opts.image)?;
    let mut disk = ImageDisk::new(file, sectors);
    if let Some(path) = &opts.faults {
        let text = std::fs::read_to_string(path).map_err(|source| ServeError::Faults {
            path: path.clone(),
            why: source.to_string(),
        })?;
        let faults = crate::dut::parse_faults(&text).map_err(|why| ServeError::Faults {
            path: path.clone(),
            why,
        })?;
        for f in faults {
            disk.add_rule(f.into());
        }
    }
    let device = ServedBlk::new(disk, opts.queues).map_err(|e| ServeError::Setup(e.to_string()))?;
    let control_path = opts.control_path();
    claim(&opts.socket)?;
    claim(&control_path)?;
    let control = UnixListener::bind(&control_path).map_err(|source| ServeError::Listen {
        path: control_path.clone(),
        source,
    })?;
    // Removes the control socket however this function returns.
    let _control_file = RemoveOnDrop(control_path.clone());
    let mut listener =
        vhost::vhost_user::Listener::new(&opts.socket, false).map_err(|e| ServeError::Listen {
            path: opts.socket.clone(),
            source: io::Error::other(e.to_string()),
        })?;

    let mem = GuestMemoryAtomic::new(GuestMemoryMmap::new());
    let mut daemon = VhostUserDaemon::new("stopfuzz-serve".into(), device.clone(), mem)
        .map_err(|e| ServeError::Setup(e.to_string()))?;

    let steer = device.clone();
    std::thread::Builder::new()
        .name("serve-control-accept".into())
        .spawn(move || control::serve(control, move |cmd| apply(&steer, cmd)))
        .map_err(|e| ServeError::Setup(e.to_string()))?;
    eprintln!(
        "stopfuzz serve: {sectors} sectors from {}; listening on {} (control {})",
        opts.image.display(),
        opts.socket.display(),
        control_path.display()
    );

    daemon
        .start(&mut listener)
        .map_err(|e| ServeError::Setup(e.to_string()))?;
    // One connection per process: nobody else may connect, and the path goes away now.
    drop(listener);
    if let Some(handle) = daemon.shutdown_handle() {
        device.set_shutdown(handle);
    }
    let ended = match daemon.wait() {
        Ok(()) => Ended::Disconnected,
        Err(e) if is_disconnect(&e) => Ended::Disconnected,
        Err(e) => Ended::Refused(e.to_string()),
    };
    device.disconnected();
    let _ = device.exit_notifier().notify();
    Ok(ended)
}

/// Carries out one control command.
fn apply(device: &ServedBlk, cmd: Command) -> Result<String, String> {
    match cmd {
        Command::Hold => device.with_disk(|d| d.hold()),
        Command::Release(n) => {
            let ran = device.with_disk(|d| d.release(n));
            return Ok(format!("released={ran}"));
        }
        Command::ReleaseNth(k) => {
            if !device.with_disk(|d| d.release_nth(k)) {
                return Err(format!("no held I/O at position {k}"));
            }
        }
        Command::Fail(rule) => device.with_disk(|d| d.add_rule(rule)),
        Command::Clear => device.with_disk(|d| d.clear_rules()),
        Command::Reset => device.with_disk(|d| {
            d.clear_rules();
            d.release(None);
        }),
        Command::Status => {
            let (hold, held, rules) =
                device.with_disk(|d| (d.holding(), d.held().count(), d.rules()));
            let hold = if hold { "on" } else { "off" };
            return Ok(format!(
                "hold={hold} held={held} rules={rules} completed={}",
                device.completed()
            ));
        }
    }
    Ok(String::new())
}

fn is_disconnect(e: &vhost_user_backend::Error) -> bool {
    use vhost::vhost_user::Error as VuError;
    matches!(
        e,
        vhost_user_backend::Error::HandleRequest(
            VuError::Disconnected | VuError::PartialMessage | VuError::SocketBroken(_)
        )
    )
}

fn open_image(path: &Path) -> Result<(File, u64), ServeError> {
    let image_error = |source| ServeError::Image {
        path: path.to_owned(),
        source,
    };
    let file = File::options()
        .read(true)
        .write(true)
        .open(path)
        .map_err(image_error)?;
    let meta = file.metadata().map_err(image_error)?;
    if !meta.is_file() {
        return Err(image_error(io::Error::other("not a regular file")));
    }
    let sectors = meta.len() / SECTOR_SIZE;
    if sectors == 0 {
        return Err(ServeError::ImageTooSmall(path.to_owned()));
    }
    Ok((file, sectors))
}

/// Makes `path` free to listen on: a stale socket left by a dead process is removed, a live
/// one or anything that is not a socket is an error. Whether a socket is live is read from
/// `/proc/net/unix`, not by connecting: a probe connection would be taken as the one
/// front-end by a back-end like this one.
fn claim(path: &Path) -> Result<(), ServeError> {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return Ok(());
    };
    if !meta.file_type().is_socket() {
        return Err(ServeError::NotASocket(path.to_owned()));
    }
    if listening(path) {
        return Err(ServeError::SocketInUse(path.to_owned()));
    }
    std::fs::remove_file(path).map_err(|source| ServeError::Listen {
        path: path.to_owned(),
        source,
    })
}

/// Whether some process listens on the unix socket `path`. When that cannot be told, it is
/// assumed to, so that nothing is taken from a live back-end.
fn listening(path: &Path) -> bool {
    const ACCEPTING: u32 = 1 << 16;
    let Ok(table) = std::fs::read_to_string("/proc/net/unix") else {
        return true;
    };
    let names = [
        Some(path.to_owned()),
        std::path::absolute(path).ok(),
        path.canonicalize().ok(),
    ];
    table.lines().skip(1).any(|line| {
        let fields: Vec<&str> = line.split_ascii_whitespace().collect();
        let flags = fields.get(3).and_then(|f| u32::from_str_radix(f, 16).ok());
        let bound = fields.get(7).map(Path::new);
        // A path bound relative to another process's directory is matched by its tail.
        let same = |b: &Path| {
            names
                .iter()
                .flatten()
                .any(|n| n == b || (b.is_relative() && n.ends_with(b)))
        };
        flags.is_some_and(|f| f & ACCEPTING != 0) && bound.is_some_and(same)
    })
}

/// Prints the warnings and errors of vhost-user-backend and virtio-queue on stderr: they are
/// often the only trace of why a front-end's message was refused.
struct StderrLog;

static STDERR_LOG: StderrLog = StderrLog;

impl log::Log for StderrLog {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        metadata.level() <= log::Level::Warn
    }

    fn log(&self, record: &log::Record) {
        if self.enabled(record.metadata()) {
            eprintln!(
                "stopfuzz serve: {} {}: {}",
                record.level(),
                record.target(),
                record.args()
            );
        }
    }

    fn flush(&self) {}
}

struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
