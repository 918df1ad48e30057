//! Runs a [`Program`] against a device under test and checks every step.
//!
//! The jobs, one module each: [`setup`] brings the device up; [`steps`] runs the op loop,
//! the trace and the digest; [`observe`] brackets every device call and hands what it did
//! to the oracle; [`ops`] applies the conforming ops and [`hostile`] the hostile ones;
//! [`host`] stops, resumes and migrates; [`liveness`] runs everything to completion at
//! the end; [`snapshot`] is the snapshot target's restore phase; [`rings`] draws the rings.
//!
//! Bookkeeping (the driver reading used entries, the model completing requests) runs at
//! every oracle level; the level only decides whether the checks run. A run depends only
//! on the program and the device: no clocks, no threads, no hashing with random keys.

mod host;
mod hostile;
mod liveness;
mod observe;
mod ops;
mod rings;
mod setup;
mod snapshot;
mod steps;

pub use ops::pattern;

use crate::backend::MemDisk;
use crate::driver::Driver;
use crate::driver::layout::MEM_SIZE;
use crate::dut::{Capabilities, Description, Device, DeviceKind, Events, Factory};
use crate::memory::{Checkpoint, GuestMem};
use crate::model::Model;
use crate::oracle::skipped::{Offered, Skip};
use crate::oracle::{Check, Invariant};
use crate::program::{Config, MAX_QUEUES, Program};
use crate::shadow::Shadow;
use crate::stops::Stops;
use crate::trace::{Digest, Trace};

/// How much the oracle checks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum OracleLevel {
    /// Every invariant.
    #[default]
    Full,
    /// Only `no-panic`: what a crash-only fuzzer sees. The run is the same, with the same
    /// trace and digest; only the checks do not run, so the difference in speed is their cost.
    CrashOnly,
}

/// Whether hostile ops run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Only a conforming driver: hostile ops are skipped.
    Conforming,
    /// Hostile ops run too.
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
    /// The invariant broken.
    pub invariant: Invariant,
    /// The step it broke at.
    pub step: usize,
    /// What was expected and what was seen.
    pub message: String,
}

/// How a run ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// No finding.
    Pass,
    /// The first invariant broken; the run stopped there.
    Finding(Finding),
}

/// The states the thread worries about, as reached by one run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Scenarios(pub u16);

impl Scenarios {
    /// A ring index wrapped across 65535 with requests in flight.
    pub const WRAP_INFLIGHT: u16 = 1;
    /// A stop was acknowledged with requests in flight.
    pub const STOP_ACKED_INFLIGHT: u16 = 2;
    /// A migration with parked requests.
    pub const MIGRATE_PARKED: u16 = 4;
    /// An avail slot was reused while the request written there a ring earlier was still
    /// in flight: completions came out of order.
    pub const OOO_SLOT_REUSE: u16 = 8;
    /// The snapshot target's restore was refused.
    pub const REJECTED_RESTORE: u16 = 16;
    /// The device went NEEDS_RESET under the hostile target.
    pub const NEEDS_RESET_HOSTILE: u16 = 32;
    /// A stop in the harness's record stood across another lifecycle event: a device reset
    /// or migration under a host stop, or the other side's stop or resume.
    pub const STOP_ACROSS_LIFECYCLE: u16 = 64;
    /// A stop that had to wait was acknowledged by a poll that began with it due.
    pub const STOP_DUE_THEN_ACKED: u16 = 128;
    /// A driver-trigger stop was acknowledged, its shape checked bit for bit.
    pub const DRIVER_STOP_ACKED: u16 = 256;
    /// A retry point was consumed with two or more requests parked, all resubmitted in
    /// fetch order.
    pub const RETRY_TWO_PARKED: u16 = 512;
    /// Each flag with its name in the summary.
    pub const NAMES: [(u16, &'static str); 10] = [
        (Self::WRAP_INFLIGHT, "wrap_with_inflight"),
        (Self::STOP_ACKED_INFLIGHT, "stop_acked_with_inflight"),
        (Self::MIGRATE_PARKED, "migration_with_parked"),
        (Self::OOO_SLOT_REUSE, "ooo_then_slot_reuse"),
        (Self::REJECTED_RESTORE, "rejected_restore"),
        (Self::NEEDS_RESET_HOSTILE, "needs_reset_hostile"),
        (Self::STOP_ACROSS_LIFECYCLE, "stop_across_lifecycle"),
        (Self::STOP_DUE_THEN_ACKED, "stop_due_then_acked"),
        (Self::DRIVER_STOP_ACKED, "driver_stop_acked"),
        (Self::RETRY_TWO_PARKED, "retry_with_two_parked"),
    ];

    /// Records that `flag` was reached.
    pub fn set(&mut self, flag: u16) {
        self.0 |= flag;
    }

    /// Whether `flag` was reached.
    pub fn has(&self, flag: u16) -> bool {
        self.0 & flag != 0
    }
}

/// What a run gave.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    /// Pass, or the finding that ended the run.
    pub outcome: Outcome,
    /// The scenarios the run reached.
    pub scenarios: Scenarios,
    /// Hash of every step's op and effects, and of the outcome.
    pub digest: u64,
    /// Rendered steps, when the run was traced.
    pub trace: Option<Trace>,
    /// Checks the device's capabilities left without input.
    pub skipped: Vec<Skip>,
    /// The ops the program held, run or not: the unit of work when comparing fuzzers.
    pub ops: usize,
}

/// One guest memory (and, for diff-observed devices, its shadow), reused by every run of
/// a worker.
pub struct Engine {
    mem: GuestMem,
    shadow: Option<Shadow>,
    /// How much the oracle checks in the runs to come.
    pub oracle: OracleLevel,
}

impl Default for Engine {
    fn default() -> Self {
        Engine::new()
    }
}

impl Engine {
    /// An engine with fresh guest memory and the full oracle.
    pub fn new() -> Self {
        Engine {
            // Shared, so a device in another process can map it too.
            mem: GuestMem::shared(MEM_SIZE, crate::memory::DEFAULT_LOG_CAPACITY)
                .unwrap_or_else(|_| GuestMem::new(MEM_SIZE)),
            shadow: None,
            oracle: OracleLevel::Full,
        }
    }

    /// Runs `program` against the reference device.
    pub fn run(&mut self, program: &Program, mode: Mode, traced: bool) -> Report {
        self.run_on(&DeviceKind::Reference, program, mode, None, traced)
    }

    /// Runs `program` against a device `factory` builds. With `edit`, a snapshot phase
    /// follows the liveness phase: the device is stopped and saved, the snapshot edited,
    /// and restored into a fresh device.
    pub fn run_on(
        &mut self,
        factory: &dyn Factory,
        program: &Program,
        mode: Mode,
        edit: Option<&SnapshotEdit>,
        traced: bool,
    ) -> Report {
        let checks = self.oracle == OracleLevel::Full;
        let (report, diffed) = match Run::new(
            &self.mem,
            &mut self.shadow,
            factory,
            program,
            mode,
            traced,
            checks,
        ) {
            // A device in another process may have written before setup failed.
            Err(v) => (steps::setup_failure(v, traced), self.shadow.is_some()),
            Ok(mut run) => {
                let mut result = run.execute(&program.ops);
                if let (Ok(()), Some(edit)) = (&result, edit) {
                    run.step += 1;
                    result = run.snapshot_phase(edit);
                }
                let diffed = run.shadow.is_some();
                (run.report(result), diffed)
            }
        };
        self.clean(diffed);
        Report {
            ops: program.ops.len(),
            ..report
        }
    }

    /// Zeroes what this run wrote now rather than before the next one, so a run's work, and
    /// the coverage a fuzzer sees, depend on its own input alone.
    fn clean(&mut self, diffed: bool) {
        if let (true, Some(shadow)) = (diffed, self.shadow.as_mut()) {
            // Writes the log never saw (a device in another process) are zeroed by hand:
            // those since the last diff, and those earlier diffs took into the copy.
            let everything = shadow.everything();
            let mut unlogged = shadow.diff(&self.mem, &[everything]);
            unlogged.extend(
                shadow
                    .dirty_pages()
                    .into_iter()
                    .map(|p| (p.start, (p.end - p.start) as u32)),
            );
            const ZEROS: [u8; 4096] = [0; 4096];
            for (addr, len) in unlogged {
                let end = addr + u64::from(len);
                let mut at = addr;
                while at < end {
                    let n = (end - at).min(ZEROS.len() as u64);
                    let _ = vm_memory::Bytes::write_slice(
                        self.mem.mem(),
                        &ZEROS[..n as usize],
                        vm_memory::GuestAddress(at),
                    );
                    at += n;
                }
            }
            shadow.reset();
        }
        self.mem.reset();
    }
}

/// One program's run.
pub struct Run<'m> {
    mem: &'m GuestMem,
    /// For a device whose writes are seen as a memory diff.
    shadow: Option<&'m mut Shadow>,
    /// The harness's writes up to here are in the shadow.
    synced: Checkpoint,
    dev: Box<dyn Device>,
    desc: Description,
    caps: Capabilities,
    offered: Offered,
    disk: MemDisk,
    driver: Driver,
    model: Model,
    cfg: Config,
    mode: Mode,
    features: u64,
    /// A hostile op ran since the last device reset.
    hostile: bool,
    /// The stops the harness asked for: what the device is judged against.
    stops: Stops,
    step: usize,
    /// Per queue: whether the device has made a notification decision since the last
    /// initialization, reset or restore.
    signal_valid: [bool; MAX_QUEUES],
    /// Rings restarted by a host resume of a device that forgets, there, which used index
    /// it last signalled ([`Capabilities::resume_forgets_signal`]): their next used update
    /// may notify although none is due.
    signal_forgotten: [bool; MAX_QUEUES],
    /// Per queue, for a device that runs on its own time: its used idx in guest memory
    /// when the driver last moved `used_event`. It decided any movement before that under
    /// an older `used_event`, which the driver has since overwritten.
    event_moved_at: [Option<u16>; MAX_QUEUES],
    /// A reset in progress: the requests it drops (`None`: every queue's), abandoned once the
    /// call that makes it has taken the device's completions, before a stop acknowledgement
    /// it brings is judged.
    dropping: Option<Option<u16>>,
    /// Per queue: used idx as last read, `None` once the driver rewrote its rings.
    used_seen: [Option<u16>; MAX_QUEUES],
    scenarios: Scenarios,
    digest: Digest,
    trace: Option<Trace>,
    /// Events of the last device call.
    last_events: Events,
    /// Interrupts of the last device call that no used-idx movement explains.
    last_undue: u32,
    /// A stop stood during a call and all of memory has not been diffed since.
    stop_unscanned: bool,
    /// The device paused the VM on an I/O error since the last retry point: it holds a
    /// parked request the model, not seeing the device's I/O, may not know of.
    paused_on_error: bool,
    /// The device runs from a snapshot the driver did not make: its rings and buffers are
    /// wherever the snapshot says, so only the ring-independent checks apply.
    foreign: bool,
    /// The current device call is a poll: the only call that may consume buffers.
    polling: bool,
    /// The oracle runs (not crash-only).
    checks: bool,
}

impl Run<'_> {
    fn queues(&self) -> u16 {
        self.driver.queues.len() as u16
    }

    fn conforming(&self) -> bool {
        !self.hostile
    }

    /// Runs `check` unless the oracle is off.
    fn check(&self, check: impl FnOnce() -> Check) -> Check {
        if self.checks { check() } else { Ok(()) }
    }

    fn note(&mut self, text: impl FnOnce() -> String) {
        if let Some(t) = self.trace.as_mut() {
            t.note(&text());
        }
    }
}
