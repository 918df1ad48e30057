//! Save and restore: what a snapshot keeps, and every class of snapshot restore refuses.

mod fixture;

use fixture::*;
use stopfuzz::device::bits::*;
use stopfuzz::device::{
    BlkDevice, DeviceConfig, ErrorPolicy, InflightPolicy, RestoreError, SaveError, Snapshot,
};
use vm_memory::{Bytes, GuestAddress};

fn guest(queues: u16) -> Guest {
    let mut g = Guest::new(DeviceConfig {
        inflight: InflightPolicy::Track,
        write_policy: ErrorPolicy::Enospc,
        ..config(queues)
    });
    g.init(FEATURES | F_MQ, 16);
    g
}

/// A stopped device holding one parked write on queue 0 (head 0), plus its snapshot.
fn parked(g: &mut Guest) -> Vec<u8> {
    g.write(0, 2, &pattern(7, 1024), Shape::Plain);
    g.go(0);
    g.disk.fill();
    g.complete_all();
    g.dev.host_stop();
    g.dev.save().unwrap()
}

fn restore(g: &Guest, bytes: &[u8]) -> Result<BlkDevice, RestoreError> {
    let mut fresh = BlkDevice::new(g.dev.config().clone()).unwrap();
    fresh.restore(bytes, &g.mem).map(|()| fresh)
}

// Offsets into a version-1 snapshot with one record of one segment.
const STATUS: usize = 17;
const FEATURES_AT: usize = 18;
const DRIVER_STOP: usize = 26;
const QUEUE0: usize = 27;
const NEXT_AVAIL: usize = QUEUE0 + 27;
const NEXT_USED: usize = QUEUE0 + 29;

fn record_at(queues: usize) -> usize {
    27 + 32 * queues + 2
}

type Edit = Box<dyn Fn(&mut Vec<u8>)>;
/// A named edit of a valid snapshot, and the error restore must give for it.
type Case = (&'static str, Edit, fn(&RestoreError) -> bool);

fn put16(bytes: &mut [u8], at: usize, v: u16) {
    bytes[at..at + 2].copy_from_slice(&v.to_le_bytes());
}

#[test]
fn a_parked_write_survives_save_and_restore_and_completes_once_after_heal() {
    let mut g = guest(1);
    let snapshot = parked(&mut g);
    let mut dev = restore(&g, &snapshot).unwrap();
    assert_eq!(dev.held().count(), 1);
    // The restored device consumes nothing before resume, even if kicked.
    dev.kick(0);
    dev.poll(&g.mem, &mut g.disk);
    assert!(g.disk.outstanding().next().is_none());
    g.dev = dev;
    g.dev.host_resume();
    g.poll();
    // Still full: the resubmission parks again, with no used entry.
    g.complete_all();
    assert_eq!(g.reap(0).len(), 0);
    g.disk.heal();
    g.dev.host_retry();
    g.poll();
    g.complete_all();
    let done = g.reap(0);
    assert_eq!((done.len(), done[0].status), (1, BLK_S_OK));
    assert_eq!(&g.disk.image()[1024..2048], &pattern(7, 1024)[..]);
    g.dev.host_retry();
    g.poll();
    g.complete_all();
    assert!(g.reap(0).is_empty(), "completed twice");
}

#[test]
fn save_restore_save_round_trips() {
    let mut g = guest(2);
    g.read(1, 0, 512, Shape::Indirect);
    g.go(1);
    g.complete_all();
    g.reap(1);
    let first = parked(&mut g);
    let dev = restore(&g, &first).unwrap();
    assert_eq!(dev.save().unwrap(), first);
    assert_eq!(dev.queue_position(1), Some((1, 1)));
    assert_eq!(dev.driver_features(), FEATURES | F_MQ);
}

#[test]
fn save_needs_a_quiet_device() {
    let mut g = guest(1);
    assert_eq!(g.dev.save(), Err(SaveError::Running));
    g.read(0, 0, 512, Shape::Plain);
    g.go(0);
    g.dev.host_stop();
    assert_eq!(g.dev.save(), Err(SaveError::Busy));
    g.complete_all();
    assert!(g.dev.save().is_ok());
    let mut g = guest(1);
    g.dev.host_stop();
    g.rings[0].avail_idx = 100;
    g.publish(0);
    g.dev.host_resume();
    g.dev.kick(0);
    g.poll();
    assert!(g.dev.needs_reset());
    g.dev.host_stop();
    assert_eq!(g.dev.save(), Err(SaveError::Broken));
}

#[test]
fn suspended_devices_restore_suspended() {
    let mut g = guest(1);
    g.set_status_bits(S_SUSPEND, 0);
    let status = g.status();
    let dev = restore(&g, &g.dev.save().unwrap()).unwrap();
    assert_eq!(dev.read_status(), status);
}

#[test]
fn the_first_used_update_after_restore_notifies() {
    let mut g = guest(1);
    // used_event far away: without a restore, no interrupt is due.
    g.set_used_event(0, 1000);
    g.read(0, 0, 512, Shape::Plain);
    g.go(0);
    g.complete_all();
    assert_eq!(g.dev.take_interrupts().used[0], 1, "nothing signalled yet");
    g.read(0, 0, 512, Shape::Plain);
    g.go(0);
    g.complete_all();
    assert_eq!(g.dev.take_interrupts().used[0], 0);
    g.migrate();
    g.read(0, 0, 512, Shape::Plain);
    g.go(0);
    g.complete_all();
    assert_eq!(g.dev.take_interrupts().used[0], 1);
    g.read(0, 0, 512, Shape::Plain);
    g.go(0);
    g.complete_all();
    assert_eq!(g.dev.take_interrupts().used[0], 0, "only the first");
}

#[test]
fn restore_refuses_a_device_that_is_not_fresh() {
    let mut g = guest(1);
    let snapshot = parked(&mut g);
    assert!(matches!(
        g.dev.restore(&snapshot, &g.mem),
        Err(RestoreError::NotFresh)
    ));
}

/// Every class of inconsistent snapshot, each a small edit of a valid one.
#[test]
fn restore_rejects_each_class_of_inconsistent_snapshot() {
    let mut g = guest(2);
    let good = parked(&mut g);
    assert!(restore(&g, &good).is_ok());
    let rec = record_at(2);
    let cases: Vec<Case> = vec![
        ("truncated", Box::new(|b| b.truncate(b.len() - 1)), |e| {
            matches!(e, RestoreError::Truncated)
        }),
        ("empty", Box::new(|b| b.clear()), |e| {
            matches!(e, RestoreError::Truncated)
        }),
        ("magic", Box::new(|b| b[0] = b'X'), |e| {
            matches!(e, RestoreError::BadMagic)
        }),
        ("version", Box::new(|b| b[4] = 2), |e| {
            matches!(e, RestoreError::Version(2))
        }),
        ("trailing", Box::new(|b| b.push(0)), |e| {
            matches!(e, RestoreError::TrailingBytes(1))
        }),
        ("ready flag", Box::new(|b| b[QUEUE0 + 2] = 3), |e| {
            matches!(e, RestoreError::Flag(3))
        }),
        (
            "num_queues",
            Box::new(|b| {
                let mut s = Snapshot::decode(b).unwrap();
                s.num_queues = 1;
                s.queues.truncate(1);
                *b = s.encode();
            }),
            |e| {
                matches!(
                    e,
                    RestoreError::ConfigMismatch {
                        field: "num_queues",
                        ..
                    }
                )
            },
        ),
        ("capacity", Box::new(|b| b[9] = 1), |e| {
            matches!(
                e,
                RestoreError::ConfigMismatch {
                    field: "capacity",
                    ..
                }
            )
        }),
        (
            "features not offered",
            Box::new(|b| b[FEATURES_AT + 6] = 0x40),
            |e| matches!(e, RestoreError::Features(_)),
        ),
        (
            "status bits",
            Box::new(|b| b[STATUS] |= S_NEEDS_RESET),
            |e| matches!(e, RestoreError::Status(_)),
        ),
        (
            "driver_ok without features_ok",
            Box::new(|b| b[STATUS] &= !S_FEATURES_OK),
            |e| matches!(e, RestoreError::Status(_)),
        ),
        ("driver stop byte", Box::new(|b| b[DRIVER_STOP] = 7), |e| {
            matches!(e, RestoreError::DriverStop(7))
        }),
        ("queue size", Box::new(|b| put16(b, QUEUE0, 3)), |e| {
            matches!(e, RestoreError::Queue { queue: 0, .. })
        }),
        ("desc alignment", Box::new(|b| b[QUEUE0 + 3] |= 8), |e| {
            matches!(e, RestoreError::Queue { queue: 0, .. })
        }),
        (
            "avail window",
            Box::new(|b| {
                put16(b, NEXT_AVAIL, 0x8001);
                put16(b, NEXT_USED, 0x8000)
            }),
            |e| matches!(e, RestoreError::UsedIdx { .. }),
        ),
        (
            "inuse > size",
            Box::new(|b| put16(b, NEXT_AVAIL, 20)),
            |e| {
                matches!(
                    e,
                    RestoreError::Inuse {
                        inuse: 20,
                        size: 16,
                        ..
                    }
                )
            },
        ),
        (
            "inuse != records",
            Box::new(|b| put16(b, NEXT_AVAIL, 2)),
            |e| {
                matches!(
                    e,
                    RestoreError::InuseRecords {
                        inuse: 2,
                        records: 1,
                        ..
                    }
                )
            },
        ),
        (
            "used idx",
            Box::new(|b| {
                put16(b, NEXT_AVAIL, 2);
                put16(b, NEXT_USED, 1)
            }),
            |e| {
                matches!(
                    e,
                    RestoreError::UsedIdx {
                        saved: 1,
                        guest: 0,
                        ..
                    }
                )
            },
        ),
        ("record queue", Box::new(move |b| put16(b, rec, 9)), |e| {
            matches!(e, RestoreError::RecordQueue { queue: 9, .. })
        }),
        (
            "record head",
            Box::new(move |b| put16(b, rec + 2, 16)),
            |e| matches!(e, RestoreError::RecordHead { head: 16, .. }),
        ),
        (
            "record on idle queue",
            Box::new(move |b| {
                b[QUEUE0 + 32 + 2] = 0;
                put16(b, rec, 1)
            }),
            |e| matches!(e, RestoreError::RecordIdle { queue: 1, .. }),
        ),
        ("record type", Box::new(move |b| b[rec + 4] = 8), |e| {
            matches!(e, RestoreError::RecordType(8))
        }),
        ("record sector", Box::new(move |b| b[rec + 8] = 63), |e| {
            matches!(e, RestoreError::RecordRequest { .. })
        }),
        (
            "record status address",
            Box::new(move |b| b[rec + 16 + 5] = 1),
            |e| matches!(e, RestoreError::RecordRequest { .. }),
        ),
        (
            "record segment address",
            Box::new(move |b| b[rec + 26 + 6] = 1),
            |e| matches!(e, RestoreError::RecordRequest { .. }),
        ),
        (
            "record segments",
            Box::new(move |b| put16(b, rec + 24, 300)),
            |e| matches!(e, RestoreError::RecordSegments(300)),
        ),
        (
            "record count",
            Box::new(move |b| put16(b, rec - 2, 2000)),
            |e| matches!(e, RestoreError::TooManyRecords(2000)),
        ),
    ];
    for (what, edit, expect) in cases {
        let mut bytes = good.clone();
        edit(&mut bytes);
        match restore(&g, &bytes) {
            Ok(_) => panic!("{what}: accepted"),
            Err(e) => assert!(expect(&e), "{what}: wrong error {e:?}"),
        }
    }
}

#[test]
fn restore_checks_guest_memory() {
    let mut g = guest(1);
    let snapshot = parked(&mut g);
    let used = g.rings[0].used;
    let avail = g.rings[0].avail;
    // The guest's used idx no longer matches the device's.
    g.mem.write_obj(5u16, GuestAddress(used + 2)).unwrap();
    assert!(matches!(
        restore(&g, &snapshot),
        Err(RestoreError::UsedIdx { guest: 5, .. })
    ));
    g.mem.write_obj(0u16, GuestAddress(used + 2)).unwrap();
    // The guest's avail idx is more than a ring ahead.
    g.mem.write_obj(40u16, GuestAddress(avail + 2)).unwrap();
    assert!(matches!(
        restore(&g, &snapshot),
        Err(RestoreError::AvailWindow { avail: 40, .. })
    ));
    g.mem.write_obj(1u16, GuestAddress(avail + 2)).unwrap();
    assert!(restore(&g, &snapshot).is_ok());
    // Rings outside guest memory.
    let mut far = snapshot.clone();
    far[QUEUE0 + 19 + 5] = 0x10;
    assert!(matches!(
        restore(&g, &far),
        Err(RestoreError::RingUnreadable(0))
    ));
}

#[test]
fn restore_never_panics_on_mutated_snapshots() {
    let mut g = guest(2);
    let good = parked(&mut g);
    let mut accepted = 0;
    for i in 0..good.len() {
        for bit in 0..8 {
            let mut b = good.clone();
            b[i] ^= 1 << bit;
            if let Ok(dev) = restore(&g, &b) {
                accepted += 1;
                // Whatever was accepted saves back to the same bytes.
                assert_eq!(dev.save().unwrap(), b, "byte {i} bit {bit}");
            }
        }
        assert!(restore(&g, &good[..i]).is_err());
    }
    // Flips in fields that hold no invariant (ring addresses inside memory, sector, ...)
    // are accepted; the rest are refused.
    assert!(
        accepted > 0 && accepted < good.len() * 8,
        "accepted {accepted}"
    );
}

#[test]
fn restore_refuses_a_mismatched_destination() {
    let mut g = guest(1);
    let snapshot = parked(&mut g);
    let mut other = BlkDevice::new(DeviceConfig {
        features: F_VERSION_1 | F_FLUSH,
        ..g.dev.config().clone()
    })
    .unwrap();
    assert!(matches!(
        other.restore(&snapshot, &g.mem),
        Err(RestoreError::Features(_))
    ));
}
