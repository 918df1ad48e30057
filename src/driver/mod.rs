//! The guest: lays out split rings and request buffers in guest memory, builds virtio-blk
//! requests, publishes and kicks, and reads the used ring.
//!
//! It is the independent side of the contract, so it shares no code with the device: the
//! ring arithmetic, the descriptor format and the notification rules are written here again
//! from the spec. It writes guest memory only through `Bytes`, so the write log sees it.

pub mod layout;

use std::collections::BTreeMap;

use vm_memory::{Bytes, GuestAddress, GuestMemory, GuestMemoryBackend};

use crate::program::{Corruption, ReqType, Shape};
use crate::virtio::*;
use layout::{Slot, ring_base, ring_pages};

/// What a driver-built request looks like in guest memory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Built {
    /// The head of its descriptor chain.
    pub head: u16,
    /// The avail ring position it was written at.
    pub avail_pos: u16,
    /// The device-writable buffers of the chain: (address, length).
    pub writable: Vec<(u64, u32)>,
    /// Where the data buffer is.
    pub data_addr: u64,
    /// Length of the data buffer (0 for a flush).
    pub data_len: u32,
    /// Where the status byte is.
    pub status_addr: u64,
}

/// One used-ring entry as the driver reads it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UsedElem {
    /// Its position in the used ring, as a free-running 16-bit index.
    pub pos: u16,
    /// The head the device returned, as written: not necessarily a valid one.
    pub id: u32,
    /// The used length the device wrote.
    pub len: u32,
}

/// The driver's view of one queue.
#[derive(Clone, Debug)]
pub struct DriverQueue {
    /// Entries in the ring.
    pub size: u16,
    /// Where the descriptor table is.
    pub desc: u64,
    /// Where the avail ring is.
    pub avail: u64,
    /// Where the used ring is.
    pub used: u64,
    /// The next avail position to write.
    pub avail_shadow: u16,
    /// The avail idx last written to guest memory.
    pub published: u16,
    /// `published` when the driver last decided whether to kick.
    pub kicked_at: u16,
    /// Used entries read so far.
    pub observed: u16,
    /// Heads read from the used ring but not yet reaped.
    pending_reap: Vec<u16>,
    /// Free descriptors; the most recently freed is used first, as in Linux.
    free: Vec<u16>,
    /// Descriptors of each outstanding chain, by head.
    chains: BTreeMap<u16, Vec<u16>>,
    /// Heads whose request slot was ever written, one bit each.
    slots_used: [u64; 4],
}

impl DriverQueue {
    fn new(q: u16, size: u16, start: u16) -> Self {
        let base = ring_base(q);
        DriverQueue {
            size,
            desc: base,
            avail: base + 0x1000,
            used: base + 0x2000,
            avail_shadow: start,
            published: start,
            kicked_at: start,
            observed: start,
            pending_reap: Vec::new(),
            free: (0..size).rev().collect(),
            chains: BTreeMap::new(),
            slots_used: [0; 4],
        }
    }

    /// The used ring: where the device writes used entries, used idx and `avail_event`.
    pub fn used_ring(&self) -> std::ops::Range<u64> {
        self.used..self.avail_event_addr() + 2
    }

    fn used_event_addr(&self) -> u64 {
        self.avail + 4 + 2 * u64::from(self.size)
    }

    fn avail_event_addr(&self) -> u64 {
        self.used + 4 + 8 * u64::from(self.size)
    }
}

/// The guest driver.
#[derive(Clone, Debug)]
pub struct Driver {
    /// The features the driver negotiates.
    pub features: u64,
    /// The rings it has set up, by queue index.
    pub queues: Vec<DriverQueue>,
}

/// Linux's `vring_need_event`, written here independently of the device.
pub fn need_event(event: u16, new: u16, old: u16) -> bool {
    new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old)
}

impl Driver {
    /// Fresh rings for `queues` queues of `size` entries, indices at `start`. `dirty` says
    /// the ring memory may hold old contents; a freshly reset guest memory is all zeros
    /// and needs only the indices written.
    pub fn new<M: GuestMemory>(
        mem: &M,
        features: u64,
        queues: u16,
        size: u16,
        start: u16,
        dirty: bool,
    ) -> Self {
        let queues = (0..queues)
            .map(|q| {
                let dq = DriverQueue::new(q, size, start);
                set_up_ring(mem, &dq, start, dirty);
                dq
            })
            .collect();
        Driver { features, queues }
    }

    /// Replaces queue `q` with a fresh ring at index 0, as after a virtqueue reset.
    pub fn reset_queue<M: GuestMemory>(&mut self, mem: &M, q: u16) {
        let size = self.queues[usize::from(q)].size;
        let dq = DriverQueue::new(q, size, 0);
        set_up_ring(mem, &dq, 0, true);
        self.queues[usize::from(q)] = dq;
    }

    /// Whether `feature` is among [`Self::features`].
    pub fn has(&self, feature: u64) -> bool {
        self.features & feature != 0
    }

    /// How many descriptors a request of this shape takes.
    pub fn descriptors_needed(&self, req: ReqType, shape: Shape) -> usize {
        if shape == Shape::Indirect && self.has(F_INDIRECT_DESC) {
            return 1;
        }
        let data = match req {
            ReqType::Flush => 0,
            _ if shape == Shape::SplitData => 2,
            _ => 1,
        };
        let header = if shape == Shape::SplitHeader { 2 } else { 1 };
        header + data + 1
    }

    /// Writes a request's header, data, descriptors and avail entry, unpublished.
    /// `None` if the ring has too few free descriptors.
    pub fn build<M: GuestMemory>(
        &mut self,
        mem: &M,
        q: u16,
        req: ReqType,
        shape: Shape,
        sector: u64,
        data: &[u8],
    ) -> Option<Built> {
        let needed = self.descriptors_needed(req, shape);
        let indirect = needed == 1;
        let dq = &mut self.queues[usize::from(q)];
        if dq.free.len() < needed {
            return None;
        }
        let head = *dq.free.last().unwrap();
        let slot = Slot::of(q, head);
        dq.slots_used[usize::from(head / 64)] |= 1 << (head % 64);
        let blk_type = match req {
            ReqType::Read => T_IN,
            ReqType::Write => T_OUT,
            ReqType::Flush => T_FLUSH,
            ReqType::GetId => T_GET_ID,
        };
        let mut header = [0u8; 16];
        header[..4].copy_from_slice(&blk_type.to_le_bytes());
        header[8..].copy_from_slice(&sector.to_le_bytes());
        write(mem, slot.header, &header);
        write(mem, slot.status, &[0xff]);
        let data_len = data.len() as u32;
        write(mem, slot.data, data);

        // (address, length, device-writable)
        let mut bufs: Vec<(u64, u32, bool)> = Vec::with_capacity(5);
        if shape == Shape::SplitHeader {
            bufs.push((slot.header, 8, false));
            bufs.push((slot.header + 8, 8, false));
        } else {
            bufs.push((slot.header, 16, false));
        }
        if req != ReqType::Flush {
            let writable = req != ReqType::Write;
            if shape == Shape::SplitData && data_len > 1 {
                let half = data_len / 2;
                bufs.push((slot.data, half, writable));
                bufs.push((slot.data + u64::from(half), data_len - half, writable));
            } else {
                bufs.push((slot.data, data_len, writable));
            }
        }
        bufs.push((slot.status, 1, true));

        let ids: Vec<u16> = (0..needed).map(|_| dq.free.pop().unwrap()).collect();
        if indirect {
            for (i, &(addr, len, w)) in bufs.iter().enumerate() {
                let next = (i + 1 < bufs.len()).then_some(i as u16 + 1);
                write_desc(mem, slot.table, i as u16, addr, len, w, next);
            }
            let len = 16 * bufs.len() as u32;
            let raw = desc_bytes(slot.table, len, DESC_F_INDIRECT, 0);
            write(mem, dq.desc + 16 * u64::from(head), &raw);
        } else {
            for (i, &(addr, len, w)) in bufs.iter().enumerate() {
                write_desc(mem, dq.desc, ids[i], addr, len, w, ids.get(i + 1).copied());
            }
        }
        dq.chains.insert(head, ids);
        let avail_pos = dq.avail_shadow;
        let slot_addr = dq.avail + 4 + 2 * u64::from(avail_pos % dq.size);
        write(mem, slot_addr, &head.to_le_bytes());
        dq.avail_shadow = avail_pos.wrapping_add(1);
        let writable = bufs
            .iter()
            .filter(|b| b.2)
            .map(|&(addr, len, _)| (addr, len))
            .collect();
        Some(Built {
            head,
            avail_pos,
            writable,
            data_addr: slot.data,
            data_len,
            status_addr: slot.status,
        })
    }

    /// Makes everything built so far visible: writes avail idx.
    pub fn publish<M: GuestMemory>(&mut self, mem: &M, q: u16) {
        let dq = &mut self.queues[usize::from(q)];
        dq.published = dq.avail_shadow;
        write(mem, dq.avail + 2, &dq.published.to_le_bytes());
    }

    /// Whether the device wants a kick for what was published since the last decision
    /// (EVENT_IDX's `avail_event`, or the used ring's NO_NOTIFY flag). Records the decision.
    pub fn kick_needed<M: GuestMemory>(&mut self, mem: &M, q: u16) -> bool {
        let event_idx = self.has(F_EVENT_IDX);
        let dq = &mut self.queues[usize::from(q)];
        let (old, new) = (dq.kicked_at, dq.published);
        dq.kicked_at = new;
        if old == new {
            return false;
        }
        if event_idx {
            need_event(read16(mem, dq.avail_event_addr()), new, old)
        } else {
            read16(mem, dq.used) & USED_F_NO_NOTIFY == 0
        }
    }

    /// Reads used entries up to `used_idx` not read before, at most a ring's worth. They
    /// wait for `reap`.
    pub fn observe<M: GuestMemory>(&mut self, mem: &M, q: u16, used_idx: u16) -> Vec<UsedElem> {
        let dq = &mut self.queues[usize::from(q)];
        let count = used_idx.wrapping_sub(dq.observed).min(dq.size);
        let mut out = Vec::with_capacity(usize::from(count));
        for _ in 0..count {
            let pos = dq.observed;
            let at = dq.used + 4 + 8 * u64::from(pos % dq.size);
            let id = read32(mem, at);
            let len = read32(mem, at + 4);
            if let Ok(head) = u16::try_from(id) {
                dq.pending_reap.push(head);
            }
            dq.observed = pos.wrapping_add(1);
            out.push(UsedElem { pos, id, len });
        }
        out
    }

    /// Frees the descriptors of every observed completion, and with EVENT_IDX asks for an
    /// interrupt at the next used entry, as Linux does when it re-enables callbacks.
    pub fn reap<M: GuestMemory>(&mut self, mem: &M, q: u16) {
        let event_idx = self.has(F_EVENT_IDX);
        let dq = &mut self.queues[usize::from(q)];
        for head in std::mem::take(&mut dq.pending_reap) {
            if let Some(ids) = dq.chains.remove(&head) {
                dq.free.extend(ids.iter().rev());
            }
        }
        if event_idx {
            write(mem, dq.used_event_addr(), &dq.observed.to_le_bytes());
        }
    }

    /// Hostile: writes avail idx directly.
    pub fn set_avail_idx<M: GuestMemory>(&mut self, mem: &M, q: u16, idx: u16) {
        let dq = &mut self.queues[usize::from(q)];
        dq.published = idx;
        dq.avail_shadow = idx;
        write(mem, dq.avail + 2, &idx.to_le_bytes());
    }

    /// Hostile: overwrites an avail ring slot.
    pub fn set_avail_slot<M: GuestMemory>(&mut self, mem: &M, q: u16, slot: u16, head: u16) {
        let dq = &self.queues[usize::from(q)];
        write(
            mem,
            dq.avail + 4 + 2 * u64::from(slot % dq.size),
            &head.to_le_bytes(),
        );
    }

    /// Hostile: overwrites a descriptor table entry with raw fields.
    pub fn set_desc<M: GuestMemory>(&mut self, mem: &M, q: u16, index: u16, desc: [u8; 16]) {
        let dq = &self.queues[usize::from(q)];
        write(mem, dq.desc + 16 * u64::from(index % dq.size), &desc);
    }

    /// Hostile: corrupts descriptor `index` (modulo size) the way `how` says.
    pub fn corrupt<M: GuestMemory>(&mut self, mem: &M, q: u16, index: u16, how: Corruption) {
        let size = self.queues[usize::from(q)].size;
        let index = index % size;
        let mut d = self.desc(mem, q, index);
        let flags = u16::from_le_bytes([d[12], d[13]]);
        match how {
            Corruption::Loop => {
                d[12..14].copy_from_slice(&(flags | DESC_F_NEXT).to_le_bytes());
                d[14..].copy_from_slice(&index.to_le_bytes());
            }
            Corruption::Address => {
                d[..8].copy_from_slice(&(layout::MEM_SIZE as u64 + 0x1000).to_le_bytes());
            }
            Corruption::Length => d[8..12].copy_from_slice(&u32::MAX.to_le_bytes()),
            Corruption::NestedIndirect => {
                let table = Slot::of(q, index).table;
                let inner = desc_bytes(table, 16, DESC_F_INDIRECT, 0);
                write(mem, table, &inner);
                d = inner;
            }
            Corruption::Flags => {
                d[12..14].copy_from_slice(&(flags ^ (DESC_F_NEXT | DESC_F_WRITE)).to_le_bytes());
            }
            Corruption::Next => {
                d[12..14].copy_from_slice(&(flags | DESC_F_NEXT).to_le_bytes());
                d[14..].copy_from_slice(&size.to_le_bytes());
            }
        }
        self.set_desc(mem, q, index, d);
    }

    /// Descriptor `index` (modulo size) as raw bytes.
    pub fn desc<M: GuestMemory>(&self, mem: &M, q: u16, index: u16) -> [u8; 16] {
        let dq = &self.queues[usize::from(q)];
        let mut d = [0u8; 16];
        read(mem, dq.desc + 16 * u64::from(index % dq.size), &mut d);
        d
    }

    /// The used idx the device has written.
    pub fn used_idx<M: GuestMemory>(&self, mem: &M, q: u16) -> u16 {
        read16(mem, self.queues[usize::from(q)].used + 2)
    }

    /// `used_event`, where the driver asks for its next interrupt (EVENT_IDX).
    pub fn used_event<M: GuestMemory>(&self, mem: &M, q: u16) -> u16 {
        read16(mem, self.queues[usize::from(q)].used_event_addr())
    }

    /// The avail ring's flags (`VRING_AVAIL_F_NO_INTERRUPT`).
    pub fn avail_flags<M: GuestMemory>(&self, mem: &M, q: u16) -> u16 {
        read16(mem, self.queues[usize::from(q)].avail)
    }

    /// The head in avail ring slot `slot`.
    pub fn avail_slot<M: GuestMemory>(&self, mem: &M, q: u16, slot: u16) -> u16 {
        let dq = &self.queues[usize::from(q)];
        read16(mem, dq.avail + 4 + 2 * u64::from(slot % dq.size))
    }

    /// The pages this driver has laid anything out in: every queue's rings, and the request
    /// slots of every head it has used.
    pub fn pages_in_use(&self) -> Vec<std::ops::Range<u64>> {
        let mut pages = Vec::new();
        for (q, dq) in self.queues.iter().enumerate() {
            let q = q as u16;
            pages.push(ring_pages(q));
            for head in 0..dq.size {
                if dq.slots_used[usize::from(head / 64)] & (1 << (head % 64)) != 0 {
                    pages.push(Slot::of(q, head).pages());
                }
            }
        }
        pages
    }
}

/// Zeroes a ring that may hold old contents, and puts every index (avail idx, used idx,
/// used_event, avail_event) at `start`.
fn set_up_ring<M: GuestMemory>(mem: &M, dq: &DriverQueue, start: u16, dirty: bool) {
    if dirty {
        zero(mem, dq.desc, 16 * usize::from(dq.size));
        zero(mem, dq.avail, 6 + 2 * usize::from(dq.size));
        zero(mem, dq.used, 6 + 8 * usize::from(dq.size));
    }
    if dirty || start != 0 {
        let idx = start.to_le_bytes();
        for at in [
            dq.avail + 2,
            dq.used + 2,
            dq.used_event_addr(),
            dq.avail_event_addr(),
        ] {
            write(mem, at, &idx);
        }
    }
}

/// A descriptor's 16 bytes as they sit in a table.
pub fn desc_bytes(addr: u64, len: u32, flags: u16, next: u16) -> [u8; 16] {
    let mut d = [0u8; 16];
    d[..8].copy_from_slice(&addr.to_le_bytes());
    d[8..12].copy_from_slice(&len.to_le_bytes());
    d[12..14].copy_from_slice(&flags.to_le_bytes());
    d[14..].copy_from_slice(&next.to_le_bytes());
    d
}

fn write_desc<M: GuestMemory>(
    mem: &M,
    table: u64,
    i: u16,
    addr: u64,
    len: u32,
    writable: bool,
    next: Option<u16>,
) {
    let mut flags = if writable { DESC_F_WRITE } else { 0 };
    if next.is_some() {
        flags |= DESC_F_NEXT;
    }
    write(
        mem,
        table + 16 * u64::from(i),
        &desc_bytes(addr, len, flags, next.unwrap_or(0)),
    );
}

/// The driver's memory is laid out inside guest memory by construction, so a failed write
/// is a harness bug, not input.
fn write<M: GuestMemory>(mem: &M, addr: u64, bytes: &[u8]) {
    let at = GuestAddress(addr);
    // Through the region first: `GuestMemory::write_slice` walks a slice iterator, which
    // costs more than the copy itself for the few bytes a ring field holds.
    if let Some((region, offset)) = mem.physical_memory().and_then(|m| m.to_region_addr(at))
        && region.write_slice(bytes, offset).is_ok()
    {
        return;
    }
    mem.write_slice(bytes, at)
        .expect("driver buffers lie inside guest memory");
}

/// Writes `len` zero bytes from `addr`, a page at a time from a static buffer.
fn zero<M: GuestMemory>(mem: &M, addr: u64, len: usize) {
    static ZEROS: [u8; 4096] = [0; 4096];
    let mut done = 0;
    while done < len {
        let n = (len - done).min(ZEROS.len());
        write(mem, addr + done as u64, &ZEROS[..n]);
        done += n;
    }
}

/// Fills `buf` from `addr`; panics if it is not in guest memory.
fn read<M: GuestMemory>(mem: &M, addr: u64, buf: &mut [u8]) {
    let at = GuestAddress(addr);
    if let Some((region, offset)) = mem.physical_memory().and_then(|m| m.to_region_addr(at))
        && region.read_slice(buf, offset).is_ok()
    {
        return;
    }
    mem.read_slice(buf, at)
        .expect("driver rings lie inside guest memory");
}

/// The little-endian u16 at `addr`; panics if it is not in guest memory.
pub fn read16<M: GuestMemory>(mem: &M, addr: u64) -> u16 {
    let mut b = [0u8; 2];
    read(mem, addr, &mut b);
    u16::from_le_bytes(b)
}

fn read32<M: GuestMemory>(mem: &M, addr: u64) -> u32 {
    let mut b = [0u8; 4];
    read(mem, addr, &mut b);
    u32::from_le_bytes(b)
}
