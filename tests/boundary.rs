//! The device boundary: the checking side knows nothing of the reference device, the oracle
//! levels run the same workload, and a device with capabilities hidden runs clean and says
//! what it could not check.

use std::path::Path;

use stopfuzz::dut::DeviceKind;
use stopfuzz::dut::reduced::Hidden;
use stopfuzz::engine::{OracleLevel, Outcome};
use stopfuzz::explore;
use stopfuzz::oracle::Invariant;
use stopfuzz::seeds::seeds;
use stopfuzz::targets::Target;

/// Only the reference device's own files, its boundary implementation and the planted-bug
/// code may name it.
#[test]
fn only_the_reference_and_its_boundary_file_import_the_device() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut stack = vec![src.clone()];
    let mut offenders = Vec::new();
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let rel = path
                .strip_prefix(&src)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            // serve/ is the reference device served over vhost-user: a device, not a checker.
            let allowed = rel.starts_with("device/")
                || rel.starts_with("serve/")
                || rel == "dut/reference.rs"
                || rel == "mutants.rs";
            let text = std::fs::read_to_string(&path).unwrap();
            if !allowed && text.contains("crate::device") {
                offenders.push(rel);
            }
        }
    }
    assert!(offenders.is_empty(), "{offenders:?} import crate::device");
}

/// For an input with no finding, the full and crash-only oracles run the same workload:
/// the same trace, line for line, and the same digest.
#[test]
fn crash_only_runs_the_same_workload_as_the_full_oracle() {
    let mut inputs: Vec<(Target, Vec<u8>)> =
        seeds().into_iter().map(|s| (s.target, s.bytes)).collect();
    for target in Target::ALL {
        for index in 0..300 {
            inputs.push((target, explore::input(target, 17, index)));
        }
    }
    for (target, input) in inputs {
        let full = target.run_with(&input, true, OracleLevel::Full);
        assert_eq!(full.outcome, Outcome::Pass, "{}", target.name());
        let crash_only = target.run_with(&input, true, OracleLevel::CrashOnly);
        assert_eq!(full.trace, crash_only.trace, "{}", target.name());
        assert_eq!(full.digest, crash_only.digest, "{}", target.name());
    }
}

#[test]
fn the_reference_skips_nothing() {
    for target in Target::ALL {
        let report = target.run(&explore::input(target, 1, 1), false);
        assert!(report.skipped.is_empty(), "{:?}", report.skipped);
    }
}

/// The reference with every capability hidden runs every target clean, and lists exactly
/// the checks it could not run.
#[test]
fn a_reduced_device_runs_clean_and_lists_what_it_skipped() {
    let device = DeviceKind::Reduced(Hidden::ALL);
    for target in Target::ALL {
        let mut ran = 0;
        for index in 0..120 {
            let input = explore::input(target, 23, index);
            let report = target.run_on(device, &input, false, OracleLevel::Full);
            if let Outcome::Finding(f) = &report.outcome {
                let trace = target
                    .run_on(device, &input, true, OracleLevel::Full)
                    .trace
                    .unwrap()
                    .cut(f.step);
                panic!("{} input {index}: {f:?}\n{trace}", target.name());
            }
            let mut skipped: Vec<Invariant> = report.skipped.iter().map(|s| s.invariant).collect();
            skipped.dedup();
            assert_eq!(
                skipped,
                [
                    Invariant::QuietWhenStopped,
                    Invariant::AvailWindow,
                    Invariant::InuseBound,
                    Invariant::RestoreRejects,
                    Invariant::ExactlyOnce,
                    Invariant::Data,
                    Invariant::Parked,
                    Invariant::Contract,
                ]
            );
            ran += 1;
        }
        assert_eq!(ran, 120);
    }
}

/// Each hidden capability alone skips its own checks and nothing else.
#[test]
fn each_hidden_capability_skips_its_own_checks() {
    let cases: [(&str, &[Invariant]); 4] = [
        (
            "introspection",
            &[
                Invariant::QuietWhenStopped,
                Invariant::AvailWindow,
                Invariant::InuseBound,
                Invariant::Contract,
            ],
        ),
        ("exact-writes", &[]),
        (
            "disk-control",
            &[
                Invariant::QuietWhenStopped,
                Invariant::ExactlyOnce,
                Invariant::Data,
                Invariant::Parked,
            ],
        ),
        ("snapshot-inspection", &[Invariant::RestoreRejects]),
    ];
    for (name, expected) in cases {
        let device = DeviceKind::Reduced(Hidden::parse(name).unwrap());
        let input = explore::input(Target::BlkConforming, 3, 0);
        let report = Target::BlkConforming.run_on(device, &input, false, OracleLevel::Full);
        let mut skipped: Vec<Invariant> = report.skipped.iter().map(|s| s.invariant).collect();
        skipped.sort();
        skipped.dedup();
        let mut expected = expected.to_vec();
        expected.sort();
        assert_eq!(skipped, expected, "{name}");
    }
    assert!(Hidden::parse("introspection,nonsense").is_err());
}
