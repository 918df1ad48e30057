//! The snapshot target's phase: stop and save the device, edit the bytes, restore them
//! into a fresh device. An accepted snapshot must be consistent, save back to the same
//! bytes, and run.

use super::{Run, Scenarios, SnapshotEdit};
use crate::oracle::{Check, always, conforming};
use crate::virtio::S_DRIVER_OK;

impl Run<'_> {
    pub(super) fn snapshot_phase(&mut self, edit: &SnapshotEdit) -> Check {
        if self.dev.host().is_none() || self.dev.migration().is_none() {
            self.note(|| "no snapshot phase: the device offers no host stop or migration".into());
            return Ok(());
        }
        self.host_stop_and_wait()?;
        let saved = match self.dev.migration() {
            Some(m) => m.save(),
            None => unreachable!("checked above"),
        };
        let bytes = match (edit, &saved) {
            (SnapshotEdit::Replace(bytes), _) => bytes.clone(),
            (SnapshotEdit::Mutate(flips), Ok(saved)) => {
                let mut bytes = saved.clone();
                let len = bytes.len();
                for &(offset, value) in flips {
                    bytes[usize::from(offset) % len] ^= value;
                }
                bytes
            }
            (SnapshotEdit::Mutate(_), Err(_)) => {
                self.note(|| "no snapshot: the device could not be saved".into());
                return Ok(());
            }
        };
        let mut restored = match self.restore(&bytes) {
            Ok(dev) => dev,
            Err(e) => {
                self.scenarios.set(Scenarios::REJECTED_RESTORE);
                self.note(|| format!("restore refused: {e}"));
                return Ok(());
            }
        };
        let state = self.dev.snapshot_inspection().map(|i| i.inspect(&bytes));
        let state = match state {
            Some(Ok(s)) => Some(s),
            Some(Err(e)) => {
                self.check(|| Err(always::accepted_undecodable(e)))?;
                None
            }
            None => None,
        };
        if let Some(state) = &state {
            let offered = restored.describe().features;
            self.check(|| always::restore_rejects(state, offered, self.mem.mem()))?;
        }
        let again = match restored.migration() {
            Some(m) => m.save().map_err(|e| e.to_string()),
            None => Err("the restored device cannot be saved".into()),
        };
        self.check(|| conforming::round_trip(&bytes, again.as_deref().map_err(Clone::clone)))?;
        self.note(|| "restore accepted; running the restored device".into());
        self.dev = restored;
        let status = self.dev.read_status();
        let driver_stopped = always::driver_stop_presented(self.cfg.trigger, status);
        self.stops
            .restored_from_bytes(driver_stopped, driver_stopped || status & S_DRIVER_OK != 0);
        self.hostile = true;
        // Rings elsewhere than the driver's, or held requests the model never saw: the
        // driver's view no longer describes the device. Without inspection, any change to
        // the bytes may have done that.
        self.foreign = match &state {
            Some(s) => {
                !s.held.is_empty()
                    || s.queues.iter().zip(&self.driver.queues).any(|(s, d)| {
                        s.desc != d.desc
                            || s.avail != d.avail
                            || s.used != d.used
                            || s.size != d.size
                    })
            }
            None => saved.as_ref().ok() != Some(&bytes),
        };
        self.host_resume()?;
        self.run_down(false)
    }
}
