//! Save and restore: what a snapshot keeps, and every class of snapshot restore refuses.

mod fixture;

use fixture::*;
use stopfuzz::device::bits::*;
use stopfuzz::device::request::Kind;
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
    fresh.restore(bytes, g.mem()).map(|()| fresh)
}

type Edit = Box<dyn Fn(&mut Vec<u8>)>;
/// A named edit of a valid snapshot, and the error restore must give for it.
type Case = (&'static str, Edit, fn(&RestoreError) -> bool);

/// An edit of the decoded snapshot's fields.
fn typed(f: impl Fn(&mut Snapshot) + 'static) -> Edit {
    Box::new(move |b| {
        let mut s = Snapshot::decode(b).unwrap();
        f(&mut s);
        *b = s.encode();
    })
}

/// Sets one byte, for values no typed field can hold.
fn raw_at(at: usize, value: u8) -> Edit {
    Box::new(move |b| b[at] = value)
}

/// The format's magic; the version byte follows it.
const MAGIC: &[u8; 4] = b"SFBK";

#[test]
fn a_parked_write_survives_save_and_restore_and_completes_once_after_heal() {
    let mut g = guest(1);
    let snapshot = parked(&mut g);
    let mut dev = restore(&g, &snapshot).unwrap();
    assert_eq!(dev.held().count(), 1);
    // The restored device consumes nothing before resume, even if kicked.
    dev.kick(0);
    dev.poll(g.gm.mem(), &mut g.disk);
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
    g.driver.set_avail_idx(g.gm.mem(), 0, 100);
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
fn restore_refuses_a_device_that_is_not_fresh() {
    let mut g = guest(1);
    let snapshot = parked(&mut g);
    assert!(matches!(
        g.dev.restore(&snapshot, g.gm.mem()),
        Err(RestoreError::NotFresh)
    ));
}

/// Every class of inconsistent snapshot, each a small edit of a valid one.
#[test]
fn restore_rejects_each_class_of_inconsistent_snapshot() {
    let mut g = guest(2);
    let good = parked(&mut g);
    assert!(restore(&g, &good).is_ok());
    assert!(good.starts_with(MAGIC));
    let ready = offset_of(&good, |s| s.queues[0].ready = false);
    let record_type = offset_of(&good, |s| s.requests[0].req.kind = Kind::In);
    let cases: Vec<Case> = vec![
        ("truncated", Box::new(|b| b.truncate(b.len() - 1)), |e| {
            matches!(e, RestoreError::Truncated)
        }),
        ("empty", Box::new(|b| b.clear()), |e| {
            matches!(e, RestoreError::Truncated)
        }),
        (
            "magic",
            Box::new(|b| b[..MAGIC.len()].copy_from_slice(b"XFBK")),
            |e| matches!(e, RestoreError::BadMagic),
        ),
        ("version", raw_at(MAGIC.len(), 2), |e| {
            matches!(e, RestoreError::Version(2))
        }),
        ("trailing", Box::new(|b| b.push(0)), |e| {
            matches!(e, RestoreError::TrailingBytes(1))
        }),
        ("ready flag", raw_at(ready, 3), |e| {
            matches!(e, RestoreError::Flag(3))
        }),
        (
            "num_queues",
            typed(|s| {
                s.num_queues = 1;
                s.queues.truncate(1);
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
        ("capacity", typed(|s| s.capacity += 1), |e| {
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
            typed(|s| s.driver_features |= 1 << 54),
            |e| matches!(e, RestoreError::Features(_)),
        ),
        ("status bits", typed(|s| s.status |= S_NEEDS_RESET), |e| {
            matches!(e, RestoreError::Status(_))
        }),
        (
            "driver_ok without features_ok",
            typed(|s| s.status &= !S_FEATURES_OK),
            |e| matches!(e, RestoreError::Status(_)),
        ),
        ("driver stop byte", typed(|s| s.driver_stop = 7), |e| {
            matches!(e, RestoreError::DriverStop(7))
        }),
        ("queue size", typed(|s| s.queues[0].size = 3), |e| {
            matches!(e, RestoreError::Queue { queue: 0, .. })
        }),
        (
            "desc alignment",
            typed(|s| s.queues[0].desc_table |= 8),
            |e| matches!(e, RestoreError::Queue { queue: 0, .. }),
        ),
        (
            "avail window",
            typed(|s| {
                s.queues[0].next_avail = 0x8001;
                s.queues[0].next_used = 0x8000;
            }),
            |e| matches!(e, RestoreError::UsedIdx { .. }),
        ),
        (
            "inuse > size",
            typed(|s| s.queues[0].next_avail = 20),
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
            typed(|s| s.queues[0].next_avail = 2),
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
            typed(|s| {
                s.queues[0].next_avail = 2;
                s.queues[0].next_used = 1;
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
        ("record queue", typed(|s| s.requests[0].queue = 9), |e| {
            matches!(e, RestoreError::RecordQueue { queue: 9, .. })
        }),
        ("record head", typed(|s| s.requests[0].head = 16), |e| {
            matches!(e, RestoreError::RecordHead { head: 16, .. })
        }),
        (
            "record on idle queue",
            typed(|s| {
                s.queues[1].ready = false;
                s.requests[0].queue = 1;
            }),
            |e| matches!(e, RestoreError::RecordIdle { queue: 1, .. }),
        ),
        ("record type", raw_at(record_type, 8), |e| {
            matches!(e, RestoreError::RecordType(8))
        }),
        (
            "record sector",
            typed(|s| s.requests[0].req.sector = 63),
            |e| matches!(e, RestoreError::RecordRequest { .. }),
        ),
        (
            "record status address",
            typed(|s| s.requests[0].req.status |= 1 << 40),
            |e| matches!(e, RestoreError::RecordRequest { .. }),
        ),
        (
            "record segment address",
            typed(|s| s.requests[0].req.data[0].addr |= 1 << 48),
            |e| matches!(e, RestoreError::RecordRequest { .. }),
        ),
        (
            "record segments",
            typed(|s| {
                let seg = s.requests[0].req.data[0];
                s.requests[0].req.data = vec![seg; 300];
            }),
            |e| matches!(e, RestoreError::RecordSegments(300)),
        ),
        (
            "record count",
            typed(|s| {
                let r = s.requests[0].clone();
                s.requests = vec![r; 2000];
            }),
            |e| matches!(e, RestoreError::TooManyRecords(2000)),
        ),
    ];
    for (what, edit, expect) in cases {
        let mut bytes = good.clone();
        edit(&mut bytes);
        assert_ne!(bytes, good, "{what}: the edit changed nothing");
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
    let used = g.driver.queues[0].used;
    let avail = g.driver.queues[0].avail;
    // The guest's used idx no longer matches the device's.
    g.mem().write_obj(5u16, GuestAddress(used + 2)).unwrap();
    assert!(matches!(
        restore(&g, &snapshot),
        Err(RestoreError::UsedIdx { guest: 5, .. })
    ));
    g.mem().write_obj(0u16, GuestAddress(used + 2)).unwrap();
    // The guest's avail idx is more than a ring ahead.
    g.mem().write_obj(40u16, GuestAddress(avail + 2)).unwrap();
    assert!(matches!(
        restore(&g, &snapshot),
        Err(RestoreError::AvailWindow { avail: 40, .. })
    ));
    g.mem().write_obj(1u16, GuestAddress(avail + 2)).unwrap();
    assert!(restore(&g, &snapshot).is_ok());
    // Rings outside guest memory.
    let mut far = Snapshot::decode(&snapshot).unwrap();
    far.queues[0].used_ring |= 0x10 << 40;
    assert!(matches!(
        restore(&g, &far.encode()),
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
        other.restore(&snapshot, g.mem()),
        Err(RestoreError::Features(_))
    ));
}
