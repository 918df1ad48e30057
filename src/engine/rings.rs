//! The rings drawn the way the mailing-list thread does, for `replay --rings`.

use super::{Engine, Mode, Run};
use crate::dut::Factory;
use crate::model::ReqState;
use crate::program::Program;
use crate::trace::{SlotView, draw_ring};

impl Engine {
    /// Runs the ops of `program` (stopping at a finding, without the liveness phase) and
    /// draws the rings as they are then.
    pub fn rings_after(&mut self, factory: &dyn Factory, program: &Program, mode: Mode) -> String {
        let rings = match Run::new(
            &self.mem,
            &mut self.shadow,
            factory,
            program,
            mode,
            false,
            true,
        ) {
            Err(v) => format!("setup failed: {}\n", v.message),
            Ok(mut run) => {
                for (i, op) in program.ops.iter().enumerate() {
                    run.step = i + 1;
                    if run.apply(op).is_err() {
                        break;
                    }
                }
                run.draw_rings()
            }
        };
        self.clean(true);
        rings
    }
}

impl Run<'_> {
    /// Draws every ring like the mailing-list thread does.
    fn draw_rings(&self) -> String {
        let mut out = String::new();
        for (q, dq) in self.driver.queues.iter().enumerate() {
            let q = q as u16;
            let slots: Vec<SlotView> = (0..dq.size)
                .map(|slot| {
                    let head = self.driver.avail_slot(self.mem.mem(), q, slot);
                    let state = match self
                        .model
                        .open(q, head)
                        .map(|id| (id, self.model.requests[id].state))
                    {
                        Some((id, _)) if self.model.is_parked(id) => "parked",
                        Some((_, ReqState::Published)) => "Not used",
                        Some((_, ReqState::Staged)) => "staged",
                        _ => "used",
                    };
                    SlotView {
                        head: Some(head),
                        state,
                    }
                })
                .collect();
            out.push_str(&draw_ring(q, &slots, dq.published));
        }
        out
    }
}
