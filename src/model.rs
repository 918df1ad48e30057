//! What a correct device must do with each request, from the driver's side.
//!
//! The harness decides every disk completion, so the model knows each request's fate
//! exactly: which I/O attempts it had, how each ended, and what the error policy makes of
//! that. A conforming driver never has two requests on overlapping sectors in flight, so every
//! disk I/O belongs to exactly one request and the expected disk contents are exact.

use std::collections::BTreeMap;

use crate::backend::{Io, IoError, IoTag, SECTOR_SIZE};
use crate::contract::{ErrorPolicy, Reaction};
use crate::dut::Fault;
use crate::program::ReqType;
use crate::virtio::{BLK_S_IOERR, BLK_S_OK, BLK_S_UNSUPP};

/// A request's index in [`Model::requests`].
pub type ReqId = usize;

/// Where a request stands, as the driver sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReqState {
    /// Written to the ring, avail idx not yet moved past it.
    Staged,
    /// Avail idx has moved past it: the device may take it.
    Published,
    /// Its used entry has been read.
    Completed,
    /// Dropped by a queue or device reset: it must never complete.
    Abandoned,
}

/// How the last disk attempt for a request ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Attempt {
    /// The disk did it.
    Succeeded {
        /// What a read returned; empty for anything else.
        data: Vec<u8>,
    },
    /// The disk failed it.
    Failed(IoError),
}

/// A request the driver made, and what became of it.
#[derive(Clone, Debug)]
pub struct Request {
    /// Its queue.
    pub q: u16,
    /// The head of its descriptor chain.
    pub head: u16,
    /// The avail ring position it was written at.
    pub avail_pos: u16,
    /// What it asks for.
    pub kind: ReqType,
    /// Its first sector.
    pub sector: u64,
    /// Sectors it covers; 0 for a flush or GET_ID.
    pub sectors: u64,
    /// What a write puts on the disk.
    pub data: Vec<u8>,
    /// The device-writable buffers of its chain: (address, length).
    pub writable: Vec<(u64, u32)>,
    /// Where its data buffer is.
    pub data_addr: u64,
    /// Where its status byte is.
    pub status_addr: u64,
    /// Where it stands.
    pub state: ReqState,
    /// The disk I/O running for it now.
    pub io: Option<IoTag>,
    /// How its last disk attempt ended; `None` until one has.
    pub last: Option<Attempt>,
    /// Disk attempts started for it.
    pub attempts: u16,
    /// Its place in the order the device first started disk I/O: its fetch order, which is
    /// also its retry order.
    pub fetched: Option<u64>,
}

impl Request {
    fn sectors(&self) -> std::ops::Range<u64> {
        self.sector..self.sector + self.sectors
    }

    /// Staged or published: neither completed nor dropped.
    pub fn is_open(&self) -> bool {
        matches!(self.state, ReqState::Staged | ReqState::Published)
    }
}

/// What the guest must see when a request completes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Expected {
    /// The status byte.
    pub status: u8,
    /// The used length.
    pub len: u32,
    /// Bytes the data buffer must hold, when known.
    pub data: Option<Vec<u8>>,
}

/// Why a request may not complete now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NotYet {
    /// Its disk I/O has not finished.
    IoRunning,
    /// No disk I/O has finished for it.
    NoAttempt,
    /// Its last attempt failed under a stop-class policy: it is parked.
    Parked,
}

/// Every request of a run, and what the disk must hold.
#[derive(Clone, Debug)]
pub struct Model {
    /// Every request made, by [`ReqId`].
    pub requests: Vec<Request>,
    /// Open requests by (queue, head).
    open: BTreeMap<(u16, u16), ReqId>,
    by_io: BTreeMap<IoTag, ReqId>,
    /// What the disk must hold: the driver's data for every write that succeeded.
    pub disk: Vec<u8>,
    /// Per sector: its contents are unknown, because a write the model cannot follow may
    /// have landed there.
    pub uncertain: Vec<bool>,
    /// The device does its own disk I/O: a write dropped by a reset may still land.
    pub io_unseen: bool,
    /// The faults a device that does its own I/O injects.
    pub faults: Vec<Fault>,
    /// What a failed write or flush does.
    pub write_policy: ErrorPolicy,
    /// What a failed read does.
    pub read_policy: ErrorPolicy,
    /// FLUSH was negotiated.
    pub flush: bool,
    /// The GET_ID answer.
    pub device_id: [u8; 20],
    /// First disk attempts so far: the next request's fetch order.
    fetches: u64,
    /// Parked requests, and whether the device has polled since each parked: a poll is
    /// when it takes a failure in.
    parked: Vec<(ReqId, bool)>,
    /// The step of a retry point (heal or resume) that no poll able to run I/O has
    /// consumed yet.
    pub retry_point: Option<usize>,
    /// Leading bytes of the GET_ID answer that are checked.
    pub id_checked: usize,
    /// A failed read's used len may count its unwritten data (a known deviation).
    pub failed_read_len: bool,
}

impl Model {
    /// No requests yet, and a zeroed disk of `disk_sectors` sectors.
    pub fn new(
        disk_sectors: u64,
        write_policy: ErrorPolicy,
        read_policy: ErrorPolicy,
        flush: bool,
        device_id: [u8; 20],
    ) -> Self {
        Model {
            requests: Vec::new(),
            open: BTreeMap::new(),
            by_io: BTreeMap::new(),
            disk: vec![0; (disk_sectors * SECTOR_SIZE) as usize],
            uncertain: vec![false; disk_sectors as usize],
            io_unseen: false,
            faults: Vec::new(),
            write_policy,
            read_policy,
            flush,
            device_id,
            fetches: 0,
            parked: Vec::new(),
            retry_point: None,
            id_checked: device_id.len(),
            failed_read_len: false,
        }
    }

    /// Takes in a request the driver built; it is open until completed or dropped.
    pub fn add(&mut self, req: Request) -> ReqId {
        let id = self.requests.len();
        self.open.insert((req.q, req.head), id);
        self.requests.push(req);
        id
    }

    /// The open request with this queue and head, if any.
    pub fn open(&self, q: u16, head: u16) -> Option<ReqId> {
        self.open.get(&(q, head)).copied()
    }

    /// The open requests, by queue and head.
    pub fn open_ids(&self) -> impl Iterator<Item = ReqId> + '_ {
        self.open.values().copied()
    }

    /// Avail idx moved past everything staged on `q`.
    pub fn publish(&mut self, q: u16) {
        for &id in self.open.values() {
            let r = &mut self.requests[id];
            if r.q == q && r.state == ReqState::Staged {
                r.state = ReqState::Published;
            }
        }
    }

    /// Whether a new request on these sectors would race an unfinished one, or disk I/O
    /// still running for a dropped request.
    pub fn overlaps(&self, kind: ReqType, sector: u64, sectors: u64) -> bool {
        let range = sector..sector + sectors;
        self.requests.iter().any(|r| {
            let unfinished = r.state != ReqState::Completed;
            match kind {
                ReqType::Flush => unfinished && r.kind == ReqType::Flush,
                ReqType::GetId => false,
                _ => {
                    unfinished
                        && matches!(r.kind, ReqType::Read | ReqType::Write)
                        && r.sectors().start < range.end
                        && range.start < r.sectors().end
                }
            }
        })
    }

    /// The request a new disk I/O is for: the unfinished request of that kind on exactly
    /// those sectors (or the unfinished flush).
    pub fn owner_of(&self, io: &Io) -> Option<ReqId> {
        let (kind, sector, len) = match io {
            Io::Read { sector, len } => (ReqType::Read, *sector, u64::from(*len)),
            Io::Write { sector, data } => (ReqType::Write, *sector, data.len() as u64),
            Io::Flush => (ReqType::Flush, 0, 0),
        };
        let matches = |r: &Request| {
            r.kind == kind
                && r.state != ReqState::Completed
                && (kind == ReqType::Flush
                    || (r.sector == sector && r.sectors * SECTOR_SIZE == len))
        };
        // An open request is preferred over a dropped one on the same sectors.
        (self
            .requests
            .iter()
            .rposition(|r| matches(r) && r.is_open()))
        .or_else(|| self.requests.iter().rposition(matches))
    }

    /// Disk I/O `tag` now runs for request `id`.
    pub fn io_started(&mut self, tag: IoTag, id: ReqId) {
        self.by_io.insert(tag, id);
        let r = &mut self.requests[id];
        r.io = Some(tag);
        r.attempts = r.attempts.saturating_add(1);
        if r.fetched.is_none() {
            r.fetched = Some(self.fetches);
            self.fetches += 1;
        }
        self.parked.retain(|&(p, _)| p != id);
    }

    /// The disk finished `tag`: a write lands with the driver's data (what a correct device
    /// sent), a read returns what the disk holds.
    pub fn io_finished(&mut self, tag: IoTag, result: Result<(), IoError>) {
        if let Some(id) = self.by_io.remove(&tag) {
            self.attempt_ended(id, result);
        }
    }

    /// For a device that does its own disk I/O, seen only when the request completes: its
    /// I/O ran, and failed where an injected fault covers it.
    pub fn external_io_done(&mut self, id: ReqId) {
        let result = self.fault_in(id, &self.faults).map_or(Ok(()), Err);
        self.attempt_ended(id, result);
    }

    /// The error one of `faults` gives request `id`'s I/O, if one covers it.
    fn fault_in(&self, id: ReqId, faults: &[Fault]) -> Option<IoError> {
        let r = &self.requests[id];
        let write = match r.kind {
            ReqType::Write => true,
            ReqType::Read => false,
            _ => return None,
        };
        faults
            .iter()
            .find(|f| f.write == write && r.sectors().contains(&f.sector))
            .map(|f| f.error)
    }

    /// How many open, published requests of queue `q` one of `faults` (the device's faults
    /// since setup, heals aside) fails with an error their policy parks on: the most a
    /// device whose stop drains may still hold at a stop.
    pub fn parkable(&self, q: u16, faults: &[Fault]) -> usize {
        self.open_ids()
            .filter(|&id| self.requests[id].q == q && self.parks_on(id, faults))
            .count()
    }

    /// Whether request `id` is open and published, and one of `faults` fails it with an
    /// error its policy parks on.
    fn parks_on(&self, id: ReqId, faults: &[Fault]) -> bool {
        let r = &self.requests[id];
        r.state == ReqState::Published
            && self
                .fault_in(id, faults)
                .is_some_and(|e| self.policy_for(r.kind).reaction(e) == Reaction::Park)
    }

    /// Whether some open request's I/O fails, by an injected fault, with an error the
    /// policy parks on: what entitles a device to pause the VM on an I/O error.
    pub fn may_park(&self) -> bool {
        self.open_ids().any(|id| self.parks_on(id, &self.faults))
    }

    fn attempt_ended(&mut self, id: ReqId, result: Result<(), IoError>) {
        if let Err(e) = result
            && self.requests[id].is_open()
            && self.policy_for(self.requests[id].kind).reaction(e) == Reaction::Park
        {
            self.parked.push((id, false));
        }
        let r = &mut self.requests[id];
        r.io = None;
        let range =
            (r.sector * SECTOR_SIZE) as usize..((r.sector + r.sectors) * SECTOR_SIZE) as usize;
        r.last = Some(match result {
            Err(e) => Attempt::Failed(e),
            Ok(()) => match r.kind {
                ReqType::Write => {
                    self.disk[range].copy_from_slice(&r.data);
                    Attempt::Succeeded { data: Vec::new() }
                }
                ReqType::Read => Attempt::Succeeded {
                    data: self.disk[range].to_vec(),
                },
                _ => Attempt::Succeeded { data: Vec::new() },
            },
        });
    }

    /// The open, published request a used entry names, if any.
    pub fn published(&self, q: u16, head: u16) -> Option<ReqId> {
        self.open(q, head)
            .filter(|&id| self.requests[id].state == ReqState::Published)
    }

    /// The error policy for a request: rerror for reads, werror for writes and flushes.
    pub fn policy_for(&self, kind: ReqType) -> ErrorPolicy {
        if kind == ReqType::Read {
            self.read_policy
        } else {
            self.write_policy
        }
    }

    /// What the request's completion must look like now, or why it may not complete yet.
    pub fn expected(&self, id: ReqId) -> Result<Expected, NotYet> {
        let r = &self.requests[id];
        let ok = |len: u32, data: Option<Vec<u8>>| Expected {
            status: BLK_S_OK,
            len,
            data,
        };
        match r.kind {
            ReqType::GetId => {
                let checked = &self.device_id[..self.id_checked.min(self.device_id.len())];
                return Ok(ok(21, Some(checked.to_vec())));
            }
            ReqType::Flush if !self.flush => {
                return Ok(Expected {
                    status: BLK_S_UNSUPP,
                    len: 1,
                    data: None,
                });
            }
            _ => {}
        }
        if r.io.is_some() {
            return Err(NotYet::IoRunning);
        }
        match &r.last {
            None => Err(NotYet::NoAttempt),
            Some(Attempt::Succeeded { data }) if r.kind == ReqType::Read => {
                let known = !self.uncertain[r.sector as usize..(r.sector + r.sectors) as usize]
                    .contains(&true);
                Ok(ok(data.len() as u32 + 1, known.then(|| data.clone())))
            }
            Some(Attempt::Succeeded { .. }) => Ok(ok(1, None)),
            Some(Attempt::Failed(e)) => {
                let len = if self.failed_read_len && r.kind == ReqType::Read {
                    (r.sectors * SECTOR_SIZE) as u32 + 1
                } else {
                    1
                };
                match self.policy_for(r.kind).reaction(*e) {
                    Reaction::Report => Ok(Expected {
                        status: BLK_S_IOERR,
                        len,
                        data: None,
                    }),
                    Reaction::Ignore => Ok(ok(len, None)),
                    Reaction::Park => Err(NotYet::Parked),
                }
            }
        }
    }

    /// Whether the request waits, parked, for a retry.
    pub fn is_parked(&self, id: ReqId) -> bool {
        self.parked_by(id).is_some()
    }

    /// The error a request is parked on: its last attempt failed under a stop-class policy
    /// and no retry runs yet.
    pub fn parked_by(&self, id: ReqId) -> Option<IoError> {
        let r = &self.requests[id];
        match (&r.last, r.io) {
            (Some(Attempt::Failed(e)), None)
                if self.policy_for(r.kind).reaction(*e) == Reaction::Park =>
            {
                Some(*e)
            }
            _ => None,
        }
    }

    /// The earliest-fetched parked request the device knows of (it has polled since it
    /// parked).
    pub fn first_parked_known(&self) -> Option<ReqId> {
        self.parked
            .iter()
            .filter(|&&(_, known)| known)
            .map(|&(id, _)| id)
            .min_by_key(|&id| self.requests[id].fetched)
    }

    /// Requests parked now.
    pub fn parked_count(&self) -> usize {
        self.parked.len()
    }

    /// Parked requests fetched before `id`, still waiting for their retry.
    pub fn parked_before(&self, id: ReqId) -> Option<ReqId> {
        let at = self.requests[id].fetched;
        self.parked
            .iter()
            .map(|&(p, _)| p)
            .filter(|&p| p != id && self.requests[p].fetched < at)
            .min_by_key(|&p| self.requests[p].fetched)
    }

    /// The device polled: it has taken in every failure so far.
    pub fn polled(&mut self) {
        for p in &mut self.parked {
            p.1 = true;
        }
    }

    /// A retry point at `step`: heal, or a resume that ends a stop.
    pub fn retry_point(&mut self, step: usize) {
        self.retry_point.get_or_insert(step);
    }

    /// The driver read request `id`'s used entry: it is done.
    pub fn complete(&mut self, id: ReqId) {
        let r = &mut self.requests[id];
        r.state = ReqState::Completed;
        self.open.remove(&(r.q, r.head));
        self.parked.retain(|&(p, _)| p != id);
    }

    /// A reset dropped every open request on `q` (or on every queue). Where the model
    /// cannot see disk I/O, a dropped write may still land: its sectors become unknown.
    pub fn abandon(&mut self, q: Option<u16>) {
        let (requests, uncertain, unseen) =
            (&mut self.requests, &mut self.uncertain, self.io_unseen);
        self.open.retain(|&(rq, _), id| {
            let drop = q.is_none_or(|q| q == rq);
            if drop {
                let r = &mut requests[*id];
                if unseen && r.kind == ReqType::Write && r.state == ReqState::Published {
                    uncertain[r.sector as usize..(r.sector + r.sectors) as usize].fill(true);
                }
                r.state = ReqState::Abandoned;
            }
            !drop
        });
        // By queue, not by state: after hostile ops the requests' states may be stale.
        self.parked
            .retain(|&(p, _)| q.is_some_and(|q| requests[p].q != q));
        if q.is_none() {
            // A device reset drops every held request, and the retry owed to them.
            self.retry_point = None;
        }
    }

    /// The disk is known to hold `image` (the harness read it).
    pub fn take_disk(&mut self, image: &[u8]) {
        self.disk.copy_from_slice(image);
        self.uncertain.fill(false);
    }
}
