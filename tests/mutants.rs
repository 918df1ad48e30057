//! Planted bugs: each is found within a fixed budget by the general invariants, and the
//! oracle does not know which one is planted.

use std::path::Path;

/// The checking side (driver, model, oracle, engine, the boundary) must find bugs from the
/// invariants alone: none of its source may mention the planted bugs.
#[test]
fn the_oracle_does_not_depend_on_the_mutant_selection() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = vec![
        root.join("model.rs"),
        root.join("program.rs"),
        root.join("shadow.rs"),
        root.join("stops.rs"),
        root.join("dut/mod.rs"),
        root.join("dut/reduced.rs"),
    ];
    for dir in ["oracle", "driver", "engine"] {
        for entry in std::fs::read_dir(root.join(dir)).unwrap() {
            files.push(entry.unwrap().path());
        }
    }
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap().to_lowercase();
        assert!(
            !text.contains("mutant"),
            "{} mentions mutants",
            file.display()
        );
    }
}

#[cfg(feature = "mutants")]
mod planted {
    use stopfuzz::bench::target_for;
    use stopfuzz::engine::{OracleLevel, Outcome};
    use stopfuzz::explore;
    use stopfuzz::mutants::{self, Mutant};
    use stopfuzz::targets::Target;

    /// Each mutant is found within this many explorer inputs (seed 0): a planted bug the
    /// explorer cannot reach means a hole in the driver or the oracle.
    const BUDGET: u64 = 20_000;

    /// The selection is process-wide and tests run in parallel.
    static SELECTION: std::sync::Mutex<()> = std::sync::Mutex::new(());

    #[test]
    fn every_mutant_is_found_by_the_explorer_and_the_reference_is_not() {
        let _lock = SELECTION.lock().unwrap();
        for &m in Mutant::ALL {
            mutants::select(Some(m));
            let target = target_for(m);
            let found = (0..BUDGET).find(|&i| {
                let input = explore::input(target, 0, i);
                matches!(target.run(&input, false).outcome, Outcome::Finding(_))
            });
            let index =
                found.unwrap_or_else(|| panic!("{} not found in {BUDGET} inputs", m.name()));
            // The same input passes on the reference device: the finding is the mutant's.
            mutants::select(None);
            let input = explore::input(target, 0, index);
            assert_eq!(
                target.run(&input, false).outcome,
                Outcome::Pass,
                "{}",
                m.name()
            );
        }
    }

    #[test]
    fn a_crash_only_oracle_misses_what_the_full_oracle_finds() {
        let _lock = SELECTION.lock().unwrap();
        mutants::select(Some(Mutant::NaiveRewind));
        let target = Target::BlkConforming;
        let first = (0..BUDGET)
            .map(|i| explore::input(target, 0, i))
            .find(|input| matches!(target.run(input, false).outcome, Outcome::Finding(_)))
            .expect("found with the full oracle");
        let crash_only = target.run_with(&first, false, OracleLevel::CrashOnly);
        mutants::select(None);
        assert_eq!(crash_only.outcome, Outcome::Pass);
    }
}
