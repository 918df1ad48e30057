//! The corpus: every file in `corpus/<target>/` replays clean through its target, the seeds
//! on disk are exactly what `stopfuzz seeds` writes, and together they cover what the seed
//! corpus promises.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use stopfuzz::device::{ErrorPolicy, InflightPolicy};
use stopfuzz::engine::{Outcome, Scenarios};
use stopfuzz::program::{FORMAT_VERSION, Op, OpKind, Program, Trigger};
use stopfuzz::seeds::seeds;
use stopfuzz::targets::Target;

fn corpus_dir(target: Target) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target.name())
}

fn files(target: Target) -> Vec<PathBuf> {
    let dir = corpus_dir(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .map(|entry| entry.expect("a readable directory entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

fn replay(target: Target, path: &Path) {
    let data =
        std::fs::read(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let report = target.run(&data, false);
    if let Outcome::Finding(f) = report.outcome {
        let trace = target
            .run(&data, true)
            .trace
            .map(|t| t.cut(f.step))
            .unwrap_or_default();
        panic!(
            "{}: {} at step {}: {}\n{trace}",
            path.display(),
            f.invariant,
            f.step,
            f.message
        );
    }
}

#[test]
fn every_corpus_file_replays_clean() {
    for target in Target::ALL {
        let files = files(target);
        assert!(!files.is_empty(), "{} has no corpus", target.name());
        for path in files {
            replay(target, &path);
        }
    }
}

#[test]
fn program_corpora_are_in_the_current_format() {
    for target in [Target::BlkConforming, Target::BlkHostile] {
        for path in files(target) {
            let data = std::fs::read(&path).unwrap();
            assert_eq!(
                Program::version_of(&data),
                Some(FORMAT_VERSION),
                "{}: regenerate with `cargo run --release -- seeds`",
                path.display()
            );
        }
    }
}

#[test]
fn committed_seeds_match_the_generator() {
    let seeds = seeds();
    assert!(!seeds.is_empty());
    let mut generated = BTreeSet::new();
    for seed in &seeds {
        let path = corpus_dir(seed.target).join(format!("seed-{}", seed.name));
        let on_disk = std::fs::read(&path).unwrap_or_default();
        assert!(
            on_disk == seed.bytes,
            "{} differs from the generator: run `cargo run --release -- seeds`",
            path.display()
        );
        generated.insert(path);
    }
    // And no seed file is left over from a seed the generator dropped.
    for target in Target::ALL {
        for path in files(target) {
            let name = path.file_name().unwrap().to_string_lossy();
            if name.starts_with("seed-") {
                assert!(
                    generated.contains(&path),
                    "{} is not generated",
                    path.display()
                );
            }
        }
    }
}

#[test]
fn seeds_cover_every_op_contract_trigger_policy_and_the_wrap() {
    let programs: Vec<Program> = seeds()
        .iter()
        .filter(|s| s.target != Target::Snapshot)
        .map(|s| Program::decode(&s.bytes))
        .collect();
    let kinds: BTreeSet<OpKind> = programs
        .iter()
        .flat_map(|p| p.ops.iter().map(|o| o.kind()))
        .collect();
    assert_eq!(kinds, OpKind::ALL.into_iter().collect());
    let contracts: BTreeSet<_> = programs
        .iter()
        .map(|p| p.config.inflight == InflightPolicy::Track)
        .collect();
    assert_eq!(contracts.len(), 2);
    let triggers: BTreeSet<_> = programs
        .iter()
        .map(|p| p.config.trigger == Trigger::Suspend)
        .collect();
    assert_eq!(triggers.len(), 2);
    let policies: BTreeSet<String> = programs
        .iter()
        .flat_map(|p| {
            [
                format!("w{:?}", p.config.write_policy),
                format!("r{:?}", p.config.read_policy),
            ]
        })
        .collect();
    for p in [
        ErrorPolicy::Report,
        ErrorPolicy::Ignore,
        ErrorPolicy::Stop,
        ErrorPolicy::Enospc,
    ] {
        assert!(policies.contains(&format!("w{p:?}")), "write {p:?}");
    }
    for p in [ErrorPolicy::Report, ErrorPolicy::Ignore, ErrorPolicy::Stop] {
        assert!(policies.contains(&format!("r{p:?}")), "read {p:?}");
    }
    assert!(programs.iter().any(|p| p.config.start_index >= 0xff00));
}

#[test]
fn seeds_reach_the_scenarios_that_matter() {
    let mut reached = Scenarios::default();
    for seed in seeds() {
        reached.0 |= seed.target.run(&seed.bytes, false).scenarios.0;
    }
    for (flag, name) in Scenarios::NAMES {
        assert!(reached.has(flag), "no seed reaches {name}");
    }
}

/// The device's state after each step of a traced run, without the steps themselves.
fn device_states(target: Target, program: &Program) -> Vec<String> {
    let trace = target
        .run(&program.encode(), true)
        .trace
        .expect("a traced run has a trace");
    trace
        .lines
        .into_iter()
        .filter(|l| l.trim_start().starts_with("status "))
        .collect()
}

/// A corruption of a descriptor the device has already read changes nothing, and the seed
/// then tests nothing: each seed's corruptions must change what the device does, compared
/// with the same program doing a harmless kick in their place.
#[test]
fn seed_corruptions_reach_the_device() {
    let mut checked = 0;
    for seed in seeds()
        .into_iter()
        .filter(|s| s.target == Target::BlkHostile)
    {
        let program = Program::decode(&seed.bytes);
        if !program.ops.iter().any(|o| o.kind() == OpKind::CorruptDesc) {
            continue;
        }
        let mut harmless = program.clone();
        for op in &mut harmless.ops {
            if op.kind() == OpKind::CorruptDesc {
                *op = Op::Kick { queue: 0 };
            }
        }
        assert_ne!(
            device_states(seed.target, &program),
            device_states(seed.target, &harmless),
            "seed-{}: its corruption changes nothing the device does",
            seed.name
        );
        checked += 1;
    }
    assert!(checked > 0, "no hostile seed corrupts a descriptor");
}
