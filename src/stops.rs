//! The harness's own record of the stops it asked for: driver stop and resume through the
//! program's trigger, host stop and resume, and what device resets and migrations do to
//! them. The device is judged against this record. What the device reports of its own stop
//! state is checked against it (`oracle::always::stop_state`), never trusted.

/// Where one stop stands in the harness's record.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Asked {
    /// Not asked for, or resumed since.
    #[default]
    Running,
    /// Asked for; the device has not yet presented the acknowledgement.
    Requested,
    /// The device presented the acknowledgement: it stays stopped until the harness
    /// resumes it, whatever it reports later.
    Acked,
}

/// One stop: where it stands, and how long its acknowledgement has been owed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stop {
    /// Where it stands.
    pub asked: Asked,
    /// Polls in a row that began and ended with the acknowledgement due, without it.
    pub overdue: u8,
}

impl Stop {
    /// Requested and not yet acknowledged.
    pub fn pending(&self) -> bool {
        self.asked == Asked::Requested
    }

    fn standing(&self) -> bool {
        self.asked != Asked::Running
    }

    fn acked() -> Stop {
        Stop {
            asked: Asked::Acked,
            overdue: 0,
        }
    }
}

/// Which stop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// The driver's, through the program's trigger.
    Driver,
    /// The host's, invisible to the guest.
    Host,
}

/// The stops the harness asked for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stops {
    /// The driver's stop.
    pub driver: Stop,
    /// The host's stop.
    pub host: Stop,
    /// The driver has written DRIVER_OK since the last device reset.
    pub live: bool,
    /// A stop stood across another lifecycle event: a device reset, a migration, or the
    /// other side's stop or resume.
    pub crossed: bool,
}

impl Stops {
    /// One side's stop.
    pub fn side(&mut self, side: Side) -> &mut Stop {
        match side {
            Side::Driver => &mut self.driver,
            Side::Host => &mut self.host,
        }
    }

    /// The harness asks for `side`'s stop; asking again changes nothing.
    pub fn request(&mut self, side: Side) {
        self.crossing(side);
        let stop = self.side(side);
        if !stop.standing() {
            stop.asked = Asked::Requested;
            stop.overdue = 0;
        }
    }

    /// The harness ends `side`'s stop, acknowledged or not.
    pub fn resume(&mut self, side: Side) {
        self.crossing(side);
        *self.side(side) = Stop::default();
    }

    /// The device presented `side`'s acknowledgement.
    pub fn acknowledge(&mut self, side: Side) {
        *self.side(side) = Stop::acked();
    }

    fn crossing(&mut self, side: Side) {
        let other = match side {
            Side::Driver => self.host,
            Side::Host => self.driver,
        };
        self.crossed |= other.standing();
    }

    /// Some stop is acknowledged: the device must be quiet.
    pub fn stopped(&self) -> bool {
        self.driver.asked == Asked::Acked || self.host.asked == Asked::Acked
    }

    /// Some stop is asked for: the device may not consume new buffers.
    pub fn requested(&self) -> bool {
        self.driver.standing() || self.host.standing()
    }

    /// Some stop waits for its acknowledgement.
    pub fn pending(&self) -> bool {
        self.driver.pending() || self.host.pending()
    }

    /// A device reset ends the driver's stop with everything else the driver set up; the
    /// host's stop is the VMM's and stands.
    pub fn device_reset(&mut self) {
        self.crossed |= self.host.standing();
        self.driver = Stop::default();
        self.live = false;
    }

    /// A migration begins: a stop standing now stands across it.
    pub fn migrating(&mut self) {
        self.crossed |= self.requested();
    }

    /// A device restored from a snapshot is host-stopped until the harness resumes it.
    pub fn restored(&mut self) {
        self.host = Stop::acked();
    }

    /// Restored from bytes the harness did not make: the bytes, not the harness, decided
    /// whether the driver's stop stands and whether the device is live.
    pub fn restored_from_bytes(&mut self, driver_stopped: bool, live: bool) {
        self.restored();
        self.driver = if driver_stopped {
            Stop::acked()
        } else {
            Stop::default()
        };
        self.live = live;
    }
}
