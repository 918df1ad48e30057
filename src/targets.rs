//! The fuzz targets. libFuzzer, AFL++, the explorer and the corpus replay all call these,
//! so the same bytes are the same scenario everywhere.
//!
//! Each target has a function that panics on a finding, which is how fuzzers see it;
//! [`Target::run_on`] returns the [`Report`] instead, and turns a panic inside the run into a
//! `no-panic` finding.

use std::cell::{Cell, RefCell};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::str::FromStr;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::dut::DeviceKind;
use crate::engine::{Engine, Finding, Mode, OracleLevel, Outcome, Report, Scenarios, SnapshotEdit};
use crate::oracle::Invariant;
use crate::program::Program;

/// A fuzz target: what its input bytes run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Target {
    /// A conforming driver, with every lifecycle op and fault.
    BlkConforming,
    /// The hostile ops as well.
    BlkHostile,
    /// A program, then its device's snapshot edited (or replaced) and restored into a
    /// fresh device.
    Snapshot,
}

impl Target {
    /// Every target.
    pub const ALL: [Target; 3] = [Target::BlkConforming, Target::BlkHostile, Target::Snapshot];

    /// Its name in the fuzz binaries, the corpus and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Target::BlkConforming => "blk_conforming",
            Target::BlkHostile => "blk_hostile",
            Target::Snapshot => "snapshot",
        }
    }

    /// Runs `data` through this target against the reference device with the full oracle.
    pub fn run(self, data: &[u8], traced: bool) -> Report {
        self.run_on(DeviceKind::Reference, data, traced, OracleLevel::Full)
    }

    /// [`Self::run`] with a choice of oracle.
    pub fn run_with(self, data: &[u8], traced: bool, oracle: OracleLevel) -> Report {
        self.run_on(DeviceKind::Reference, data, traced, oracle)
    }

    /// Runs `data` through this target against `device`; panics inside the run become
    /// `no-panic` findings.
    pub fn run_on(
        self,
        device: DeviceKind,
        data: &[u8],
        traced: bool,
        oracle: OracleLevel,
    ) -> Report {
        let (mode, edit, program) = match self {
            Target::BlkConforming => (Mode::Conforming, None, Program::decode(data)),
            Target::BlkHostile => (Mode::Hostile, None, Program::decode(data)),
            Target::Snapshot => {
                let (edit, program) = snapshot_input(data);
                (Mode::Conforming, Some(edit), program)
            }
        };
        let run = || {
            ENGINE.with(|engine| {
                let mut engine = engine.borrow_mut();
                engine.oracle = oracle;
                engine.run_on(&device, &program, mode, edit.as_ref(), traced)
            })
        };
        QUIET_PANICS.with(|q| q.set(true));
        let result = catch_unwind(AssertUnwindSafe(run));
        QUIET_PANICS.with(|q| q.set(false));
        result.unwrap_or_else(|panic| {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "panic with a non-string payload".into());
            // The engine may have been left mid-run; the next run starts from a fresh one.
            ENGINE.with(|engine| *engine.borrow_mut() = Engine::new());
            Report {
                outcome: Outcome::Finding(Finding {
                    invariant: Invariant::NoPanic,
                    step: 0,
                    message,
                }),
                scenarios: Scenarios::default(),
                digest: 0,
                trace: None,
                skipped: Vec::new(),
                ops: program.ops.len(),
            }
        })
    }
}

impl FromStr for Target {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Target::ALL
            .into_iter()
            .find(|t| t.name() == s)
            .ok_or_else(|| {
                let names: Vec<_> = Target::ALL.iter().map(|t| t.name()).collect();
                format!("unknown target {s:?}; expected one of {}", names.join(", "))
            })
    }
}

thread_local! {
    /// One guest memory per thread, reused across runs.
    static ENGINE: RefCell<Engine> = RefCell::new(Engine::new());
    /// Set while a run is inside `catch_unwind`: its panic is a finding, reported as such.
    static QUIET_PANICS: Cell<bool> = const { Cell::new(false) };
}

/// Installs a panic hook that stays silent for panics inside runs (they are reported as
/// `no-panic` findings) and prints every other panic as the default hook would.
pub fn quiet_panics_in_runs() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if !QUIET_PANICS.with(|q| q.get()) {
            default(info);
        }
    }));
}

/// The snapshot target's input: byte 0 even means "mutate the program's snapshot" with
/// `1 + byte 1 % 8` (offset u16, xor u8) triples before the program bytes; odd means "restore
/// the remaining bytes as they are" after an empty program.
pub fn snapshot_input(data: &[u8]) -> (SnapshotEdit, Program) {
    match data.first() {
        Some(mode) if mode % 2 == 1 => (
            SnapshotEdit::Replace(data[1..].to_vec()),
            Program::default(),
        ),
        _ => {
            let count = 1 + usize::from(data.get(1).copied().unwrap_or(0) % 8);
            let flips_end = (2 + 3 * count).min(data.len());
            let flips = data
                .get(2..flips_end)
                .unwrap_or(&[])
                .chunks_exact(3)
                .map(|c| (u16::from_le_bytes([c[0], c[1]]), c[2]))
                .collect();
            let program = Program::decode(data.get(flips_end..).unwrap_or(&[]));
            (SnapshotEdit::Mutate(flips), program)
        }
    }
}

/// The bytes [`snapshot_input`] reads back as `edit` and `program`: its exact inverse for
/// a `Mutate` of 1 to 8 flips or a `Replace`.
pub fn snapshot_bytes(edit: &SnapshotEdit, program: &Program) -> Vec<u8> {
    match edit {
        SnapshotEdit::Replace(bytes) => [&[1u8][..], bytes].concat(),
        SnapshotEdit::Mutate(flips) => {
            // The format holds 1 to 8 flips; no flip at all is one that changes nothing.
            let none = [(0, 0)];
            let flips = if flips.is_empty() {
                &none[..]
            } else {
                &flips[..flips.len().min(8)]
            };
            let mut out = vec![0, flips.len() as u8 - 1];
            for &(offset, value) in flips {
                out.extend_from_slice(&offset.to_le_bytes());
                out.push(value);
            }
            out.extend_from_slice(&program.encode());
            out
        }
    }
}

/// The oracle the fuzzer entry points use: `STOPFUZZ_ORACLE=crash-only` keeps only
/// `no-panic` (for measuring what a crash-only harness sees); anything else is full.
fn fuzz_oracle() -> OracleLevel {
    static LEVEL: OnceLock<OracleLevel> = OnceLock::new();
    *LEVEL.get_or_init(|| match std::env::var("STOPFUZZ_ORACLE").as_deref() {
        Ok("crash-only") => OracleLevel::CrashOnly,
        _ => OracleLevel::Full,
    })
}

/// With `STOPFUZZ_STATS` set, the fuzzer entry points print `stopfuzz-stats: execs=N ops=M`
/// to stderr every 16,384 executions: libFuzzer and AFL++ count executions, and comparing
/// them with the explorer needs ops (ci/bench-libfuzzer.sh).
fn count(report: &Report) {
    static ON: OnceLock<bool> = OnceLock::new();
    static EXECS: AtomicU64 = AtomicU64::new(0);
    static OPS: AtomicU64 = AtomicU64::new(0);
    if !*ON.get_or_init(|| std::env::var_os("STOPFUZZ_STATS").is_some()) {
        return;
    }
    let ops = OPS.fetch_add(report.ops as u64, Ordering::Relaxed) + report.ops as u64;
    let execs = EXECS.fetch_add(1, Ordering::Relaxed) + 1;
    if execs.is_multiple_of(16_384) {
        eprintln!("stopfuzz-stats: execs={execs} ops={ops}");
    }
}

fn panic_on(report: Report) {
    count(&report);
    if let Outcome::Finding(f) = report.outcome {
        panic!(
            "stopfuzz finding: {} at step {}: {}",
            f.invariant, f.step, f.message
        );
    }
}

/// The `blk_conforming` target for fuzzers: panics on a finding.
pub fn blk_conforming(data: &[u8]) {
    panic_on(Target::BlkConforming.run_with(data, false, fuzz_oracle()))
}

/// The `blk_hostile` target for fuzzers: panics on a finding.
pub fn blk_hostile(data: &[u8]) {
    panic_on(Target::BlkHostile.run_with(data, false, fuzz_oracle()))
}

/// The `snapshot` target for fuzzers: panics on a finding.
pub fn snapshot(data: &[u8]) {
    panic_on(Target::Snapshot.run_with(data, false, fuzz_oracle()))
}
