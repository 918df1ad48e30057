//! Bringing a device up: build it, negotiate features, lay out the rings, DRIVER_OK.

use super::{Mode, Run, Scenarios};
use crate::backend::MemDisk;
use crate::contract::Contract;
use crate::driver::Driver;
use crate::driver::layout::MEM_SIZE;
use crate::dut::Fault;
use crate::dut::{DiskControl, Events, Factory, Want, WriteObservation};
use crate::memory::GuestMem;
use crate::model::Model;
use crate::oracle::skipped::Offered;
use crate::oracle::{Check, Violation, conforming};
use crate::program::{MAX_QUEUES, Op, Program};
use crate::shadow::Shadow;
use crate::stops::Stops;
use crate::trace::{Digest, Trace};
use crate::virtio::*;

impl<'m> Run<'m> {
    pub(super) fn new(
        mem: &'m GuestMem,
        shadow: &'m mut Option<Shadow>,
        factory: &dyn Factory,
        program: &Program,
        mode: Mode,
        traced: bool,
        checks: bool,
    ) -> Result<Self, Violation> {
        let cfg = program.config.clone();
        let capacity = u64::from(cfg.disk_sectors);
        let want = Want {
            queues: u16::from(cfg.queues),
            capacity,
            contract: Contract {
                inflight: cfg.inflight,
                write_policy: cfg.write_policy,
                read_policy: cfg.read_policy,
            },
            memory: mem.share(),
            faults: faults(&program.ops, capacity),
            slow: program.ops.contains(&Op::DiskFull),
            abuse: cfg.abuse.filter(|_| mode == Mode::Hostile),
            hostile: mode == Mode::Hostile,
            queue_size: cfg.queue_size,
            variant: cfg.start_index,
        };
        let mut dev = factory
            .build(&want)
            .map_err(|e| conforming::setup_refused(format!("its configuration: {e}")))?;
        let desc = dev.describe();
        let caps = dev.capabilities();
        let trigger = cfg.trigger.feature();
        let queues = u16::from(cfg.queues)
            .min(desc.num_queues)
            .clamp(1, MAX_QUEUES as u16);
        let mut features = F_VERSION_1 | trigger;
        for (on, f) in [
            (cfg.event_idx, F_EVENT_IDX),
            (cfg.indirect, F_INDIRECT_DESC),
            (cfg.flush, F_FLUSH),
            (cfg.ring_reset, F_RING_RESET),
            (queues > 1, F_MQ),
        ] {
            if on {
                features |= f;
            }
        }
        features &= desc.features;
        let offered = Offered {
            writes: caps.writes,
            disk: caps.disk,
            host: dev.host().is_some(),
            migration: dev.migration().is_some(),
            introspection: dev.introspection().is_some(),
            snapshot_inspection: dev.snapshot_inspection().is_some(),
            driver_stop: features & trigger != 0,
            remote: !caps.deterministic,
            faults: caps.disk == DiskControl::Harness || caps.faults,
            parks: desc.contract.write_policy.parks() || desc.contract.read_policy.parks(),
            save_ends: caps.save_ends_device,
            positions_at_stops: caps.queue_state_at_stops,
        };
        let start = if dev.ring_base().is_some() {
            cfg.start_index
        } else {
            0
        };
        let size = cfg.queue_size.min(desc.queue_max_size);
        if caps.writes == WriteObservation::Diff && shadow.is_none() {
            *shadow = Some(Shadow::new(MEM_SIZE));
        }
        let shadow = match caps.writes {
            WriteObservation::Diff => shadow.as_mut(),
            _ => None,
        };
        let mut model = Model::new(
            desc.capacity,
            desc.contract.write_policy,
            desc.contract.read_policy,
            features & F_FLUSH != 0,
            desc.device_id,
        );
        model.io_unseen = caps.disk == crate::dut::DiskControl::External;
        model.faults = desc.faults.clone();
        model.id_checked = desc.id_checked;
        model.failed_read_len = desc.known.failed_read_len;
        if !desc.keeps_data {
            model.uncertain.fill(true);
        }
        let mut run = Run {
            mem,
            shadow,
            synced: mem.checkpoint(),
            dev,
            disk: MemDisk::new(desc.capacity),
            // Guest memory was just reset: the rings are zeros.
            driver: Driver::new(mem.mem(), features, queues, size, start, false),
            model,
            desc,
            caps,
            offered,
            cfg,
            mode,
            features,
            // A device that breaks its protocol is owed only what any driver is owed.
            hostile: want.abuse.is_some() && caps.abuse,
            stops: Stops::default(),
            step: 0,
            signal_valid: [false; MAX_QUEUES],
            signal_forgotten: [false; MAX_QUEUES],
            event_moved_at: [None; MAX_QUEUES],
            dropping: None,
            used_seen: [None; MAX_QUEUES],
            scenarios: Scenarios::default(),
            digest: Digest::default(),
            trace: traced.then(Trace::default),
            last_events: Events::default(),
            last_undue: 0,
            stop_unscanned: false,
            paused_on_error: false,
            foreign: false,
            polling: false,
            checks,
        };
        if let Some(abuse) = want.abuse.filter(|_| caps.abuse) {
            run.note(|| format!("the front-end breaks the protocol: {abuse:?}"));
        }
        if start != run.cfg.start_index {
            run.note(|| "the device cannot set a ring base: rings start at 0".into());
        }
        run.initialize(start)?;
        Ok(run)
    }

    /// virtio initialization: status sequence, features, queues (starting at `base`),
    /// DRIVER_OK.
    pub(super) fn initialize(&mut self, base: u16) -> Check {
        let features = self.features;
        self.used_seen = [None; MAX_QUEUES];
        self.call(|d, _| d.write_status(S_ACKNOWLEDGE))?;
        self.call(|d, _| d.write_status(S_ACKNOWLEDGE | S_DRIVER))?;
        self.call(|d, _| d.set_driver_features(features))?;
        self.call(|d, _| d.write_status(S_ACKNOWLEDGE | S_DRIVER | S_FEATURES_OK))?;
        let status = self.dev.read_status();
        self.check(|| conforming::features_accepted(status, features))?;
        for q in 0..self.queues() {
            self.setup_queue(q, base)?;
        }
        self.stops.live = true;
        self.call(|d, _| d.write_status(S_ACKNOWLEDGE | S_DRIVER | S_FEATURES_OK | S_DRIVER_OK))?;
        self.signal_valid = [false; MAX_QUEUES];
        self.signal_forgotten = [false; MAX_QUEUES];
        self.event_moved_at = [None; MAX_QUEUES];
        Ok(())
    }

    pub(super) fn setup_queue(&mut self, q: u16, base: u16) -> Check {
        let dq = &self.driver.queues[usize::from(q)];
        let (size, desc, avail, used) = (dq.size, dq.desc, dq.avail, dq.used);
        self.used_seen[usize::from(q)] = None;
        self.call(|d, _| {
            d.queue_set_size(q, size);
            d.queue_set_addresses(q, desc, avail, used);
            if base != 0
                && let Some(rb) = d.ring_base()
            {
                rb.set_base(q, base);
            }
            d.queue_enable(q);
        })
    }
}

/// Most faults one device is built with.
const MAX_FAULTS: usize = 4;

/// The faults a device that does its own I/O is built with, one per `Fail` op: `pick` bit 7
/// picks reads (else writes), bits 0-6 the sector (modulo the disk).
fn faults(ops: &[Op], capacity: u64) -> Vec<Fault> {
    let mut out: Vec<Fault> = Vec::new();
    for op in ops {
        if let Op::Fail { pick, error } = *op {
            let fault = Fault {
                write: pick & 0x80 == 0,
                sector: u64::from(pick & 0x7f) % capacity.max(1),
                error,
            };
            if out.len() < MAX_FAULTS
                && !out
                    .iter()
                    .any(|f| f.write == fault.write && f.sector == fault.sector)
            {
                out.push(fault);
            }
        }
    }
    out
}
