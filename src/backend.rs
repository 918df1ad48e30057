//! The disk behind the device: an in-memory image with asynchronous completions.
//!
//! A submitted I/O stays outstanding until the caller completes or fails it, in any order.
//! This is how the harness reorders completions and injects ENOSPC and EIO: faults are
//! decided outside the device, so the device sees exactly what a real block layer could give it.

use std::collections::{BTreeMap, VecDeque};

/// Bytes per sector, fixed by virtio-blk.
pub const SECTOR_SIZE: u64 = 512;

/// Names one submitted I/O. Tags are never reused by a backend.
pub type IoTag = u64;

/// One I/O as the device submits it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Io {
    /// Reads `len` bytes from `sector` on.
    Read {
        /// The first sector read.
        sector: u64,
        /// Bytes to read.
        len: u32,
    },
    /// Writes `data` from `sector` on.
    Write {
        /// The first sector written.
        sector: u64,
        /// The bytes to write.
        data: Vec<u8>,
    },
    /// Makes earlier writes durable (nothing to do on a [`MemDisk`]).
    Flush,
}

/// How an I/O can fail.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoError {
    /// ENOSPC: the disk is full.
    NoSpace,
    /// EIO: any other failure.
    Io,
}

/// A finished I/O. `Ok` carries the data of a read and is empty otherwise.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Completion {
    /// The I/O that finished.
    pub tag: IoTag,
    /// How it ended.
    pub result: Result<Vec<u8>, IoError>,
}

/// What the device needs from a disk.
pub trait Backend {
    /// Starts an I/O; it finishes later, through `next_completion`.
    fn submit(&mut self, io: Io) -> IoTag;
    /// Returns one finished I/O, oldest first.
    fn next_completion(&mut self) -> Option<Completion>;
}

/// An in-memory disk whose I/O finishes only when the caller says so.
#[derive(Clone, Debug)]
pub struct MemDisk {
    image: Vec<u8>,
    outstanding: BTreeMap<IoTag, Io>,
    finished: VecDeque<Completion>,
    next_tag: IoTag,
    full: bool,
}

impl MemDisk {
    /// A zeroed disk of `sectors` sectors.
    pub fn new(sectors: u64) -> Self {
        let len = usize::try_from(sectors * SECTOR_SIZE).expect("disk size fits in memory");
        MemDisk {
            image: vec![0; len],
            outstanding: BTreeMap::new(),
            finished: VecDeque::new(),
            next_tag: 0,
            full: false,
        }
    }

    /// Disk size in sectors.
    pub fn sectors(&self) -> u64 {
        self.image.len() as u64 / SECTOR_SIZE
    }

    /// The disk contents, with every completed write applied.
    pub fn image(&self) -> &[u8] {
        &self.image
    }

    /// How many I/Os were ever submitted: the next tag.
    pub fn submitted(&self) -> IoTag {
        self.next_tag
    }

    /// Outstanding I/O in submission order.
    pub fn outstanding(&self) -> impl Iterator<Item = (IoTag, &Io)> {
        self.outstanding.iter().map(|(tag, io)| (*tag, io))
    }

    /// Finishes `tag` as the disk would: writes fail with ENOSPC while the disk is full.
    /// Returns how it ended, or `None` if `tag` is not outstanding.
    pub fn complete(&mut self, tag: IoTag) -> Option<Result<(), IoError>> {
        let io = self.outstanding.remove(&tag)?;
        let result = match io {
            Io::Read { sector, len } => self
                .range(sector, len as usize)
                .map(|r| self.image[r].to_vec()),
            Io::Write { .. } if self.full => Err(IoError::NoSpace),
            Io::Write { sector, data } => self.range(sector, data.len()).map(|r| {
                self.image[r].copy_from_slice(&data);
                Vec::new()
            }),
            Io::Flush => Ok(Vec::new()),
        };
        let ended = result.as_ref().map(|_| ()).map_err(|e| *e);
        self.finished.push_back(Completion { tag, result });
        Some(ended)
    }

    /// Fails `tag` with `error`, leaving the image untouched.
    /// Returns false if `tag` is not outstanding.
    pub fn fail(&mut self, tag: IoTag, error: IoError) -> bool {
        if self.outstanding.remove(&tag).is_none() {
            return false;
        }
        self.finished.push_back(Completion {
            tag,
            result: Err(error),
        });
        true
    }

    /// Makes every write fail with ENOSPC until `heal`.
    pub fn fill(&mut self) {
        self.full = true;
    }

    /// Ends [`fill`](Self::fill): writes no longer fail with ENOSPC.
    pub fn heal(&mut self) {
        self.full = false;
    }

    /// Whether writes fail with ENOSPC (between `fill` and `heal`).
    pub fn is_full(&self) -> bool {
        self.full
    }

    fn range(&self, sector: u64, len: usize) -> Result<std::ops::Range<usize>, IoError> {
        let start = sector
            .checked_mul(SECTOR_SIZE)
            .and_then(|s| usize::try_from(s).ok())
            .ok_or(IoError::Io)?;
        let end = start.checked_add(len).ok_or(IoError::Io)?;
        if end > self.image.len() {
            return Err(IoError::Io);
        }
        Ok(start..end)
    }
}

impl Backend for MemDisk {
    fn submit(&mut self, io: Io) -> IoTag {
        let tag = self.next_tag;
        self.next_tag += 1;
        self.outstanding.insert(tag, io);
        tag
    }

    fn next_completion(&mut self) -> Option<Completion> {
        self.finished.pop_front()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completes_in_any_order() {
        let mut disk = MemDisk::new(4);
        let w = disk.submit(Io::Write {
            sector: 1,
            data: vec![7; 512],
        });
        let r = disk.submit(Io::Read {
            sector: 1,
            len: 512,
        });
        // The read finishes first, so it sees the old contents.
        assert_eq!(disk.complete(r), Some(Ok(())));
        assert_eq!(disk.complete(w), Some(Ok(())));
        assert_eq!(disk.next_completion().unwrap().result, Ok(vec![0; 512]));
        assert_eq!(disk.next_completion().unwrap().result, Ok(vec![]));
        assert_eq!(&disk.image()[512..1024], &[7; 512][..]);
        assert_eq!(disk.complete(w), None, "a tag finishes once");
    }

    #[test]
    fn full_disk_fails_writes_until_healed() {
        let mut disk = MemDisk::new(1);
        disk.fill();
        let w = disk.submit(Io::Write {
            sector: 0,
            data: vec![1; 512],
        });
        let f = disk.submit(Io::Flush);
        disk.complete(w);
        disk.complete(f);
        assert_eq!(
            disk.next_completion().unwrap().result,
            Err(IoError::NoSpace)
        );
        assert_eq!(disk.next_completion().unwrap().result, Ok(vec![]));
        disk.heal();
        let w = disk.submit(Io::Write {
            sector: 0,
            data: vec![1; 512],
        });
        disk.complete(w);
        assert_eq!(disk.next_completion().unwrap().result, Ok(vec![]));
        assert_eq!(disk.image(), &[1; 512][..]);
    }

    #[test]
    fn out_of_range_is_an_error_not_a_panic() {
        let mut disk = MemDisk::new(1);
        let r = disk.submit(Io::Read {
            sector: u64::MAX,
            len: 512,
        });
        let e = disk.submit(Io::Read { sector: 0, len: 1 });
        disk.fail(e, IoError::Io);
        disk.complete(r);
        assert_eq!(disk.next_completion().unwrap().result, Err(IoError::Io));
        assert_eq!(disk.next_completion().unwrap().result, Err(IoError::Io));
    }
}
