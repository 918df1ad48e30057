//! The step loop: each op, then its effects folded into the digest and, when traced,
//! rendered as a numbered step.

use super::{Finding, Outcome, Report, Run, Scenarios};
use crate::oracle::skipped::skipped;
use crate::oracle::{Check, Violation};
use crate::program::Op;
use crate::trace::{Digest, Trace};

impl Run<'_> {
    pub(super) fn execute(&mut self, ops: &[Op]) -> Check {
        for (i, op) in ops.iter().enumerate() {
            self.step = i + 1;
            let before = self.trace.as_ref().map(|t| t.lines.len());
            let result = self.apply(op);
            self.digest.bytes(&op.encode());
            self.end_step(|| format!("{op:?}"), before);
            result?;
        }
        self.step = ops.len() + 1;
        let before = self.trace.as_ref().map(|t| t.lines.len());
        let result = self.finish();
        self.end_step(
            || "liveness: heal, resume, run everything to completion".into(),
            before,
        );
        result
    }

    /// Hashes the step's effects; renders the step line ahead of its notes.
    fn end_step(&mut self, text: impl FnOnce() -> String, notes_from: Option<usize>) {
        let mut effects = [0u8; 8];
        effects[0] = self.dev.read_status();
        effects[1] = self.disk.outstanding().count() as u8;
        for (i, dq) in self.driver.queues.iter().enumerate() {
            effects[2 + i] = dq.observed as u8;
        }
        self.digest.bytes(&effects);
        if let (Some(t), Some(from)) = (self.trace.as_mut(), notes_from) {
            t.lines
                .insert(from, format!("{:>4}  {}", self.step, text()));
            let io = self.disk.outstanding().count();
            let used: Vec<String> = self
                .driver
                .queues
                .iter()
                .map(|q| q.observed.to_string())
                .collect();
            t.note(&format!(
                "status {:#04x}, used idx [{}], disk I/O outstanding {io}, parked {}",
                effects[0],
                used.join(", "),
                self.model
                    .open_ids()
                    .filter(|&id| self.model.is_parked(id))
                    .count()
            ));
        }
    }

    pub(super) fn report(mut self, result: Check) -> Report {
        if self.stops.crossed {
            self.scenarios.set(Scenarios::STOP_ACROSS_LIFECYCLE);
        }
        let outcome = match result {
            Ok(()) => Outcome::Pass,
            Err(v) => {
                self.note(|| format!("FINDING {}: {}", v.invariant, v.message));
                Outcome::Finding(Finding {
                    invariant: v.invariant,
                    step: self.step,
                    message: v.message,
                })
            }
        };
        if let Outcome::Finding(f) = &outcome {
            self.digest.bytes(f.invariant.id().as_bytes());
            self.digest.u64(f.step as u64);
        }
        Report {
            outcome,
            scenarios: self.scenarios,
            digest: self.digest.value(),
            trace: self.trace,
            skipped: skipped(&self.offered),
            ops: 0,
        }
    }
}

/// The report of a run whose setup failed.
pub(super) fn setup_failure(v: Violation, traced: bool) -> Report {
    let mut digest = Digest::default();
    digest.bytes(v.message.as_bytes());
    Report {
        outcome: Outcome::Finding(Finding {
            invariant: v.invariant,
            step: 0,
            message: v.message,
        }),
        scenarios: Scenarios::default(),
        digest: digest.value(),
        trace: traced.then(Trace::default),
        skipped: Vec::new(),
        ops: 0,
    }
}
