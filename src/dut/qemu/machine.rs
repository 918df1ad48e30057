//! One QEMU process with a virtio-blk-pci device and no guest OS, and the virtio-pci modern
//! transport driven through it: the layer a device under test sits on.
//!
//! Guest RAM is stopfuzz's own memfd ([`Config::memory`]), so QEMU's DMA lands in
//! stopfuzz's mapping and rings written there need no qtest writes. Registers are reached
//! through qtest MMIO; run state, error policy, introspection and migration through QMP.

use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::firmware;
use super::pci::{self, Layout};
use super::qmp::Qmp;
use super::qtest::Qtest;
use crate::dut::process::{Process, Scratch, SpawnError, Watch};

/// How long QEMU may take to connect its qtest socket and open its QMP socket.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a migration (save or load) may take.
const MIGRATE_TIMEOUT: Duration = Duration::from_secs(10);
/// The QOM path of the virtio-blk device's virtio backend.
pub const VIRTIO_PATH: &str = "/machine/peripheral/vblk/virtio-backend";

/// Common configuration register offsets (virtio 1.2, 4.1.4.3).
mod common {
    pub const DEVICE_FEATURE_SELECT: u64 = 0x00;
    pub const DEVICE_FEATURE: u64 = 0x04;
    pub const DRIVER_FEATURE_SELECT: u64 = 0x08;
    pub const DRIVER_FEATURE: u64 = 0x0c;
    pub const CONFIG_MSIX_VECTOR: u64 = 0x10;
    pub const NUM_QUEUES: u64 = 0x12;
    pub const DEVICE_STATUS: u64 = 0x14;
    pub const QUEUE_SELECT: u64 = 0x16;
    pub const QUEUE_SIZE: u64 = 0x18;
    pub const QUEUE_MSIX_VECTOR: u64 = 0x1a;
    pub const QUEUE_ENABLE: u64 = 0x1c;
    pub const QUEUE_NOTIFY_OFF: u64 = 0x1e;
    pub const QUEUE_DESC: u64 = 0x20;
    pub const QUEUE_DRIVER: u64 = 0x28;
    pub const QUEUE_DEVICE: u64 = 0x30;
    pub const QUEUE_RESET: u64 = 0x3a;
}

/// What to start.
#[derive(Clone, Debug)]
pub struct Config {
    /// The QEMU binary (default `qemu-system-x86_64`).
    pub binary: String,
    /// Extra QEMU arguments, appended after stopfuzz's own.
    pub extra: Vec<String>,
    /// Guest RAM: QEMU maps this memfd as all of its RAM.
    pub memory: crate::memory::Share,
    /// The raw disk image (it exists; stopfuzz owns it).
    pub image: PathBuf,
    /// blkdebug rules; empty: no blkdebug node.
    pub faults: Vec<QemuFault>,
    /// `Some(ns)`: instead of the image, a null-co disk of the image's size with this
    /// latency per request, reading zeroes and keeping nothing.
    pub slow: Option<u64>,
    /// virtio-blk-pci properties (`werror`, `rerror`, `num-queues`, `queue-size`, ...).
    pub props: Vec<(String, String)>,
    /// Start with `-incoming defer` and load this migration file before anything else.
    pub incoming: Option<PathBuf>,
}

impl Config {
    /// A machine on `memory` and `image` with the defaults: `qemu-system-x86_64`, no extra
    /// arguments, no faults, the image itself (not slow), no device properties, not
    /// incoming.
    pub fn new(memory: crate::memory::Share, image: PathBuf) -> Config {
        Config {
            binary: "qemu-system-x86_64".into(),
            extra: Vec::new(),
            memory,
            image,
            faults: Vec::new(),
            slow: None,
            props: Vec::new(),
            incoming: None,
        }
    }
}

/// One blkdebug rule: requests of that direction covering `sector` fail with `errno`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QemuFault {
    /// Writes (else reads).
    pub write: bool,
    /// A sector the failing request covers.
    pub sector: u64,
    /// 5 (EIO) or 28 (ENOSPC).
    pub errno: i32,
    /// Fail only the first matching request.
    pub once: bool,
}

/// What `x-query-virtio-queue-status` says about a queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueStatus {
    /// The next avail entry the device will take.
    pub last_avail_idx: u16,
    /// The device's used idx.
    pub used_idx: u16,
    /// The used idx when the device last interrupted.
    pub signalled_used: u16,
    /// Requests taken and not yet completed.
    pub inuse: u32,
}

/// Choices about how a machine is started that [`Config`] leaves at their defaults.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tuning {
    /// Set the migration capability `x-ignore-shared`, so that the shared guest RAM is not
    /// written to (or read from) the migration stream: both ends map the same memfd. Must be
    /// the same on both ends.
    pub ignore_shared: bool,
}

impl Default for Tuning {
    fn default() -> Tuning {
        Tuning {
            ignore_shared: true,
        }
    }
}

/// A running QEMU with the virtio-blk-pci device, its PCI side set up. Ended when dropped.
#[derive(Debug)]
pub struct Machine {
    qtest: Qtest,
    qmp: Qmp,
    pci: Layout,
    /// Each queue's notify address, once looked up.
    notify: Vec<Option<u64>>,
    argv: Vec<String>,
    tuning: Tuning,
    process: Process,
    // Dropped last: the process's stderr log and the sockets are in it.
    _scratch: Scratch,
}

/// `path` as a QEMU option value: commas doubled.
fn escape(path: &Path) -> Result<String, String> {
    let s = path
        .to_str()
        .ok_or_else(|| format!("path {} is not UTF-8", path.display()))?;
    Ok(s.replace(',', ",,"))
}

/// The QEMU command line for `cfg`, with its files in `scratch`.
fn command(cfg: &Config, scratch: &Scratch) -> Result<Vec<String>, String> {
    let mem = cfg.memory;
    if mem.size == 0 || !mem.size.is_multiple_of(4096) {
        return Err(format!(
            "guest RAM size {:#x} is not a non-zero multiple of 4096",
            mem.size
        ));
    }
    if mem.fd < 0 {
        return Err(format!("guest RAM fd {} is not a file descriptor", mem.fd));
    }
    if cfg.binary.is_empty() {
        return Err("the QEMU binary is empty".into());
    }
    let image_size = std::fs::metadata(&cfg.image)
        .map_err(|e| format!("disk image {}: {e}", cfg.image.display()))?
        .len();
    let mut argv: Vec<String> = vec![cfg.binary.clone()];
    let mut push = |a: &[&str]| argv.extend(a.iter().map(|s| s.to_string()));
    push(&["-machine", "q35,memory-backend=ram0"]);
    push(&[
        "-object",
        &format!(
            "memory-backend-file,id=ram0,size={},mem-path=/proc/{}/fd/{},share=on",
            mem.size,
            std::process::id(),
            mem.fd
        ),
    ]);
    push(&["-m", &format!("{}B", mem.size)]);
    push(&["-accel", "tcg", "-S", "-nodefaults", "-display", "none"]);
    push(&["-bios", &escape(&scratch.join("bios.bin"))?]);
    push(&[
        "-qtest",
        &format!("unix:{}", escape(&scratch.join("qtest.sock"))?),
        "-qtest-log",
        "/dev/null",
    ]);
    push(&[
        "-qmp",
        &format!(
            "unix:{},server=on,wait=off",
            escape(&scratch.join("qmp.sock"))?
        ),
    ]);
    if let Some(ns) = cfg.slow {
        if !cfg.faults.is_empty() {
            return Err("a slow (null-co) disk cannot have blkdebug faults".into());
        }
        if image_size == 0 {
            return Err("a slow disk takes the image's size, and the image is empty".into());
        }
        push(&[
            "-blockdev",
            &format!(
                "driver=null-co,node-name=d0,size={image_size},latency-ns={ns},read-zeroes=on"
            ),
        ]);
    } else {
        push(&[
            "-blockdev",
            &format!("driver=file,filename={},node-name=f0", escape(&cfg.image)?),
        ]);
        let mut file = "f0";
        if !cfg.faults.is_empty() {
            let mut bd = "driver=blkdebug,node-name=bd,image=f0".to_string();
            for (i, f) in cfg.faults.iter().enumerate() {
                if f.errno != 5 && f.errno != 28 {
                    return Err(format!(
                        "fault errno {} is neither 5 (EIO) nor 28 (ENOSPC)",
                        f.errno
                    ));
                }
                // The event only arms the rule; iotype says which requests it fails
                // (without it, a rule armed by the first write also fails reads).
                let (event, iotype) = if f.write {
                    ("write_aio", "write")
                } else {
                    ("read_aio", "read")
                };
                let once = if f.once { "on" } else { "off" };
                bd.push_str(&format!(
                    ",inject-error.{i}.event={event},inject-error.{i}.iotype={iotype},inject-error.{i}.errno={},inject-error.{i}.sector={},inject-error.{i}.once={once}",
                    f.errno, f.sector
                ));
            }
            push(&["-blockdev", &bd]);
            file = "bd";
        }
        push(&["-blockdev", &format!("driver=raw,file={file},node-name=d0")]);
    }
    let mut dev = "virtio-blk-pci,id=vblk,drive=d0,disable-legacy=on".to_string();
    for (k, v) in &cfg.props {
        let bad = |s: &str| s.is_empty() || s.contains([',', '=', '\n']);
        if bad(k) || v.contains([',', '\n']) || v.is_empty() {
            return Err(format!("bad virtio-blk-pci property {k:?}={v:?}"));
        }
        dev.push_str(&format!(",{k}={v}"));
    }
    push(&["-device", &dev]);
    if cfg.incoming.is_some() {
        push(&["-incoming", "defer"]);
    }
    argv.extend(cfg.extra.iter().cloned());
    Ok(argv)
}

impl Machine {
    /// Starts QEMU for `cfg` and sets up its PCI side: BARs placed, memory and bus master
    /// on, MSI-X enabled. With [`Config::incoming`], loads the migration first and only
    /// reads the PCI configuration it brought. The device status is left alone.
    pub fn start(cfg: &Config) -> Result<Machine, String> {
        Self::start_tuned(cfg, Tuning::default())
    }

    /// Like [`start`](Self::start), with non-default [`Tuning`].
    pub fn start_tuned(cfg: &Config, tuning: Tuning) -> Result<Machine, String> {
        let scratch = Scratch::new("qemu").map_err(|e| e.to_string())?;
        firmware::write(&scratch.join("bios.bin"))?;
        let argv = command(cfg, &scratch)?;
        let qtest_path = scratch.join("qtest.sock");
        let qmp_path = scratch.join("qmp.sock");
        let listener = UnixListener::bind(&qtest_path)
            .map_err(|e| format!("cannot listen on {}: {e}", qtest_path.display()))?;
        let mut process = Process::spawn_watched(Watch::QEMU, &argv, &scratch, &qmp_path).map_err(
            |e| match e {
                SpawnError::Exited { status, stderr } => {
                    format!("QEMU exited at start ({status}); its stderr:\n{stderr}")
                }
                SpawnError::NoSocket { secs, stderr, .. } => {
                    format!(
                        "QEMU did not open its QMP socket within {secs} s; its stderr:\n{stderr}"
                    )
                }
                e => format!("cannot start QEMU: {e}"),
            },
        )?;
        let qtest = Qtest::accept(&listener, START_TIMEOUT, || process.death())
            .map_err(|e| exit_reason(&mut process, e))?;
        drop(listener);
        let qmp = Qmp::connect(&qmp_path, START_TIMEOUT, || process.death())
            .map_err(|e| exit_reason(&mut process, e))?;
        let mut m = Machine {
            qtest,
            qmp,
            pci: Layout::default(),
            notify: Vec::new(),
            argv,
            tuning,
            process,
            _scratch: scratch,
        };
        m.set_ignore_shared()?;
        m.pci = match &cfg.incoming {
            Some(file) => {
                m.migrate_in(file)?;
                pci::discover(&mut m.qtest)
            }
            None => pci::setup(&mut m.qtest),
        }
        .map_err(|e| exit_reason(&mut m.process, e))?;
        Ok(m)
    }

    fn set_ignore_shared(&mut self) -> Result<(), String> {
        if self.tuning.ignore_shared {
            self.qmp(
                "migrate-set-capabilities",
                json!({"capabilities": [{"capability": "x-ignore-shared", "state": true}]}),
            )?;
        }
        Ok(())
    }

    fn migrate_in(&mut self, file: &Path) -> Result<(), String> {
        let uri = format!(
            "file:{}",
            file.to_str().ok_or("migration file path is not UTF-8")?
        );
        self.qmp("migrate-incoming", json!({"uri": uri}))?;
        self.await_migration("incoming")
    }

    /// Polls `query-migrate` until it completes (bounded).
    fn await_migration(&mut self, what: &str) -> Result<(), String> {
        let start = Instant::now();
        loop {
            let q = self.qmp("query-migrate", Value::Null)?;
            match q.get("status").and_then(Value::as_str) {
                Some("completed") => return Ok(()),
                Some("failed") | Some("cancelled") => {
                    let desc = q.get("error-desc").and_then(Value::as_str).unwrap_or("");
                    return Err(self.with_death(format!("{what} migration failed: {desc}")));
                }
                _ => {}
            }
            if start.elapsed() > MIGRATE_TIMEOUT {
                return Err(format!(
                    "{what} migration not completed within {} s: {q}",
                    MIGRATE_TIMEOUT.as_secs()
                ));
            }
            std::thread::sleep(Duration::from_micros(500));
        }
    }

    /// Adds why QEMU died, if it did, to `e`.
    fn with_death(&mut self, e: String) -> String {
        match self.process.death() {
            Some(d) => format!("{e}; {d}"),
            None => e,
        }
    }

    /// The exact command line QEMU was started with.
    pub fn argv(&self) -> &[String] {
        &self.argv
    }

    /// The scratch directory (firmware, sockets, stderr log), removed on drop.
    pub fn scratch_dir(&self) -> &Path {
        self._scratch.path()
    }

    /// The PCI layout.
    pub fn layout(&self) -> &Layout {
        &self.pci
    }

    /// QEMU's pid.
    pub fn pid(&self) -> i32 {
        self.process.pid()
    }

    /// The qtest connection, for anything this type does not wrap.
    pub fn qtest(&mut self) -> &mut Qtest {
        &mut self.qtest
    }

    fn c(&self, reg: u64) -> u64 {
        self.pci.common.addr.wrapping_add(reg)
    }

    /// device_status.
    pub fn status(&mut self) -> Result<u8, String> {
        self.qtest.readb(self.c(common::DEVICE_STATUS))
    }

    /// Writes device_status; 0 resets the device (QEMU does it before answering).
    pub fn set_status(&mut self, v: u8) -> Result<(), String> {
        self.qtest.writeb(self.c(common::DEVICE_STATUS), v)
    }

    /// The device's 64 feature bits.
    pub fn device_features(&mut self) -> Result<u64, String> {
        let mut f = 0u64;
        for half in 0..2u32 {
            self.qtest
                .writel(self.c(common::DEVICE_FEATURE_SELECT), half)?;
            f |= u64::from(self.qtest.readl(self.c(common::DEVICE_FEATURE))?) << (32 * half);
        }
        Ok(f)
    }

    /// Writes the driver's 64 feature bits.
    pub fn set_driver_features(&mut self, f: u64) -> Result<(), String> {
        for half in 0..2u32 {
            self.qtest
                .writel(self.c(common::DRIVER_FEATURE_SELECT), half)?;
            self.qtest
                .writel(self.c(common::DRIVER_FEATURE), (f >> (32 * half)) as u32)?;
        }
        Ok(())
    }

    /// num_queues.
    pub fn num_queues(&mut self) -> Result<u16, String> {
        self.qtest.readw(self.c(common::NUM_QUEUES))
    }

    fn select(&mut self, q: u16) -> Result<(), String> {
        self.qtest.writew(self.c(common::QUEUE_SELECT), q)
    }

    /// Queue `q`'s maximum size (0: no such queue).
    pub fn queue_max_size(&mut self, q: u16) -> Result<u16, String> {
        self.select(q)?;
        self.qtest.readw(self.c(common::QUEUE_SIZE))
    }

    /// Selects queue `q` and sets its size, MSI-X vector and ring addresses; does not
    /// enable it. A vector the device refuses (it reads back as 0xffff) is an error.
    pub fn setup_queue(
        &mut self,
        q: u16,
        size: u16,
        desc: u64,
        avail: u64,
        used: u64,
        vector: u16,
    ) -> Result<(), String> {
        self.select(q)?;
        self.qtest.writew(self.c(common::QUEUE_SIZE), size)?;
        self.qtest
            .writew(self.c(common::QUEUE_MSIX_VECTOR), vector)?;
        let got = self.qtest.readw(self.c(common::QUEUE_MSIX_VECTOR))?;
        if got != vector {
            return Err(format!(
                "queue {q}: MSI-X vector {vector} not taken (reads {got:#x})"
            ));
        }
        for (reg, addr) in [
            (common::QUEUE_DESC, desc),
            (common::QUEUE_DRIVER, avail),
            (common::QUEUE_DEVICE, used),
        ] {
            self.qtest.writel(self.c(reg), addr as u32)?;
            self.qtest.writel(self.c(reg + 4), (addr >> 32) as u32)?;
        }
        Ok(())
    }

    /// Sets queue_enable for queue `q`.
    pub fn enable_queue(&mut self, q: u16) -> Result<(), String> {
        self.select(q)?;
        self.qtest.writew(self.c(common::QUEUE_ENABLE), 1)
    }

    /// Resets queue `q` alone (VIRTIO_F_RING_RESET: queue_reset at common 0x3a). QEMU
    /// resets before answering and then reads queue_reset as 0, where the spec says 1 until
    /// re-enabled; so success is judged by queue_enable reading 0 afterwards. QEMU 10.0.2
    /// resets the queue even when RING_RESET was not negotiated.
    pub fn reset_queue(&mut self, q: u16) -> Result<(), String> {
        self.select(q)?;
        self.qtest.writew(self.c(common::QUEUE_RESET), 1)?;
        let enabled = self.qtest.readw(self.c(common::QUEUE_ENABLE))?;
        if enabled != 0 {
            return Err(format!(
                "queue {q}: still enabled after queue_reset (RING_RESET not negotiated?)"
            ));
        }
        Ok(())
    }

    /// Kicks queue `q`.
    pub fn notify(&mut self, q: u16) -> Result<(), String> {
        let addr = match self.notify.get(usize::from(q)).copied().flatten() {
            Some(a) => a,
            None => {
                self.select(q)?;
                let off = self.qtest.readw(self.c(common::QUEUE_NOTIFY_OFF))?;
                let a = self
                    .pci
                    .notify
                    .addr
                    .wrapping_add(u64::from(off) * u64::from(self.pci.notify_multiplier));
                if self.notify.len() <= usize::from(q) {
                    self.notify.resize(usize::from(q) + 1, None);
                }
                self.notify[usize::from(q)] = Some(a);
                a
            }
        };
        self.qtest.writew(addr, q)
    }

    /// `len` bytes of device configuration from `offset` (virtio-blk: capacity at 0).
    pub fn config_read(&mut self, offset: u64, len: usize) -> Result<Vec<u8>, String> {
        let limit = u64::from(self.pci.device.length);
        if offset.checked_add(len as u64).is_none_or(|end| end > limit) {
            return Err(format!(
                "device config read {offset:#x}+{len} past its {limit:#x} bytes"
            ));
        }
        // Byte reads, each one config access valid at any offset; pipelined.
        let base = self.pci.device.addr.wrapping_add(offset);
        let lines: Vec<String> = (0..len as u64)
            .map(|i| format!("readb {:#x}", base.wrapping_add(i)))
            .collect();
        self.qtest
            .pipeline(&lines)?
            .iter()
            .map(|r| {
                let digits = r.strip_prefix("0x").unwrap_or(r);
                u64::from_str_radix(digits, 16)
                    .ok()
                    .and_then(|v| u8::try_from(v).ok())
                    .ok_or_else(|| format!("device config read: not a byte: {r:?}"))
            })
            .collect()
    }

    /// Sets MSI-X table entry `entry` to write `data` to `addr`, unmasked.
    pub fn set_msix(&mut self, entry: u16, addr: u64, data: u32) -> Result<(), String> {
        if entry >= self.pci.msix_entries {
            return Err(format!(
                "MSI-X entry {entry} past the table's {}",
                self.pci.msix_entries
            ));
        }
        let at = self.pci.msix_table.wrapping_add(16 * u64::from(entry));
        self.qtest.writel(at, addr as u32)?;
        self.qtest.writel(at + 4, (addr >> 32) as u32)?;
        self.qtest.writel(at + 8, data)?;
        self.qtest.writel(at + 12, 0)
    }

    /// Sets config_msix_vector. A vector the device refuses is an error.
    pub fn set_config_vector(&mut self, vector: u16) -> Result<(), String> {
        self.qtest
            .writew(self.c(common::CONFIG_MSIX_VECTOR), vector)?;
        let got = self.qtest.readw(self.c(common::CONFIG_MSIX_VECTOR))?;
        if got != vector {
            return Err(format!(
                "config MSI-X vector {vector} not taken (reads {got:#x})"
            ));
        }
        Ok(())
    }

    /// Runs a QMP command.
    pub fn qmp(&mut self, cmd: &str, args: Value) -> Result<Value, String> {
        match self.qmp.execute(cmd, args) {
            Ok(v) => Ok(v),
            Err(e) => Err(self.with_death(e)),
        }
    }

    /// QMP events received so far, taken.
    pub fn qmp_events(&mut self) -> Vec<Value> {
        self.qmp.take_events()
    }

    /// The run state (`prelaunch`, `running`, `paused`, `io-error`, `postmigrate`, ...).
    pub fn run_state(&mut self) -> Result<String, String> {
        let s = self.qmp("query-status", Value::Null)?;
        s.get("status")
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| format!("query-status without a status: {s}"))
    }

    /// Resets the whole machine (QMP `system_reset`) and waits, bounded, for it to happen:
    /// devices reset, PCI functions lose their BARs, bus mastering and MSI-X, which are set
    /// up again here as at start. A VM that was not running is left `prelaunch`.
    pub fn system_reset(&mut self) -> Result<(), String> {
        self.qmp("system_reset", Value::Null)?;
        self.qmp.wait_event("RESET", START_TIMEOUT)?;
        self.pci = pci::setup(&mut self.qtest)?;
        Ok(())
    }

    /// Stops the VM. QEMU drains in-flight I/O before answering.
    pub fn stop(&mut self) -> Result<(), String> {
        self.qmp("stop", Value::Null).map(drop)
    }

    /// The storage is fixed: the raw node is reopened on the file itself, so the blkdebug
    /// layer and its fault rules leave the block graph.
    pub fn heal(&mut self) -> Result<(), String> {
        let options =
            serde_json::json!({"options": [{"driver": "raw", "node-name": "d0", "file": "f0"}]});
        self.qmp("blockdev-reopen", options).map(|_| ())
    }

    /// Resumes the VM (and retries requests an error policy parked).
    pub fn cont(&mut self) -> Result<(), String> {
        self.qmp("cont", Value::Null).map(drop)
    }

    /// Queue `q` as QEMU's virtio core sees it.
    pub fn queue_status(&mut self, q: u16) -> Result<QueueStatus, String> {
        let v = self.qmp(
            "x-query-virtio-queue-status",
            json!({"path": VIRTIO_PATH, "queue": q}),
        )?;
        let field = |name: &str| {
            v.get(name)
                .and_then(Value::as_u64)
                .ok_or_else(|| format!("x-query-virtio-queue-status without {name}: {v}"))
        };
        Ok(QueueStatus {
            last_avail_idx: field("last-avail-idx")? as u16,
            used_idx: field("used-idx")? as u16,
            signalled_used: field("signalled-used")? as u16,
            inuse: field("inuse")? as u32,
        })
    }

    /// Saves the machine to `file` (QMP `migrate file:...`) and waits, bounded, until the
    /// migration completes. The VM ends `postmigrate`.
    pub fn migrate_to(&mut self, file: &Path) -> Result<(), String> {
        let uri = format!(
            "file:{}",
            file.to_str().ok_or("migration file path is not UTF-8")?
        );
        self.qmp("migrate", json!({"uri": uri}))?;
        self.await_migration("outgoing")
    }

    /// Why QEMU no longer works, if it doesn't: it exited (or crashed), or its stderr shows
    /// an assertion or a fatal error. Includes its stderr.
    pub fn death(&mut self) -> Option<String> {
        self.process.death()
    }

    /// Everything QEMU printed on stderr so far.
    pub fn stderr(&self) -> String {
        self.process.stderr()
    }
}

/// `e`, with why QEMU died if it is dying: a QEMU that rejects its command line may close
/// its sockets a moment before it exits.
fn exit_reason(process: &mut Process, e: String) -> String {
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(500) {
        if let Some(d) = process.death() {
            return format!("{e}; {d}");
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    e
}
