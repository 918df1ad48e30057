//! The reference virtio-blk device: the device under test, and the one every finding is
//! measured against.
//!
//! It runs on rust-vmm's `virtio-queue` and reaches guest memory and the disk only through
//! `vm_memory::GuestMemory` and [`Backend`], both passed into [`BlkDevice::poll`]. Every call
//! is bounded and single-threaded, and nothing depends on time, so a run is a function of the
//! calls made.
//!
//! Stopping. A stop is requested by the driver (the SUSPEND bit, or the STOP proposal's
//! DEVICE_STOPPED bit) or by the host, and acknowledged once the device is quiescent under
//! its [`InflightPolicy`]. From the acknowledgement until resume the device neither touches
//! guest memory nor sends an interrupt.

pub mod bits;
pub(crate) mod exec;
pub(crate) mod notify;
pub mod request;
mod snapshot;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;

use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{GuestAddress, GuestMemory};

use crate::backend::{Backend, Completion, IoTag};
use bits::*;
use exec::Verdict;
use request::{BlkRequest, Desc, Kind, Limits, Parsed};
pub use snapshot::{RestoreError, SaveError, SavedRequest, Snapshot};

/// Most queues a device can have (`num_queues`).
pub const MAX_QUEUES: u16 = 4;
/// Largest queue size a device can offer.
pub const MAX_QUEUE_SIZE: u16 = 256;
/// Passes over one queue per poll; more work waits for the next poll, so no call spins.
const MAX_PASSES: usize = 4;

pub use crate::contract::{ErrorPolicy, InflightPolicy};

/// How the device is built: what a VMM's command line would say.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceConfig {
    /// 1 to [`MAX_QUEUES`]; more than one needs `F_MQ` offered.
    pub num_queues: u16,
    /// A power of two up to [`MAX_QUEUE_SIZE`].
    pub queue_max_size: u16,
    /// Disk size in sectors.
    pub capacity: u64,
    /// Offered features, a subset of [`bits::SUPPORTED`] that includes `F_VERSION_1`.
    pub features: u64,
    /// What a stop acknowledgement waits for.
    pub inflight: InflightPolicy,
    /// What a failed write or flush does (QEMU's werror).
    pub write_policy: ErrorPolicy,
    /// `Enospc` is not allowed: QEMU's rerror has no such action.
    pub read_policy: ErrorPolicy,
    /// The GET_ID answer.
    pub device_id: [u8; ID_BYTES],
}

impl Default for DeviceConfig {
    fn default() -> Self {
        DeviceConfig {
            num_queues: 1,
            queue_max_size: MAX_QUEUE_SIZE,
            capacity: 64,
            features: SUPPORTED,
            inflight: InflightPolicy::Track,
            write_policy: ErrorPolicy::Enospc,
            read_policy: ErrorPolicy::Report,
            device_id: *b"stopfuzz-reference\0\0",
        }
    }
}

/// Why a [`DeviceConfig`] cannot build a device.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// `num_queues` is 0 or above [`MAX_QUEUES`].
    #[error("num_queues {0} is not between 1 and {MAX_QUEUES}")]
    NumQueues(u16),
    /// `queue_max_size` is not a power of two, or above [`MAX_QUEUE_SIZE`].
    #[error("queue_max_size {0} is not a power of two up to {MAX_QUEUE_SIZE}")]
    QueueSize(u16),
    /// The offered features include unsupported bits, or lack `F_VERSION_1`.
    #[error("offered features {0:#x} include unsupported bits or lack VERSION_1")]
    Features(u64),
    /// More than one queue, without `F_MQ` offered.
    #[error("more than one queue needs VIRTIO_BLK_F_MQ offered")]
    MqNotOffered,
    /// The read policy is `Enospc`.
    #[error("the read policy cannot be enospc")]
    ReadEnospc,
}

impl DeviceConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if !(1..=MAX_QUEUES).contains(&self.num_queues) {
            return Err(ConfigError::NumQueues(self.num_queues));
        }
        if !self.queue_max_size.is_power_of_two() || self.queue_max_size > MAX_QUEUE_SIZE {
            return Err(ConfigError::QueueSize(self.queue_max_size));
        }
        if self.features & !SUPPORTED != 0 || self.features & F_VERSION_1 == 0 {
            return Err(ConfigError::Features(self.features));
        }
        if self.num_queues > 1 && self.features & F_MQ == 0 {
            return Err(ConfigError::MqNotOffered);
        }
        if self.read_policy == ErrorPolicy::Enospc {
            return Err(ConfigError::ReadEnospc);
        }
        Ok(())
    }
}

/// Where a stop request stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopState {
    /// No stop requested.
    Running,
    /// Requested, not yet acknowledged.
    Stopping,
    /// Acknowledged: quiet until resumed.
    Stopped,
}

/// Interrupts sent since the last [`BlkDevice::take_interrupts`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Interrupts {
    /// Used-buffer notifications, per queue.
    pub used: [u32; MAX_QUEUES as usize],
    /// Configuration-change notifications (sent on NEEDS_RESET).
    pub config: u32,
}

/// A popped request the device still holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Held {
    /// The queue it was popped from.
    pub queue: u16,
    /// The head of its descriptor chain.
    pub head: u16,
    /// Failed under a stop-class policy and waiting for a retry.
    pub parked: bool,
}

struct VirtQueue {
    queue: Queue,
    kicked: bool,
    /// `next_used` at the last notification decision; `None` forces the next one to notify.
    signalled_used: Option<u16>,
    used_dirty: bool,
}

impl VirtQueue {
    fn new(queue: Queue) -> Self {
        VirtQueue {
            queue,
            kicked: false,
            signalled_used: None,
            used_dirty: false,
        }
    }
}

struct Record {
    queue: u16,
    head: u16,
    req: BlkRequest,
    /// The disk I/O running for it; `None` when parked.
    io: Option<IoTag>,
}

/// The reference virtio-blk device.
pub struct BlkDevice {
    cfg: DeviceConfig,
    /// The initialization bits and NEEDS_RESET/FAILED; SUSPEND and STOPPED are derived.
    status: u8,
    driver_features: u64,
    driver_stop: StopState,
    /// `S_SUSPEND` or `S_STOPPED`: which bit the driver stopped with.
    driver_stop_bit: u8,
    host_stop: StopState,
    queues: Vec<VirtQueue>,
    /// Held requests by fetch order, which is also their retry order.
    records: BTreeMap<u64, Record>,
    next_seq: u64,
    /// Disk I/O whose request was dropped by a reset: waited for, never completed.
    orphans: BTreeSet<IoTag>,
    retry_due: bool,
    interrupts: Interrupts,
}

impl BlkDevice {
    /// A device as `cfg` says, freshly reset, or why `cfg` cannot be built.
    pub fn new(cfg: DeviceConfig) -> Result<Self, ConfigError> {
        cfg.validate()?;
        let queues = (0..cfg.num_queues)
            .map(|_| VirtQueue::new(Queue::new(cfg.queue_max_size).expect("validated size")))
            .collect();
        Ok(BlkDevice {
            cfg,
            status: 0,
            driver_features: 0,
            driver_stop: StopState::Running,
            driver_stop_bit: 0,
            host_stop: StopState::Running,
            queues,
            records: BTreeMap::new(),
            next_seq: 0,
            orphans: BTreeSet::new(),
            retry_due: false,
            interrupts: Interrupts::default(),
        })
    }

    /// How the device was built.
    pub fn config(&self) -> &DeviceConfig {
        &self.cfg
    }

    // ---- The transport, as the driver sees it.

    /// The features the device offers.
    pub fn device_features(&self) -> u64 {
        self.cfg.features
    }

    /// The features the driver last wrote; FEATURES_OK says whether they were accepted.
    pub fn driver_features(&self) -> u64 {
        self.driver_features
    }

    /// Accepted between DRIVER and FEATURES_OK, ignored otherwise.
    pub fn set_driver_features(&mut self, features: u64) {
        if self.status & S_DRIVER != 0 && self.status & S_FEATURES_OK == 0 {
            self.driver_features = features;
        }
    }

    /// The status as the driver reads it. Once a driver stop is acknowledged, its bit reads
    /// set, and with SUSPEND, DRIVER_OK reads clear.
    pub fn read_status(&self) -> u8 {
        match (self.driver_stop, self.driver_stop_bit) {
            #[cfg(feature = "mutants")]
            (StopState::Stopping, S_SUSPEND) if crate::mutant!(SuspendShownBeforeAck) => {
                self.status | S_SUSPEND
            }
            (StopState::Stopped, S_SUSPEND) => (self.status & !S_DRIVER_OK) | S_SUSPEND,
            (StopState::Stopped, bit) => self.status | bit,
            _ => self.status,
        }
    }

    /// A write of the device status. 0 resets the device. Before DRIVER_OK the usual
    /// initialization applies; after it the writes that matter are FAILED and the stop bits:
    ///
    /// - SUSPEND (with `F_SUSPEND`): setting it requests a stop. Once acknowledged the status
    ///   reads SUSPEND=1, DRIVER_OK=0, and a write with DRIVER_OK resumes. Before the
    ///   acknowledgement, a write without SUSPEND cancels the request.
    /// - DEVICE_STOPPED (with `F_STOP`): setting it requests a stop, the bit reads back set
    ///   once acknowledged, and a write without it resumes (or cancels).
    pub fn write_status(&mut self, value: u8) {
        if value == 0 {
            self.reset();
        } else if self.status & S_DRIVER_OK == 0 {
            self.initialize(value);
        } else {
            self.write_live_status(value);
        }
        self.update_acks();
    }

    fn initialize(&mut self, value: u8) {
        self.status |= value & (S_ACKNOWLEDGE | S_DRIVER | S_FAILED);
        if value & S_FEATURES_OK != 0 && self.status & S_DRIVER != 0 && self.features_acceptable() {
            self.status |= S_FEATURES_OK;
        }
        if value & S_DRIVER_OK != 0 && self.status & S_FEATURES_OK != 0 {
            self.status |= S_DRIVER_OK;
            let event_idx = self.negotiated(F_EVENT_IDX);
            for vq in &mut self.queues {
                vq.queue.set_event_idx(event_idx);
                vq.kicked = true;
            }
        }
    }

    fn write_live_status(&mut self, value: u8) {
        if value & S_FAILED != 0 && self.status & S_FAILED == 0 {
            self.status |= S_FAILED;
            self.detach_all();
        }
        let resumes = match (self.driver_stop, self.driver_stop_bit) {
            (StopState::Running, _) => {
                if value & S_SUSPEND != 0 && self.negotiated(F_SUSPEND) {
                    self.request_driver_stop(S_SUSPEND);
                } else if value & S_STOPPED != 0 && self.negotiated(F_STOP) {
                    self.request_driver_stop(S_STOPPED);
                }
                false
            }
            (StopState::Stopped, S_SUSPEND) => value & S_DRIVER_OK != 0,
            (_, bit) => value & bit == 0,
        };
        if resumes {
            self.driver_stop = StopState::Running;
            self.resumed();
        }
    }

    fn request_driver_stop(&mut self, bit: u8) {
        self.driver_stop = StopState::Stopping;
        self.driver_stop_bit = bit;
    }

    fn features_acceptable(&self) -> bool {
        self.driver_features & !self.cfg.features == 0 && self.driver_features & F_VERSION_1 != 0
    }

    fn negotiated(&self, feature: u64) -> bool {
        self.status & S_FEATURES_OK != 0 && self.driver_features & feature != 0
    }

    /// Reads the virtio-blk configuration space; bytes past its end read as 0.
    pub fn read_config(&self, offset: u64, data: &mut [u8]) {
        let space = config_space(self.cfg.capacity, self.cfg.num_queues);
        for (i, byte) in data.iter_mut().enumerate() {
            *byte = usize::try_from(offset)
                .ok()
                .and_then(|o| o.checked_add(i))
                .and_then(|at| space.get(at).copied())
                .unwrap_or(0);
        }
    }

    /// Queue setup writes are ignored for a missing or enabled queue, and bad values are
    /// ignored, as hardware would.
    pub fn queue_set_size(&mut self, q: u16, size: u16) {
        if let Some(vq) = self.idle_queue(q) {
            let _ = vq.queue.try_set_size(size);
        }
    }

    /// Sets a queue's descriptor table, avail ring and used ring addresses, ignored as
    /// [`Self::queue_set_size`] is.
    pub fn queue_set_addresses(&mut self, q: u16, desc: u64, avail: u64, used: u64) {
        if let Some(vq) = self.idle_queue(q) {
            let _ = vq.queue.try_set_desc_table_address(GuestAddress(desc));
            let _ = vq.queue.try_set_avail_ring_address(GuestAddress(avail));
            let _ = vq.queue.try_set_used_ring_address(GuestAddress(used));
        }
    }

    /// Sets where a queue's ring indices start (`next_avail` and `next_used`), as vhost-user's
    /// SET_VRING_BASE does. Like the other setup writes, ignored once the queue is enabled.
    pub fn queue_set_base(&mut self, q: u16, index: u16) {
        if let Some(vq) = self.idle_queue(q) {
            vq.queue.set_next_avail(index);
            vq.queue.set_next_used(index);
        }
    }

    /// Enables a queue. Disabling is done by a queue reset.
    pub fn queue_enable(&mut self, q: u16) {
        let event_idx = self.negotiated(F_EVENT_IDX);
        if let Some(vq) = self.idle_queue(q) {
            vq.queue.set_event_idx(event_idx);
            vq.queue.set_ready(true);
            vq.kicked = true;
        }
    }

    fn idle_queue(&mut self, q: u16) -> Option<&mut VirtQueue> {
        self.queues
            .get_mut(usize::from(q))
            .filter(|vq| !vq.queue.ready())
    }

    /// Virtqueue reset (`VIRTIO_F_RING_RESET`): the queue returns to its defaults and its held
    /// requests are dropped without completion.
    pub fn queue_reset(&mut self, q: u16) {
        if !self.negotiated(F_RING_RESET) || usize::from(q) >= self.queues.len() {
            return;
        }
        let vq = &mut self.queues[usize::from(q)];
        #[cfg(feature = "mutants")]
        let stale = (vq.queue.next_avail(), vq.queue.next_used());
        vq.queue.reset();
        *vq = VirtQueue::new(std::mem::take(&mut vq.queue));
        #[cfg(feature = "mutants")]
        if crate::mutant!(StaleIndexAfterQueueReset) {
            vq.queue.set_next_avail(stale.0);
            vq.queue.set_next_used(stale.1);
        }
        self.detach(|r| r.queue == q);
        self.update_acks();
    }

    /// The queue's ring positions `(last_avail_idx, used_idx)`, readable by the driver while
    /// it holds the device stopped with DEVICE_STOPPED.
    pub fn queue_indices(&self, q: u16) -> Option<(u16, u16)> {
        let stopped = self.driver_stop == StopState::Stopped && self.driver_stop_bit == S_STOPPED;
        let queue = &self.queues.get(usize::from(q))?.queue;
        stopped.then(|| (queue.next_avail(), queue.next_used()))
    }

    /// A driver notification. It is remembered until the device can act on it.
    pub fn kick(&mut self, q: u16) {
        #[cfg(feature = "mutants")]
        if crate::mutant!(KicksLostWhileStopped)
            && (self.driver_stop != StopState::Running || self.host_stop != StopState::Running)
        {
            return;
        }
        if let Some(vq) = self.queues.get_mut(usize::from(q)) {
            vq.kicked = true;
        }
    }

    /// Takes the interrupts sent since the last call.
    pub fn take_interrupts(&mut self) -> Interrupts {
        std::mem::take(&mut self.interrupts)
    }

    // ---- The host (VMM) side.

    /// Stops the device without the guest seeing it (like vhost-user GET_VRING_BASE).
    pub fn host_stop(&mut self) {
        if self.host_stop == StopState::Running {
            self.host_stop = StopState::Stopping;
            self.update_acks();
        }
    }

    /// Ends a host stop, acknowledged or not, as if every queue were kicked and a retry
    /// asked for.
    pub fn host_resume(&mut self) {
        if self.host_stop != StopState::Running {
            self.host_stop = StopState::Running;
            self.resumed();
        }
    }

    /// The storage problem is fixed: retry parked requests at the next poll (like QEMU's
    /// `cont` after ENOSPC). While the device is stopped the retry waits for resume.
    pub fn host_retry(&mut self) {
        self.retry_due = true;
    }

    /// Where a host stop stands.
    pub fn host_stop_state(&self) -> StopState {
        self.host_stop
    }

    /// Where a driver stop (SUSPEND or DEVICE_STOPPED) stands.
    pub fn driver_stop_state(&self) -> StopState {
        self.driver_stop
    }

    fn resumed(&mut self) {
        #[cfg(feature = "mutants")]
        if crate::mutant!(NaiveRewind) {
            for vq in &mut self.queues {
                let used = vq.queue.next_used();
                vq.queue.set_next_avail(used);
            }
            self.records.clear();
        }
        #[cfg(feature = "mutants")]
        if crate::mutant!(KicksLostWhileStopped) {
            self.retry_due = true;
            return;
        }
        // Buffers may have been made available without a kick getting through.
        for vq in &mut self.queues {
            vq.kicked = true;
        }
        self.retry_due = true;
    }

    /// Device reset: everything the driver set up is gone, and held requests are dropped
    /// without completion. A host stop stays in force.
    fn reset(&mut self) {
        for vq in &mut self.queues {
            vq.queue.reset();
            *vq = VirtQueue::new(std::mem::take(&mut vq.queue));
        }
        self.status = 0;
        self.driver_features = 0;
        self.driver_stop = StopState::Running;
        #[cfg(feature = "mutants")]
        if crate::mutant!(HostStopForgottenOnReset) {
            self.host_stop = StopState::Running;
        }
        #[cfg(feature = "mutants")]
        if crate::mutant!(ParkedRetriedAfterReset) {
            self.detach(|r| r.io.is_some());
            return;
        }
        self.detach_all();
    }

    // ---- Introspection, for the harness.

    /// Whether the device has set DEVICE_NEEDS_RESET.
    pub fn needs_reset(&self) -> bool {
        self.status & S_NEEDS_RESET != 0
    }

    /// Requests popped and not yet used, in fetch order.
    pub fn held(&self) -> impl Iterator<Item = Held> + '_ {
        self.records.values().map(|r| Held {
            queue: r.queue,
            head: r.head,
            parked: r.io.is_none(),
        })
    }

    /// `(next_avail, next_used)` of a queue, for the harness only.
    pub fn queue_position(&self, q: u16) -> Option<(u16, u16)> {
        let queue = &self.queues.get(usize::from(q))?.queue;
        Some((queue.next_avail(), queue.next_used()))
    }

    // ---- The device's own work.

    /// Runs the device once: takes disk completions, retries parked requests if a retry is
    /// due, then consumes the kicked queues, and finally decides notifications and stop
    /// acknowledgements.
    pub fn poll<M: GuestMemory, B: Backend + ?Sized>(&mut self, mem: &M, disk: &mut B) {
        while let Some(completion) = disk.next_completion() {
            self.complete(completion, mem);
        }
        #[cfg(feature = "mutants")]
        if crate::mutant!(RetryWithoutRetryPoint) {
            self.retry_due = true;
        }
        if self.retry_due && self.may_run_io() {
            self.retry_due = false;
            let parked: Vec<u64> = self
                .records
                .iter()
                .filter(|(_, r)| r.io.is_none())
                .map(|(s, _)| *s)
                .collect();
            #[cfg(feature = "mutants")]
            let parked = self.mutated_retry(parked);
            for seq in parked {
                self.submit(seq, mem, disk);
            }
        }
        for q in 0..self.active_queues() {
            if !self.may_consume() {
                break;
            }
            if std::mem::take(&mut self.queues[q].kicked) {
                self.process_queue(q, mem, disk);
            }
        }
        for q in 0..self.queues.len() {
            if std::mem::take(&mut self.queues[q].used_dirty) && self.should_notify(q, mem) {
                self.interrupts.used[q] += 1;
            }
        }
        #[cfg(feature = "mutants")]
        if crate::mutant!(WriteAfterAck) && self.live() && !self.may_run_io() {
            for vq in self
                .queues
                .iter_mut()
                .filter(|vq| vq.kicked && vq.queue.ready())
            {
                let _ = vq.queue.enable_notification(mem);
            }
        }
        self.update_acks();
    }

    fn live(&self) -> bool {
        self.status & (S_DRIVER_OK | S_NEEDS_RESET | S_FAILED) == S_DRIVER_OK
    }

    /// Disk I/O may start: live, and no stop acknowledged.
    fn may_run_io(&self) -> bool {
        self.live()
            && self.driver_stop != StopState::Stopped
            && self.host_stop != StopState::Stopped
    }

    /// New buffers may be fetched: running, and nothing parked (a parked request pauses the
    /// device, as QEMU's werror=stop pauses the VM).
    fn may_consume(&self) -> bool {
        let running = self.live()
            && self.driver_stop == StopState::Running
            && self.host_stop == StopState::Running;
        #[cfg(feature = "mutants")]
        if crate::mutant!(ConsumeWhileParked) {
            return running;
        }
        running && self.records.values().all(|r| r.io.is_some())
    }

    /// What a planted bug retries instead of the parked requests in fetch order.
    #[cfg(feature = "mutants")]
    fn mutated_retry(&self, mut parked: Vec<u64>) -> Vec<u64> {
        if crate::mutant!(RetryResubmitsRunning) {
            parked = self.records.keys().copied().collect();
        }
        if crate::mutant!(RetryOutOfOrder) {
            parked.reverse();
        }
        parked
    }

    fn active_queues(&self) -> usize {
        if self.negotiated(F_MQ) {
            self.queues.len()
        } else {
            1
        }
    }

    fn process_queue<M: GuestMemory, B: Backend + ?Sized>(
        &mut self,
        q: usize,
        mem: &M,
        disk: &mut B,
    ) {
        if !self.queues[q].queue.ready() {
            return;
        }
        for _ in 0..MAX_PASSES {
            let queue = &mut self.queues[q].queue;
            let Ok(avail) = queue.avail_idx(mem, Ordering::Acquire) else {
                return self.break_device();
            };
            let window = avail.0.wrapping_sub(queue.next_avail());
            #[cfg(feature = "mutants")]
            let window = match crate::mutant!(UnwrappedIndex) {
                true => avail.0.saturating_sub(queue.next_avail()),
                false => window,
            };
            let inuse = queue.next_avail().wrapping_sub(queue.next_used());
            // Covers both a driver that moved avail idx more than a ring ahead and one
            // that made more buffers available than the ring has descriptors.
            let over = u32::from(window) + u32::from(inuse) > u32::from(queue.size());
            #[cfg(feature = "mutants")]
            let over = over
                && !(crate::mutant!(ConsumeBeyondWindow) && inuse <= queue.size() && {
                    queue.set_next_avail(avail.0.wrapping_sub(queue.size() - inuse));
                    true
                });
            if over {
                return self.break_device();
            }
            if window > 0 {
                let chains = match queue
                    .disable_notification(mem)
                    .and_then(|_| queue.iter(mem))
                {
                    Ok(iter) => iter
                        .map(|c| (c.head_index(), exec::walk(c)))
                        .collect::<Vec<_>>(),
                    Err(_) => return self.break_device(),
                };
                if queue.next_avail() != avail.0 {
                    // An avail ring entry could not be read.
                    return self.break_device();
                }
                for (head, descs) in chains {
                    self.start(q as u16, head, descs, mem, disk);
                    if !self.live() {
                        return;
                    }
                }
            }
            match self.queues[q].queue.enable_notification(mem) {
                Ok(true) => continue,
                Ok(false) => return,
                Err(_) => return self.break_device(),
            }
        }
        self.queues[q].kicked = true;
    }

    fn start<M: GuestMemory, B: Backend + ?Sized>(
        &mut self,
        q: u16,
        head: u16,
        descs: Option<Vec<Desc>>,
        mem: &M,
        disk: &mut B,
    ) {
        // A chain virtio-queue cut short (head out of range, bad next, loop, nested
        // indirect, unreadable table) or a head the device already holds: the driver broke
        // the ring, as QEMU's virtio_error treats it.
        let Some(descs) = descs else {
            return self.break_device();
        };
        if self
            .records
            .values()
            .any(|r| r.queue == q && r.head == head)
        {
            return self.break_device();
        }
        let limits = Limits {
            capacity: self.cfg.capacity,
            flush: self.negotiated(F_FLUSH),
            device_id: &self.cfg.device_id,
        };
        match request::parse(&descs, mem, &limits) {
            Parsed::Io(req) => {
                let seq = self.next_seq;
                self.next_seq += 1;
                let record = Record {
                    queue: q,
                    head,
                    req,
                    io: None,
                };
                self.records.insert(seq, record);
                self.submit(seq, mem, disk);
            }
            Parsed::Done {
                status_addr,
                status,
                reply,
                reply_to,
            } => match request::scatter(mem, &reply_to, &reply) {
                #[cfg(feature = "mutants")]
                Some(_) if crate::mutant!(HeadLeakedOnError) && status != BLK_S_OK => {
                    let _ = exec::write_status(mem, status_addr, status);
                }
                Some(n) => self.finish(q, head, status_addr, status, n as u32 + 1, mem),
                None => self.break_device(),
            },
            Parsed::NoStatus => self.add_used(q, head, 0, mem),
        }
    }

    fn submit<M: GuestMemory, B: Backend + ?Sized>(&mut self, seq: u64, mem: &M, disk: &mut B) {
        let Some(io) = exec::io_for(&self.records[&seq].req, mem) else {
            return self.finish_record(seq, BLK_S_IOERR, 1, mem);
        };
        let tag = disk.submit(io);
        self.records.get_mut(&seq).expect("held").io = Some(tag);
    }

    fn complete<M: GuestMemory>(&mut self, completion: Completion, mem: &M) {
        if self.orphans.remove(&completion.tag) {
            return;
        }
        let Some((&seq, record)) = self
            .records
            .iter()
            .find(|(_, r)| r.io == Some(completion.tag))
        else {
            return;
        };
        let policy = if record.req.kind == Kind::In {
            self.cfg.read_policy
        } else {
            self.cfg.write_policy
        };
        let verdict = exec::verdict(&record.req, &completion.result, policy, mem);
        #[cfg(feature = "mutants")]
        let verdict = match verdict {
            Verdict::Park if crate::mutant!(ParkedReportsIoerr) && policy == ErrorPolicy::Stop => {
                Verdict::Complete {
                    status: BLK_S_IOERR,
                    len: 1,
                }
            }
            Verdict::Park if crate::mutant!(ParkedCompletedAndRetried) => {
                let r = &self.records[&seq];
                let (q, head, at) = (r.queue, r.head, r.req.status);
                self.finish(q, head, at, BLK_S_IOERR, 1, mem);
                Verdict::Park
            }
            other => other,
        };
        match verdict {
            Verdict::Complete { status, len } => self.finish_record(seq, status, len, mem),
            Verdict::Park => {
                if let Some(r) = self.records.get_mut(&seq) {
                    r.io = None;
                }
            }
        }
    }

    fn finish_record<M: GuestMemory>(&mut self, seq: u64, status: u8, len: u32, mem: &M) {
        let record = self.records.remove(&seq).expect("held");
        self.finish(
            record.queue,
            record.head,
            record.req.status,
            status,
            len,
            mem,
        );
    }

    /// Writes the status byte, then returns the head.
    fn finish<M: GuestMemory>(
        &mut self,
        q: u16,
        head: u16,
        at: u64,
        status: u8,
        len: u32,
        mem: &M,
    ) {
        if !exec::write_status(mem, at, status) {
            return self.break_device();
        }
        self.add_used(q, head, len, mem);
    }

    fn add_used<M: GuestMemory>(&mut self, q: u16, head: u16, len: u32, mem: &M) {
        let vq = &mut self.queues[usize::from(q)];
        // add_used can fail after advancing next_used; the ring is then not trustworthy.
        match vq.queue.add_used(mem, head, len) {
            Ok(()) => vq.used_dirty = true,
            Err(_) => self.break_device(),
        }
    }

    /// DEVICE_NEEDS_RESET: held requests are dropped and the device stays quiet until reset.
    fn break_device(&mut self) {
        if self.status & S_NEEDS_RESET == 0 {
            self.status |= S_NEEDS_RESET;
            self.interrupts.config += 1;
        }
        self.detach_all();
    }

    fn detach_all(&mut self) {
        self.detach(|_| true);
    }

    /// Drops held requests without completing them; their running I/O becomes orphaned.
    fn detach(&mut self, which: impl Fn(&Record) -> bool) {
        let orphans = &mut self.orphans;
        self.records.retain(|_, r| {
            let drop = which(r);
            if let (true, Some(tag)) = (drop, r.io) {
                orphans.insert(tag);
            }
            !drop
        });
        if self.records.is_empty() {
            self.retry_due = false;
        }
    }

    fn update_acks(&mut self) {
        let no_io = self.orphans.is_empty() && self.records.values().all(|r| r.io.is_none());
        let quiet =
            no_io && (self.cfg.inflight == InflightPolicy::Track || self.records.is_empty());
        #[cfg(feature = "mutants")]
        let quiet = quiet || (no_io && crate::mutant!(DrainAckIgnoresParked));
        #[cfg(feature = "mutants")]
        let quiet = quiet
            && !(crate::mutant!(DrainAckWaitsForKicks)
                && self.cfg.inflight == InflightPolicy::Drain
                && self.queues.iter().any(|vq| vq.kicked && vq.queue.ready()));
        if quiet {
            for stop in [&mut self.driver_stop, &mut self.host_stop] {
                if *stop == StopState::Stopping {
                    *stop = StopState::Stopped;
                }
            }
        }
    }
}

/// The virtio-blk configuration space of a device with `capacity` sectors and `num_queues`
/// queues; every field the device does not offer reads 0.
pub(crate) fn config_space(capacity: u64, num_queues: u16) -> Vec<u8> {
    use virtio_bindings::virtio_blk::virtio_blk_config;
    let mut space = vec![0u8; std::mem::size_of::<virtio_blk_config>()];
    space[..8].copy_from_slice(&capacity.to_le_bytes());
    let nq = std::mem::offset_of!(virtio_blk_config, num_queues);
    space[nq..nq + 2].copy_from_slice(&num_queues.to_le_bytes());
    space
}
