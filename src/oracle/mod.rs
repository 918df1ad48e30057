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
    NoPanic,
    WriteConfined,
    QuietWhenStopped,
    UsedMonotone,
    AvailWindow,
    InuseBound,
    RestoreRejects,
    ExactlyOnce,
    Data,
    Transparent,
    Parked,
    Contract,
    KickKept,
    Notify,
    Live,
    RoundTrip,
}

impl Invariant {
    pub const ALL: [Invariant; 16] = [
        Invariant::NoPanic,
        Invariant::WriteConfined,
        Invariant::QuietWhenStopped,
        Invariant::UsedMonotone,
        Invariant::AvailWindow,
        Invariant::InuseBound,
        Invariant::RestoreRejects,
        Invariant::ExactlyOnce,
        Invariant::Data,
        Invariant::Transparent,
        Invariant::Parked,
        Invariant::Contract,
        Invariant::KickKept,
        Invariant::Notify,
        Invariant::Live,
        Invariant::RoundTrip,
    ];

    pub fn id(self) -> &'static str {
        match self {
            Invariant::NoPanic => "no-panic",
            Invariant::WriteConfined => "write-confined",
            Invariant::QuietWhenStopped => "quiet-when-stopped",
            Invariant::UsedMonotone => "used-monotone",
            Invariant::AvailWindow => "avail-window",
            Invariant::InuseBound => "inuse-bound",
            Invariant::RestoreRejects => "restore-rejects",
            Invariant::ExactlyOnce => "exactly-once",
            Invariant::Data => "data",
            Invariant::Transparent => "transparent",
            Invariant::Parked => "parked",
            Invariant::Contract => "contract",
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
    pub invariant: Invariant,
    pub message: String,
}

pub type Check = Result<(), Violation>;

pub fn violation(invariant: Invariant, message: impl Into<String>) -> Violation {
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
