//! A copy of guest memory to diff against, for devices whose writes the harness sees only
//! as changed bytes (a device in another process writes the shared memory directly).
//!
//! The harness's own writes go through the write log, so before each device call they are
//! copied in ([`Shadow::sync`]); after the call, whatever else differs was the device.
//! A write of an unchanged value is invisible this way.

use std::ops::Range;

use vm_memory::{Bytes, GuestAddress};

use crate::memory::{Checkpoint, GuestMem};

const PAGE: usize = 4096;

/// Guest memory as last synced or diffed.
pub struct Shadow {
    copy: Vec<u8>,
    /// Pages of `copy` that may be non-zero, one bit each.
    dirty: Vec<u64>,
    buf: Vec<u8>,
}

impl Shadow {
    /// A copy of zeroed memory of `size` bytes.
    pub fn new(size: usize) -> Self {
        Shadow {
            copy: vec![0; size],
            dirty: vec![0; size.div_ceil(PAGE).div_ceil(64)],
            buf: Vec::new(),
        }
    }

    fn mark(&mut self, start: usize, end: usize) {
        for page in start / PAGE..end.div_ceil(PAGE) {
            self.dirty[page / 64] |= 1 << (page % 64);
        }
    }

    /// Copies in what the harness wrote since `from`; after a log overflow, everything.
    pub fn sync(&mut self, mem: &GuestMem, from: Checkpoint) {
        if mem.overflowed() {
            let all = 0..self.copy.len() as u64;
            self.take(mem, all);
            return;
        }
        let ranges: Vec<(u64, u32)> = mem.writes_since(from).collect();
        for (addr, len) in ranges {
            self.take(mem, addr..addr + u64::from(len));
        }
    }

    fn take(&mut self, mem: &GuestMem, r: Range<u64>) {
        let (start, end) = (r.start as usize, (r.end as usize).min(self.copy.len()));
        if start >= end {
            return;
        }
        let _ = mem
            .mem()
            .read_slice(&mut self.copy[start..end], GuestAddress(r.start));
        self.mark(start, end);
    }

    /// The byte runs in `ranges` that differ from the copy, as `(address, length)`; the
    /// copy takes them in.
    pub fn diff(&mut self, mem: &GuestMem, ranges: &[Range<u64>]) -> Vec<(u64, u32)> {
        let mut found: Vec<(u64, u32)> = Vec::new();
        // A page at a time: the chunk stays in cache for the comparison, and only pages that
        // differ are copied in. (Whole-memory diffs are most of a remote run's CPU.)
        self.buf.resize(PAGE, 0);
        for r in ranges {
            let (start, end) = (r.start as usize, (r.end as usize).min(self.copy.len()));
            let mut at = start;
            while at < end {
                let n = (end - at).min(PAGE - at % PAGE);
                if unchanged(mem, at, &self.copy[at..at + n]) {
                    at += n;
                    continue;
                }
                let buf = &mut self.buf[..n];
                if mem.mem().read_slice(buf, GuestAddress(at as u64)).is_err() {
                    at += n;
                    continue;
                }
                let mut i = 0;
                while i < n {
                    if buf[i] == self.copy[at + i] {
                        i += 1;
                        continue;
                    }
                    let run = i;
                    while i < n && buf[i] != self.copy[at + i] {
                        i += 1;
                    }
                    let addr = (at + run) as u64;
                    let len = (i - run) as u32;
                    // A run that goes on from the previous page is one run.
                    match found.last_mut() {
                        Some(last) if last.0 + u64::from(last.1) == addr => last.1 += len,
                        _ => found.push((addr, len)),
                    }
                }
                self.copy[at..at + n].copy_from_slice(buf);
                self.mark(at, at + n);
                at += n;
            }
        }
        found
    }

    /// The pages the copy may hold non-zero bytes in: every byte of memory the copy took in
    /// lies in one of them.
    pub fn dirty_pages(&self) -> Vec<Range<u64>> {
        let mut out = Vec::new();
        for (word, &bits) in self.dirty.iter().enumerate() {
            let mut bits = bits;
            while bits != 0 {
                let page = (word * 64 + bits.trailing_zeros() as usize) as u64;
                bits &= bits - 1;
                let start = page * PAGE as u64;
                out.push(start..(start + PAGE as u64).min(self.copy.len() as u64));
            }
        }
        out
    }

    /// All of memory.
    pub fn everything(&self) -> Range<u64> {
        0..self.copy.len() as u64
    }

    /// Back to a copy of zeroed memory.
    pub fn reset(&mut self) {
        for (word, bits) in self.dirty.iter_mut().enumerate() {
            while *bits != 0 {
                let page = word * 64 + bits.trailing_zeros() as usize;
                *bits &= *bits - 1;
                let start = page * PAGE;
                let end = (start + PAGE).min(self.copy.len());
                self.copy[start..end].fill(0);
            }
        }
    }
}

/// Whether guest memory at `at` still equals `copy`, compared in place: most of memory is
/// unchanged, and copying it out first doubled the cost.
fn unchanged(mem: &GuestMem, at: usize, copy: &[u8]) -> bool {
    use vm_memory::GuestMemoryBackend;
    let Ok(slice) = mem.mem().get_slice(GuestAddress(at as u64), copy.len()) else {
        return false;
    };
    // SAFETY: `slice` is a live, in-bounds mapping of `copy.len()` bytes, valid while `mem`
    // is borrowed. Another process may write it meanwhile: the comparison may then see
    // either value, and a page that differs is read again through vm-memory.
    let now = unsafe { std::slice::from_raw_parts(slice.ptr_guard().as_ptr(), copy.len()) };
    now == copy
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn harness_writes_are_synced_and_device_writes_are_found() {
        let mem = GuestMem::new(4 * PAGE);
        let mut shadow = Shadow::new(4 * PAGE);
        let from = mem.checkpoint();
        mem.mem().write_slice(&[1, 2, 3], GuestAddress(10)).unwrap();
        shadow.sync(&mem, from);
        assert!(shadow.diff(&mem, &[shadow.everything()]).is_empty());
        // A "device" write, including one byte rewritten with its old value.
        mem.mem().write_slice(&[1, 9, 9], GuestAddress(10)).unwrap();
        mem.mem()
            .write_slice(&[7], GuestAddress(3 * PAGE as u64))
            .unwrap();
        let found = shadow.diff(&mem, &[shadow.everything()]);
        assert_eq!(found, [(11, 2), (3 * PAGE as u64, 1)]);
        assert!(shadow.diff(&mem, &[shadow.everything()]).is_empty());
        shadow.reset();
        assert!(shadow.copy.iter().all(|&b| b == 0));
    }
}
