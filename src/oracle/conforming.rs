//! Invariants a device owes a conforming driver: every published request completes exactly
//! once, with the status, length and data its I/O and the error policy imply, whatever
//! stops, migrations and resets happen around it.

use std::collections::BTreeSet;

use vm_memory::{Bytes, GuestAddress, GuestMemory};

use super::{Check, Invariant, ensure, violation};
use crate::backend::Io;
use crate::device::{Held, InflightPolicy};
use crate::driver::UsedElem;
use crate::model::{Attempt, Model, Reaction, ReqId, ReqState, reaction};
use crate::program::ReqType;

/// A new disk I/O must run a published request that may run now: not one dropped by a
/// reset, not one already done, not one whose I/O is still running.
pub fn exactly_once_io(model: &Model, io: &Io) -> Result<ReqId, super::Violation> {
    let Some(id) = model.owner_of(io) else {
        return Err(violation(
            Invariant::ExactlyOnce,
            format!("disk I/O {} for no outstanding request", describe(io)),
        ));
    };
    let r = &model.requests[id];
    let fail = |inv, why: &str| {
        Err(violation(
            inv,
            format!(
                "disk I/O {} for request at queue {} head {}: {why}",
                describe(io),
                r.q,
                r.head
            ),
        ))
    };
    match r.state {
        ReqState::Abandoned => {
            return fail(Invariant::ExactlyOnce, "the request was dropped by a reset");
        }
        ReqState::Staged => return fail(Invariant::ExactlyOnce, "the request was never published"),
        _ => {}
    }
    if r.kind == ReqType::Flush && !model.flush {
        return fail(
            Invariant::Data,
            "FLUSH was not negotiated, expected UNSUPP without disk I/O",
        );
    }
    if r.io.is_some() {
        return fail(Invariant::Parked, "its previous I/O is still running");
    }
    let policy = model.policy_for(r.kind);
    match &r.last {
        None => Ok(id),
        Some(Attempt::Failed(e)) if reaction(policy, *e) == Reaction::Park => Ok(id),
        Some(Attempt::Failed(e)) => fail(
            Invariant::Parked,
            &format!("its failure ({e:?}) was to be reported under {policy:?}, not retried"),
        ),
        Some(Attempt::Succeeded { .. }) => {
            fail(Invariant::ExactlyOnce, "it already ran successfully")
        }
    }
}

/// A used id names an open, published request; a request finished or dropped earlier must
/// not come back.
pub fn used_id(model: &Model, q: u16, elem: UsedElem) -> Result<ReqId, super::Violation> {
    let head = elem.id as u16;
    match model.open(q, head) {
        Some(id) if model.requests[id].state == ReqState::Published => Ok(id),
        Some(_) => Err(violation(
            Invariant::UsedMonotone,
            format!(
                "queue {q}: used id {head} at used position {} was never published",
                elem.pos
            ),
        )),
        None => {
            let earlier = model
                .requests
                .iter()
                .rev()
                .find(|r| r.q == q && r.head == head);
            let (inv, why) = match earlier.map(|r| r.state) {
                Some(ReqState::Completed) => (Invariant::ExactlyOnce, "it already completed"),
                Some(ReqState::Abandoned) => (Invariant::ExactlyOnce, "a reset dropped it"),
                _ => (Invariant::UsedMonotone, "the device does not hold it"),
            };
            Err(violation(
                inv,
                format!(
                    "queue {q}: used id {head} at used position {}: {why}",
                    elem.pos
                ),
            ))
        }
    }
}

/// A parked request gets no used entry until a retry succeeds or is reported.
pub fn parked(model: &Model, id: ReqId) -> Check {
    let r = &model.requests[id];
    match model.parked_by(id) {
        Some(e) => Err(violation(
            Invariant::Parked,
            format!(
                "queue {} head {}: completed while parked (its last I/O failed with {e:?}) without a retry",
                r.q, r.head
            ),
        )),
        None => Ok(()),
    }
}

/// The status byte, used length and data are what the request and its I/O imply.
pub fn data<M: GuestMemory>(model: &Model, mem: &M, id: ReqId, elem: UsedElem) -> Check {
    let r = &model.requests[id];
    let expected = match model.expected(id) {
        Ok(e) => e,
        Err(why) => {
            return Err(violation(
                Invariant::Data,
                format!("queue {} head {}: completed while {why:?}", r.q, r.head),
            ));
        }
    };
    let status: u8 = mem.read_obj(GuestAddress(r.status_addr)).unwrap_or(0xff);
    ensure(
        status == expected.status && elem.len == expected.len,
        Invariant::Data,
        || {
            format!(
                "queue {} head {} ({:?} sector {}): expected status {} len {}, observed status {status} len {}",
                r.q, r.head, r.kind, r.sector, expected.status, expected.len, elem.len
            )
        },
    )?;
    if let Some(want) = expected.data {
        let mut got = vec![0u8; want.len()];
        let _ = mem.read_slice(&mut got, GuestAddress(r.data_addr));
        if let Some(at) = want.iter().zip(&got).position(|(a, b)| a != b) {
            return Err(violation(
                Invariant::Data,
                format!(
                    "queue {} head {} ({:?} sector {}): data byte {at} expected {:#04x}, observed {:#04x}",
                    r.q, r.head, r.kind, r.sector, want[at], got[at]
                ),
            ));
        }
    }
    Ok(())
}

/// At the end, the disk holds what the completed writes put there.
pub fn data_disk(model: &Model, image: &[u8]) -> Check {
    if model.disk == image {
        return Ok(());
    }
    match model.disk.iter().zip(image).position(|(a, b)| a != b) {
        None => Ok(()),
        Some(at) => Err(violation(
            Invariant::Data,
            format!(
                "disk byte {at} (sector {}) expected {:#04x}, observed {:#04x}",
                at / 512,
                model.disk[at],
                image[at]
            ),
        )),
    }
}

/// The device notifies exactly when the rules say: on the first used update after
/// initialization, reset or restore, then by EVENT_IDX's `used_event` or by the flags.
pub fn notify(q: u16, moved: bool, expected: bool, count: u32) -> Check {
    let want = u32::from(moved && expected);
    ensure(count == want, Invariant::Notify, || {
        format!("queue {q}: expected {want} used-buffer notifications, observed {count}")
    })
}

/// At the acknowledgement: under Drain nothing is held; under Track the held requests are
/// exactly the popped but unused ones.
pub fn contract(
    policy: InflightPolicy,
    held: &[Held],
    popped_unused: &BTreeSet<(u16, u16)>,
) -> Check {
    let held_set: BTreeSet<(u16, u16)> = held.iter().map(|h| (h.queue, h.head)).collect();
    match policy {
        InflightPolicy::Drain => ensure(
            held.is_empty() && popped_unused.is_empty(),
            Invariant::Contract,
            || {
                format!(
                    "Drain: stop acknowledged with popped but unused {popped_unused:?}, device holds {held_set:?}"
                )
            },
        ),
        InflightPolicy::Track => ensure(&held_set == popped_unused, Invariant::Contract, || {
            format!(
                "Track: stop acknowledged holding {held_set:?}, expected the popped but unused {popped_unused:?}"
            )
        }),
    }
}

/// A host stop, resume or migration changes nothing the guest sees.
pub fn transparent(what: &str, status_before: u8, status_after: u8, interrupts: u32) -> Check {
    ensure(
        status_before == status_after && interrupts == 0,
        Invariant::Transparent,
        || {
            format!(
                "{what}: expected status {status_before:#04x} and no interrupt, observed status {status_after:#04x} and {interrupts} interrupts"
            )
        },
    )
}

/// Save, restore and save give the same state.
pub fn round_trip(first: &[u8], second: Result<&[u8], String>) -> Check {
    match second {
        Err(e) => Err(violation(
            Invariant::RoundTrip,
            format!("restore refused the device's own snapshot: {e}"),
        )),
        Ok(second) => ensure(first == second, Invariant::RoundTrip, || {
            let at = first
                .iter()
                .zip(second)
                .position(|(a, b)| a != b)
                .unwrap_or(first.len().min(second.len()));
            format!(
                "the restored device saves differently: first difference at byte {at} of {} / {}",
                first.len(),
                second.len()
            )
        }),
    }
}

/// Published requests that have not completed, and were not dropped by a reset.
pub fn unfinished(model: &Model) -> Vec<ReqId> {
    model
        .open_ids()
        .filter(|&id| model.requests[id].state == ReqState::Published)
        .collect()
}

/// Buffers made available or kicked while stopped run after resume without another kick.
pub fn kick_kept(model: &Model, needed_kick: &[ReqId]) -> Check {
    ensure(needed_kick.is_empty(), Invariant::KickKept, || {
        format!(
            "requests ran only after an extra kick: {}",
            list(model, needed_kick)
        )
    })
}

/// At the end, every published request that no reset dropped has completed.
pub fn live(model: &Model, stuck: &[ReqId]) -> Check {
    ensure(stuck.is_empty(), Invariant::Live, || {
        format!("never completed: {}", list(model, stuck))
    })
}

fn list(model: &Model, ids: &[ReqId]) -> String {
    let mut out: Vec<String> = ids
        .iter()
        .map(|&id| {
            let r = &model.requests[id];
            format!(
                "q{} head {} ({:?} sector {})",
                r.q, r.head, r.kind, r.sector
            )
        })
        .collect();
    out.truncate(8);
    out.join(", ")
}

fn describe(io: &Io) -> String {
    match io {
        Io::Read { sector, len } => format!("read sector {sector} len {len}"),
        Io::Write { sector, data } => format!("write sector {sector} len {}", data.len()),
        Io::Flush => "flush".into(),
    }
}
