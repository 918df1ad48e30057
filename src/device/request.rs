//! virtio-blk requests: from the buffers of a descriptor chain to what the device must do.
//!
//! The chain's readable bytes are one stream (the 16-byte header, then OUT data) and its
//! writable bytes another (IN or GET_ID data, then the status byte), however the driver split
//! them into descriptors, as QEMU reads them. Anything wrong with the request itself is
//! answered through the status byte; only a chain with no writable status byte cannot be.

use vm_memory::{Bytes, GuestAddress, GuestMemory, Permissions};

use super::bits::{BLK_S_IOERR, BLK_S_OK, BLK_S_UNSUPP, ID_BYTES, T_FLUSH, T_GET_ID, T_IN, T_OUT};
use crate::backend::SECTOR_SIZE;

/// Requests larger than this complete with IOERR without touching their buffers.
pub const MAX_REQUEST_BYTES: u64 = 1 << 20;
/// Requests with more data segments than this complete with IOERR.
pub const MAX_SEGMENTS: usize = 256;
const HEADER_BYTES: u64 = 16;

/// One descriptor's buffer, as the chain walk yields it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Desc {
    pub addr: u64,
    pub len: u32,
    pub write: bool,
}

/// A piece of guest memory holding request data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    /// Guest address.
    pub addr: u64,
    /// Length in bytes.
    pub len: u32,
}

/// The requests that go to the disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A read (`T_IN`).
    In,
    /// A write (`T_OUT`).
    Out,
    /// A flush (`T_FLUSH`).
    Flush,
}

impl Kind {
    /// The virtio-blk request type.
    pub fn blk_type(self) -> u32 {
        match self {
            Kind::In => T_IN,
            Kind::Out => T_OUT,
            Kind::Flush => T_FLUSH,
        }
    }

    /// The kind of request type `t`; `None` for a type that does not go to the disk.
    pub fn from_blk_type(t: u32) -> Option<Kind> {
        match t {
            T_IN => Some(Kind::In),
            T_OUT => Some(Kind::Out),
            T_FLUSH => Some(Kind::Flush),
            _ => None,
        }
    }
}

/// A request for the disk, with everything needed to run it again: after a failure, after
/// resume, or on another device after restore. It never needs the rings again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlkRequest {
    /// What the disk is asked to do.
    pub kind: Kind,
    /// The header's start sector.
    pub sector: u64,
    /// Device-writable for IN, device-readable for OUT, empty for FLUSH.
    pub data: Vec<Segment>,
    /// Guest address of the status byte.
    pub status: u64,
}

impl BlkRequest {
    /// Bytes of data, over all segments.
    pub fn data_len(&self) -> u64 {
        self.data.iter().map(|s| u64::from(s.len)).sum()
    }

    /// Whether the request fits the disk and guest memory, as parsing guarantees.
    pub fn is_valid<M: GuestMemory>(&self, mem: &M, capacity: u64) -> bool {
        let access = match self.kind {
            Kind::In => Permissions::Write,
            _ => Permissions::Read,
        };
        let len = self.data_len();
        (self.kind != Kind::Flush || self.data.is_empty())
            && self.data.len() <= MAX_SEGMENTS
            && len <= MAX_REQUEST_BYTES
            && len.is_multiple_of(SECTOR_SIZE)
            && sectors_fit(self.sector, len, capacity)
            && segments_in(mem, &self.data, access)
            && mem.check_range(GuestAddress(self.status), 1, Permissions::Write)
    }
}

/// What the device must do with a chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Parsed {
    /// Submit to the disk.
    Io(BlkRequest),
    /// Finish now: write `reply` into `reply_to`, then `status` at `status_addr`.
    Done {
        status_addr: u64,
        status: u8,
        reply: Vec<u8>,
        reply_to: Vec<Segment>,
    },
    /// There is no writable status byte: return the head with used length 0.
    NoStatus,
}

/// What parsing needs to know about the device.
pub(crate) struct Limits<'a> {
    pub capacity: u64,
    pub flush: bool,
    pub device_id: &'a [u8; ID_BYTES],
}

pub(crate) fn parse<M: GuestMemory>(descs: &[Desc], mem: &M, limits: &Limits) -> Parsed {
    let (mut readable, mut writable, mut misordered) = (Vec::new(), Vec::new(), false);
    for d in descs {
        let seg = Segment {
            addr: d.addr,
            len: d.len,
        };
        if d.write {
            writable.push(seg);
        } else {
            misordered |= !writable.is_empty();
            readable.push(seg);
        }
    }
    let Some(status_addr) =
        last_byte(&writable).filter(|&a| mem.check_range(GuestAddress(a), 1, Permissions::Write))
    else {
        return Parsed::NoStatus;
    };
    let done = |status: u8| Parsed::Done {
        status_addr,
        status,
        reply: Vec::new(),
        reply_to: Vec::new(),
    };
    if misordered {
        return done(BLK_S_IOERR);
    }
    let Some(header) = read_header(&readable, mem) else {
        return done(BLK_S_IOERR);
    };
    let blk_type = u32::from_le_bytes(header[0..4].try_into().unwrap());
    let sector = u64::from_le_bytes(header[8..16].try_into().unwrap());
    let out_data = trim(&readable, HEADER_BYTES, 0);
    let in_data = trim(&writable, 0, 1);

    let (kind, data, access) = match blk_type {
        T_IN if out_data.is_empty() => (Kind::In, in_data, Permissions::Write),
        T_OUT if in_data.is_empty() => (Kind::Out, out_data, Permissions::Read),
        T_IN | T_OUT => return done(BLK_S_IOERR),
        T_FLUSH if limits.flush => (Kind::Flush, Vec::new(), Permissions::Read),
        T_GET_ID if segments_in(mem, &in_data, Permissions::Write) => {
            let room = trim_len(&in_data).min(ID_BYTES as u64) as usize;
            return Parsed::Done {
                status_addr,
                status: BLK_S_OK,
                reply: limits.device_id[..room].to_vec(),
                reply_to: in_data,
            };
        }
        T_GET_ID => return done(BLK_S_IOERR),
        _ => return done(BLK_S_UNSUPP),
    };
    let len = trim_len(&data);
    if data.len() > MAX_SEGMENTS
        || len > MAX_REQUEST_BYTES
        || !len.is_multiple_of(SECTOR_SIZE)
        || (kind != Kind::Flush && !sectors_fit(sector, len, limits.capacity))
        || !segments_in(mem, &data, access)
    {
        return done(BLK_S_IOERR);
    }
    Parsed::Io(BlkRequest {
        kind,
        sector,
        data,
        status: status_addr,
    })
}

/// Copies `bytes` into `segs` in order; returns how many bytes landed.
pub(crate) fn scatter<M: GuestMemory>(mem: &M, segs: &[Segment], bytes: &[u8]) -> Option<usize> {
    let mut done = 0;
    for s in segs {
        if done == bytes.len() {
            break;
        }
        let n = (s.len as usize).min(bytes.len() - done);
        mem.write_slice(&bytes[done..done + n], GuestAddress(s.addr))
            .ok()?;
        done += n;
    }
    Some(done)
}

/// Reads `segs` back to back.
pub(crate) fn gather<M: GuestMemory>(mem: &M, segs: &[Segment]) -> Option<Vec<u8>> {
    let mut out = vec![0; trim_len(segs) as usize];
    let mut at = 0;
    for s in segs {
        let end = at + s.len as usize;
        mem.read_slice(&mut out[at..end], GuestAddress(s.addr))
            .ok()?;
        at = end;
    }
    Some(out)
}

fn sectors_fit(sector: u64, len: u64, capacity: u64) -> bool {
    sector
        .checked_add(len / SECTOR_SIZE)
        .is_some_and(|end| end <= capacity)
}

fn segments_in<M: GuestMemory>(mem: &M, segs: &[Segment], access: Permissions) -> bool {
    segs.iter()
        .all(|s| mem.check_range(GuestAddress(s.addr), s.len as usize, access))
}

fn trim_len(segs: &[Segment]) -> u64 {
    segs.iter().map(|s| u64::from(s.len)).sum()
}

/// Address of the last byte of the stream, if it has one.
fn last_byte(segs: &[Segment]) -> Option<u64> {
    let last = segs.iter().rev().find(|s| s.len > 0)?;
    last.addr.checked_add(u64::from(last.len) - 1)
}

/// The stream without its first `front` and last `back` bytes.
fn trim(segs: &[Segment], front: u64, back: u64) -> Vec<Segment> {
    let total = trim_len(segs);
    let (start, end) = (front, total.saturating_sub(back));
    let mut out = Vec::new();
    let mut at = 0u64;
    for s in segs {
        let (lo, hi) = (at.max(start), (at + u64::from(s.len)).min(end));
        if lo < hi {
            out.push(Segment {
                addr: s.addr.wrapping_add(lo - at),
                len: (hi - lo) as u32,
            });
        }
        at += u64::from(s.len);
    }
    out
}

fn read_header<M: GuestMemory>(readable: &[Segment], mem: &M) -> Option<[u8; 16]> {
    let head = trim(readable, 0, trim_len(readable).checked_sub(HEADER_BYTES)?);
    if !segments_in(mem, &head, Permissions::Read) {
        return None;
    }
    gather(mem, &head)?.try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryMmap;

    const ID: [u8; ID_BYTES] = *b"stopfuzz-test-disk-1";

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap()
    }

    fn limits() -> Limits<'static> {
        Limits {
            capacity: 8,
            flush: true,
            device_id: &ID,
        }
    }

    fn header(mem: &GuestMemoryMmap, at: u64, t: u32, sector: u64) -> Desc {
        let mut h = [0u8; 16];
        h[0..4].copy_from_slice(&t.to_le_bytes());
        h[8..16].copy_from_slice(&sector.to_le_bytes());
        mem.write_slice(&h, GuestAddress(at)).unwrap();
        Desc {
            addr: at,
            len: 16,
            write: false,
        }
    }

    fn w(addr: u64, len: u32) -> Desc {
        Desc {
            addr,
            len,
            write: true,
        }
    }

    fn status_of(p: &Parsed) -> Option<u8> {
        match p {
            Parsed::Done { status, .. } => Some(*status),
            _ => None,
        }
    }

    #[test]
    fn read_with_header_split_across_descriptors() {
        let m = mem();
        let h = header(&m, 0x100, T_IN, 2);
        let halves = [
            Desc { len: 10, ..h },
            Desc {
                addr: 0x10a,
                len: 6,
                write: false,
            },
        ];
        let p = parse(
            &[halves[0], halves[1], w(0x1000, 1024), w(0x2000, 1)],
            &m,
            &limits(),
        );
        assert_eq!(
            p,
            Parsed::Io(BlkRequest {
                kind: Kind::In,
                sector: 2,
                data: vec![Segment {
                    addr: 0x1000,
                    len: 1024
                }],
                status: 0x2000
            })
        );
    }

    #[test]
    fn status_byte_can_share_a_descriptor_with_data() {
        let m = mem();
        let h = header(&m, 0x100, T_IN, 0);
        let Parsed::Io(req) = parse(&[h, w(0x1000, 513)], &m, &limits()) else {
            panic!("expected a read");
        };
        assert_eq!(req.data_len(), 512);
        assert_eq!(req.status, 0x1000 + 512);
    }

    #[test]
    fn malformed_requests_get_a_status() {
        let m = mem();
        let l = limits();
        let short = Desc {
            addr: 0x100,
            len: 8,
            write: false,
        };
        assert_eq!(
            status_of(&parse(&[short, w(0x2000, 1)], &m, &l)),
            Some(BLK_S_IOERR)
        );
        let h = header(&m, 0x100, T_IN, 7);
        // Past capacity, not a sector multiple, and data in the wrong direction.
        assert_eq!(
            status_of(&parse(&[h, w(0x1000, 1024), w(0x2000, 1)], &m, &l)),
            Some(BLK_S_IOERR)
        );
        assert_eq!(
            status_of(&parse(&[h, w(0x1000, 100), w(0x2000, 1)], &m, &l)),
            Some(BLK_S_IOERR)
        );
        let ro = Desc {
            write: false,
            ..w(0x1000, 512)
        };
        assert_eq!(
            status_of(&parse(&[h, ro, w(0x2000, 1)], &m, &l)),
            Some(BLK_S_IOERR)
        );
        // A writable descriptor before a readable one.
        assert_eq!(
            status_of(&parse(&[w(0x1000, 512), h, w(0x2000, 1)], &m, &l)),
            Some(BLK_S_IOERR)
        );
        // Data outside guest memory.
        assert_eq!(
            status_of(&parse(&[h, w(0xffff_0000, 512), w(0x2000, 1)], &m, &l)),
            Some(BLK_S_IOERR)
        );
        let u = header(&m, 0x200, 0x1234, 0);
        assert_eq!(
            status_of(&parse(&[u, w(0x2000, 1)], &m, &l)),
            Some(BLK_S_UNSUPP)
        );
        let f = header(&m, 0x300, T_FLUSH, 0);
        let no_flush = Limits {
            flush: false,
            ..limits()
        };
        assert_eq!(
            status_of(&parse(&[f, w(0x2000, 1)], &m, &no_flush)),
            Some(BLK_S_UNSUPP)
        );
    }

    #[test]
    fn no_writable_status_byte() {
        let m = mem();
        let h = header(&m, 0x100, T_OUT, 0);
        let ro_status = Desc {
            write: false,
            ..w(0x2000, 1)
        };
        assert_eq!(parse(&[h, ro_status], &m, &limits()), Parsed::NoStatus);
        assert_eq!(parse(&[h, w(0x2000, 0)], &m, &limits()), Parsed::NoStatus);
        assert_eq!(
            parse(&[h, w(0xffff_0000, 1)], &m, &limits()),
            Parsed::NoStatus
        );
    }

    #[test]
    fn huge_lengths_are_refused_without_reading() {
        let m = mem();
        let h = header(&m, 0x100, T_OUT, 0);
        let huge = Desc {
            addr: 0,
            len: u32::MAX,
            write: false,
        };
        assert_eq!(
            status_of(&parse(&[h, huge, w(0x2000, 1)], &m, &limits())),
            Some(BLK_S_IOERR)
        );
    }

    #[test]
    fn get_id_fills_what_fits() {
        let m = mem();
        let h = header(&m, 0x100, T_GET_ID, 0);
        let p = parse(&[h, w(0x1000, 8), w(0x2000, 1)], &m, &limits());
        let Parsed::Done { status, reply, .. } = p else {
            panic!("expected an immediate reply");
        };
        assert_eq!((status, &reply[..]), (BLK_S_OK, &ID[..8]));
    }

    #[test]
    fn trim_splits_segments() {
        let segs = [Segment { addr: 0, len: 10 }, Segment { addr: 100, len: 10 }];
        assert_eq!(
            trim(&segs, 5, 7),
            vec![Segment { addr: 5, len: 5 }, Segment { addr: 100, len: 3 }]
        );
        assert!(trim(&segs, 20, 0).is_empty());
        assert!(trim(&segs, 15, 15).is_empty());
    }
}
