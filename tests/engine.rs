//! The engine and oracle end to end: the reference device passes, a broken device is
//! caught, and runs are deterministic.

use stopfuzz::device::{BlkDevice, DeviceConfig, Snapshot};
use stopfuzz::dut::{
    Capabilities, Description, Device, DeviceError, Env, Events, HostControl, Introspection,
    Migration, StopState, Want,
};
use stopfuzz::engine::{Engine, Mode, Outcome};
use stopfuzz::explore;
use stopfuzz::oracle::Invariant;
use stopfuzz::program::{Config, Op, Program};
use stopfuzz::seeds::thread_example;
use stopfuzz::targets::Target;

/// The reference device with the thread's canonical bug: on resume it rewinds
/// `last_avail_idx` to the used idx and forgets what it held, so the ring is re-read.
/// Built from the public snapshot API only; the rewind happens at the next poll, where guest
/// memory is at hand. Written against the boundary alone, as a third-party device would be.
struct NaiveRewind {
    dev: Box<dyn Device>,
    config: DeviceConfig,
    rewind_due: bool,
}

impl NaiveRewind {
    fn build(want: &Want) -> Result<Box<dyn Device>, DeviceError> {
        let dev = stopfuzz::dut::reference::build(want)?;
        let d = dev.describe();
        let config = DeviceConfig {
            num_queues: d.num_queues,
            queue_max_size: d.queue_max_size,
            capacity: d.capacity,
            features: d.features,
            inflight: d.contract.inflight,
            write_policy: d.contract.write_policy,
            read_policy: d.contract.read_policy,
            device_id: d.device_id,
        };
        Ok(Box::new(NaiveRewind {
            dev,
            config,
            rewind_due: false,
        }))
    }

    fn rewind(&mut self, env: &mut Env) {
        self.dev.host().expect("host control").stop(env);
        let saved = self.dev.migration().expect("migration").save();
        if let Ok(bytes) = saved {
            let mut snap = Snapshot::decode(&bytes).unwrap();
            for q in &mut snap.queues {
                q.next_avail = q.next_used;
            }
            snap.requests.clear();
            let mut fresh = BlkDevice::new(self.config.clone()).unwrap();
            fresh
                .restore(&snap.encode(), env.mem)
                .expect("the rewound snapshot restores");
            self.dev = Box::new(fresh);
        }
        self.dev.host().expect("host control").resume(env);
    }
}

impl Device for NaiveRewind {
    fn describe(&self) -> Description {
        self.dev.describe()
    }
    fn capabilities(&self) -> Capabilities {
        self.dev.capabilities()
    }
    fn read_status(&self) -> u8 {
        self.dev.read_status()
    }
    fn write_status(&mut self, v: u8) {
        self.dev.write_status(v)
    }
    fn set_driver_features(&mut self, f: u64) {
        self.dev.set_driver_features(f)
    }
    fn queue_set_size(&mut self, q: u16, s: u16) {
        self.dev.queue_set_size(q, s)
    }
    fn queue_set_addresses(&mut self, q: u16, d: u64, a: u64, u: u64) {
        self.dev.queue_set_addresses(q, d, a, u)
    }
    fn queue_enable(&mut self, q: u16) {
        self.dev.queue_enable(q)
    }
    fn queue_reset(&mut self, q: u16) {
        self.dev.queue_reset(q)
    }
    fn kick(&mut self, q: u16) {
        self.dev.kick(q)
    }
    fn poll(&mut self, env: &mut Env) {
        if std::mem::take(&mut self.rewind_due) {
            self.rewind(env);
        }
        self.dev.poll(env)
    }
    fn take_events(&mut self) -> Events {
        self.dev.take_events()
    }
    fn host(&mut self) -> Option<&mut dyn HostControl> {
        Some(self)
    }
    fn migration(&mut self) -> Option<&mut dyn Migration> {
        self.dev.migration()
    }
    fn introspection(&self) -> Option<&dyn Introspection> {
        self.dev.introspection()
    }
}

impl HostControl for NaiveRewind {
    fn stop(&mut self, env: &mut Env) {
        self.dev.host().unwrap().stop(env)
    }
    fn resume(&mut self, env: &mut Env) {
        self.rewind_due = true;
        self.dev.host().unwrap().resume(env)
    }
    fn retry(&mut self, env: &mut Env) {
        self.dev.host().unwrap().retry(env)
    }
    fn stop_state(&mut self) -> StopState {
        self.dev.host().unwrap().stop_state()
    }
}

#[test]
fn the_reference_device_passes_the_thread_example() {
    let mut engine = Engine::new();
    for migrate in [false, true] {
        let report = engine.run(&thread_example(migrate), Mode::Conforming, false);
        assert_eq!(report.outcome, Outcome::Pass, "migrate={migrate}");
    }
}

#[test]
fn the_thread_example_reaches_out_of_order_slot_reuse() {
    let report = Engine::new().run(&thread_example(false), Mode::Conforming, false);
    assert!(
        report
            .scenarios
            .has(stopfuzz::engine::Scenarios::OOO_SLOT_REUSE)
    );
}

#[test]
fn a_naive_rewind_on_resume_is_caught() {
    let mut engine = Engine::new();
    let report = engine.run_on(
        &NaiveRewind::build,
        &thread_example(false),
        Mode::Conforming,
        None,
        true,
    );
    let Outcome::Finding(f) = &report.outcome else {
        panic!(
            "the naive rewind went unnoticed:\n{}",
            report.trace.unwrap().lines.join("\n")
        );
    };
    // Step 19 resumes; step 21 (Settle) is the first poll after it, where the rewind
    // happens. With next_avail back at used idx 2, the device re-reads avail positions 2
    // and 3, whose heads C and D now carry F's and E's chains, then position 4 (slot 0),
    // E's head again: a head it already holds, so it goes NEEDS_RESET under a conforming
    // driver. That is the thread's "runs E and F twice", stopped at the first repeat.
    assert_eq!((f.invariant, f.step), (Invariant::Live, 21), "{f:?}");
}

#[test]
fn runs_are_deterministic() {
    let mut engine = Engine::new();
    for index in 0..40 {
        for target in Target::ALL {
            let input = explore::input(target, 3, index);
            let a = target.run(&input, false);
            let b = target.run(&input, true);
            assert_eq!(a.digest, b.digest, "{} input {index}", target.name());
            assert_eq!(a.outcome, b.outcome);
        }
        let p = Program::decode(&explore::input(Target::BlkHostile, 5, index));
        let a = engine.run(&p, Mode::Hostile, false);
        let b = engine.run(&p, Mode::Hostile, false);
        assert_eq!(a, b);
    }
}

#[test]
fn the_reference_device_runs_clean_on_every_target() {
    for target in Target::ALL {
        for index in 0..150 {
            let input = explore::input(target, 99, index);
            let report = target.run(&input, false);
            if let Outcome::Finding(f) = report.outcome {
                let trace = target.run(&input, true).trace.unwrap().cut(f.step);
                panic!("{} input {index}: {f:?}\n{trace}", target.name());
            }
        }
    }
}

#[test]
fn hostile_ops_are_skipped_by_the_conforming_target() {
    let program = Program {
        config: Config::default(),
        ops: vec![Op::AvailJump {
            queue: 0,
            jump: stopfuzz::program::Jump::Ahead,
            n: 0,
        }],
    };
    let mut engine = Engine::new();
    assert_eq!(
        engine.run(&program, Mode::Conforming, false).outcome,
        Outcome::Pass
    );
    let hostile = engine.run(&program, Mode::Hostile, false);
    assert_eq!(hostile.outcome, Outcome::Pass);
    assert!(
        hostile
            .scenarios
            .has(stopfuzz::engine::Scenarios::NEEDS_RESET_HOSTILE)
    );
}

#[test]
fn snapshots_from_the_device_decode() {
    let mut dev = BlkDevice::new(DeviceConfig::default()).unwrap();
    dev.host_stop();
    let bytes = dev.save().unwrap();
    assert_eq!(Snapshot::decode(&bytes).unwrap().encode(), bytes);
}
