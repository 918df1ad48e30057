//! The seed corpus, written from Rust with [`Program::encode`].
//!
//! Together the seeds use every op kind, both in-flight contracts, both driver stop triggers
//! and the host stop, every error policy, and rings that start just below the 16-bit wrap.
//! `stopfuzz seeds` writes them to `corpus/<target>/seed-<name>`; a test checks the committed
//! files are exactly these bytes, so a format change means regenerating them.

use crate::backend::IoError;
use crate::contract::{ErrorPolicy, InflightPolicy};
use crate::driver::layout::{Slot, ring_pages};
use crate::dut::reference::snapshot_flips;
use crate::program::{Config, Corruption, Jump, Op, Program, ReqType, Shape, Trigger};
use crate::targets::Target;
use crate::virtio::{F_VERSION_1, S_ACKNOWLEDGE, S_DRIVER, S_DRIVER_OK, S_FEATURES_OK, T_OUT};

/// A named seed for a target.
pub struct Seed {
    /// The target it seeds.
    pub target: Target,
    /// Its file is `seed-<name>`.
    pub name: &'static str,
    /// The input.
    pub bytes: Vec<u8>,
}

fn config() -> Config {
    Config {
        queues: 1,
        queue_size: 16,
        inflight: InflightPolicy::Track,
        trigger: Trigger::Suspend,
        event_idx: true,
        indirect: true,
        flush: true,
        ring_reset: true,
        write_policy: ErrorPolicy::Enospc,
        read_policy: ErrorPolicy::Report,
        start_index: 0,
        disk_sectors: 64,
        abuse: None,
    }
}

fn submit(queue: u8, req: ReqType, shape: Shape, sector: u8, sectors: u8) -> Op {
    Op::Submit {
        queue,
        req,
        shape,
        sector,
        sectors,
        seed: sector.wrapping_mul(7),
    }
}

/// Fails the oldest outstanding disk I/O.
fn fail(error: IoError) -> Op {
    Op::Fail { pick: 0, error }
}

fn write(sector: u8) -> Op {
    submit(0, ReqType::Write, Shape::Plain, sector, 1)
}

fn read(sector: u8) -> Op {
    submit(0, ReqType::Read, Shape::Plain, sector, 1)
}

/// Publish, kick and poll queue 0.
/// Fails the two oldest I/Os, migrates with them parked, heals and runs to the end.
fn fail_two_then_migrate() -> [Op; 7] {
    [
        fail(IoError::Io),
        fail(IoError::Io),
        Op::Poll,
        Op::Migrate,
        Op::Heal,
        Op::Settle,
        Op::Reap { queue: 0 },
    ]
}

fn go() -> [Op; 3] {
    [Op::Publish { queue: 0 }, Op::Kick { queue: 0 }, Op::Poll]
}

fn program(config: Config, ops: impl IntoIterator<Item = Op>) -> Vec<u8> {
    Program {
        config,
        ops: ops.into_iter().collect(),
    }
    .encode()
}

/// The mailing-list thread's example: four writes on a 4-entry ring; A and B park on
/// ENOSPC, C and D complete out of order; E and F reuse the freed heads and overwrite avail
/// slots 0 and 1; then a host stop and a resume (or a migration with the parked requests).
/// A device that rewinds `last_avail_idx` to the used idx loses A and B and runs E and F
/// twice.
pub fn thread_example(migrate: bool) -> Program {
    let mut ops = vec![
        submit(0, ReqType::Write, Shape::Indirect, 0, 1),
        submit(0, ReqType::Write, Shape::Indirect, 1, 1),
        submit(0, ReqType::Write, Shape::Indirect, 2, 1),
        submit(0, ReqType::Write, Shape::Indirect, 3, 1),
    ];
    ops.extend(go());
    ops.extend([
        fail(IoError::NoSpace),
        fail(IoError::NoSpace),
        Op::Complete { pick: 1 },
        Op::Complete { pick: 0 },
        Op::Poll,
        Op::Reap { queue: 0 },
        submit(0, ReqType::Write, Shape::Indirect, 4, 1),
        submit(0, ReqType::Write, Shape::Indirect, 5, 1),
        Op::Publish { queue: 0 },
        Op::Kick { queue: 0 },
        Op::HostStop,
        if migrate { Op::Migrate } else { Op::HostResume },
        Op::Heal,
        Op::Settle,
    ]);
    Program {
        config: Config {
            queue_size: 4,
            ..config()
        },
        ops,
    }
}

/// The conforming scenarios; the hostile and snapshot targets start from them too.
fn conforming() -> Vec<(&'static str, Vec<u8>)> {
    let mut seeds = Vec::new();
    // Every request type in every shape, with out-of-order completion.
    let mut ops = Vec::new();
    for (i, shape) in [
        Shape::Plain,
        Shape::SplitData,
        Shape::Indirect,
        Shape::SplitHeader,
    ]
    .into_iter()
    .enumerate()
    {
        let s = 8 * i as u8;
        ops.extend([
            submit(0, ReqType::Write, shape, s, 2),
            submit(0, ReqType::Read, shape, s + 4, 4),
            submit(0, ReqType::Flush, shape, 0, 1),
            submit(0, ReqType::GetId, shape, 0, 1),
        ]);
        ops.extend(go());
        ops.extend([
            Op::Complete { pick: 2 },
            Op::Complete { pick: 0 },
            Op::Poll,
            Op::Settle,
        ]);
        ops.extend([Op::Reap { queue: 0 }, submit(0, ReqType::Read, shape, s, 2)]);
        ops.extend(go());
        ops.extend([Op::Settle, Op::Reap { queue: 0 }]);
    }
    seeds.push(("requests-every-shape", program(config(), ops)));

    seeds.push(("thread-example-resume", thread_example(false).encode()));
    seeds.push(("thread-example-migrate", thread_example(true).encode()));

    // Each contract under each driver trigger, stopped with requests in flight.
    for (inflight, contract) in [
        (InflightPolicy::Drain, "drain"),
        (InflightPolicy::Track, "track"),
    ] {
        for (trigger, name) in [
            (Trigger::Suspend, "suspend"),
            (Trigger::StopBit, "stop-bit"),
        ] {
            let mut ops = vec![write(0), read(8), write(16)];
            ops.extend(go());
            ops.extend([
                Op::DiskFull,
                Op::Complete { pick: 0 },
                Op::DriverStop,
                Op::Complete { pick: 0 },
                Op::Poll,
                Op::Migrate,
                Op::Heal,
                Op::Poll,
                Op::Settle,
                Op::DriverResume,
                Op::Settle,
            ]);
            let cfg = Config {
                inflight,
                trigger,
                ..config()
            };
            let name: &'static str = match (contract, name) {
                ("drain", "suspend") => "drain-suspend-inflight",
                ("drain", _) => "drain-stop-bit-inflight",
                (_, "suspend") => "track-suspend-inflight",
                _ => "track-stop-bit-inflight",
            };
            seeds.push((name, program(cfg, ops)));
        }
    }

    // The host stop: kicks while stopped are kept, buffers published while stopped run.
    let mut ops = vec![Op::HostStop, write(0)];
    ops.extend(go());
    ops.extend([
        write(1),
        Op::Publish { queue: 0 },
        Op::Kick { queue: 0 },
        Op::Poll,
    ]);
    ops.extend([Op::HostStop, Op::HostResume, Op::Poll, Op::Settle]);
    seeds.push(("host-stop-kicks-kept", program(config(), ops)));

    // Every write and read policy, with ENOSPC and EIO.
    for (w, r, name) in [
        (ErrorPolicy::Report, ErrorPolicy::Report, "policy-report"),
        (ErrorPolicy::Ignore, ErrorPolicy::Ignore, "policy-ignore"),
        (ErrorPolicy::Stop, ErrorPolicy::Stop, "policy-stop"),
        (ErrorPolicy::Enospc, ErrorPolicy::Report, "policy-enospc"),
    ] {
        let mut ops = vec![write(0), read(4), write(8), read(12)];
        ops.extend(go());
        ops.extend([
            fail(IoError::NoSpace),
            fail(IoError::Io),
            Op::DiskFull,
            Op::Complete { pick: 0 },
            Op::Poll,
            Op::Heal,
            Op::Poll,
            Op::Settle,
            Op::Reap { queue: 0 },
        ]);
        let cfg = Config {
            write_policy: w,
            read_policy: r,
            ..config()
        };
        seeds.push((name, program(cfg, ops)));
    }

    // Rings starting just below 65535, crossed with requests in flight, and migrated there.
    let mut ops = Vec::new();
    for i in 0..12u8 {
        ops.extend([write(i * 2), read(i * 2 + 1)]);
        ops.extend(go());
        ops.extend([Op::Complete { pick: 1 }, Op::Poll]);
        if i % 4 == 0 {
            ops.push(Op::Migrate);
        }
        ops.extend([Op::Settle, Op::Reap { queue: 0 }]);
    }
    seeds.push((
        "near-wrap",
        program(
            Config {
                start_index: 0xfff0,
                queue_size: 8,
                ..config()
            },
            ops,
        ),
    ));

    // Resets with requests in flight and parked.
    let mut ops = vec![write(0), write(4), read(8)];
    ops.extend(go());
    ops.extend([
        fail(IoError::NoSpace),
        Op::Poll,
        Op::QueueReset { queue: 0 },
        Op::Complete { pick: 0 },
        Op::Poll,
        write(12),
    ]);
    ops.extend(go());
    ops.extend([Op::DeviceReset, Op::Settle, write(16)]);
    ops.extend(go());
    ops.extend([Op::Settle]);
    seeds.push(("resets-inflight-and-parked", program(config(), ops)));

    // A read and a flush parked under the stop policy and migrated, so the snapshot holds
    // a record of every disk request type. Without EVENT_IDX, and with a used update
    // before the migration and after the restore's first one, so the avail ring's flags
    // decide an interrupt.
    let mut ops = vec![write(0)];
    ops.extend(go());
    ops.extend([Op::Settle, Op::Reap { queue: 0 }, read(1)]);
    ops.push(submit(0, ReqType::Flush, Shape::Plain, 0, 1));
    ops.extend(go());
    ops.extend(fail_two_then_migrate());
    ops.push(write(2));
    ops.extend(go());
    ops.extend([Op::Settle, Op::Reap { queue: 0 }]);
    seeds.push((
        "migrate-parked-read-and-flush",
        program(
            Config {
                event_idx: false,
                write_policy: ErrorPolicy::Stop,
                read_policy: ErrorPolicy::Stop,
                ..config()
            },
            ops,
        ),
    ));

    // Four queues, no EVENT_IDX (the flags rule), STOP bit, Drain.
    let mut ops = Vec::new();
    for q in 0..4u8 {
        ops.extend([
            submit(q, ReqType::Write, Shape::Plain, q * 4, 2),
            Op::Publish { queue: q },
            Op::Kick { queue: q },
        ]);
    }
    ops.extend([
        Op::Poll,
        Op::Complete { pick: 3 },
        Op::Complete { pick: 1 },
        Op::Poll,
    ]);
    ops.extend([Op::DriverStop, Op::Settle, Op::DriverResume, Op::Settle]);
    for q in 0..4u8 {
        ops.push(Op::Reap { queue: q });
    }
    seeds.push((
        "multiqueue-flags-rule",
        program(
            Config {
                queues: 4,
                event_idx: false,
                indirect: false,
                trigger: Trigger::StopBit,
                inflight: InflightPolicy::Drain,
                write_policy: ErrorPolicy::Report,
                ..config()
            },
            ops,
        ),
    ));
    seeds.extend(slot_reuse_seeds());
    seeds.extend(two_parked_reads_seeds());
    seeds
}

/// Hostile scenarios: each hostile op after a little conforming traffic.
/// An avail slot reused while the request written there a ring earlier is still in flight,
/// under configs `stopfuzz reach` showed the explorer alone rarely combines with it.
fn slot_reuse_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let direct = Config {
        queues: 2,
        queue_size: 8,
        inflight: InflightPolicy::Drain,
        trigger: Trigger::StopBit,
        event_idx: false,
        indirect: false,
        write_policy: ErrorPolicy::Report,
        read_policy: ErrorPolicy::Ignore,
        ..config()
    };
    let indirect = |queues, write_policy, read_policy| Config {
        queues,
        queue_size: 2,
        write_policy,
        read_policy,
        ..config()
    };
    [
        ("slot-reuse-direct-drain-stop-bit", direct, Shape::Plain),
        (
            "slot-reuse-three-queues",
            indirect(3, ErrorPolicy::Ignore, ErrorPolicy::Stop),
            Shape::Indirect,
        ),
        (
            "slot-reuse-four-queues",
            indirect(4, ErrorPolicy::Stop, ErrorPolicy::Report),
            Shape::Indirect,
        ),
    ]
    .into_iter()
    .map(|(name, cfg, shape)| {
        // The first write stays in flight while a ring's worth of others complete
        // (the newest outstanding I/O is always pick 1), then its slot is written again.
        let mut ops = vec![submit(0, ReqType::Write, shape, 0, 1)];
        ops.extend(go());
        for i in 1..cfg.queue_size as u8 {
            ops.push(submit(0, ReqType::Write, shape, 2 * i, 1));
            ops.extend(go());
            ops.extend([Op::Complete { pick: 1 }, Op::Poll, Op::Reap { queue: 0 }]);
        }
        ops.push(submit(0, ReqType::Read, shape, 40, 1));
        ops.extend(go());
        ops.extend([Op::Settle, Op::Reap { queue: 0 }]);
        (name, program(cfg, ops))
    })
    .collect()
}

/// Two reads parked under `read_policy = stop` while writes report or ignore their
/// errors: a migration carries both and the resume retries both, in fetch order.
fn two_parked_reads_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let cfg = |queues, write_policy, indirect| Config {
        queues,
        indirect,
        write_policy,
        read_policy: ErrorPolicy::Stop,
        ..config()
    };
    [
        (
            "two-parked-reads-report",
            cfg(2, ErrorPolicy::Report, false),
        ),
        ("two-parked-reads-ignore", cfg(3, ErrorPolicy::Ignore, true)),
        (
            "two-parked-reads-four-queues",
            cfg(4, ErrorPolicy::Stop, true),
        ),
        (
            "two-parked-writes-reads-ignored",
            Config {
                read_policy: ErrorPolicy::Ignore,
                ..cfg(1, ErrorPolicy::Stop, true)
            },
        ),
    ]
    .into_iter()
    .map(|(name, cfg)| {
        let mut ops = if cfg.read_policy == ErrorPolicy::Stop {
            vec![read(0), read(8)]
        } else {
            vec![write(0), write(8)]
        };
        ops.extend(go());
        ops.extend(fail_two_then_migrate());
        (name, program(cfg, ops))
    })
    .collect()
}

fn hostile() -> Vec<(&'static str, Vec<u8>)> {
    let prefix = || {
        let mut ops = vec![write(0), read(4)];
        ops.extend(go());
        ops
    };
    let with = |tail: Vec<Op>| {
        let mut ops = prefix();
        ops.extend(tail);
        ops.extend([Op::Settle, Op::DeviceReset, write(8)]);
        ops.extend(go());
        ops.push(Op::Settle);
        program(config(), ops)
    };
    let mut seeds = Vec::new();
    for (jump, name) in [
        (Jump::Back, "avail-jump-back"),
        (Jump::Ahead, "avail-jump-ahead"),
        (Jump::Wrap, "avail-jump-wrap"),
    ] {
        seeds.push((
            name,
            with(vec![
                Op::AvailJump {
                    queue: 0,
                    jump,
                    n: 1,
                },
                Op::Poll,
            ]),
        ));
    }
    seeds.push((
        "rewrite-avail",
        with(vec![
            Op::Complete { pick: 0 },
            Op::Poll,
            Op::RewriteAvail {
                queue: 0,
                slot: 0,
                head: 3,
            },
            Op::RewriteAvail {
                queue: 0,
                slot: 2,
                head: 200,
            },
            Op::AvailJump {
                queue: 0,
                jump: Jump::Back,
                n: 0,
            },
            Op::Poll,
        ]),
    ));
    // Each corruption hits a chain the device has yet to read: the prefix's two requests
    // hold descriptors 0-5, so the next request's header, data and status are 6, 7 and 8.
    let corrupt = |index: u8, how: Corruption| Op::CorruptDesc {
        queue: 0,
        index,
        how,
    };
    for (req, index, how, name) in [
        // A chain that never ends, and one whose head is an indirect table holding another:
        // virtio-queue cuts both short, and the device sets NEEDS_RESET.
        (write(12), 6, Corruption::Loop, "corrupt-loop"),
        (
            write(12),
            6,
            Corruption::NestedIndirect,
            "corrupt-nested-indirect",
        ),
        // The status descriptor chains past the ring: NEEDS_RESET too.
        (write(12), 8, Corruption::Next, "corrupt-next"),
        // A header outside guest memory: IOERR.
        (write(12), 6, Corruption::Address, "corrupt-address"),
        // Write data of 4 GiB: the chain's length overflows a u32, virtio-queue cuts it
        // short, and the device sets NEEDS_RESET.
        (write(12), 7, Corruption::Length, "corrupt-length"),
        // Write data made device-writable and the chain ended there: a write with IN
        // buffers, IOERR.
        (write(12), 7, Corruption::Flags, "corrupt-flags"),
        // Read data made device-readable and the chain ended there: no writable status
        // byte, so the head comes back with used length 0.
        (read(12), 7, Corruption::Flags, "corrupt-flags-no-status"),
        // The read's status made device-readable and chained on to descriptor 0: readable
        // buffers after writable ones, IOERR.
        (read(12), 8, Corruption::Flags, "corrupt-flags-misordered"),
    ] {
        let mut tail = vec![req, corrupt(index, how)];
        tail.extend(go());
        seeds.push((name, with(tail)));
    }
    // The device breaks on the first of two chains made available together, and stops
    // there; a migration of the broken device is refused (the save fails).
    let mut tail = vec![write(12), write(16), corrupt(6, Corruption::Loop)];
    tail.extend(go());
    tail.push(Op::Migrate);
    seeds.push(("break-mid-batch-then-migrate", with(tail)));
    // A head the device already holds (the prefix's read, head 3) made available again.
    let mut tail = vec![
        write(12),
        Op::RewriteAvail {
            queue: 0,
            slot: 2,
            head: 3,
        },
    ];
    tail.extend(go());
    seeds.push(("duplicate-head", with(tail)));
    seeds.push((
        "submit-while-suspended",
        with(vec![
            Op::DriverStop,
            Op::ForceSubmit {
                queue: 0,
                req: ReqType::Write,
                sector: 20,
            },
            Op::Poll,
            Op::DriverResume,
            Op::Poll,
        ]),
    ));
    seeds
}

/// A reference device snapshot (version 1, laid out as `src/device/snapshot.rs` says),
/// written by hand as a fuzzer would write one: the checking side never uses the device's
/// own encoder. It is for the snapshot target's raw mode, which restores into the device an
/// empty program sets up: one queue of at most 256 entries (the reference device's
/// largest), a disk of 8 sectors. The device is live with its queue at the driver's
/// addresses and holds one valid write per record (one data segment of a sector, in the
/// slot of its head); `next_avail` is one past `next_used` per record.
struct RawSnapshot {
    status: u8,
    ready: bool,
    /// `(queue, head, sector)` of each held write.
    records: Vec<(u16, u16, u64)>,
}

impl RawSnapshot {
    /// Live, ready, and holding a write for head 0.
    fn new() -> Self {
        RawSnapshot {
            status: S_ACKNOWLEDGE | S_DRIVER | S_FEATURES_OK | S_DRIVER_OK,
            ready: true,
            records: vec![(0, 0, 0)],
        }
    }

    fn encode(&self) -> Vec<u8> {
        let empty = Program::default().config;
        let rings = ring_pages(0).start;
        let mut out = b"SFBK".to_vec();
        out.push(1);
        out.extend_from_slice(&1u16.to_le_bytes());
        out.extend_from_slice(&256u16.to_le_bytes());
        out.extend_from_slice(&u64::from(empty.disk_sectors).to_le_bytes());
        out.push(self.status);
        out.extend_from_slice(&F_VERSION_1.to_le_bytes());
        out.push(0);
        out.extend_from_slice(&empty.queue_size.to_le_bytes());
        out.push(self.ready.into());
        for addr in [rings, rings + 0x1000, rings + 0x2000] {
            out.extend_from_slice(&addr.to_le_bytes());
        }
        // next_avail, next_used (0), event_idx (off).
        out.extend_from_slice(&(self.records.len() as u16).to_le_bytes());
        out.extend_from_slice(&0u16.to_le_bytes());
        out.push(0);
        out.extend_from_slice(&(self.records.len() as u16).to_le_bytes());
        for &(queue, head, sector) in &self.records {
            let slot = Slot::of(queue, head);
            out.extend_from_slice(&queue.to_le_bytes());
            out.extend_from_slice(&head.to_le_bytes());
            out.extend_from_slice(&T_OUT.to_le_bytes());
            out.extend_from_slice(&sector.to_le_bytes());
            out.extend_from_slice(&slot.status.to_le_bytes());
            out.extend_from_slice(&1u16.to_le_bytes());
            out.extend_from_slice(&slot.data.to_le_bytes());
            out.extend_from_slice(&512u32.to_le_bytes());
        }
        out
    }
}

/// Snapshot scenarios: mutations of the snapshot a program leaves (after the liveness
/// phase, so it holds no requests), and raw bytes.
fn snapshot() -> Vec<(&'static str, Vec<u8>)> {
    let program = thread_example(false);
    let flips = snapshot_flips(u16::from(program.config.queues));
    let parked = program.encode();
    let mutate = |flips: &[(u16, u8)], program: &[u8]| {
        let mut out = vec![0, flips.len().saturating_sub(1) as u8];
        for &(offset, value) in flips {
            out.extend_from_slice(&offset.to_le_bytes());
            out.push(value);
        }
        out.extend_from_slice(program);
        out
    };
    let raw = |bytes: &[u8]| [&[1u8][..], bytes].concat();
    // The conforming seeds that reach rare scenarios, restored unchanged afterwards.
    let unchanged = slot_reuse_seeds()
        .into_iter()
        .chain(two_parked_reads_seeds())
        .map(|(name, bytes)| (name, mutate(&[(0, 0)], &bytes)));
    let [next_avail, record_count, record_head, status, features] = [
        flips.next_avail,
        flips.record_count,
        flips.record_head,
        flips.status,
        flips.features,
    ];
    // Queue 0's ready flag: where clearing it changes the encoding (the fields before it
    // are the same in every snapshot of one queue).
    let ready = {
        let (on, off) = (
            RawSnapshot::new().encode(),
            RawSnapshot {
                ready: false,
                ..RawSnapshot::new()
            }
            .encode(),
        );
        let at = (0..on.len())
            .find(|&i| on[i] != off[i])
            .expect("the flag is encoded");
        (at as u16, on[at] ^ off[at])
    };
    vec![
        ("unchanged-after-thread-example", mutate(&[(0, 0)], &parked)),
        ("next-avail-off-by-one", mutate(&[next_avail], &parked)),
        (
            "record-count-and-head",
            mutate(&[record_count, record_head], &parked),
        ),
        ("status-and-features", mutate(&[status, features], &parked)),
        // A queue restored not ready on a live device: resume kicks it, and the device
        // passes over it.
        ("queue-not-ready", mutate(&[ready], &parked)),
        ("empty", raw(&[])),
        ("magic-only", raw(b"SFBK")),
        ("wrong-version", raw(&[b'S', b'F', b'B', b'K', 9, 1, 0])),
        // Each check restore makes of a held request, failed in turn; the snapshot
        // would fail a later check anyway (the guest's avail idx does not match).
        (
            "record-queue",
            raw(&RawSnapshot {
                records: vec![(1, 0, 0)],
                ..RawSnapshot::new()
            }
            .encode()),
        ),
        (
            "record-head",
            raw(&RawSnapshot {
                records: vec![(0, 2, 0)],
                ..RawSnapshot::new()
            }
            .encode()),
        ),
        (
            "record-duplicate-head",
            raw(&RawSnapshot {
                records: vec![(0, 0, 0), (0, 0, 1)],
                ..RawSnapshot::new()
            }
            .encode()),
        ),
        (
            "record-on-idle-device",
            raw(&RawSnapshot {
                status: S_ACKNOWLEDGE | S_DRIVER | S_FEATURES_OK,
                ..RawSnapshot::new()
            }
            .encode()),
        ),
        (
            "record-outside-disk",
            raw(&RawSnapshot {
                records: vec![(0, 0, 8)],
                ..RawSnapshot::new()
            }
            .encode()),
        ),
    ]
    .into_iter()
    .chain(unchanged)
    .collect()
}

/// Every seed, for every target.
pub fn seeds() -> Vec<Seed> {
    let mut out = Vec::new();
    for (target, list) in [
        (Target::BlkConforming, conforming()),
        (Target::BlkHostile, [conforming(), hostile()].concat()),
        (Target::Snapshot, snapshot()),
    ] {
        for (name, bytes) in list {
            out.push(Seed {
                target,
                name,
                bytes,
            });
        }
    }
    out
}
