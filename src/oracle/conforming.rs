//! Invariants a device owes a conforming driver: every published request completes exactly
//! once, with the status, length and data its I/O and the error policy imply, whatever
//! stops, migrations and resets happen around it.

use std::collections::BTreeSet;

use vm_memory::{Bytes, GuestAddress, GuestMemory};

use super::{Check, Invariant, ensure, violation};
use crate::backend::Io;
use crate::contract::{InflightPolicy, Reaction};
use crate::driver::{Driver, UsedElem, need_event};
use crate::dut::{Held, QueueState};
use crate::model::{Attempt, Model, ReqId, ReqState};
use crate::program::ReqType;
use crate::virtio::{AVAIL_F_NO_INTERRUPT, F_EVENT_IDX, S_FEATURES_OK, S_NEEDS_RESET};

/// The device could not be built or initialized the way a conforming driver asks.
pub fn setup_refused(what: impl std::fmt::Display) -> super::Violation {
    violation(Invariant::Live, format!("device refused {what}"))
}

/// FEATURES_OK sticks when the driver asks for offered features.
pub fn features_accepted(status: u8, features: u64) -> Check {
    ensure(status & S_FEATURES_OK != 0, Invariant::Live, || {
        format!("device refused offered features {features:#x}")
    })
}

/// A conforming driver never gives the device a reason to need a reset.
pub fn never_needs_reset(status: u8) -> Check {
    ensure(status & S_NEEDS_RESET == 0, Invariant::Live, || {
        format!(
            "the device set DEVICE_NEEDS_RESET (status {status:#04x}) under a conforming driver"
        )
    })
}

/// A new disk I/O must run a published request that may run now: not one dropped by a
/// reset, not one already done or running, not one whose failure was to be reported. Any
/// second I/O a request has no right to is `exactly-once`, however it is timed; when a
/// parked request may be retried is `parked`'s ([`retry`]).
pub fn exactly_once_io(model: &Model, io: &Io, owner: Option<ReqId>) -> Check {
    let Some(id) = owner else {
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
        return fail(Invariant::ExactlyOnce, "its previous I/O is still running");
    }
    let policy = model.policy_for(r.kind);
    match &r.last {
        None => Ok(()),
        Some(Attempt::Failed(e)) if policy.reaction(*e) == Reaction::Park => Ok(()),
        Some(Attempt::Failed(e)) => fail(
            Invariant::ExactlyOnce,
            &format!("it ran again after failing with {e:?}, which {policy:?} reports"),
        ),
        Some(Attempt::Succeeded { .. }) => {
            fail(Invariant::ExactlyOnce, "it already ran successfully")
        }
    }
}

/// A parked request pauses the device: it is resubmitted only at a retry point (heal, or a
/// resume that ends a stop), all parked requests in fetch order, and nothing new starts
/// disk I/O while one the device knows of waits. Called for a disk I/O `exactly_once_io`
/// let through.
pub fn retry(model: &Model, id: ReqId) -> Check {
    let r = &model.requests[id];
    let name = |id: ReqId| {
        let r = &model.requests[id];
        format!("queue {} head {}", r.q, r.head)
    };
    if let Some(e) = model.parked_by(id) {
        if model.retry_point.is_none() {
            return Err(violation(
                Invariant::Parked,
                format!(
                    "{} resubmitted after failing with {e:?}, with no heal or resume since",
                    name(id)
                ),
            ));
        }
        if let Some(earlier) = model.parked_before(id) {
            return Err(violation(
                Invariant::Parked,
                format!(
                    "{} resubmitted before {}, which was fetched earlier and is still parked",
                    name(id),
                    name(earlier)
                ),
            ));
        }
        return Ok(());
    }
    match (r.attempts, model.first_parked_known()) {
        (0, Some(waiting)) => Err(violation(
            Invariant::Parked,
            format!(
                "{} started disk I/O while {} is parked: a parked request pauses the device",
                name(id),
                name(waiting)
            ),
        )),
        _ => Ok(()),
    }
}

/// After a poll that could run disk I/O consumed the retry point at `step`: every parked
/// request the device knew of was resubmitted.
pub fn retried_all(model: &Model, step: usize) -> Check {
    match model.first_parked_known() {
        Some(id) => {
            let r = &model.requests[id];
            Err(violation(
                Invariant::Parked,
                format!(
                    "queue {} head {} is still parked after the retry point at step {step}",
                    r.q, r.head
                ),
            ))
        }
        None => Ok(()),
    }
}

/// A device pauses the VM on an I/O error only where the declared policy parks the failed
/// request: some open request's I/O must fail with an error its policy parks on.
pub fn error_pause(model: &Model) -> Check {
    ensure(model.may_park(), Invariant::Parked, || {
        format!(
            "the device paused on an I/O error, but no open request fails with an error that write={:?}, read={:?} parks on",
            model.write_policy, model.read_policy
        )
    })
}

/// A used entry completes an open, published request, not while it is parked, with the
/// status, length and data its I/O implies.
pub fn used_entry<M: GuestMemory>(model: &Model, mem: &M, q: u16, elem: UsedElem) -> Check {
    let id = used_id(model, q, elem)?;
    parked(model, id)?;
    data(model, mem, id, elem)
}

/// A used id names an open, published request; a request finished or dropped earlier must
/// not come back.
fn used_id(model: &Model, q: u16, elem: UsedElem) -> Result<ReqId, super::Violation> {
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
fn parked(model: &Model, id: ReqId) -> Check {
    let r = &model.requests[id];
    let Some(e) = model.parked_by(id) else {
        return Ok(());
    };
    let history = match r.attempts {
        1 => format!("its I/O failed with {e:?} and was never retried"),
        n => format!("its retry failed again with {e:?} ({n} attempts)"),
    };
    Err(violation(
        Invariant::Parked,
        format!(
            "queue {} head {}: completed while parked: {history}",
            r.q, r.head
        ),
    ))
}

/// The status byte, used length and data are what the request and its I/O imply.
fn data<M: GuestMemory>(model: &Model, mem: &M, id: ReqId, elem: UsedElem) -> Check {
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

/// At the end, the disk holds what the completed writes put there, wherever the model
/// knows what that is.
pub fn data_disk(model: &Model, image: &[u8]) -> Check {
    if model.disk == image {
        return Ok(());
    }
    let sector = crate::backend::SECTOR_SIZE as usize;
    let differs = model
        .disk
        .iter()
        .zip(image)
        .enumerate()
        .find(|(at, (a, b))| a != b && !model.uncertain.get(at / sector).copied().unwrap_or(false));
    match differs {
        None if model.disk.len() == image.len() => Ok(()),
        None => Err(violation(
            Invariant::Data,
            format!(
                "the disk holds {} bytes, expected {}",
                image.len(),
                model.disk.len()
            ),
        )),
        Some((at, (want, got))) => Err(violation(
            Invariant::Data,
            format!(
                "disk byte {at} (sector {}) expected {want:#04x}, observed {got:#04x}",
                at / sector
            ),
        )),
    }
}

/// Whether virtio's rules call for a notification as used idx moves from `old` to `new`:
/// EVENT_IDX's `used_event`, or else the avail ring's NO_INTERRUPT flag.
pub fn notification_due<M: GuestMemory>(
    driver: &Driver,
    mem: &M,
    q: u16,
    old: u16,
    new: u16,
) -> bool {
    if driver.has(F_EVENT_IDX) {
        need_event(driver.used_event(mem, q), new, old)
    } else {
        driver.avail_flags(mem, q) & AVAIL_F_NO_INTERRUPT == 0
    }
}

/// The device notifies exactly when the rules say: on the first used update after
/// initialization, reset or restore, then by EVENT_IDX's `used_event` or by the flags.
/// `decisions` is how many notification decisions the device may have made in the call: 1
/// for a device the harness steps, up to one per used entry for a device that completes on
/// its own time (each may notify when the flags allow it). `spurious`: the device cannot
/// know whether a notification is due (a ring restarted without the used index it last
/// signalled), so one that is not due is let pass; a due one is still required.
/// `unjudged`: part of the movement came before the driver's latest `used_event` (a device
/// running on its own time), and its decision may have notified; `expected` covers the rest.
pub fn notify(
    q: u16,
    moved: bool,
    expected: bool,
    spurious: bool,
    unjudged: bool,
    count: u32,
    decisions: u32,
) -> Check {
    let want = u32::from(moved && expected);
    let most =
        (want + u32::from(moved && unjudged)).max(u32::from(moved && spurious)) * decisions.max(1);
    ensure(want <= count && count <= most, Invariant::Notify, || {
        if want == most {
            format!("queue {q}: expected {want} used-buffer notifications, observed {count}")
        } else {
            format!(
                "queue {q}: expected {want} to {most} used-buffer notifications, observed {count}"
            )
        }
    })
}

/// At the acknowledgement: under Drain nothing is held; under Track the held requests are
/// exactly the popped but unused ones. `next_avail` is each queue's ring position: a
/// published request before it has been popped.
pub fn contract(
    policy: InflightPolicy,
    held: &[Held],
    model: &Model,
    next_avail: &[Option<u16>],
) -> Check {
    let mut popped_unused = BTreeSet::new();
    for id in model.open_ids() {
        let r = &model.requests[id];
        if r.state != ReqState::Published {
            continue;
        }
        if let Some(Some(next)) = next_avail.get(usize::from(r.q))
            && (1..0x8000).contains(&next.wrapping_sub(r.avail_pos))
        {
            popped_unused.insert((r.q, r.head));
        }
    }
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
        InflightPolicy::Track => ensure(held_set == popped_unused, Invariant::Contract, || {
            format!(
                "Track: stop acknowledged holding {held_set:?}, expected the popped but unused {popped_unused:?}"
            )
        }),
    }
}

/// Polls a device has to present a stop's acknowledgement once its contract allows it.
pub const ACK_POLLS: u8 = 3;

/// Whether the contract allows a stop's acknowledgement now. Track: no disk I/O runs.
/// Drain: also, every popped buffer is used. The harness counts a request as popped once it
/// saw disk I/O for it (a request that needs none completes in the call that pops it), so a
/// parked request holds a Drain acknowledgement back until a retry completes it.
pub fn ack_due(policy: InflightPolicy, model: &Model, io_running: bool) -> bool {
    if io_running {
        return false;
    }
    match policy {
        InflightPolicy::Track => true,
        InflightPolicy::Drain => !model.open_ids().any(|id| {
            let r = &model.requests[id];
            r.state == ReqState::Published && (r.io.is_some() || r.last.is_some())
        }),
    }
}

/// A stop whose acknowledgement has been due for `overdue` polls in a row has it by
/// [`ACK_POLLS`].
pub fn stop_acked(which: &str, policy: InflightPolicy, overdue: u8) -> Check {
    ensure(overdue < ACK_POLLS, Invariant::StopAcked, || {
        let why = match policy {
            InflightPolicy::Drain => "every popped buffer is used and no disk I/O runs",
            InflightPolicy::Track => "no disk I/O runs",
        };
        format!(
            "{which} stop under {policy:?}: due since {why}, not acknowledged after {overdue} polls"
        )
    })
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

/// Restore accepts the device's own snapshot.
pub fn restore_accepts_own(refused: impl std::fmt::Display) -> super::Violation {
    violation(
        Invariant::RoundTrip,
        format!("restore refused the device's own snapshot: {refused}"),
    )
}

/// Save, restore and save give the same bytes. `second` is the restored device's save.
pub fn round_trip(first: &[u8], second: Result<&[u8], String>) -> Check {
    match second {
        Err(e) => Err(violation(
            Invariant::RoundTrip,
            format!("the restored device, still stopped, refused to save: {e}"),
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

/// A host-stopped device's own count of queue `q` agrees with the ring and the model: its
/// used idx is the ring's; it fetched only what was made available (`published`); `inuse`
/// is what it fetched and has not used, within the ring; and, as its stop waits for the
/// disk, it holds no more than the `parkable` requests an injected fault parks.
pub fn stopped_queue(
    q: u16,
    s: QueueState,
    ring_used: u16,
    published: u16,
    size: u16,
    parkable: usize,
) -> Check {
    ensure(s.next_used == ring_used, Invariant::UsedMonotone, || {
        format!(
            "queue {q}: the stopped device counts used idx {}, the ring holds {ring_used}",
            s.next_used
        )
    })?;
    let fetched = s.next_avail.wrapping_sub(s.next_used);
    ensure(
        fetched <= published.wrapping_sub(ring_used),
        Invariant::AvailWindow,
        || {
            format!(
                "queue {q}: the stopped device fetched up to avail position {} (used idx {}), beyond avail idx {published}",
                s.next_avail, s.next_used
            )
        },
    )?;
    ensure(
        s.inuse == u32::from(fetched) && fetched <= size,
        Invariant::InuseBound,
        || {
            format!(
                "queue {q}: the stopped device counts {} requests in use, {fetched} fetched and not used (size {size})",
                s.inuse
            )
        },
    )?;
    ensure(s.inuse as usize <= parkable, Invariant::Contract, || {
        format!(
            "queue {q}: at a host stop the device holds {} requests; at most {parkable} can be parked on an injected fault, and the stop waits for the rest",
            s.inuse
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::IoError;
    use crate::contract::ErrorPolicy;
    use crate::model::Request;

    fn model_with_one_write() -> (Model, ReqId) {
        let mut model = Model::new(8, ErrorPolicy::Stop, ErrorPolicy::Report, true, [0; 20]);
        let id = model.add(Request {
            q: 0,
            head: 0,
            avail_pos: 0,
            kind: ReqType::Write,
            sector: 0,
            sectors: 1,
            data: vec![1; 512],
            writable: Vec::new(),
            data_addr: 0,
            status_addr: 0,
            state: ReqState::Staged,
            io: None,
            last: None,
            attempts: 0,
            fetched: None,
        });
        model.publish(0);
        (model, id)
    }

    #[test]
    fn an_acknowledgement_is_due_by_the_contract() {
        let (mut model, id) = model_with_one_write();
        // Published, never popped: due under both contracts once no I/O runs.
        for policy in [InflightPolicy::Drain, InflightPolicy::Track] {
            assert!(ack_due(policy, &model, false));
            assert!(!ack_due(policy, &model, true));
        }
        // Popped and parked: Drain waits for the retry, Track does not.
        model.io_started(7, id);
        model.io_finished(7, Err(IoError::NoSpace));
        assert!(model.is_parked(id));
        assert!(!ack_due(InflightPolicy::Drain, &model, false));
        assert!(ack_due(InflightPolicy::Track, &model, false));
        model.complete(id);
        assert!(ack_due(InflightPolicy::Drain, &model, false));
    }

    /// Two writes fetched in order (I/O tags 1 and 2), both failed with ENOSPC under the
    /// stop policy, and a third published but not yet fetched.
    fn two_parked_and_one_new() -> (Model, [ReqId; 3]) {
        let (mut model, a) = model_with_one_write();
        let mut ids = [a, 0, 0];
        for (i, sector) in [(1, 2), (2, 4)] {
            let (other, _) = model_with_one_write();
            let mut r = other.requests[0].clone();
            r.head = i as u16;
            r.sector = sector;
            ids[i] = model.add(r);
        }
        model.publish(0);
        for (tag, &id) in ids[..2].iter().enumerate() {
            model.io_started(tag as u64 + 1, id);
        }
        for tag in 1..=2 {
            model.io_finished(tag, Err(IoError::NoSpace));
        }
        (model, ids)
    }

    #[test]
    fn parked_requests_are_retried_only_at_a_retry_point_and_in_fetch_order() {
        let (mut model, [a, b, _]) = two_parked_and_one_new();
        assert!(retry(&model, a).is_err(), "no retry point yet");
        model.retry_point(5);
        assert!(retry(&model, b).is_err(), "b was fetched after a");
        assert!(retry(&model, a).is_ok());
        model.io_started(3, a);
        assert!(retry(&model, b).is_ok());
        model.io_started(4, b);
        assert!(retried_all(&model, 5).is_ok());
    }

    #[test]
    fn nothing_new_starts_while_the_device_knows_of_a_parked_request() {
        let (mut model, [a, b, c]) = two_parked_and_one_new();
        // The device has not polled since the failures: it cannot know yet.
        assert!(retry(&model, c).is_ok());
        model.polled();
        assert!(retry(&model, c).is_err());
        model.retry_point(9);
        assert!(
            retried_all(&model, 9).is_err(),
            "a and b were not resubmitted"
        );
        model.io_started(3, a);
        model.io_started(4, b);
        assert!(retry(&model, c).is_ok());
    }

    #[test]
    fn a_second_io_is_exactly_once_whatever_its_timing() {
        let (mut model, id) = model_with_one_write();
        model.publish(0);
        let io = Io::Write {
            sector: 0,
            data: vec![1; 512],
        };
        model.io_started(1, id);
        let running = exactly_once_io(&model, &io, Some(id)).unwrap_err();
        model.io_finished(1, Ok(()));
        let done = exactly_once_io(&model, &io, Some(id)).unwrap_err();
        assert_eq!(running.invariant, Invariant::ExactlyOnce);
        assert_eq!(done.invariant, Invariant::ExactlyOnce);
    }

    #[test]
    fn a_due_acknowledgement_is_late_after_the_bound() {
        for overdue in 0..ACK_POLLS {
            assert!(stop_acked("host", InflightPolicy::Drain, overdue).is_ok());
        }
        assert!(stop_acked("host", InflightPolicy::Drain, ACK_POLLS).is_err());
    }

    #[test]
    fn notify_owes_nothing_for_movement_decided_under_an_older_used_event() {
        // Judged alone, a due notification that did not come is a finding.
        assert!(notify(0, true, true, false, false, 0, 1).is_err());
        // Part of the movement came before the driver's latest used_event: the rest is not
        // due, and the earlier part may or may not have notified.
        assert!(notify(0, true, false, false, true, 0, 1).is_ok());
        assert!(notify(0, true, false, false, true, 1, 1).is_ok());
        assert!(notify(0, true, false, false, true, 2, 1).is_err());
        // The rest is due: it must notify, and the earlier part may add one more.
        assert!(notify(0, true, true, false, true, 0, 1).is_err());
        assert!(notify(0, true, true, false, true, 2, 1).is_ok());
        assert!(notify(0, true, true, false, true, 3, 1).is_err());
    }

    #[test]
    fn a_stopped_queue_is_judged_by_its_own_count() {
        let s = |next_avail, next_used, inuse| QueueState {
            next_avail,
            next_used,
            inuse,
        };
        use Invariant::*;
        for (state, parkable, want) in [
            (s(4, 4, 0), 0, Ok(())),
            (s(5, 4, 1), 1, Ok(())),           // one parked request held
            (s(5, 4, 1), 0, Err(Contract)),    // held, and no fault parks it
            (s(7, 4, 3), 3, Err(AvailWindow)), // fetched beyond avail idx 6
            (s(4, 4, u32::MAX), 9, Err(InuseBound)), // inuse wrapped
            (s(4, 3, 1), 1, Err(UsedMonotone)), // used idx not the ring's
        ] {
            let got = stopped_queue(0, state, 4, 6, 16, parkable).map_err(|v| v.invariant);
            assert_eq!(got, want, "{state:?}, {parkable} parkable");
        }
    }
}
