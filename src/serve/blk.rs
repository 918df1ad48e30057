//! The reference virtio-blk device as a `vhost-user-backend` back-end.
//!
//! `vhost-user-backend` owns the vhost-user protocol and the rings; this module owns what a
//! request does. It pops chains, hands them to the reference device's request code
//! (`device::exec` and [`crate::device::request`]), submits the resulting I/O to the
//! [`ImageDisk`], and completes requests as the disk finishes them.
//!
//! Threads. Kicks arrive on the crate's vring worker thread ([`ServedBlk::handle_event`]),
//! GET_VRING_BASE on its protocol thread ([`ServedBlk::stop_vring`]), and `release` on a
//! control thread. Each takes the one `State` lock for its whole step, so a request is
//! popped, run and completed by one step at a time, and ring writes never interleave.
//!
//! Contract. Drain: GET_VRING_BASE runs the ring's held I/O, completes its requests and
//! notifies before the crate replies, so at the reply `used idx == base`. Error policy:
//! Report for reads, writes and flushes, so EIO and ENOSPC both complete with IOERR and
//! nothing is parked.

use std::collections::BTreeMap;
use std::io;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};

use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost_user_backend::{VhostUserBackend, VringRwLock, VringT};
use virtio_queue::{QueueOwnedT, QueueT};
use vm_memory::{GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{EventConsumer, EventFlag, EventNotifier};

use super::disk::ImageDisk;
use crate::backend::{Backend, IoTag};
use crate::contract::{Contract, InflightPolicy};
use crate::device::bits::{
    BLK_S_IOERR, F_EVENT_IDX, F_FLUSH, F_INDIRECT_DESC, F_MQ, F_VERSION_1, ID_BYTES,
};
use crate::device::exec::{self, Verdict};
use crate::device::notify::should_notify;
use crate::device::request::{self, BlkRequest, Desc, Kind, Limits, Parsed};
use crate::device::{DeviceConfig, ErrorPolicy, MAX_QUEUE_SIZE, MAX_QUEUES, config_space};

/// Guest memory as the front-end shares it.
type Memory = GuestMemoryAtomic<GuestMemoryMmap>;

/// The contract the served device keeps, for a front-end's model: Drain at GET_VRING_BASE,
/// and IOERR for every failed read, write or flush (EIO and ENOSPC alike).
pub const CONTRACT: Contract = Contract {
    inflight: InflightPolicy::Drain,
    read_policy: ErrorPolicy::Report,
    write_policy: ErrorPolicy::Report,
};

/// A popped request whose disk I/O has not finished.
struct Record {
    queue: usize,
    head: u16,
    req: BlkRequest,
}

/// Everything the device's steps share; behind one lock.
struct State {
    mem: Option<Memory>,
    acked: u64,
    disk: ImageDisk,
    /// In-flight requests by the tag of their disk I/O.
    records: BTreeMap<IoTag, Record>,
    /// The crate's vrings, kept from the first event so that stops and `release` can
    /// complete requests from other threads.
    vrings: Vec<VringRwLock>,
    /// Per queue: `next_used` at the last notification decision (`None`: notify next time).
    signalled: Vec<Option<u16>>,
    /// Per queue: used entries added since the last notification decision.
    dirty: Vec<bool>,
    /// Used entries written since start.
    completed: u64,
    /// The front-end broke a ring: nothing more is done, and the connection is closed.
    refused: bool,
    shutdown: Option<vhost_user_backend::ShutdownHandle>,
}

/// The served device; cloned into every thread `vhost-user-backend` starts.
#[derive(Clone)]
pub struct ServedBlk {
    num_queues: u16,
    capacity: u64,
    device_id: [u8; ID_BYTES],
    state: Arc<Mutex<State>>,
    exit: Arc<(EventConsumer, EventNotifier)>,
}

impl ServedBlk {
    /// A device with `num_queues` queues (1 to [`MAX_QUEUES`]) on `disk`.
    pub fn new(disk: ImageDisk, num_queues: u16) -> io::Result<Self> {
        if !(1..=MAX_QUEUES).contains(&num_queues) {
            return Err(io::Error::other(format!(
                "--queues {num_queues} is not between 1 and {MAX_QUEUES}"
            )));
        }
        let exit = vmm_sys_util::event::new_event_consumer_and_notifier(EventFlag::NONBLOCK)?;
        let n = usize::from(num_queues);
        Ok(ServedBlk {
            num_queues,
            capacity: disk.sectors(),
            device_id: DeviceConfig::default().device_id,
            state: Arc::new(Mutex::new(State {
                mem: None,
                acked: 0,
                disk,
                records: BTreeMap::new(),
                vrings: Vec::new(),
                signalled: vec![None; n],
                dirty: vec![false; n],
                completed: 0,
                refused: false,
                shutdown: None,
            })),
            exit: Arc::new(exit),
        })
    }

    /// The device state. A thread that panicked while holding the lock cannot have left a
    /// half-written ring behind that matters more than serving on, so poisoning is ignored.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Lets a refusal close the connection. A refusal before this closes it here.
    pub fn set_shutdown(&self, handle: vhost_user_backend::ShutdownHandle) {
        let mut st = self.lock();
        if st.refused {
            handle.shutdown();
        }
        st.shutdown = Some(handle);
    }

    /// Runs `f` on the disk, then completes whatever it finished.
    pub fn with_disk<T>(&self, f: impl FnOnce(&mut ImageDisk) -> T) -> T {
        let mut st = self.lock();
        let out = f(&mut st.disk);
        st.pump();
        out
    }

    /// Used entries written since start.
    pub fn completed(&self) -> u64 {
        self.lock().completed
    }

    /// After the front-end has gone: held I/O is forgotten without reaching the image.
    pub fn disconnected(&self) {
        let mut st = self.lock();
        st.records.clear();
        st.disk.drop_held();
    }

    /// Ends the crate's vring worker thread.
    pub fn exit_notifier(&self) -> &EventNotifier {
        &self.exit.1
    }
}

impl VhostUserBackend for ServedBlk {
    type Bitmap = ();
    type Vring = VringRwLock;

    fn num_queues(&self) -> usize {
        usize::from(self.num_queues)
    }

    fn max_queue_size(&self) -> usize {
        usize::from(MAX_QUEUE_SIZE)
    }

    fn features(&self) -> u64 {
        let mq = if self.num_queues > 1 { F_MQ } else { 0 };
        F_VERSION_1
            | F_FLUSH
            | F_EVENT_IDX
            | F_INDIRECT_DESC
            | mq
            | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
    }

    fn acked_features(&self, features: u64) {
        self.lock().acked = features;
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::REPLY_ACK
            | VhostUserProtocolFeatures::CONFIG
    }

    // The crate sets EVENT_IDX on each queue itself; notify.rs reads it from there.
    fn set_event_idx(&self, _enabled: bool) {}

    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        let space = config_space(self.capacity, self.num_queues);
        // The vhost-user config space is at most 256 bytes.
        if size > 256 {
            return Vec::new();
        }
        (0..size as usize)
            .map(|i| {
                (offset as usize)
                    .checked_add(i)
                    .and_then(|at| space.get(at).copied())
                    .unwrap_or(0)
            })
            .collect()
    }

    fn update_memory(&self, mem: Memory) -> io::Result<()> {
        self.lock().mem = Some(mem);
        Ok(())
    }

    fn reset_device(&self) {
        // Requests in flight are dropped without completion, as at a device reset.
        let mut st = self.lock();
        st.records.clear();
        st.disk.drop_held();
        st.signalled.iter_mut().for_each(|s| *s = None);
    }

    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        Some((self.exit.0.try_clone().ok()?, self.exit.1.try_clone().ok()?))
    }

    /// GET_VRING_BASE. The crate has already marked the ring not ready, so no step pops
    /// from it again; this drains it: its held I/O runs now and its requests complete, with
    /// a notification, before the crate reads `next_avail` and replies.
    fn stop_vring(&self, index: u32) -> io::Result<()> {
        let mut st = self.lock();
        let q = index as usize;
        let tags: Vec<IoTag> = st
            .records
            .iter()
            .filter(|(_, r)| r.queue == q)
            .map(|(tag, _)| *tag)
            .collect();
        for tag in tags {
            st.disk.run_held(tag);
        }
        st.pump();
        if let Some(s) = st.signalled.get_mut(q) {
            // The first used update after the ring restarts notifies.
            *s = None;
        }
        Ok(())
    }

    fn handle_event(
        &self,
        device_event: u16,
        _evset: EventSet,
        vrings: &[VringRwLock],
        _thread_id: usize,
    ) -> io::Result<()> {
        let mut st = self.lock();
        if st.vrings.is_empty() {
            st.vrings = vrings.to_vec();
        }
        let q = usize::from(device_event);
        if q < st.vrings.len() && !st.refused {
            st.process_queue(q, &self.device_id, self.capacity);
            st.pump();
        }
        // An error here would end the crate's worker thread; refusals are handled above.
        Ok(())
    }
}

impl State {
    /// Pops every chain the front-end made available on queue `q` and starts it, the way
    /// the reference device's `process_queue` does, with the same checks on the ring.
    fn process_queue(&mut self, q: usize, device_id: &[u8; ID_BYTES], capacity: u64) {
        let Some(mem) = self.mem.as_ref().map(|m| m.memory()) else {
            return;
        };
        let vring = self.vrings[q].clone();
        loop {
            let chains = {
                let mut vs = vring.get_mut();
                // A kick event already taken from epoll can arrive after a stop or a disable.
                if !vs.is_enabled() || !vs.get_queue().ready() {
                    return;
                }
                let queue = vs.get_queue_mut();
                if !queue.is_valid(&*mem) {
                    return self.refuse("a ring lies outside the memory table");
                }
                let Ok(avail) = queue.avail_idx(&*mem, Ordering::Acquire) else {
                    return self.refuse("the avail index cannot be read");
                };
                let window = avail.0.wrapping_sub(queue.next_avail());
                let inuse = queue.next_avail().wrapping_sub(queue.next_used());
                if u32::from(window) + u32::from(inuse) > u32::from(queue.size()) {
                    return self.refuse("the avail index moved more than a ring ahead");
                }
                if window == 0 {
                    Vec::new()
                } else {
                    let start = queue.next_avail();
                    let chains = match queue
                        .disable_notification(&*mem)
                        .and_then(|_| queue.iter(&*mem))
                    {
                        Ok(iter) => iter
                            .map(|c| (c.head_index(), exec::walk(c)))
                            .collect::<Vec<_>>(),
                        Err(_) => return self.refuse("the avail ring cannot be read"),
                    };
                    // The iterator reads avail idx again: the driver may have published
                    // more since, which is fine. Short of `avail`, an entry stopped it.
                    let popped = queue.next_avail().wrapping_sub(start);
                    if popped < window {
                        return self
                            .refuse("an avail ring entry names no descriptor or cannot be read");
                    }
                    chains
                }
            };
            for (head, descs) in chains {
                self.start(q, head, descs, &mem, device_id, capacity);
                if self.refused {
                    return;
                }
            }
            match vring.get_mut().get_queue_mut().enable_notification(&*mem) {
                Ok(true) => continue,
                Ok(false) => return,
                Err(_) => return self.refuse("avail_event cannot be written"),
            }
        }
    }

    /// Starts one popped chain: parse it with the reference device's code, then submit its
    /// I/O or complete it at once.
    fn start(
        &mut self,
        q: usize,
        head: u16,
        descs: Option<Vec<Desc>>,
        mem: &GuestMemoryMmap,
        device_id: &[u8; ID_BYTES],
        capacity: u64,
    ) {
        let Some(descs) = descs else {
            return self.refuse("a descriptor chain is broken");
        };
        if self
            .records
            .values()
            .any(|r| r.queue == q && r.head == head)
        {
            return self.refuse("a head the device still holds was made available again");
        }
        let limits = Limits {
            capacity,
            flush: self.acked & F_FLUSH != 0,
            device_id,
        };
        match request::parse(&descs, mem, &limits) {
            Parsed::Io(req) => match exec::io_for(&req, mem) {
                Some(io) => {
                    let tag = self.disk.submit(io);
                    self.records.insert(
                        tag,
                        Record {
                            queue: q,
                            head,
                            req,
                        },
                    );
                }
                None => self.finish(q, head, req.status, BLK_S_IOERR, 1, mem),
            },
            Parsed::Done {
                status_addr,
                status,
                reply,
                reply_to,
            } => match request::scatter(mem, &reply_to, &reply) {
                Some(n) => self.finish(q, head, status_addr, status, n as u32 + 1, mem),
                None => self.refuse("a reply buffer cannot be written"),
            },
            Parsed::NoStatus => self.add_used(q, head, 0, mem),
        }
    }

    /// Completes the requests whose I/O the disk finished, then notifies.
    fn pump(&mut self) {
        let Some(mem) = self.mem.as_ref().map(|m| m.memory()) else {
            return;
        };
        while let Some(c) = self.disk.next_completion() {
            let Some(record) = self.records.remove(&c.tag) else {
                continue;
            };
            let policy = match record.req.kind {
                Kind::In => CONTRACT.read_policy,
                Kind::Out | Kind::Flush => CONTRACT.write_policy,
            };
            let (status, len) = match exec::verdict(&record.req, &c.result, policy, &*mem) {
                Verdict::Complete { status, len } => (status, len),
                // Report never parks. A back-end whose policy parks would keep the record
                // here and submit it again on a retry.
                Verdict::Park => (BLK_S_IOERR, 1),
            };
            let at = record.req.status;
            self.finish(record.queue, record.head, at, status, len, &mem);
        }
        self.notify(&mem);
    }

    fn finish(
        &mut self,
        q: usize,
        head: u16,
        at: u64,
        status: u8,
        len: u32,
        mem: &GuestMemoryMmap,
    ) {
        if !exec::write_status(mem, at, status) {
            return self.refuse("a status byte cannot be written");
        }
        self.add_used(q, head, len, mem);
    }

    fn add_used(&mut self, q: usize, head: u16, len: u32, mem: &GuestMemoryMmap) {
        if self.refused {
            return;
        }
        let added = self.vrings[q]
            .get_mut()
            .get_queue_mut()
            .add_used(mem, head, len);
        match added {
            Ok(()) => {
                self.dirty[q] = true;
                self.completed += 1;
            }
            // add_used can fail after advancing next_used; the ring is then not trustworthy.
            Err(_) => self.refuse("the used ring cannot be written"),
        }
    }

    /// Interrupts the driver for each queue whose used index moved, as virtio's rules say.
    fn notify(&mut self, mem: &GuestMemoryMmap) {
        for q in 0..self.dirty.len() {
            if !std::mem::take(&mut self.dirty[q]) || self.refused {
                continue;
            }
            let vs = self.vrings[q].get_ref();
            if should_notify(vs.get_queue(), &mut self.signalled[q], mem) {
                // A front-end that withdrew the call fd gets no interrupt; not an error.
                let _ = vs.signal_used_queue();
            }
        }
    }

    /// The front-end broke the protocol or a ring: stop touching guest memory, drop what is
    /// in flight, say why on stderr and close the connection.
    fn refuse(&mut self, why: &str) {
        if !self.refused {
            eprintln!("stopfuzz serve: refusing the front-end: {why}; disconnecting");
        }
        self.refused = true;
        self.records.clear();
        self.disk.drop_held();
        if let Some(handle) = &self.shutdown {
            handle.shutdown();
        }
    }
}
