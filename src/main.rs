//! The `stopfuzz` command line.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use stopfuzz::engine::{OracleLevel, Outcome};
use stopfuzz::explore::{self, Budget, Options};
use stopfuzz::program::Program;
use stopfuzz::targets::Target;

#[derive(Parser)]
#[command(
    name = "stopfuzz",
    version,
    about = "Fuzz virtio devices through stop, resume, migration, reset and I/O retry"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Explore the reference device with seeded random programs (swarm testing).
    Run {
        /// blk_conforming, blk_hostile or snapshot.
        #[arg(long, default_value = "blk_conforming")]
        target: Target,
        /// Run for this many seconds (default 60).
        #[arg(long, conflicts_with = "execs")]
        seconds: Option<u64>,
        /// Run exactly this many executions.
        #[arg(long)]
        execs: Option<u64>,
        /// Seed for every input; printed when chosen at random.
        #[arg(long)]
        seed: Option<u64>,
        /// Worker threads (default: every core).
        #[arg(long)]
        jobs: Option<usize>,
        /// Where to save findings (raw input plus a .txt report).
        #[arg(long, default_value = "findings")]
        out: PathBuf,
        /// full, or crash-only (only no-panic, the checks not run).
        #[arg(long, default_value = "full", value_parser = parse_oracle)]
        oracle: OracleLevel,
    },
    /// Measure how fast each planted bug is found (needs --features mutants).
    Bench {
        /// Budget per (mutant, seed).
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// Independent seeds per mutant.
        #[arg(long, default_value_t = 5)]
        seeds: u64,
        /// explorer or libfuzzer.
        #[arg(long, default_value = "explorer")]
        engine: String,
        /// full, or crash-only.
        #[arg(long, default_value = "full", value_parser = parse_oracle)]
        oracle: OracleLevel,
        /// Worker threads for the explorer (default: every core).
        #[arg(long)]
        jobs: Option<usize>,
        /// Where the libFuzzer binaries built with the mutants feature are.
        #[arg(
            long,
            default_value = "target/fuzz-mutants/x86_64-unknown-linux-gnu/release"
        )]
        fuzz_bin: PathBuf,
    },
    /// Write the seed corpus (corpus/<target>/seed-<name>), checking each seed passes.
    Seeds {
        #[arg(long, default_value = "corpus")]
        out: PathBuf,
    },
    /// Run inputs and print each outcome.
    Replay {
        /// Input files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// The target; by default taken from the path (corpus/<target>/...) or file name.
        #[arg(long)]
        target: Option<Target>,
        /// Print every step.
        #[arg(long)]
        trace: bool,
        /// Draw the rings at the end, as the mailing-list thread does.
        #[arg(long)]
        rings: bool,
    },
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    match cli.command {
        Command::Run {
            target,
            seconds,
            execs,
            seed,
            jobs,
            out,
            oracle,
        } => run(target, seconds, execs, seed, jobs, out, oracle),
        Command::Replay {
            files,
            target,
            trace,
            rings,
        } => replay(&files, target, trace, rings),
        Command::Seeds { out } => seeds(&out),
        Command::Bench {
            seconds,
            seeds,
            engine,
            oracle,
            jobs,
            fuzz_bin,
        } => bench(seconds, seeds, &engine, oracle, jobs, fuzz_bin),
    }
}

fn run(
    target: Target,
    seconds: Option<u64>,
    execs: Option<u64>,
    seed: Option<u64>,
    jobs: Option<usize>,
    out: PathBuf,
    oracle: OracleLevel,
) -> ExitCode {
    let budget = match (seconds, execs) {
        (_, Some(n)) => Budget::Execs(n),
        (Some(s), None) => Budget::Seconds(s),
        (None, None) => Budget::Seconds(60),
    };
    let seed = seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
    });
    let jobs = jobs
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .max(1);
    eprintln!(
        "stopfuzz run: target={} seed={seed} jobs={jobs} budget={budget:?} out={}",
        target.name(),
        out.display()
    );
    silence_panics();
    let opts = Options {
        target,
        budget,
        seed,
        jobs,
        out: Some(out.clone()),
        progress: true,
        oracle,
        stop_on_first: false,
    };
    let summary = explore::explore(&opts, |s| {
        eprintln!(
            "[{:>4}s] execs {} ({:.0}/s) findings {} | {}",
            s.elapsed.as_secs(),
            s.execs,
            s.execs_per_s(),
            s.findings,
            s.scenario_counts()
        );
    });
    eprintln!("scenarios: {}", summary.scenario_counts());
    for (invariant, (_, f)) in &summary.examples {
        eprintln!(
            "finding: {invariant} x{} (first at step {}: {})",
            summary.by_invariant[invariant], f.step, f.message
        );
    }
    if summary.findings > 0 {
        eprintln!("inputs and reports saved in {}", out.display());
    }
    println!("{}", summary.line(target));
    ExitCode::from(u8::from(summary.findings > 0))
}

fn replay(files: &[PathBuf], target: Option<Target>, trace: bool, rings: bool) -> ExitCode {
    silence_panics();
    let mut found = false;
    for file in files {
        let data = match std::fs::read(file) {
            Ok(d) => d,
            Err(e) => {
                eprintln!("stopfuzz: cannot read {}: {e}", file.display());
                return ExitCode::from(2);
            }
        };
        let Some(target) = target.or_else(|| target_of(file)) else {
            eprintln!(
                "stopfuzz: cannot tell the target of {}; pass --target",
                file.display()
            );
            return ExitCode::from(2);
        };
        let report = target.run(&data, trace || rings);
        let outcome = match &report.outcome {
            Outcome::Pass => "pass".to_string(),
            Outcome::Finding(f) => {
                found = true;
                format!("FINDING {} at step {}: {}", f.invariant, f.step, f.message)
            }
        };
        println!("{}: {} {outcome}", file.display(), target.name());
        if trace && let Some(t) = &report.trace {
            let step = match &report.outcome {
                Outcome::Finding(f) => f.step,
                Outcome::Pass => usize::MAX,
            };
            print!("{}", t.cut(step));
        }
        if rings && target != Target::Snapshot {
            print!("{}", draw(&data, target));
        }
    }
    ExitCode::from(u8::from(found))
}

#[cfg(not(feature = "mutants"))]
fn bench(_: u64, _: u64, _: &str, _: OracleLevel, _: Option<usize>, _: PathBuf) -> ExitCode {
    eprintln!(
        "stopfuzz bench needs the planted bugs: cargo run --release --features mutants -- bench"
    );
    ExitCode::from(2)
}

#[cfg(feature = "mutants")]
fn bench(
    seconds: u64,
    seeds: u64,
    engine: &str,
    oracle: OracleLevel,
    jobs: Option<usize>,
    fuzz_bin_dir: PathBuf,
) -> ExitCode {
    use stopfuzz::bench::{self, BenchOptions, Engine};
    let engine = match engine {
        "explorer" => Engine::Explorer,
        "libfuzzer" => Engine::LibFuzzer,
        other => {
            eprintln!("stopfuzz: unknown engine {other:?}; expected explorer or libfuzzer");
            return ExitCode::from(2);
        }
    };
    if engine == Engine::LibFuzzer && !fuzz_bin_dir.join("blk_conforming").exists() {
        eprintln!(
            "stopfuzz: no libFuzzer binaries in {}; build them with\n  cargo fuzz build --sanitizer none --features mutants --target-dir target/fuzz-mutants",
            fuzz_bin_dir.display()
        );
        return ExitCode::from(2);
    }
    silence_panics();
    let opts = BenchOptions {
        seconds,
        seeds,
        engine,
        oracle,
        jobs: jobs.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
        fuzz_bin_dir,
    };
    eprintln!("stopfuzz bench: {opts:?}");
    let results = bench::bench(&opts, |m, seed, a| {
        eprintln!(
            "{} seed {seed}: {} in {:.2} s ({} execs) {}",
            m.name(),
            if a.found { "found" } else { "missed" },
            a.time.as_secs_f64(),
            a.execs.map_or("?".into(), |e| e.to_string()),
            a.invariant.map_or("", |i| i.id())
        );
    });
    let (rows, summary) = bench::table(&results);
    for row in rows {
        eprintln!("{row}");
    }
    println!("{summary}");
    ExitCode::SUCCESS
}

fn seeds(out: &Path) -> ExitCode {
    silence_panics();
    let mut written = 0;
    for seed in stopfuzz::seeds::seeds() {
        if let Outcome::Finding(f) = seed.target.run(&seed.bytes, false).outcome {
            eprintln!(
                "stopfuzz: seed {} of {} does not pass: {} at step {}: {}",
                seed.name,
                seed.target.name(),
                f.invariant,
                f.step,
                f.message
            );
            return ExitCode::from(1);
        }
        let dir = out.join(seed.target.name());
        let path = dir.join(format!("seed-{}", seed.name));
        if let Err(e) =
            std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(&path, &seed.bytes))
        {
            eprintln!("stopfuzz: cannot write {}: {e}", path.display());
            return ExitCode::from(2);
        }
        written += 1;
    }
    println!("wrote {written} seeds under {}", out.display());
    ExitCode::SUCCESS
}

/// The ring drawing at the end of a run.
fn draw(data: &[u8], target: Target) -> String {
    let mode = if target == Target::BlkHostile {
        stopfuzz::engine::Mode::Hostile
    } else {
        stopfuzz::engine::Mode::Conforming
    };
    stopfuzz::engine::Engine::new().rings_after(&Program::decode(data), mode)
}

/// `corpus/<target>/...` or a file named `<target>-...`.
fn target_of(path: &Path) -> Option<Target> {
    let parent = path
        .parent()
        .and_then(|p| p.file_name())
        .and_then(|n| n.to_str());
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    Target::ALL
        .into_iter()
        .find(|t| parent == Some(t.name()) || name.starts_with(&format!("{}-", t.name())))
}

fn parse_oracle(s: &str) -> Result<OracleLevel, String> {
    match s {
        "full" => Ok(OracleLevel::Full),
        "crash-only" => Ok(OracleLevel::CrashOnly),
        _ => Err(format!("unknown oracle {s:?}; expected full or crash-only")),
    }
}

/// Panics inside runs are findings, reported as such; the default hook would print each one.
fn silence_panics() {
    std::panic::set_hook(Box::new(|_| {}));
}
