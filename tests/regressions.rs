//! Regression inputs: every `corpus/<target>/regress-*` file has a test here, named after
//! the bug it guards, that replays it through its target and requires a pass.
//!
//! Every input today is a harness false positive from exploration, not a device bug. The
//! first four: A reset while a Drain stop waited on a parked request let the device acknowledge
//! the stop, which was right: it no longer held anything. But the model dropped the reset's
//! requests only after the reset call, so at the acknowledgement `contract` still saw
//! requests popped but unused. The fix, in `src/engine.rs`: the model abandons them
//! (`Model::abandon`) before the device reset (`Op::DeviceReset`) or the virtqueue reset
//! (`Op::QueueReset`) is called. Each input was checked to fail with `contract` at the step
//! its test names once that order is reversed. The fifth is `stop-acked` counting polls
//! in which a retry the host asked for made the acknowledgement undue.

use std::collections::BTreeSet;
use std::path::PathBuf;

use stopfuzz::engine::Outcome;
use stopfuzz::targets::Target;

/// One regression input, and the op its run must still reach at the step where the bug
/// showed: an input that no longer gets there (after a format change) guards nothing.
struct Regression {
    target: Target,
    file: &'static str,
    step: usize,
    op: &'static str,
}

/// Declares each regression test and, from the same lines, `REGRESSIONS`, so the list the
/// coverage test checks is exactly the list of tests.
macro_rules! regressions {
    ($($(#[$doc:meta])* fn $name:ident => $target:ident / $file:literal, $op:literal at $step:literal;)*) => {
        const REGRESSIONS: &[Regression] = &[$(Regression {
            target: Target::$target,
            file: $file,
            step: $step,
            op: $op,
        }),*];

        $(
            $(#[$doc])*
            #[test]
            fn $name() {
                replay(&Regression {
                    target: Target::$target,
                    file: $file,
                    step: $step,
                    op: $op,
                });
            }
        )*
    };
}

regressions! {
    /// Cause: a device reset while a host stop (Drain) waited on a parked request; the model
    /// dropped the requests after the reset call, so `contract` saw two popped but unused.
    /// Fix: `Op::DeviceReset` abandons the model's requests before the reset.
    fn device_reset_acks_a_pending_drain_stop =>
        BlkConforming / "regress-device-reset-acks-a-pending-drain-stop-4c5c924145cc3bf8",
        "DeviceReset" at 45;

    /// Cause: as above, with three queues; `contract` saw five popped but unused requests
    /// across them.
    /// Fix: `Op::DeviceReset` abandons the model's requests before the reset.
    fn device_reset_acks_a_pending_drain_stop_on_three_queues =>
        BlkConforming / "regress-device-reset-acks-a-pending-drain-stop-98ec0d173f64a9c6",
        "DeviceReset" at 68;

    /// Cause: as above, in the program the snapshot target runs before its snapshot phase
    /// (four queues).
    /// Fix: `Op::DeviceReset` abandons the model's requests before the reset.
    fn device_reset_acks_a_pending_drain_stop_in_the_snapshot_target =>
        Snapshot / "regress-device-reset-acks-a-pending-drain-stop-b065ec154b9d0688",
        // Decoded as a system reset since that op exists: to the reference the same reset.
        "SystemReset" at 66;

    /// Cause: a virtqueue reset of the only queue holding a request, while a host stop
    /// (Drain) waited for it; the model dropped the queue's requests after the reset call.
    /// This file was first filed under device-reset; only the queue reset catches it.
    /// Fix: `Op::QueueReset` abandons the queue's requests in the model before the reset.
    fn queue_reset_acks_a_pending_drain_stop =>
        BlkConforming / "regress-queue-reset-acks-a-pending-drain-stop-b3837c4ec94e0390",
        "QueueReset { queue: 144 }" at 80;
    /// Cause: used-monotone at step 10: queue 0: used idx went from 255 to 512, not forward
    /// by at most size 256. A harness false positive: avail jumps put the driver 258 ahead of
    /// used with a read held, so one liveness poll completed the read and then a whole new
    /// ring, as a correct device may.
    /// Fix: the bound is what the driver made available (up to two rings), not one ring.
    fn used_monotone_two_rings_in_one_poll =>
        BlkHostile / "regress-used-monotone-two-rings-in-one-poll-9593e55f542edfae",
        "liveness: heal, resume, run everything to completion" at 10;

    /// Cause: a Track driver stop waited while the disk failed a parked write again and
    /// again; each Heal asked for a retry, and each poll that began with no disk I/O (the
    /// acknowledgement due) retried instead, which is right. `stop-acked` counted those polls
    /// as overdue.
    /// Fix: a poll counts against an acknowledgement only if it is still due as the poll
    /// ends (`Run::judge_acks`).
    fn track_stop_waits_for_a_host_retry =>
        BlkConforming / "regress-track-stop-waits-for-a-host-retry-491a1229c9ebef4e",
        "liveness: heal, resume, run everything to completion" at 12;

    /// Cause: after a hostile op the model stops following requests; the driver then reused
    /// head 0 for a new request, which replaced the old one in the model's open map, so the
    /// device reset that ends hostile mode did not drop it from the model's parked list, and
    /// the liveness phase's retry point counted it as skipped.
    /// Fix: a reset drops parked requests by queue (`Model::abandon`), not by their state.
    fn parked_list_after_hostile_head_reuse =>
        BlkHostile / "regress-parked-list-after-hostile-head-reuse-8bb68f28ca8cddd6",
        "liveness: heal, resume, run everything to completion" at 11;
}

fn corpus() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("corpus")
}

fn replay(r: &Regression) {
    let path = corpus().join(r.target.name()).join(r.file);
    let data = std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "regression input {} is missing or unreadable ({e}); restore it from git",
            path.display()
        )
    });
    let report = r.target.run(&data, true);
    let trace = report.trace.unwrap_or_default();
    if let Outcome::Finding(f) = &report.outcome {
        panic!(
            "{}: {} at step {}: {}\n{}",
            path.display(),
            f.invariant,
            f.step,
            f.message,
            trace.cut(f.step)
        );
    }
    let want = format!("{:>4}  {}", r.step, r.op);
    assert!(
        trace.lines.contains(&want),
        "{}: step {} is no longer `{}`, so the input no longer reaches its scenario",
        path.display(),
        r.step,
        r.op
    );
    // The untraced run is what the fuzzers do; it must agree.
    assert_eq!(r.target.run(&data, false).outcome, Outcome::Pass);
}

#[test]
fn every_regress_file_has_a_named_test() {
    let mut on_disk = BTreeSet::new();
    let dirs = std::fs::read_dir(corpus()).expect("corpus/ is readable");
    for dir in dirs {
        let dir = dir.expect("a corpus directory entry").path();
        if !dir.is_dir() {
            continue;
        }
        let target = dir.file_name().unwrap().to_string_lossy().into_owned();
        for file in std::fs::read_dir(&dir).expect("a readable target corpus") {
            let name = file.expect("a corpus entry").file_name();
            let name = name.to_string_lossy();
            if name.starts_with("regress-") {
                on_disk.insert(format!("{target}/{name}"));
            }
        }
    }
    let tested: BTreeSet<String> = REGRESSIONS
        .iter()
        .map(|r| format!("{}/{}", r.target.name(), r.file))
        .collect();
    assert!(!on_disk.is_empty(), "no regress-* file found under corpus/");
    let untested: Vec<_> = on_disk.difference(&tested).collect();
    assert!(
        untested.is_empty(),
        "regression inputs without a named test in tests/regressions.rs: {untested:?}"
    );
    let missing: Vec<_> = tested.difference(&on_disk).collect();
    assert!(missing.is_empty(), "tests whose input is gone: {missing:?}");
}
