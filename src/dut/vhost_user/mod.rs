//! A vhost-user front-end: the device under test is a back-end in another process, started
//! by stopfuzz from a command template, sharing guest memory through a memfd.
//!
//! One job per module: [`template`] (the command and what the back-end promises),
//! [`process`](crate::dut::process) (starting and ending back-end processes), [`link`] (one process and the
//! connection to it), [`device`] (the front-end behind the [`Device`](crate::dut::Device)
//! boundary).
//!
//! With [`Template::reuse`] (`--reuse-backend`), each worker keeps at most one idle
//! back-end: a run that ends with the back-end alive, every ring stopped and nothing in
//! flight hands it back, and the next run with the same disk (faults, speed) takes it,
//! with its image zeroed. Anything else ends it. Off by default (README).

pub mod device;
pub mod link;
pub mod template;

use std::cell::RefCell;
use std::rc::Rc;

use crate::dut::{Device, DeviceError, Want};
use link::{Link, Site};
use template::Disk;
pub use template::Template;

/// The size of every vhost-user disk image, in sectors: the largest a program asks for.
pub const DISK_SECTORS: u64 = 64;

/// A back-end process with its disk: what a worker keeps between runs.
pub(crate) struct Backend {
    site: Rc<Site>,
    link: Link,
}

thread_local! {
    /// This worker's idle back-end, with the template it was started from.
    static IDLE: RefCell<Option<(&'static Template, Backend)>> = const { RefCell::new(None) };
}

fn give_back(template: &'static Template, backend: Backend) {
    IDLE.with(|idle| *idle.borrow_mut() = Some((template, backend)));
}

/// Builds a front-end device on a back-end from `template`: this worker's idle one when it
/// serves the same disk, a fresh one otherwise.
pub fn build(template: &'static Template, want: &Want) -> Result<Box<dyn Device>, DeviceError> {
    let share = want.memory.ok_or_else(|| {
        DeviceError::Build("a vhost-user device needs memfd-backed guest memory".into())
    })?;
    // One size for every run, so a worker's back-end serves the next run too: the size is
    // fixed when the back-end starts. The driver uses what the device describes.
    let disk = Disk {
        sectors: DISK_SECTORS,
        faults: if template.injects() {
            want.faults.clone()
        } else {
            Vec::new()
        },
        slow: want.slow && template.slows(),
    };
    let idle = IDLE.with(|idle| idle.borrow_mut().take());
    let backend = match idle {
        // A hostile front-end negotiates differently: it gets a fresh back-end.
        Some((t, b))
            if std::ptr::eq(t, template) && b.site.disk == disk && want.abuse.is_none() =>
        {
            b.site.zero().map_err(DeviceError::Build)?;
            b
        }
        _ => {
            let site = Site::new(disk).map_err(DeviceError::Build)?;
            let inflight = want.abuse == Some(crate::program::Abuse::InflightDisagrees);
            let link = Link::open(template, &site, inflight).map_err(DeviceError::Build)?;
            Backend { site, link }
        }
    };
    Ok(Box::new(device::VhostUser::new(
        template, backend, want, share,
    )?))
}

/// Ends this thread's idle back-end. The main thread's is not dropped at exit: a command
/// calls this, then [`process::end_all`](crate::dut::process::end_all) for anything a panic may have left registered.
pub fn shutdown() {
    IDLE.with(|idle| idle.borrow_mut().take());
}
