//! Running a virtio-blk request: from a descriptor chain to disk I/O, and from the disk's
//! answer to the status byte and used length the driver sees.
//!
//! This is the part of the reference device that does not depend on who owns the rings. The
//! in-process [`BlkDevice`](super::BlkDevice) and the vhost-user back-end in
//! [`crate::serve`] both call it, so a request means the same thing on either path.

use vm_memory::{Bytes, GuestAddress, GuestMemory};

use super::ErrorPolicy;
use super::bits::{BLK_S_IOERR, BLK_S_OK};
use super::request::{BlkRequest, Desc, Kind, gather, scatter};
use crate::backend::{Io, IoError};

/// What a failed I/O does under a policy.
pub(crate) enum Action {
    Report,
    Ignore,
    Park,
}

impl ErrorPolicy {
    pub(crate) fn on(self, error: IoError) -> Action {
        match (self, error) {
            (ErrorPolicy::Report, _) | (ErrorPolicy::Enospc, IoError::Io) => Action::Report,
            (ErrorPolicy::Ignore, _) => Action::Ignore,
            (ErrorPolicy::Stop, _) | (ErrorPolicy::Enospc, IoError::NoSpace) => Action::Park,
        }
    }
}

/// What a finished disk I/O means for the request that ran it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Write `status` at the request's status byte, then return the head with used `len`.
    Complete { status: u8, len: u32 },
    /// Keep the request without completing it, to run it again on a retry.
    Park,
}

/// The chain's descriptors, or `None` if virtio-queue ended it early: no descriptor at all,
/// or a last descriptor that still points on (head out of range, bad next, loop, nested
/// indirect, unreadable table). virtio-queue ends such chains silently, so the caller must
/// treat `None` as a broken ring.
pub(crate) fn walk<M>(chain: virtio_queue::DescriptorChain<M>) -> Option<Vec<Desc>>
where
    M: std::ops::Deref,
    M::Target: GuestMemory,
{
    let mut descs = Vec::new();
    let mut truncated = true;
    for d in chain {
        truncated = d.has_next();
        descs.push(Desc {
            addr: d.addr().0,
            len: d.len(),
            write: d.is_write_only(),
        });
    }
    (!truncated).then_some(descs)
}

/// The disk I/O that runs `req`, or `None` when its OUT data cannot be read from guest
/// memory (then it completes with IOERR and used length 1, without touching the disk).
pub(crate) fn io_for<M: GuestMemory>(req: &BlkRequest, mem: &M) -> Option<Io> {
    Some(match req.kind {
        Kind::In => Io::Read {
            sector: req.sector,
            len: req.data_len() as u32,
        },
        Kind::Out => Io::Write {
            sector: req.sector,
            data: gather(mem, &req.data)?,
        },
        Kind::Flush => Io::Flush,
    })
}

/// What the disk's answer `result` means for `req`. A read's data is copied into its
/// buffers here; `policy` is the one for the request's direction.
pub(crate) fn verdict<M: GuestMemory>(
    req: &BlkRequest,
    result: &Result<Vec<u8>, IoError>,
    policy: ErrorPolicy,
    mem: &M,
) -> Verdict {
    let done = |status, len| Verdict::Complete { status, len };
    match result {
        Ok(data) if req.kind == Kind::In => match scatter(mem, &req.data, data) {
            Some(n) => done(BLK_S_OK, n as u32 + 1),
            None => done(BLK_S_IOERR, 1),
        },
        Ok(_) => done(BLK_S_OK, 1),
        Err(error) => match policy.on(*error) {
            Action::Report => done(BLK_S_IOERR, 1),
            Action::Ignore => done(BLK_S_OK, 1),
            Action::Park => Verdict::Park,
        },
    }
}

/// Writes the status byte of a finished request. `false` if it cannot be written: the ring
/// is then not trustworthy, and the caller breaks the device.
pub(crate) fn write_status<M: GuestMemory>(mem: &M, at: u64, status: u8) -> bool {
    mem.write_obj(status, GuestAddress(at)).is_ok()
}
