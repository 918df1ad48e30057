//! A scenario as bytes: a [`Config`] and a bounded list of [`Op`]s.
//!
//! Every byte string decodes, so every fuzzer input is a program. The layout is fixed and
//! versioned:
//!
//! ```text
//! byte 0        format version (FORMAT_VERSION)
//! bytes 1..7    config
//!   1           bits 0-1 queues - 1, bit 2 Track (else Drain), bit 3 STOP bit (else SUSPEND),
//!               bit 4 EVENT_IDX, bit 5 INDIRECT_DESC, bit 6 FLUSH, bit 7 RING_RESET
//!   2           queue size 2^(1 + (b % 8)), so 2 to 256
//!   3           bits 0-1 write policy (Report, Ignore, Stop, Enospc),
//!               bits 2-3 read policy (Report, Ignore, Stop; 3 reads as Report),
//!               bits 4-7 protocol abuse: 4 to 8 pick an Abuse, anything else none
//!   4..6        start ring index, u16 little-endian
//!   6           disk size 8 * (1 + b % 8) sectors
//! then ops      4 bytes each: kind, a, b, c; at most MAX_OPS
//! ```
//!
//! Decoding ignores byte 0: every byte string is a version-1 program, so a fuzzer's
//! mutations of that byte still reach every program. `encode` writes [`FORMAT_VERSION`], the
//! corpus test holds committed inputs to it, and `replay` warns about any other value. A
//! future format would claim byte values of its own and leave the rest decoding as now.
//!
//! Missing bytes read as zero. Argument bytes are kept raw and reduced at run time (a queue
//! number modulo the queue count, for example), so [`Program::encode`] is the exact inverse of
//! [`Program::decode`] for every program it produces.

use std::fmt;

use arbitrary::{Arbitrary, Unstructured};

use crate::backend::IoError;
use crate::contract::{ErrorPolicy, InflightPolicy};

/// The version `encode` writes in byte 0.
pub const FORMAT_VERSION: u8 = 1;
/// Most ops in a program; decoding drops the rest.
pub const MAX_OPS: usize = 256;
/// Most queues a program drives (config byte 1, bits 0-1).
pub const MAX_QUEUES: usize = 4;
const CONFIG_BYTES: usize = 6;
const OP_BYTES: usize = 4;
const HEADER_BYTES: usize = 1 + CONFIG_BYTES;

/// The driver-visible stop trigger a program uses. The host stop is always available.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trigger {
    /// virtio 1.4's SUSPEND status bit (`F_SUSPEND`).
    Suspend,
    /// The STOP proposal's DEVICE_STOPPED status bit (`F_STOP`).
    StopBit,
}

impl Trigger {
    /// The feature bit that offers this trigger.
    pub fn feature(self) -> u64 {
        match self {
            Trigger::Suspend => crate::virtio::F_SUSPEND,
            Trigger::StopBit => crate::virtio::F_STOP,
        }
    }

    /// The status bit the driver sets to ask for the stop, and reads back as its
    /// acknowledgement.
    pub fn status_bit(self) -> u8 {
        match self {
            Trigger::Suspend => crate::virtio::S_SUSPEND,
            Trigger::StopBit => crate::virtio::S_STOPPED,
        }
    }
}

/// How the device is built and what the driver asks of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// 1 to 4.
    pub queues: u8,
    /// A power of two, 2 to 256.
    pub queue_size: u16,
    /// What a stop acknowledgement waits for.
    pub inflight: InflightPolicy,
    /// How the driver stops the device.
    pub trigger: Trigger,
    /// The driver asks for EVENT_IDX.
    pub event_idx: bool,
    /// The driver asks for INDIRECT_DESC.
    pub indirect: bool,
    /// The driver asks for FLUSH.
    pub flush: bool,
    /// The driver asks for RING_RESET.
    pub ring_reset: bool,
    /// What a failed write or flush does.
    pub write_policy: ErrorPolicy,
    /// What a failed read does; decoding never gives `Enospc`.
    pub read_policy: ErrorPolicy,
    /// Where every ring's indices start, reached by restoring a snapshot.
    pub start_index: u16,
    /// 8 to 64.
    pub disk_sectors: u16,
    /// How a hostile front-end breaks the transport protocol, if it does.
    pub abuse: Option<Abuse>,
}

/// The kind of a virtio-blk request the driver makes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReqType {
    /// A read (`T_IN`).
    Read,
    /// A write (`T_OUT`).
    Write,
    /// A flush (`T_FLUSH`).
    Flush,
    /// A read of the device's ID string (`T_GET_ID`).
    GetId,
}

/// How a request's buffers are split into descriptors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    /// Header, data, status: one descriptor each.
    Plain,
    /// The data split across two descriptors.
    SplitData,
    /// Everything in an indirect table (direct when INDIRECT_DESC is off).
    Indirect,
    /// The header split across two descriptors.
    SplitHeader,
}

/// How a hostile driver moves avail idx.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Jump {
    /// Back by 1 + n % size: at most a ring behind what was published.
    Back,
    /// More than a ring ahead of what was published: size + 1 + n.
    Ahead,
    /// Half the index space away, across the 16-bit wrap.
    Wrap,
}

/// How a hostile front-end breaks its transport protocol (vhost-user), as a buggy VMM could.
/// Only `blk_hostile` asks for it, and only a device in another process does it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Abuse {
    /// Feature bits the back-end did not offer are acknowledged.
    UnofferedFeatures,
    /// A ring restarts from a base one behind the one the back-end returned.
    BaseBehind,
    /// A ring's avail address lies outside the memory table.
    RingOutsideMemory,
    /// A ring is enabled before it is set up, and stopped twice.
    OutOfOrder,
    /// INFLIGHT_SHMFD is acknowledged whether offered or not, and a migration hands the new
    /// back-end an inflight region that claims every descriptor in flight.
    InflightDisagrees,
}

/// How a hostile driver corrupts a descriptor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Corruption {
    /// The descriptor chains to itself (`NEXT` set, `next` = its own index).
    Loop,
    /// The address lies outside guest memory.
    Address,
    /// The length is 0xffff_ffff.
    Length,
    /// The descriptor becomes an indirect table holding another indirect descriptor.
    NestedIndirect,
    /// NEXT and WRITE flipped.
    Flags,
    /// `next` is past the ring.
    Next,
}

/// One step of a program.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// Writes a request's buffers, descriptors and avail entry; publish makes it visible.
    /// `sectors` is 1 to 4; `sector` is reduced modulo the disk size.
    Submit {
        /// The queue, modulo the queue count.
        queue: u8,
        /// What the request asks for.
        req: ReqType,
        /// How its buffers are split into descriptors.
        shape: Shape,
        /// Where it starts.
        sector: u8,
        /// How many sectors it covers.
        sectors: u8,
        /// Picks a write's data.
        seed: u8,
    },
    /// Writes avail idx.
    Publish {
        /// The queue, modulo the queue count.
        queue: u8,
    },
    /// Notifies the device, unless it asked not to be.
    Kick {
        /// The queue, modulo the queue count.
        queue: u8,
    },
    /// Lets the device run.
    Poll,
    /// Completes the `pick`-th outstanding disk I/O (modulo their number).
    Complete {
        /// Which outstanding I/O, modulo their number.
        pick: u8,
    },
    /// Fails the `pick`-th outstanding disk I/O (modulo their number) with `error`.
    Fail {
        /// Which outstanding I/O, modulo their number.
        pick: u8,
        /// How it fails.
        error: IoError,
    },
    /// Every write fails with ENOSPC until `Heal`.
    DiskFull,
    /// The disk has room again, and the host tells the device to retry.
    Heal,
    /// The driver takes used buffers and frees their descriptors.
    Reap {
        /// The queue, modulo the queue count.
        queue: u8,
    },
    /// The configured driver-visible stop trigger.
    DriverStop,
    /// Clears the driver's stop trigger.
    DriverResume,
    /// A stop by the host, invisible to the guest.
    HostStop,
    /// Ends the host stop.
    HostResume,
    /// Stop, wait for the acknowledgement, save, restore into a fresh device, resume.
    Migrate,
    /// Resets one virtqueue (RING_RESET), and the driver sets it up again.
    QueueReset {
        /// The queue, modulo the queue count.
        queue: u8,
    },
    /// Status 0, then initialization again.
    DeviceReset,
    /// The host resets the whole machine (QEMU's `system_reset`); the driver then
    /// initializes the device again. A device without it gets a [`Op::DeviceReset`].
    /// Encoded as a device reset with bit 0 of its first argument set.
    SystemReset,
    /// Completes all disk I/O and polls until nothing moves.
    Settle,
    // Hostile ops: blk_hostile only.
    /// Writes avail idx where a conforming driver never would, and kicks.
    AvailJump {
        /// The queue, modulo the queue count.
        queue: u8,
        /// Which way.
        jump: Jump,
        /// Added to the distance (for `Back`, modulo size).
        n: u8,
    },
    /// Overwrites an avail ring slot (modulo size) with a head (raw).
    RewriteAvail {
        /// The queue, modulo the queue count.
        queue: u8,
        /// The avail ring slot, modulo size.
        slot: u8,
        /// The head written there, as is.
        head: u8,
    },
    /// Corrupts the descriptor table entry `index` (modulo size).
    CorruptDesc {
        /// The queue, modulo the queue count.
        queue: u8,
        /// The descriptor, modulo size.
        index: u8,
        /// What is corrupted.
        how: Corruption,
    },
    /// Submits, publishes and kicks even while the driver has stopped the device.
    ForceSubmit {
        /// The queue, modulo the queue count.
        queue: u8,
        /// What the request asks for.
        req: ReqType,
        /// The one sector it covers; also picks a write's data.
        sector: u8,
    },
}

/// The op kinds, in encoding order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum OpKind {
    /// [`Op::Submit`].
    Submit,
    /// [`Op::Publish`].
    Publish,
    /// [`Op::Kick`].
    Kick,
    /// [`Op::Poll`].
    Poll,
    /// [`Op::Complete`].
    Complete,
    /// [`Op::Fail`].
    Fail,
    /// [`Op::DiskFull`].
    DiskFull,
    /// [`Op::Heal`].
    Heal,
    /// [`Op::Reap`].
    Reap,
    /// [`Op::DriverStop`].
    DriverStop,
    /// [`Op::DriverResume`].
    DriverResume,
    /// [`Op::HostStop`].
    HostStop,
    /// [`Op::HostResume`].
    HostResume,
    /// [`Op::Migrate`].
    Migrate,
    /// [`Op::QueueReset`].
    QueueReset,
    /// [`Op::DeviceReset`].
    DeviceReset,
    /// [`Op::Settle`].
    Settle,
    /// [`Op::AvailJump`].
    AvailJump,
    /// [`Op::RewriteAvail`].
    RewriteAvail,
    /// [`Op::CorruptDesc`].
    CorruptDesc,
    /// [`Op::ForceSubmit`].
    ForceSubmit,
}

impl OpKind {
    /// Every kind, in encoding order: an op's first byte indexes this, modulo its length.
    pub const ALL: [OpKind; 21] = [
        OpKind::Submit,
        OpKind::Publish,
        OpKind::Kick,
        OpKind::Poll,
        OpKind::Complete,
        OpKind::Fail,
        OpKind::DiskFull,
        OpKind::Heal,
        OpKind::Reap,
        OpKind::DriverStop,
        OpKind::DriverResume,
        OpKind::HostStop,
        OpKind::HostResume,
        OpKind::Migrate,
        OpKind::QueueReset,
        OpKind::DeviceReset,
        OpKind::Settle,
        OpKind::AvailJump,
        OpKind::RewriteAvail,
        OpKind::CorruptDesc,
        OpKind::ForceSubmit,
    ];

    /// Whether only a hostile driver does this.
    pub fn is_hostile(self) -> bool {
        self >= OpKind::AvailJump
    }

    /// Whether the guest's driver does it (not the host, the disk or the harness): what
    /// a guest whose vCPUs are stopped cannot do.
    pub fn is_guest(self) -> bool {
        self.is_hostile()
            || matches!(
                self,
                OpKind::Submit
                    | OpKind::Publish
                    | OpKind::Kick
                    | OpKind::Reap
                    | OpKind::QueueReset
                    | OpKind::DeviceReset
                    | OpKind::DriverStop
                    | OpKind::DriverResume
            )
    }

    /// Its name on the command line: `device-reset` for [`OpKind::DeviceReset`].
    pub fn name(self) -> String {
        let mut out = String::new();
        for (i, c) in format!("{self:?}").chars().enumerate() {
            if c.is_ascii_uppercase() && i > 0 {
                out.push('-');
            }
            out.push(c.to_ascii_lowercase());
        }
        out
    }

    /// The kind a [`name`](Self::name) names.
    pub fn parse(name: &str) -> Result<OpKind, String> {
        OpKind::ALL
            .into_iter()
            .find(|k| k.name() == name)
            .ok_or_else(|| {
                let names: Vec<String> = OpKind::ALL.iter().map(|k| k.name()).collect();
                format!("unknown op {name:?}; the ops are {}", names.join(", "))
            })
    }
}

impl Op {
    /// Its [`OpKind`].
    pub fn kind(&self) -> OpKind {
        match self {
            Op::Submit { .. } => OpKind::Submit,
            Op::Publish { .. } => OpKind::Publish,
            Op::Kick { .. } => OpKind::Kick,
            Op::Poll => OpKind::Poll,
            Op::Complete { .. } => OpKind::Complete,
            Op::Fail { .. } => OpKind::Fail,
            Op::DiskFull => OpKind::DiskFull,
            Op::Heal => OpKind::Heal,
            Op::Reap { .. } => OpKind::Reap,
            Op::DriverStop => OpKind::DriverStop,
            Op::DriverResume => OpKind::DriverResume,
            Op::HostStop => OpKind::HostStop,
            Op::HostResume => OpKind::HostResume,
            Op::Migrate => OpKind::Migrate,
            Op::QueueReset { .. } => OpKind::QueueReset,
            Op::DeviceReset | Op::SystemReset => OpKind::DeviceReset,
            Op::Settle => OpKind::Settle,
            Op::AvailJump { .. } => OpKind::AvailJump,
            Op::RewriteAvail { .. } => OpKind::RewriteAvail,
            Op::CorruptDesc { .. } => OpKind::CorruptDesc,
            Op::ForceSubmit { .. } => OpKind::ForceSubmit,
        }
    }

    fn decode(bytes: [u8; OP_BYTES]) -> Op {
        let [kind, a, b, c] = bytes;
        let req = |bits: u8| {
            [
                ReqType::Read,
                ReqType::Write,
                ReqType::Flush,
                ReqType::GetId,
            ][usize::from(bits & 3)]
        };
        let shape = |bits: u8| {
            [
                Shape::Plain,
                Shape::SplitData,
                Shape::Indirect,
                Shape::SplitHeader,
            ][usize::from(bits & 3)]
        };
        match OpKind::ALL[usize::from(kind) % OpKind::ALL.len()] {
            OpKind::Submit => Op::Submit {
                queue: a & 3,
                req: req(a >> 2),
                shape: shape(a >> 4),
                sectors: 1 + (a >> 6),
                sector: b,
                seed: c,
            },
            OpKind::Publish => Op::Publish { queue: a },
            OpKind::Kick => Op::Kick { queue: a },
            OpKind::Poll => Op::Poll,
            OpKind::Complete => Op::Complete { pick: a },
            OpKind::Fail => Op::Fail {
                pick: a,
                error: if b & 1 == 0 {
                    IoError::NoSpace
                } else {
                    IoError::Io
                },
            },
            OpKind::DiskFull => Op::DiskFull,
            OpKind::Heal => Op::Heal,
            OpKind::Reap => Op::Reap { queue: a },
            OpKind::DriverStop => Op::DriverStop,
            OpKind::DriverResume => Op::DriverResume,
            OpKind::HostStop => Op::HostStop,
            OpKind::HostResume => Op::HostResume,
            OpKind::Migrate => Op::Migrate,
            OpKind::QueueReset => Op::QueueReset { queue: a },
            OpKind::DeviceReset if a & 1 != 0 => Op::SystemReset,
            OpKind::DeviceReset => Op::DeviceReset,
            OpKind::Settle => Op::Settle,
            OpKind::AvailJump => Op::AvailJump {
                queue: a,
                jump: [Jump::Back, Jump::Ahead, Jump::Wrap][usize::from(b % 3)],
                n: c,
            },
            OpKind::RewriteAvail => Op::RewriteAvail {
                queue: a,
                slot: b,
                head: c,
            },
            OpKind::CorruptDesc => Op::CorruptDesc {
                queue: a,
                index: b,
                how: [
                    Corruption::Loop,
                    Corruption::Address,
                    Corruption::Length,
                    Corruption::NestedIndirect,
                    Corruption::Flags,
                    Corruption::Next,
                ][usize::from(c % 6)],
            },
            OpKind::ForceSubmit => Op::ForceSubmit {
                queue: a & 3,
                req: req(a >> 2),
                sector: b,
            },
        }
    }

    /// The op's four bytes.
    pub fn encode(&self) -> [u8; OP_BYTES] {
        let kind = OpKind::ALL.iter().position(|k| *k == self.kind()).unwrap() as u8;
        let req_bits = |r: ReqType| r as u8;
        let [a, b, c] = match *self {
            Op::Submit {
                queue,
                req,
                shape,
                sector,
                sectors,
                seed,
            } => [
                (queue & 3)
                    | req_bits(req) << 2
                    | (shape as u8) << 4
                    | (sectors.clamp(1, 4) - 1) << 6,
                sector,
                seed,
            ],
            Op::Publish { queue }
            | Op::Kick { queue }
            | Op::Reap { queue }
            | Op::QueueReset { queue } => [queue, 0, 0],
            Op::Complete { pick } => [pick, 0, 0],
            Op::SystemReset => [1, 0, 0],
            Op::Fail { pick, error } => [pick, u8::from(error == IoError::Io), 0],
            Op::AvailJump { queue, jump, n } => [queue, jump as u8, n],
            Op::RewriteAvail { queue, slot, head } => [queue, slot, head],
            Op::CorruptDesc { queue, index, how } => [queue, index, how as u8],
            Op::ForceSubmit { queue, req, sector } => [(queue & 3) | req_bits(req) << 2, sector, 0],
            Op::Poll
            | Op::DiskFull
            | Op::Heal
            | Op::DriverStop
            | Op::DriverResume
            | Op::HostStop
            | Op::HostResume
            | Op::Migrate
            | Op::DeviceReset
            | Op::Settle => [0, 0, 0],
        };
        [kind, a, b, c]
    }
}

impl Config {
    fn decode(bytes: [u8; CONFIG_BYTES]) -> Config {
        let [flags, size, policies, start_lo, start_hi, disk] = bytes;
        let write_policy = [
            ErrorPolicy::Report,
            ErrorPolicy::Ignore,
            ErrorPolicy::Stop,
            ErrorPolicy::Enospc,
        ];
        let read_policy = [
            ErrorPolicy::Report,
            ErrorPolicy::Ignore,
            ErrorPolicy::Stop,
            ErrorPolicy::Report,
        ];
        Config {
            queues: 1 + (flags & 3),
            queue_size: 1 << (1 + size % 8),
            inflight: if flags & 4 != 0 {
                InflightPolicy::Track
            } else {
                InflightPolicy::Drain
            },
            trigger: if flags & 8 != 0 {
                Trigger::StopBit
            } else {
                Trigger::Suspend
            },
            event_idx: flags & 16 != 0,
            indirect: flags & 32 != 0,
            flush: flags & 64 != 0,
            ring_reset: flags & 128 != 0,
            write_policy: write_policy[usize::from(policies & 3)],
            read_policy: read_policy[usize::from((policies >> 2) & 3)],
            start_index: u16::from_le_bytes([start_lo, start_hi]),
            disk_sectors: 8 * (1 + u16::from(disk % 8)),
            // Bits the other fields leave (0 in inputs older than this field): five values
            // in sixteen abuse the protocol.
            abuse: [
                Abuse::UnofferedFeatures,
                Abuse::BaseBehind,
                Abuse::RingOutsideMemory,
                Abuse::OutOfOrder,
                Abuse::InflightDisagrees,
            ]
            .get(usize::from(policies >> 4).wrapping_sub(4))
            .copied(),
        }
    }

    fn encode(&self) -> [u8; CONFIG_BYTES] {
        let flags = (self.queues.clamp(1, 4) - 1)
            | u8::from(self.inflight == InflightPolicy::Track) << 2
            | u8::from(self.trigger == Trigger::StopBit) << 3
            | u8::from(self.event_idx) << 4
            | u8::from(self.indirect) << 5
            | u8::from(self.flush) << 6
            | u8::from(self.ring_reset) << 7;
        let size = (self.queue_size.max(2).trailing_zeros() as u8 - 1) % 8;
        let policy = |p: ErrorPolicy| match p {
            ErrorPolicy::Report => 0,
            ErrorPolicy::Ignore => 1,
            ErrorPolicy::Stop => 2,
            ErrorPolicy::Enospc => 3,
        };
        let read = match self.read_policy {
            ErrorPolicy::Enospc => 0,
            p => policy(p),
        };
        let abuse = self.abuse.map_or(0, |a| 4 + a as u8);
        let policies = policy(self.write_policy) | read << 2 | abuse << 4;
        let [start_lo, start_hi] = self.start_index.to_le_bytes();
        let disk = ((self.disk_sectors.clamp(8, 64) / 8 - 1) % 8) as u8;
        [flags, size, policies, start_lo, start_hi, disk]
    }
}

impl Default for Config {
    fn default() -> Self {
        Config::decode([0; CONFIG_BYTES])
    }
}

/// A scenario: how the device is built and what happens to it.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Program {
    /// How the device is built and what the driver asks of it.
    pub config: Config,
    /// What happens, in order.
    pub ops: Vec<Op>,
}

impl Program {
    /// Decodes any bytes; see the module docs for the layout.
    pub fn decode(bytes: &[u8]) -> Program {
        let mut header = [0u8; HEADER_BYTES];
        let n = bytes.len().min(HEADER_BYTES);
        header[..n].copy_from_slice(&bytes[..n]);
        let config = Config::decode(header[1..].try_into().unwrap());
        let ops = bytes
            .get(HEADER_BYTES..)
            .unwrap_or(&[])
            .chunks(OP_BYTES)
            .take(MAX_OPS)
            .map(|chunk| {
                let mut op = [0u8; OP_BYTES];
                op[..chunk.len()].copy_from_slice(chunk);
                Op::decode(op)
            })
            .collect();
        Program { config, ops }
    }

    /// The canonical bytes of this program.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_BYTES + OP_BYTES * self.ops.len());
        out.push(FORMAT_VERSION);
        out.extend_from_slice(&self.config.encode());
        for op in self.ops.iter().take(MAX_OPS) {
            out.extend_from_slice(&op.encode());
        }
        out
    }

    /// The format version an input was written in (byte 0), if it has one.
    pub fn version_of(bytes: &[u8]) -> Option<u8> {
        bytes.first().copied()
    }
}

impl<'a> Arbitrary<'a> for Program {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        let len = u.len();
        Ok(Program::decode(u.bytes(len)?))
    }

    fn arbitrary_take_rest(u: Unstructured<'a>) -> arbitrary::Result<Self> {
        Ok(Program::decode(u.take_rest()))
    }
}

/// Prints a program as Rust that rebuilds it, so a finding can become a test: enum values
/// are written with their type (`ReqType::Write`), so the text compiles with the
/// [`RUST_USES`] in scope.
impl fmt::Debug for Program {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "Program {{")?;
        writeln!(f, "    config: {},", qualify(&format!("{:?}", self.config)))?;
        writeln!(f, "    ops: vec![")?;
        for op in &self.ops {
            writeln!(f, "        Op::{},", qualify(&format!("{op:?}")))?;
        }
        write!(f, "    ],\n}}")
    }
}

/// The `use` lines a program printed with `{:?}` needs.
pub const RUST_USES: &str = "use stopfuzz::backend::IoError;
use stopfuzz::contract::{ErrorPolicy, InflightPolicy};
use stopfuzz::program::{Abuse, Config, Corruption, Jump, Op, Program, ReqType, Shape, Trigger};";

/// Writes each enum-typed field's value with its type, by the field's name.
fn qualify(debug: &str) -> String {
    const TYPES: [(&str, &str); 9] = [
        ("req", "ReqType"),
        ("shape", "Shape"),
        ("error", "IoError"),
        ("jump", "Jump"),
        ("how", "Corruption"),
        ("inflight", "InflightPolicy"),
        ("trigger", "Trigger"),
        ("write_policy", "ErrorPolicy"),
        ("read_policy", "ErrorPolicy"),
    ];
    let mut out = debug.replace(" abuse: Some(", " abuse: Some(Abuse::");
    for (field, ty) in TYPES {
        out = out.replace(&format!(" {field}: "), &format!(" {field}: {ty}::"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small deterministic generator, so the property runs without extra crates.
    fn bytes(seed: u64, len: usize) -> Vec<u8> {
        let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    #[test]
    fn encode_inverts_decode_for_canonical_programs() {
        for seed in 0..2000 {
            let len = (seed as usize * 7) % (HEADER_BYTES + OP_BYTES * 40);
            let program = Program::decode(&bytes(seed, len));
            let encoded = program.encode();
            assert_eq!(Program::decode(&encoded), program, "seed {seed}");
            // Canonical bytes are a fixed point.
            assert_eq!(Program::decode(&encoded).encode(), encoded, "seed {seed}");
        }
    }

    #[test]
    fn decoding_is_total_and_bounded() {
        assert_eq!(Program::decode(&[]), Program::default());
        let huge = bytes(1, HEADER_BYTES + OP_BYTES * (MAX_OPS + 50) + 3);
        assert_eq!(Program::decode(&huge).ops.len(), MAX_OPS);
        // A partial trailing op is padded with zeros.
        let partial = Program::decode(&[1, 0, 0, 0, 0, 0, 0, 3]);
        assert_eq!(partial.ops, [Op::Poll]);
    }

    #[test]
    fn every_op_kind_round_trips() {
        for (i, kind) in OpKind::ALL.iter().enumerate() {
            let op = Op::decode([i as u8, 0xff, 0xff, 0xff]);
            assert_eq!(op.kind(), *kind);
            assert_eq!(Op::decode(op.encode()), op);
        }
    }

    #[test]
    fn config_fields_cover_their_ranges() {
        let sizes: Vec<u16> = (0..8)
            .map(|b| Config::decode([0, b, 0, 0, 0, 0]).queue_size)
            .collect();
        assert_eq!(sizes, [2, 4, 8, 16, 32, 64, 128, 256]);
        let c = Config::decode([0xff, 7, 0x0f, 0xf0, 0xff, 7]);
        assert_eq!((c.queues, c.start_index, c.disk_sectors), (4, 0xfff0, 64));
        assert_eq!(
            (c.write_policy, c.read_policy),
            (ErrorPolicy::Enospc, ErrorPolicy::Report)
        );
        assert_eq!(Config::decode(c.encode()), c);
    }

    #[test]
    fn arbitrary_delegates_to_decode() {
        let data = bytes(7, 100);
        let p = Program::arbitrary_take_rest(Unstructured::new(&data)).unwrap();
        assert_eq!(p, Program::decode(&data));
    }
}
