//! The VMM's side: host stop and resume (invisible to the guest), retry after a storage
//! fix, and migration.

use super::{Run, Scenarios};
use crate::dut::DiskControl;
use crate::oracle::{Check, conforming};
use crate::stops::{Asked, Side, Stops};

impl Run<'_> {
    /// Host stop or resume: invisible to the guest.
    pub(super) fn host(&mut self, stop: bool) -> Check {
        if self.dev.host().is_none() {
            self.note(|| "skipped: the device offers no host control".into());
            return Ok(());
        }
        let status = self.dev.read_status();
        let asked = self.stops;
        if stop {
            self.stops.request(Side::Host);
        } else {
            self.resume_record();
        }
        self.call(|d, env| {
            if let Some(h) = d.host() {
                if stop { h.stop(env) } else { h.resume(env) }
            }
        })?;
        if stop {
            self.stopped_queues()?;
        }
        if self.conforming() {
            let what = if stop { "host stop" } else { "host resume" };
            // Notifications for used entries the call saw are judged by `notify`.
            let (after, events) = (self.visible_status(&asked, status), self.last_undue);
            self.check(|| conforming::transparent(what, status, after, events))?;
        }
        Ok(())
    }

    pub(super) fn host_resume(&mut self) -> Check {
        self.resume_record();
        self.call(|d, env| {
            if let Some(h) = d.host() {
                h.resume(env)
            }
        })
    }

    /// A host resume in the record: a retry point if it ends a stop.
    fn resume_record(&mut self) {
        if self.stops.host.asked != Asked::Running {
            self.model.retry_point(self.step);
            self.paused_on_error = false;
            if self.caps.resume_forgets_signal {
                self.signal_forgotten = [true; crate::program::MAX_QUEUES];
            }
        }
        self.stops.resume(Side::Host);
    }

    /// The storage problem is fixed, and the host retries. A device that does its own I/O
    /// and heals it is polled first, so that what failed before the fix is judged by the
    /// faults, and what completes after by none.
    pub(super) fn heal(&mut self) -> Check {
        match (self.caps.disk, self.caps.heals) {
            (DiskControl::Harness, _) => self.disk.heal(),
            (DiskControl::External, true) => {
                self.poll()?;
                self.model.faults.clear();
            }
            (DiskControl::External, false) => {}
        }
        self.host_retry()
    }

    /// The host tells the device to retry.
    fn host_retry(&mut self) -> Check {
        if self.dev.host().is_none() {
            return Ok(());
        }
        self.model.retry_point(self.step);
        self.paused_on_error = false;
        self.call(|d, env| {
            if let Some(h) = d.host() {
                h.retry(env)
            }
        })
    }

    /// The status now, except that a stop the driver requested may have been acknowledged
    /// since `asked` was recorded: that change is the driver's doing, not the host's.
    fn visible_status(&self, asked: &Stops, before: u8) -> u8 {
        let acked_since = asked.driver.pending() && self.stops.driver.asked == Asked::Acked;
        if acked_since {
            before
        } else {
            self.dev.read_status()
        }
    }

    /// A host stop, then what a VMM does to get the acknowledgement: let the disk finish
    /// its I/O and the device run. Under Drain a parked request can still withhold it.
    /// Returns the interrupts of the stop call itself that no used entry explains.
    pub(super) fn host_stop_and_wait(&mut self) -> Result<u32, crate::oracle::Violation> {
        self.stops.request(Side::Host);
        self.call(|d, env| {
            if let Some(h) = d.host() {
                h.stop(env)
            }
        })?;
        let events = self.last_undue;
        self.await_acks(true)?;
        self.stopped_queues()?;
        Ok(events)
    }

    /// At an acknowledged host stop, each queue as the device counts it, where it shows
    /// that ([`crate::dut::Capabilities::queue_state_at_stops`]).
    pub(super) fn stopped_queues(&mut self) -> Check {
        if !self.caps.queue_state_at_stops
            || !self.conforming()
            || !self.checks
            || self.stops.host.asked != Asked::Acked
        {
            return Ok(());
        }
        for q in 0..self.queues() {
            let Some(s) = self.dev.queue_state(q) else {
                continue;
            };
            let queue = &self.driver.queues[usize::from(q)];
            let (published, size) = (queue.published, queue.size);
            let ring_used = self.driver.used_idx(self.mem.mem(), q);
            let parkable = self.model.parkable(q, &self.desc.faults);
            self.check(|| conforming::stopped_queue(q, s, ring_used, published, size, parkable))?;
        }
        Ok(())
    }

    /// Rounds of completing every disk I/O and polling, while a stop waits for its
    /// acknowledgement (only the host's, with `host_only`): enough polls for `stop-acked`
    /// to judge one that is due.
    pub(super) fn await_acks(&mut self, host_only: bool) -> Check {
        for _ in 0..=conforming::ACK_POLLS {
            let waiting = if host_only {
                self.stops.host.pending()
            } else {
                self.stops.pending()
            };
            if !waiting {
                break;
            }
            self.complete_all_io();
            self.poll()?;
        }
        Ok(())
    }

    /// Stop, wait for the acknowledgement, save, restore into a fresh device, resume. A
    /// stop that is not acknowledged, or a save or restore that fails, aborts the migration
    /// and the source carries on.
    pub(super) fn migrate(&mut self) -> Check {
        if self.dev.host().is_none() || self.dev.migration().is_none() {
            self.note(|| "skipped: the device offers no host stop or migration".into());
            return Ok(());
        }
        let status = self.dev.read_status();
        let asked = self.stops;
        self.stops.migrating();
        let was_running = asked.host.asked == Asked::Running;
        // Interrupts from the lifecycle calls themselves; those of the polls in between
        // are the device's due work, checked by `notify`.
        let mut events = self.host_stop_and_wait()?;
        let bytes = match (self.stops.host.asked, self.dev.migration()) {
            (Asked::Acked, Some(m)) => m.save().map_err(|e| e.to_string()),
            _ => Err("the stop was not acknowledged".into()),
        };
        let bytes = match bytes {
            Ok(b) => b,
            Err(why) => {
                self.note(|| format!("migration aborted: {why}"));
                return if was_running {
                    self.host_resume()
                } else {
                    Ok(())
                };
            }
        };
        if self.paused_on_error || self.model.open_ids().any(|id| self.model.is_parked(id)) {
            self.scenarios.set(Scenarios::MIGRATE_PARKED);
        }
        match self.restore(&bytes) {
            Ok(mut dev) => {
                if !self.caps.save_ends_device {
                    let again = match dev.migration() {
                        Some(m) => m.save().map_err(|e| e.to_string()),
                        None => Err("the restored device cannot be saved".into()),
                    };
                    self.check(|| {
                        conforming::round_trip(&bytes, again.as_deref().map_err(Clone::clone))
                    })?;
                }
                self.dev = dev;
                self.stops.restored();
                // The destination's count, loaded from the stream.
                self.stopped_queues()?;
                self.signal_valid = [false; crate::program::MAX_QUEUES];
                self.note(|| format!("migrated: {} snapshot bytes", bytes.len()));
            }
            Err(e) if self.conforming() && self.checks => {
                return Err(conforming::restore_accepts_own(e));
            }
            Err(e) => self.note(|| format!("migration aborted: restore refused: {e}")),
        }
        if was_running {
            self.host_resume()?;
            events += self.last_undue;
        }
        if self.conforming() {
            let after = self.visible_status(&asked, status);
            self.check(|| conforming::transparent("migration", status, after, events))?;
        }
        Ok(())
    }

    /// A fresh device restored from `bytes` over the same memory and disk.
    pub(super) fn restore(
        &mut self,
        bytes: &[u8],
    ) -> Result<Box<dyn crate::dut::Device>, crate::dut::DeviceError> {
        let mut env = crate::dut::Env {
            mem: self.mem.mem(),
            disk: &mut self.disk,
        };
        match self.dev.migration() {
            Some(m) => m.restore_fresh(bytes, &mut env),
            None => Err(crate::dut::DeviceError::Refused("no migration".into())),
        }
    }
}
