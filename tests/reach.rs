//! The generator reaches every value of every dimension, and every counted pair, that a
//! target can reach: the seeds and a short exploration together, as `stopfuzz reach` shows.

use stopfuzz::reach;
use stopfuzz::targets::Target;

#[test]
fn seeds_and_explorer_reach_every_possible_value_and_pair() {
    for target in Target::ALL {
        let reach = reach::measure(target, 10_000, 1);
        let values = reach.missing_values(target);
        let pairs = reach.missing_pairs(target);
        assert!(
            values.is_empty() && pairs.is_empty(),
            "{}: never reached: {values:?} {pairs:?}\n{}",
            target.name(),
            reach.render(target)
        );
    }
}

#[test]
fn a_run_counts_its_config_ops_and_scenarios() {
    let mut r = reach::Reach::default();
    let program = stopfuzz::seeds::thread_example(true);
    let data = program.encode();
    let report = Target::BlkConforming.run(&data, false);
    r.add(Target::BlkConforming, &data, &report);
    assert_eq!(r.runs, 1);
    assert_eq!(r.value("queue_size=4"), 1);
    assert_eq!(r.value("lifecycle=migrate"), 1);
    assert_eq!(r.value("scenario=migration_with_parked"), 1);
    assert_eq!(
        r.pair("write_policy=enospc", "scenario=migration_with_parked"),
        1
    );
    assert_eq!(r.value("queue_size=8"), 0);
    assert!(
        r.missing_values(Target::BlkConforming)
            .contains(&"queue_size=8".to_string())
    );
}
