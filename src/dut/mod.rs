//! The device boundary: everything the engine may do to a device under test, in the
//! harness's own types.
//!
//! A device implements [`Device`]: the transport a driver sees (status, features, queue
//! setup, kicks, events) and `poll`, which lets it run. Everything else is optional and
//! reached through an accessor that returns `None` when the device does not offer it: host
//! control, migration, setting a ring's start index, introspection of its rings, and
//! inspection of its saved state. [`Capabilities`] say how the harness can see the device's
//! guest-memory writes and whether it controls the device's disk I/O.
//!
//! The oracle uses whatever a device offers and lists every check it had to skip
//! (`oracle::skipped`); a check never passes because its input was missing.
//!
//! Implementations: [`reference`] (the in-process reference device), [`reduced`] (the
//! reference behind a wrapper that hides capabilities, standing in for a remote device) and
//! [`vhost_user`] (a front-end driving a back-end in another process). [`qemu`] drives
//! QEMU's own virtio-blk-pci through qtest and QMP; [`process`] owns the processes both
//! start.

pub mod process;
pub mod qemu;
pub mod reduced;
pub mod reference;
pub mod vhost_user;

use vm_memory::GuestMemoryMmap;

use crate::backend::{Backend, IoError};
use crate::contract::Contract;
use crate::memory::{Share, WriteLog};
use crate::program::MAX_QUEUES;

/// What a device reaches while it runs: guest memory, and the disk the harness controls.
/// A device that does its own I/O ([`DiskControl::External`]) leaves `disk` alone.
pub struct Env<'a> {
    /// Guest memory, with its write log.
    pub mem: &'a GuestMemoryMmap<WriteLog>,
    /// The harness's disk.
    pub disk: &'a mut dyn Backend,
}

/// What the harness asks a device to be built as. A device may not offer all of it; what
/// it really is comes back as its [`Description`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Want {
    /// Queues the program drives.
    pub queues: u16,
    /// Disk size in sectors.
    pub capacity: u64,
    /// The contract the program declares.
    pub contract: Contract,
    /// The guest memory, when another process can map it.
    pub memory: Option<Share>,
    /// Disk faults, for a device that does its own I/O and can inject them.
    pub faults: Vec<Fault>,
    /// A slow disk, so that requests are in flight across a stop.
    pub slow: bool,
    /// Break the transport protocol this way, for a device that can ([`Capabilities::abuse`]).
    pub abuse: Option<crate::program::Abuse>,
    /// The driver is the hostile one: it may do what no guest could, such as kick while
    /// the VM is paused.
    pub hostile: bool,
    /// The ring size the driver wants.
    pub queue_size: u16,
    /// Input bits a device may use to vary what it exposes: the program's start index,
    /// which only a device with a ring base uses (QEMU picks its properties with them).
    pub variant: u16,
}

/// A disk fault a device that does its own I/O is built with: every read (or write) that
/// touches `sector` fails with `error`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fault {
    /// Writes fail (else reads).
    pub write: bool,
    /// The sector, below the disk's capacity.
    pub sector: u64,
    /// How they fail.
    pub error: IoError,
}

impl std::fmt::Display for Fault {
    /// One line of a `{faults}` file: `write 12 enospc`, `read 3 eio`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = if self.write { "write" } else { "read" };
        let error = match self.error {
            IoError::NoSpace => "enospc",
            IoError::Io => "eio",
        };
        write!(f, "{kind} {} {error}", self.sector)
    }
}

impl std::str::FromStr for Fault {
    type Err = String;

    fn from_str(line: &str) -> Result<Fault, String> {
        let words: Vec<&str> = line.split_whitespace().collect();
        let [kind, sector, error] = words[..] else {
            return Err(format!(
                "{line:?}: a fault is `read|write SECTOR eio|enospc`"
            ));
        };
        let write = match kind {
            "write" => true,
            "read" => false,
            _ => return Err(format!("{line:?}: {kind:?} is neither read nor write")),
        };
        let sector = sector
            .parse()
            .map_err(|_| format!("{line:?}: {sector:?} is not a sector number"))?;
        let error = match error {
            "enospc" => IoError::NoSpace,
            "eio" => IoError::Io,
            _ => return Err(format!("{line:?}: {error:?} is neither eio nor enospc")),
        };
        Ok(Fault {
            write,
            sector,
            error,
        })
    }
}

/// The faults of a `{faults}` file: one per line, blank lines and `#` comments ignored.
pub fn parse_faults(text: &str) -> Result<Vec<Fault>, String> {
    text.lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter(|l| !l.is_empty())
        .map(str::parse)
        .collect()
}

/// What a device is, read from the device: the harness expects what this says, never what
/// it asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Description {
    /// Offered feature bits.
    pub features: u64,
    /// Queues it has.
    pub num_queues: u16,
    /// Largest queue size it takes.
    pub queue_max_size: u16,
    /// Disk size in sectors.
    pub capacity: u64,
    /// The GET_ID answer.
    pub device_id: [u8; crate::virtio::ID_BYTES],
    /// The contract the device keeps.
    pub contract: Contract,
    /// The disk faults it really injects.
    pub faults: Vec<Fault>,
    /// Leading bytes of the GET_ID answer the oracle compares: all of them, or fewer for a
    /// device with a known, documented deviation (docs/findings/) the user let pass.
    pub id_checked: usize,
    /// The disk keeps what is written. A latency-only disk does not: no data is checked.
    pub keeps_data: bool,
    /// The known, documented deviations the user lets pass.
    pub known: Known,
}

/// Known, documented deviations of a device (docs/findings/), which the harness lets pass
/// or steers around unless `--strict`, so that fuzzing gets past them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Known {
    /// GET_ID writes the ID string and its NUL but does not pad the rest of the 20 bytes
    /// (docs/findings/qsd-used-len-counts-unwritten-bytes.md): only up to the NUL is checked.
    pub get_id_unpadded: bool,
    /// A failed read's used len counts the data bytes it never wrote
    /// (docs/findings/qsd-used-len-counts-unwritten-bytes.md, qemu-used-len-counts-unwritten-bytes.md).
    pub failed_read_len: bool,
    /// A queue reset keeps the requests in flight from that queue, which later complete
    /// into the re-enabled queue (docs/findings/qemu-queue-reset-completes-dropped-request.md):
    /// the driver resets only queues with nothing in flight.
    pub busy_queue_reset: bool,
}

/// How the harness sees what a device writes to guest memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteObservation {
    /// Every write, byte-exact and in order (an in-process device on the logged memory).
    Exact,
    /// The bytes that changed between two points: a write of an unchanged value is invisible.
    Diff,
    /// Not at all.
    Blind,
}

/// Who does the device's disk I/O.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DiskControl {
    /// The device submits to the harness's disk ([`Env::disk`]), which completes or fails
    /// each I/O when the program says.
    Harness,
    /// The device does its own I/O on an image the harness can only read
    /// ([`Device::disk_image`]).
    External,
}

/// How the harness can watch the device under test.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capabilities {
    /// How its guest-memory writes are seen.
    pub writes: WriteObservation,
    /// Who does its disk I/O.
    pub disk: DiskControl,
    /// The same calls always give the same results. A remote device is not.
    pub deterministic: bool,
    /// It does its own I/O and injects the faults [`Want::faults`] asks for.
    pub faults: bool,
    /// A host resume restarts its rings without telling them which used index was last
    /// signalled (vhost-user: GET/SET_VRING_BASE carry only the ring position), so the
    /// first used update after a resume may notify although none is due.
    pub resume_forgets_signal: bool,
    /// It breaks its transport protocol as [`Want::abuse`] asks. From then on only what a
    /// device owes any driver is checked: that it neither crashes, hangs, nor writes where
    /// it must not. Refusing or disconnecting is its right.
    pub abuse: bool,
    /// Its interrupts are writes of guest RAM in [`DEVICE_PAGE`](crate::driver::layout::DEVICE_PAGE)
    /// (a PCI device's MSI-X messages, aimed at RAM so the harness sees them): counted as
    /// notifications, not judged as writes.
    pub interrupts_in_memory: bool,
    /// A host retry first removes the faults it injects, as a storage fix would (QEMU: its
    /// blkdebug layer is taken out of the block graph).
    pub heals: bool,
    /// A host stop pauses the guest too (QEMU's `stop`): while it lasts, a realistic driver
    /// neither touches the rings nor the device.
    pub stop_freezes_guest: bool,
    /// Saving ends the device (QEMU: a completed outgoing migration leaves the VM
    /// `postmigrate`), so a restored device is not saved again and `round-trip` is not
    /// checked.
    pub save_ends_device: bool,
    /// [`Device::queue_state`] answers, at host stops: the device's own ring positions,
    /// too dear to ask after every call (QEMU: a QMP round trip).
    pub queue_state_at_stops: bool,
}

/// A queue as the device counts it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueState {
    /// The next avail position it will fetch.
    pub next_avail: u16,
    /// Its used idx.
    pub next_used: u16,
    /// Requests it fetched and has not used.
    pub inuse: u32,
}

/// What a device signalled since the last [`Device::take_events`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Events {
    /// Used-buffer notifications, per queue.
    pub used: [u32; MAX_QUEUES],
    /// Configuration-change notifications.
    pub config: u32,
    /// Per queue, the used idx the notifications were counted up to, where the device may
    /// move it on its own (a running ring in another process): the call is judged at that
    /// index, and later entries go with a later call's notifications. `None`: read it.
    pub used_idx: [Option<u16>; MAX_QUEUES],
    /// The device paused the VM because a request failed (QEMU's `werror`/`rerror=stop`).
    pub io_error_pause: bool,
}

impl Events {
    /// Notifications of both kinds, on every queue.
    pub fn total(&self) -> u32 {
        self.used.iter().sum::<u32>() + self.config
    }

    /// Adds `other`'s counts to these.
    pub fn add(&mut self, other: Events) {
        for (a, b) in self.used.iter_mut().zip(other.used) {
            *a += b;
        }
        self.config += other.config;
        self.io_error_pause |= other.io_error_pause;
        for (a, b) in self.used_idx.iter_mut().zip(other.used_idx) {
            if b.is_some() {
                *a = b;
            }
        }
    }
}

/// How a device stopped working.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    /// What happened, with the back-end's stderr where there is one.
    pub why: String,
    /// It ended the connection itself (an exit, a disconnect, a libvhost-user `vu_panic`),
    /// rather than crashing (a signal, a Rust panic) or hanging: a refusal, which a hostile
    /// driver has earned.
    pub refused: bool,
}

/// Where a host stop stands, as the device reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopState {
    /// No stop requested.
    Running,
    /// Requested, not yet acknowledged.
    Stopping,
    /// Acknowledged: quiet until resumed.
    Stopped,
}

/// A popped request the device still holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Held {
    /// The queue it was popped from.
    pub queue: u16,
    /// The head of its descriptor chain.
    pub head: u16,
    /// Failed under a stop-class policy and waiting for a retry.
    pub parked: bool,
}

/// Why a device call failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DeviceError {
    /// The device refused, and said why (a save while running, a snapshot it rejects).
    #[error("{0}")]
    Refused(String),
    /// The device cannot be built as asked.
    #[error("cannot build the device: {0}")]
    Build(String),
}

/// The device under test. Object-safe: the engine holds a `Box<dyn Device>`.
pub trait Device {
    /// What the device is.
    fn describe(&self) -> Description;
    /// How the harness can watch it.
    fn capabilities(&self) -> Capabilities;

    /// The device status, as the driver reads it.
    fn read_status(&self) -> u8;
    /// A driver write of the device status; 0 resets the device.
    fn write_status(&mut self, value: u8);
    /// The features the driver takes, written before FEATURES_OK.
    fn set_driver_features(&mut self, features: u64);
    /// Sets queue `q`'s size, before it is enabled.
    fn queue_set_size(&mut self, q: u16, size: u16);
    /// Sets queue `q`'s descriptor table, avail ring and used ring addresses.
    fn queue_set_addresses(&mut self, q: u16, desc: u64, avail: u64, used: u64);
    /// Enables queue `q`.
    fn queue_enable(&mut self, q: u16);
    /// Virtqueue reset (`VIRTIO_F_RING_RESET`).
    fn queue_reset(&mut self, q: u16);
    /// A driver notification for queue `q`.
    fn kick(&mut self, q: u16);
    /// Lets the device run: take completions, consume kicked queues, notify.
    fn poll(&mut self, env: &mut Env);
    /// Takes what the device signalled since the last call.
    fn take_events(&mut self) -> Events;

    /// Host control, if the device offers it.
    fn host(&mut self) -> Option<&mut dyn HostControl> {
        None
    }
    /// Save and restore, if the device offers them.
    fn migration(&mut self) -> Option<&mut dyn Migration> {
        None
    }
    /// Queue `q` as the device counts it, if it shows that
    /// ([`Capabilities::queue_state_at_stops`]); asked while the host has it stopped.
    fn queue_state(&mut self, _q: u16) -> Option<QueueState> {
        None
    }
    /// Setting a ring's start index, if the device offers it.
    fn ring_base(&mut self) -> Option<&mut dyn RingBase> {
        None
    }
    /// The device's view of its rings, if it shows it.
    fn introspection(&self) -> Option<&dyn Introspection> {
        None
    }
    /// Decoding of its saved state, if it offers it.
    fn snapshot_inspection(&self) -> Option<&dyn SnapshotInspection> {
        None
    }
    /// The disk as the device left it, for [`DiskControl::External`].
    fn disk_image(&self) -> Option<Vec<u8>> {
        None
    }
    /// Why the device stopped working (a back-end process crashed, exited, panicked, hung
    /// or broke the connection), once: a `no-panic` finding, unless it refused a hostile
    /// driver.
    fn failure(&mut self) -> Option<Failure> {
        None
    }
}

/// The VMM's side: stops invisible to the guest, and retries after a storage fix.
pub trait HostControl {
    /// Requests a stop; the device acknowledges it once quiescent under its contract.
    fn stop(&mut self, env: &mut Env);
    /// Ends a host stop, acknowledged or not.
    fn resume(&mut self, env: &mut Env);
    /// The storage problem is fixed: retry parked requests (QEMU's `cont`).
    fn retry(&mut self, env: &mut Env);
    /// Where a host stop stands.
    fn stop_state(&mut self) -> StopState;
    /// Resets the whole machine the device is in (QEMU's `system_reset`), which resets the
    /// device as status 0 does and drops what it parked; the VMM then lets the VM run. Says
    /// whether it did; where it cannot, the harness resets the device with status 0.
    fn system_reset(&mut self, _env: &mut Env) -> bool {
        false
    }
}

/// Save a stopped device, and restore saved bytes into a fresh one.
pub trait Migration {
    /// The stopped device's state as bytes, or why it cannot be saved now.
    fn save(&mut self) -> Result<Vec<u8>, DeviceError>;
    /// A freshly built device like this one, restored from `bytes` over the same guest
    /// memory and disk, host-stopped until resumed.
    fn restore_fresh(
        &mut self,
        bytes: &[u8],
        env: &mut Env,
    ) -> Result<Box<dyn Device>, DeviceError>;
}

/// Sets a queue's start index between setting its addresses and enabling it (vhost-user's
/// SET_VRING_BASE): how a run starts near the 16-bit wrap.
pub trait RingBase {
    /// Starts queue `q`'s ring indices at `index`.
    fn set_base(&mut self, q: u16, index: u16);
}

/// The device's own view of its rings.
pub trait Introspection {
    /// `(next_avail, next_used)` of a queue.
    fn ring_position(&self, q: u16) -> Option<(u16, u16)>;
    /// Requests popped and not yet used, in fetch order.
    fn held(&self) -> Vec<Held>;
}

/// Saved bytes decoded into what the oracle checks an accepted restore against.
pub trait SnapshotInspection {
    /// Decodes `bytes`, or says why they are not a snapshot.
    fn inspect(&self, bytes: &[u8]) -> Result<SavedState, DeviceError>;
}

/// A saved device, as far as the oracle needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SavedState {
    /// The device status.
    pub status: u8,
    /// The features the driver wrote.
    pub driver_features: u64,
    /// Each queue's state.
    pub queues: Vec<SavedQueue>,
    /// Held requests, by queue and head.
    pub held: Vec<(u16, u16)>,
}

/// A queue as saved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SavedQueue {
    /// Entries in the ring.
    pub size: u16,
    /// The queue is enabled.
    pub ready: bool,
    /// Where the descriptor table is.
    pub desc: u64,
    /// Where the avail ring is.
    pub avail: u64,
    /// Where the used ring is.
    pub used: u64,
    /// The next avail entry the device reads.
    pub next_avail: u16,
    /// The next used entry the device writes.
    pub next_used: u16,
}

/// Builds devices under test, one per run.
pub trait Factory {
    /// A device built as `want` asks, or why it cannot be.
    fn build(&self, want: &Want) -> Result<Box<dyn Device>, DeviceError>;
}

impl<F: Fn(&Want) -> Result<Box<dyn Device>, DeviceError>> Factory for F {
    fn build(&self, want: &Want) -> Result<Box<dyn Device>, DeviceError> {
        self(want)
    }
}

/// The devices `stopfuzz` can run against.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DeviceKind {
    /// The in-process reference device.
    #[default]
    Reference,
    /// The reference device with these capabilities hidden.
    Reduced(reduced::Hidden),
    /// A vhost-user back-end started from this template.
    VhostUser(&'static vhost_user::Template),
    /// QEMU's virtio-blk-pci, run as this says.
    Qemu(&'static qemu::Qemu),
}

impl Factory for DeviceKind {
    fn build(&self, want: &Want) -> Result<Box<dyn Device>, DeviceError> {
        Ok(match *self {
            DeviceKind::Reference => reference::build(want)?,
            DeviceKind::Reduced(hidden) => {
                Box::new(reduced::Reduced::new(reference::build(want)?, hidden))
            }
            DeviceKind::VhostUser(template) => vhost_user::build(template, want)?,
            DeviceKind::Qemu(q) => qemu::build(q, want)?,
        })
    }
}

impl std::fmt::Display for DeviceKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeviceKind::Reference => f.write_str("reference"),
            DeviceKind::Reduced(hidden) => write!(f, "reduced({hidden})"),
            DeviceKind::VhostUser(t) => write!(f, "vhost-user({})", t.text),
            DeviceKind::Qemu(q) => write!(
                f,
                "qemu({}, werror,rerror={})",
                q.binary,
                qemu::Qemu::policy_text(q.declared)
            ),
        }
    }
}
