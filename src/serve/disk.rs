//! The served device's disk: an image file whose I/O completes when the front-end says.
//!
//! It implements the same [`Backend`] trait as the harness's in-memory disk, so the request
//! code is shared. By default an I/O runs as soon as it is submitted. After `hold` it stays
//! outstanding (in flight, nothing written) until `release` or a ring stop drains it. Fail
//! rules decide, when an I/O runs, whether it fails with EIO or ENOSPC instead; a failed I/O
//! leaves the image untouched.

use std::collections::{BTreeMap, VecDeque};
use std::fs::File;
use std::os::unix::fs::FileExt;

use crate::backend::{Backend, Completion, Io, IoError, IoTag, SECTOR_SIZE};

/// Fails I/O that touches sectors `first..first + count` when it runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FailRule {
    /// The first sector of the range.
    pub first: u64,
    /// Sectors in the range; at least 1.
    pub count: u64,
    /// The error the I/O ends with.
    pub error: IoError,
    /// The rule goes away after the first I/O it fails.
    pub once: bool,
    /// Which I/O it fails.
    pub applies: Applies,
}

/// The I/O a [`FailRule`] fails.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Applies {
    /// Reads and writes.
    Both,
    /// Reads only.
    Reads,
    /// Writes only.
    Writes,
}

impl From<crate::dut::Fault> for FailRule {
    /// A `{faults}` file's fault: persistent, on one sector, reads or writes.
    fn from(f: crate::dut::Fault) -> FailRule {
        FailRule {
            first: f.sector,
            count: 1,
            error: f.error,
            once: false,
            applies: if f.write {
                Applies::Writes
            } else {
                Applies::Reads
            },
        }
    }
}

impl FailRule {
    /// Whether the rule covers a read or write of `bytes` bytes from `sector` on. Flushes
    /// never match: they touch no sector.
    fn covers(&self, io: &Io) -> bool {
        let (sector, bytes) = match (io, self.applies) {
            (Io::Read { sector, len }, Applies::Both | Applies::Reads) => {
                (*sector, u64::from(*len))
            }
            (Io::Write { sector, data }, Applies::Both | Applies::Writes) => {
                (*sector, data.len() as u64)
            }
            _ => return false,
        };
        let end = sector.saturating_add(bytes.div_ceil(SECTOR_SIZE).max(1));
        let rule_end = self.first.saturating_add(self.count);
        sector < rule_end && self.first < end
    }
}

/// An image file with steerable completions and injected faults.
pub struct ImageDisk {
    file: File,
    sectors: u64,
    hold: bool,
    held: BTreeMap<IoTag, Io>,
    finished: VecDeque<Completion>,
    next_tag: IoTag,
    rules: Vec<FailRule>,
}

impl ImageDisk {
    /// A disk on `file`, which must be open for reading and writing, of `sectors` sectors.
    pub fn new(file: File, sectors: u64) -> Self {
        ImageDisk {
            file,
            sectors,
            hold: false,
            held: BTreeMap::new(),
            finished: VecDeque::new(),
            next_tag: 0,
            rules: Vec::new(),
        }
    }

    /// Disk size in sectors.
    pub fn sectors(&self) -> u64 {
        self.sectors
    }

    /// From now on, submitted I/O stays in flight until released or drained.
    pub fn hold(&mut self) {
        self.hold = true;
    }

    /// Whether new I/O is held.
    pub fn holding(&self) -> bool {
        self.hold
    }

    /// I/O in flight, oldest first.
    pub fn held(&self) -> impl Iterator<Item = IoTag> + '_ {
        self.held.keys().copied()
    }

    /// Runs the `n` oldest held I/Os (all of them, and ends holding, when `n` is `None`).
    /// Returns how many ran.
    pub fn release(&mut self, n: Option<usize>) -> usize {
        if n.is_none() {
            self.hold = false;
        }
        let tags: Vec<IoTag> = self.held().take(n.unwrap_or(usize::MAX)).collect();
        tags.iter().filter(|&&tag| self.run_held(tag)).count()
    }

    /// Runs the held I/O at position `k` (0 is the oldest) out of order. Returns false if
    /// fewer than `k + 1` are held.
    pub fn release_nth(&mut self, k: usize) -> bool {
        let tag = self.held().nth(k);
        tag.is_some_and(|tag| self.run_held(tag))
    }

    /// Runs the held I/O `tag` now, if it is held.
    pub fn run_held(&mut self, tag: IoTag) -> bool {
        let Some(io) = self.held.remove(&tag) else {
            return false;
        };
        self.run(tag, io);
        true
    }

    /// Forgets every held I/O without running it: nothing of it reaches the image.
    pub fn drop_held(&mut self) {
        self.held.clear();
    }

    /// Adds a fail rule; a later rule does not replace an earlier one.
    pub fn add_rule(&mut self, rule: FailRule) {
        self.rules.push(rule);
    }

    /// Fail rules in force.
    pub fn rules(&self) -> usize {
        self.rules.len()
    }

    /// Removes every fail rule.
    pub fn clear_rules(&mut self) {
        self.rules.clear();
    }

    fn run(&mut self, tag: IoTag, io: Io) {
        let result = match self.rules.iter().position(|r| r.covers(&io)) {
            Some(i) => {
                let rule = self.rules[i];
                if rule.once {
                    self.rules.remove(i);
                }
                Err(rule.error)
            }
            None => self.execute(io),
        };
        self.finished.push_back(Completion { tag, result });
    }

    fn execute(&mut self, io: Io) -> Result<Vec<u8>, IoError> {
        match io {
            Io::Read { sector, len } => {
                let offset = self.offset(sector, u64::from(len))?;
                let mut data = vec![0; len as usize];
                self.file
                    .read_exact_at(&mut data, offset)
                    .map_err(|_| IoError::Io)?;
                Ok(data)
            }
            Io::Write { sector, data } => {
                let offset = self.offset(sector, data.len() as u64)?;
                self.file
                    .write_all_at(&data, offset)
                    .map_err(|_| IoError::Io)?;
                Ok(Vec::new())
            }
            Io::Flush => self
                .file
                .sync_data()
                .map(|_| Vec::new())
                .map_err(|_| IoError::Io),
        }
    }

    /// The byte offset of `sector`, if `bytes` from there fit the disk.
    fn offset(&self, sector: u64, bytes: u64) -> Result<u64, IoError> {
        let start = sector.checked_mul(SECTOR_SIZE).ok_or(IoError::Io)?;
        let end = start.checked_add(bytes).ok_or(IoError::Io)?;
        if end > self.sectors * SECTOR_SIZE {
            return Err(IoError::Io);
        }
        Ok(start)
    }
}

impl Backend for ImageDisk {
    fn submit(&mut self, io: Io) -> IoTag {
        let tag = self.next_tag;
        self.next_tag += 1;
        if self.hold {
            self.held.insert(tag, io);
        } else {
            self.run(tag, io);
        }
        tag
    }

    fn next_completion(&mut self) -> Option<Completion> {
        self.finished.pop_front()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn disk(sectors: u64) -> ImageDisk {
        let file = tempfile();
        file.set_len(sectors * SECTOR_SIZE).unwrap();
        ImageDisk::new(file, sectors)
    }

    /// An unnamed temporary file, gone when dropped.
    fn tempfile() -> File {
        let dir = std::env::temp_dir();
        let path = dir.join(format!(
            "stopfuzz-disk-test-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        std::fs::remove_file(&path).unwrap();
        file
    }

    fn write(sector: u64, byte: u8) -> Io {
        Io::Write {
            sector,
            data: vec![byte; 512],
        }
    }

    #[test]
    fn held_io_runs_only_when_released() {
        let mut d = disk(4);
        d.hold();
        let w = d.submit(write(1, 7));
        let r = d.submit(Io::Read {
            sector: 1,
            len: 512,
        });
        assert_eq!(d.next_completion(), None);
        let w2 = d.submit(write(2, 8));
        assert!(d.release_nth(1), "the second oldest, out of order");
        assert!(!d.release_nth(2));
        assert_eq!(d.next_completion().unwrap().tag, r);
        assert_eq!(d.release(Some(1)), 1);
        assert_eq!(d.next_completion().unwrap().tag, w);
        assert!(d.holding(), "a counted release keeps holding");
        assert_eq!(d.release(None), 1);
        assert_eq!(d.next_completion().unwrap().tag, w2);
        assert!(!d.holding());
    }

    #[test]
    fn fail_rules_match_overlapping_sectors_and_once_rules_expire() {
        let mut d = disk(8);
        d.add_rule(FailRule {
            first: 2,
            count: 2,
            error: IoError::NoSpace,
            once: true,
            applies: Applies::Both,
        });
        d.add_rule(FailRule {
            first: 6,
            count: 1,
            error: IoError::Io,
            once: false,
            applies: Applies::Both,
        });
        let results: Vec<_> = [
            write(1, 1),
            write(3, 1),
            write(3, 1),
            write(6, 1),
            write(6, 1),
        ]
        .into_iter()
        .map(|io| {
            d.submit(io);
            d.next_completion().unwrap().result
        })
        .collect();
        assert_eq!(
            results,
            [
                Ok(vec![]),
                Err(IoError::NoSpace),
                Ok(vec![]),
                Err(IoError::Io),
                Err(IoError::Io)
            ]
        );
        d.submit(Io::Flush);
        assert_eq!(d.next_completion().unwrap().result, Ok(vec![]));
        assert_eq!(d.rules(), 1);
    }

    #[test]
    fn a_rule_for_writes_lets_reads_through() {
        let mut d = disk(8);
        d.add_rule(
            crate::dut::Fault {
                write: true,
                sector: 2,
                error: IoError::NoSpace,
            }
            .into(),
        );
        d.submit(Io::Read {
            sector: 2,
            len: 512,
        });
        assert!(d.next_completion().unwrap().result.is_ok());
        d.submit(write(2, 1));
        assert_eq!(d.next_completion().unwrap().result, Err(IoError::NoSpace));
    }

    #[test]
    fn out_of_range_is_an_error() {
        let mut d = disk(1);
        d.submit(Io::Read {
            sector: u64::MAX,
            len: 512,
        });
        d.submit(write(1, 0));
        assert_eq!(d.next_completion().unwrap().result, Err(IoError::Io));
        assert_eq!(d.next_completion().unwrap().result, Err(IoError::Io));
    }
}
