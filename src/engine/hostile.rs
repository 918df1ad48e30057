//! The hostile ops (`blk_hostile` only): what a buggy or malicious driver does to the rings.

use super::Run;
use crate::oracle::Check;
use crate::program::{Jump, Op, Shape};

impl Run<'_> {
    pub(super) fn apply_hostile(&mut self, op: &Op) -> Check {
        let nq = self.queues();
        match *op {
            Op::AvailJump { queue, jump, n } => {
                let q = u16::from(queue) % nq;
                let dq = &self.driver.queues[usize::from(q)];
                let (now, size) = (dq.published, dq.size);
                let to = match jump {
                    Jump::Back => now.wrapping_sub(1 + u16::from(n) % size),
                    Jump::Ahead => now.wrapping_add(size + 1 + u16::from(n)),
                    Jump::Wrap => now.wrapping_add(0x8000 + u16::from(n)),
                };
                self.driver.set_avail_idx(self.mem.mem(), q, to);
                self.call(|d, _| d.kick(q))
            }
            Op::RewriteAvail { queue, slot, head } => {
                let q = u16::from(queue) % nq;
                self.driver
                    .set_avail_slot(self.mem.mem(), q, u16::from(slot), u16::from(head));
                Ok(())
            }
            Op::CorruptDesc { queue, index, how } => {
                let q = u16::from(queue) % nq;
                self.driver
                    .corrupt(self.mem.mem(), q, u16::from(index), how);
                Ok(())
            }
            Op::ForceSubmit { queue, req, sector } => {
                let q = u16::from(queue) % nq;
                self.submit(q, req, Shape::Plain, sector, 1, sector, true)?;
                self.driver.publish(self.mem.mem(), q);
                self.model.publish(q);
                self.call(|d, _| d.kick(q))
            }
            _ => unreachable!("only hostile ops come here"),
        }
    }
}
