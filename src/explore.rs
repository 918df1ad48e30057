//! The built-in explorer behind `stopfuzz run`: seeded random programs with swarm testing,
//! on every core, with no tool beyond cargo.
//!
//! Execution `i` is a function of `(seed, i)` alone, and the digest folds each execution's
//! report in index order, so a seed and an exec count give one digest whatever the number
//! of jobs. Each batch of [`BATCH`] executions enables a random subset of op kinds (swarm
//! testing): a program without, say, resets reaches states that one full of them never does.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::{RngCore, SeedableRng};

use crate::dut::{DeviceKind, vhost_user};
use crate::engine::{Finding, OracleLevel, Outcome, Report, Scenarios};
use crate::oracle::Invariant;
use crate::oracle::skipped::Skip;
use crate::program::{MAX_OPS, OpKind};
use crate::targets::Target;
use crate::trace::Digest;

/// Executions that share one swarm configuration.
pub const BATCH: u64 = 64;
/// Findings saved per invariant, so one bug does not fill the disk.
const SAVED_PER_INVARIANT: usize = 3;

/// How long to explore.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Budget {
    /// Stop after this many seconds.
    Seconds(u64),
    /// Run exactly this many executions.
    Execs(u64),
}

/// What to explore, and how.
#[derive(Clone, Debug)]
pub struct Options {
    /// The target every input goes through.
    pub target: Target,
    /// The device under test.
    pub device: DeviceKind,
    /// When to stop.
    pub budget: Budget,
    /// The seed every input derives from, with its execution index.
    pub seed: u64,
    /// Worker threads.
    pub jobs: usize,
    /// Where to save findings; `None` saves nothing.
    pub out: Option<PathBuf>,
    /// Print a progress line every second.
    pub progress: bool,
    /// How much the oracle checks.
    pub oracle: OracleLevel,
    /// End at the first finding (for measuring time to detection).
    pub stop_on_first: bool,
    /// Op kinds left out of every program (to measure a device without, say, migration).
    pub without: Vec<OpKind>,
}

/// What an exploration found.
#[derive(Clone, Debug, Default)]
pub struct Summary {
    /// Executions folded in so far.
    pub execs: u64,
    /// Time since the exploration started.
    pub elapsed: Duration,
    /// Executions that ended in a finding.
    pub findings: u64,
    /// Ops in the programs executed.
    pub ops: u64,
    /// Every execution's report digest, folded in index order; set at the end.
    pub digest: u64,
    /// How many executions reached each scenario, in [`Scenarios::NAMES`] order.
    pub scenarios: [u64; Scenarios::NAMES.len()],
    /// Findings per invariant.
    pub by_invariant: BTreeMap<Invariant, u64>,
    /// The first finding of each invariant, with its input.
    pub examples: BTreeMap<Invariant, (Vec<u8>, Finding)>,
    /// The first finding in execution order: its index, when it was folded, what fired.
    pub first: Option<(u64, Duration, Invariant)>,
    /// Checks the device's capabilities left without input, in any execution.
    pub skipped: Vec<Skip>,
}

impl Summary {
    /// Executions per second so far.
    pub fn execs_per_s(&self) -> f64 {
        self.execs as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Program ops per second so far.
    pub fn ops_per_s(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// The one closing line of `stopfuzz run`.
    pub fn line(&self, target: Target) -> String {
        format!(
            "summary: target={} execs={} execs_per_s={:.0} ops_per_s={:.0} findings={} digest={:016x}",
            target.name(),
            self.execs,
            self.execs_per_s(),
            self.ops_per_s(),
            self.findings,
            self.digest
        )
    }

    /// `name=count` for each scenario, space-separated.
    pub fn scenario_counts(&self) -> String {
        Scenarios::NAMES
            .iter()
            .zip(self.scenarios)
            .map(|((_, name), n)| format!("{name}={n}"))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// The input of execution `index`.
pub fn input(target: Target, seed: u64, index: u64) -> Vec<u8> {
    input_without(target, seed, index, &[])
}

/// The input of execution `index`, with no op of the kinds `without`.
pub fn input_without(target: Target, seed: u64, index: u64, without: &[OpKind]) -> Vec<u8> {
    let mut kinds = swarm(target, seed, index / BATCH);
    kinds.retain(|k| !without.contains(k));
    let mut rng = ChaCha8Rng::seed_from_u64(mix(seed, index));
    let mut program = Vec::with_capacity(7 + 4 * 64);
    program.push(crate::program::FORMAT_VERSION);
    let mut config = [0u8; 6];
    rng.fill_bytes(&mut config);
    // Rings start at 0 half the time and just below the wrap a quarter of the time.
    let start: u16 = match rng.next_u32() % 4 {
        0 | 1 => 0,
        2 => 0xffff - (rng.next_u32() % 48) as u16,
        _ => rng.next_u32() as u16,
    };
    config[3..5].copy_from_slice(&start.to_le_bytes());
    program.extend_from_slice(&config);
    let ops = match rng.next_u32() % 8 {
        0 => 1 + rng.next_u32() as usize % MAX_OPS,
        _ => 8 + rng.next_u32() as usize % 96,
    };
    for _ in 0..ops {
        let mut op = [0u8; 4];
        rng.fill_bytes(&mut op);
        let kind = kinds[rng.next_u32() as usize % kinds.len()];
        op[0] = OpKind::ALL.iter().position(|k| *k == kind).unwrap() as u8;
        program.extend_from_slice(&op);
    }
    match target {
        Target::Snapshot => {
            let mut head = [0u8; 2 + 3 * 8];
            rng.fill_bytes(&mut head);
            // Mostly mutate a real snapshot; sometimes restore raw bytes.
            head[0] = u8::from(rng.next_u32() % 8 == 0);
            if head[0] == 1 {
                return [&head[..1], &program[..]].concat();
            }
            [&head[..], &program[..]].concat()
        }
        _ => program,
    }
}

/// The op kinds that make requests happen: in every program.
pub const CORE: [OpKind; 5] = [
    OpKind::Submit,
    OpKind::Publish,
    OpKind::Kick,
    OpKind::Poll,
    OpKind::Complete,
];

/// The op kinds batch `batch` may use: the [`CORE`], plus a random half of the rest.
fn swarm(target: Target, seed: u64, batch: u64) -> Vec<OpKind> {
    let mut rng = ChaCha8Rng::seed_from_u64(mix(seed ^ 0x5377_6172_6d00, batch));
    OpKind::ALL
        .into_iter()
        .filter(|k| target == Target::BlkHostile || !k.is_hostile())
        .filter(|k| CORE.contains(k) || rng.next_u32() % 2 == 0)
        .collect()
}

fn mix(seed: u64, index: u64) -> u64 {
    let mut d = Digest::default();
    d.u64(seed);
    d.u64(index);
    d.value()
}

/// Indices a worker claims at a time: one channel message per claim, not per execution.
const CLAIM: u64 = 64;

/// One execution's result, sent from a worker. The input travels only with a finding: a
/// buffer freed on another thread than the one that allocated it costs the allocator a
/// lock, and a passing input is never looked at again.
struct Done {
    index: u64,
    input: Option<Vec<u8>>,
    report: Report,
    /// When it finished, from the start of the exploration.
    finished: Duration,
}

/// Runs the exploration. `on_progress` is called about once a second with the running
/// summary (for the progress line).
pub fn explore(opts: &Options, mut on_progress: impl FnMut(&Summary)) -> Summary {
    let start = Instant::now();
    let next = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    let (tx, rx) = mpsc::channel::<Vec<Done>>();
    let mut summary = Summary::default();
    let mut digest = Digest::default();
    std::thread::scope(|scope| {
        for _ in 0..opts.jobs.max(1) {
            let tx = tx.clone();
            let (next, stop) = (&next, &stop);
            scope.spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let first = next.fetch_add(CLAIM, Ordering::Relaxed);
                    let end = match opts.budget {
                        Budget::Execs(n) => (first + CLAIM).min(n),
                        Budget::Seconds(_) => first + CLAIM,
                    };
                    if first >= end {
                        break;
                    }
                    // A stop ends a claim early, and so does a finding when the first one
                    // ends the exploration: a slow device (QEMU with migrations, a few
                    // executions a second) would otherwise finish all 64 first. Indices
                    // after a finding may go unrun; the fold never passes a finding then.
                    let mut batch = Vec::new();
                    for index in first..end {
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                        let input = input_without(opts.target, opts.seed, index, &opts.without);
                        let report = opts.target.run_on(opts.device, &input, false, opts.oracle);
                        let finding = matches!(report.outcome, Outcome::Finding(_));
                        batch.push(Done {
                            index,
                            input: finding.then_some(input),
                            report,
                            finished: start.elapsed(),
                        });
                        if finding && opts.stop_on_first {
                            break;
                        }
                    }
                    if tx.send(batch).is_err() {
                        break;
                    }
                }
            });
        }
        drop(tx);
        let mut pending = BTreeMap::new();
        let mut last_progress = Instant::now();
        loop {
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(batch) => {
                    for done in batch {
                        pending.insert(done.index, done);
                    }
                    while let Some(done) = pending.remove(&summary.execs) {
                        let finished = done.finished;
                        fold(&mut summary, &mut digest, done, opts);
                        if summary.first.is_none() && summary.findings > 0 {
                            summary.first =
                                Some((summary.execs - 1, finished, first_invariant(&summary)));
                            if opts.stop_on_first {
                                stop.store(true, Ordering::Relaxed);
                            }
                        }
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
            if let Budget::Seconds(s) = opts.budget
                && start.elapsed() >= Duration::from_secs(s)
            {
                stop.store(true, Ordering::Relaxed);
            }
            if opts.progress && last_progress.elapsed() >= Duration::from_secs(1) {
                last_progress = Instant::now();
                summary.elapsed = start.elapsed();
                on_progress(&summary);
            }
        }
        // Workers finished: everything claimed has arrived, in a contiguous range.
        while let Some(done) = pending.remove(&summary.execs) {
            fold(&mut summary, &mut digest, done, opts);
        }
    });
    summary.elapsed = start.elapsed();
    summary.digest = digest.value();
    summary
}

fn first_invariant(summary: &Summary) -> Invariant {
    *summary
        .by_invariant
        .keys()
        .next()
        .expect("a finding was counted")
}

fn fold(summary: &mut Summary, digest: &mut Digest, done: Done, opts: &Options) {
    summary.execs += 1;
    summary.ops += done.report.ops as u64;
    digest.u64(done.report.digest);
    for skip in &done.report.skipped {
        if !summary.skipped.contains(skip) {
            summary.skipped.push(*skip);
            summary.skipped.sort();
        }
    }
    for (i, (flag, _)) in Scenarios::NAMES.iter().enumerate() {
        if done.report.scenarios.has(*flag) {
            summary.scenarios[i] += 1;
        }
    }
    if let (Outcome::Finding(f), Some(input)) = (done.report.outcome, done.input) {
        summary.findings += 1;
        let seen = summary.by_invariant.entry(f.invariant).or_insert(0);
        *seen += 1;
        if (*seen as usize) <= SAVED_PER_INVARIANT
            && let Some(dir) = &opts.out
            && let Err(e) = save_finding(dir, opts.target, opts.device, &input, &f)
        {
            eprintln!("stopfuzz: cannot save a finding in {}: {e}", dir.display());
        }
        summary.examples.entry(f.invariant).or_insert((input, f));
    }
}

/// Writes the raw input and a report with its trace and the command that replays it.
pub fn save_finding(
    dir: &std::path::Path,
    target: Target,
    device: DeviceKind,
    input: &[u8],
    f: &Finding,
) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let mut d = Digest::default();
    d.bytes(input);
    let name = format!("{}-{}-{:016x}", target.name(), f.invariant, d.value());
    let path = dir.join(&name);
    std::fs::write(&path, input)?;
    let traced = target.run_on(device, input, true, OracleLevel::Full);
    let trace = traced.trace.map(|t| t.cut(f.step)).unwrap_or_default();
    // Only an invariant's first saved finding is re-run: re-runs against a device in
    // another process cost as much as exploring.
    let first = std::fs::read_dir(dir).is_ok_and(|d| {
        !d.flatten().any(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            name.ends_with(".txt")
                && name.starts_with(&format!("{}-{}-", target.name(), f.invariant))
        })
    });
    let rate = if deterministic(device) || !first {
        String::new()
    } else {
        // The run above counts too.
        let again = matches!(&traced.outcome, Outcome::Finding(g) if g.invariant == f.invariant);
        let hits = reproductions(
            target,
            device,
            input,
            f.invariant,
            REPRO_RUNS - 1,
            OracleLevel::Full,
        );
        format!("reproduced: {}/{REPRO_RUNS}\n", hits + u32::from(again))
    };
    let report = format!(
        "target: {}\ndevice: {device}\ninvariant: {}\nstep: {}\n{}\n{rate}\nreplay: cargo run --release -- replay --target {}{} {}\n\n{}",
        target.name(),
        f.invariant,
        f.step,
        f.message,
        target.name(),
        device_args(device),
        path.display(),
        trace
    );
    std::fs::write(dir.join(format!("{name}.txt")), report)?;
    Ok(path)
}

/// Re-runs of a finding against a device that is not deterministic.
pub const REPRO_RUNS: u32 = 20;

/// Whether the same input always gives the same run on `device`.
pub fn deterministic(device: DeviceKind) -> bool {
    !matches!(device, DeviceKind::VhostUser(_) | DeviceKind::Qemu(_))
}

/// How many of `runs` re-runs of `input` find `invariant` again.
pub fn reproductions(
    target: Target,
    device: DeviceKind,
    input: &[u8],
    invariant: Invariant,
    runs: u32,
    oracle: OracleLevel,
) -> u32 {
    (0..runs)
        .filter(|_| {
            matches!(
                target.run_on(device, input, false, oracle).outcome,
                Outcome::Finding(f) if f.invariant == invariant
            )
        })
        .count() as u32
}

/// `s` as one shell word.
fn quoted(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// The command-line arguments that select `device` (empty for the reference).
pub fn device_args(device: DeviceKind) -> String {
    match device {
        DeviceKind::Reference => String::new(),
        DeviceKind::Reduced(hidden) => format!(" --device reduced --hide {}", hidden.names()),
        DeviceKind::VhostUser(t) => format!(
            " --device vhost-user --backend {} --backend-policy {}{}{}{}",
            quoted(&t.text),
            t.policy_text(),
            if t.id == vhost_user::template::QSD_ID {
                String::new()
            } else {
                format!(" --backend-id {}", quoted(&t.id))
            },
            if t.reuse { " --reuse-backend" } else { "" },
            if t.known == Default::default() && t.text == vhost_user::template::QSD {
                " --strict"
            } else {
                ""
            }
        ),
        DeviceKind::Qemu(q) => {
            let mut args = " --device qemu".to_string();
            if q.binary != crate::dut::qemu::QEMU {
                args += &format!(" --qemu {}", quoted(&q.binary));
            }
            for a in &q.extra {
                args += &format!(" --qemu-arg {}", quoted(a));
            }
            args += &format!(
                " --qemu-policy {}",
                crate::dut::qemu::Qemu::policy_text(q.declared)
            );
            if q.given != q.declared {
                args += &format!(
                    " --qemu-given {}",
                    crate::dut::qemu::Qemu::policy_text(q.given)
                );
            }
            if !q.reuse {
                args += " --qemu-fresh";
            }
            if q.strict {
                args += " --strict";
            }
            args
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inputs_depend_only_on_seed_and_index() {
        for target in Target::ALL {
            assert_eq!(input(target, 7, 100), input(target, 7, 100));
            assert_ne!(input(target, 7, 100), input(target, 7, 101));
            assert_ne!(input(target, 7, 100), input(target, 8, 100));
        }
    }

    #[test]
    fn without_leaves_an_op_kind_out_of_every_program() {
        let migrates = |bytes: Vec<u8>| {
            crate::program::Program::decode(&bytes)
                .ops
                .iter()
                .any(|o| o.kind() == OpKind::Migrate)
        };
        let t = Target::BlkConforming;
        assert!((0..200).any(|i| migrates(input(t, 3, i))));
        assert!(!(0..200).any(|i| migrates(input_without(t, 3, i, &[OpKind::Migrate]))));
    }

    #[test]
    fn swarm_keeps_the_core_and_hostile_ops_only_for_hostile() {
        for batch in 0..20 {
            let kinds = swarm(Target::BlkConforming, 1, batch);
            assert!(kinds.contains(&OpKind::Submit) && kinds.contains(&OpKind::Poll));
            assert!(kinds.iter().all(|k| !k.is_hostile()));
        }
        let hostile = (0..20).any(|b| {
            swarm(Target::BlkHostile, 1, b)
                .iter()
                .any(|k| k.is_hostile())
        });
        assert!(hostile);
    }

    #[test]
    fn the_digest_does_not_depend_on_jobs() {
        let run = |jobs| {
            let opts = Options {
                target: Target::BlkConforming,
                device: DeviceKind::Reference,
                budget: Budget::Execs(200),
                seed: 42,
                jobs,
                out: None,
                progress: false,
                oracle: OracleLevel::Full,
                stop_on_first: false,
                without: Vec::new(),
            };
            explore(&opts, |_| {})
        };
        let (one, two) = (run(1), run(2));
        assert_eq!(one.execs, 200);
        assert_eq!((one.digest, one.findings), (two.digest, two.findings));
    }
}
