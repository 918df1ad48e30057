//! The VMM's side: host stop and resume (invisible to the guest), retry after a storage
//! fix, and migration.

use super::{Run, Scenarios};
use crate::dut::{Events, StopState};
use crate::oracle::{Check, conforming};

impl Run<'_> {
    /// The host stop state the device reports, `None` without host control.
    pub(super) fn host_state(&mut self) -> Option<StopState> {
        self.dev.host().map(|h| h.stop_state())
    }

    /// Host stop or resume: invisible to the guest.
    pub(super) fn host(&mut self, stop: bool) -> Check {
        if self.dev.host().is_none() {
            self.note(|| "skipped: the device offers no host control".into());
            return Ok(());
        }
        let status = self.dev.read_status();
        self.call(|d, env| {
            if let Some(h) = d.host() {
                if stop { h.stop(env) } else { h.resume(env) }
            }
        })?;
        if self.conforming() {
            let what = if stop { "host stop" } else { "host resume" };
            let (after, events) = (self.visible_status(status), self.last_events.total());
            self.check(|| conforming::transparent(what, status, after, events))?;
        }
        Ok(())
    }

    pub(super) fn host_resume(&mut self) -> Check {
        self.call(|d, env| {
            if let Some(h) = d.host() {
                h.resume(env)
            }
        })
    }

    /// The disk was healed: the host tells the device to retry.
    pub(super) fn host_retry(&mut self) -> Check {
        if self.dev.host().is_none() {
            return Ok(());
        }
        self.call(|d, env| {
            if let Some(h) = d.host() {
                h.retry(env)
            }
        })
    }

    /// The status now, except that a stop the driver requested may have been acknowledged
    /// meanwhile: that change is the driver's doing, not the host's.
    fn visible_status(&self, before: u8) -> u8 {
        let now = self.dev.read_status();
        let acked_since =
            self.driver.stop_requested && !self.driver_acked(before) && self.driver_acked(now);
        if acked_since { before } else { now }
    }

    /// A host stop, then what a VMM does to get the acknowledgement: let the disk finish
    /// its I/O and the device run. Under Drain a parked request can still withhold it.
    /// Returns the events of the stop call itself.
    pub(super) fn host_stop_and_wait(&mut self) -> Result<Events, crate::oracle::Violation> {
        self.call(|d, env| {
            if let Some(h) = d.host() {
                h.stop(env)
            }
        })?;
        let events = self.last_events;
        for _ in 0..4 {
            if self.host_state() == Some(StopState::Stopped) {
                break;
            }
            self.complete_all_io();
            self.poll()?;
        }
        Ok(events)
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
        let was_running = self.host_state() == Some(StopState::Running);
        // Interrupts from the lifecycle calls themselves; those of the polls in between
        // are the device's due work, checked by `notify`.
        let mut events = self.host_stop_and_wait()?;
        let bytes = match (self.host_state(), self.dev.migration()) {
            (Some(StopState::Stopped), Some(m)) => m.save().map_err(|e| e.to_string()),
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
        if self.model.open_ids().any(|id| self.model.is_parked(id)) {
            self.scenarios.set(Scenarios::MIGRATE_PARKED);
        }
        match self.restore(&bytes) {
            Ok(mut dev) => {
                let again = match dev.migration() {
                    Some(m) => m.save().map_err(|e| e.to_string()),
                    None => Err("the restored device cannot be saved".into()),
                };
                self.check(|| {
                    conforming::round_trip(&bytes, again.as_deref().map_err(Clone::clone))
                })?;
                self.dev = dev;
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
            events.add(self.last_events);
        }
        if self.conforming() {
            let after = self.visible_status(status);
            self.check(|| conforming::transparent("migration", status, after, events.total()))?;
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
