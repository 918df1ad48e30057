//! The `stopfuzz` command line.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use stopfuzz::dut::reduced::Hidden;
use stopfuzz::dut::vhost_user::{self, Template};
use stopfuzz::dut::{DeviceKind, qemu};
use stopfuzz::engine::{OracleLevel, Outcome};
use stopfuzz::explore::{self, Budget, Options};
use stopfuzz::oracle::skipped::Skip;
use stopfuzz::program::{FORMAT_VERSION, OpKind, Program};
use stopfuzz::targets::Target;

/// Which device to run against.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum DeviceArg {
    /// The in-process reference device.
    Reference,
    /// The reference behind a wrapper hiding the capabilities given by --hide.
    Reduced,
    /// A vhost-user back-end that stopfuzz starts from --backend.
    VhostUser,
    /// QEMU's own virtio-blk-pci, driven through qtest and QMP (--qemu, --qemu-policy).
    Qemu,
}

/// The device options shared by run, replay and bench.
#[derive(clap::Args, Clone, Debug)]
struct DeviceOpts {
    /// The device under test.
    #[arg(long, value_enum, default_value = "reference")]
    device: DeviceArg,
    /// With --device reduced: the capabilities to hide, `all` or a comma-separated list of
    /// introspection, exact-writes, disk-control, snapshot-inspection.
    #[arg(long, default_value = "all", value_parser = Hidden::parse)]
    hide: Hidden,
    /// With --device vhost-user: the back-end command, with {socket} (required), {image}
    /// and {blockdev} (QEMU --blockdev arguments with faults and throttling) placeholders.
    #[arg(long, default_value = stopfuzz::dut::vhost_user::template::QSD)]
    backend: String,
    /// With --device vhost-user: the error policy the back-end implements, `report` (every
    /// failed request completes with IOERR, as qemu-storage-daemon does), `ignore`, or
    /// `write=P,read=P`.
    #[arg(long, default_value = "report")]
    backend_policy: String,
    /// With --device vhost-user: what the back-end answers GET_ID with (`stopfuzz serve`
    /// answers `stopfuzz-reference`).
    #[arg(long, default_value = stopfuzz::dut::vhost_user::template::QSD_ID)]
    backend_id: String,
    /// With --device vhost-user: keep one back-end process per worker for the next input
    /// where that looks sound, instead of a fresh one per input. Measured: about 10% faster,
    /// the same invariants found, and rare setup-time findings (3 in 1344 inputs) that do
    /// not reproduce alone, so off by default.
    #[arg(long)]
    reuse_backend: bool,
    /// With --device vhost-user or qemu: also report the device's known, documented
    /// deviations (docs/findings/), which are let pass or avoided by default so that
    /// fuzzing gets past them.
    #[arg(long)]
    strict: bool,
    /// With --device qemu: the QEMU binary.
    #[arg(long, default_value = stopfuzz::dut::qemu::QEMU)]
    qemu: String,
    /// With --device qemu: an extra QEMU argument (repeat for several).
    #[arg(long = "qemu-arg", allow_hyphen_values = true)]
    qemu_arg: Vec<String>,
    /// With --device qemu: the error policies QEMU runs with, `WERROR[,RERROR]` (`report`,
    /// `ignore`, `stop`, `enospc`); the model expects what they imply.
    #[arg(long, default_value = "report")]
    qemu_policy: String,
    /// With --device qemu: give QEMU these policies instead, while the model still expects
    /// --qemu-policy: a bug planted in the configuration.
    #[arg(long)]
    qemu_given: Option<String>,
    /// With --device qemu: a fresh QEMU for every input, instead of one per worker reset
    /// between inputs.
    #[arg(long)]
    qemu_fresh: bool,
}

impl DeviceOpts {
    /// The device, or why the options do not describe one.
    fn kind(&self) -> Result<DeviceKind, String> {
        Ok(match self.device {
            DeviceArg::Reference => DeviceKind::Reference,
            DeviceArg::Reduced => DeviceKind::Reduced(self.hide),
            DeviceArg::VhostUser => {
                let mut t = Template::parse(&self.backend, &self.backend_policy)?;
                t.reuse = self.reuse_backend;
                t.set_id(&self.backend_id)?;
                if self.strict {
                    t.known = Default::default();
                }
                // One template per command, alive until exit.
                DeviceKind::VhostUser(Box::leak(Box::new(t)))
            }
            DeviceArg::Qemu => {
                let declared = qemu::parse_policy(&self.qemu_policy)?;
                let given = match &self.qemu_given {
                    Some(g) => qemu::parse_policy(g)?,
                    None => declared,
                };
                DeviceKind::Qemu(Box::leak(Box::new(qemu::Qemu {
                    binary: self.qemu.clone(),
                    extra: self.qemu_arg.clone(),
                    declared,
                    given,
                    reuse: !self.qemu_fresh,
                    strict: self.strict,
                })))
            }
        })
    }
}

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
    /// Explore a device with seeded random programs (swarm testing).
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
        /// full, or crash-only (only no-panic, the checks not run; same runs otherwise).
        #[arg(long, value_enum, default_value = "full")]
        oracle: OracleLevel,
        /// Leave these ops out of every program (comma-separated, e.g. `migrate`), to
        /// measure a device without them. Submit, publish, kick, poll and complete stay.
        #[arg(long, value_delimiter = ',', value_parser = OpKind::parse)]
        without: Vec<OpKind>,
        #[command(flatten)]
        device: DeviceOpts,
    },
    /// Measure how fast each planted bug is found (needs --features mutants).
    Bench {
        /// Budget per (mutant, seed).
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// Independent seeds per mutant.
        #[arg(long, default_value_t = 5)]
        seeds: u64,
        /// The fuzzing engine.
        #[arg(long, value_enum, default_value = "explorer")]
        engine: BenchEngine,
        /// full, or crash-only.
        #[arg(long, value_enum, default_value = "full")]
        oracle: OracleLevel,
        #[command(flatten)]
        device: DeviceOpts,
        /// Worker threads for the explorer (default: every core).
        #[arg(long)]
        jobs: Option<usize>,
        /// Where the libFuzzer binaries built with the mutants feature are.
        #[arg(
            long,
            default_value = "target/fuzz-mutants/x86_64-unknown-linux-gnu/release"
        )]
        fuzz_bin: PathBuf,
        /// Only these planted bugs (repeatable; default: every one).
        #[arg(long = "mutant", value_name = "NAME")]
        mutants: Vec<String>,
    },
    /// Write the seed corpus (corpus/<target>/seed-<name>), checking each seed passes.
    Seeds {
        #[arg(long, default_value = "corpus")]
        out: PathBuf,
    },
    /// Show which values and pairs of the generator's dimensions the seeds and the
    /// explorer's inputs reach, and which they never reach.
    Reach {
        /// blk_conforming, blk_hostile or snapshot.
        #[arg(long, default_value = "blk_conforming")]
        target: Target,
        /// Explorer inputs to run after the seeds.
        #[arg(long, default_value_t = 20_000)]
        execs: u64,
        /// The explorer's seed.
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// Shrink a finding's input at the level of the program, keeping its invariant; writes
    /// the input, its trace and a Rust test.
    Minimize {
        file: PathBuf,
        /// The target; by default taken from the path or file name.
        #[arg(long)]
        target: Option<Target>,
        /// Where to write the minimized input (also PATH.txt and PATH.rs); default FILE.min.
        #[arg(long)]
        out: Option<PathBuf>,
        #[command(flatten)]
        device: DeviceOpts,
    },
    /// Minimize a finding's input and keep it as a regression input with a named test.
    Regress {
        file: PathBuf,
        /// What it found, in a few words: `kick-lost-after-resume`.
        #[arg(long)]
        name: String,
        #[arg(long)]
        target: Option<Target>,
        /// The repository to add it to.
        #[arg(long, default_value = ".")]
        repo: PathBuf,
        #[command(flatten)]
        device: DeviceOpts,
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
        /// Run each input this many times and print how often it found the same invariant
        /// (default: 1, or 20 for a device in another process).
        #[arg(long)]
        repeat: Option<u32>,
        /// full, or crash-only (the checks not run: the trace shows what the device does
        /// after the first finding).
        #[arg(long, value_enum, default_value = "full")]
        oracle: OracleLevel,
        #[command(flatten)]
        device: DeviceOpts,
    },
    /// Serve the reference device over vhost-user, with a disk the front-end steers through
    /// a control socket (see the README). Serves one connection, then exits.
    Serve {
        /// The vhost-user socket to listen on.
        #[arg(long)]
        socket: PathBuf,
        /// The disk image (at least one 512-byte sector), read and written in place.
        #[arg(long)]
        image: PathBuf,
        /// The control socket [default: the socket's path plus .ctl].
        #[arg(long)]
        control: Option<PathBuf>,
        /// Queues offered, 1 to 4.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=4))]
        queues: u16,
        /// Disk faults from the start: a file with lines `read|write SECTOR eio|enospc`, as a
        /// template's {faults} placeholder gives.
        #[arg(long)]
        faults: Option<PathBuf>,
    },
}

/// The engines `bench` drives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum BenchEngine {
    Explorer,
    Libfuzzer,
}

fn main() -> ExitCode {
    // Output piped into a reader that stops early (`| head`) ends stopfuzz quietly, as it
    // does any Unix tool, instead of panicking on the failed print.
    // SAFETY: restoring the default disposition of a signal, before any thread starts.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    let code = dispatch(cli.command);
    // Back-end processes this command started end with it.
    vhost_user::shutdown();
    qemu::shutdown();
    stopfuzz::dut::process::end_all();
    code
}

/// The device the options name, or exit code 2 with the reason.
macro_rules! device_or_exit {
    ($opts:expr) => {
        match $opts.kind() {
            Ok(kind) => kind,
            Err(e) => {
                eprintln!("stopfuzz: {e}");
                return ExitCode::from(2);
            }
        }
    };
}

fn dispatch(command: Command) -> ExitCode {
    match command {
        Command::Run {
            target,
            seconds,
            execs,
            seed,
            jobs,
            out,
            oracle,
            without,
            device,
        } => run(
            target,
            seconds,
            execs,
            seed,
            jobs,
            out,
            oracle,
            without,
            device_or_exit!(device),
        ),
        Command::Replay {
            files,
            target,
            trace,
            rings,
            device,
            repeat,
            oracle,
        } => replay(
            &files,
            target,
            trace,
            rings,
            repeat,
            oracle,
            device_or_exit!(device),
        ),
        Command::Seeds { out } => seeds(&out),
        Command::Reach {
            target,
            execs,
            seed,
        } => {
            let reach = stopfuzz::reach::measure(target, execs, seed);
            print!("{}", reach.render(target));
            ExitCode::SUCCESS
        }
        Command::Minimize {
            file,
            target,
            out,
            device,
        } => minimize(&file, target, out, device_or_exit!(device)),
        Command::Regress {
            file,
            name,
            target,
            repo,
            device,
        } => regress(&file, &name, target, &repo, device_or_exit!(device)),
        Command::Bench {
            seconds,
            seeds,
            engine,
            oracle,
            jobs,
            fuzz_bin,
            device,
            mutants,
        } => bench(
            seconds,
            seeds,
            engine,
            oracle,
            jobs,
            fuzz_bin,
            device_or_exit!(device),
            &mutants,
        ),
        Command::Serve {
            socket,
            image,
            control,
            queues,
            faults,
        } => serve(stopfuzz::serve::Options {
            socket,
            image,
            control,
            queues,
            faults,
        }),
    }
}

fn serve(opts: stopfuzz::serve::Options) -> ExitCode {
    use stopfuzz::serve::Ended;
    match stopfuzz::serve::run(&opts) {
        Ok(Ended::Disconnected) => {
            eprintln!("stopfuzz serve: the front-end disconnected");
            ExitCode::SUCCESS
        }
        Ok(Ended::Refused(why)) => {
            eprintln!("stopfuzz serve: connection closed: {why}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("stopfuzz serve: {e}");
            ExitCode::FAILURE
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn run(
    target: Target,
    seconds: Option<u64>,
    execs: Option<u64>,
    seed: Option<u64>,
    jobs: Option<usize>,
    out: PathBuf,
    oracle: OracleLevel,
    without: Vec<OpKind>,
    device: DeviceKind,
) -> ExitCode {
    if let Some(k) = without.iter().find(|k| explore::CORE.contains(k)) {
        eprintln!(
            "stopfuzz: --without {}: every program keeps submit, publish, kick, poll and complete",
            k.name()
        );
        return ExitCode::from(2);
    }
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
        "stopfuzz run: target={} device={device} seed={seed} jobs={jobs} budget={budget:?} out={}",
        target.name(),
        out.display()
    );
    stopfuzz::targets::quiet_panics_in_runs();
    let opts = Options {
        target,
        device,
        budget,
        seed,
        jobs,
        out: Some(out.clone()),
        progress: true,
        oracle,
        stop_on_first: false,
        without,
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
    eprintln!("{}", skipped_line(&summary.skipped));
    for (invariant, (input, f)) in &summary.examples {
        let rate = if explore::deterministic(device) {
            String::new()
        } else {
            let runs = explore::REPRO_RUNS;
            let hits = explore::reproductions(target, device, input, *invariant, runs, oracle);
            format!(", reproduced {hits}/{runs}")
        };
        eprintln!(
            "finding: {invariant} x{} (first at step {}{rate}: {})",
            summary.by_invariant[invariant], f.step, f.message
        );
    }
    if summary.findings > 0 {
        eprintln!("inputs and reports saved in {}", out.display());
    }
    println!("{}", summary.line(target));
    ExitCode::from(u8::from(summary.findings > 0))
}

fn skipped_line(skipped: &[Skip]) -> String {
    if skipped.is_empty() {
        "skipped: none".into()
    } else {
        let list: Vec<String> = skipped.iter().map(|s| s.to_string()).collect();
        format!("skipped: {}", list.join("; "))
    }
}

fn replay(
    files: &[PathBuf],
    target: Option<Target>,
    trace: bool,
    rings: bool,
    repeat: Option<u32>,
    oracle: OracleLevel,
    device: DeviceKind,
) -> ExitCode {
    stopfuzz::targets::quiet_panics_in_runs();
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
        if target != Target::Snapshot
            && let Some(v) = Program::version_of(&data).filter(|&v| v != FORMAT_VERSION)
        {
            eprintln!(
                "stopfuzz: {} says format version {v}; it is decoded as version {FORMAT_VERSION}",
                file.display()
            );
        }
        let report = target.run_on(device, &data, trace || rings, oracle);
        let outcome = match &report.outcome {
            Outcome::Pass => "pass".to_string(),
            Outcome::Finding(f) => {
                found = true;
                format!("FINDING {} at step {}: {}", f.invariant, f.step, f.message)
            }
        };
        println!("{}: {} {outcome}", file.display(), target.name());
        if device != DeviceKind::Reference {
            println!("  {}", skipped_line(&report.skipped));
        }
        let runs = repeat.unwrap_or(if explore::deterministic(device) {
            1
        } else {
            20
        });
        if let (Outcome::Finding(f), true) = (&report.outcome, runs > 1) {
            let hits = explore::reproductions(target, device, &data, f.invariant, runs - 1, oracle);
            println!("  reproduced: {}/{runs}", hits + 1);
        }
        if trace && let Some(t) = &report.trace {
            let step = match &report.outcome {
                Outcome::Finding(f) => f.step,
                Outcome::Pass => usize::MAX,
            };
            print!("{}", t.cut(step));
        }
        if rings && target != Target::Snapshot {
            print!("{}", draw(&data, target, device));
        }
    }
    ExitCode::from(u8::from(found))
}

#[cfg(not(feature = "mutants"))]
#[allow(clippy::too_many_arguments)]
fn bench(
    _: u64,
    _: u64,
    _: BenchEngine,
    _: OracleLevel,
    _: Option<usize>,
    _: PathBuf,
    _: DeviceKind,
    _: &[String],
) -> ExitCode {
    eprintln!(
        "stopfuzz bench needs the planted bugs: cargo run --release --features mutants -- bench"
    );
    ExitCode::from(2)
}

#[cfg(feature = "mutants")]
#[allow(clippy::too_many_arguments)]
fn bench(
    seconds: u64,
    seeds: u64,
    engine: BenchEngine,
    oracle: OracleLevel,
    jobs: Option<usize>,
    fuzz_bin_dir: PathBuf,
    device: DeviceKind,
    names: &[String],
) -> ExitCode {
    use stopfuzz::bench::{self, BenchOptions, Engine};
    let mutants = match names
        .iter()
        .map(|n| n.parse())
        .collect::<Result<Vec<_>, _>>()
    {
        Ok(m) => m,
        Err(e) => {
            eprintln!("stopfuzz: {e}");
            return ExitCode::from(2);
        }
    };
    let engine = match engine {
        BenchEngine::Explorer => Engine::Explorer,
        BenchEngine::Libfuzzer => Engine::LibFuzzer,
    };
    if engine == Engine::LibFuzzer && device != DeviceKind::Reference {
        eprintln!(
            "stopfuzz: the libFuzzer binaries fuzz the reference device; use --engine explorer"
        );
        return ExitCode::from(2);
    }
    if engine == Engine::LibFuzzer && !fuzz_bin_dir.join("blk_conforming").exists() {
        eprintln!(
            "stopfuzz: no libFuzzer binaries in {}; build them with\n  cargo fuzz build --sanitizer none --no-trace-compares --features mutants --target-dir target/fuzz-mutants",
            fuzz_bin_dir.display()
        );
        return ExitCode::from(2);
    }
    stopfuzz::targets::quiet_panics_in_runs();
    let opts = BenchOptions {
        seconds,
        seeds,
        engine,
        oracle,
        device,
        jobs: jobs.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
        fuzz_bin_dir,
        mutants,
    };
    eprintln!("stopfuzz bench: {opts:?}");
    let each = |name: &str, seed, a: &bench::Attempt| {
        eprintln!(
            "{name} seed {seed}: {} in {:.2} s ({} execs) {}",
            if a.found { "found" } else { "missed" },
            a.time.as_secs_f64(),
            a.execs.map_or("?".into(), |e| e.to_string()),
            a.invariant.map_or("", |i| i.id())
        );
    };
    // QEMU's code cannot carry planted bugs: its configuration does.
    let results = match device {
        DeviceKind::Qemu(q) => bench::bench_qemu(&opts, q, each),
        _ => bench::bench(&opts, each),
    };
    let (rows, summary) = bench::table(&results);
    for row in rows {
        eprintln!("{row}");
    }
    println!("{summary}");
    ExitCode::SUCCESS
}

/// Reads a finding's input and minimizes it, or says why not.
fn minimized(
    file: &Path,
    target: Option<Target>,
    device: DeviceKind,
) -> Result<(Target, Vec<u8>, stopfuzz::minimize::Minimized), String> {
    let data = std::fs::read(file).map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    let target = target.or_else(|| target_of(file)).ok_or_else(|| {
        format!(
            "cannot tell the target of {}; pass --target",
            file.display()
        )
    })?;
    stopfuzz::targets::quiet_panics_in_runs();
    let m = stopfuzz::minimize::minimize(target, device, &data)
        .map_err(|e| format!("{}: {e}", file.display()))?;
    eprintln!(
        "minimized {}: {} at step {}; ops {} -> {}, bytes {} -> {}, {} runs",
        file.display(),
        m.invariant,
        m.step,
        m.ops_before,
        m.input.program.ops.len(),
        data.len(),
        m.input.encode().len(),
        m.runs
    );
    Ok((target, data, m))
}

fn minimize(
    file: &Path,
    target: Option<Target>,
    out: Option<PathBuf>,
    device: DeviceKind,
) -> ExitCode {
    let (target, _, m) = match minimized(file, target, device) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("stopfuzz: {e}");
            return ExitCode::from(2);
        }
    };
    let out = out.unwrap_or_else(|| file.with_extension("min"));
    let bytes = m.input.encode();
    let trace = target
        .run_on(device, &bytes, true, OracleLevel::Full)
        .trace
        .map(|t| t.cut(m.step))
        .unwrap_or_default();
    let name = format!("minimized_{}", m.invariant.id().replace('-', "_"));
    let what = format!(
        "{} ({}): {} at step {}: {}",
        target.name(),
        device,
        m.invariant,
        m.step,
        m.message
    );
    let writes = [
        (out.clone(), bytes),
        (
            out.with_extension("min.txt"),
            format!("{what}\n\n{trace}").into_bytes(),
        ),
        (
            out.with_extension("min.rs"),
            m.input.rust_test(target, &name, &what).into_bytes(),
        ),
    ];
    for (path, contents) in writes {
        if let Err(e) = std::fs::write(&path, contents) {
            eprintln!("stopfuzz: cannot write {}: {e}", path.display());
            return ExitCode::from(2);
        }
        println!("wrote {}", path.display());
    }
    ExitCode::SUCCESS
}

fn regress(
    file: &Path,
    name: &str,
    target: Option<Target>,
    repo: &Path,
    device: DeviceKind,
) -> ExitCode {
    match regress_into(file, name, target, repo, device) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("stopfuzz: {e}");
            ExitCode::from(2)
        }
    }
}

fn regress_into(
    file: &Path,
    name: &str,
    target: Option<Target>,
    repo: &Path,
    device: DeviceKind,
) -> Result<(), String> {
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    {
        return Err(format!(
            "--name {name:?}: use lowercase words joined by '-'"
        ));
    }
    let tests = repo.join("tests/regressions.rs");
    let text = std::fs::read_to_string(&tests)
        .map_err(|e| format!("cannot read {}: {e}", tests.display()))?;
    let (target, _, m) = minimized(file, target, device)?;
    let bytes = m.input.encode();
    let mut digest = stopfuzz::trace::Digest::default();
    digest.bytes(&bytes);
    let file_name = format!("regress-{name}-{:016x}", digest.value());
    let dir = repo.join("corpus").join(target.name());
    let path = dir.join(&file_name);
    std::fs::write(&path, &bytes).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    let step = stopfuzz::minimize::step_of(&m.input.program, m.step);
    let op = stopfuzz::minimize::step_line(&m.input.program, step);
    let variant = match target {
        Target::BlkConforming => "BlkConforming",
        Target::BlkHostile => "BlkHostile",
        Target::Snapshot => "Snapshot",
    };
    let entry = format!(
        "\n    /// Cause: {} at step {}: {}.\n    /// Fix: say what fixed it.\n    fn {} =>\n        {variant} / \"{file_name}\",\n        \"{}\" at {step};",
        m.invariant,
        m.step,
        m.message.replace('\n', " "),
        name.replace('-', "_"),
        op.replace('"', "\\\""),
    );
    let start = text
        .find("regressions! {")
        .ok_or_else(|| format!("{} has no `regressions! {{` block", tests.display()))?;
    let end = start
        + text[start..]
            .find("\n}\n")
            .ok_or_else(|| format!("{}: the regressions! block does not end", tests.display()))?;
    let updated = format!("{}{entry}{}", &text[..end], &text[end..]);
    std::fs::write(&tests, updated)
        .map_err(|e| format!("cannot write {}: {e}", tests.display()))?;
    println!("wrote {}", path.display());
    println!(
        "added the test `{}` to {}; write its cause and fix there",
        name.replace('-', "_"),
        tests.display()
    );
    Ok(())
}

fn seeds(out: &Path) -> ExitCode {
    stopfuzz::targets::quiet_panics_in_runs();
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
fn draw(data: &[u8], target: Target, device: DeviceKind) -> String {
    let mode = if target == Target::BlkHostile {
        stopfuzz::engine::Mode::Hostile
    } else {
        stopfuzz::engine::Mode::Conforming
    };
    stopfuzz::engine::Engine::new().rings_after(&device, &Program::decode(data), mode)
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
