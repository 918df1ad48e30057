//! `stopfuzz minimize` and `regress`: a program prints as Rust that compiles, and a planted
//! bug's finding shrinks to a small input that still fires the same invariant.

use stopfuzz::backend::IoError;
use stopfuzz::contract::{ErrorPolicy, InflightPolicy};
use stopfuzz::program::{Abuse, Config, Corruption, Jump, Op, Program, ReqType, Shape, Trigger};

/// The printed form of a program that uses every op kind, pasted below as code: if the
/// printout stops compiling or stops meaning the same program, this fails.
#[test]
fn a_program_prints_as_rust_that_rebuilds_it() {
    let mut bytes = vec![1, 0xff, 3, 0x7e, 0xf0, 0xff, 7];
    for k in 0..21u8 {
        bytes.extend_from_slice(&[k, 0xff - k, 0x80 + k, 0x40 + k]);
    }
    bytes.extend_from_slice(&[5, 0, 0, 0]);
    let decoded = Program::decode(&bytes);
    #[rustfmt::skip]
    let pasted = Program {
        config: Config { queues: 4, queue_size: 16, inflight: InflightPolicy::Track, trigger: Trigger::StopBit, event_idx: true, indirect: true, flush: true, ring_reset: true, write_policy: ErrorPolicy::Stop, read_policy: ErrorPolicy::Report, start_index: 65520, disk_sectors: 64, abuse: Some(Abuse::OutOfOrder) },
        ops: vec![
            Op::Submit { queue: 3, req: ReqType::GetId, shape: Shape::SplitHeader, sector: 128, sectors: 4, seed: 64 },
            Op::Publish { queue: 254 },
            Op::Kick { queue: 253 },
            Op::Poll,
            Op::Complete { pick: 251 },
            Op::Fail { pick: 250, error: IoError::Io },
            Op::DiskFull,
            Op::Heal,
            Op::Reap { queue: 247 },
            Op::DriverStop,
            Op::DriverResume,
            Op::HostStop,
            Op::HostResume,
            Op::Migrate,
            Op::QueueReset { queue: 241 },
            Op::DeviceReset,
            Op::Settle,
            Op::AvailJump { queue: 238, jump: Jump::Ahead, n: 81 },
            Op::RewriteAvail { queue: 237, slot: 146, head: 82 },
            Op::CorruptDesc { queue: 236, index: 147, how: Corruption::Next },
            Op::ForceSubmit { queue: 3, req: ReqType::Flush, sector: 148 },
            Op::Fail { pick: 0, error: IoError::NoSpace },
        ],
    };
    assert_eq!(decoded, pasted);
    let printed = format!("{decoded:?}");
    let expected = "Program {
    config: Config { queues: 4, queue_size: 16, inflight: InflightPolicy::Track, trigger: Trigger::StopBit, event_idx: true, indirect: true, flush: true, ring_reset: true, write_policy: ErrorPolicy::Stop, read_policy: ErrorPolicy::Report, start_index: 65520, disk_sectors: 64, abuse: Some(Abuse::OutOfOrder) },
    ops: vec![";
    assert!(printed.starts_with(expected), "{printed}");
    for line in [
        "        Op::Fail { pick: 0, error: IoError::NoSpace },",
        "        Op::CorruptDesc { queue: 236, index: 147, how: Corruption::Next },",
        "        Op::AvailJump { queue: 238, jump: Jump::Ahead, n: 81 },",
    ] {
        assert!(printed.contains(line), "{line}\n{printed}");
    }
}

#[test]
fn a_passing_input_cannot_be_minimized() {
    use stopfuzz::dut::DeviceKind;
    use stopfuzz::minimize::{MinimizeError, minimize};
    use stopfuzz::targets::Target;
    // A planted bug selected by another test of this file would make it fail.
    #[cfg(feature = "mutants")]
    let _lock = SELECTION.lock().unwrap();
    let input = stopfuzz::seeds::thread_example(false).encode();
    assert!(matches!(
        minimize(Target::BlkConforming, DeviceKind::Reference, &input),
        Err(MinimizeError::Passes)
    ));
}

#[cfg(feature = "mutants")]
mod planted {
    use stopfuzz::dut::DeviceKind;
    use stopfuzz::engine::Outcome;
    use stopfuzz::explore;
    use stopfuzz::minimize::{Input, minimize};
    use stopfuzz::mutants::{self, Mutant};
    use stopfuzz::targets::Target;

    /// Shrinks the explorer's first finding of a planted bug, keeping its invariant; the
    /// result fails on the mutant and passes on the reference.
    #[test]
    fn a_planted_bugs_finding_shrinks_and_keeps_its_invariant() {
        let _lock = crate::SELECTION.lock().unwrap();
        let target = Target::BlkConforming;
        mutants::select(Some(Mutant::KicksLostWhileStopped));
        let input = (0..20_000)
            .map(|i| explore::input(target, 0, i))
            .find(|input| matches!(target.run(input, false).outcome, Outcome::Finding(_)))
            .expect("the explorer finds the planted bug");
        let m = minimize(target, DeviceKind::Reference, &input).unwrap();
        let small = m.input.encode();
        let Outcome::Finding(f) = target.run(&small, false).outcome else {
            panic!("the minimized input lost its finding");
        };
        assert_eq!(f.invariant, m.invariant);
        assert!(m.input.program.ops.len() < m.ops_before, "{}", m.ops_before);
        assert!(m.input.program.ops.len() <= 8, "{:?}", m.input.program);
        assert_eq!(Input::decode(target, &small), m.input, "canonical");
        mutants::select(None);
        assert_eq!(target.run(&small, false).outcome, Outcome::Pass);
    }
}

#[cfg(feature = "mutants")]
static SELECTION: std::sync::Mutex<()> = std::sync::Mutex::new(());
