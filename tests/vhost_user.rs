//! The vhost-user front-end against real back-end processes: qemu-storage-daemon (skipped,
//! with a message, where it is not installed) and stand-ins that misbehave on purpose.

mod leftovers;
use leftovers::leftovers;

use stopfuzz::backend::IoError;
use stopfuzz::dut::DeviceKind;
use stopfuzz::dut::vhost_user::{self, Template};
use stopfuzz::engine::{OracleLevel, Outcome};
use stopfuzz::oracle::Invariant;
use stopfuzz::program::{Abuse, Config, Op, Program, ReqType, Shape};
use stopfuzz::targets::Target;

fn qsd_installed() -> bool {
    let found = std::process::Command::new("qemu-storage-daemon")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        eprintln!(
            "qemu-storage-daemon is not installed: test skipped (ci/vhost-user-smoke.sh qsd installs it)"
        );
    }
    found
}

fn device(template: Template) -> DeviceKind {
    DeviceKind::VhostUser(Box::leak(Box::new(template)))
}

/// Room for every request the tests make.
fn config() -> Config {
    Config {
        queue_size: 16,
        ..Config::default()
    }
}

fn submit(req: ReqType, sector: u8) -> Op {
    Op::Submit {
        queue: 0,
        req,
        shape: Shape::Plain,
        sector,
        sectors: 1,
        seed: 7,
    }
}

/// Write, read back, stop, migrate to a fresh back-end, read again.
fn round_trip() -> Program {
    let mut ops = vec![
        submit(ReqType::Write, 3),
        Op::Publish { queue: 0 },
        Op::Kick { queue: 0 },
        Op::Poll,
        Op::Reap { queue: 0 },
        submit(ReqType::Read, 3),
        Op::Publish { queue: 0 },
        Op::Kick { queue: 0 },
        Op::Poll,
        Op::Reap { queue: 0 },
        Op::HostStop,
        Op::HostResume,
        Op::Migrate,
    ];
    ops.extend([
        submit(ReqType::Read, 3),
        Op::Publish { queue: 0 },
        Op::Kick { queue: 0 },
        Op::Poll,
    ]);
    Program {
        config: config(),
        ops,
    }
}

/// One test at a time: each checks that it left no child process behind.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn run(device: DeviceKind, program: &Program) -> stopfuzz::engine::Report {
    let report = Target::BlkConforming.run_on(device, &program.encode(), true, OracleLevel::Full);
    vhost_user::shutdown();
    report
}

/// Asserts the run passed, showing its trace if not, and returns the trace.
fn passes(report: stopfuzz::engine::Report) -> String {
    let trace = report.trace.map(|t| t.cut(usize::MAX)).unwrap_or_default();
    assert_eq!(report.outcome, Outcome::Pass, "{trace}");
    trace
}

/// `n` times: a write made, published, kicked, polled and reaped, then `then`.
fn writes_each_then(n: usize, then: &[Op]) -> Vec<Op> {
    let mut ops = Vec::new();
    for _ in 0..n {
        ops.extend([
            submit(ReqType::Write, 1),
            Op::Publish { queue: 0 },
            Op::Kick { queue: 0 },
            Op::Poll,
            Op::Reap { queue: 0 },
        ]);
        ops.extend_from_slice(then);
    }
    ops
}

/// Asserts the run found `no-panic`, with `text` in its message.
fn finds_no_panic(report: stopfuzz::engine::Report, text: &str) {
    match report.outcome {
        Outcome::Finding(f) => {
            assert_eq!(f.invariant, Invariant::NoPanic, "{}", f.message);
            assert!(f.message.contains(text), "{}", f.message);
        }
        Outcome::Pass => panic!(
            "a back-end that died passed:\n{}",
            report.trace.map(|t| t.cut(usize::MAX)).unwrap_or_default()
        ),
    }
}

fn children() -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(tasks) = std::fs::read_dir("/proc/self/task") {
        for t in tasks.flatten() {
            let kids = std::fs::read_to_string(t.path().join("children")).unwrap_or_default();
            out.extend(kids.split_whitespace().map(String::from));
        }
    }
    out
}

#[test]
fn qsd_round_trip_with_migration_passes_and_lists_its_skips() {
    let _serial = serial();
    if !qsd_installed() {
        return;
    }
    let report = run(device(Template::qsd()), &round_trip());
    let skipped: Vec<Invariant> = report.skipped.iter().map(|s| s.invariant).collect();
    let trace = passes(report);
    assert!(trace.contains("migrated"), "the migration ran:\n{trace}");
    assert_eq!(
        trace.matches("at avail position").count(),
        3,
        "every request was made:\n{trace}"
    );
    for i in [
        Invariant::AvailWindow,
        Invariant::InuseBound,
        Invariant::Contract,
    ] {
        assert!(skipped.contains(&i), "{i} is reported skipped");
    }
    assert!(!skipped.contains(&Invariant::Notify));
    assert!(!skipped.contains(&Invariant::WriteConfined));
    assert!(children().is_empty(), "no back-end left: {:?}", children());
}

/// A write that blkdebug fails completes with IOERR under QSD's declared `report` policy;
/// declared as `ignore`, the same run is a `data` finding: the fault really reaches the
/// back-end and the model.
#[test]
fn qsd_fails_writes_where_the_program_says() {
    let _serial = serial();
    if qsd_installed() {
        fails_writes_where_the_program_says(vhost_user::template::QSD, None);
    }
}

/// The same through `stopfuzz serve --faults {faults}`.
#[test]
fn serve_fails_writes_where_the_program_says() {
    let _serial = serial();
    let command = format!("{} --faults {{faults}}", serve().text);
    fails_writes_where_the_program_says(&command, Some("stopfuzz-reference"));
    assert!(children().is_empty(), "no back-end left: {:?}", children());
}

fn fails_writes_where_the_program_says(command: &str, id: Option<&str>) {
    let template = |policy| {
        let mut t = Template::parse(command, policy).unwrap();
        if let Some(id) = id {
            t.set_id(id).unwrap();
        }
        t
    };
    let program = Program {
        config: config(),
        ops: vec![
            Op::Fail {
                pick: 5,
                error: IoError::NoSpace,
            },
            submit(ReqType::Write, 5),
            Op::Publish { queue: 0 },
            Op::Kick { queue: 0 },
            Op::Poll,
        ],
    };
    passes(run(device(template("report")), &program));
    let report = run(device(template("ignore")), &program);
    let trace = report.trace.map(|t| t.cut(usize::MAX)).unwrap_or_default();
    match report.outcome {
        Outcome::Finding(f) => {
            assert_eq!(f.invariant, Invariant::Data);
            assert!(f.message.contains("observed status 1"), "{}", f.message);
        }
        Outcome::Pass => {
            panic!("a back-end that reports IOERR passed as one that ignores:\n{trace}")
        }
    }
}

#[test]
fn a_back_end_that_will_not_start_is_a_clear_setup_error() {
    let _serial = serial();
    let t = Template::parse(
        "sh -c 'echo cannot open disk >&2; exit 3' {socket}",
        "report",
    )
    .unwrap();
    match run(device(t), &round_trip()).outcome {
        Outcome::Finding(f) => {
            assert_eq!(f.step, 0);
            assert!(f.message.contains("exited"), "{}", f.message);
            assert!(f.message.contains("cannot open disk"), "{}", f.message);
        }
        Outcome::Pass => panic!("a back-end that exits at once cannot pass"),
    }
    let missing = Template::parse("/nonexistent/backend --socket {socket}", "report").unwrap();
    match run(device(missing), &round_trip()).outcome {
        Outcome::Finding(f) => assert!(f.message.contains("cannot start"), "{}", f.message),
        Outcome::Pass => panic!("a missing back-end cannot pass"),
    }
    assert!(children().is_empty(), "no back-end left: {:?}", children());
}

/// A back-end that listens and then dies mid-run: a no-panic finding that keeps its stderr.
#[test]
fn a_back_end_that_dies_is_a_no_panic_finding_with_its_stderr() {
    let _serial = serial();
    if !qsd_installed() {
        return;
    }
    let t = Template::parse(
        "sh -c '(sleep 0.02; echo vu_panic: planted >&2; kill $$) & exec qemu-storage-daemon \"$@\"' sh {blockdev} --export type=vhost-user-blk,id=e0,node-name=disk0,addr.type=unix,addr.path={socket},writable=on",
        "report",
    )
    .unwrap();
    let program = Program {
        config: config(),
        ops: writes_each_then(40, &[Op::Complete { pick: 3 }; 3]),
    };
    finds_no_panic(run(device(t), &program), "vu_panic: planted");
    assert!(children().is_empty(), "no back-end left: {:?}", children());
    assert_eq!(leftovers("vu"), "", "no back-end left");
}

/// `stopfuzz serve` as the back-end: the reference, which a run must find nothing against.
fn serve() -> Template {
    let command = format!(
        "{} serve --socket {{socket}} --image {{image}}",
        env!("CARGO_BIN_EXE_stopfuzz")
    );
    let mut t = Template::parse(&command, "report").expect("the serve template parses");
    t.set_id("stopfuzz-reference").expect("the id fits");
    t
}

/// Against the reference served over vhost-user: migrations one after another (the old
/// back-end serves one front-end and removes its socket, so it cannot be the next one's
/// target), host stops and resumes (the first used update after each may notify), and a
/// device reset with a request made available (the back-end drains it at GET_VRING_BASE:
/// completed, not dropped). Each is clean, every time.
#[test]
fn serve_passes_migrations_resumes_and_a_reset_with_a_request_in_flight() {
    let _serial = serial();
    let mut ops = round_trip().ops;
    ops.extend([
        Op::Reap { queue: 0 },
        Op::Migrate,
        Op::Migrate,
        submit(ReqType::Write, 5),
        Op::Publish { queue: 0 },
        Op::Kick { queue: 0 },
        Op::HostStop,
        Op::HostResume,
        Op::Poll,
        Op::Reap { queue: 0 },
        submit(ReqType::Read, 5),
        Op::Publish { queue: 0 },
        Op::Kick { queue: 0 },
        Op::DeviceReset,
        submit(ReqType::Read, 3),
        Op::Publish { queue: 0 },
        Op::Kick { queue: 0 },
        Op::Poll,
    ]);
    let program = Program {
        config: config(),
        ops,
    };
    let dev = device(serve());
    for _ in 0..10 {
        let trace = passes(run(dev, &program));
        assert_eq!(trace.matches("migrated").count(), 3, "{trace}");
    }
    assert!(children().is_empty(), "no back-end left: {:?}", children());
}

/// With EVENT_IDX, the back-end completes a request on its own time, before the driver
/// moves `used_event` past the entries it had seen: that completion was decided under the
/// old `used_event`, and the next one is due only past the new one. Neither is owed a
/// notification (a harness false positive, once: "expected 1, observed 0").
#[test]
fn serve_is_owed_no_notification_for_a_completion_before_used_event_moved() {
    let _serial = serial();
    let mut ops = vec![
        submit(ReqType::Read, 1),
        Op::Publish { queue: 0 },
        Op::Kick { queue: 0 },
        Op::Poll,
        submit(ReqType::Read, 2),
        Op::Publish { queue: 0 },
        Op::Kick { queue: 0 },
    ];
    // Time for the back-end to complete it, with no call that would observe it.
    ops.extend([Op::Complete { pick: 0 }; 20]);
    ops.extend([
        Op::Reap { queue: 0 },
        submit(ReqType::Read, 3),
        Op::Publish { queue: 0 },
        Op::Kick { queue: 0 },
        Op::Poll,
    ]);
    let program = Program {
        config: Config {
            event_idx: true,
            ..config()
        },
        ops,
    };
    let dev = device(serve());
    for _ in 0..5 {
        passes(run(dev, &program));
    }
    assert!(children().is_empty(), "no back-end left: {:?}", children());
}

fn run_hostile(device: DeviceKind, program: &Program) -> stopfuzz::engine::Report {
    let report = Target::BlkHostile.run_on(device, &program.encode(), true, OracleLevel::Full);
    vhost_user::shutdown();
    report
}

/// A front-end that breaks the protocol in each way `blk_hostile` knows: the served
/// reference refuses (disconnects) or carries on, never crashes or hangs, and the run
/// passes. The two abuses it must see are refused, which shows they reached it.
#[test]
fn serve_refuses_or_survives_every_protocol_abuse() {
    let _serial = serial();
    let mut ops = round_trip().ops;
    ops.extend([
        Op::HostStop,
        Op::HostResume,
        submit(ReqType::Write, 4),
        Op::Publish { queue: 0 },
        Op::Kick { queue: 0 },
        Op::Poll,
    ]);
    for abuse in [
        Abuse::UnofferedFeatures,
        Abuse::BaseBehind,
        Abuse::RingOutsideMemory,
        Abuse::OutOfOrder,
        Abuse::InflightDisagrees,
    ] {
        let program = Program {
            config: Config {
                abuse: Some(abuse),
                event_idx: true,
                ..config()
            },
            ops: ops.clone(),
        };
        let trace = passes(run_hostile(device(serve()), &program));
        assert!(trace.contains("breaks the protocol"), "{trace}");
        if matches!(abuse, Abuse::UnofferedFeatures | Abuse::RingOutsideMemory) {
            assert!(
                trace.contains("the back-end refused"),
                "{abuse:?}:\n{trace}"
            );
        }
    }
    assert!(children().is_empty(), "no back-end left: {:?}", children());
}

/// Refusing a hostile driver is a back-end's right; crashing is not: a back-end killed by
/// a signal (here SIGABRT, as a failed assertion sends) under protocol abuse is a no-panic
/// finding.
#[test]
fn a_crash_under_a_hostile_driver_is_still_a_finding() {
    let _serial = serial();
    let command = format!(
        "sh -c '(sleep 0.01; kill -ABRT $$) & exec \"$@\"' sh {}",
        serve().text
    );
    let mut t = Template::parse(&command, "report").unwrap();
    t.set_id("stopfuzz-reference").unwrap();
    let program = Program {
        config: Config {
            abuse: Some(Abuse::OutOfOrder),
            ..config()
        },
        ops: writes_each_then(100, &[Op::HostStop, Op::HostResume]),
    };
    finds_no_panic(run_hostile(device(t), &program), "SIGABRT");
    assert!(children().is_empty(), "no back-end left: {:?}", children());
}

/// QSD takes INFLIGHT_SHMFD although it does not offer it, and re-runs what an inflight
/// region claims after a reconnect. Handed a region that claims every descriptor in
/// flight, it checks the chains it re-runs and refuses (`vu_panic`) rather than crashing.
#[test]
fn qsd_refuses_an_inflight_region_that_disagrees_with_the_rings() {
    let _serial = serial();
    if !qsd_installed() {
        return;
    }
    let mut ops = round_trip().ops;
    ops.extend([
        submit(ReqType::Write, 4),
        Op::Publish { queue: 0 },
        Op::Kick { queue: 0 },
        Op::Migrate,
        Op::Poll,
    ]);
    let program = Program {
        config: Config {
            abuse: Some(Abuse::InflightDisagrees),
            ..config()
        },
        ops,
    };
    let trace = passes(run_hostile(device(Template::qsd()), &program));
    assert!(trace.contains("the back-end refused"), "{trace}");
    assert!(children().is_empty(), "no back-end left: {:?}", children());
}
