//! Where the driver puts things in guest memory. Every structure has pages of its own, so a
//! device write can be attributed to exactly one ring or one request.
//!
//! ```text
//! 0x0000_1000                  device-owned page: where a PCI device's MSI-X messages land
//! 0x0001_0000 + q * 0x4000     queue q: descriptor table, avail ring (+0x1000), used ring (+0x2000)
//! 0x0010_0000 + slot * 0x2000  request slot (q * 256 + head): control page, then data page
//!   control page: header at +0, indirect table at +0x100, status byte at +0xfff
//! ```
//!
//! Everything a device reads or writes lies below 0xA0000 or above 1 MiB: a PC's legacy
//! window 0xA0000..0x100000 is not RAM to a PCI device's DMA (QEMU's q35).

/// Guest memory size: rings for 4 queues and a slot for every (queue, head).
pub const MEM_SIZE: usize = SLOT_BASE as usize + 4 * 256 * SLOT_SIZE as usize;
const RING_BASE: u64 = 0x1_0000;
const RING_STRIDE: u64 = 0x4000;
const SLOT_BASE: u64 = 0x10_0000;
const SLOT_SIZE: u64 = 0x2000;

/// A page no driver structure uses: a device may write there on its own (QEMU's MSI-X
/// messages, pointed at guest RAM so that the harness can see them).
pub const DEVICE_PAGE: std::ops::Range<u64> = 0x1000..0x2000;

/// Where queue `q`'s rings start: its descriptor table.
pub fn ring_base(q: u16) -> u64 {
    RING_BASE + u64::from(q) * RING_STRIDE
}

/// The address range of queue `q`'s rings.
pub fn ring_pages(q: u16) -> std::ops::Range<u64> {
    ring_base(q)..ring_base(q) + 0x3000
}

/// All request buffers.
pub fn slot_area() -> std::ops::Range<u64> {
    SLOT_BASE..MEM_SIZE as u64
}

/// A request's buffers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Slot {
    /// Where the 16-byte request header goes.
    pub header: u64,
    /// Where an indirect descriptor table goes.
    pub table: u64,
    /// Where the status byte goes: the control page's last byte.
    pub status: u64,
    /// Where the data goes: the second page.
    pub data: u64,
}

impl Slot {
    /// The buffers of head `head` on queue `q`.
    pub fn of(q: u16, head: u16) -> Slot {
        let base = SLOT_BASE + (u64::from(q) * 256 + u64::from(head)) * SLOT_SIZE;
        Slot {
            header: base,
            table: base + 0x100,
            status: base + 0xfff,
            data: base + 0x1000,
        }
    }

    /// The slot's two pages.
    pub fn pages(&self) -> std::ops::Range<u64> {
        self.header..self.header + SLOT_SIZE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn structures_do_not_overlap() {
        assert!(ring_pages(3).end <= 0xA_0000);
        const { assert!(SLOT_BASE >= 0x10_0000 && DEVICE_PAGE.end <= RING_BASE) };
        let last = Slot::of(3, 255);
        assert!(last.data + 0x1000 <= MEM_SIZE as u64);
        assert_eq!(MEM_SIZE % 4096, 0);
    }
}
