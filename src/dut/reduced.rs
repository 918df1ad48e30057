//! The reference device behind a wrapper that hides capabilities, as a device in another
//! process would: no introspection, writes seen only as a memory diff, disk I/O done by the
//! device itself, no snapshot inspection. Running the engine on it proves that every check
//! either works from outside or is reported as skipped.

use std::fmt;

use super::{
    Capabilities, Description, Device, DeviceError, DiskControl, Env, Events, HostControl,
    Introspection, Migration, RingBase, SnapshotInspection, StopState, WriteObservation,
};
use crate::backend::MemDisk;

/// Which capabilities the wrapper hides.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Hidden {
    /// The rings and held requests are not shown.
    pub introspection: bool,
    /// Writes are seen as a memory diff instead of the exact log.
    pub exact_writes: bool,
    /// The device does its own disk I/O; the harness only reads the image.
    pub disk_control: bool,
    /// Saved state cannot be decoded.
    pub snapshot_inspection: bool,
}

impl Hidden {
    /// Every capability hidden.
    pub const ALL: Hidden = Hidden {
        introspection: true,
        exact_writes: true,
        disk_control: true,
        snapshot_inspection: true,
    };

    /// The names `--hide` takes, each with its flag.
    pub const NAMES: [&'static str; 4] = [
        "introspection",
        "exact-writes",
        "disk-control",
        "snapshot-inspection",
    ];

    /// `introspection,exact-writes,...`, or `all`.
    pub fn parse(s: &str) -> Result<Hidden, String> {
        if s == "all" {
            return Ok(Hidden::ALL);
        }
        let mut hidden = Hidden::default();
        for name in s.split(',').filter(|n| !n.is_empty()) {
            match name {
                "introspection" => hidden.introspection = true,
                "exact-writes" => hidden.exact_writes = true,
                "disk-control" => hidden.disk_control = true,
                "snapshot-inspection" => hidden.snapshot_inspection = true,
                _ => {
                    return Err(format!(
                        "unknown capability {name:?}; expected all or a comma-separated list of {}",
                        Hidden::NAMES.join(", ")
                    ));
                }
            }
        }
        Ok(hidden)
    }

    /// The hidden capabilities as `--hide` takes them.
    pub fn names(&self) -> String {
        let names: Vec<&str> = Hidden::NAMES
            .iter()
            .zip(self.flags())
            .filter(|(_, on)| *on)
            .map(|(n, _)| *n)
            .collect();
        names.join(",")
    }

    fn flags(&self) -> [bool; 4] {
        [
            self.introspection,
            self.exact_writes,
            self.disk_control,
            self.snapshot_inspection,
        ]
    }
}

impl fmt::Display for Hidden {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.names() {
            n if n.is_empty() => f.write_str("nothing hidden"),
            n => write!(f, "hidden: {n}"),
        }
    }
}

/// A device with the capabilities [`Hidden`] names taken away.
pub struct Reduced {
    inner: Box<dyn Device>,
    hidden: Hidden,
    /// The device's own disk, when it does its own I/O: every I/O completes at once.
    disk: MemDisk,
}

impl Reduced {
    /// Wraps `inner`, hiding `hidden`.
    pub fn new(inner: Box<dyn Device>, hidden: Hidden) -> Self {
        let disk = MemDisk::new(inner.describe().capacity);
        Reduced {
            inner,
            hidden,
            disk,
        }
    }

    /// Runs `f` with the environment the inner device should see.
    fn with_env<R>(&mut self, env: &mut Env, f: impl FnOnce(&mut dyn Device, &mut Env) -> R) -> R {
        if self.hidden.disk_control {
            let mut own = Env {
                mem: env.mem,
                disk: &mut self.disk,
            };
            f(self.inner.as_mut(), &mut own)
        } else {
            f(self.inner.as_mut(), env)
        }
    }

    fn complete_own_io(&mut self) {
        let tags: Vec<u64> = self.disk.outstanding().map(|(t, _)| t).collect();
        for tag in tags {
            self.disk.complete(tag);
        }
    }
}

impl Device for Reduced {
    fn describe(&self) -> Description {
        self.inner.describe()
    }

    fn capabilities(&self) -> Capabilities {
        let inner = self.inner.capabilities();
        Capabilities {
            writes: if self.hidden.exact_writes {
                WriteObservation::Diff
            } else {
                inner.writes
            },
            disk: if self.hidden.disk_control {
                DiskControl::External
            } else {
                inner.disk
            },
            deterministic: inner.deterministic,
            faults: false,
            resume_forgets_signal: inner.resume_forgets_signal,
            interrupts_in_memory: inner.interrupts_in_memory,
            heals: inner.heals,
            stop_freezes_guest: inner.stop_freezes_guest,
            save_ends_device: inner.save_ends_device,
            queue_state_at_stops: inner.queue_state_at_stops,
            abuse: inner.abuse,
        }
    }

    fn read_status(&self) -> u8 {
        self.inner.read_status()
    }

    fn write_status(&mut self, value: u8) {
        self.inner.write_status(value)
    }

    fn set_driver_features(&mut self, features: u64) {
        self.inner.set_driver_features(features)
    }

    fn queue_set_size(&mut self, q: u16, size: u16) {
        self.inner.queue_set_size(q, size)
    }

    fn queue_set_addresses(&mut self, q: u16, desc: u64, avail: u64, used: u64) {
        self.inner.queue_set_addresses(q, desc, avail, used)
    }

    fn queue_enable(&mut self, q: u16) {
        self.inner.queue_enable(q)
    }

    fn queue_reset(&mut self, q: u16) {
        self.inner.queue_reset(q)
    }

    fn kick(&mut self, q: u16) {
        self.inner.kick(q)
    }

    /// With its own disk, the device's I/O from one poll has completed by the next: one
    /// inner poll per call, so each call is still one notification decision.
    fn poll(&mut self, env: &mut Env) {
        if self.hidden.disk_control {
            self.complete_own_io();
        }
        self.with_env(env, |d, env| d.poll(env));
    }

    fn take_events(&mut self) -> Events {
        self.inner.take_events()
    }

    fn host(&mut self) -> Option<&mut dyn HostControl> {
        self.inner.host()?;
        Some(self)
    }

    fn migration(&mut self) -> Option<&mut dyn Migration> {
        self.inner.migration()?;
        Some(self)
    }

    fn ring_base(&mut self) -> Option<&mut dyn RingBase> {
        self.inner.ring_base()
    }

    fn introspection(&self) -> Option<&dyn Introspection> {
        if self.hidden.introspection {
            None
        } else {
            self.inner.introspection()
        }
    }

    fn snapshot_inspection(&self) -> Option<&dyn SnapshotInspection> {
        if self.hidden.snapshot_inspection {
            None
        } else {
            self.inner.snapshot_inspection()
        }
    }

    fn failure(&mut self) -> Option<crate::dut::Failure> {
        self.inner.failure()
    }

    fn disk_image(&self) -> Option<Vec<u8>> {
        if self.hidden.disk_control {
            Some(self.disk.image().to_vec())
        } else {
            self.inner.disk_image()
        }
    }
}

impl HostControl for Reduced {
    fn stop(&mut self, env: &mut Env) {
        self.with_env(env, |d, env| {
            if let Some(h) = d.host() {
                h.stop(env)
            }
        })
    }

    fn resume(&mut self, env: &mut Env) {
        self.with_env(env, |d, env| {
            if let Some(h) = d.host() {
                h.resume(env)
            }
        })
    }

    fn retry(&mut self, env: &mut Env) {
        self.with_env(env, |d, env| {
            if let Some(h) = d.host() {
                h.retry(env)
            }
        })
    }

    fn stop_state(&mut self) -> StopState {
        self.inner
            .host()
            .map_or(StopState::Running, |h| h.stop_state())
    }
}

impl Migration for Reduced {
    fn save(&mut self) -> Result<Vec<u8>, DeviceError> {
        match self.inner.migration() {
            Some(m) => m.save(),
            None => Err(DeviceError::Refused("no migration".into())),
        }
    }

    /// The fresh device gets a copy of this one's disk: a saved device has no I/O running,
    /// so the copy is the disk as it stands.
    fn restore_fresh(
        &mut self,
        bytes: &[u8],
        env: &mut Env,
    ) -> Result<Box<dyn Device>, DeviceError> {
        let hidden = self.hidden;
        let disk = self.disk.clone();
        let inner = self.with_env(env, |d, env| match d.migration() {
            Some(m) => m.restore_fresh(bytes, env),
            None => Err(DeviceError::Refused("no migration".into())),
        })?;
        Ok(Box::new(Reduced {
            inner,
            hidden,
            disk,
        }))
    }
}
