//! Which checks a device's capabilities leave without input. A check never passes because
//! it saw nothing: every one it cannot run is listed, with the reason, in the report.

use super::Invariant;
use crate::dut::{DiskControl, WriteObservation};

/// What a device offered a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Offered {
    pub writes: WriteObservation,
    pub disk: DiskControl,
    pub host: bool,
    pub migration: bool,
    pub introspection: bool,
    pub snapshot_inspection: bool,
    /// The program's driver stop trigger is among the offered features.
    pub driver_stop: bool,
    /// The device runs on its own time (another process).
    pub remote: bool,
    /// It injects the disk faults the program asks for ([`crate::dut::Capabilities::faults`]).
    pub faults: bool,
    /// Its error policy parks a failed request, for some error.
    pub parks: bool,
    /// Saving ends it ([`crate::dut::Capabilities::save_ends_device`]).
    pub save_ends: bool,
    /// It shows its ring positions at host stops only
    /// ([`crate::dut::Capabilities::queue_state_at_stops`]).
    pub positions_at_stops: bool,
}

/// A check, or the part of one, that could not run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Skip {
    /// The invariant not checked, in whole or in part.
    pub invariant: Invariant,
    /// Why it could not run.
    pub why: &'static str,
}

impl std::fmt::Display for Skip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.invariant, self.why)
    }
}

pub(crate) fn skipped(o: &Offered) -> Vec<Skip> {
    let mut out = Vec::new();
    let mut skip = |on: bool, invariant, why| {
        if on {
            out.push(Skip { invariant, why });
        }
    };
    use Invariant::*;
    let blind = o.writes == WriteObservation::Blind;
    skip(blind, WriteConfined, "guest writes are not observed");
    skip(blind, QuietWhenStopped, "guest writes are not observed");
    let external = o.disk == DiskControl::External;
    skip(external, QuietWhenStopped, "disk I/O is not observed");
    skip(
        external,
        ExactlyOnce,
        "disk I/O is not observed; used entries are",
    );
    let faultless = external && !o.faults;
    skip(faultless, Parked, "no disk fault can be injected");
    skip(
        faultless,
        Data,
        "no disk fault can be injected, so no error status",
    );
    // The reference takes each program's policy; a back-end declares one.
    skip(
        external && o.faults && !o.parks,
        Parked,
        "the back-end's declared error policy never parks a request",
    );
    let positions = if o.positions_at_stops {
        "between host stops: the device's ring positions are asked for only at host stops"
    } else {
        "the device shows no ring positions"
    };
    skip(!o.introspection, AvailWindow, positions);
    skip(!o.introspection, InuseBound, positions);
    skip(
        !o.introspection,
        QuietWhenStopped,
        "consuming while a stop is requested: the device shows no ring positions",
    );
    skip(
        !o.introspection,
        Contract,
        if o.positions_at_stops {
            "held requests: the device shows only their count, at host stops"
        } else {
            "the device shows no held requests"
        },
    );
    skip(!o.host, Transparent, "no host stop or resume");
    skip(!o.host, Contract, "host stops: no host control");
    skip(!o.host, StopState, "host stops: no host control");
    skip(!o.host, StopAcked, "host stops: no host control");
    skip(!o.migration, RoundTrip, "no save and restore");
    skip(
        o.migration && o.save_ends,
        RoundTrip,
        "saving ends the device (QEMU's source is left postmigrate), so the restored one is not saved again",
    );
    skip(!o.migration, RestoreRejects, "no save and restore");
    skip(
        o.migration && !o.snapshot_inspection,
        RestoreRejects,
        "saved state cannot be inspected",
    );
    skip(
        !o.driver_stop,
        Contract,
        "driver stops: trigger not offered",
    );
    skip(
        !o.driver_stop,
        KickKept,
        "driver stops: trigger not offered",
    );
    skip(
        o.remote,
        KickKept,
        "a remote device gets its kicks again when it resumes (vhost-user: every started ring; QEMU: the kicks held while the VM was paused)",
    );
    skip(
        !o.driver_stop,
        StopState,
        "driver stops: trigger not offered",
    );
    skip(
        !o.driver_stop,
        StopAcked,
        "driver stops: trigger not offered",
    );
    out.sort();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reference_skips_nothing_and_a_blind_remote_device_skips_its_gaps() {
        let full = Offered {
            writes: WriteObservation::Exact,
            disk: DiskControl::Harness,
            host: true,
            migration: true,
            introspection: true,
            snapshot_inspection: true,
            driver_stop: true,
            remote: false,
            faults: false,
            parks: true,
            save_ends: false,
            positions_at_stops: false,
        };
        assert!(skipped(&full).is_empty());
        let round_trip = |o: &Offered| {
            skipped(o)
                .iter()
                .any(|s| s.invariant == Invariant::RoundTrip)
        };
        assert!(round_trip(&Offered {
            save_ends: true,
            ..full
        }));
        let remote = Offered {
            writes: WriteObservation::Blind,
            introspection: false,
            ..full
        };
        let ids: Vec<Invariant> = skipped(&remote).iter().map(|s| s.invariant).collect();
        for i in [
            Invariant::WriteConfined,
            Invariant::QuietWhenStopped,
            Invariant::AvailWindow,
            Invariant::InuseBound,
            Invariant::Contract,
        ] {
            assert!(ids.contains(&i), "{i}");
        }
        assert!(!ids.contains(&Invariant::Notify));
        let reporting = Offered {
            disk: DiskControl::External,
            ..full
        };
        let data = |o: &Offered| skipped(o).iter().any(|s| s.invariant == Invariant::Data);
        assert!(data(&reporting), "no faults, no error status");
        assert!(!data(&Offered {
            faults: true,
            ..reporting
        }));
        let parked = skipped(&Offered {
            faults: true,
            parks: false,
            ..reporting
        });
        assert!(parked.iter().any(|s| s.invariant == Invariant::Parked));
    }
}
