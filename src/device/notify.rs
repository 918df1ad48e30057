//! When the device interrupts the driver after adding used buffers.
//!
//! virtio-queue's `needs_notification` cannot be used: it ignores `VRING_AVAIL_F_NO_INTERRUPT`
//! and forgets its bookkeeping across save/restore. The device keeps `signalled_used` itself,
//! as QEMU does, and a restore clears it so the first used update always notifies.

use virtio_queue::{Queue, QueueT};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemory};

use super::BlkDevice;
use super::bits::AVAIL_F_NO_INTERRUPT;

/// Linux's `vring_need_event`: true iff `event` lies in `[old, new)` modulo 2^16.
pub fn vring_need_event(event: u16, new: u16, old: u16) -> bool {
    new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old)
}

impl BlkDevice {
    /// Decides whether the used index moving since the last decision needs an interrupt.
    pub(super) fn should_notify<M: GuestMemory>(&mut self, q: usize, mem: &M) -> bool {
        let vq = &mut self.queues[q];
        should_notify(&vq.queue, &mut vq.signalled_used, mem)
    }
}

/// Decides whether `queue`'s used index moving since the last decision (`signalled_used`,
/// which this updates) needs an interrupt. `None` means no decision since a restore or a
/// ring restart, and always notifies. An unreadable ring notifies: a spurious interrupt is
/// harmless, a lost one is not.
pub(crate) fn should_notify<M: GuestMemory>(
    queue: &Queue,
    signalled_used: &mut Option<u16>,
    mem: &M,
) -> bool {
    let new = queue.next_used();
    let Some(old) = signalled_used.replace(new) else {
        return true;
    };
    let avail = GuestAddress(queue.avail_ring());
    if queue.event_idx_enabled() {
        let used_event = avail.checked_add(4 + 2 * u64::from(queue.size()));
        used_event
            .and_then(|at| mem.read_obj::<u16>(at).ok())
            .is_none_or(|event| {
                let event = u16::from_le(event);
                #[cfg(feature = "mutants")]
                let event = match crate::mutant!(EventIdxOffByOne) {
                    true => event.wrapping_add(1),
                    false => event,
                };
                vring_need_event(event, new, old)
            })
    } else {
        mem.read_obj::<u16>(avail)
            .ok()
            .is_none_or(|flags| u16::from_le(flags) & AVAIL_F_NO_INTERRUPT == 0)
    }
}

#[cfg(test)]
mod tests {
    use super::vring_need_event;

    #[test]
    fn need_event_is_a_wrapping_half_open_range() {
        assert!(vring_need_event(0, 1, 0));
        assert!(!vring_need_event(1, 1, 0));
        assert!(!vring_need_event(5, 5, 5), "no movement, no event");
        // Across the 16-bit wrap: old 0xfffe, new 2 covers 0xfffe, 0xffff, 0 and 1.
        for event in [0xfffe, 0xffff, 0, 1] {
            assert!(vring_need_event(event, 2, 0xfffe), "event {event:#x}");
        }
        assert!(!vring_need_event(2, 2, 0xfffe));
        assert!(!vring_need_event(0xfffd, 2, 0xfffe));
    }
}
