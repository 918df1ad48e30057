//! QEMU's virtio-blk-pci as a device under test: the virtio-pci transport through qtest,
//! rings and buffers in guest RAM that QEMU and stopfuzz share, the VMM's side through QMP.
//!
//! Lifecycle, in QEMU's terms:
//! - host stop is QMP `stop`, which drains: acknowledged when it returns;
//! - resume is `cont`; a kick the program makes while the VM is paused is held until then,
//!   because a guest cannot kick while its vCPUs are stopped (the hostile driver kicks at
//!   once, which QEMU processes);
//! - device reset is status 0, queue reset `queue_reset`, the host's `system_reset` QMP's;
//! - migration is QEMU's own, to a file and into a new QEMU (the [`Migration`] impl);
//! - at host stops, `x-query-virtio-queue-status` gives QEMU's count of each queue;
//! - notifications are MSI-X messages aimed at guest RAM ([`DEVICE_PAGE`]): vector 0 for
//!   configuration changes, `1 + q` for queue `q`. A message overwrites the last one, so
//!   several between two looks count as one.
//!
//! Quiescence rule (poll): as for vhost-user back-ends ([`QUIET`], [`MAX_WAIT`]): until
//! every ring's used idx has caught up with the avail idx of its last kick and then held
//! still for [`QUIET`], never longer than [`MAX_WAIT`]. A due MSI-X message is waited for
//! up to [`NOTIFY_WAIT`].

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Instant;

use super::machine::Machine;
use super::{Exposed, Qemu};
use crate::driver::layout::DEVICE_PAGE;
use crate::dut::vhost_user::device::{MAX_WAIT, QUIET};
use crate::dut::vhost_user::link::Site;
use crate::dut::{
    Capabilities, Description, Device, DeviceError, DiskControl, Env, Events, Failure, HostControl,
    Migration, QueueState, StopState, Want, WriteObservation,
};
use crate::memory::Share;
use crate::virtio::*;

/// How long kicked requests may be overdue before a poll asks QEMU whether it paused.
const PAUSE_CHECK: std::time::Duration = std::time::Duration::from_millis(2);

/// How long a due MSI-X message is waited for. QEMU writes it just after the used idx, in
/// the same thread, but a loaded machine can preempt that thread for tens of milliseconds
/// (20 ms gave rare false `notify` findings with four runs on two cores). Waited only when
/// a message is due and missing.
const NOTIFY_WAIT: std::time::Duration = std::time::Duration::from_millis(100);

/// How long after a look that took a queue's message for moved used entries a further
/// message with no movement still belongs to them: QEMU sends one per used update, so the
/// last of a burst can land just after the look that took the first.
const TRAILING_MSI: std::time::Duration = std::time::Duration::from_millis(20);

/// Where a migration's stream passes, in the site's scratch directory; removed once read.
const MIGRATION_FILE: &str = "migration";

/// Largest queue the driver sets up.
const MAX_QUEUE_SIZE: u16 = 256;

/// The data of every MSI-X message: any value but 0, which marks a slot as empty.
const MSI_DATA: u32 = 0x5f5f_0001;

/// Where MSI-X vector `v`'s messages land.
pub fn msi_slot(v: u16) -> u64 {
    DEVICE_PAGE.start + 4 * u64::from(v)
}

/// Aims MSI-X vectors 0 (configuration) to `queues` (one per queue) at their slots.
fn aim_msix(m: &mut Machine, queues: u16) -> Result<(), String> {
    (0..=queues).try_for_each(|v| m.set_msix(v, msi_slot(v), MSI_DATA))
}

/// One virtqueue as the driver set it up.
#[derive(Clone, Copy, Debug, Default)]
struct Ring {
    size: u16,
    desc: u64,
    avail: u64,
    used: u64,
    enabled: bool,
    /// Avail idx at the last kick QEMU got.
    kicked: u16,
    /// Used idx when events were last taken.
    seen_used: u16,
    /// `(kicked, used)` when a poll last gave up waiting.
    gave_up: Option<(u16, u16)>,
    /// A kick made while the VM was paused, for `cont` to deliver.
    held_kick: bool,
    /// QEMU does not know which used idx it last signalled (a queue set up, a migration
    /// loaded: `signalled_used_valid` false), so its next used update notifies even where
    /// EVENT_IDX would not.
    signal_unknown: bool,
    /// When a look last saw used idx move and took a message for it.
    notified_at: Option<Instant>,
}

/// QEMU behind the device boundary.
pub struct QemuDevice {
    qemu: &'static Qemu,
    site: Rc<Site>,
    /// `None` once QEMU is gone.
    machine: RefCell<Option<Machine>>,
    share: Share,
    rings: Vec<Ring>,
    /// The status last read or written, for when QEMU cannot be asked.
    status: Cell<u8>,
    driver_features: u64,
    host: StopState,
    /// QEMU paused the VM on a failed request (werror/rerror `stop`, `enospc`).
    io_paused: bool,
    /// The fault layer is out of the block graph.
    healed: bool,
    want: Want,
    failed: Option<Failure>,
    broken: bool,
    events: Events,
    desc: Description,
    /// What QEMU was started with.
    exposed: Exposed,
    /// This QEMU was saved by a migration, or loaded one: not kept for another run.
    migrated: bool,
}

impl QemuDevice {
    /// A device on `machine` (fresh, or a worker's idle one reset), built as `want` asks.
    pub(super) fn new(
        qemu: &'static Qemu,
        site: Rc<Site>,
        mut machine: Machine,
        want: &Want,
        share: Share,
        exposed: Exposed,
    ) -> Result<QemuDevice, String> {
        let features = machine.device_features()?;
        let num_queues = machine.num_queues()?.min(want.queues.max(1));
        let queue_max_size = machine.queue_max_size(0)?.min(MAX_QUEUE_SIZE);
        let config = machine.config_read(0, 8)?;
        let capacity = u64::from_le_bytes(config[..8].try_into().map_err(|_| "short config")?);
        aim_msix(&mut machine, num_queues)?;
        if machine.run_state()? != "running" {
            machine.cont()?;
        }
        let desc = Description {
            features,
            num_queues,
            queue_max_size,
            capacity,
            device_id: qemu.device_id(),
            contract: crate::contract::Contract {
                inflight: want.contract.inflight,
                write_policy: qemu.declared.0,
                read_policy: qemu.declared.1,
            },
            faults: site.disk.faults.clone(),
            id_checked: ID_BYTES,
            keeps_data: !site.disk.slow,
            known: qemu.known(),
        };
        let dev = QemuDevice {
            qemu,
            site,
            machine: RefCell::new(Some(machine)),
            share,
            rings: vec![Ring::default(); usize::from(num_queues)],
            status: Cell::new(0),
            driver_features: 0,
            host: StopState::Running,
            io_paused: false,
            healed: false,
            want: want.clone(),
            failed: None,
            broken: false,
            events: Events::default(),
            desc,
            exposed,
            migrated: false,
        };
        // Nothing of an earlier run may still signal.
        for v in 0..=num_queues {
            dev.take_msi(v);
        }
        Ok(dev)
    }

    /// Runs `f` on the machine; an error kills the device.
    fn qemu<T>(&mut self, f: impl FnOnce(&mut Machine) -> Result<T, String>) -> Option<T> {
        let result = {
            let mut m = self.machine.borrow_mut();
            let machine = m.as_mut()?;
            f(machine).map_err(|e| match machine.death() {
                Some(death) => format!("{e}; QEMU {death}"),
                None => format!("{e}; its stderr:\n{}", machine.stderr()),
            })
        };
        match result {
            Ok(v) => Some(v),
            Err(why) => {
                self.fail(why);
                None
            }
        }
    }

    fn fail(&mut self, why: String) {
        self.broken = true;
        if self.failed.is_none() {
            self.failed = Some(Failure {
                why,
                refused: false,
            });
        }
        self.machine.borrow_mut().take();
    }

    fn read16(&self, gpa: u64) -> u16 {
        self.share.read16(gpa)
    }

    /// Whether MSI-X vector `v` fired since the last look; clears its slot.
    fn take_msi(&self, v: u16) -> bool {
        // SAFETY: DEVICE_PAGE lies in guest memory, 4-aligned; QEMU stores the message
        // concurrently, so the slot is swapped atomically and no message is lost.
        let slot = unsafe { AtomicU32::from_ptr((self.share.host_addr + msi_slot(v)) as *mut u32) };
        slot.swap(0, Ordering::AcqRel) != 0
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

    /// Whether the VM is paused: stopped by the host, or by an I/O error.
    fn paused(&self) -> bool {
        self.host != StopState::Running || self.io_paused
    }

    /// Takes QMP's events: a `STOP` QEMU sent on its own is a pause on an I/O error.
    fn watch_pause(&mut self) {
        let events = self.qemu(|m| Ok(m.qmp_events())).unwrap_or_default();
        for e in events {
            let name = e.get("event").and_then(|v| v.as_str()).unwrap_or("");
            let stopped = name == "BLOCK_IO_ERROR"
                && e.pointer("/data/action").and_then(|v| v.as_str()) == Some("stop");
            if stopped && !self.io_paused {
                self.io_paused = true;
                self.events.io_error_pause = true;
            }
        }
    }

    /// `cont`: QEMU retries what it parked; kicks held while paused are made. Events QMP
    /// sent before `cont` answered are of the pause it ends.
    fn cont(&mut self) {
        self.watch_pause();
        let ok = self.qemu(|m| {
            m.cont()?;
            let _ = m.qmp_events();
            Ok(())
        });
        if ok.is_some() {
            self.io_paused = false;
            self.deliver_held_kicks();
        }
    }

    fn set_up(&mut self, q: usize) {
        let r = self.rings[q];
        let vector = q as u16 + 1;
        let ok = self.qemu(|m| {
            m.setup_queue(q as u16, r.size, r.desc, r.avail, r.used, vector)?;
            m.enable_queue(q as u16)
        });
        if ok.is_some() {
            self.rings[q].enabled = true;
        }
    }

    /// The quiescence rule (module docs).
    fn settle(&mut self) {
        let start = Instant::now();
        let mut asked = false;
        let mut last: Vec<u16> = (0..self.rings.len()).map(|q| self.used_idx(q)).collect();
        let mut still = Instant::now();
        loop {
            if self.check_alive() {
                return;
            }
            let used: Vec<u16> = (0..self.rings.len()).map(|q| self.used_idx(q)).collect();
            if used != last {
                last = used.clone();
                still = Instant::now();
            }
            self.watch_pause();
            let owed = !self.io_paused
                && self.rings.iter().zip(&used).any(|(r, &u)| {
                    let pending = r.kicked.wrapping_sub(u);
                    r.enabled
                        && pending != 0
                        && pending <= r.size
                        && r.gave_up != Some((r.kicked, u))
                });
            if !owed && still.elapsed() >= QUIET {
                // QEMU may also have taken requests no kick told it of (at a `cont` after
                // a migration it looks at every ring), and paused on one of them.
                let available = self
                    .rings
                    .iter()
                    .enumerate()
                    .any(|(q, r)| r.enabled && self.avail_idx(q) != used[q]);
                if available && !asked {
                    let _ = self.qemu(|m| m.run_state());
                    self.watch_pause();
                }
                return;
            }
            // Kicked requests overdue: QEMU may have paused on one (its event comes with
            // the next QMP reply).
            if owed && !asked && start.elapsed() >= PAUSE_CHECK {
                asked = true;
                let _ = self.qemu(|m| m.run_state());
                continue;
            }
            if start.elapsed() >= MAX_WAIT {
                for (r, &u) in self.rings.iter_mut().zip(&used) {
                    r.gave_up = Some((r.kicked, u));
                }
                return;
            }
            std::thread::sleep(std::time::Duration::from_micros(20));
        }
    }

    /// Whether QEMU is gone; records why.
    fn check_alive(&mut self) -> bool {
        let death = {
            let mut m = self.machine.borrow_mut();
            match m.as_mut() {
                None => return true,
                Some(machine) => machine
                    .death()
                    .map(|d| format!("QEMU {d}; its stderr:\n{}", machine.stderr())),
            }
        };
        if let Some(why) = death {
            self.fail(why);
            return true;
        }
        false
    }

    /// Whether the driver's rules make a notification due for used idx `old` -> `new`.
    fn notification_due(&self, q: usize, old: u16, new: u16, event_idx: bool) -> bool {
        let r = &self.rings[q];
        if event_idx && r.signal_unknown {
            return true;
        }
        self.share
            .notification_due(r.avail, r.size, old, new, event_idx)
    }

    /// Looks for each queue's MSI-X message, waiting for one that used idx movement since
    /// the last look makes due, until used idx holds still across a look.
    fn collect_events(&mut self) {
        let event_idx = self.negotiated(F_EVENT_IDX);
        if self.take_msi(0) {
            self.events.config += 1;
        }
        for q in 0..self.rings.len() {
            loop {
                let now = self.used_idx(q);
                let old = self.rings[q].seen_used;
                let vector = q as u16 + 1;
                let mut got = self.take_msi(vector);
                if now != old && !got && self.notification_due(q, old, now, event_idx) {
                    let start = Instant::now();
                    while !got && start.elapsed() < NOTIFY_WAIT {
                        std::thread::sleep(std::time::Duration::from_micros(10));
                        got = self.take_msi(vector);
                    }
                }
                let r = &mut self.rings[q];
                let trailing =
                    now == old && r.notified_at.is_some_and(|t| t.elapsed() < TRAILING_MSI);
                self.events.used[q] += u32::from(got && !trailing);
                r.seen_used = now;
                if now != old {
                    r.signal_unknown = false;
                    r.notified_at = got.then(Instant::now);
                }
                if self.used_idx(q) == now {
                    break;
                }
            }
        }
    }

    /// After a device reset (the run state asked, so that its events came): what QEMU
    /// completed and any pause before the reset, or in its drain, are taken; the rings and
    /// the negotiation start again.
    fn after_reset(&mut self) {
        self.watch_pause();
        self.collect_events();
        for r in &mut self.rings {
            *r = Ring::default();
        }
        self.driver_features = 0;
    }

    /// Hands kicks held while paused to QEMU.
    fn deliver_held_kicks(&mut self) {
        for q in 0..self.rings.len() {
            if std::mem::take(&mut self.rings[q].held_kick) {
                self.kick(q as u16);
            }
        }
    }

    /// Whether this QEMU can serve the next run: alive, running, nothing in flight.
    fn reusable(&mut self) -> bool {
        if self.broken || self.healed || self.migrated || !self.qemu.reuse || self.check_alive() {
            return false;
        }
        let idle = (0..self.rings.len()).all(|q| {
            let r = &self.rings[q];
            !r.enabled || r.size == 0 || self.used_idx(q) == self.avail_idx(q)
        });
        let running = self.qemu(|m| m.run_state()).as_deref() == Some("running");
        idle && running && self.qemu(|m| m.set_status(0)).is_some()
    }
}

impl Device for QemuDevice {
    fn describe(&self) -> Description {
        self.desc.clone()
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            writes: WriteObservation::Diff,
            disk: DiskControl::External,
            deterministic: false,
            faults: true,
            resume_forgets_signal: false,
            abuse: false,
            interrupts_in_memory: true,
            heals: true,
            stop_freezes_guest: true,
            save_ends_device: true,
            queue_state_at_stops: true,
        }
    }

    fn read_status(&self) -> u8 {
        let read = self.machine.borrow_mut().as_mut().map(|m| m.status());
        if let Some(Ok(s)) = read {
            self.status.set(s);
        }
        self.status.get()
    }

    fn write_status(&mut self, value: u8) {
        if self.qemu(|m| m.set_status(value)).is_none() {
            return;
        }
        self.status.set(value);
        if value == 0 {
            // What QEMU completed before the reset signalled before it: counted, not lost.
            // So is a pause on an I/O error, before the reset or in its drain.
            let _ = self.qemu(|m| m.run_state());
            self.after_reset();
        } else if value & S_FEATURES_OK != 0 {
            let _ = self.qemu(|m| m.set_config_vector(0));
        }
    }

    fn set_driver_features(&mut self, features: u64) {
        self.driver_features = features;
        let _ = self.qemu(|m| m.set_driver_features(features));
    }

    fn queue_set_size(&mut self, q: u16, size: u16) {
        if let Some(r) = self.rings.get_mut(usize::from(q)) {
            r.size = size.min(MAX_QUEUE_SIZE);
        }
    }

    fn queue_set_addresses(&mut self, q: u16, desc: u64, avail: u64, used: u64) {
        let start = used.checked_add(2).map_or(0, |at| self.read16(at));
        if let Some(r) = self.rings.get_mut(usize::from(q)) {
            (r.desc, r.avail, r.used, r.seen_used, r.kicked) = (desc, avail, used, start, start);
            r.signal_unknown = true;
        }
    }

    fn queue_enable(&mut self, q: u16) {
        if usize::from(q) < self.rings.len() {
            self.set_up(usize::from(q));
        }
    }

    fn queue_reset(&mut self, q: u16) {
        let i = usize::from(q);
        if i < self.rings.len() && self.qemu(|m| m.reset_queue(q)).is_some() {
            let _ = self.qemu(|m| m.run_state());
            self.watch_pause();
            // The ring starts again at index 0, set up anew.
            self.rings[i] = Ring::default();
        }
    }

    fn kick(&mut self, q: u16) {
        let i = usize::from(q);
        if i >= self.rings.len() {
            return;
        }
        if self.paused() && !self.want.hostile {
            self.rings[i].held_kick = true;
            return;
        }
        self.rings[i].kicked = self.avail_idx(i);
        let _ = self.qemu(|m| m.notify(q));
    }

    fn poll(&mut self, _env: &mut Env) {
        self.settle();
    }

    fn take_events(&mut self) -> Events {
        if !self.check_alive() {
            self.watch_pause();
            self.collect_events();
            for (q, r) in self.rings.iter().enumerate() {
                if r.enabled {
                    self.events.used_idx[q] = Some(r.seen_used);
                }
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

    fn queue_state(&mut self, q: u16) -> Option<QueueState> {
        if !self.rings.get(usize::from(q))?.enabled {
            return None;
        }
        let s = self.qemu(|m| m.queue_status(q))?;
        Some(QueueState {
            next_avail: s.last_avail_idx,
            next_used: s.used_idx,
            inuse: s.inuse,
        })
    }

    fn disk_image(&self) -> Option<Vec<u8>> {
        std::fs::read(&self.site.image).ok()
    }

    fn failure(&mut self) -> Option<Failure> {
        self.check_alive();
        self.failed.take()
    }
}

impl HostControl for QemuDevice {
    fn stop(&mut self, _env: &mut Env) {
        if self.qemu(|m| m.stop()).is_some() {
            self.host = StopState::Stopped;
        }
    }

    fn resume(&mut self, _env: &mut Env) {
        self.host = StopState::Running;
        self.cont();
    }

    /// The storage is fixed: the fault layer leaves the block graph (the raw node is
    /// reopened on the file itself); then, unless the host holds the VM stopped, `cont`.
    fn retry(&mut self, _env: &mut Env) {
        if !self.healed && !self.site.disk.faults.is_empty() {
            if self.qemu(|m| m.heal()).is_none() {
                return;
            }
            self.healed = true;
        }
        // The pause's event may not have come with a reply yet: ask.
        let state = self.qemu(|m| m.run_state());
        self.watch_pause();
        if self.host == StopState::Running
            && (self.io_paused || state.as_deref() == Some("io-error"))
        {
            self.cont();
        }
    }

    fn stop_state(&mut self) -> StopState {
        self.host
    }

    /// QMP `system_reset`: virtio-blk's reset drains, then frees what `werror=stop` parked
    /// (`virtio_blk_reset`); the PCI function is set up again (its BARs, bus mastering and
    /// MSI-X are reset too), and a VM the host does not hold stopped runs on (a paused VM
    /// comes back `prelaunch`).
    fn system_reset(&mut self, _env: &mut Env) -> bool {
        let queues = self.rings.len() as u16;
        let done = self.qemu(|m| {
            m.system_reset()?;
            aim_msix(m, queues)?;
            m.run_state()
        });
        let Some(state) = done else {
            return true;
        };
        self.status.set(0);
        self.after_reset();
        self.io_paused = false;
        if self.host == StopState::Running && state != "running" {
            self.cont();
        }
        true
    }
}

/// Migration is QEMU's own: `migrate` to a file while the VM is stopped, then a new QEMU
/// started with `-incoming defer` on the same memfd (`x-ignore-shared`: the RAM is not in
/// the stream) loads it with `migrate-incoming`. The destination's storage is the source's:
/// the same image, with the same blkdebug rules unless a heal removed them, as a migration
/// does not fix a disk; the program fixes it with `Heal`.
impl Migration for QemuDevice {
    fn save(&mut self) -> Result<Vec<u8>, DeviceError> {
        if self.host != StopState::Stopped {
            return Err(DeviceError::Refused(
                "QEMU migrates only a stopped VM here".into(),
            ));
        }
        let file = self.site.file(MIGRATION_FILE);
        // A failed migration fails the device: QEMU's finding, with its stderr.
        self.qemu(|m| m.migrate_to(&file))
            .ok_or_else(|| DeviceError::Refused("QEMU's migration failed".into()))?;
        self.migrated = true;
        let bytes = std::fs::read(&file)
            .map_err(|e| DeviceError::Refused(format!("cannot read {}: {e}", file.display())));
        let _ = std::fs::remove_file(&file);
        bytes
    }

    fn restore_fresh(
        &mut self,
        bytes: &[u8],
        _env: &mut Env,
    ) -> Result<Box<dyn Device>, DeviceError> {
        let file = self.site.file(MIGRATION_FILE);
        std::fs::write(&file, bytes)
            .map_err(|e| DeviceError::Build(format!("cannot write {}: {e}", file.display())))?;
        let mut cfg = super::config(self.qemu, &self.site, self.exposed, self.share);
        if self.healed {
            cfg.faults.clear();
        }
        cfg.incoming = Some(file.clone());
        let started = Machine::start(&cfg);
        let _ = std::fs::remove_file(&file);
        let mut machine = started.map_err(DeviceError::Refused)?;
        let io_paused = machine.run_state().map_err(DeviceError::Refused)? == "io-error";
        Ok(Box::new(QemuDevice {
            qemu: self.qemu,
            site: self.site.clone(),
            machine: RefCell::new(Some(machine)),
            share: self.share,
            rings: self
                .rings
                .iter()
                .map(|r| Ring {
                    signal_unknown: true,
                    ..*r
                })
                .collect(),
            status: self.status.clone(),
            driver_features: self.driver_features,
            host: StopState::Stopped,
            io_paused,
            healed: self.healed,
            want: self.want.clone(),
            failed: None,
            broken: false,
            events: Events::default(),
            desc: self.desc.clone(),
            exposed: self.exposed,
            migrated: true,
        }))
    }
}

impl Drop for QemuDevice {
    fn drop(&mut self) {
        if self.reusable()
            && let Some(machine) = self.machine.borrow_mut().take()
        {
            super::give_back(self.qemu, self.site.clone(), machine, self.exposed);
        }
    }
}
