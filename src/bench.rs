//! `stopfuzz bench`: how fast the harness finds each planted bug.
//!
//! For every mutant and every seed, one engine fuzzes the mutant's target until the first
//! finding or the time budget. The explorer runs in process; libFuzzer runs as the cargo-fuzz
//! binaries built with the `mutants` feature, from an empty corpus, and its crash is replayed
//! here to name the invariant. Each mutant is fuzzed through the target whose ops can reach
//! it: restore checks through `snapshot`, ring abuse through `blk_hostile`, the rest through
//! `blk_conforming`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::dut::{DeviceKind, qemu};
use crate::engine::{OracleLevel, Outcome};
use crate::explore::{self, Budget, Options};
use crate::mutants::{self, Mutant};
use crate::oracle::Invariant;
use crate::targets::Target;

/// The fuzzer that hunts the mutants.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Engine {
    /// The built-in explorer, in process.
    Explorer,
    /// The cargo-fuzz binaries built with the `mutants` feature.
    LibFuzzer,
}

/// What `stopfuzz bench` runs.
#[derive(Clone, Debug)]
pub struct BenchOptions {
    /// Budget per (mutant, seed).
    pub seconds: u64,
    /// Seeds per mutant.
    pub seeds: u64,
    /// The fuzzer.
    pub engine: Engine,
    /// How much the oracle checks.
    pub oracle: OracleLevel,
    /// The device the explorer runs (libFuzzer's binaries run the reference).
    pub device: DeviceKind,
    /// Worker threads for the explorer.
    pub jobs: usize,
    /// Where the cargo-fuzz binaries are (for `Engine::LibFuzzer`).
    pub fuzz_bin_dir: PathBuf,
    /// The mutants to hunt; empty means every one.
    pub mutants: Vec<Mutant>,
}

/// One (mutant, seed) attempt.
#[derive(Clone, Debug)]
pub struct Attempt {
    /// The mutant was found.
    pub found: bool,
    /// Time to the finding, or the whole run when missed.
    pub time: Duration,
    /// Executions up to the finding, or in the whole run; `None` when unknown.
    pub execs: Option<u64>,
    /// The invariant that caught it.
    pub invariant: Option<Invariant>,
}

/// The target that can reach a mutant.
pub fn target_for(m: Mutant) -> Target {
    match m {
        Mutant::RestoreAcceptsInuseOverSize => Target::Snapshot,
        Mutant::ConsumeBeyondWindow => Target::BlkHostile,
        _ => Target::BlkConforming,
    }
}

/// The attempts at one planted bug: its name, the target that hunts it, each seed's attempt.
pub type Hunted = (String, Target, Vec<Attempt>);

/// Runs every attempt, reporting each as it finishes.
pub fn bench(opts: &BenchOptions, mut each: impl FnMut(&str, u64, &Attempt)) -> Vec<Hunted> {
    let mut out = Vec::new();
    let chosen = Mutant::ALL
        .iter()
        .filter(|m| opts.mutants.is_empty() || opts.mutants.contains(m));
    for &m in chosen {
        let mut attempts = Vec::new();
        for seed in 0..opts.seeds {
            let attempt = match opts.engine {
                Engine::Explorer => {
                    mutants::select(Some(m));
                    hunt(opts, target_for(m), opts.device, seed)
                }
                Engine::LibFuzzer => libfuzzer_attempt(opts, m, seed),
            };
            each(m.name(), seed, &attempt);
            attempts.push(attempt);
        }
        out.push((m.name().to_string(), target_for(m), attempts));
    }
    mutants::select(None);
    out
}

/// Runs the explorer on every bug planted in QEMU's configuration ([`qemu::PLANTED`]):
/// QEMU is given other error policies than the model expects.
pub fn bench_qemu(
    opts: &BenchOptions,
    qemu: &qemu::Qemu,
    mut each: impl FnMut(&str, u64, &Attempt),
) -> Vec<Hunted> {
    let mut out = Vec::new();
    for planted in qemu::PLANTED {
        let device = DeviceKind::Qemu(Box::leak(Box::new(qemu::Qemu {
            declared: planted.declared,
            given: planted.given,
            ..qemu.clone()
        })));
        let attempts: Vec<Attempt> = (0..opts.seeds)
            .map(|seed| {
                let a = hunt(opts, Target::BlkConforming, device, seed);
                each(planted.name, seed, &a);
                a
            })
            .collect();
        out.push((planted.name.to_string(), Target::BlkConforming, attempts));
    }
    out
}

/// The explorer on `device` through `target` until the first finding or the budget.
fn hunt(opts: &BenchOptions, target: Target, device: DeviceKind, seed: u64) -> Attempt {
    let summary = explore::explore(
        &Options {
            target,
            device,
            budget: Budget::Seconds(opts.seconds),
            seed,
            jobs: opts.jobs,
            out: None,
            progress: false,
            oracle: opts.oracle,
            stop_on_first: true,
            without: Vec::new(),
        },
        |_| {},
    );
    match summary.first {
        Some((index, time, invariant)) => Attempt {
            found: true,
            time,
            execs: Some(index + 1),
            invariant: Some(invariant),
        },
        None => Attempt {
            found: false,
            time: summary.elapsed,
            execs: Some(summary.execs),
            invariant: None,
        },
    }
}

fn libfuzzer_attempt(opts: &BenchOptions, m: Mutant, seed: u64) -> Attempt {
    let target = target_for(m);
    let binary = opts.fuzz_bin_dir.join(target.name());
    let work = std::env::temp_dir().join(format!(
        "stopfuzz-bench-{}-{}-{seed}",
        std::process::id(),
        m.name()
    ));
    let _ = std::fs::remove_dir_all(&work);
    let corpus = work.join("corpus");
    let _ = std::fs::create_dir_all(&corpus);
    let oracle = match opts.oracle {
        OracleLevel::Full => "full",
        OracleLevel::CrashOnly => "crash-only",
    };
    let start = Instant::now();
    let output = Command::new(&binary)
        .arg(format!("-seed={}", seed + 1))
        .arg(format!("-max_total_time={}", opts.seconds))
        .arg(format!("-artifact_prefix={}/", work.display()))
        .arg("-print_final_stats=1")
        .arg(&corpus)
        .env("STOPFUZZ_MUTANT", m.name())
        .env("STOPFUZZ_ORACLE", oracle)
        .output();
    let time = start.elapsed();
    let Ok(output) = output else {
        eprintln!("stopfuzz bench: cannot run {}", binary.display());
        return Attempt {
            found: false,
            time,
            execs: None,
            invariant: None,
        };
    };
    let stderr = String::from_utf8_lossy(&output.stderr);
    let execs = stderr
        .lines()
        .rev()
        .filter_map(|l| l.strip_prefix("stat::number_of_executed_units: "))
        .find_map(|n| n.trim().parse().ok());
    // A crash counts only if it replays as a finding on the mutant and passes on the
    // reference: a harness false positive or a timeout is not a detection.
    let invariant = crash_file(&work).and_then(|path| {
        let data = std::fs::read(path).ok()?;
        mutants::select(Some(m));
        let on_mutant = target.run_with(&data, false, opts.oracle).outcome;
        mutants::select(None);
        let on_reference = target.run(&data, false).outcome;
        match (on_mutant, on_reference) {
            (Outcome::Finding(f), Outcome::Pass) => Some(f.invariant),
            _ => None,
        }
    });
    let _ = std::fs::remove_dir_all(&work);
    Attempt {
        found: invariant.is_some(),
        time,
        execs,
        invariant,
    }
}

fn crash_file(dir: &Path) -> Option<PathBuf> {
    std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("crash-"))
        })
}

/// The median time to detection, counting a miss as never; `None` when most seeds missed.
pub fn median(attempts: &[Attempt]) -> Option<Duration> {
    let mut times: Vec<Option<Duration>> =
        attempts.iter().map(|a| a.found.then_some(a.time)).collect();
    times.sort_by_key(|t| t.unwrap_or(Duration::MAX));
    times.get(times.len() / 2).copied().flatten()
}

/// The table rows and the summary line.
pub fn table(results: &[Hunted]) -> (Vec<String>, String) {
    let mut rows = vec![
        "| mutant | target | found | median time | median execs | invariants |".to_string(),
        "|---|---|---|---|---|---|".to_string(),
    ];
    let mut medians = Vec::new();
    for (name, target, attempts) in results {
        let found = attempts.iter().filter(|a| a.found).count();
        let median_time = median(attempts);
        if let Some(t) = median_time {
            medians.push(t);
        }
        let mut execs: Vec<u64> = attempts
            .iter()
            .filter(|a| a.found)
            .filter_map(|a| a.execs)
            .collect();
        execs.sort_unstable();
        let mut invariants: Vec<&str> = attempts
            .iter()
            .filter_map(|a| a.invariant)
            .map(|i| i.id())
            .collect();
        invariants.sort_unstable();
        invariants.dedup();
        rows.push(format!(
            "| {name} | {} | {found}/{} | {} | {} | {} |",
            target.name(),
            attempts.len(),
            median_time.map_or("miss".into(), |t| format!("{:.3} s", t.as_secs_f64())),
            execs
                .get(execs.len() / 2)
                .map_or("-".into(), |e| e.to_string()),
            if invariants.is_empty() {
                "-".into()
            } else {
                invariants.join(", ")
            },
        ));
    }
    medians.sort();
    // The median over all mutants, a missed one counting as never.
    let overall = medians
        .get(results.len() / 2)
        .map_or("inf".to_string(), |t| format!("{:.3}", t.as_secs_f64()));
    let summary = format!(
        "summary: mutants={} found={} median_s={overall}",
        results.len(),
        medians.len()
    );
    (rows, summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attempt(found: bool, secs: u64) -> Attempt {
        Attempt {
            found,
            time: Duration::from_secs(secs),
            execs: None,
            invariant: None,
        }
    }

    #[test]
    fn a_median_counts_misses_as_never() {
        let a = [attempt(true, 3), attempt(false, 60), attempt(true, 1)];
        assert_eq!(median(&a), Some(Duration::from_secs(3)));
        let b = [attempt(true, 3), attempt(false, 60), attempt(false, 60)];
        assert_eq!(median(&b), None);
    }
}
