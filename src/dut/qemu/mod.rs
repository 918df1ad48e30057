//! QEMU's own virtio-blk-pci as the device under test, with no guest OS: stopfuzz is the
//! guest's driver through QEMU's qtest protocol and the VMM's operator through QMP. Guest
//! RAM is stopfuzz's memfd, so rings and buffers are shared memory, and QEMU's real
//! block layer, error policies, drain on `stop` and `cont` run as in production.
//!
//! One job per module: [`firmware`] (the halting BIOS), [`qtest`] and [`qmp`] (the two
//! protocols), [`pci`] (bus, BARs, capabilities, MSI-X), [`machine`] (one QEMU process and
//! the virtio-pci transport), [`device`] (QEMU behind the [`Device`] boundary).
//!
//! Each worker keeps at most one idle QEMU for the next run with the same disk (faults,
//! speed) and queue count: a run that ends with QEMU running and nothing in flight resets
//! the device and hands it back; its image is zeroed when taken.

pub mod device;
pub mod firmware;
pub mod machine;
pub mod pci;
pub mod qmp;
pub mod qtest;

use std::cell::RefCell;
use std::rc::Rc;

use crate::backend::IoError;
use crate::contract::ErrorPolicy;
use crate::dut::vhost_user::DISK_SECTORS;
use crate::dut::vhost_user::link::Site;
use crate::dut::vhost_user::template::{Disk, SLOW_LATENCY_NS, policy_name};
use crate::dut::{Device, DeviceError, Known, Want};
use machine::{Config, Machine, QemuFault};

/// The QEMU binary run by default.
pub const QEMU: &str = "qemu-system-x86_64";

/// The serial number QEMU is given, which it answers GET_ID with: 20 bytes, so the whole
/// answer is defined.
pub const SERIAL: &str = "stopfuzz-qemu-blk-01";

/// How to run QEMU, and the error policies it is declared to have.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Qemu {
    /// The binary.
    pub binary: String,
    /// Extra arguments, appended.
    pub extra: Vec<String>,
    /// `(werror, rerror)` the model expects.
    pub declared: (ErrorPolicy, ErrorPolicy),
    /// `(werror, rerror)` QEMU is given: the declared ones, unless a bug is planted in the
    /// configuration.
    pub given: (ErrorPolicy, ErrorPolicy),
    /// A worker keeps its QEMU for the next run where that is sound.
    pub reuse: bool,
    /// Also drive QEMU into its known, documented deviations (docs/findings/qemu-*.md),
    /// which are otherwise avoided so that fuzzing gets past them.
    pub strict: bool,
}

impl Default for Qemu {
    fn default() -> Self {
        Qemu {
            binary: QEMU.into(),
            extra: Vec::new(),
            declared: (ErrorPolicy::Report, ErrorPolicy::Report),
            given: (ErrorPolicy::Report, ErrorPolicy::Report),
            reuse: true,
            strict: false,
        }
    }
}

impl Qemu {
    /// The GET_ID answer.
    pub fn device_id(&self) -> [u8; crate::virtio::ID_BYTES] {
        let mut id = [0u8; crate::virtio::ID_BYTES];
        id.copy_from_slice(&SERIAL.as_bytes()[..crate::virtio::ID_BYTES]);
        id
    }

    /// The deviations of QEMU's virtio-blk let pass (none with `strict`).
    pub fn known(&self) -> Known {
        if self.strict {
            return Known::default();
        }
        Known {
            get_id_unpadded: false,
            failed_read_len: true,
            busy_queue_reset: true,
        }
    }

    /// `werror,rerror` as QEMU takes them.
    pub fn policy_text(p: (ErrorPolicy, ErrorPolicy)) -> String {
        format!("{},{}", policy_name(p.0), policy_name(p.1))
    }
}

/// Parses `WERROR[,RERROR]` (`report`, `ignore`, `stop`, `enospc`); one value sets both.
pub fn parse_policy(text: &str) -> Result<(ErrorPolicy, ErrorPolicy), String> {
    let one = |p: &str| match p.trim() {
        "report" => Ok(ErrorPolicy::Report),
        "ignore" => Ok(ErrorPolicy::Ignore),
        "stop" => Ok(ErrorPolicy::Stop),
        "enospc" => Ok(ErrorPolicy::Enospc),
        _ => Err(format!(
            "unknown error policy {p:?}: QEMU's werror and rerror are report, ignore, stop or enospc"
        )),
    };
    match text.split_once(',') {
        Some((w, r)) => Ok((one(w)?, one(r)?)),
        None => {
            let p = one(text)?;
            Ok((p, p))
        }
    }
}

/// A bug planted in QEMU's configuration: QEMU is given other error policies than the
/// model expects of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Planted {
    /// Its name in `stopfuzz bench`.
    pub name: &'static str,
    /// `(werror, rerror)` the model expects.
    pub declared: (ErrorPolicy, ErrorPolicy),
    /// `(werror, rerror)` QEMU runs with.
    pub given: (ErrorPolicy, ErrorPolicy),
}

/// The configuration bugs `stopfuzz bench --device qemu` hunts.
pub const PLANTED: &[Planted] = {
    use ErrorPolicy::{Enospc, Ignore, Report, Stop};
    &[
        // Completes with IOERR what should park.
        Planted {
            name: "declared-stop-given-report",
            declared: (Stop, Stop),
            given: (Report, Report),
        },
        // Completes with OK what failed.
        Planted {
            name: "declared-report-given-ignore",
            declared: (Report, Report),
            given: (Ignore, Ignore),
        },
        // Parks on EIO, which enospc reports.
        Planted {
            name: "declared-enospc-given-stop",
            declared: (Enospc, Report),
            given: (Stop, Report),
        },
        // Reports what should be ignored.
        Planted {
            name: "declared-ignore-given-report",
            declared: (Ignore, Ignore),
            given: (Report, Report),
        },
        // Pauses the VM where the model expects a report.
        Planted {
            name: "declared-report-given-stop",
            declared: (Report, Report),
            given: (Stop, Stop),
        },
        // Reports EIO, where stop parks every error.
        Planted {
            name: "declared-stop-given-enospc",
            declared: (Stop, Report),
            given: (Enospc, Report),
        },
    ]
};

/// What a run's QEMU exposes beyond the disk: virtio-blk-pci properties chosen by the
/// program (its queue count and ring size, and [`Want::variant`]'s bits), so that the
/// driver meets QEMU with and without each feature.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Exposed {
    /// `num-queues`.
    pub queues: u16,
    /// `queue-size`: QEMU's largest ring, and what a queue reset brings a ring back to.
    pub queue_size: u16,
    /// `event_idx`: EVENT_IDX offered.
    pub event_idx: bool,
    /// `indirect_desc`: INDIRECT_DESC offered.
    pub indirect: bool,
    /// `request-merging`: adjacent requests merged into one I/O.
    pub merging: bool,
}

impl Exposed {
    /// Bit 0 takes EVENT_IDX away, bit 1 INDIRECT_DESC, bit 2 request merging; bit 3 keeps
    /// QEMU's default ring size (256) instead of the driver's (at least 4, as QEMU
    /// requires).
    pub fn of(want: &Want) -> Exposed {
        let bit = |n: u16| want.variant & (1 << n) != 0;
        Exposed {
            queues: want.queues.max(1),
            queue_size: if bit(3) {
                256
            } else {
                want.queue_size.clamp(4, 256)
            },
            event_idx: !bit(0),
            indirect: !bit(1),
            merging: !bit(2),
        }
    }

    fn props(&self) -> Vec<(String, String)> {
        let on = |b: bool| if b { "on" } else { "off" }.to_string();
        vec![
            ("num-queues".into(), self.queues.to_string()),
            ("queue-size".into(), self.queue_size.to_string()),
            ("event_idx".into(), on(self.event_idx)),
            ("indirect_desc".into(), on(self.indirect)),
            ("request-merging".into(), on(self.merging)),
        ]
    }
}

/// A worker's idle QEMU: the disk it serves and what it exposes.
struct Idle {
    qemu: &'static Qemu,
    site: Rc<Site>,
    exposed: Exposed,
    machine: Machine,
}

thread_local! {
    static IDLE: RefCell<Option<Idle>> = const { RefCell::new(None) };
}

fn give_back(qemu: &'static Qemu, site: Rc<Site>, machine: Machine, exposed: Exposed) {
    IDLE.with(|idle| {
        *idle.borrow_mut() = Some(Idle {
            qemu,
            site,
            exposed,
            machine,
        })
    });
}

/// Ends this thread's idle QEMU.
pub fn shutdown() {
    IDLE.with(|idle| idle.borrow_mut().take());
}

/// The command line's device properties and block graph for `disk`.
pub(super) fn config(
    qemu: &Qemu,
    site: &Site,
    exposed: Exposed,
    share: crate::memory::Share,
) -> Config {
    let errno = |e: IoError| match e {
        IoError::NoSpace => libc::ENOSPC,
        IoError::Io => libc::EIO,
    };
    Config {
        binary: qemu.binary.clone(),
        extra: qemu.extra.clone(),
        memory: share,
        image: site.image.clone(),
        faults: site
            .disk
            .faults
            .iter()
            .map(|f| QemuFault {
                write: f.write,
                sector: f.sector,
                errno: errno(f.error),
                once: false,
            })
            .collect(),
        slow: site.disk.slow.then_some(SLOW_LATENCY_NS),
        props: [
            ("werror".into(), policy_name(qemu.given.0).into()),
            ("rerror".into(), policy_name(qemu.given.1).into()),
            ("serial".into(), SERIAL.into()),
        ]
        .into_iter()
        .chain(exposed.props())
        .collect(),
        incoming: None,
    }
}

/// Builds QEMU's virtio-blk for one run: this worker's idle QEMU when it serves the same
/// disk, a fresh one otherwise.
pub fn build(qemu: &'static Qemu, want: &Want) -> Result<Box<dyn Device>, DeviceError> {
    let share = want
        .memory
        .ok_or_else(|| DeviceError::Build("QEMU needs memfd-backed guest memory".into()))?;
    let disk = Disk {
        sectors: DISK_SECTORS,
        faults: want.faults.clone(),
        // blkdebug needs a file under it: faults win over a slow disk.
        slow: want.slow && want.faults.is_empty(),
    };
    let exposed = Exposed::of(want);
    let idle = IDLE.with(|idle| idle.borrow_mut().take());
    let (site, machine) = match idle {
        Some(i) if std::ptr::eq(i.qemu, qemu) && i.site.disk == disk && i.exposed == exposed => {
            i.site.zero().map_err(DeviceError::Build)?;
            (i.site, i.machine)
        }
        _ => {
            let site = Site::new(disk).map_err(DeviceError::Build)?;
            let machine =
                Machine::start(&config(qemu, &site, exposed, share)).map_err(DeviceError::Build)?;
            (site, machine)
        }
    };
    let dev = device::QemuDevice::new(qemu, site, machine, want, share, exposed)
        .map_err(DeviceError::Build)?;
    Ok(Box::new(dev))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies_parse_as_qemu_spells_them() {
        assert_eq!(
            parse_policy("stop,report"),
            Ok((ErrorPolicy::Stop, ErrorPolicy::Report))
        );
        assert_eq!(
            parse_policy("enospc"),
            Ok((ErrorPolicy::Enospc, ErrorPolicy::Enospc))
        );
        assert!(parse_policy("auto").unwrap_err().contains("report, ignore"));
        let p = (ErrorPolicy::Ignore, ErrorPolicy::Stop);
        assert_eq!(parse_policy(&Qemu::policy_text(p)), Ok(p));
    }
}
