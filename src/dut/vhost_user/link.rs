//! One back-end process and the front-end's connection to it: start, connect, negotiate.

use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::Duration;

use vhost::vhost_user::message::{VhostUserConfigFlags, VhostUserHeaderFlag};
use vhost::vhost_user::{Frontend, VhostUserFrontend, VhostUserProtocolFeatures};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo};

use super::template::{Disk, Template};
use crate::dut::process::{Process, Scratch};
use crate::memory::Share;

/// `VHOST_USER_F_PROTOCOL_FEATURES`: a virtio feature bit only vhost-user uses.
pub const F_PROTOCOL_FEATURES: u64 = 1 << 30;

/// A back-end that answers nothing for this long has hung.
const REPLY_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a started back-end has to listen on its socket.
const LISTEN_TIMEOUT: Duration = Duration::from_secs(10);

/// The files one disk lives in: the image, the blkdebug configuration, the sockets. Shared
/// by the back-ends that serve it one after another (migration).
#[derive(Debug)]
pub struct Site {
    scratch: Scratch,
    /// The raw image file.
    pub image: PathBuf,
    /// What the disk is.
    pub disk: Disk,
    /// Back-ends started on it so far: names each one's socket.
    started: std::cell::Cell<u32>,
    /// A back-end a migration left, idle and listening: the next migration connects to it
    /// instead of starting a process (about 5 ms for QSD). Ended with the site.
    spare: std::cell::RefCell<Option<(Process, PathBuf)>>,
}

impl Site {
    /// A new scratch directory with a zeroed image.
    pub fn new(disk: Disk) -> Result<Rc<Site>, String> {
        let scratch = Scratch::new("vu").map_err(|e| e.to_string())?;
        let site = Site {
            image: scratch.join("disk.img"),
            scratch,
            disk,
            started: std::cell::Cell::new(0),
            spare: std::cell::RefCell::new(None),
        };
        site.zero()?;
        Ok(Rc::new(site))
    }

    /// A path in its scratch directory.
    pub fn file(&self, name: &str) -> PathBuf {
        self.scratch.join(name)
    }

    /// Makes the image all zeros again, at its size.
    pub fn zero(&self) -> Result<(), String> {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(&self.image)
            .map_err(|e| format!("cannot create {}: {e}", self.image.display()))?;
        f.set_len(self.disk.sectors * crate::backend::SECTOR_SIZE)
            .map_err(|e| format!("cannot size {}: {e}", self.image.display()))
    }
}

/// A running back-end and the connection to it.
pub struct Link {
    /// The process.
    pub process: Process,
    /// The vhost-user connection.
    pub fe: Frontend,
    /// Virtio features it offers, the protocol bit removed.
    pub offered: u64,
    /// Protocol features negotiated.
    pub protocol: VhostUserProtocolFeatures,
    /// Disk size in sectors, from its config space.
    pub capacity: u64,
    /// Queues it has.
    pub num_queues: u16,
    /// The guest memory its table maps, once sent.
    pub mapped: Option<Share>,
    socket: PathBuf,
}

impl Link {
    /// Connects to `site`'s spare back-end, or starts one from `template`, and negotiates.
    /// `inflight`: acknowledge INFLIGHT_SHMFD even if it is not offered (a hostile
    /// front-end).
    pub fn open(template: &Template, site: &Site, inflight: bool) -> Result<Link, String> {
        let spare = site.spare.borrow_mut().take();
        if let Some((mut process, socket)) = spare
            && process.death().is_none()
        {
            // A spare listens again (QSD does); one that serves a single front-end (its
            // socket removed once connected, `stopfuzz serve`) does not: end it and start a
            // fresh one. One attempt, no retry. Its socket may still have been there when
            // it was kept (`serve` removes it just after accepting, so under load it can
            // accept the connection and then exit): a spare that fails to negotiate is
            // ended too. The lifecycle never promises a back-end a second front-end.
            if let Ok(stream) = UnixStream::connect(&socket)
                && let Ok(link) = Link::from_stream(process, socket, stream, inflight)
            {
                return Ok(link);
            }
        }
        let n = site.started.get();
        site.started.set(n + 1);
        let socket = site.scratch.join(&format!("vhost-{n}.sock"));
        let (argv, files) = template.expand(&socket, &site.image, site.scratch.path(), &site.disk);
        for (path, contents) in files {
            std::fs::write(&path, contents)
                .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        }
        let process = Process::spawn(&argv, &site.scratch, &socket).map_err(|e| format!("{e}"))?;
        Link::connect(process, socket, inflight)
    }

    fn connect(process: Process, socket: PathBuf, inflight: bool) -> Result<Link, String> {
        let stream = connect(&socket).map_err(|e| {
            format!(
                "cannot connect to {}: {e}; the back-end's stderr:\n{}",
                socket.display(),
                process.stderr()
            )
        })?;
        Link::from_stream(process, socket, stream, inflight)
    }

    fn from_stream(
        process: Process,
        socket: PathBuf,
        stream: UnixStream,
        inflight: bool,
    ) -> Result<Link, String> {
        stream
            .set_read_timeout(Some(REPLY_TIMEOUT))
            .and_then(|()| stream.set_write_timeout(Some(REPLY_TIMEOUT)))
            .map_err(|e| format!("cannot set timeouts on {}: {e}", socket.display()))?;
        let mut link = Link {
            process,
            fe: Frontend::from_stream(stream, crate::program::MAX_QUEUES as u64),
            offered: 0,
            protocol: VhostUserProtocolFeatures::empty(),
            capacity: 0,
            num_queues: 1,
            mapped: None,
            socket,
        };
        link.negotiate(inflight).map_err(|e| link.failure(&e))?;
        Ok(link)
    }

    /// Features, protocol features, owner, then what the device is (config space, queues).
    fn negotiate(&mut self, inflight: bool) -> Result<(), vhost::Error> {
        let features = self.fe.get_features()?;
        self.offered = features & !F_PROTOCOL_FEATURES;
        if features & F_PROTOCOL_FEATURES != 0 {
            let offered = self.fe.get_protocol_features()?;
            // Only what was offered: acking more is a hostile front-end's move.
            let want = VhostUserProtocolFeatures::REPLY_ACK
                | VhostUserProtocolFeatures::CONFIG
                | VhostUserProtocolFeatures::MQ
                | VhostUserProtocolFeatures::INFLIGHT_SHMFD;
            self.protocol = offered & want;
            if inflight {
                self.protocol |= VhostUserProtocolFeatures::INFLIGHT_SHMFD;
            }
            self.fe.set_protocol_features(self.protocol)?;
            if self.protocol.contains(VhostUserProtocolFeatures::REPLY_ACK) {
                // Every message waits for the back-end's answer: errors show at their cause.
                self.fe.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
            }
        }
        self.fe.set_owner()?;
        if self.protocol.contains(VhostUserProtocolFeatures::MQ) {
            self.num_queues = self.fe.get_queue_num()?.clamp(1, 4) as u16;
        }
        if self.protocol.contains(VhostUserProtocolFeatures::CONFIG) {
            let (_, config) = self
                .fe
                .get_config(0, 8, VhostUserConfigFlags::WRITABLE, &[0; 8])?;
            self.capacity = config
                .get(..8)
                .map_or(0, |b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])));
        }
        Ok(())
    }

    /// Sends the memory table unless this memory is already mapped.
    pub fn map(&mut self, share: Share) -> Result<(), vhost::Error> {
        if self.mapped == Some(share) {
            return Ok(());
        }
        let region = VhostUserMemoryRegionInfo {
            guest_phys_addr: 0,
            memory_size: share.size,
            userspace_addr: share.host_addr,
            mmap_offset: 0,
            mmap_handle: share.fd,
        };
        self.fe.set_mem_table(&[region])?;
        self.mapped = Some(share);
        Ok(())
    }

    /// Disconnects. A back-end with nothing in flight (`idle`) whose socket is still there
    /// stays running as `site`'s spare, listening for the next front-end; any other is
    /// ended.
    pub fn retire(self, site: &Site, idle: bool) {
        let Link {
            mut process,
            fe,
            socket,
            ..
        } = self;
        drop(fe);
        if idle && process.death().is_none() && socket.exists() {
            *site.spare.borrow_mut() = Some((process, socket));
        }
    }

    /// What went wrong, with the back-end's own account when it died.
    pub fn failure(&mut self, e: &dyn std::fmt::Display) -> String {
        // A dying process may take a moment to exit after dropping the socket.
        for _ in 0..50 {
            if self.process.death().is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        match self.process.death() {
            Some(death) => format!(
                "{death} (the front-end saw: {e}); its stderr:\n{}",
                self.process.stderr()
            ),
            None => format!(
                "the back-end failed a vhost-user request: {e}; its stderr:\n{}",
                self.process.stderr()
            ),
        }
    }
}

/// Waits for a freshly started back-end to listen: most take a millisecond or two, so the
/// socket is tried often, for at most [`LISTEN_TIMEOUT`].
fn connect(socket: &std::path::Path) -> std::io::Result<UnixStream> {
    let start = std::time::Instant::now();
    loop {
        match UnixStream::connect(socket) {
            Ok(s) => return Ok(s),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::NotFound
                ) && start.elapsed() < LISTEN_TIMEOUT =>
            {
                std::thread::sleep(Duration::from_micros(100));
            }
            Err(e) => return Err(e),
        }
    }
}
