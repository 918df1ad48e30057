//! Runs a [`Program`] against a device under test and checks every step.
//!
//! Each op acts through the driver, the disk or the host. Every call into the device goes
//! through [`Run::call`], which observes what the call did (guest-memory writes from the
//! write log, interrupts, new disk I/O, status and ring positions) and hands that to the
//! oracle. After the last op a liveness phase heals the disk, resumes the device and lets
//! everything finish. A run depends only on the program: no clocks, no threads, no hashing
//! with random keys.

use std::collections::BTreeSet;

use vm_memory::GuestMemoryMmap;

use crate::backend::{Io, IoError, IoTag, MemDisk, SECTOR_SIZE};
use crate::device::bits::*;
use crate::device::{DeviceConfig, Interrupts, MAX_QUEUE_SIZE, Snapshot, StopState};
use crate::driver::layout::{MEM_SIZE, slot_area};
use crate::driver::{Driver, desc_bytes, need_event, read16};
use crate::dut::DeviceUnderTest;
use crate::memory::{GuestMem, WriteLog};
use crate::model::{Model, ReqId, ReqState, Request};
use crate::oracle::always::{self, Activity};
use crate::oracle::{Check, Invariant, Violation, conforming};
use crate::program::{Config, Corruption, Jump, Op, Program, ReqType, Shape, Trigger};
use crate::trace::{Digest, SlotView, Trace, draw_ring};

/// The device id the harness builds devices with.
pub const DEVICE_ID: [u8; 20] = *b"stopfuzz-reference\0\0";

/// How much the oracle checks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OracleLevel {
    /// Every invariant.
    #[default]
    Full,
    /// Only `no-panic`: what a crash-only fuzzer sees. The checks are not even run, so
    /// the difference in speed is the oracle's cost.
    CrashOnly,
}

/// Whether hostile ops run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Conforming,
    Hostile,
}

/// How the snapshot target changes a snapshot before restoring it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SnapshotEdit {
    /// XOR `value` into the byte at `offset` (modulo the length), for each pair.
    Mutate(Vec<(u16, u8)>),
    /// Restore these bytes instead.
    Replace(Vec<u8>),
}

/// A broken invariant at a step (0 is setup, `ops + 1` the liveness phase).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    pub invariant: Invariant,
    pub step: usize,
    pub message: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Pass,
    Finding(Finding),
}

/// The states the thread worries about, as reached by one run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Scenarios(pub u8);

impl Scenarios {
    pub const WRAP_INFLIGHT: u8 = 1;
    pub const STOP_ACKED_INFLIGHT: u8 = 2;
    pub const MIGRATE_PARKED: u8 = 4;
    pub const OOO_SLOT_REUSE: u8 = 8;
    pub const REJECTED_RESTORE: u8 = 16;
    pub const NEEDS_RESET_HOSTILE: u8 = 32;
    pub const NAMES: [(u8, &'static str); 6] = [
        (Self::WRAP_INFLIGHT, "wrap_with_inflight"),
        (Self::STOP_ACKED_INFLIGHT, "stop_acked_with_inflight"),
        (Self::MIGRATE_PARKED, "migration_with_parked"),
        (Self::OOO_SLOT_REUSE, "ooo_then_slot_reuse"),
        (Self::REJECTED_RESTORE, "rejected_restore"),
        (Self::NEEDS_RESET_HOSTILE, "needs_reset_hostile"),
    ];

    pub fn set(&mut self, flag: u8) {
        self.0 |= flag;
    }

    pub fn has(&self, flag: u8) -> bool {
        self.0 & flag != 0
    }
}

/// What a run gave.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    pub outcome: Outcome,
    pub scenarios: Scenarios,
    /// Hash of every step's op and effects, and of the outcome.
    pub digest: u64,
    /// Rendered steps, when the run was traced.
    pub trace: Option<Trace>,
    /// Invariants the device's capabilities did not allow checking.
    pub skipped: Vec<Invariant>,
}

/// One guest memory, reused by every run of a worker.
pub struct Engine {
    mem: GuestMem,
    pub oracle: OracleLevel,
}

impl Default for Engine {
    fn default() -> Self {
        Engine::new()
    }
}

impl Engine {
    pub fn new() -> Self {
        Engine {
            mem: GuestMem::new(MEM_SIZE),
            oracle: OracleLevel::Full,
        }
    }

    /// Runs `program` against the reference device.
    pub fn run(&mut self, program: &Program, mode: Mode, traced: bool) -> Report {
        self.run_on::<crate::device::BlkDevice>(program, mode, None, traced)
    }

    /// Runs `program` against `D`. With `edit`, a snapshot phase follows the liveness phase:
    /// the device is stopped and saved, the snapshot edited, and restored into a fresh device.
    pub fn run_on<D: DeviceUnderTest>(
        &mut self,
        program: &Program,
        mode: Mode,
        edit: Option<&SnapshotEdit>,
        traced: bool,
    ) -> Report {
        let checks = self.oracle == OracleLevel::Full;
        let report = match Run::<D>::new(&self.mem, program, mode, traced, checks) {
            Err(v) => setup_failure(checks.then_some(v), traced),
            Ok(mut run) => {
                let mut result = run.execute(&program.ops);
                if let (Ok(()), Some(edit)) = (&result, edit) {
                    run.step += 1;
                    result = run.snapshot_phase(edit);
                }
                if !checks {
                    result = Ok(());
                }
                run.report(result)
            }
        };
        // Zero what this run wrote now rather than before the next one, so a run's work,
        // and the coverage a fuzzer sees, depend on its own input alone.
        self.mem.reset();
        report
    }
}

impl Engine {
    /// Runs the ops of `program` (stopping at a finding, without the liveness phase) and
    /// draws the rings as they are then.
    pub fn rings_after(&mut self, program: &Program, mode: Mode) -> String {
        self.mem.reset();
        let mut run =
            match Run::<crate::device::BlkDevice>::new(&self.mem, program, mode, false, true) {
                Ok(run) => run,
                Err(v) => return format!("setup failed: {}\n", v.message),
            };
        for (i, op) in program.ops.iter().enumerate() {
            run.step = i + 1;
            if run.apply(op).is_err() {
                break;
            }
        }
        let rings = run.draw_rings();
        self.mem.reset();
        rings
    }
}

/// The report of a run whose setup failed (`None`: nobody is checking).
fn setup_failure(v: Option<Violation>, traced: bool) -> Report {
    let mut digest = Digest::default();
    let outcome = match v {
        None => Outcome::Pass,
        Some(v) => {
            digest.bytes(v.message.as_bytes());
            Outcome::Finding(Finding {
                invariant: v.invariant,
                step: 0,
                message: v.message,
            })
        }
    };
    Report {
        outcome,
        scenarios: Scenarios::default(),
        digest: digest.value(),
        trace: traced.then(Trace::default),
        skipped: Vec::new(),
    }
}

const QUEUES: usize = crate::device::MAX_QUEUES as usize;

/// What the oracle sees of the device at one moment. Fixed arrays: this is built twice
/// per device call.
#[derive(Clone, Debug)]
struct View {
    status: u8,
    host: StopState,
    /// Per queue: (next_avail, next_used), with introspection.
    position: [Option<(u16, u16)>; QUEUES],
    avail: [u16; QUEUES],
    used: [u16; QUEUES],
}

/// One program's run.
pub struct Run<'m, D: DeviceUnderTest> {
    mem: &'m GuestMem,
    pub dev: D,
    pub disk: MemDisk,
    pub driver: Driver,
    pub model: Model,
    cfg: Config,
    mode: Mode,
    features: u64,
    /// A hostile op ran since the last device reset.
    hostile: bool,
    step: usize,
    /// Per queue: whether the device has made a notification decision since the last
    /// initialization, reset or restore.
    signal_valid: Vec<bool>,
    scenarios: Scenarios,
    digest: Digest,
    trace: Option<Trace>,
    /// Interrupts of the last device call.
    last_interrupts: Interrupts,
    /// The device runs from a snapshot the driver did not make: its rings and buffers are
    /// wherever the snapshot says, so only the ring-independent checks apply.
    foreign: bool,
    /// The current device call is a poll: the only call that may consume buffers.
    polling: bool,
    /// The oracle runs (not crash-only).
    checks: bool,
}

impl<'m, D: DeviceUnderTest> Run<'m, D> {
    fn new(
        mem: &'m GuestMem,
        program: &Program,
        mode: Mode,
        traced: bool,
        checks: bool,
    ) -> Result<Self, Violation> {
        let cfg = program.config.clone();
        let dcfg = DeviceConfig {
            num_queues: u16::from(cfg.queues),
            queue_max_size: MAX_QUEUE_SIZE,
            capacity: u64::from(cfg.disk_sectors),
            features: SUPPORTED,
            inflight: cfg.inflight,
            write_policy: cfg.write_policy,
            read_policy: cfg.read_policy,
            device_id: DEVICE_ID,
        };
        let dev = D::build(dcfg).map_err(|e| {
            crate::oracle::violation(
                Invariant::Live,
                format!("device refused its configuration: {e}"),
            )
        })?;
        let mut features = F_VERSION_1;
        for (on, f) in [
            (cfg.event_idx, F_EVENT_IDX),
            (cfg.indirect, F_INDIRECT_DESC),
            (cfg.flush, F_FLUSH),
            (cfg.ring_reset, F_RING_RESET),
            (cfg.queues > 1, F_MQ),
            (cfg.trigger == Trigger::Suspend, F_SUSPEND),
            (cfg.trigger == Trigger::StopBit, F_STOP),
        ] {
            if on {
                features |= f;
            }
        }
        let queues = u16::from(cfg.queues);
        let mut run = Run {
            mem,
            dev,
            disk: MemDisk::new(u64::from(cfg.disk_sectors)),
            // Guest memory was just reset: the rings are zeros.
            driver: Driver::new(mem.mem(), features, queues, cfg.queue_size, 0, false),
            model: Model::new(
                u64::from(cfg.disk_sectors),
                cfg.write_policy,
                cfg.read_policy,
                cfg.flush,
                DEVICE_ID,
            ),
            cfg,
            mode,
            features,
            hostile: false,
            step: 0,
            signal_valid: vec![false; usize::from(queues)],
            scenarios: Scenarios::default(),
            digest: Digest::default(),
            trace: traced.then(Trace::default),
            last_interrupts: Interrupts::default(),
            foreign: false,
            polling: false,
            checks,
        };
        run.initialize()?;
        if run.cfg.start_index != 0 {
            run.start_at(run.cfg.start_index)?;
        }
        Ok(run)
    }

    fn queues(&self) -> u16 {
        self.driver.queues.len() as u16
    }

    fn gm(&self) -> &'m GuestMemoryMmap<WriteLog> {
        self.mem.mem()
    }

    fn conforming(&self) -> bool {
        !self.hostile
    }

    // ---- Setup.

    /// virtio initialization: status sequence, features, queues, DRIVER_OK.
    fn initialize(&mut self) -> Check {
        let features = self.features;
        self.call(|d, _, _| d.write_status(S_ACKNOWLEDGE))?;
        self.call(|d, _, _| d.write_status(S_ACKNOWLEDGE | S_DRIVER))?;
        self.call(|d, _, _| d.set_driver_features(features))?;
        self.call(|d, _, _| d.write_status(S_ACKNOWLEDGE | S_DRIVER | S_FEATURES_OK))?;
        if self.dev.read_status() & S_FEATURES_OK == 0 {
            return Err(crate::oracle::violation(
                Invariant::Live,
                format!("device refused offered features {features:#x}"),
            ));
        }
        for q in 0..self.queues() {
            self.setup_queue(q)?;
        }
        self.call(|d, _, _| {
            d.write_status(S_ACKNOWLEDGE | S_DRIVER | S_FEATURES_OK | S_DRIVER_OK)
        })?;
        self.signal_valid.fill(false);
        Ok(())
    }

    fn setup_queue(&mut self, q: u16) -> Check {
        let dq = &self.driver.queues[usize::from(q)];
        let (size, desc, avail, used) = (dq.size, dq.desc, dq.avail, dq.used);
        self.call(|d, _, _| {
            d.queue_set_size(q, size);
            d.queue_set_addresses(q, desc, avail, used);
            d.queue_enable(q);
        })
    }

    /// Moves every ring to `start` by restoring a snapshot whose indices start there.
    fn start_at(&mut self, start: u16) -> Check {
        self.call(|d, _, _| d.host_stop())?;
        let bytes = self.dev.save().map_err(|e| {
            crate::oracle::violation(
                Invariant::RoundTrip,
                format!("an idle, stopped device refused to save: {e}"),
            )
        })?;
        let mut snap = Snapshot::decode(&bytes).map_err(|e| {
            crate::oracle::violation(
                Invariant::RoundTrip,
                format!("the device's snapshot does not decode: {e}"),
            )
        })?;
        for q in &mut snap.queues {
            q.next_avail = start;
            q.next_used = start;
        }
        let (features, size) = (self.features, self.cfg.queue_size);
        // Nothing has run on the rings yet: they are zeros.
        self.driver = Driver::new(self.gm(), features, self.queues(), size, start, false);
        match self.dev.restored(&snap.encode(), self.gm()) {
            Ok(dev) => self.dev = dev,
            Err(e) => {
                return Err(crate::oracle::violation(
                    Invariant::RoundTrip,
                    format!("restore refused a consistent snapshot at start index {start}: {e}"),
                ));
            }
        }
        self.signal_valid.fill(false);
        self.call(|d, _, _| d.host_resume())
    }

    // ---- Running.

    fn execute(&mut self, ops: &[Op]) -> Check {
        for (i, op) in ops.iter().enumerate() {
            self.step = i + 1;
            let before = self.trace.as_ref().map(|t| t.lines.len());
            let result = self.apply(op);
            self.digest.bytes(&op.encode());
            self.end_step(|| format!("{op:?}"), before);
            result?;
        }
        self.step = ops.len() + 1;
        let before = self.trace.as_ref().map(|t| t.lines.len());
        let result = self.finish();
        self.end_step(
            || "liveness: heal, resume, run everything to completion".into(),
            before,
        );
        result
    }

    /// Hashes the step's effects; renders the step line ahead of its notes.
    fn end_step(&mut self, text: impl FnOnce() -> String, notes_from: Option<usize>) {
        let mut effects = [0u8; 8];
        effects[0] = self.dev.read_status();
        effects[1] = self.disk.outstanding().count() as u8;
        for (i, dq) in self.driver.queues.iter().enumerate() {
            effects[2 + i] = dq.observed as u8;
        }
        self.digest.bytes(&effects);
        if let (Some(t), Some(from)) = (self.trace.as_mut(), notes_from) {
            t.lines
                .insert(from, format!("{:>4}  {}", self.step, text()));
            let io = self.disk.outstanding().count();
            let used: Vec<String> = self
                .driver
                .queues
                .iter()
                .map(|q| q.observed.to_string())
                .collect();
            t.note(&format!(
                "status {:#04x}, used idx [{}], disk I/O outstanding {io}, parked {}",
                effects[0],
                used.join(", "),
                self.model
                    .open_ids()
                    .filter(|&id| self.model.is_parked(id))
                    .count()
            ));
        }
    }

    fn note(&mut self, text: impl FnOnce() -> String) {
        if let Some(t) = self.trace.as_mut() {
            t.note(&text());
        }
    }

    fn report(mut self, result: Check) -> Report {
        let outcome = match result {
            Ok(()) => Outcome::Pass,
            Err(v) => {
                self.note(|| format!("FINDING {}: {}", v.invariant, v.message));
                Outcome::Finding(Finding {
                    invariant: v.invariant,
                    step: self.step,
                    message: v.message,
                })
            }
        };
        if let Outcome::Finding(f) = &outcome {
            self.digest.bytes(f.invariant.id().as_bytes());
            self.digest.u64(f.step as u64);
        }
        let introspection = self.dev.capabilities().introspection;
        Report {
            outcome,
            scenarios: self.scenarios,
            digest: self.digest.value(),
            trace: self.trace,
            skipped: Invariant::ALL
                .into_iter()
                .filter(|i| i.needs_introspection() && !introspection)
                .collect(),
        }
    }

    // ---- Observing device calls.

    /// The device and the rings now. Avail idx comes from the driver, its only writer (the
    /// write log holds the device to that); `used` is read only when `read_used`, since it
    /// cannot move in a call that wrote nothing.
    fn view(&self, used: Option<[u16; QUEUES]>) -> View {
        let introspection = self.dev.capabilities().introspection;
        let mut view = View {
            status: self.dev.read_status(),
            host: self.dev.host_stop_state(),
            position: [None; QUEUES],
            avail: [0; QUEUES],
            used: [0; QUEUES],
        };
        for (i, dq) in self.driver.queues.iter().enumerate() {
            if introspection {
                view.position[i] = self.dev.ring_position(i as u16);
            }
            view.avail[i] = dq.published;
            view.used[i] = match used {
                Some(used) => used[i],
                None => read16(self.gm(), dq.used + 2),
            };
        }
        view
    }

    fn driver_acked(&self, status: u8) -> bool {
        match self.cfg.trigger {
            Trigger::Suspend => status & S_SUSPEND != 0 && status & S_DRIVER_OK == 0,
            Trigger::StopBit => status & S_STOPPED != 0,
        }
    }

    fn acked(&self, v: &View) -> (bool, bool) {
        (self.driver_acked(v.status), v.host == StopState::Stopped)
    }

    /// Where the device may write now.
    fn allowed_writes(&self) -> Vec<std::ops::Range<u64>> {
        let mut allowed: Vec<_> = self
            .driver
            .queues
            .iter()
            .map(|dq| dq.used..dq.used + 6 + 8 * u64::from(dq.size))
            .collect();
        if self.conforming() {
            for id in self.model.open_ids() {
                let r = &self.model.requests[id];
                if r.state == ReqState::Published {
                    allowed.extend(r.writable.iter().map(|&(a, l)| a..a + u64::from(l)));
                }
            }
        } else {
            allowed.push(slot_area());
        }
        allowed
    }

    fn poll(&mut self) -> Check {
        self.polling = true;
        let result = self.call(|d, m, disk| d.poll(m, disk));
        self.polling = false;
        result
    }

    /// Calls into the device and checks what the call did.
    fn call(&mut self, f: impl FnOnce(&mut D, &GuestMemoryMmap<WriteLog>, &mut MemDisk)) -> Check {
        if !self.checks {
            f(&mut self.dev, self.mem.mem(), &mut self.disk);
            self.last_interrupts = self.dev.take_interrupts();
            return Ok(());
        }
        let before = self.view(None);
        let submitted = self.disk.submitted();
        let checkpoint = self.mem.checkpoint();
        f(&mut self.dev, self.mem.mem(), &mut self.disk);
        let writes: Vec<(u64, u32)> = self.mem.writes_since(checkpoint).collect();
        let interrupts = self.dev.take_interrupts();
        self.last_interrupts = interrupts;
        let new_io: Vec<(IoTag, Io)> = self
            .disk
            .outstanding()
            .filter(|(t, _)| *t >= submitted)
            .map(|(t, io)| (t, io.clone()))
            .collect();
        let after = self.view(writes.is_empty().then_some(before.used));
        self.check_call(&before, &after, &writes, interrupts, &new_io)
    }

    fn check_call(
        &mut self,
        before: &View,
        after: &View,
        writes: &[(u64, u32)],
        interrupts: Interrupts,
        new_io: &[(IoTag, Io)],
    ) -> Check {
        let activity = Activity {
            writes: writes.len(),
            interrupts: interrupts.used.iter().sum::<u32>() + interrupts.config,
            new_io: new_io.len(),
        };
        let (drv_before, host_before) = self.acked(before);
        let (drv_after, host_after) = self.acked(after);
        always::quiet_when_stopped(
            (drv_before && drv_after) || (host_before && host_after),
            activity,
        )?;
        always::broken_stays_quiet(before.status & S_NEEDS_RESET != 0, activity)?;
        if self.foreign {
            return Ok(());
        }
        if !writes.is_empty() {
            // The model has not yet seen this call's completions: these are the buffers
            // the device held when the call began.
            always::write_confined(writes, &self.allowed_writes())?;
        }
        if after.status & S_NEEDS_RESET != 0 && self.mode == Mode::Hostile {
            self.scenarios.set(Scenarios::NEEDS_RESET_HOSTILE);
        }
        if self.conforming() && after.status & S_NEEDS_RESET != 0 {
            return Err(crate::oracle::violation(
                Invariant::Live,
                format!(
                    "the device set DEVICE_NEEDS_RESET (status {:#04x}) under a conforming driver",
                    after.status
                ),
            ));
        }

        for q in 0..self.queues() {
            let i = usize::from(q);
            let size = self.driver.queues[i].size;
            if let (Some(b), Some(a)) = (before.position[i], after.position[i]) {
                always::inuse_bound(q, a.0, a.1, size)?;
                if self.polling {
                    let window = before.avail[i].wrapping_sub(b.0);
                    always::avail_window(q, window, size, (b.0, a.0))?;
                }
                if (a.0 < b.0 || after.used[i] < before.used[i]) && self.open_inflight() {
                    self.scenarios.set(Scenarios::WRAP_INFLIGHT);
                }
            }
            let elems = if after.used[i] == self.driver.queues[i].observed {
                Vec::new()
            } else {
                self.driver.observe(self.gm(), q, after.used[i])
            };
            let ids: Vec<u32> = elems.iter().map(|e| e.id).collect();
            always::used_monotone(q, before.used[i], after.used[i], size, &ids)?;
            if self.conforming() {
                for elem in elems {
                    let id = conforming::used_id(&self.model, q, elem)?;
                    conforming::parked(&self.model, id)?;
                    conforming::data(&self.model, self.gm(), id, elem)?;
                    self.model.complete(id);
                }
            }
        }

        if self.conforming() {
            for (tag, io) in new_io {
                let id = conforming::exactly_once_io(&self.model, io)?;
                self.model.io_started(*tag, id);
            }
            for q in 0..self.queues() {
                let i = usize::from(q);
                let moved = after.used[i] != before.used[i];
                let expected = !self.signal_valid[i]
                    || self.notification_due(q, before.used[i], after.used[i]);
                conforming::notify(q, moved, expected, interrupts.used[i])?;
                if moved {
                    self.signal_valid[i] = true;
                }
            }
            if (!drv_before && drv_after) || (!host_before && host_after) {
                self.check_contract(after)?;
            }
        }
        Ok(())
    }

    fn open_inflight(&self) -> bool {
        self.model
            .open_ids()
            .any(|id| self.model.requests[id].state == ReqState::Published)
    }

    fn notification_due(&self, q: u16, old: u16, new: u16) -> bool {
        let dq = &self.driver.queues[usize::from(q)];
        if self.driver.has(F_EVENT_IDX) {
            let used_event = read16(self.gm(), dq.avail + 4 + 2 * u64::from(dq.size));
            need_event(used_event, new, old)
        } else {
            read16(self.gm(), dq.avail) & AVAIL_F_NO_INTERRUPT == 0
        }
    }

    /// At a stop acknowledgement, the held requests are what the contract says.
    fn check_contract(&mut self, view: &View) -> Check {
        if self.open_inflight() {
            self.scenarios.set(Scenarios::STOP_ACKED_INFLIGHT);
        }
        if !self.dev.capabilities().introspection {
            return Ok(());
        }
        let mut popped = BTreeSet::new();
        for id in self.model.open_ids() {
            let r = &self.model.requests[id];
            if r.state != ReqState::Published {
                continue;
            }
            if let Some((next_avail, _)) = view.position[usize::from(r.q)] {
                // Published before next_avail: the device has fetched it.
                if (1..0x8000).contains(&next_avail.wrapping_sub(r.avail_pos)) {
                    popped.insert((r.q, r.head));
                }
            }
        }
        conforming::contract(self.cfg.inflight, &self.dev.held(), &popped)
    }

    // ---- Ops.

    fn apply(&mut self, op: &Op) -> Check {
        if op.kind().is_hostile() {
            if self.mode == Mode::Conforming {
                self.note(|| "skipped: hostile op in the conforming target".into());
                return Ok(());
            }
            self.hostile = true;
        }
        let nq = self.queues();
        let size = self.cfg.queue_size;
        match *op {
            Op::Submit {
                queue,
                req,
                shape,
                sector,
                sectors,
                seed,
            } => self.submit(
                u16::from(queue) % nq,
                req,
                shape,
                sector,
                sectors,
                seed,
                false,
            ),
            Op::Publish { queue } => {
                if self.driver.stop_requested {
                    self.note(|| "skipped: the driver has stopped the device".into());
                    return Ok(());
                }
                let q = u16::from(queue) % nq;
                self.driver.publish(self.gm(), q);
                self.model.publish(q);
                Ok(())
            }
            Op::Kick { queue } => {
                let q = u16::from(queue) % nq;
                if self.driver.stop_requested {
                    self.note(|| "skipped: the driver has stopped the device".into());
                    return Ok(());
                }
                if self.driver.kick_needed(self.gm(), q) {
                    self.call(|d, _, _| d.kick(q))
                } else {
                    self.note(|| "no kick: the device did not ask for one".into());
                    Ok(())
                }
            }
            Op::Poll => self.poll(),
            Op::Complete { pick } => {
                self.finish_io(pick, None);
                Ok(())
            }
            Op::Fail { pick, error } => {
                self.finish_io(pick, Some(error));
                Ok(())
            }
            Op::DiskFull => {
                self.disk.fill();
                Ok(())
            }
            Op::Heal => {
                self.disk.heal();
                self.call(|d, _, _| d.host_retry())
            }
            Op::Reap { queue } => {
                self.driver.reap(self.gm(), u16::from(queue) % nq);
                Ok(())
            }
            Op::DriverStop => self.driver_stop(),
            Op::DriverResume => self.driver_resume(),
            Op::HostStop => self.host(true),
            Op::HostResume => self.host(false),
            Op::Migrate => self.migrate(),
            Op::QueueReset { queue } => {
                let q = u16::from(queue) % nq;
                if !self.driver.has(F_RING_RESET) || self.driver.stop_requested {
                    self.note(|| {
                        "skipped: RING_RESET not negotiated, or the device is stopped".into()
                    });
                    return Ok(());
                }
                // Dropped from the moment of the reset: nothing may complete them after it.
                self.model.abandon(Some(q));
                self.call(|d, _, _| d.queue_reset(q))?;
                self.driver.reset_queue(self.gm(), q);
                self.signal_valid[usize::from(q)] = false;
                self.setup_queue(q)
            }
            Op::DeviceReset => {
                self.model.abandon(None);
                self.call(|d, _, _| d.write_status(0))?;
                // A reset ends hostility once no disk I/O from it can still land; the
                // model then takes the disk as it is.
                if self.hostile && self.disk.outstanding().next().is_none() {
                    self.hostile = false;
                    self.model.disk.copy_from_slice(self.disk.image());
                }
                let (features, size) = (self.features, self.cfg.queue_size);
                self.driver = Driver::new(self.gm(), features, self.queues(), size, 0, true);
                self.initialize()
            }
            Op::Settle => self.settle(),
            Op::AvailJump { queue, jump, n } => {
                let q = u16::from(queue) % nq;
                let now = self.driver.queues[usize::from(q)].published;
                let to = match jump {
                    Jump::Back => now.wrapping_sub(1 + u16::from(n) % size),
                    Jump::Ahead => now.wrapping_add(size + 1 + u16::from(n)),
                    Jump::Wrap => now.wrapping_add(0x8000 + u16::from(n)),
                };
                self.driver.set_avail_idx(self.gm(), q, to);
                self.call(|d, _, _| d.kick(q))
            }
            Op::RewriteAvail { queue, slot, head } => {
                let q = u16::from(queue) % nq;
                self.driver
                    .set_avail_slot(self.gm(), q, u16::from(slot), u16::from(head));
                Ok(())
            }
            Op::CorruptDesc { queue, index, how } => {
                let q = u16::from(queue) % nq;
                let index = u16::from(index) % size;
                let mut d = self.driver.desc(self.gm(), q, index);
                let flags = u16::from_le_bytes([d[12], d[13]]);
                d = match how {
                    Corruption::Loop => {
                        let mut d = d;
                        d[12..14].copy_from_slice(&(flags | DESC_F_NEXT).to_le_bytes());
                        d[14..].copy_from_slice(&index.to_le_bytes());
                        d
                    }
                    Corruption::Address => {
                        let mut d = d;
                        d[..8].copy_from_slice(&(MEM_SIZE as u64 + 0x1000).to_le_bytes());
                        d
                    }
                    Corruption::Length => {
                        let mut d = d;
                        d[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
                        d
                    }
                    Corruption::NestedIndirect => {
                        let table = crate::driver::layout::Slot::of(q, index).table;
                        let inner = desc_bytes(table, 16, DESC_F_INDIRECT, 0);
                        self.driver_write(table, &inner);
                        desc_bytes(table, 16, DESC_F_INDIRECT, 0)
                    }
                    Corruption::Flags => {
                        let mut d = d;
                        d[12..14]
                            .copy_from_slice(&(flags ^ (DESC_F_NEXT | DESC_F_WRITE)).to_le_bytes());
                        d
                    }
                    Corruption::Next => {
                        let mut d = d;
                        d[12..14].copy_from_slice(&(flags | DESC_F_NEXT).to_le_bytes());
                        d[14..].copy_from_slice(&size.to_le_bytes());
                        d
                    }
                };
                self.driver.set_desc(self.gm(), q, index, d);
                Ok(())
            }
            Op::ForceSubmit { queue, req, sector } => {
                let q = u16::from(queue) % nq;
                self.submit(q, req, Shape::Plain, sector, 1, sector, true)?;
                self.driver.publish(self.gm(), q);
                self.model.publish(q);
                self.call(|d, _, _| d.kick(q))
            }
        }
    }

    fn driver_write(&self, addr: u64, bytes: &[u8]) {
        use vm_memory::{Bytes, GuestAddress};
        let _ = self.gm().write_slice(bytes, GuestAddress(addr));
    }

    #[allow(clippy::too_many_arguments)]
    fn submit(
        &mut self,
        q: u16,
        req: ReqType,
        shape: Shape,
        sector: u8,
        sectors: u8,
        seed: u8,
        force: bool,
    ) -> Check {
        if self.driver.stop_requested && !force {
            self.note(|| "skipped: the driver has stopped the device".into());
            return Ok(());
        }
        let disk = u64::from(self.cfg.disk_sectors);
        let (sector, n) = match req {
            ReqType::Read | ReqType::Write => {
                let n = u64::from(sectors.clamp(1, 4));
                (u64::from(sector) % (disk - n + 1), n)
            }
            ReqType::Flush | ReqType::GetId => (0, 0),
        };
        if !force && self.model.overlaps(req, sector, n) {
            self.note(|| "skipped: it would race an unfinished request".into());
            return Ok(());
        }
        let len = (n * SECTOR_SIZE) as usize;
        let data = match req {
            ReqType::Write => pattern(seed, sector, len),
            ReqType::Read => vec![0xa5; len],
            ReqType::GetId => vec![0xa5; 20],
            ReqType::Flush => Vec::new(),
        };
        let Some(built) = self.driver.build(self.gm(), q, req, shape, sector, &data) else {
            self.note(|| "skipped: not enough free descriptors".into());
            return Ok(());
        };
        let size = self.driver.queues[usize::from(q)].size;
        let earlier = built.avail_pos.wrapping_sub(size);
        if self.model.open_ids().any(|id| {
            let r = &self.model.requests[id];
            r.q == q && r.avail_pos == earlier && r.state == ReqState::Published
        }) {
            self.scenarios.set(Scenarios::OOO_SLOT_REUSE);
        }
        self.note(|| {
            format!(
                "head {} at avail position {} (sector {sector}, {n} sectors)",
                built.head, built.avail_pos
            )
        });
        self.model.add(Request {
            q,
            head: built.head,
            avail_pos: built.avail_pos,
            kind: req,
            sector,
            sectors: n,
            data: if req == ReqType::Write {
                data
            } else {
                Vec::new()
            },
            writable: built.writable,
            data_addr: built.data_addr,
            status_addr: built.status_addr,
            state: ReqState::Staged,
            io: None,
            last: None,
        });
        Ok(())
    }

    /// Completes or fails the `pick`-th outstanding disk I/O.
    fn finish_io(&mut self, pick: u8, error: Option<IoError>) {
        let tags: Vec<(IoTag, bool)> = self
            .disk
            .outstanding()
            .map(|(t, io)| (t, matches!(io, Io::Write { .. })))
            .collect();
        if tags.is_empty() {
            self.note(|| "skipped: no disk I/O outstanding".into());
            return;
        }
        let (tag, is_write) = tags[usize::from(pick) % tags.len()];
        let result = match error {
            Some(e) => {
                self.disk.fail(tag, e);
                Err(e)
            }
            None if is_write && self.disk.is_full() => {
                self.disk.complete(tag);
                Err(IoError::NoSpace)
            }
            None => {
                self.disk.complete(tag);
                Ok(())
            }
        };
        self.note(|| format!("disk I/O {tag}: {result:?}"));
        self.model.io_finished(tag, result);
    }

    fn complete_all_io(&mut self) {
        while self.disk.outstanding().next().is_some() {
            self.finish_io(0, None);
        }
    }

    /// Completes every disk I/O and polls, until nothing is outstanding.
    fn settle(&mut self) -> Check {
        for _ in 0..4 {
            self.complete_all_io();
            self.poll()?;
            if self.disk.outstanding().next().is_none() {
                break;
            }
        }
        Ok(())
    }

    fn driver_stop(&mut self) -> Check {
        if self.driver.stop_requested {
            self.note(|| "skipped: already stopped".into());
            return Ok(());
        }
        let bit = match self.cfg.trigger {
            Trigger::Suspend => S_SUSPEND,
            Trigger::StopBit => S_STOPPED,
        };
        let status = self.dev.read_status();
        self.driver.stop_requested = true;
        self.call(|d, _, _| d.write_status(status | bit))
    }

    fn driver_resume(&mut self) -> Check {
        if !self.driver.stop_requested {
            self.note(|| "skipped: not stopped".into());
            return Ok(());
        }
        let status = self.dev.read_status();
        let value = match self.cfg.trigger {
            Trigger::Suspend => (status | S_DRIVER_OK) & !S_SUSPEND,
            Trigger::StopBit => status & !S_STOPPED,
        };
        self.driver.stop_requested = false;
        self.call(|d, _, _| d.write_status(value))
    }

    /// Host stop or resume: invisible to the guest.
    fn host(&mut self, stop: bool) -> Check {
        let status = self.dev.read_status();
        self.call(|d, _, _| if stop { d.host_stop() } else { d.host_resume() })?;
        if self.conforming() {
            let what = if stop { "host stop" } else { "host resume" };
            let interrupts =
                self.last_interrupts.used.iter().sum::<u32>() + self.last_interrupts.config;
            conforming::transparent(what, status, self.visible_status(status), interrupts)?;
        }
        Ok(())
    }

    /// The status now, except that a stop the driver requested may have been acknowledged
    /// meanwhile: that change is the driver's doing, not the host's.
    fn visible_status(&self, before: u8) -> u8 {
        let now = self.dev.read_status();
        let acked_since =
            self.driver.stop_requested && !self.driver_acked(before) && self.driver_acked(now);
        if acked_since { before } else { now }
    }

    /// A host stop, then what a VMM does to get the acknowledgement: let the disk finish
    /// its I/O and the device run. Under Drain a parked request can still withhold it.
    fn host_stop_and_wait(&mut self) -> Check {
        self.call(|d, _, _| d.host_stop())?;
        for _ in 0..4 {
            if self.dev.host_stop_state() == StopState::Stopped {
                break;
            }
            self.complete_all_io();
            self.poll()?;
        }
        Ok(())
    }

    /// Stop, wait for the acknowledgement, save, restore into a fresh device, resume. A
    /// stop that is not acknowledged, or a save or restore that fails, aborts the migration
    /// and the source carries on.
    fn migrate(&mut self) -> Check {
        let status = self.dev.read_status();
        let was_running = self.dev.host_stop_state() == StopState::Running;
        self.host_stop_and_wait()?;
        let bytes = match self.dev.host_stop_state() {
            StopState::Stopped => self.dev.save().map_err(|e| e.to_string()),
            _ => Err("the stop was not acknowledged".into()),
        };
        let bytes = match bytes {
            Ok(b) => b,
            Err(why) => {
                self.note(|| format!("migration aborted: {why}"));
                return if was_running {
                    self.call(|d, _, _| d.host_resume())
                } else {
                    Ok(())
                };
            }
        };
        if self.model.open_ids().any(|id| self.model.is_parked(id)) {
            self.scenarios.set(Scenarios::MIGRATE_PARKED);
        }
        match self.dev.restored(&bytes, self.gm()) {
            Ok(dev) => {
                let again = dev.save().map_err(|e| e.to_string());
                conforming::round_trip(&bytes, again.as_deref().map_err(|e| e.clone()))?;
                self.dev = dev;
                self.signal_valid.fill(false);
                self.note(|| format!("migrated: {} snapshot bytes", bytes.len()));
            }
            Err(e) if self.conforming() => {
                return conforming::round_trip(&bytes, Err(e.to_string()));
            }
            Err(e) => self.note(|| format!("migration aborted: restore refused: {e}")),
        }
        if was_running {
            self.call(|d, _, _| d.host_resume())?;
        }
        if self.conforming() {
            conforming::transparent("migration", status, self.visible_status(status), 0)?;
        }
        Ok(())
    }

    /// The liveness phase: heal, resume, and run until everything published completes.
    fn finish(&mut self) -> Check {
        self.disk.heal();
        self.call(|d, _, _| d.host_retry())?;
        if self.driver.stop_requested {
            self.driver_resume()?;
        }
        if self.dev.host_stop_state() != StopState::Running {
            self.call(|d, _, _| d.host_resume())?;
        }
        self.run_down(false)?;
        if !self.conforming() {
            return Ok(());
        }
        let stuck = conforming::unfinished(&self.model);
        if !stuck.is_empty() {
            self.run_down(true)?;
            let still = conforming::unfinished(&self.model);
            let needed_kick: Vec<ReqId> = stuck
                .iter()
                .copied()
                .filter(|id| !still.contains(id))
                .collect();
            conforming::kick_kept(&self.model, &needed_kick)?;
            conforming::live(&self.model, &still)?;
        }
        conforming::data_disk(&self.model, self.disk.image())
    }

    /// Rounds of: kicks the driver owes (or every queue, when `force`), poll, complete
    /// all disk I/O, poll, reap.
    fn run_down(&mut self, force: bool) -> Check {
        for _ in 0..4 {
            for q in 0..self.queues() {
                if force || self.driver.kick_needed(self.gm(), q) {
                    self.call(|d, _, _| d.kick(q))?;
                }
            }
            self.poll()?;
            self.complete_all_io();
            self.poll()?;
            for q in 0..self.queues() {
                self.driver.reap(self.gm(), q);
            }
        }
        Ok(())
    }

    // ---- The snapshot target.

    /// Stops and saves the device, edits the snapshot, and restores it into a fresh device.
    /// An accepted snapshot must be consistent, save back to the same bytes, and run.
    fn snapshot_phase(&mut self, edit: &SnapshotEdit) -> Check {
        self.host_stop_and_wait()?;
        let bytes = match edit {
            SnapshotEdit::Replace(bytes) => bytes.clone(),
            SnapshotEdit::Mutate(flips) => {
                let Ok(mut bytes) = self.dev.save() else {
                    self.note(|| "no snapshot: the device could not be saved".into());
                    return Ok(());
                };
                let len = bytes.len();
                for &(offset, value) in flips {
                    bytes[usize::from(offset) % len] ^= value;
                }
                bytes
            }
        };
        let restored = match self.dev.restored(&bytes, self.gm()) {
            Ok(dev) => dev,
            Err(e) => {
                self.scenarios.set(Scenarios::REJECTED_RESTORE);
                self.note(|| format!("restore refused: {e}"));
                return Ok(());
            }
        };
        let snap = Snapshot::decode(&bytes).map_err(|e| {
            crate::oracle::violation(
                Invariant::RestoreRejects,
                format!("accepted bytes that do not decode: {e}"),
            )
        })?;
        always::restore_rejects(
            &snap,
            restored.config().features,
            &self.guest_indices(&snap),
        )?;
        let again = restored.save().map_err(|e| e.to_string());
        conforming::round_trip(&bytes, again.as_deref().map_err(|e| e.clone()))?;
        self.note(|| "restore accepted; running the restored device".into());
        self.dev = restored;
        self.hostile = true;
        // Rings elsewhere than the driver's, or held requests the model never saw: the
        // driver's view no longer describes the device.
        self.foreign = !snap.requests.is_empty()
            || snap.queues.iter().zip(&self.driver.queues).any(|(s, d)| {
                s.desc_table != d.desc
                    || s.avail_ring != d.avail
                    || s.used_ring != d.used
                    || s.size != d.size
            });
        self.call(|d, _, _| d.host_resume())?;
        self.run_down(false)
    }

    /// `(avail idx, used idx)` in guest memory at each enabled queue's rings in `snap`.
    fn guest_indices(&self, snap: &Snapshot) -> Vec<Option<(u16, u16)>> {
        use vm_memory::{Bytes, GuestAddress};
        let live = snap.status & S_DRIVER_OK != 0;
        snap.queues
            .iter()
            .map(|q| {
                let read = |at: u64| {
                    self.gm()
                        .read_obj::<u16>(GuestAddress(at.checked_add(2)?))
                        .ok()
                };
                (live && q.ready)
                    .then(|| Some((read(q.avail_ring)?, read(q.used_ring)?)))
                    .flatten()
            })
            .collect()
    }

    // ---- For tools.

    /// Draws every ring like the mailing-list thread does.
    pub fn draw_rings(&self) -> String {
        let mut out = String::new();
        for (q, dq) in self.driver.queues.iter().enumerate() {
            let q = q as u16;
            let slots: Vec<SlotView> = (0..dq.size)
                .map(|slot| {
                    let head = read16(self.gm(), dq.avail + 4 + 2 * u64::from(slot));
                    let state = match self
                        .model
                        .open(q, head)
                        .map(|id| (id, self.model.requests[id].state))
                    {
                        Some((id, _)) if self.model.is_parked(id) => "parked",
                        Some((_, ReqState::Published)) => "Not used",
                        Some((_, ReqState::Staged)) => "staged",
                        _ => "used",
                    };
                    SlotView {
                        head: Some(head),
                        state,
                    }
                })
                .collect();
            out.push_str(&draw_ring(q, &slots, dq.published));
        }
        out
    }
}

/// The bytes a write of `len` bytes at `sector` carries: distinct per seed and sector.
pub fn pattern(seed: u8, sector: u64, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| {
            (i as u64 ^ sector.wrapping_mul(0x9e37) ^ u64::from(seed) << 3).wrapping_mul(31) as u8
        })
        .collect()
}
