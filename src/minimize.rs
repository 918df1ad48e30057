//! `stopfuzz minimize`: shrinks a finding's input at the level of the program, keeping the
//! same invariant firing at every step. It drops ops (halves, then quarters, down to single
//! ops), zeroes op arguments, and zeroes config fields; for the snapshot target it also
//! drops flips or shrinks the raw snapshot bytes. Every candidate is canonical, so the
//! result is its own `Program::encode`.

use crate::dut::DeviceKind;
use crate::engine::{OracleLevel, Outcome, SnapshotEdit};
use crate::oracle::Invariant;
use crate::program::{Op, Program, RUST_USES};
use crate::targets::{Target, snapshot_bytes, snapshot_input};

/// Rounds of all passes; each round that shrinks nothing ends the search.
const ROUNDS: usize = 8;

/// An input of a target, decoded into what can be shrunk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Input {
    /// The snapshot target's edit; `None` for the other targets.
    pub edit: Option<SnapshotEdit>,
    /// The program the target runs.
    pub program: Program,
}

impl Input {
    /// Reads `bytes` as `target` does.
    pub fn decode(target: Target, bytes: &[u8]) -> Input {
        match target {
            Target::Snapshot => {
                let (edit, program) = snapshot_input(bytes);
                Input {
                    edit: Some(edit),
                    program,
                }
            }
            _ => Input {
                edit: None,
                program: Program::decode(bytes),
            },
        }
    }

    /// The canonical bytes of this input.
    pub fn encode(&self) -> Vec<u8> {
        match &self.edit {
            Some(edit) => snapshot_bytes(edit, &self.program),
            None => self.program.encode(),
        }
    }

    /// A test that replays this input and requires it to pass (once the bug is fixed).
    pub fn rust_test(&self, target: Target, name: &str, what: &str) -> String {
        let variant = match target {
            Target::BlkConforming => "BlkConforming",
            Target::BlkHostile => "BlkHostile",
            Target::Snapshot => "Snapshot",
        };
        let program = format!("{:?}", self.program).replace('\n', "\n    ");
        let bytes = match &self.edit {
            None => "program.encode()".to_string(),
            Some(edit) => format!(
                "stopfuzz::targets::snapshot_bytes(\n        &stopfuzz::engine::SnapshotEdit::{edit:?},\n        &program,\n    )"
            ),
        };
        format!(
            "// {what}\n#[test]\n#[allow(unused_imports)]\nfn {name}() {{\n    {uses}\n    use stopfuzz::engine::Outcome;\n    use stopfuzz::targets::Target;\n\n    let program = {program};\n    let input = {bytes};\n    let report = Target::{variant}.run(&input, true);\n    assert_eq!(report.outcome, Outcome::Pass, \"{{}}\", report.trace.unwrap().cut(usize::MAX));\n}}\n",
            uses = RUST_USES.replace('\n', "\n    "),
        )
    }
}

/// What minimizing gave.
pub struct Minimized {
    /// The smallest input found.
    pub input: Input,
    /// The invariant it still breaks.
    pub invariant: Invariant,
    /// The step the invariant fires at, in the minimized input.
    pub step: usize,
    /// The finding's message on the minimized input.
    pub message: String,
    /// Ops in the input before minimizing.
    pub ops_before: usize,
    /// Runs the search took.
    pub runs: usize,
}

/// Why an input cannot be minimized.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MinimizeError {
    /// The input has no finding.
    #[error("the input passes: there is no finding to keep")]
    Passes,
    /// Re-encoded, the input loses its finding.
    #[error("the input's canonical form no longer finds {0}")]
    NotCanonical(Invariant),
}

struct Shrinker {
    target: Target,
    device: DeviceKind,
    invariant: Invariant,
    runs: usize,
}

impl Shrinker {
    /// The same invariant still fires.
    fn keeps(&mut self, input: &Input) -> bool {
        self.runs += 1;
        let report = self
            .target
            .run_on(self.device, &input.encode(), false, OracleLevel::Full);
        matches!(report.outcome, Outcome::Finding(f) if f.invariant == self.invariant)
    }

    /// Tries `candidate`; keeps it in `best` if the finding survives.
    fn try_keep(&mut self, best: &mut Input, candidate: Input) -> bool {
        if candidate != *best && self.keeps(&candidate) {
            *best = candidate;
            true
        } else {
            false
        }
    }

    /// Removes chunks of a sequence (halves, then quarters, down to single items) while
    /// the finding survives. `len` measures the sequence in an input; `cut` removes a range.
    fn drop_chunks(
        &mut self,
        best: &mut Input,
        len: impl Fn(&Input) -> usize,
        cut: impl Fn(&mut Input, std::ops::Range<usize>),
    ) -> bool {
        let mut shrank = false;
        let mut chunk = len(best).div_ceil(2).max(1);
        loop {
            let mut at = 0;
            while at < len(best) {
                let mut c = best.clone();
                let end = (at + chunk).min(len(&c));
                cut(&mut c, at..end);
                if self.try_keep(best, c) {
                    shrank = true;
                } else {
                    at += chunk;
                }
            }
            if chunk == 1 {
                return shrank;
            }
            chunk = chunk.div_ceil(2);
        }
    }

    fn drop_ops(&mut self, best: &mut Input) -> bool {
        self.drop_chunks(
            best,
            |i| i.program.ops.len(),
            |i, r| {
                i.program.ops.drain(r);
            },
        )
    }

    /// Zeroes each argument byte of each op, keeping its kind.
    fn simplify_ops(&mut self, best: &mut Input) -> bool {
        let mut shrank = false;
        for i in 0..best.program.ops.len() {
            for byte in 1..4 {
                let mut raw = best.program.ops[i].encode();
                if raw[byte] == 0 {
                    continue;
                }
                raw[byte] = 0;
                let mut c = best.clone();
                c.program.ops[i] = decode_op(raw);
                shrank |= self.try_keep(best, c);
            }
        }
        shrank
    }

    /// Zeroes each config byte, then each bit of the flags byte.
    fn simplify_config(&mut self, best: &mut Input) -> bool {
        let mut shrank = false;
        for byte in 1..7 {
            for mask in [0xffu8, 0x80, 0x40, 0x20, 0x10, 0x08, 0x04, 0x02, 0x01] {
                let mut bytes = best.program.encode();
                if bytes[byte] & mask == 0 {
                    continue;
                }
                bytes[byte] &= !mask;
                let mut c = best.clone();
                c.program.config = Program::decode(&bytes).config;
                shrank |= self.try_keep(best, c);
            }
        }
        shrank
    }

    fn simplify_edit(&mut self, best: &mut Input) -> bool {
        let mut shrank = false;
        match best.edit.clone() {
            Some(SnapshotEdit::Mutate(flips)) => {
                for i in (0..flips.len()).rev() {
                    let Some(SnapshotEdit::Mutate(now)) = &best.edit else {
                        break;
                    };
                    if i >= now.len() || now.len() == 1 {
                        continue;
                    }
                    let mut fewer = now.clone();
                    fewer.remove(i);
                    let mut c = best.clone();
                    c.edit = Some(SnapshotEdit::Mutate(fewer));
                    shrank |= self.try_keep(best, c);
                }
            }
            Some(SnapshotEdit::Replace(_)) => {
                let raw = |i: &Input| match &i.edit {
                    Some(SnapshotEdit::Replace(raw)) => raw.len(),
                    _ => 0,
                };
                shrank |= self.drop_chunks(best, raw, |i, r| {
                    if let Some(SnapshotEdit::Replace(raw)) = &mut i.edit {
                        raw.drain(r);
                    }
                });
            }
            None => {}
        }
        shrank
    }
}

fn decode_op(raw: [u8; 4]) -> Op {
    let mut bytes = Program::default().encode();
    bytes.extend_from_slice(&raw);
    Program::decode(&bytes).ops[0]
}

/// Shrinks `bytes`, whose run on `target` must be a finding, keeping its invariant.
pub fn minimize(
    target: Target,
    device: DeviceKind,
    bytes: &[u8],
) -> Result<Minimized, MinimizeError> {
    let Outcome::Finding(first) = target
        .run_on(device, bytes, false, OracleLevel::Full)
        .outcome
    else {
        return Err(MinimizeError::Passes);
    };
    let mut s = Shrinker {
        target,
        device,
        invariant: first.invariant,
        runs: 1,
    };
    let mut best = Input::decode(target, bytes);
    let ops_before = best.program.ops.len();
    if !s.keeps(&best) {
        return Err(MinimizeError::NotCanonical(first.invariant));
    }
    for _ in 0..ROUNDS {
        let mut shrank = s.drop_ops(&mut best);
        shrank |= s.simplify_edit(&mut best);
        shrank |= s.simplify_ops(&mut best);
        shrank |= s.simplify_config(&mut best);
        if !shrank {
            break;
        }
    }
    let (step, message) = match target
        .run_on(device, &best.encode(), false, OracleLevel::Full)
        .outcome
    {
        Outcome::Finding(f) => (f.step, f.message),
        Outcome::Pass => unreachable!("every kept candidate has the finding"),
    };
    Ok(Minimized {
        input: best,
        invariant: s.invariant,
        step,
        message,
        ops_before,
        runs: s.runs,
    })
}

/// The text of the trace line a regression test expects at `step`: the op there, or the
/// liveness phase (which the snapshot phase follows without a line of its own).
pub fn step_line(program: &Program, step: usize) -> String {
    match step.checked_sub(1).and_then(|i| program.ops.get(i)) {
        Some(op) => format!("{op:?}"),
        None => "liveness: heal, resume, run everything to completion".into(),
    }
}

/// The step a regression test expects its op at.
pub fn step_of(program: &Program, step: usize) -> usize {
    step.clamp(1, program.ops.len() + 1)
}
