//! The engine and oracle end to end: the reference device passes, a broken device is
//! caught, and runs are deterministic.

use stopfuzz::device::{
    BlkDevice, ConfigError, DeviceConfig, Held, Interrupts, RestoreError, SaveError, Snapshot,
    StopState,
};
use stopfuzz::dut::{Capabilities, DeviceUnderTest};
use stopfuzz::engine::{Engine, Mode, Outcome};
use stopfuzz::explore;
use stopfuzz::oracle::Invariant;
use stopfuzz::program::{Config, Op, Program};
use stopfuzz::seeds::thread_example;
use stopfuzz::targets::Target;
use vm_memory::GuestMemory;

/// The reference device with the thread's canonical bug: on resume it rewinds
/// `last_avail_idx` to the used idx and forgets what it held, so the ring is re-read.
/// Built from the public snapshot API only; the rewind happens at the next poll, where guest
/// memory is at hand.
struct NaiveRewind(BlkDevice, bool);

impl NaiveRewind {
    fn rewind<M: GuestMemory>(&mut self, mem: &M) {
        self.0.host_stop();
        if let Ok(mut snap) = self.0.snapshot() {
            for q in &mut snap.queues {
                q.next_avail = q.next_used;
            }
            snap.requests.clear();
            let mut fresh = BlkDevice::new(self.0.config().clone()).unwrap();
            fresh
                .restore(&snap.encode(), mem)
                .expect("the rewound snapshot restores");
            self.0 = fresh;
        }
        self.0.host_resume();
    }
}

impl DeviceUnderTest for NaiveRewind {
    fn build(config: DeviceConfig) -> Result<Self, ConfigError> {
        BlkDevice::new(config).map(|d| NaiveRewind(d, false))
    }
    fn capabilities(&self) -> Capabilities {
        self.0.capabilities()
    }
    fn config(&self) -> &DeviceConfig {
        self.0.config()
    }
    fn read_status(&self) -> u8 {
        self.0.read_status()
    }
    fn write_status(&mut self, v: u8) {
        self.0.write_status(v)
    }
    fn set_driver_features(&mut self, f: u64) {
        self.0.set_driver_features(f)
    }
    fn queue_set_size(&mut self, q: u16, s: u16) {
        self.0.queue_set_size(q, s)
    }
    fn queue_set_addresses(&mut self, q: u16, d: u64, a: u64, u: u64) {
        self.0.queue_set_addresses(q, d, a, u)
    }
    fn queue_enable(&mut self, q: u16) {
        self.0.queue_enable(q)
    }
    fn queue_reset(&mut self, q: u16) {
        self.0.queue_reset(q)
    }
    fn kick(&mut self, q: u16) {
        self.0.kick(q)
    }
    fn take_interrupts(&mut self) -> Interrupts {
        self.0.take_interrupts()
    }
    fn poll<M: GuestMemory, B: stopfuzz::backend::Backend>(&mut self, mem: &M, disk: &mut B) {
        if std::mem::take(&mut self.1) {
            self.rewind(mem);
        }
        self.0.poll(mem, disk)
    }
    fn host_stop(&mut self) {
        self.0.host_stop()
    }
    fn host_resume(&mut self) {
        self.1 = true;
        self.0.host_resume()
    }
    fn host_retry(&mut self) {
        self.0.host_retry()
    }
    fn host_stop_state(&self) -> StopState {
        self.0.host_stop_state()
    }
    fn save(&self) -> Result<Vec<u8>, SaveError> {
        self.0.save()
    }
    fn restored<M: GuestMemory>(&self, bytes: &[u8], mem: &M) -> Result<Self, RestoreError> {
        self.0.restored(bytes, mem).map(|d| NaiveRewind(d, false))
    }
    fn ring_position(&self, q: u16) -> Option<(u16, u16)> {
        self.0.ring_position(q)
    }
    fn held(&self) -> Vec<Held> {
        DeviceUnderTest::held(&self.0)
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
    let report = engine.run_on::<NaiveRewind>(&thread_example(false), Mode::Conforming, None, true);
    let Outcome::Finding(f) = &report.outcome else {
        panic!(
            "the naive rewind went unnoticed:\n{}",
            report.trace.unwrap().lines.join("\n")
        );
    };
    assert!(
        matches!(
            f.invariant,
            Invariant::ExactlyOnce
                | Invariant::Parked
                | Invariant::Live
                | Invariant::RestoreRejects
                | Invariant::RoundTrip
        ),
        "{f:?}"
    );
    // The finding is at or after the resume, never before it.
    assert!(f.step >= 19, "{f:?}");
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
