//! Guest memory that records every write exactly, for the fuzz oracle.
//!
//! [`GuestMem`] is one mmap-backed region at guest address 0 whose vm-memory bitmap is a
//! [`WriteLog`]: every write that goes through vm-memory (`Bytes`, `VolatileSlice`,
//! `VolatileRef`, virtio-queue's `Queue`/`Writer`) appends its exact `(address, length)`.
//!
//! - **Oracle:** take a [`Checkpoint`] around each device call and ask
//!   [`GuestMem::writes_since`] what the device wrote. Because marks happen at write time (not
//!   when a slice is handed out), a `Writer` built before a checkpoint and written after it
//!   still shows up after the checkpoint.
//! - **Reuse:** build one `GuestMem` per worker and call [`GuestMem::reset`] between runs. A
//!   fresh mmap plus first-touch page faults costs far more than a whole execution, and so
//!   does a full memset; `reset` zeroes only the logged bytes (harness writes included).
//!
//! [`GuestMem::shared`] backs the region with a memfd mapped `MAP_SHARED`, so a device in
//! another process (a vhost-user back-end) can map the same memory ([`GuestMem::share`]).
//! Its writes bypass the log; the harness sees them only by diffing (`shadow`).
//!
//! Blind spot: writes through raw pointers (`as_ptr`, `get_host_address`,
//! `ptr_guard_mut`, `get_atomic_ref`) bypass the bitmap and are neither seen nor undone by
//! `reset`. The harness itself must write guest memory only through `Bytes`.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use vm_memory::bitmap::{Bitmap, RefSlice, WithBitmapSlice};
use vm_memory::mmap::{MmapRegionBuilder, MmapRegionError};
use vm_memory::{
    Bytes, GuestAddress, GuestMemoryMmap, GuestRegionCollectionError, GuestRegionMmap, MmapRegion,
    VolatileMemory,
};

/// Default number of log entries (8 bytes each, so 512 KiB per memory). One device request
/// logs a handful of entries (data, status, used element, used idx), so this covers
/// thousands of requests per execution; beyond that the log reports an overflow and `reset`
/// falls back to zeroing everything.
pub const DEFAULT_LOG_CAPACITY: usize = 1 << 16;

/// Largest supported memory in bytes: log offsets are stored in 32 bits.
pub const MAX_MEM_SIZE: u64 = 1 << 32;

const PAGE_SIZE: usize = 4096;

/// The builder's default protection is `PROT_NONE`, unlike `from_ranges`.
const PROT_READ_WRITE: i32 = libc::PROT_READ | libc::PROT_WRITE;

/// Source buffer for zeroing guest memory through the tracked write path.
static ZEROS: [u8; PAGE_SIZE] = [0; PAGE_SIZE];

/// A vm-memory [`Bitmap`] that appends each `mark_dirty(offset, len)` to a fixed-capacity,
/// preallocated log instead of setting bits, so writes keep their exact byte ranges and order.
///
/// Marking is one `fetch_add` plus one store and never allocates or panics. When the log is
/// full (or an entry cannot be represented) it sets a sticky overflow flag instead of
/// recording. All atomics are `Relaxed`: a reader on another thread must synchronize with the
/// writers by other means (e.g. joining the device call) before reading the log.
pub struct WriteLog {
    /// Each entry is `offset << 32 | len`.
    entries: Box<[AtomicU64]>,
    /// Number of entries attempted since the last clear; may exceed the capacity.
    pos: AtomicUsize,
    overflowed: AtomicBool,
}

impl WriteLog {
    /// Creates an empty log holding up to `capacity` entries (0 is allowed: every write
    /// then overflows).
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            entries: (0..capacity).map(|_| AtomicU64::new(0)).collect(),
            pos: AtomicUsize::new(0),
            overflowed: AtomicBool::new(false),
        }
    }

    /// Maximum number of entries.
    pub fn capacity(&self) -> usize {
        self.entries.len()
    }

    /// Number of entries actually stored (at most the capacity).
    pub fn len(&self) -> usize {
        self.pos.load(Ordering::Relaxed).min(self.capacity())
    }

    /// True if no write has been recorded.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// True if some write was lost (log full or unrepresentable offset). The log is then
    /// incomplete and must not be trusted as the full set of writes.
    pub fn overflowed(&self) -> bool {
        self.overflowed.load(Ordering::Relaxed)
    }

    /// The stored entries `from..to` (clamped to [`len`](Self::len)) as `(offset, len)`.
    pub fn entries(&self, from: usize, to: usize) -> impl Iterator<Item = (u64, u32)> + '_ {
        let to = to.min(self.len());
        (from.min(to)..to).map(|i| self.entry(i))
    }

    fn entry(&self, i: usize) -> (u64, u32) {
        let v = self.entries[i].load(Ordering::Relaxed);
        (v >> 32, v as u32)
    }

    /// Raw position, used for checkpoints.
    fn position(&self) -> usize {
        self.pos.load(Ordering::Relaxed)
    }

    /// Appends one entry; `len` must fit 32 bits.
    fn push(&self, offset: usize, len: u32) {
        let Ok(offset) = u32::try_from(offset) else {
            self.overflowed.store(true, Ordering::Relaxed);
            return;
        };
        let idx = self.pos.fetch_add(1, Ordering::Relaxed);
        match self.entries.get(idx) {
            Some(slot) => slot.store(u64::from(offset) << 32 | u64::from(len), Ordering::Relaxed),
            None => self.overflowed.store(true, Ordering::Relaxed),
        }
    }

    /// Empties the log. Only correct while nobody else is writing the memory, hence private:
    /// [`GuestMem::reset`] calls it under `&mut`.
    fn clear(&self) {
        self.pos.store(0, Ordering::Relaxed);
        self.overflowed.store(false, Ordering::Relaxed);
    }
}

impl Default for WriteLog {
    fn default() -> Self {
        Self::with_capacity(DEFAULT_LOG_CAPACITY)
    }
}

impl fmt::Debug for WriteLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WriteLog")
            .field("capacity", &self.capacity())
            .field("len", &self.len())
            .field("overflowed", &self.overflowed())
            .finish()
    }
}

impl<'a> WithBitmapSlice<'a> for WriteLog {
    type S = RefSlice<'a, WriteLog>;
}

impl Bitmap for WriteLog {
    fn mark_dirty(&self, mut offset: usize, mut len: usize) {
        // Zero-length marks happen (e.g. empty copies) and change no byte: not a write.
        while len > 0 {
            let chunk = u32::try_from(len).unwrap_or(u32::MAX);
            self.push(offset, chunk);
            len -= chunk as usize;
            match offset.checked_add(chunk as usize) {
                Some(next) => offset = next,
                None => {
                    if len > 0 {
                        self.overflowed.store(true, Ordering::Relaxed);
                    }
                    return;
                }
            }
        }
    }

    /// Scans the log; if it overflowed, every offset is conservatively dirty.
    fn dirty_at(&self, offset: usize) -> bool {
        if self.overflowed() {
            return true;
        }
        let offset = offset as u64;
        self.entries(0, usize::MAX)
            .any(|(start, len)| start <= offset && offset < start + u64::from(len))
    }

    fn slice_at(&self, offset: usize) -> RefSlice<'_, WriteLog> {
        RefSlice::new(self, offset)
    }
}

/// A position in a [`GuestMem`]'s write log. Only meaningful until the next
/// [`GuestMem::reset`]; a stale checkpoint is treated as the start of the current log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    pos: usize,
    generation: u64,
}

/// Errors from building a [`GuestMem`].
#[derive(Debug, thiserror::Error)]
pub enum GuestMemError {
    /// The size is 0, not a multiple of 4096, or over 4 GiB.
    #[error("guest memory size {0:#x} is not a non-zero multiple of 4096 of at most 4 GiB")]
    InvalidSize(usize),
    /// The mmap failed.
    #[error("cannot mmap guest memory: {0}")]
    Mmap(#[from] MmapRegionError),
    /// vm-memory would not place the region at address 0.
    #[error("cannot place the guest memory region at address 0")]
    RegionPlacement,
    /// vm-memory would not build a memory from the region.
    #[error("cannot build guest memory: {0}")]
    Collection(#[from] GuestRegionCollectionError),
    /// The memfd could not be created or sized.
    #[error("cannot create a memfd for guest memory: {0}")]
    Memfd(std::io::Error),
}

/// How another process maps a [`GuestMem`] made by [`GuestMem::shared`]: what a vhost-user
/// SET_MEM_TABLE carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Share {
    /// The memfd; valid as long as the `GuestMem` lives.
    pub fd: std::os::fd::RawFd,
    /// Bytes, from guest address 0.
    pub size: u64,
    /// Where this process has it mapped (the front-end's virtual address of guest address 0).
    pub host_addr: u64,
}

impl Share {
    /// The little-endian u16 at `gpa`, read atomically because the other process writes
    /// it concurrently; 0 when out of bounds or unaligned.
    pub fn read16(&self, gpa: u64) -> u16 {
        if !gpa.is_multiple_of(2) || gpa.saturating_add(2) > self.size {
            return 0;
        }
        // SAFETY: in bounds and aligned in a mapping that lives as long as the engine's
        // memory, which outlives every device that holds this `Share`.
        let v =
            unsafe { std::sync::atomic::AtomicU16::from_ptr((self.host_addr + gpa) as *mut u16) }
                .load(std::sync::atomic::Ordering::Acquire);
        u16::from_le(v)
    }

    /// Whether the driver's rules for a ring of `size` with its avail ring at `avail` make
    /// a notification due for used idx `old` -> `new` (`used_event` with EVENT_IDX, else
    /// the NO_INTERRUPT flag).
    pub fn notification_due(
        &self,
        avail: u64,
        size: u16,
        old: u16,
        new: u16,
        event_idx: bool,
    ) -> bool {
        if event_idx {
            let used_event = self.read16(avail + 4 + 2 * u64::from(size));
            crate::driver::need_event(used_event, new, old)
        } else {
            self.read16(avail) & crate::virtio::AVAIL_F_NO_INTERRUPT == 0
        }
    }
}

/// One region of tracked guest memory at guest address 0, reused across executions.
///
/// Log offsets are region offsets, which equal guest addresses because the single region
/// starts at 0.
#[derive(Debug)]
pub struct GuestMem {
    mem: GuestMemoryMmap<WriteLog>,
    /// The same mapping as `mem`'s only region, kept to reach the whole `WriteLog` without a
    /// lookup (`GuestMemoryRegion::bitmap` only hands out a slice).
    region: Arc<MmapRegion<WriteLog>>,
    /// Bumped by `reset`, to recognize stale checkpoints.
    generation: u64,
}

impl GuestMem {
    /// Creates `size` bytes of zeroed memory with a log of [`DEFAULT_LOG_CAPACITY`] entries.
    ///
    /// Panics if `size` is invalid or the mmap fails; this is harness setup.
    pub fn new(size: usize) -> Self {
        Self::try_with_log_capacity(size, DEFAULT_LOG_CAPACITY)
            .unwrap_or_else(|e| panic!("cannot create {size:#x} bytes of guest memory: {e}"))
    }

    /// Like [`new`](Self::new) with a chosen log capacity, returning errors.
    pub fn try_with_log_capacity(size: usize, capacity: usize) -> Result<Self, GuestMemError> {
        if size == 0 || !size.is_multiple_of(PAGE_SIZE) || size as u64 > MAX_MEM_SIZE {
            return Err(GuestMemError::InvalidSize(size));
        }
        let mapping = MmapRegionBuilder::new_with_bitmap(size, WriteLog::with_capacity(capacity))
            .with_mmap_prot(PROT_READ_WRITE)
            .build()?;
        Self::from_mapping(mapping)
    }

    /// Like [`try_with_log_capacity`](Self::try_with_log_capacity), backed by a memfd mapped
    /// shared, so that [`share`](Self::share) can hand it to another process.
    pub fn shared(size: usize, capacity: usize) -> Result<Self, GuestMemError> {
        if size == 0 || !size.is_multiple_of(PAGE_SIZE) || size as u64 > MAX_MEM_SIZE {
            return Err(GuestMemError::InvalidSize(size));
        }
        // SAFETY: a NUL-terminated name and valid flags; the fd is checked below.
        let fd = unsafe { libc::memfd_create(c"stopfuzz-guest".as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(GuestMemError::Memfd(std::io::Error::last_os_error()));
        }
        // SAFETY: `fd` was just created and is owned by nothing else.
        let file = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        file.set_len(size as u64).map_err(GuestMemError::Memfd)?;
        let mapping = MmapRegionBuilder::new_with_bitmap(size, WriteLog::with_capacity(capacity))
            .with_mmap_prot(PROT_READ_WRITE)
            .with_mmap_flags(libc::MAP_SHARED | libc::MAP_NORESERVE)
            .with_file_offset(vm_memory::FileOffset::new(file, 0))
            .build()?;
        Self::from_mapping(mapping)
    }

    fn from_mapping(mapping: MmapRegion<WriteLog>) -> Result<Self, GuestMemError> {
        let region =
            GuestRegionMmap::new(mapping, GuestAddress(0)).ok_or(GuestMemError::RegionPlacement)?;
        let mapping = region.get_mmap();
        let mem = GuestMemoryMmap::from_regions(vec![region])?;
        Ok(Self {
            mem,
            region: mapping,
            generation: 0,
        })
    }

    /// How another process maps this memory, if it was made by [`shared`](Self::shared).
    pub fn share(&self) -> Option<Share> {
        let file = self.region.file_offset()?;
        Some(Share {
            fd: std::os::fd::AsRawFd::as_raw_fd(file.file()),
            size: self.region.size() as u64,
            host_addr: self.region.as_ptr() as u64,
        })
    }

    /// The memory, for code generic over `vm_memory::GuestMemory` (queues, devices).
    pub fn mem(&self) -> &GuestMemoryMmap<WriteLog> {
        &self.mem
    }

    /// The write log.
    pub fn log(&self) -> &WriteLog {
        self.region.bitmap()
    }

    /// Size in bytes.
    pub fn size(&self) -> usize {
        self.region.size()
    }

    /// The current end of the log.
    pub fn checkpoint(&self) -> Checkpoint {
        Checkpoint {
            pos: self.log().position(),
            generation: self.generation,
        }
    }

    /// Writes logged after `cp`, as `(guest address, length)` in the order they happened.
    /// Check [`overflowed`](Self::overflowed): after an overflow this list is incomplete.
    pub fn writes_since(&self, cp: Checkpoint) -> impl Iterator<Item = (u64, u32)> + '_ {
        self.writes_between(cp, self.checkpoint())
    }

    /// Writes logged between checkpoints `a` and `b` (empty if `b` precedes `a`).
    pub fn writes_between(
        &self,
        a: Checkpoint,
        b: Checkpoint,
    ) -> impl Iterator<Item = (u64, u32)> + '_ {
        self.log().entries(self.resolve(a), self.resolve(b))
    }

    /// True if some write since the last reset was not recorded.
    pub fn overflowed(&self) -> bool {
        self.log().overflowed()
    }

    /// Makes the memory all zeros again and empties the log.
    ///
    /// Zeroes exactly the logged ranges, or the whole memory if the log overflowed. The
    /// zeroing goes through the tracked path (so it also appends entries, possibly
    /// overflowing); the log is cleared afterwards, which drops those entries too.
    /// `&mut self` rules out live borrows of [`mem`](Self::mem) but not clones of the
    /// `GuestMemoryMmap`; nothing may write through such a clone during a reset.
    pub fn reset(&mut self) {
        let log = self.log();
        let mut exact = !log.overflowed();
        if exact {
            // Entries appended by the zeroing land after `end`, so they are never read here.
            let end = log.len();
            exact = (0..end).all(|i| {
                let (addr, len) = log.entry(i);
                self.zero(addr as usize, len as usize)
            });
        }
        if !exact {
            let ok = self.zero(0, self.size());
            debug_assert!(ok, "zeroing the whole guest memory failed");
        }
        log.clear();
        self.generation = self.generation.wrapping_add(1);
    }

    /// Zeroes `[start, start + len)` clamped to the memory; false if a write failed.
    fn zero(&self, start: usize, len: usize) -> bool {
        let slice = self.region.as_volatile_slice();
        let end = start.saturating_add(len).min(self.size());
        let mut at = start;
        while at < end {
            let n = (end - at).min(ZEROS.len());
            if slice.write_slice(&ZEROS[..n], at).is_err() {
                return false;
            }
            at += n;
        }
        true
    }

    fn resolve(&self, cp: Checkpoint) -> usize {
        if cp.generation == self.generation {
            cp.pos
        } else {
            0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::io::Write;

    use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
    use virtio_queue::desc::split::Descriptor;
    use virtio_queue::{Queue, QueueT};
    use vm_memory::GuestMemoryBackend;

    const MEM_SIZE: usize = 0x10000;
    const DESC: u64 = 0x1000;
    const AVAIL: u64 = 0x2000;
    const USED: u64 = 0x3000;

    fn writes(gm: &GuestMem, cp: Checkpoint) -> Vec<(u64, u32)> {
        gm.writes_since(cp).collect()
    }

    fn all_zero(gm: &GuestMem) -> bool {
        let mut buf = vec![0xffu8; gm.size()];
        gm.mem().read_slice(&mut buf, GuestAddress(0)).unwrap();
        buf.iter().all(|&b| b == 0)
    }

    fn ready_queue() -> Queue {
        let mut q = Queue::new(16).unwrap();
        q.try_set_desc_table_address(GuestAddress(DESC)).unwrap();
        q.try_set_avail_ring_address(GuestAddress(AVAIL)).unwrap();
        q.try_set_used_ring_address(GuestAddress(USED)).unwrap();
        q.set_ready(true);
        q
    }

    /// Driver side: chain 0 = header (R, 0x4000, 16) -> data (W, 0x5000, 512)
    /// -> status (W, 0x6000, 1), published in avail slot 0.
    fn publish_chain(gm: &GuestMem) {
        let m = gm.mem();
        let descs = [
            Descriptor::new(0x4000, 16, VRING_DESC_F_NEXT as u16, 1),
            Descriptor::new(
                0x5000,
                512,
                (VRING_DESC_F_NEXT | VRING_DESC_F_WRITE) as u16,
                2,
            ),
            Descriptor::new(0x6000, 1, VRING_DESC_F_WRITE as u16, 0),
        ];
        for (i, d) in descs.into_iter().enumerate() {
            m.write_obj(d, GuestAddress(DESC + 16 * i as u64)).unwrap();
        }
        m.write_obj(0u16, GuestAddress(AVAIL + 4)).unwrap();
        m.store(1u16, GuestAddress(AVAIL + 2), Ordering::Release)
            .unwrap();
    }

    #[test]
    fn bytes_writes_are_logged_exactly() {
        let gm = GuestMem::new(MEM_SIZE);
        let m = gm.mem();
        let cp = gm.checkpoint();
        m.write_slice(&[1, 2, 3, 4, 5], GuestAddress(0x1003))
            .unwrap();
        m.write_obj(0x1122_3344_5566_7788u64, GuestAddress(0x2001))
            .unwrap();
        m.store(7u16, GuestAddress(0x3002), Ordering::Relaxed)
            .unwrap();
        m.write_slice(&[], GuestAddress(0x4000)).unwrap();
        assert_eq!(
            writes(&gm, cp),
            [(0x1003, 5), (0x2001, 8), (0x3002, 2)],
            "one exact entry per write, none for the empty write"
        );
        assert!(!gm.overflowed());
    }

    #[test]
    fn reads_are_not_logged() {
        let gm = GuestMem::new(MEM_SIZE);
        let m = gm.mem();
        let mut buf = [0u8; 64];
        m.read_slice(&mut buf, GuestAddress(0x100)).unwrap();
        let _: u64 = m.read_obj(GuestAddress(0x200)).unwrap();
        let _: u32 = m.load(GuestAddress(0x300), Ordering::Acquire).unwrap();
        let mut q = ready_queue();
        assert!(q.pop_descriptor_chain(m).is_none());
        assert!(gm.log().is_empty());
    }

    #[test]
    fn add_used_logs_element_and_idx() {
        let gm = GuestMem::new(MEM_SIZE);
        let mut q = ready_queue();
        let cp0 = gm.checkpoint();
        q.add_used(gm.mem(), 3, 512).unwrap();
        let cp1 = gm.checkpoint();
        q.add_used(gm.mem(), 5, 1).unwrap();
        assert_eq!(
            gm.writes_between(cp0, cp1).collect::<Vec<_>>(),
            [(USED + 4, 8), (USED + 2, 2)]
        );
        assert_eq!(writes(&gm, cp1), [(USED + 4 + 8, 8), (USED + 2, 2)]);
        assert_eq!(gm.writes_between(cp1, cp0).count(), 0);
    }

    #[test]
    fn writer_made_before_checkpoint_is_seen_after_it() {
        let gm = GuestMem::new(MEM_SIZE);
        let m = gm.mem();
        let mut q = ready_queue();
        publish_chain(&gm);

        let before_device = gm.checkpoint();
        let chain = q.pop_descriptor_chain(m).unwrap();
        let mut writer = chain.writer(m).unwrap();
        assert!(
            writes(&gm, before_device).is_empty(),
            "popping and building a Writer write nothing"
        );

        // The device acks a stop while still holding the Writer, then writes late.
        let stop_ack = gm.checkpoint();
        writer.write_all(&[0xaa; 32]).unwrap();
        writer.write_obj(0x55u8).unwrap();
        assert_eq!(writes(&gm, stop_ack), [(0x5000, 32), (0x5020, 1)]);
    }

    #[test]
    fn volatile_slice_made_before_checkpoint_is_seen_after_it() {
        let gm = GuestMem::new(MEM_SIZE);
        let slice = gm.mem().get_slice(GuestAddress(0x7000), 0x100).unwrap();
        let cp = gm.checkpoint();
        slice.write_slice(&[9; 3], 0x10).unwrap();
        assert_eq!(writes(&gm, cp), [(0x7010, 3)]);
    }

    #[test]
    fn reset_zeroes_logged_bytes_and_empties_log() {
        let mut gm = GuestMem::new(MEM_SIZE);
        let mut q = ready_queue();
        publish_chain(&gm);
        let chain = q.pop_descriptor_chain(gm.mem()).unwrap();
        let head = chain.head_index();
        let mut writer = chain.writer(gm.mem()).unwrap();
        writer.write_all(&[0xcc; 513]).unwrap();
        q.add_used(gm.mem(), head, 513).unwrap();
        gm.mem()
            .write_slice(&[0xee; 100], GuestAddress(MEM_SIZE as u64 - 100))
            .unwrap();
        assert!(!all_zero(&gm));

        let stale = gm.checkpoint();
        gm.reset();
        assert!(all_zero(&gm));
        assert!(gm.log().is_empty());
        assert!(!gm.overflowed());

        // A pre-reset checkpoint counts from the start of the new log.
        gm.mem().write_obj(1u32, GuestAddress(0x10)).unwrap();
        assert_eq!(writes(&gm, stale), [(0x10, 4)]);
        gm.reset();
        assert!(all_zero(&gm));
        assert!(gm.log().is_empty());
    }

    #[test]
    fn overflow_is_flagged_and_reset_zeroes_everything() {
        let mut gm = GuestMem::try_with_log_capacity(MEM_SIZE, 4).unwrap();
        for i in 0..10u64 {
            gm.mem()
                .write_obj(0xffu8, GuestAddress(0x1000 * i + 1))
                .unwrap();
        }
        assert!(gm.overflowed());
        assert_eq!(gm.log().len(), 4);
        assert!(
            gm.log().dirty_at(0),
            "an overflowed log is dirty everywhere"
        );

        // Zeroing 64 KiB in 4 KiB chunks overflows the tiny log again; reset must still end
        // clean.
        gm.reset();
        assert!(all_zero(&gm));
        assert!(gm.log().is_empty());
        assert!(!gm.overflowed());
    }

    #[test]
    fn zero_capacity_log_only_overflows() {
        let mut gm = GuestMem::try_with_log_capacity(MEM_SIZE, 0).unwrap();
        gm.mem().write_obj(1u8, GuestAddress(0)).unwrap();
        assert!(gm.overflowed());
        gm.reset();
        assert!(all_zero(&gm));
        assert!(!gm.overflowed());
    }

    #[test]
    fn dirty_at_and_slices_use_region_offsets() {
        let log = WriteLog::with_capacity(8);
        let slice = log.slice_at(0x100);
        slice.mark_dirty(4, 2);
        slice.mark_dirty(0x10, 0);
        assert_eq!(log.entries(0, usize::MAX).collect::<Vec<_>>(), [(0x104, 2)]);
        assert!(log.dirty_at(0x104) && log.dirty_at(0x105));
        assert!(!log.dirty_at(0x103) && !log.dirty_at(0x106));
        assert!(slice.dirty_at(5) && !slice.dirty_at(6));
    }

    #[test]
    #[cfg(target_pointer_width = "64")]
    fn oversized_marks_split_or_flag_without_panic() {
        let log = WriteLog::with_capacity(8);
        log.mark_dirty(0, u32::MAX as usize + 1);
        assert_eq!(
            log.entries(0, usize::MAX).collect::<Vec<_>>(),
            [(0, u32::MAX), (u64::from(u32::MAX), 1)]
        );
        assert!(!log.overflowed());

        log.mark_dirty(1 << 32, 1);
        assert!(
            log.overflowed(),
            "an offset beyond 32 bits is lost, so flagged"
        );
        log.mark_dirty(usize::MAX, usize::MAX);
        assert_eq!(log.len(), 2);
    }

    #[test]
    fn shared_memory_is_seen_through_its_fd_and_logged_like_private() {
        use std::os::unix::fs::FileExt;
        let gm = GuestMem::shared(MEM_SIZE, 16).unwrap();
        let share = gm.share().expect("a memfd-backed memory shares");
        assert_eq!(share.size, MEM_SIZE as u64);
        let cp = gm.checkpoint();
        gm.mem().write_slice(&[7, 8], GuestAddress(0x1234)).unwrap();
        assert_eq!(writes(&gm, cp), [(0x1234, 2)]);
        // Another mapping of the fd (as a back-end has) sees the bytes, and its writes show
        // in ours without a log entry.
        // SAFETY: `share.fd` is open while `gm` lives; the File is forgotten, not closed.
        let file = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(share.fd) };
        let mut buf = [0u8; 2];
        file.read_exact_at(&mut buf, 0x1234).unwrap();
        file.write_all_at(&[9], 0x2000).unwrap();
        std::mem::forget(file);
        assert_eq!(buf, [7, 8]);
        assert_eq!(gm.mem().read_obj::<u8>(GuestAddress(0x2000)).unwrap(), 9);
        assert_eq!(gm.log().len(), 1);
        assert!(GuestMem::new(MEM_SIZE).share().is_none());
    }

    #[test]
    fn invalid_sizes_are_rejected() {
        let mut bad = vec![0, 100, PAGE_SIZE + 1];
        if let Ok(too_big) = usize::try_from(MAX_MEM_SIZE + PAGE_SIZE as u64) {
            bad.push(too_big);
        }
        for size in bad {
            assert!(matches!(
                GuestMem::try_with_log_capacity(size, 1),
                Err(GuestMemError::InvalidSize(s)) if s == size
            ));
        }
    }

    #[test]
    fn generic_guest_memory_code_accepts_it() {
        fn num_regions<M: GuestMemoryBackend>(m: &M) -> usize {
            m.num_regions()
        }
        let gm = GuestMem::new(MEM_SIZE);
        assert_eq!(num_regions(gm.mem()), 1);
        assert_eq!(gm.size(), MEM_SIZE);
    }
}
