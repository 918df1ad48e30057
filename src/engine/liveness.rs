//! The liveness phase after the last op: heal, resume, and run until everything published
//! completes.

use super::Run;
use crate::model::ReqId;
use crate::oracle::{Check, conforming};
use crate::stops::Asked;

impl Run<'_> {
    pub(super) fn finish(&mut self) -> Check {
        self.heal()?;
        // A stop still waiting gets its acknowledgement's polls before it is cancelled.
        self.await_acks(false)?;
        if self.driver_stopping() {
            self.driver_resume()?;
        }
        if self.stops.host.asked != Asked::Running {
            self.host_resume()?;
        }
        self.run_down(false)?;
        if !self.conforming() {
            return self.final_diff();
        }
        let stuck = conforming::unfinished(&self.model);
        if !stuck.is_empty() {
            self.run_down(true)?;
            let still = conforming::unfinished(&self.model);
            let needed_kick: Vec<ReqId> = stuck
                .iter()
                .copied()
                .filter(|id| !still.contains(id))
                .collect();
            if !self.offered.remote {
                self.check(|| conforming::kick_kept(&self.model, &needed_kick))?;
            }
            self.check(|| conforming::live(&self.model, &still))?;
        }
        let image = self.disk_image();
        self.check(|| conforming::data_disk(&self.model, &image))?;
        self.final_diff()
    }

    /// Rounds of: kicks the driver owes (or every queue, when `force`), poll, complete
    /// all disk I/O, poll, reap.
    pub(super) fn run_down(&mut self, force: bool) -> Check {
        for _ in 0..4 {
            for q in 0..self.queues() {
                if force || self.driver.kick_needed(self.mem.mem(), q) {
                    self.call(|d, _| d.kick(q))?;
                }
            }
            self.poll()?;
            self.complete_all_io();
            self.poll()?;
            for q in 0..self.queues() {
                self.driver.reap(self.mem.mem(), q);
            }
        }
        Ok(())
    }
}
