//! Status register, feature negotiation, configuration space, queue setup and resets.

mod fixture;

use fixture::*;
use stopfuzz::device::bits::*;
use stopfuzz::device::{BlkDevice, ConfigError, DeviceConfig, ErrorPolicy, Snapshot};
use stopfuzz::driver::layout::{ring_base, ring_pages};

#[test]
fn initialization_sequence() {
    let mut g = Guest::new(config(1));
    assert_eq!(g.status(), 0);
    g.init(FEATURES, 16);
    let all = S_ACKNOWLEDGE | S_DRIVER | S_FEATURES_OK | S_DRIVER_OK;
    assert_eq!(g.status(), all);
    assert_eq!(g.dev.driver_features(), FEATURES);
    // Features can no longer change once FEATURES_OK is set.
    g.dev.set_driver_features(F_VERSION_1);
    assert_eq!(g.dev.driver_features(), FEATURES);
    let r = g.read(0, 0, 512, Shape::Plain);
    g.go(0);
    g.complete_all();
    assert_eq!(g.reap(0)[0].req, r);
}

/// FEATURES_OK is refused without VERSION_1, and for any feature the device does not offer:
/// one it never offers (bit 50) and one this device's config leaves out (FLUSH).
#[test]
fn features_ok_is_refused_for_bad_features() {
    let only_version_1 = DeviceConfig {
        features: F_VERSION_1,
        ..config(1)
    };
    for (cfg, features) in [
        (config(1), F_FLUSH),
        (config(1), F_VERSION_1 | 1 << 50),
        (only_version_1, F_VERSION_1 | F_FLUSH),
    ] {
        let mut dev = BlkDevice::new(cfg).unwrap();
        dev.write_status(S_ACKNOWLEDGE | S_DRIVER);
        dev.set_driver_features(features);
        dev.write_status(S_ACKNOWLEDGE | S_DRIVER | S_FEATURES_OK);
        assert_eq!(dev.read_status() & S_FEATURES_OK, 0, "{features:#x}");
        // DRIVER_OK without FEATURES_OK does not start the device.
        dev.write_status(S_ACKNOWLEDGE | S_DRIVER | S_FEATURES_OK | S_DRIVER_OK);
        assert_eq!(dev.read_status() & S_DRIVER_OK, 0);
    }
}

#[test]
fn features_are_only_taken_after_driver() {
    let mut dev = BlkDevice::new(config(1)).unwrap();
    dev.set_driver_features(F_VERSION_1);
    assert_eq!(dev.driver_features(), 0);
}

#[test]
fn bad_configs_are_refused() {
    let bad = [
        (
            DeviceConfig {
                num_queues: 0,
                ..config(1)
            },
            ConfigError::NumQueues(0),
        ),
        (
            DeviceConfig {
                num_queues: 5,
                ..config(1)
            },
            ConfigError::NumQueues(5),
        ),
        (
            DeviceConfig {
                queue_max_size: 3,
                ..config(1)
            },
            ConfigError::QueueSize(3),
        ),
        (
            DeviceConfig {
                queue_max_size: 512,
                ..config(1)
            },
            ConfigError::QueueSize(512),
        ),
        (
            DeviceConfig {
                features: F_FLUSH,
                ..config(1)
            },
            ConfigError::Features(F_FLUSH),
        ),
        (
            DeviceConfig {
                features: F_VERSION_1,
                ..config(2)
            },
            ConfigError::MqNotOffered,
        ),
        (
            DeviceConfig {
                read_policy: ErrorPolicy::Enospc,
                ..config(1)
            },
            ConfigError::ReadEnospc,
        ),
    ];
    for (cfg, err) in bad {
        assert_eq!(BlkDevice::new(cfg).err(), Some(err));
    }
}

#[test]
fn config_space_has_capacity_and_num_queues() {
    let dev = BlkDevice::new(DeviceConfig {
        capacity: 0x1234_5678,
        ..config(3)
    })
    .unwrap();
    let mut cap = [0u8; 8];
    dev.read_config(0, &mut cap);
    assert_eq!(u64::from_le_bytes(cap), 0x1234_5678);
    let mut nq = [0u8; 2];
    dev.read_config(34, &mut nq);
    assert_eq!(u16::from_le_bytes(nq), 3);
    // Past the end reads as zero, even at absurd offsets.
    let mut tail = [0xffu8; 4];
    dev.read_config(u64::MAX - 1, &mut tail);
    assert_eq!(tail, [0; 4]);
}

#[test]
fn multiqueue_serves_every_queue() {
    for queues in 1..=4u16 {
        let mut g = Guest::new(config(queues));
        g.init(FEATURES | F_MQ, 8);
        assert_eq!(g.driver.queues.len(), usize::from(queues));
        for q in 0..queues {
            g.write(q, u64::from(q), &pattern(q as u8, 512), Shape::Plain);
            g.go(q);
        }
        g.complete_all();
        for q in 0..queues {
            let done = g.reap(q);
            assert_eq!((done.len(), done[0].status), (1, BLK_S_OK), "queue {q}");
        }
        for q in 0..queues {
            let at = usize::from(q) * 512;
            assert_eq!(&g.disk.image()[at..at + 512], &pattern(q as u8, 512)[..]);
        }
    }
}

/// The driver sets up queue 1 either way; only MQ makes the device run it.
#[test]
fn without_mq_only_queue_zero_runs() {
    for mq in [true, false] {
        let mut g = Guest::new(config(2));
        let features = if mq { FEATURES | F_MQ } else { FEATURES };
        g.init_queues(features, 8, 2);
        let on_1 = g.read(1, 1, 512, Shape::Plain);
        g.publish(1);
        g.dev.kick(1);
        let on_0 = g.read(0, 0, 512, Shape::Plain);
        g.go(0);
        g.complete_all();
        let done_0: Vec<Req> = g.reap(0).iter().map(|d| d.req).collect();
        let done_1: Vec<Req> = g.reap(1).iter().map(|d| d.req).collect();
        assert_eq!(done_0, [on_0], "mq={mq}");
        if mq {
            assert_eq!(done_1, [on_1]);
        } else {
            assert!(done_1.is_empty(), "queue 1 ran without MQ");
            assert_eq!(g.dev.queue_position(1), Some((0, 0)), "queue 1 consumed");
            assert!(g.disk.outstanding().next().is_none());
            assert!(!g.dev.needs_reset());
        }
    }
}

/// Once a queue is enabled, a new size or new ring addresses must not take effect: the
/// device keeps running the rings the driver set up.
#[test]
fn setup_writes_to_an_enabled_queue_are_ignored() {
    let mut g = Guest::new(config(1));
    g.init(FEATURES, 16);
    let dq = g.driver.queues[0].clone();
    // Queue 1's ring pages: unused in a one-queue guest, so all zeros.
    let elsewhere = ring_base(1);
    g.dev.queue_set_size(0, 4);
    g.dev
        .queue_set_addresses(0, elsewhere, elsewhere + 0x1000, elsewhere + 0x2000);
    g.dev.queue_enable(0);
    // Six requests at once: more than a 4-entry ring holds, and invisible at `elsewhere`.
    let cp = g.checkpoint();
    let reqs: Vec<Req> = (0..6).map(|i| g.read(0, i, 512, Shape::Indirect)).collect();
    g.go(0);
    g.complete_all();
    assert!(!g.dev.needs_reset());
    let done: Vec<Req> = g.reap(0).iter().map(|d| d.req).collect();
    assert_eq!(done, reqs);
    assert_eq!(g.used_idx(0), 6);
    let stray: Vec<_> = g
        .writes_since(cp)
        .into_iter()
        .filter(|&(a, _)| ring_pages(1).contains(&a))
        .collect();
    assert!(
        stray.is_empty(),
        "the device wrote the ignored rings: {stray:x?}"
    );
    g.dev.host_stop();
    let saved = Snapshot::decode(&g.dev.save().unwrap()).unwrap().queues[0];
    assert_eq!(
        (
            saved.size,
            saved.desc_table,
            saved.avail_ring,
            saved.used_ring
        ),
        (16, dq.desc, dq.avail, dq.used)
    );
}

#[test]
fn queue_size_must_be_a_power_of_two_up_to_the_maximum() {
    let mut dev = BlkDevice::new(DeviceConfig {
        queue_max_size: 16,
        ..config(1)
    })
    .unwrap();
    // A queue starts at the maximum size; a bad size leaves the last good one.
    let mut expect = 16;
    for (size, ok) in [(3u16, false), (8, true), (32, false), (0, false), (4, true)] {
        dev.queue_set_size(0, size);
        if ok {
            expect = size;
        }
        dev.host_stop();
        let saved = Snapshot::decode(&dev.save().unwrap()).unwrap();
        assert_eq!(saved.queues[0].size, expect, "after setting {size}");
        dev.host_resume();
    }
}

#[test]
fn device_reset_drops_everything_without_completing() {
    let mut g = Guest::new(config(1));
    g.init(FEATURES, 16);
    g.write(0, 0, &pattern(1, 512), Shape::Plain);
    g.write(0, 1, &pattern(2, 512), Shape::Plain);
    g.go(0);
    g.disk.fill();
    let tags = g.io_tags();
    g.disk.complete(tags[0]);
    g.poll();
    assert_eq!(g.dev.held().filter(|h| h.parked).count(), 1);
    let cp = g.checkpoint();
    g.dev.write_status(0);
    assert_eq!(g.status(), 0);
    assert_eq!(g.dev.held().count(), 0);
    // The second write finishes after the reset: the disk changes, guest memory does not.
    g.disk.heal();
    g.disk.complete(tags[1]);
    g.dev.host_retry();
    g.poll();
    assert_eq!(&g.disk.image()[512..1024], &pattern(2, 512)[..]);
    assert_eq!(
        g.writes_since(cp),
        [],
        "a late completion touched guest memory"
    );
    assert_eq!(g.dev.take_interrupts().used, [0; 4]);
    // The device works again after re-initialization.
    g.init(FEATURES, 16);
    g.read(0, 1, 512, Shape::Plain);
    g.go(0);
    g.complete_all();
    assert_eq!(g.reap(0)[0].data, pattern(2, 512));
}

#[test]
fn queue_reset_drops_the_queue_and_leaves_the_others() {
    let mut g = Guest::new(config(2));
    g.init(FEATURES | F_MQ, 8);
    g.write(0, 0, &pattern(1, 512), Shape::Plain);
    g.go(0);
    g.write(1, 1, &pattern(2, 512), Shape::Plain);
    g.go(1);
    assert_eq!(g.dev.held().count(), 2);
    let cp = g.checkpoint();
    g.dev.queue_reset(0);
    assert_eq!(g.dev.queue_position(0), Some((0, 0)));
    assert!(g.dev.held().all(|h| h.queue == 1));
    g.complete_all();
    // Queue 0's late completion wrote nothing; queue 1 completed.
    let writes = g.writes_since(cp);
    assert!(!writes.is_empty());
    for (addr, len) in writes {
        assert!(owned_by_queue(1, addr), "write of {len} at {addr:#x}");
    }
    assert_eq!(g.reap(1).len(), 1);
    // Queue 0 comes back with fresh rings.
    g.reinit_queue(0);
    g.read(0, 0, 512, Shape::Plain);
    g.go(0);
    g.complete_all();
    assert_eq!(g.reap(0)[0].data, pattern(1, 512));
}

#[test]
fn queue_reset_needs_ring_reset_negotiated() {
    let mut g = Guest::new(config(1));
    g.init(FEATURES & !F_RING_RESET, 8);
    let r = g.read(0, 0, 512, Shape::Plain);
    g.go(0);
    g.dev.queue_reset(0);
    assert_eq!(g.dev.held().count(), 1);
    // The request was not dropped: it completes.
    g.complete_all();
    assert_eq!(g.reap(0).iter().map(|d| d.req).collect::<Vec<_>>(), [r]);
}

#[test]
fn failed_status_stops_the_device() {
    let mut g = Guest::new(config(1));
    g.init(FEATURES, 8);
    g.read(0, 0, 512, Shape::Plain);
    g.go(0);
    g.set_status_bits(S_FAILED, 0);
    assert_ne!(g.status() & S_FAILED, 0);
    let cp = g.checkpoint();
    g.complete_all();
    assert_eq!(g.writes_since(cp), []);
}
