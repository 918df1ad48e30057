//! The vhost-user front-end as a device under test: virtio status, features and queues as a
//! VMM keeps them, rings run by the back-end in its own process over shared guest memory.
//!
//! Lifecycle, as a VMM maps it onto vhost-user:
//! - DRIVER_OK: memory table, then per ring NUM, BASE, ADDR, CALL, KICK, ENABLE;
//! - host stop: GET_VRING_BASE on every ring; acknowledged when the last one returns;
//! - resume: each ring set up again from the base it returned, with kick and call sent
//!   again (the kick eventfd keeps a kick the guest made while stopped);
//! - device reset (status 0) and queue reset: GET_VRING_BASE, then set up anew;
//! - migration: save the bases, connect a back-end process other than the serving one on
//!   the same image (a fresh one, or the one an earlier migration left idle), set it up
//!   stopped, and disconnect the old one; it is ended unless it had nothing in flight.
//!
//! Quiescence rule (poll): wait until every ring's used idx has caught up with the avail idx
//! of its last kick (all kicked requests completed), then until used idx has not moved for
//! [`QUIET`]; never longer than [`MAX_WAIT`] in all. After used idx moved, a notification the
//! driver's rules make due is waited for, at most [`NOTIFY_WAIT`]. Anything the back-end does
//! later is seen, and judged, at a later call.

use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::time::{Duration, Instant};

use vhost::VhostBackend;
use vhost::VringConfigData;
use vhost::vhost_user::message::VhostUserInflight;
use vhost::vhost_user::{VhostUserFrontend, VhostUserProtocolFeatures};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use super::Backend;
use super::link::{F_PROTOCOL_FEATURES, Link, Site};
use super::template::Template;
use crate::contract::Contract;
use crate::dut::{
    Capabilities, Description, Device, DeviceError, DiskControl, Env, Events, Failure, HostControl,
    Migration, RingBase, StopState, Want, WriteObservation,
};
use crate::memory::Share;
use crate::program::Abuse;
use crate::virtio::*;

/// How long used idx must stay still before a poll calls the back-end quiet.
pub const QUIET: Duration = Duration::from_micros(100);
/// The longest a poll waits for kicked requests to complete. A poll that timed out does not
/// wait again until used idx or the kicked avail idx moves.
pub const MAX_WAIT: Duration = Duration::from_millis(50);
/// The longest a due notification is waited for once used idx moved.
pub const NOTIFY_WAIT: Duration = Duration::from_millis(20);

/// Largest queue the front-end sets up.
const MAX_QUEUE_SIZE: u16 = 256;

/// One virtqueue as the VMM keeps it.
struct Ring {
    size: u16,
    desc: u64,
    avail: u64,
    used: u64,
    /// Where the back-end starts: SET_VRING_BASE, and what GET_VRING_BASE returned.
    base: u16,
    enabled: bool,
    /// Set up in the back-end and not stopped since.
    started: bool,
    kick: EventFd,
    call: EventFd,
    /// Avail idx at the last kick.
    kicked: u16,
    /// Used idx when events were last taken.
    seen_used: u16,
    /// `(kicked, used)` when a poll last gave up waiting.
    gave_up: Option<(u16, u16)>,
    /// Started since used idx last moved: the back-end does not know which used index it
    /// last signalled, so its next used update may notify although none is due.
    fresh: bool,
    /// `base` is what GET_VRING_BASE returned.
    returned: bool,
}

impl Ring {
    fn new() -> Result<Ring, String> {
        let fd =
            || EventFd::new(EFD_NONBLOCK).map_err(|e| format!("cannot create an eventfd: {e}"));
        Ok(Ring {
            size: 0,
            desc: 0,
            avail: 0,
            used: 0,
            base: 0,
            enabled: false,
            started: false,
            kick: fd()?,
            call: fd()?,
            kicked: 0,
            seen_used: 0,
            gave_up: None,
            fresh: false,
            returned: false,
        })
    }
}

/// A vhost-user back-end behind the device boundary.
pub struct VhostUser {
    template: &'static Template,
    site: Rc<Site>,
    /// `None` once the back-end is gone.
    link: Option<Link>,
    share: Share,
    rings: Vec<Ring>,
    status: u8,
    driver_features: u64,
    host: StopState,
    contract: Contract,
    /// Why the back-end failed, until taken by `failure`.
    failed: Option<Failure>,
    /// Failed at some point: not to be reused.
    broken: bool,
    events: Events,
    capacity: u64,
    num_queues: u16,
    /// How this front-end breaks the protocol (`blk_hostile`).
    abuse: Option<Abuse>,
    /// The virtio features the back-end offered, kept once it is gone.
    offered: u64,
    /// The inflight region (INFLIGHT_SHMFD): the VMM's, so a migration hands it on.
    inflight: Option<Inflight>,
}

/// An inflight region, and whether this device's back-end has been given it.
struct Inflight {
    info: VhostUserInflight,
    file: std::fs::File,
    sent: bool,
}

impl VhostUser {
    /// A device on `backend` (fresh or reused), built as `want` asks.
    pub(super) fn new(
        template: &'static Template,
        backend: Backend,
        want: &Want,
        share: Share,
    ) -> Result<VhostUser, DeviceError> {
        let Backend { site, link } = backend;
        let offered = link.offered;
        let capacity = if link.capacity > 0 {
            link.capacity
        } else {
            site.disk.sectors
        };
        let num_queues = link.num_queues.min(want.queues.max(1));
        let rings = (0..num_queues)
            .map(|_| Ring::new())
            .collect::<Result<Vec<_>, _>>()
            .map_err(DeviceError::Build)?;
        Ok(VhostUser {
            template,
            site,
            link: Some(link),
            share,
            rings,
            status: 0,
            driver_features: 0,
            host: StopState::Running,
            contract: Contract {
                inflight: want.contract.inflight,
                write_policy: template.write_policy,
                read_policy: template.read_policy,
            },
            failed: None,
            broken: false,
            events: Events::default(),
            capacity,
            num_queues,
            abuse: want.abuse,
            offered,
            inflight: None,
        })
    }

    /// Runs one exchange with the back-end; a failure kills the device.
    fn vu<T>(&mut self, f: impl FnOnce(&mut Link) -> Result<T, vhost::Error>) -> Option<T> {
        let link = self.link.as_mut()?;
        match f(link) {
            Ok(v) => Some(v),
            Err(e) => {
                let hung = timed_out(&e) && link.process.death().is_none();
                let why = link.failure(&e);
                self.fail(match hung {
                    true => Failure {
                        why: format!("the back-end hung: {why}"),
                        refused: false,
                    },
                    false => Failure {
                        refused: !crashed(&why),
                        why,
                    },
                });
                None
            }
        }
    }

    /// The back-end is gone.
    fn fail(&mut self, why: Failure) {
        self.broken = true;
        if self.failed.is_none() {
            self.failed = Some(why);
        }
        // The connection is gone; the process is ended when the link drops.
        self.link = None;
    }

    fn read16(&self, gpa: u64) -> u16 {
        self.share.read16(gpa)
    }

    fn used_idx(&self, q: usize) -> u16 {
        self.read16(self.rings[q].used + 2)
    }

    fn avail_idx(&self, q: usize) -> u16 {
        self.read16(self.rings[q].avail + 2)
    }

    fn negotiated(&self, f: u64) -> bool {
        self.driver_features & f != 0
    }

    /// Sets ring `q` up in the back-end from its base, and enables it.
    fn start(&mut self, q: usize) {
        if self.rings[q].started || !self.rings[q].enabled {
            return;
        }
        let host = self.share.host_addr;
        let r = &self.rings[q];
        let outside = self.abuse == Some(Abuse::RingOutsideMemory);
        let config = VringConfigData {
            queue_max_size: MAX_QUEUE_SIZE,
            queue_size: r.size,
            flags: 0,
            desc_table_addr: host + r.desc,
            used_ring_addr: host + r.used,
            avail_ring_addr: if outside {
                host + self.share.size + r.avail
            } else {
                host + r.avail
            },
            log_addr: None,
        };
        let behind = self.abuse == Some(Abuse::BaseBehind) && r.returned;
        let (size, base) = (r.size, r.base.wrapping_sub(u16::from(behind)));
        let early = self.abuse == Some(Abuse::OutOfOrder);
        let (call, kick) = (
            r.call.try_clone().map_err(|e| e.to_string()),
            r.kick.try_clone().map_err(|e| e.to_string()),
        );
        let (call, kick) = match (call, kick) {
            (Ok(c), Ok(k)) => (c, k),
            (Err(e), _) | (_, Err(e)) => {
                return self.fail(Failure {
                    why: format!("cannot clone an eventfd: {e}"),
                    refused: false,
                });
            }
        };
        let protocol = self.driver_features & F_PROTOCOL_FEATURES != 0;
        let ok = self.vu(|l| {
            if early && protocol {
                l.fe.set_vring_enable(q, true)?;
            }
            l.fe.set_vring_num(q, size)?;
            l.fe.set_vring_base(q, base)?;
            l.fe.set_vring_addr(q, &config)?;
            l.fe.set_vring_call(q, &call)
        });
        if ok.is_none() {
            return;
        }
        // libvhost-user signals every new call fd once ("in case of I/O hang after
        // reconnecting"), before its reply: not a used-buffer notification. Drained before
        // the kick fd lets the ring run, so no real notification is drained with it.
        let _ = self.rings[q].call.read();
        let ok = self.vu(|l| {
            l.fe.set_vring_kick(q, &kick)?;
            if protocol {
                l.fe.set_vring_enable(q, true)?;
            }
            Ok(())
        });
        if ok.is_some() {
            self.rings[q].started = true;
            self.rings[q].fresh = true;
            // A back-end starts processing on a kick; the guest may have made buffers
            // available while stopped without one (EVENT_IDX said not to), so the VMM kicks
            // a started ring once, as QEMU's dataplane does.
            self.rings[q].kicked = self.avail_idx(q);
            let _ = self.rings[q].kick.write(1);
        }
    }

    /// GET_VRING_BASE: the back-end stops ring `q` and says where it stopped.
    fn stop_ring(&mut self, q: usize) {
        if !self.rings[q].started {
            return;
        }
        self.rings[q].started = false;
        let twice = self.abuse == Some(Abuse::OutOfOrder);
        let got = self.vu(|l| {
            let base = l.fe.get_vring_base(q)?;
            if twice {
                l.fe.get_vring_base(q)?;
            }
            Ok(base)
        });
        if let Some(base) = got {
            self.rings[q].base = base as u16;
            self.rings[q].returned = true;
        }
    }

    fn stop_all(&mut self) {
        for q in 0..self.rings.len() {
            self.stop_ring(q);
        }
    }

    fn start_all(&mut self) {
        if self.status & S_DRIVER_OK == 0 || self.host != StopState::Running {
            return;
        }
        let share = self.share;
        if self.vu(|l| l.map(share)).is_none() || !self.share_inflight() {
            return;
        }
        for q in 0..self.rings.len() {
            self.start(q);
        }
    }

    /// With INFLIGHT_SHMFD, before the rings start: a new region from the back-end the
    /// first time, then the same region (SET_INFLIGHT_FD) for every back-end that takes over.
    /// False if the back-end failed.
    fn share_inflight(&mut self) -> bool {
        let negotiated = self.link.as_ref().is_some_and(|l| {
            l.protocol
                .contains(VhostUserProtocolFeatures::INFLIGHT_SHMFD)
        });
        if !negotiated || self.inflight.as_ref().is_some_and(|i| i.sent) {
            return true;
        }
        if self.inflight.is_none() {
            let ask = VhostUserInflight::new(
                0,
                0,
                self.rings.len() as u16,
                self.rings.iter().map(|r| r.size).max().unwrap_or(0),
            );
            let Some((info, file)) = self.vu(|l| l.fe.get_inflight_fd(&ask)) else {
                return false;
            };
            self.inflight = Some(Inflight {
                info,
                file,
                sent: false,
            });
        }
        let Some(inflight) = self.inflight.as_mut() else {
            return true;
        };
        let (info, fd) = (inflight.info, inflight.file.as_raw_fd());
        inflight.sent = true;
        self.vu(|l| l.fe.set_inflight_fd(&info, fd)).is_some()
    }

    /// The quiescence rule (module docs).
    fn settle(&mut self) {
        let start = Instant::now();
        let mut last: Vec<u16> = (0..self.rings.len()).map(|q| self.used_idx(q)).collect();
        let mut still = Instant::now();
        loop {
            self.check_alive();
            if self.link.is_none() {
                return;
            }
            let used: Vec<u16> = (0..self.rings.len()).map(|q| self.used_idx(q)).collect();
            if used != last {
                last = used.clone();
                still = Instant::now();
            }
            let owed = self.rings.iter().zip(&used).any(|(r, &u)| {
                let pending = r.kicked.wrapping_sub(u);
                r.started && pending != 0 && pending <= r.size && r.gave_up != Some((r.kicked, u))
            });
            if !owed && still.elapsed() >= QUIET {
                return;
            }
            if start.elapsed() >= MAX_WAIT {
                for (r, &u) in self.rings.iter_mut().zip(&used) {
                    r.gave_up = Some((r.kicked, u));
                }
                return;
            }
            std::thread::sleep(Duration::from_micros(20));
        }
    }

    fn check_alive(&mut self) {
        if let Some(link) = self.link.as_mut()
            && let Some(death) = link.process.death()
        {
            let why = format!("{death}; its stderr:\n{}", link.process.stderr());
            self.fail(Failure {
                refused: !crashed(&why),
                why,
            });
        }
    }

    /// Whether the driver's rules make a notification due for used idx `old` -> `new`.
    fn notification_due(&self, q: usize, old: u16, new: u16) -> bool {
        let r = &self.rings[q];
        self.share
            .notification_due(r.avail, r.size, old, new, self.negotiated(F_EVENT_IDX))
    }

    /// Drains the call fds, waiting for a notification that the used idx movement since the
    /// last time makes due, until the used idx holds still across a drain.
    fn collect_events(&mut self) {
        for q in 0..self.rings.len() {
            loop {
                let now = self.used_idx(q);
                let old = self.rings[q].seen_used;
                let mut got = self.rings[q].call.read().unwrap_or(0) as u32;
                // A notification that may come (due, or one a fresh ring may send) is
                // waited for, so that it is counted with the used update it belongs to.
                let may = self.rings[q].fresh || self.notification_due(q, old, now);
                if now != old && got == 0 && may {
                    let start = Instant::now();
                    while got == 0 && start.elapsed() < NOTIFY_WAIT {
                        std::thread::sleep(Duration::from_micros(10));
                        got = self.rings[q].call.read().unwrap_or(0) as u32;
                    }
                }
                self.events.used[q] += got;
                if now != old {
                    self.rings[q].fresh = false;
                }
                self.rings[q].seen_used = now;
                if self.used_idx(q) == now {
                    break;
                }
            }
        }
    }

    /// Whether the back-end can serve another run: alive, its rings stopped, and nothing
    /// in flight that could still write guest memory or the image.
    fn reusable(&mut self) -> bool {
        if self.broken || !self.template.reuse || Rc::strong_count(&self.site) > 1 {
            return false;
        }
        let idle = (0..self.rings.len()).all(|q| {
            let r = &self.rings[q];
            !r.enabled || r.size == 0 || self.used_idx(q) == self.avail_idx(q)
        });
        self.stop_all();
        self.check_alive();
        idle && self.link.is_some()
    }
}

/// Marks every descriptor of every queue in flight in an inflight region, in the split-ring
/// layout the vhost-user spec gives (per queue, 64-byte aligned: a 16-byte header, then 16
/// bytes per descriptor: `inflight: u8, padding[5], next: u16, counter: u64`). Whatever the
/// rings hold, the region now claims all of it was running.
fn claim_all_in_flight(file: &std::fs::File, info: &VhostUserInflight) {
    use std::os::unix::fs::FileExt;
    let queues = u64::from(info.num_queues.max(1));
    let per_queue = info.mmap_size / queues;
    for q in 0..queues {
        let base = info.mmap_offset + q * per_queue;
        for d in 0..u64::from(info.queue_size) {
            let at = base + 16 + 16 * d;
            if at + 16 > base + per_queue {
                break;
            }
            let mut state = [0u8; 16];
            state[0] = 1;
            state[8..].copy_from_slice(&(d + 1).to_le_bytes());
            let _ = file.write_at(&state, at);
        }
    }
}

/// A reply that did not come in time.
fn timed_out(e: &vhost::Error) -> bool {
    use vhost::vhost_user::Error as E;
    match e {
        vhost::Error::VhostUserProtocol(
            E::SocketError(io) | E::SocketRetry(io) | E::SocketBroken(io),
        ) => matches!(
            io.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
        _ => false,
    }
}

/// A death that is a crash, not an exit: killed by a signal, or a Rust panic.
fn crashed(why: &str) -> bool {
    why.contains("signal: ") || why.contains("panicked at")
}

/// Virtio feature bits a front-end acknowledges without their being offered: the first one
/// the back-end lacks.
const UNOFFERED: [u64; 4] = [1 << 34, 1 << 33, 1 << 31, 1 << 27];

impl Device for VhostUser {
    fn describe(&self) -> Description {
        let (device_id, id_checked) = self.template.device_id();
        Description {
            features: self.offered,
            num_queues: self.num_queues,
            queue_max_size: MAX_QUEUE_SIZE,
            capacity: self.capacity,
            device_id,
            contract: self.contract,
            faults: if self.template.injects() {
                self.site.disk.faults.clone()
            } else {
                Vec::new()
            },
            id_checked,
            known: self.template.known,
            keeps_data: !(self.site.disk.slow && self.template.slows()),
        }
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            writes: WriteObservation::Diff,
            disk: DiskControl::External,
            deterministic: false,
            faults: self.template.injects(),
            resume_forgets_signal: true,
            interrupts_in_memory: false,
            heals: false,
            stop_freezes_guest: false,
            save_ends_device: false,
            queue_state_at_stops: false,
            abuse: true,
        }
    }

    fn read_status(&self) -> u8 {
        self.status
    }

    fn write_status(&mut self, value: u8) {
        if value == 0 {
            self.stop_all();
            // What the back-end completed while its rings stopped notified before the
            // reset took effect: counted, not drained away with the rings.
            self.collect_events();
            for r in &mut self.rings {
                let _ = r.kick.read();
                (r.size, r.desc, r.avail, r.used) = (0, 0, 0, 0);
                (r.base, r.enabled, r.kicked, r.seen_used) = (0, false, 0, 0);
                r.returned = false;
            }
            // A host stop outlasts a device reset: the VMM resumes it, not the guest.
            self.status = 0;
            self.driver_features = 0;
            return;
        }
        let mut value = value;
        if value & S_FEATURES_OK != 0 && self.status & S_FEATURES_OK == 0 {
            let offered = self.offered;
            if self.driver_features & !offered != 0 {
                value &= !S_FEATURES_OK;
            } else {
                let mut f = self.driver_features | F_PROTOCOL_FEATURES;
                if self.abuse == Some(Abuse::UnofferedFeatures)
                    && let Some(bit) = UNOFFERED.iter().find(|&&b| offered & b == 0)
                {
                    f |= bit;
                }
                if self.vu(|l| l.fe.set_features(f)).is_some() {
                    self.driver_features = f;
                }
            }
        }
        let starting = value & S_DRIVER_OK != 0 && self.status & S_DRIVER_OK == 0;
        self.status = value;
        if starting {
            self.start_all();
        }
    }

    fn set_driver_features(&mut self, features: u64) {
        self.driver_features = features;
    }

    fn queue_set_size(&mut self, q: u16, size: u16) {
        if let Some(r) = self.rings.get_mut(usize::from(q)) {
            r.size = size.min(MAX_QUEUE_SIZE);
        }
    }

    fn queue_set_addresses(&mut self, q: u16, desc: u64, avail: u64, used: u64) {
        // Where the driver starts its used ring: no movement yet, no notification owed.
        let start = used.checked_add(2).map_or(0, |at| self.read16(at));
        if let Some(r) = self.rings.get_mut(usize::from(q)) {
            (r.desc, r.avail, r.used, r.seen_used) = (desc, avail, used, start);
        }
    }

    fn queue_enable(&mut self, q: u16) {
        let q = usize::from(q);
        let Some(r) = self.rings.get_mut(q) else {
            return;
        };
        r.enabled = true;
        r.kicked = r.base;
        r.seen_used = r.base;
        if self.status & S_DRIVER_OK != 0 && self.host == StopState::Running {
            self.start(q);
        }
    }

    fn queue_reset(&mut self, q: u16) {
        let q = usize::from(q);
        if q < self.rings.len() {
            self.stop_ring(q);
            let r = &mut self.rings[q];
            (r.enabled, r.base, r.returned) = (false, 0, false);
        }
    }

    fn kick(&mut self, q: u16) {
        let q = usize::from(q);
        if q >= self.rings.len() {
            return;
        }
        self.rings[q].kicked = self.avail_idx(q);
        let _ = self.rings[q].kick.write(1);
    }

    fn poll(&mut self, _env: &mut Env) {
        self.settle();
    }

    fn take_events(&mut self) -> Events {
        self.check_alive();
        self.collect_events();
        // A started ring may move on after its notifications were counted: the call is
        // judged at the used idx they were counted up to.
        for (q, r) in self.rings.iter().enumerate() {
            if r.started && self.link.is_some() {
                self.events.used_idx[q] = Some(r.seen_used);
            }
        }
        std::mem::take(&mut self.events)
    }

    fn host(&mut self) -> Option<&mut dyn HostControl> {
        Some(self)
    }

    fn migration(&mut self) -> Option<&mut dyn Migration> {
        Some(self)
    }

    fn ring_base(&mut self) -> Option<&mut dyn RingBase> {
        Some(self)
    }

    fn disk_image(&self) -> Option<Vec<u8>> {
        std::fs::read(&self.site.image).ok()
    }

    fn failure(&mut self) -> Option<Failure> {
        self.check_alive();
        self.failed.take()
    }
}

impl HostControl for VhostUser {
    fn stop(&mut self, _env: &mut Env) {
        self.stop_all();
        self.host = StopState::Stopped;
    }

    fn resume(&mut self, _env: &mut Env) {
        self.host = StopState::Running;
        self.start_all();
    }

    /// Nothing is parked in a vhost-user back-end the front-end could retry.
    fn retry(&mut self, _env: &mut Env) {}

    fn stop_state(&mut self) -> StopState {
        self.host
    }
}

/// Saved state: what a VMM migrates for a vhost-user device (no back-end state).
const MAGIC: &[u8; 4] = b"SFVU";

impl Migration for VhostUser {
    fn save(&mut self) -> Result<Vec<u8>, DeviceError> {
        if self.host != StopState::Stopped {
            return Err(DeviceError::Refused(
                "save needs a host-stopped device".into(),
            ));
        }
        let mut out = MAGIC.to_vec();
        out.push(self.status);
        out.extend_from_slice(&self.driver_features.to_le_bytes());
        out.push(self.rings.len() as u8);
        for r in &self.rings {
            out.extend_from_slice(&r.size.to_le_bytes());
            for a in [r.desc, r.avail, r.used] {
                out.extend_from_slice(&a.to_le_bytes());
            }
            out.extend_from_slice(&r.base.to_le_bytes());
            out.push(u8::from(r.enabled));
        }
        Ok(out)
    }

    fn restore_fresh(
        &mut self,
        bytes: &[u8],
        _env: &mut Env,
    ) -> Result<Box<dyn Device>, DeviceError> {
        let saved = Saved::decode(bytes, self.rings.len(), self.share.size)
            .map_err(DeviceError::Refused)?;
        let inflight = self.abuse == Some(Abuse::InflightDisagrees);
        let link = Link::open(self.template, &self.site, inflight).map_err(DeviceError::Refused)?;
        let backend = Backend {
            site: self.site.clone(),
            link,
        };
        let want = Want {
            queues: self.num_queues,
            capacity: self.capacity,
            contract: self.contract,
            memory: Some(self.share),
            faults: self.site.disk.faults.clone(),
            slow: self.site.disk.slow,
            abuse: self.abuse,
            hostile: self.abuse.is_some(),
            queue_size: 0,
            variant: 0,
        };
        let mut dev = VhostUser::new(self.template, backend, &want, self.share)?;
        dev.host = StopState::Stopped;
        dev.status = saved.status;
        if saved.status & S_FEATURES_OK != 0 {
            let f = saved.features;
            if dev.vu(|l| l.fe.set_features(f)).is_none() {
                return Err(DeviceError::Refused(
                    dev.failed.take().map(|f| f.why).unwrap_or_default(),
                ));
            }
        }
        dev.driver_features = saved.features;
        if let Some(old) = &self.inflight
            && let Ok(file) = old.file.try_clone()
        {
            if self.abuse == Some(Abuse::InflightDisagrees) {
                claim_all_in_flight(&file, &old.info);
            }
            dev.inflight = Some(Inflight {
                info: old.info,
                file,
                sent: false,
            });
        }
        for ((r, s), old) in dev.rings.iter_mut().zip(&saved.rings).zip(&self.rings) {
            (r.size, r.desc, r.avail, r.used, r.base, r.enabled) = (s.0, s.1, s.2, s.3, s.4, s.5);
            // The VMM's kick and call eventfds outlive the back-end: a kick the guest made
            // while stopped is still pending for the new one.
            if let (Ok(kick), Ok(call)) = (old.kick.try_clone(), old.call.try_clone()) {
                (r.kick, r.call) = (kick, call);
            }
            r.kicked = s.4;
            r.returned = true;
            r.seen_used = self.read16(s.3 + 2);
        }
        // The source is disconnected: the new one serves the disk. It stays as the next
        // migration's target only if it has nothing in flight that could still land.
        let idle = (0..self.rings.len()).all(|q| {
            let r = &self.rings[q];
            !r.enabled || r.size == 0 || self.used_idx(q) == r.base
        });
        if let Some(link) = self.link.take() {
            link.retire(&self.site, idle);
        }
        self.broken = true;
        Ok(Box::new(dev))
    }
}

struct Saved {
    status: u8,
    features: u64,
    rings: Vec<(u16, u64, u64, u64, u16, bool)>,
}

impl Saved {
    fn decode(b: &[u8], queues: usize, mem: u64) -> Result<Saved, String> {
        let bad = |why: &str| Err(format!("not a vhost-user snapshot: {why}"));
        if b.len() < 14 || &b[..4] != MAGIC {
            return bad("no header");
        }
        let n = usize::from(b[13]);
        if n != queues || b.len() != 14 + n * 29 {
            return bad("wrong queue count or length");
        }
        let mut rings = Vec::new();
        for i in 0..n {
            let r = &b[14 + i * 29..14 + (i + 1) * 29];
            let u64_at = |o: usize| u64::from_le_bytes(r[o..o + 8].try_into().unwrap_or([0; 8]));
            let size = u16::from_le_bytes([r[0], r[1]]);
            let (desc, avail, used) = (u64_at(2), u64_at(10), u64_at(18));
            if size > MAX_QUEUE_SIZE || (size != 0 && !size.is_power_of_two()) {
                return bad("queue size");
            }
            let end = |a: u64, len: u64| a.checked_add(len).is_some_and(|e| e <= mem);
            let s = u64::from(size);
            if !(end(desc, 16 * s) && end(avail, 6 + 2 * s) && end(used, 6 + 8 * s)) {
                return bad("a ring lies outside guest memory");
            }
            rings.push((
                size,
                desc,
                avail,
                used,
                u16::from_le_bytes([r[26], r[27]]),
                r[28] != 0,
            ));
        }
        Ok(Saved {
            status: b[4],
            features: u64::from_le_bytes(b[5..13].try_into().unwrap_or([0; 8])),
            rings,
        })
    }
}

impl RingBase for VhostUser {
    fn set_base(&mut self, q: u16, index: u16) {
        if let Some(r) = self.rings.get_mut(usize::from(q)) {
            (r.base, r.returned) = (index, false);
        }
    }
}

impl Drop for VhostUser {
    fn drop(&mut self) {
        if self.link.is_none() {
            return;
        }
        if self.reusable()
            && let Some(link) = self.link.take()
        {
            super::give_back(
                self.template,
                Backend {
                    site: self.site.clone(),
                    link,
                },
            );
        }
    }
}
