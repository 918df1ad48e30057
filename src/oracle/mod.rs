//! The invariants a correct device keeps, named after their ids in DESIGN.md. Each check
//! returns the violation it sees, with the expected and the observed values; the engine
//! calls them after every device call and every op, and stamps the step.
//!
//! `always` holds what no driver can excuse; `conforming` holds what a device owes a driver
//! that follows the spec; `skipped` lists what a device's capabilities leave unchecked.
//! Nothing here knows how the device under test is built.

pub mod always;
pub mod conforming;
pub mod skipped;

use std::fmt;

/// The invariants, by their stable ids.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Invariant {
    /// `no-panic`: a run does not panic.
    NoPanic,
    /// `write-confined`: the device writes only its used rings and the writable buffers of
    /// requests it holds.
    WriteConfined,
    /// `quiet-when-stopped`: from a stop request to resume, no buffer consumed; from the
    /// acknowledgement the harness saw to resume, no guest write, interrupt or disk I/O.
    QuietWhenStopped,
    /// `stop-state`: the device reports the stop state the harness's record of its requests
    /// implies, and presents each acknowledgement bit for bit as its trigger defines it.
    StopState,
    /// `used-monotone`: used idx moves forward by at most a ring per call, and each used id
    /// is a head the device holds.
    UsedMonotone,
    /// `avail-window`: with avail idx more than a ring ahead, nothing is consumed; a device
    /// needing reset stays quiet.
    AvailWindow,
    /// `inuse-bound`: `next_avail - next_used` never exceeds the ring size.
    InuseBound,
    /// `restore-rejects`: an accepted snapshot is consistent with guest memory and the
    /// destination.
    RestoreRejects,
    /// `exactly-once`: each published request runs and completes once, and never after a
    /// reset dropped it.
    ExactlyOnce,
    /// `data`: status, used length, read data and the disk are what the I/O and the error
    /// policy imply.
    Data,
    /// `transparent`: host stop, resume and migration change no status and send no
    /// interrupt.
    Transparent,
    /// `parked`: a parked request gets no used entry until a retry, and is never reported
    /// and retried.
    Parked,
    /// `contract`: at a stop acknowledgement the device holds what its in-flight policy
    /// says.
    Contract,
    /// `stop-acked`: a requested stop is acknowledged within a bounded number of polls once
    /// its contract allows it.
    StopAcked,
    /// `kick-kept`: buffers kicked while stopped run after resume without another kick.
    KickKept,
    /// `notify`: an interrupt exactly when the notification rules say, and on the first used
    /// update after initialization, reset or restore.
    Notify,
    /// `live`: every published request that no reset dropped completes, and the device never
    /// needs a reset.
    Live,
    /// `round-trip`: save, restore and save again give the same bytes.
    RoundTrip,
}

impl Invariant {
    /// Every invariant, the always-invariants first.
    pub const ALL: [Invariant; 18] = [
        Invariant::NoPanic,
        Invariant::WriteConfined,
        Invariant::QuietWhenStopped,
        Invariant::StopState,
        Invariant::UsedMonotone,
        Invariant::AvailWindow,
        Invariant::InuseBound,
        Invariant::RestoreRejects,
        Invariant::ExactlyOnce,
        Invariant::Data,
        Invariant::Transparent,
        Invariant::Parked,
        Invariant::Contract,
        Invariant::StopAcked,
        Invariant::KickKept,
        Invariant::Notify,
        Invariant::Live,
        Invariant::RoundTrip,
    ];

    /// The stable id a finding names.
    pub fn id(self) -> &'static str {
        match self {
            Invariant::NoPanic => "no-panic",
            Invariant::WriteConfined => "write-confined",
            Invariant::QuietWhenStopped => "quiet-when-stopped",
            Invariant::StopState => "stop-state",
            Invariant::UsedMonotone => "used-monotone",
            Invariant::AvailWindow => "avail-window",
            Invariant::InuseBound => "inuse-bound",
            Invariant::RestoreRejects => "restore-rejects",
            Invariant::ExactlyOnce => "exactly-once",
            Invariant::Data => "data",
            Invariant::Transparent => "transparent",
            Invariant::Parked => "parked",
            Invariant::Contract => "contract",
            Invariant::StopAcked => "stop-acked",
            Invariant::KickKept => "kick-kept",
            Invariant::Notify => "notify",
            Invariant::Live => "live",
            Invariant::RoundTrip => "round-trip",
        }
    }

    /// Whether it holds against any driver, hostile or not.
    pub fn is_always(self) -> bool {
        self <= Invariant::RestoreRejects
    }
}

impl fmt::Display for Invariant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.id())
    }
}

/// An invariant broken, with what was expected and what was seen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// The invariant broken.
    pub invariant: Invariant,
    /// What was expected and what was seen.
    pub message: String,
}

/// What a check returns: `Ok`, or the violation it saw.
pub type Check = Result<(), Violation>;

fn violation(invariant: Invariant, message: impl Into<String>) -> Violation {
    Violation {
        invariant,
        message: message.into(),
    }
}

/// `Err` with `message` unless `ok`.
fn ensure(ok: bool, invariant: Invariant, message: impl FnOnce() -> String) -> Check {
    if ok {
        Ok(())
    } else {
        Err(violation(invariant, message()))
    }
}
