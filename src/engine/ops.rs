//! The conforming ops: what a driver that follows the spec, and the disk, can do.

use std::borrow::Cow;

use super::{Run, Scenarios};
use crate::backend::{IoError, IoTag, SECTOR_SIZE};
use crate::driver::Driver;
use crate::dut::DiskControl;
use crate::model::{ReqState, Request};
use crate::oracle::Check;
use crate::program::{Op, ReqType, Shape, Trigger};
use crate::stops::{Asked, Side};
use crate::virtio::*;

impl Run<'_> {
    pub(super) fn apply(&mut self, op: &Op) -> Check {
        // The guest's vCPUs are stopped with the VM: a realistic driver does nothing, and
        // the hostile one says what no guest could do.
        let frozen = op.kind().is_guest()
            && self.caps.stop_freezes_guest
            && self.stops.host.asked != Asked::Running;
        let skipped = frozen && self.conforming() && !op.kind().is_hostile();
        if frozen && !skipped && self.mode == super::Mode::Hostile {
            self.note(|| {
                "the VM is paused: no guest could do this, the hostile driver does".into()
            });
        }
        if op.kind().is_hostile() {
            if self.mode == super::Mode::Conforming {
                self.note(|| "skipped: hostile op in the conforming target".into());
                return Ok(());
            }
            self.hostile = true;
            return self.apply_hostile(op);
        }
        if skipped {
            self.note(|| "skipped: the guest is paused with the VM".into());
            return Ok(());
        }
        let nq = self.queues();
        if self.caps.disk == DiskControl::External {
            match *op {
                // A device on its own time: let its disk run a little.
                Op::Complete { pick } if !self.caps.deterministic => {
                    let us = 50 * u64::from(pick % 4);
                    std::thread::sleep(std::time::Duration::from_micros(us));
                    self.note(|| format!("waited {us} µs for the device's disk"));
                    return Ok(());
                }
                Op::Fail { .. } | Op::DiskFull if self.caps.faults => {
                    self.note(|| "built into the device's disk at setup".into());
                    return Ok(());
                }
                Op::Heal if self.caps.heals => return self.heal(),
                Op::Complete { .. } | Op::Fail { .. } | Op::DiskFull | Op::Heal => {
                    self.note(|| "skipped: the device does its own disk I/O".into());
                    return Ok(());
                }
                _ => {}
            }
        }
        match *op {
            Op::Submit {
                queue,
                req,
                shape,
                sector,
                sectors,
                seed,
            } => self.submit(
                u16::from(queue) % nq,
                req,
                shape,
                sector,
                sectors,
                seed,
                false,
            ),
            Op::Publish { queue } => {
                if self.driver_stopping() {
                    self.note(|| "skipped: the driver has stopped the device".into());
                    return Ok(());
                }
                let q = u16::from(queue) % nq;
                self.driver.publish(self.mem.mem(), q);
                self.model.publish(q);
                Ok(())
            }
            Op::Kick { queue } => {
                let q = u16::from(queue) % nq;
                if self.driver_stopping() {
                    self.note(|| "skipped: the driver has stopped the device".into());
                    return Ok(());
                }
                if self.driver.kick_needed(self.mem.mem(), q) {
                    self.call(|d, _| d.kick(q))
                } else {
                    self.note(|| "no kick: the device did not ask for one".into());
                    Ok(())
                }
            }
            Op::Poll => self.poll(),
            Op::Complete { pick } => {
                self.finish_io(pick, None);
                Ok(())
            }
            Op::Fail { pick, error } => {
                self.finish_io(pick, Some(error));
                Ok(())
            }
            Op::DiskFull => {
                self.disk.fill();
                Ok(())
            }
            Op::Heal => self.heal(),
            Op::Reap { queue } => {
                self.reap(u16::from(queue) % nq);
                Ok(())
            }
            Op::DriverStop => self.driver_stop(),
            Op::DriverResume => self.driver_resume(),
            Op::HostStop => self.host(true),
            Op::HostResume => self.host(false),
            Op::Migrate => self.migrate(),
            Op::QueueReset { queue } => {
                let q = u16::from(queue) % nq;
                if !self.driver.has(F_RING_RESET) || self.driver_stopping() {
                    self.note(|| {
                        "skipped: RING_RESET not negotiated, or the device is stopped".into()
                    });
                    return Ok(());
                }
                if self.desc.known.busy_queue_reset && self.busy(q) {
                    self.note(|| {
                        "skipped: requests in flight, and the device keeps them across a queue reset (a known deviation; --strict resets anyway)".into()
                    });
                    return Ok(());
                }
                // Dropped by the reset: what the device completes during it (a drain) is an
                // ordinary completion; nothing may complete after it.
                self.dropping = Some(Some(q));
                let reset = self.call(|d, _| d.queue_reset(q));
                self.drop_reset();
                reset?;
                self.driver.reset_queue(self.mem.mem(), q);
                self.signal_valid[usize::from(q)] = false;
                self.event_moved_at[usize::from(q)] = None;
                self.setup_queue(q, 0)
            }
            Op::DeviceReset => self.device_reset(false),
            Op::SystemReset => self.device_reset(true),
            Op::Settle => self.settle(),
            _ => unreachable!("hostile ops are applied above"),
        }
    }

    /// A device reset, or with `system` the host's reset of the whole machine: to the
    /// device the same (docs: README, "system_reset"), except that it also drops what the
    /// device parked and the VM runs on.
    fn device_reset(&mut self, system: bool) -> Check {
        self.stops.device_reset();
        // A reset takes effect when the write of 0 returns: what the device completes until
        // then (a vhost-user back-end drains its rings at the GET_VRING_BASE that stops
        // them) is an ordinary completion; what is still open after it is dropped.
        self.dropping = Some(None);
        let mut whole = false;
        let reset = self.call(|d, env| {
            whole = system && d.host().is_some_and(|h| h.system_reset(env));
            if !whole {
                d.write_status(0);
            }
        });
        self.drop_reset();
        self.paused_on_error = false;
        reset?;
        if system && !whole {
            self.note(|| "no system reset here: the device is reset with status 0".into());
        }
        // A reset ends hostility once no disk I/O from it can still land; the model then
        // takes the disk as it is. A device that does its own I/O never shows that.
        if self.hostile
            && self.caps.disk == DiskControl::Harness
            && self.disk.outstanding().next().is_none()
        {
            self.hostile = false;
            let image = self.disk_image().into_owned();
            self.model.take_disk(&image);
        }
        let (features, size) = (self.features, self.driver.queues[0].size);
        self.driver = Driver::new(self.mem.mem(), features, self.queues(), size, 0, true);
        self.initialize(0)
    }

    /// The requests a reset drops, unless the call that made it already dropped them.
    pub(super) fn drop_reset(&mut self) {
        if let Some(q) = self.dropping.take() {
            self.model.abandon(q);
        }
    }

    /// The disk as it stands: the harness's, or the one the device does its own I/O on.
    pub(super) fn disk_image(&self) -> Cow<'_, [u8]> {
        match self.caps.disk {
            DiskControl::Harness => Cow::Borrowed(self.disk.image()),
            DiskControl::External => Cow::Owned(self.dev.disk_image().unwrap_or_default()),
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn submit(
        &mut self,
        q: u16,
        req: ReqType,
        shape: Shape,
        sector: u8,
        sectors: u8,
        seed: u8,
        force: bool,
    ) -> Check {
        if self.driver_stopping() && !force {
            self.note(|| "skipped: the driver has stopped the device".into());
            return Ok(());
        }
        // What a device does with a FLUSH it never offered is the reference's choice
        // (UNSUPP), not the spec's: a third-party device is not held to it.
        if req == ReqType::Flush && !self.driver.has(F_FLUSH) && !self.caps.deterministic {
            self.note(|| "skipped: FLUSH not negotiated".into());
            return Ok(());
        }
        let disk = self.desc.capacity;
        let (sector, n) = match req {
            ReqType::Read | ReqType::Write => {
                let n = u64::from(sectors.clamp(1, 4)).min(disk);
                (u64::from(sector) % (disk - n + 1), n)
            }
            ReqType::Flush | ReqType::GetId => (0, 0),
        };
        if !force && self.model.overlaps(req, sector, n) {
            self.note(|| "skipped: it would race an unfinished request".into());
            return Ok(());
        }
        let len = (n * SECTOR_SIZE) as usize;
        let data = match req {
            ReqType::Write => pattern(seed, sector, len),
            ReqType::Read => vec![0xa5; len],
            ReqType::GetId => vec![0xa5; ID_BYTES],
            ReqType::Flush => Vec::new(),
        };
        let Some(built) = self
            .driver
            .build(self.mem.mem(), q, req, shape, sector, &data)
        else {
            self.note(|| "skipped: not enough free descriptors".into());
            return Ok(());
        };
        let size = self.driver.queues[usize::from(q)].size;
        let earlier = built.avail_pos.wrapping_sub(size);
        if self.model.open_ids().any(|id| {
            let r = &self.model.requests[id];
            r.q == q && r.avail_pos == earlier && r.state == ReqState::Published
        }) {
            self.scenarios.set(Scenarios::OOO_SLOT_REUSE);
        }
        self.note(|| {
            format!(
                "head {} at avail position {} (sector {sector}, {n} sectors)",
                built.head, built.avail_pos
            )
        });
        self.model.add(Request {
            q,
            head: built.head,
            avail_pos: built.avail_pos,
            kind: req,
            sector,
            sectors: n,
            data: if req == ReqType::Write {
                data
            } else {
                Vec::new()
            },
            writable: built.writable,
            data_addr: built.data_addr,
            status_addr: built.status_addr,
            state: ReqState::Staged,
            io: None,
            last: None,
            attempts: 0,
            fetched: None,
        });
        Ok(())
    }

    /// The driver frees what it saw used on queue `q` and moves `used_event`. A device
    /// running on its own time may have moved used idx past what the driver saw: where it
    /// stands when the new `used_event` lands is recorded, as Linux re-reads used idx
    /// after moving it.
    fn reap(&mut self, q: u16) {
        let mem = self.mem.mem();
        let event = self
            .driver
            .has(F_EVENT_IDX)
            .then(|| self.driver.used_event(mem, q));
        self.driver.reap(mem, q);
        if self.caps.deterministic || event.is_none_or(|e| e == self.driver.used_event(mem, q)) {
            return;
        }
        // The back-end reads used_event after writing used idx; this orders the other way.
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        self.event_moved_at[usize::from(q)] = Some(self.driver.used_idx(mem, q));
    }

    /// Completes or fails the `pick`-th outstanding disk I/O, and records how the disk
    /// really ended it.
    fn finish_io(&mut self, pick: u8, error: Option<IoError>) {
        let tags: Vec<IoTag> = self.disk.outstanding().map(|(t, _)| t).collect();
        if tags.is_empty() {
            self.note(|| "skipped: no disk I/O outstanding".into());
            return;
        }
        let tag = tags[usize::from(pick) % tags.len()];
        let result = match error {
            Some(e) => {
                self.disk.fail(tag, e);
                Err(e)
            }
            None => self.disk.complete(tag).unwrap_or(Err(IoError::Io)),
        };
        self.note(|| format!("disk I/O {tag}: {result:?}"));
        self.model.io_finished(tag, result);
    }

    pub(super) fn complete_all_io(&mut self) {
        while self.disk.outstanding().next().is_some() {
            self.finish_io(0, None);
        }
    }

    /// Completes every disk I/O and polls, until nothing is outstanding.
    fn settle(&mut self) -> Check {
        for _ in 0..4 {
            self.complete_all_io();
            self.poll()?;
            if self.disk.outstanding().next().is_none() {
                break;
            }
        }
        Ok(())
    }

    /// Queue `q` has requests made available that the device has not used: it may hold them.
    fn busy(&self, q: u16) -> bool {
        let queue = &self.driver.queues[usize::from(q)];
        queue.published != self.driver.used_idx(self.mem.mem(), q)
    }

    /// The driver has asked for a stop and not resumed: it makes nothing new available.
    pub(super) fn driver_stopping(&self) -> bool {
        self.stops.driver.asked != Asked::Running
    }

    pub(super) fn driver_stop(&mut self) -> Check {
        if self.driver_stopping() {
            self.note(|| "skipped: already stopped".into());
            return Ok(());
        }
        if !self.offered.driver_stop {
            self.note(|| "skipped: the device does not offer the stop trigger".into());
            return Ok(());
        }
        let bit = self.cfg.trigger.status_bit();
        let status = self.dev.read_status();
        self.stops.request(Side::Driver);
        self.call(|d, _| d.write_status(status | bit))
    }

    pub(super) fn driver_resume(&mut self) -> Check {
        if !self.driver_stopping() {
            self.note(|| "skipped: not stopped".into());
            return Ok(());
        }
        let status = self.dev.read_status();
        let value = match self.cfg.trigger {
            Trigger::Suspend => (status | S_DRIVER_OK) & !S_SUSPEND,
            Trigger::StopBit => status & !S_STOPPED,
        };
        self.stops.resume(Side::Driver);
        self.model.retry_point(self.step);
        self.call(|d, _| d.write_status(value))
    }
}

/// The bytes a write of `len` bytes at `sector` carries: distinct per seed and sector.
pub fn pattern(seed: u8, sector: u64, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| {
            (i as u64 ^ sector.wrapping_mul(0x9e37) ^ u64::from(seed) << 3).wrapping_mul(31) as u8
        })
        .collect()
}
