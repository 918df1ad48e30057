//! Invariants that hold even against a hostile driver.

use std::ops::Range;

use super::{Check, Invariant, ensure, violation};
use vm_memory::{Bytes, GuestAddress, GuestMemory};

use crate::driver::Driver;
use crate::driver::layout::slot_area;
use crate::dut::{SavedState, StopState};
use crate::model::{Model, ReqState};
use crate::program::Trigger;
use crate::stops::{Asked, Stops};
use crate::virtio::{S_DRIVER_OK, S_STOPPED, S_SUSPEND};

/// What one device call did that a stopped or broken device must not do.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Activity {
    /// Guest-memory writes.
    pub writes: usize,
    /// Notifications sent, of either kind.
    pub interrupts: u32,
    /// Disk I/Os submitted.
    pub new_io: usize,
}

impl Activity {
    fn is_quiet(&self) -> bool {
        *self == Activity::default()
    }
}

/// Where the device may write now: the used rings (with `avail_event`), and the writable
/// buffers of the requests it may hold. Without a model (a hostile driver), any request
/// buffer.
pub fn allowed_writes(driver: &Driver, model: Option<&Model>) -> Vec<Range<u64>> {
    let mut allowed: Vec<_> = driver.queues.iter().map(|dq| dq.used_ring()).collect();
    match model {
        Some(model) => {
            for id in model.open_ids() {
                let r = &model.requests[id];
                if r.state == ReqState::Published {
                    allowed.extend(r.writable.iter().map(|&(a, l)| a..a + u64::from(l)));
                }
            }
        }
        None => allowed.push(slot_area()),
    }
    allowed
}

/// The device writes only where it may: used rings (with `avail_event`) and the writable
/// buffers of chains it holds. A write may span adjacent allowed ranges (a diff merges
/// neighbouring writes), but every byte of it must be allowed.
pub fn write_confined(writes: &[(u64, u32)], allowed: &[Range<u64>]) -> Check {
    for &(addr, len) in writes {
        let end = addr + u64::from(len);
        let mut at = addr;
        while at < end {
            match allowed
                .iter()
                .filter(|r| r.contains(&at))
                .map(|r| r.end)
                .max()
            {
                Some(next) => at = next,
                None => {
                    return Err(violation(
                        Invariant::WriteConfined,
                        format!(
                            "device wrote {len} bytes at {addr:#x}, byte {at:#x} outside the used rings and the writable buffers it holds"
                        ),
                    ));
                }
            }
        }
    }
    Ok(())
}

/// The device stopped working: its process crashed, exited or panicked, or it broke the
/// connection.
pub fn device_failed(why: String) -> super::Violation {
    violation(Invariant::NoPanic, why)
}

/// From the stop acknowledgement until the harness resumes the device: no writes,
/// interrupts or disk I/O. `stopped` is the harness's record, not the device's report.
pub fn quiet_when_stopped(stopped: bool, activity: Activity) -> Check {
    ensure(
        !stopped || activity.is_quiet(),
        Invariant::QuietWhenStopped,
        || format!("after the stop acknowledgement the device was active: {activity:?}"),
    )
}

/// From a stop request until the harness resumes the device, no new buffer is consumed.
pub fn not_consumed_while_stopping(q: u16, next_avail: (u16, u16)) -> Check {
    ensure(
        next_avail.0 == next_avail.1,
        Invariant::QuietWhenStopped,
        || {
            format!(
                "queue {q}: a stop was requested and not resumed, yet the device consumed: next_avail {} -> {}",
                next_avail.0, next_avail.1
            )
        },
    )
}

/// The status bits the stop triggers define; an acknowledgement is read from these alone.
const STOP_BITS: u8 = S_SUSPEND | S_STOPPED | S_DRIVER_OK;

/// The stop bits of a live device, running and acknowledged, as DESIGN.md defines each
/// trigger: SUSPEND is SUSPEND=1 with DRIVER_OK=0; DEVICE_STOPPED is DEVICE_STOPPED=1 with
/// DRIVER_OK still 1. The other trigger's bit never shows.
fn ack_bits(trigger: Trigger) -> u8 {
    match trigger {
        Trigger::Suspend => S_SUSPEND,
        Trigger::StopBit => S_STOPPED | S_DRIVER_OK,
    }
}

/// Whether the status presents the driver's stop the way a driver reads it: the trigger's
/// bit is set. Whether the rest of the acknowledgement matches is [`stop_state`]'s to check.
pub fn driver_stop_presented(trigger: Trigger, status: u8) -> bool {
    status & trigger.status_bit() != 0
}

fn stop_bits(bits: u8) -> String {
    format!(
        "SUSPEND={} DEVICE_STOPPED={} DRIVER_OK={}",
        u8::from(bits & S_SUSPEND != 0),
        u8::from(bits & S_STOPPED != 0),
        u8::from(bits & S_DRIVER_OK != 0)
    )
}

/// The device reports what the harness's record implies. Driver stop, in the status: the
/// running bits until a request; the running bits or the whole acknowledgement while
/// requested (anything else is half an acknowledgement); the acknowledgement until the
/// harness resumes. Host stop, in `host`: `Running`, `Stopping` or `Stopped` likewise.
pub fn stop_state(trigger: Trigger, stops: &Stops, status: u8, host: Option<StopState>) -> Check {
    let bits = status & STOP_BITS;
    let running = if stops.live { S_DRIVER_OK } else { 0 };
    let acked = ack_bits(trigger);
    let driver_ok = match stops.driver.asked {
        Asked::Running => bits == running,
        Asked::Requested => bits == running || bits == acked,
        Asked::Acked => bits == acked,
    };
    if !driver_ok {
        let expected = match stops.driver.asked {
            Asked::Running => format!("{} (no stop asked for)", stop_bits(running)),
            Asked::Requested => format!(
                "{} (not yet) or {} (acknowledged); anything else is half an acknowledgement",
                stop_bits(running),
                stop_bits(acked)
            ),
            Asked::Acked => format!("{} until the driver resumes", stop_bits(acked)),
        };
        return Err(violation(
            Invariant::StopState,
            format!(
                "driver stop ({trigger:?}) {:?}: expected {expected}, observed status {status:#04x}: {}",
                stops.driver.asked,
                stop_bits(bits)
            ),
        ));
    }
    let Some(host) = host else {
        return Ok(());
    };
    let host_ok = matches!(
        (stops.host.asked, host),
        (Asked::Running, StopState::Running)
            | (Asked::Requested, StopState::Stopping | StopState::Stopped)
            | (Asked::Acked, StopState::Stopped)
    );
    ensure(host_ok, Invariant::StopState, || {
        let expected = match stops.host.asked {
            Asked::Running => "Running (no stop asked for)",
            Asked::Requested => "Stopping or Stopped",
            Asked::Acked => "Stopped until the host resumes it",
        };
        format!(
            "host stop {:?}: expected the device to report {expected}, observed {host:?}",
            stops.host.asked
        )
    })
}

/// A device that saw avail idx more than a ring ahead consumes nothing (requests it
/// fetched before may still complete); once broken, it stays quiet.
pub fn avail_window(q: u16, window: u16, size: u16, next_avail: (u16, u16)) -> Check {
    ensure(
        window <= size || next_avail.0 == next_avail.1,
        Invariant::AvailWindow,
        || {
            format!(
                "queue {q}: avail idx was {window} ahead of next_avail (size {size}); expected nothing consumed, \
             observed next_avail {} -> {}",
                next_avail.0, next_avail.1
            )
        },
    )
}

/// A device in DEVICE_NEEDS_RESET stays quiet until reset.
pub fn broken_stays_quiet(broken: bool, activity: Activity) -> Check {
    ensure(
        !broken || activity.is_quiet(),
        Invariant::AvailWindow,
        || format!("a device needing reset was still active: {activity:?}"),
    )
}

/// `(u16)(last_avail_idx - used_idx) <= size`.
pub fn inuse_bound(q: u16, next_avail: u16, next_used: u16, size: u16) -> Check {
    let inuse = next_avail.wrapping_sub(next_used);
    ensure(inuse <= size, Invariant::InuseBound, || {
        format!(
            "queue {q}: {inuse} buffers in flight (last_avail {next_avail}, used {next_used}), more than size {size}"
        )
    })
}

/// Used idx never goes back and moves at most a ring per call; each used id is a head.
///
/// `avail` is the avail idx the driver had published. A driver that made more than a ring
/// available beyond used (only a hostile one does) lets a correct device complete what it
/// held and then a whole new ring in one call: up to that many, and never over two rings.
pub fn used_monotone(q: u16, before: u16, after: u16, avail: u16, size: u16, ids: &[u32]) -> Check {
    let moved = after.wrapping_sub(before);
    let ahead = avail.wrapping_sub(before);
    let bound = if ahead > size && ahead <= 2 * size {
        ahead
    } else {
        size
    };
    ensure(moved <= bound, Invariant::UsedMonotone, || {
        format!(
            "queue {q}: used idx went from {before} to {after} (avail idx {avail}), not forward by at most {bound}"
        )
    })?;
    match ids.iter().find(|&&id| id >= u32::from(size)) {
        Some(id) => Err(violation(
            Invariant::UsedMonotone,
            format!("queue {q}: used id {id} is not a head of a size-{size} ring"),
        )),
        None => Ok(()),
    }
}

/// Restore accepted bytes it cannot itself decode.
pub fn accepted_undecodable(why: impl std::fmt::Display) -> super::Violation {
    violation(
        Invariant::RestoreRejects,
        format!("accepted bytes that do not decode: {why}"),
    )
}

/// An accepted snapshot must describe a consistent device: the checks restore owes, against
/// the offered features and the rings in guest memory.
pub fn restore_rejects<M: GuestMemory>(snap: &SavedState, offered: u64, mem: &M) -> Check {
    let fail = |m: String| Err(violation(Invariant::RestoreRejects, m));
    if snap.driver_features & !offered != 0 {
        return fail(format!(
            "accepted negotiated features {:#x} beyond the offered {offered:#x}",
            snap.driver_features
        ));
    }
    let live = snap.status & S_DRIVER_OK != 0;
    for (q, state) in snap.queues.iter().enumerate() {
        let inuse = state.next_avail.wrapping_sub(state.next_used);
        if inuse > state.size {
            return fail(format!(
                "queue {q}: accepted inuse {inuse} > size {}",
                state.size
            ));
        }
        let records = snap.held.iter().filter(|r| usize::from(r.0) == q).count();
        if usize::from(inuse) != records {
            return fail(format!(
                "queue {q}: accepted inuse {inuse} with {records} held requests"
            ));
        }
        let idx = |ring: u64| mem.read_obj::<u16>(GuestAddress(ring.checked_add(2)?)).ok();
        if let (true, true, Some(avail), Some(used)) =
            (live, state.ready, idx(state.avail), idx(state.used))
        {
            if avail.wrapping_sub(state.next_avail) > state.size {
                return fail(format!(
                    "queue {q}: accepted avail idx {avail} more than size {} ahead of next_avail {}",
                    state.size, state.next_avail
                ));
            }
            if used != state.next_used {
                return fail(format!(
                    "queue {q}: accepted next_used {} while guest used idx is {used}",
                    state.next_used
                ));
            }
        }
    }
    let mut heads = snap.held.clone();
    for &(q, head) in &heads {
        let Some(state) = snap.queues.get(usize::from(q)) else {
            return fail(format!(
                "accepted a held request on queue {q} of {}",
                snap.queues.len()
            ));
        };
        if head >= state.size {
            return fail(format!(
                "queue {q}: accepted head {head} >= size {}",
                state.size
            ));
        }
    }
    heads.sort_unstable();
    match heads.windows(2).find(|w| w[0] == w[1]) {
        Some(w) => fail(format!("queue {}: accepted head {} twice", w[0].0, w[0].1)),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stops::Side;

    #[test]
    fn write_confined_needs_every_byte_allowed() {
        let allowed = [0x100..0x200, 0x300..0x301];
        assert!(write_confined(&[(0x100, 0x100), (0x300, 1)], &allowed).is_ok());
        assert!(write_confined(&[(0x1ff, 2)], &allowed).is_err());
        assert!(write_confined(&[(0x301, 1)], &allowed).is_err());
        // Adjacent ranges together cover a merged write.
        assert!(write_confined(&[(0x1ff, 2)], &[0x100..0x200, 0x200..0x201]).is_ok());
        assert!(write_confined(&[(0x1ff, 3)], &[0x100..0x200, 0x200..0x201]).is_err());
    }

    #[test]
    fn used_monotone_allows_the_wrap() {
        assert!(used_monotone(0, 0xfffe, 2, 2, 8, &[0, 1, 2, 3]).is_ok());
        assert!(used_monotone(0, 2, 1, 9, 8, &[]).is_err());
        assert!(used_monotone(0, 0, 9, 8, 8, &[]).is_err());
        assert!(used_monotone(0, 0, 1, 1, 8, &[8]).is_err());
        // A driver 10 ahead of used on a ring of 8: one held, then a full new ring.
        assert!(used_monotone(0, 0, 9, 10, 8, &[]).is_ok());
        assert!(used_monotone(0, 0, 11, 10, 8, &[]).is_err());
        // More than two rings ahead is no excuse.
        assert!(used_monotone(0, 0, 20, 20, 8, &[]).is_err());
    }

    #[test]
    fn quiet_checks_fire_only_when_stopped_or_broken() {
        let busy = Activity {
            writes: 1,
            ..Activity::default()
        };
        assert!(quiet_when_stopped(false, busy).is_ok());
        assert!(quiet_when_stopped(true, busy).is_err());
        assert!(quiet_when_stopped(true, Activity::default()).is_ok());
        assert!(broken_stays_quiet(true, busy).is_err());
    }

    #[test]
    fn stop_state_holds_each_trigger_to_its_shape() {
        use crate::virtio::{S_ACKNOWLEDGE, S_DRIVER, S_FEATURES_OK};
        let running = S_ACKNOWLEDGE | S_DRIVER | S_FEATURES_OK | S_DRIVER_OK;
        let suspended = (running & !S_DRIVER_OK) | S_SUSPEND;
        let mut stops = Stops {
            live: true,
            ..Stops::default()
        };
        let check = |stops: &Stops, trigger, status| stop_state(trigger, stops, status, None);
        assert!(check(&stops, Trigger::Suspend, running).is_ok());
        assert!(check(&stops, Trigger::Suspend, suspended).is_err());
        stops.request(Side::Driver);
        assert!(check(&stops, Trigger::Suspend, running).is_ok());
        assert!(check(&stops, Trigger::Suspend, suspended).is_ok());
        // Half an acknowledgement, either half.
        assert!(check(&stops, Trigger::Suspend, running | S_SUSPEND).is_err());
        assert!(check(&stops, Trigger::Suspend, running & !S_DRIVER_OK).is_err());
        assert!(check(&stops, Trigger::Suspend, running | S_STOPPED).is_err());
        stops.acknowledge(Side::Driver);
        assert!(check(&stops, Trigger::Suspend, suspended).is_ok());
        assert!(check(&stops, Trigger::Suspend, running).is_err());
        assert!(check(&stops, Trigger::StopBit, running | S_STOPPED).is_ok());
        assert!(check(&stops, Trigger::StopBit, suspended | S_STOPPED).is_err());
        assert!(
            check(
                &stops,
                Trigger::StopBit,
                (running & !S_DRIVER_OK) | S_STOPPED
            )
            .is_err()
        );
    }

    #[test]
    fn stop_state_holds_the_host_to_the_record() {
        let mut stops = Stops::default();
        let host = |stops: &Stops, s| stop_state(Trigger::Suspend, stops, 0, Some(s));
        assert!(host(&stops, StopState::Running).is_ok());
        assert!(host(&stops, StopState::Stopping).is_err());
        stops.request(Side::Host);
        assert!(host(&stops, StopState::Stopping).is_ok());
        assert!(host(&stops, StopState::Stopped).is_ok());
        assert!(host(&stops, StopState::Running).is_err());
        stops.acknowledge(Side::Host);
        stops.device_reset();
        assert!(host(&stops, StopState::Stopping).is_err());
        assert!(host(&stops, StopState::Running).is_err());
        assert!(stops.crossed);
        stops.resume(Side::Host);
        assert!(host(&stops, StopState::Stopped).is_err());
    }

    #[test]
    fn inuse_and_window_bounds() {
        assert!(inuse_bound(0, 4, 0, 4).is_ok());
        assert!(inuse_bound(0, 5, 0, 4).is_err());
        assert!(inuse_bound(0, 1, 0xffff, 4).is_ok());
        assert!(avail_window(0, 5, 4, (0, 0)).is_ok());
        assert!(avail_window(0, 5, 4, (0, 1)).is_err());
        assert!(avail_window(0, 4, 4, (0, 4)).is_ok());
    }
}
