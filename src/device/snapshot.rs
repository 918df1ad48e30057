//! Save and restore: a versioned binary snapshot, validated against guest memory on restore.
//!
//! Version 1, all integers little-endian:
//!
//! ```text
//! magic     "SFBK"                      4 bytes
//! version   u8 = 1
//! config    num_queues u16, queue_max_size u16, capacity u64
//! driver    status u8, driver_features u64, driver_stop u8 (0, SUSPEND or DEVICE_STOPPED)
//! queues    num_queues times: size u16, ready u8, desc u64, avail u64, used u64,
//!           next_avail u16, next_used u16, event_idx u8
//! records   count u16, then per record, in fetch order: queue u16, head u16, type u32,
//!           sector u64, status u64, segments u16, then per segment addr u64, len u32
//! ```
//!
//! A snapshot is untrusted input. Restore decodes it whole, checks it against the
//! destination's configuration and against guest memory, and only then replaces the device.

use std::collections::BTreeSet;

use virtio_queue::{Queue, QueueState, QueueT};
use vm_memory::GuestMemory;

use super::bits::*;
use super::request::{BlkRequest, Kind, MAX_SEGMENTS, Segment};
use super::{BlkDevice, MAX_QUEUE_SIZE, MAX_QUEUES, Record, StopState, VirtQueue};

const MAGIC: &[u8; 4] = b"SFBK";
const VERSION: u8 = 1;
/// Status bits a saved device may have; NEEDS_RESET and FAILED devices are not saved.
const SAVED_STATUS: u8 = S_ACKNOWLEDGE | S_DRIVER | S_FEATURES_OK | S_DRIVER_OK;

/// Why a device cannot be saved now.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SaveError {
    /// The device is live and no stop is acknowledged.
    #[error("the device is running: acknowledge a stop first")]
    Running,
    /// Disk I/O is outstanding, for a held request or one a reset dropped.
    #[error("disk I/O is still outstanding")]
    Busy,
    /// The device needs a reset, or the driver set FAILED.
    #[error("the device needs a reset")]
    Broken,
}

/// Why a snapshot was refused. The destination is left as it was.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// The bytes end inside a field.
    #[error("snapshot ends early")]
    Truncated,
    /// The bytes do not start with the magic `SFBK`.
    #[error("not a stopfuzz device snapshot")]
    BadMagic,
    /// A format version this build does not read.
    #[error("snapshot version {0} is not supported (this build reads version {VERSION})")]
    Version(u8),
    /// Bytes follow the last record.
    #[error("{0} bytes follow the snapshot")]
    TrailingBytes(usize),
    /// The destination has status bits, held requests, disk I/O or an enabled queue.
    #[error("the destination device is not freshly reset")]
    NotFresh,
    /// A configuration field differs from the destination's, or exceeds any device's.
    #[error("snapshot {field} is {saved}, the destination has {ours}")]
    ConfigMismatch {
        /// The field's name in [`DeviceConfig`](super::DeviceConfig).
        field: &'static str,
        /// The snapshot's value.
        saved: u64,
        /// The destination's value, or the most any device has.
        ours: u64,
    },
    /// Negotiated features the destination does not offer.
    #[error("negotiated features {0:#x} are not all offered by the destination")]
    Features(u64),
    /// A status no device is saved with, or one its features do not allow.
    #[error("status {0:#04x} is not a state a device is saved in")]
    Status(u8),
    /// A driver stop byte that is not 0, SUSPEND or DEVICE_STOPPED, or a stop the saved
    /// device cannot be in.
    #[error("driver stop byte {0:#04x} is not valid here")]
    DriverStop(u8),
    /// virtio-queue refuses a queue's state.
    #[error("queue {queue}: {source}")]
    Queue {
        /// The queue index.
        queue: u16,
        /// Why virtio-queue refuses it.
        #[source]
        source: virtio_queue::Error,
    },
    /// A queue has event_idx set without EVENT_IDX negotiated.
    #[error("queue {0}: event_idx is set but EVENT_IDX was not negotiated")]
    EventIdx(u16),
    /// A live queue's rings are not all in guest memory.
    #[error("queue {0}: rings are not in guest memory")]
    RingUnreadable(u16),
    /// A queue's saved `next_used` is not the used idx in guest memory.
    #[error("queue {queue}: saved used idx {saved} but guest memory holds {guest}")]
    UsedIdx {
        /// The queue index.
        queue: u16,
        /// The snapshot's `next_used`.
        saved: u16,
        /// The used idx in guest memory.
        guest: u16,
    },
    /// The avail idx in guest memory is more than a ring ahead of the saved `next_avail`.
    #[error(
        "queue {queue}: avail idx {avail} is more than size {size} ahead of next_avail {next_avail}"
    )]
    AvailWindow {
        /// The queue index.
        queue: u16,
        /// The avail idx in guest memory.
        avail: u16,
        /// The snapshot's `next_avail`.
        next_avail: u16,
        /// The queue size.
        size: u16,
    },
    /// More buffers in flight than the ring holds.
    #[error("queue {queue}: {inuse} buffers in flight exceed size {size}")]
    Inuse {
        /// The queue index.
        queue: u16,
        /// `next_avail - next_used`, wrapping.
        inuse: u16,
        /// The queue size.
        size: u16,
    },
    /// The buffers in flight on a queue are not exactly its records.
    #[error("queue {queue}: {inuse} buffers in flight but {records} records")]
    InuseRecords {
        /// The queue index.
        queue: u16,
        /// `next_avail - next_used`, wrapping.
        inuse: u16,
        /// Records on the queue.
        records: usize,
    },
    /// A flag byte that is neither 0 nor 1.
    #[error("flag byte {0:#04x} is neither 0 nor 1")]
    Flag(u8),
    /// More records than the saved queues have room for.
    #[error("{0} records is more than any device can hold")]
    TooManyRecords(u16),
    /// A record names a queue the device does not have.
    #[error("record names queue {queue}, but the device has {num_queues}")]
    RecordQueue {
        /// The record's queue.
        queue: u16,
        /// Queues the device has.
        num_queues: u16,
    },
    /// A record's head is not below its queue's size.
    #[error("queue {queue}: record head {head} is not below size {size}")]
    RecordHead {
        /// The queue index.
        queue: u16,
        /// The record's head.
        head: u16,
        /// The queue size.
        size: u16,
    },
    /// Two records name the same head of a queue.
    #[error("queue {queue}: head {head} is recorded twice")]
    DuplicateHead {
        /// The queue index.
        queue: u16,
        /// The head recorded twice.
        head: u16,
    },
    /// A record on a queue that is not enabled, or on a device that is not live.
    #[error("queue {queue}: record for head {head} is on a queue that is not running")]
    RecordIdle {
        /// The queue index.
        queue: u16,
        /// The record's head.
        head: u16,
    },
    /// A record's request type is not a read, a write or a flush.
    #[error("record type {0} is not a disk request")]
    RecordType(u32),
    /// A record with more than [`MAX_SEGMENTS`] segments.
    #[error("record has {0} segments, more than {MAX_SEGMENTS}")]
    RecordSegments(u16),
    /// A record's request does not fit the disk or guest memory.
    #[error("queue {queue}: record for head {head} does not fit the disk or guest memory")]
    RecordRequest {
        /// The queue index.
        queue: u16,
        /// The record's head.
        head: u16,
    },
}

/// A held request as saved: its queue, its head and how to run it again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SavedRequest {
    /// The queue it was popped from.
    pub queue: u16,
    /// The head of its descriptor chain.
    pub head: u16,
    /// How to run it again.
    pub req: BlkRequest,
}

/// A snapshot in decoded form: plain, untrusted data. [`Snapshot::decode`] checks only the
/// encoding; [`BlkDevice::restore`] checks everything else.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    /// The source's queue count; the destination must have the same.
    pub num_queues: u16,
    /// The source's largest queue size; the destination must have the same.
    pub queue_max_size: u16,
    /// Disk size in sectors; the destination must have the same.
    pub capacity: u64,
    /// The device status, without the derived stop bits.
    pub status: u8,
    /// The features the driver wrote.
    pub driver_features: u64,
    /// 0, or the stop bit (SUSPEND or DEVICE_STOPPED) the driver holds the device with.
    pub driver_stop: u8,
    /// Each queue's virtio-queue state.
    pub queues: Vec<QueueState>,
    /// Held requests, in fetch order.
    pub requests: Vec<SavedRequest>,
}

impl BlkDevice {
    /// Saves a stopped device. Held requests are saved by queue and head, in fetch order.
    pub fn save(&self) -> Result<Vec<u8>, SaveError> {
        self.snapshot().map(|s| s.encode())
    }

    /// The device's state as a [`Snapshot`], under the same conditions as [`Self::save`].
    pub fn snapshot(&self) -> Result<Snapshot, SaveError> {
        if self.status & (S_NEEDS_RESET | S_FAILED) != 0 {
            return Err(SaveError::Broken);
        }
        if !self.orphans.is_empty() || self.records.values().any(|r| r.io.is_some()) {
            return Err(SaveError::Busy);
        }
        let stopped = [self.driver_stop, self.host_stop].contains(&StopState::Stopped);
        if self.live() && !stopped {
            return Err(SaveError::Running);
        }
        Ok(Snapshot {
            num_queues: self.cfg.num_queues,
            queue_max_size: self.cfg.queue_max_size,
            capacity: self.cfg.capacity,
            status: self.status,
            driver_features: self.driver_features,
            driver_stop: match self.driver_stop {
                StopState::Stopped => self.driver_stop_bit,
                _ => 0,
            },
            queues: self.queues.iter().map(|vq| vq.queue.state()).collect(),
            requests: self
                .records
                .values()
                .filter(|_r| {
                    #[cfg(feature = "mutants")]
                    if crate::mutant!(SaveDropsParked) && _r.io.is_none() {
                        return false;
                    }
                    true
                })
                .map(|r| SavedRequest {
                    queue: r.queue,
                    head: r.head,
                    req: r.req.clone(),
                })
                .collect(),
        })
    }

    /// Restores a snapshot into this freshly built device over the source's guest memory.
    /// The restored device is host-stopped: it consumes nothing until [`Self::host_resume`].
    pub fn restore<M: GuestMemory>(&mut self, bytes: &[u8], mem: &M) -> Result<(), RestoreError> {
        let fresh = self.status == 0
            && self.records.is_empty()
            && self.orphans.is_empty()
            && self.queues.iter().all(|vq| !vq.queue.ready());
        if !fresh {
            return Err(RestoreError::NotFresh);
        }
        let saved = Snapshot::decode(bytes)?;
        let cfg = &self.cfg;
        for (field, saved, ours) in [
            ("num_queues", saved.num_queues.into(), cfg.num_queues.into()),
            (
                "queue_max_size",
                saved.queue_max_size.into(),
                cfg.queue_max_size.into(),
            ),
            ("capacity", saved.capacity, cfg.capacity),
        ] {
            if saved != ours {
                return Err(RestoreError::ConfigMismatch { field, saved, ours });
            }
        }
        *self = self.validated(saved, mem)?;
        Ok(())
    }

    fn validated<M: GuestMemory>(
        &self,
        saved: Snapshot,
        mem: &M,
    ) -> Result<BlkDevice, RestoreError> {
        let cfg = &self.cfg;
        if saved.driver_features & !cfg.features != 0 {
            return Err(RestoreError::Features(saved.driver_features));
        }
        let mut device = BlkDevice::new(cfg.clone()).expect("validated config");
        device.status = saved.status;
        device.driver_features = saved.driver_features;
        let status_ok = saved.status & !SAVED_STATUS == 0
            && (saved.status & S_FEATURES_OK == 0
                || (saved.status & S_DRIVER != 0 && device.features_acceptable()))
            && (saved.status & S_DRIVER_OK == 0 || saved.status & S_FEATURES_OK != 0);
        if !status_ok {
            return Err(RestoreError::Status(saved.status));
        }
        let stop_feature = match saved.driver_stop {
            0 => None,
            S_SUSPEND => Some(F_SUSPEND),
            S_STOPPED => Some(F_STOP),
            other => return Err(RestoreError::DriverStop(other)),
        };
        if let Some(feature) = stop_feature {
            if !device.live() || !device.negotiated(feature) {
                return Err(RestoreError::DriverStop(saved.driver_stop));
            }
            device.driver_stop = StopState::Stopped;
            device.driver_stop_bit = saved.driver_stop;
        }
        device.host_stop = StopState::Stopped;

        for (i, state) in saved.queues.into_iter().enumerate() {
            let q = i as u16;
            let queue = Queue::try_from(QueueState {
                max_size: cfg.queue_max_size,
                ..state
            })
            .map_err(|source| RestoreError::Queue { queue: q, source })?;
            if queue.event_idx_enabled() && !device.negotiated(F_EVENT_IDX) {
                return Err(RestoreError::EventIdx(q));
            }
            device.queues[i] = VirtQueue::new(queue);
        }

        let mut heads = BTreeSet::new();
        for (
            seq,
            SavedRequest {
                queue: q,
                head,
                req,
            },
        ) in saved.requests.into_iter().enumerate()
        {
            let Some(vq) = device.queues.get(usize::from(q)) else {
                let num_queues = cfg.num_queues;
                return Err(RestoreError::RecordQueue {
                    queue: q,
                    num_queues,
                });
            };
            let size = vq.queue.size();
            if head >= size {
                return Err(RestoreError::RecordHead {
                    queue: q,
                    head,
                    size,
                });
            }
            if !heads.insert((q, head)) {
                return Err(RestoreError::DuplicateHead { queue: q, head });
            }
            if !device.live() || !vq.queue.ready() {
                return Err(RestoreError::RecordIdle { queue: q, head });
            }
            if !req.is_valid(mem, cfg.capacity) {
                return Err(RestoreError::RecordRequest { queue: q, head });
            }
            let record = Record {
                queue: q,
                head,
                req,
                io: None,
            };
            device.records.insert(seq as u64, record);
        }
        device.next_seq = device.records.len() as u64;

        for (i, vq) in device.queues.iter().enumerate() {
            let q = i as u16;
            let records = heads.iter().filter(|(hq, _)| *hq == q).count();
            check_ring(&vq.queue, q, records, device.live(), mem)?;
        }
        #[cfg(feature = "mutants")]
        for vq in &mut device.queues {
            if crate::mutant!(RestoreFromUsed) {
                let used = vq.queue.next_used();
                vq.queue.set_next_avail(used);
            }
            if crate::mutant!(NoNotifyAfterRestore) {
                vq.signalled_used = Some(vq.queue.next_used());
            }
        }
        #[cfg(feature = "mutants")]
        if crate::mutant!(RestoreFromUsed) {
            device.records.clear();
        }
        Ok(device)
    }
}

/// The ring checks QEMU's `virtio_load` makes, plus `inuse == records`.
fn check_ring<M: GuestMemory>(
    queue: &Queue,
    q: u16,
    records: usize,
    live: bool,
    mem: &M,
) -> Result<(), RestoreError> {
    let (size, next_avail, next_used) = (queue.size(), queue.next_avail(), queue.next_used());
    let inuse = next_avail.wrapping_sub(next_used);
    #[cfg(feature = "mutants")]
    if crate::mutant!(RestoreAcceptsInuseOverSize) && inuse > size {
        return Ok(());
    }
    if inuse > size {
        return Err(RestoreError::Inuse {
            queue: q,
            inuse,
            size,
        });
    }
    if usize::from(inuse) != records {
        return Err(RestoreError::InuseRecords {
            queue: q,
            inuse,
            records,
        });
    }
    if !(live && queue.ready()) {
        return Ok(());
    }
    let order = std::sync::atomic::Ordering::Acquire;
    let (Ok(avail), Ok(used), true) = (
        queue.avail_idx(mem, order),
        queue.used_idx(mem, order),
        queue.is_valid(mem),
    ) else {
        return Err(RestoreError::RingUnreadable(q));
    };
    if used.0 != next_used {
        return Err(RestoreError::UsedIdx {
            queue: q,
            saved: next_used,
            guest: used.0,
        });
    }
    if avail.0.wrapping_sub(next_avail) > size {
        return Err(RestoreError::AvailWindow {
            queue: q,
            avail: avail.0,
            next_avail,
            size,
        });
    }
    Ok(())
}

impl Snapshot {
    /// The snapshot as bytes, in the current format version.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + 32 * self.queues.len());
        out.extend_from_slice(MAGIC);
        out.push(VERSION);
        put16(&mut out, self.num_queues);
        put16(&mut out, self.queue_max_size);
        put64(&mut out, self.capacity);
        out.push(self.status);
        put64(&mut out, self.driver_features);
        out.push(self.driver_stop);
        for s in &self.queues {
            put16(&mut out, s.size);
            out.push(s.ready.into());
            put64(&mut out, s.desc_table);
            put64(&mut out, s.avail_ring);
            put64(&mut out, s.used_ring);
            put16(&mut out, s.next_avail);
            put16(&mut out, s.next_used);
            out.push(s.event_idx_enabled.into());
        }
        put16(&mut out, self.requests.len() as u16);
        for r in &self.requests {
            put16(&mut out, r.queue);
            put16(&mut out, r.head);
            out.extend_from_slice(&r.req.kind.blk_type().to_le_bytes());
            put64(&mut out, r.req.sector);
            put64(&mut out, r.req.status);
            put16(&mut out, r.req.data.len() as u16);
            for seg in &r.req.data {
                put64(&mut out, seg.addr);
                out.extend_from_slice(&seg.len.to_le_bytes());
            }
        }
        out
    }

    /// Decodes the encoding only: any bytes give a snapshot or an error, never a panic.
    pub fn decode(bytes: &[u8]) -> Result<Snapshot, RestoreError> {
        let mut r = Reader(bytes);
        if r.take::<4>()? != *MAGIC {
            return Err(RestoreError::BadMagic);
        }
        let version = r.u8()?;
        if version != VERSION {
            return Err(RestoreError::Version(version));
        }
        let (num_queues, queue_max_size, capacity) = (r.u16()?, r.u16()?, r.u64()?);
        if num_queues > MAX_QUEUES {
            let (saved, ours) = (num_queues.into(), MAX_QUEUES.into());
            return Err(RestoreError::ConfigMismatch {
                field: "num_queues",
                saved,
                ours,
            });
        }
        let (status, driver_features, driver_stop) = (r.u8()?, r.u64()?, r.u8()?);
        let mut queues = Vec::with_capacity(num_queues.into());
        for _ in 0..num_queues {
            queues.push(QueueState {
                max_size: queue_max_size,
                size: r.u16()?,
                ready: r.flag()?,
                desc_table: r.u64()?,
                avail_ring: r.u64()?,
                used_ring: r.u64()?,
                next_avail: r.u16()?,
                next_used: r.u16()?,
                event_idx_enabled: r.flag()?,
            });
        }
        let count = r.u16()?;
        if count > num_queues * queue_max_size.min(MAX_QUEUE_SIZE) {
            return Err(RestoreError::TooManyRecords(count));
        }
        let mut requests = Vec::with_capacity(count.into());
        for _ in 0..count {
            let (queue, head) = (r.u16()?, r.u16()?);
            let blk_type = u32::from_le_bytes(r.take()?);
            let kind = Kind::from_blk_type(blk_type).ok_or(RestoreError::RecordType(blk_type))?;
            let (sector, status) = (r.u64()?, r.u64()?);
            let nsegs = r.u16()?;
            if usize::from(nsegs) > MAX_SEGMENTS {
                return Err(RestoreError::RecordSegments(nsegs));
            }
            let mut data = Vec::with_capacity(nsegs.into());
            for _ in 0..nsegs {
                let addr = r.u64()?;
                let len = u32::from_le_bytes(r.take()?);
                data.push(Segment { addr, len });
            }
            let req = BlkRequest {
                kind,
                sector,
                data,
                status,
            };
            requests.push(SavedRequest { queue, head, req });
        }
        if !r.0.is_empty() {
            return Err(RestoreError::TrailingBytes(r.0.len()));
        }
        Ok(Snapshot {
            num_queues,
            queue_max_size,
            capacity,
            status,
            driver_features,
            driver_stop,
            queues,
            requests,
        })
    }
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> Result<[u8; N], RestoreError> {
        let (head, rest) = self
            .0
            .split_first_chunk::<N>()
            .ok_or(RestoreError::Truncated)?;
        self.0 = rest;
        Ok(*head)
    }

    fn u8(&mut self) -> Result<u8, RestoreError> {
        Ok(self.take::<1>()?[0])
    }

    fn flag(&mut self) -> Result<bool, RestoreError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            other => Err(RestoreError::Flag(other)),
        }
    }

    fn u16(&mut self) -> Result<u16, RestoreError> {
        Ok(u16::from_le_bytes(self.take()?))
    }

    fn u64(&mut self) -> Result<u64, RestoreError> {
        Ok(u64::from_le_bytes(self.take()?))
    }
}

fn put16(out: &mut Vec<u8>, v: u16) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}
