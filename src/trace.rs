//! A run as numbered steps, and a digest of it.
//!
//! Every run feeds its steps into a [`Digest`]; only a run asked to trace also renders text,
//! so fuzzing pays for hashing and not for formatting. The ring drawing follows the
//! mailing-list thread: `avail.ring = [0, 1, 2, 3]` with a `^--- avail.idx` marker.

use std::fmt::Write;

/// FNV-1a, 64-bit: stable across Rust versions and platforms, unlike `DefaultHasher`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Digest(u64);

impl Default for Digest {
    fn default() -> Self {
        Digest(0xcbf2_9ce4_8422_2325)
    }
}

impl Digest {
    /// Folds in `bytes`.
    pub fn bytes(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }

    /// Folds in `v`, little-endian.
    pub fn u64(&mut self, v: u64) {
        self.bytes(&v.to_le_bytes());
    }

    /// The hash of everything folded in.
    pub fn value(&self) -> u64 {
        self.0
    }
}

/// The rendered steps of a traced run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Trace {
    /// Numbered step lines, and the indented notes under them.
    pub lines: Vec<String>,
}

impl Trace {
    /// Appends the numbered line of step `step`.
    pub fn step(&mut self, step: usize, text: &str) {
        self.lines.push(format!("{step:>4}  {text}"));
    }

    /// Appends an indented note line.
    pub fn note(&mut self, text: &str) {
        self.lines.push(format!("      {text}"));
    }

    /// The trace up to and including `step`.
    pub fn cut(&self, step: usize) -> String {
        let mut out = String::new();
        let mut current = 0;
        for line in &self.lines {
            if let Some(n) = line.get(..4).and_then(|s| s.trim().parse::<usize>().ok()) {
                current = n;
            }
            if current > step {
                break;
            }
            out.push_str(line);
            out.push('\n');
        }
        out
    }
}

/// One avail slot as the thread draws it: the head written there and what became of it.
pub(crate) struct SlotView {
    pub head: Option<u16>,
    pub state: &'static str,
}

/// Draws a ring like the thread: the avail entries, their state, and where avail idx is.
pub(crate) fn draw_ring(q: u16, slots: &[SlotView], avail_idx: u16) -> String {
    let size = slots.len().max(1);
    let heads: Vec<String> = slots
        .iter()
        .map(|s| s.head.map_or("-".into(), |h| h.to_string()))
        .collect();
    let width = heads
        .iter()
        .map(String::len)
        .chain(slots.iter().map(|s| s.state.len()))
        .max()
        .unwrap_or(1);
    let mut out = String::new();
    let prefix = format!("q{q} avail.ring = [");
    let cells: Vec<String> = heads.iter().map(|h| format!("{h:<width$}")).collect();
    let _ = writeln!(out, "{prefix}{}]", cells.join(", "));
    let states: Vec<String> = slots
        .iter()
        .map(|s| format!("{:<width$}", s.state))
        .collect();
    let _ = writeln!(out, "{}{}", " ".repeat(prefix.len()), states.join(", "));
    let at = usize::from(avail_idx) % size;
    let col = prefix.len() + at * (width + 2);
    let _ = writeln!(out, "{}^--- avail.idx = {avail_idx}", " ".repeat(col));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_is_fnv1a() {
        let mut d = Digest::default();
        d.bytes(b"a");
        assert_eq!(d.value(), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn cut_keeps_notes_of_kept_steps() {
        let mut t = Trace::default();
        t.step(1, "one");
        t.note("detail");
        t.step(2, "two");
        assert_eq!(t.cut(1), "   1  one\n      detail\n");
    }

    #[test]
    fn draws_the_threads_example() {
        let slot = |h, s| SlotView {
            head: Some(h),
            state: s,
        };
        let ring = [
            slot(1, "Not used"),
            slot(1, "used"),
            slot(2, "used"),
            slot(3, "used"),
        ];
        let text = draw_ring(0, &ring, 5);
        assert!(text.starts_with("q0 avail.ring = [1       , 1"), "{text}");
        assert!(text.contains("^--- avail.idx = 5"));
    }
}
