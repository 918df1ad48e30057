//! PCI configuration for the virtio-blk-pci function, through qtest port I/O on the legacy
//! configuration mechanism (address to 0xcf8, data at 0xcfc).
//!
//! [`setup`] sizes and places the BARs the device's capabilities use, enables memory
//! decoding, bus mastering and MSI-X. [`discover`] only reads: for a machine whose PCI
//! configuration arrived by migration.

use super::qtest::Qtest;

/// virtio's PCI vendor id.
pub const VENDOR: u16 = 0x1af4;
/// A modern (non-transitional) virtio-blk: 0x1040 + device id 2.
pub const DEVICE_BLK: u16 = 0x1042;

/// Where [`setup`] puts BARs: BAR4 (virtio structures) and BAR1 (MSI-X); any other BAR a
/// capability uses goes above them, 16 MiB apart.
const PLACES: [(u8, u64); 2] = [(4, 0xe000_0000), (1, 0xe100_0000)];
const OTHER_BARS: u64 = 0xe200_0000;
/// The largest BAR [`setup`] places.
const MAX_BAR: u64 = 16 << 20;

const CFG_ADDR: u16 = 0xcf8;
const CFG_DATA: u16 = 0xcfc;
const COMMAND: u8 = 0x04;
const STATUS: u8 = 0x06;
const CAP_PTR: u8 = 0x34;
const BAR0: u8 = 0x10;
const STATUS_CAP_LIST: u16 = 1 << 4;
/// Memory space and bus master.
const COMMAND_MEM_MASTER: u16 = 0x6;
const CAP_VENDOR: u8 = 0x09;
const CAP_MSIX: u8 = 0x11;
const MSIX_ENABLE: u16 = 0x8000;
const MSIX_MASKALL: u16 = 0x4000;

/// virtio_pci_cap `cfg_type`s.
const COMMON_CFG: u8 = 1;
const NOTIFY_CFG: u8 = 2;
const ISR_CFG: u8 = 3;
const DEVICE_CFG: u8 = 4;

/// A PCI function on bus 0.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Function {
    /// Device number (0..32).
    pub dev: u8,
    /// Function number (0..8).
    pub func: u8,
}

impl Function {
    fn addr(self, off: u8) -> u32 {
        0x8000_0000
            | (u32::from(self.dev) << 11)
            | (u32::from(self.func) << 8)
            | u32::from(off & 0xfc)
    }

    /// Reads a config byte.
    pub fn read8(self, qt: &mut Qtest, off: u8) -> Result<u8, String> {
        qt.outl(CFG_ADDR, self.addr(off))?;
        qt.inb(CFG_DATA + u16::from(off & 3))
    }
    /// Reads a config u16 (`off` even).
    pub fn read16(self, qt: &mut Qtest, off: u8) -> Result<u16, String> {
        qt.outl(CFG_ADDR, self.addr(off))?;
        qt.inw(CFG_DATA + u16::from(off & 2))
    }
    /// Reads a config u32 (`off` a multiple of 4).
    pub fn read32(self, qt: &mut Qtest, off: u8) -> Result<u32, String> {
        qt.outl(CFG_ADDR, self.addr(off))?;
        qt.inl(CFG_DATA)
    }
    /// Writes a config u16 (`off` even).
    pub fn write16(self, qt: &mut Qtest, off: u8, v: u16) -> Result<(), String> {
        qt.outl(CFG_ADDR, self.addr(off))?;
        qt.outw(CFG_DATA + u16::from(off & 2), v)
    }
    /// Writes a config u32 (`off` a multiple of 4).
    pub fn write32(self, qt: &mut Qtest, off: u8, v: u32) -> Result<(), String> {
        qt.outl(CFG_ADDR, self.addr(off))?;
        qt.outl(CFG_DATA, v)
    }
}

/// One virtio structure: where it is in guest physical memory and how long it is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Region {
    /// The BAR it is in.
    pub bar: u8,
    /// Its offset in the BAR.
    pub offset: u32,
    /// Its length.
    pub length: u32,
    /// Its guest physical address (the BAR's address plus the offset).
    pub addr: u64,
}

/// The device's layout, as the driver needs it (the default: nothing found yet).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Layout {
    /// The function.
    pub function: Function,
    /// Each BAR's address (0: not placed or not used).
    pub bars: [u64; 6],
    /// virtio common configuration.
    pub common: Region,
    /// Notification area.
    pub notify: Region,
    /// `notify_off_multiplier`.
    pub notify_multiplier: u32,
    /// ISR status.
    pub isr: Region,
    /// Device-specific configuration (virtio-blk's capacity etc.).
    pub device: Region,
    /// The MSI-X capability's offset in config space.
    pub msix_cap: u8,
    /// The MSI-X table's guest physical address.
    pub msix_table: u64,
    /// The pending-bit array's guest physical address.
    pub msix_pba: u64,
    /// Table entries.
    pub msix_entries: u16,
}

/// Finds `vendor:device` on bus 0 (function 0 of each slot).
pub fn find(qt: &mut Qtest, vendor: u16, device: u16) -> Result<Function, String> {
    for dev in 0..32 {
        let f = Function { dev, func: 0 };
        let id = f.read32(qt, 0)?;
        if id == u32::from(vendor) | (u32::from(device) << 16) {
            return Ok(f);
        }
    }
    Err(format!("no PCI device {vendor:04x}:{device:04x} on bus 0"))
}

/// What the capability list says, before BAR addresses are known.
struct Caps {
    /// (cfg_type, bar, offset, length) of the first vendor capability of each type used.
    common: Option<(u8, u32, u32)>,
    notify: Option<(u8, u32, u32)>,
    isr: Option<(u8, u32, u32)>,
    device: Option<(u8, u32, u32)>,
    notify_multiplier: u32,
    /// (cap offset, table BIR, table offset, PBA BIR, PBA offset, entries)
    msix: Option<(u8, u8, u32, u8, u32, u16)>,
}

fn walk(qt: &mut Qtest, f: Function) -> Result<Caps, String> {
    let mut caps = Caps {
        common: None,
        notify: None,
        isr: None,
        device: None,
        notify_multiplier: 0,
        msix: None,
    };
    if f.read16(qt, STATUS)? & STATUS_CAP_LIST == 0 {
        return Err("the virtio PCI function has no capability list".into());
    }
    let mut at = f.read8(qt, CAP_PTR)? & 0xfc;
    // At most 48 capabilities fit in 192 bytes: a longer walk is a loop.
    for _ in 0..48 {
        if at == 0 {
            break;
        }
        // 0xec: room for the longest capability read here (20 bytes of the notify cap).
        if !(0x40..=0xec).contains(&at) {
            return Err(format!(
                "capability pointer {at:#x} outside 0x40..=0xec of config space"
            ));
        }
        let id = f.read8(qt, at)?;
        let next = f.read8(qt, at + 1)? & 0xfc;
        match id {
            CAP_VENDOR => {
                let cfg_type = f.read8(qt, at + 3)?;
                let bar = f.read8(qt, at + 4)?;
                let offset = f.read32(qt, at + 8)?;
                let length = f.read32(qt, at + 12)?;
                let slot = match cfg_type {
                    COMMON_CFG => &mut caps.common,
                    NOTIFY_CFG => &mut caps.notify,
                    ISR_CFG => &mut caps.isr,
                    DEVICE_CFG => &mut caps.device,
                    _ => {
                        at = next;
                        continue;
                    }
                };
                // The spec: the driver uses the first capability of each type it knows.
                if slot.is_none() && bar < 6 {
                    *slot = Some((bar, offset, length));
                    if cfg_type == NOTIFY_CFG {
                        caps.notify_multiplier = f.read32(qt, at + 16)?;
                    }
                }
            }
            CAP_MSIX => {
                let control = f.read16(qt, at + 2)?;
                let table = f.read32(qt, at + 4)?;
                let pba = f.read32(qt, at + 8)?;
                caps.msix = Some((
                    at,
                    (table & 7) as u8,
                    table & !7,
                    (pba & 7) as u8,
                    pba & !7,
                    (control & 0x7ff) + 1,
                ));
            }
            _ => {}
        }
        at = next;
    }
    Ok(caps)
}

/// Reads BAR `n`'s address (both halves for a 64-bit BAR).
fn bar_addr(qt: &mut Qtest, f: Function, n: u8) -> Result<u64, String> {
    let lo = f.read32(qt, BAR0 + 4 * n)?;
    if lo & 1 != 0 {
        return Err(format!(
            "BAR{n} is an I/O BAR; virtio structures must be in memory"
        ));
    }
    let mut addr = u64::from(lo & !0xf);
    if (lo >> 1) & 3 == 2 {
        if n == 5 {
            return Err("BAR5 claims to be 64-bit".into());
        }
        addr |= u64::from(f.read32(qt, BAR0 + 4 * (n + 1))?) << 32;
    }
    Ok(addr)
}

/// Sizes BAR `n` (memory decoding must be off) and places it at `addr`.
fn place_bar(qt: &mut Qtest, f: Function, n: u8, addr: u64) -> Result<u64, String> {
    let reg = BAR0 + 4 * n;
    let lo = f.read32(qt, reg)?;
    if lo & 1 != 0 {
        return Err(format!(
            "BAR{n} is an I/O BAR; virtio structures must be in memory"
        ));
    }
    let wide = (lo >> 1) & 3 == 2;
    if wide && n == 5 {
        return Err("BAR5 claims to be 64-bit".into());
    }
    f.write32(qt, reg, 0xffff_ffff)?;
    let mut mask = u64::from(f.read32(qt, reg)? & !0xf);
    if wide {
        f.write32(qt, reg + 4, 0xffff_ffff)?;
        mask |= u64::from(f.read32(qt, reg + 4)?) << 32;
    } else {
        mask |= 0xffff_ffff_0000_0000;
    }
    let size = (!mask).wrapping_add(1);
    if mask == 0 || size == 0 || size > MAX_BAR {
        return Err(format!("BAR{n} has an unusable size (mask {mask:#x})"));
    }
    f.write32(qt, reg, addr as u32)?;
    if wide {
        f.write32(qt, reg + 4, (addr >> 32) as u32)?;
    }
    Ok(size)
}

fn layout(f: Function, caps: &Caps, bars: [u64; 6]) -> Result<Layout, String> {
    let region = |what: &str, c: Option<(u8, u32, u32)>| -> Result<Region, String> {
        let (bar, offset, length) =
            c.ok_or_else(|| format!("the device has no virtio {what} capability"))?;
        let base = bars[usize::from(bar)];
        if base == 0 {
            return Err(format!("the {what} structure's BAR{bar} has no address"));
        }
        Ok(Region {
            bar,
            offset,
            length,
            addr: base.wrapping_add(u64::from(offset)),
        })
    };
    let (msix_cap, tbir, toff, pbir, poff, entries) =
        caps.msix.ok_or("the device has no MSI-X capability")?;
    let at = |bir: u8, off: u32, what: &str| -> Result<u64, String> {
        match bars.get(usize::from(bir)) {
            Some(&b) if b != 0 => Ok(b.wrapping_add(u64::from(off))),
            _ => Err(format!("the MSI-X {what}'s BAR{bir} has no address")),
        }
    };
    Ok(Layout {
        function: f,
        bars,
        common: region("common", caps.common)?,
        notify: region("notify", caps.notify)?,
        notify_multiplier: caps.notify_multiplier,
        isr: region("ISR", caps.isr)?,
        device: region("device", caps.device)?,
        msix_cap,
        msix_table: at(tbir, toff, "table")?,
        msix_pba: at(pbir, poff, "PBA")?,
        msix_entries: entries,
    })
}

fn used_bars(caps: &Caps) -> Vec<u8> {
    let mut used: Vec<u8> = [caps.common, caps.notify, caps.isr, caps.device]
        .into_iter()
        .flatten()
        .map(|(bar, _, _)| bar)
        .chain(caps.msix.iter().flat_map(|m| [m.1, m.3]))
        .filter(|&b| b < 6)
        .collect();
    used.sort_unstable();
    used.dedup();
    used
}

/// Finds the virtio-blk function, places the BARs its capabilities use, enables memory
/// decoding, bus mastering and MSI-X (with no vector masked by the function mask).
pub fn setup(qt: &mut Qtest) -> Result<Layout, String> {
    let f = find(qt, VENDOR, DEVICE_BLK)?;
    let caps = walk(qt, f)?;
    let command = f.read16(qt, COMMAND)?;
    // Sizing writes all-ones to BARs: decoding must be off meanwhile.
    f.write16(qt, COMMAND, command & !0x3)?;
    let mut bars = [0u64; 6];
    let mut other = OTHER_BARS;
    for n in used_bars(&caps) {
        let addr = match PLACES.iter().find(|(b, _)| *b == n) {
            Some(&(_, a)) => a,
            None => {
                let a = other;
                other += MAX_BAR;
                a
            }
        };
        place_bar(qt, f, n, addr)?;
        bars[usize::from(n)] = addr;
    }
    f.write16(qt, COMMAND, (command & !0x1) | COMMAND_MEM_MASTER)?;
    let layout = layout(f, &caps, bars)?;
    let control = f.read16(qt, layout.msix_cap + 2)?;
    f.write16(
        qt,
        layout.msix_cap + 2,
        (control | MSIX_ENABLE) & !MSIX_MASKALL,
    )?;
    Ok(layout)
}

/// Finds the virtio-blk function and reads its layout without writing anything: for a
/// machine whose PCI configuration is already set up (it arrived by migration).
pub fn discover(qt: &mut Qtest) -> Result<Layout, String> {
    let f = find(qt, VENDOR, DEVICE_BLK)?;
    let caps = walk(qt, f)?;
    let mut bars = [0u64; 6];
    for n in used_bars(&caps) {
        bars[usize::from(n)] = bar_addr(qt, f, n)?;
    }
    let layout = layout(f, &caps, bars)?;
    if f.read16(qt, COMMAND)? & COMMAND_MEM_MASTER != COMMAND_MEM_MASTER {
        return Err("the virtio PCI function has memory decoding or bus mastering off".into());
    }
    Ok(layout)
}

/// Whether MSI-X is enabled in the function's capability.
pub fn msix_enabled(qt: &mut Qtest, layout: &Layout) -> Result<bool, String> {
    Ok(layout.function.read16(qt, layout.msix_cap + 2)? & MSIX_ENABLE != 0)
}
