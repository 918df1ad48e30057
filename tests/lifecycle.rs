//! Status register, feature negotiation, configuration space, queue setup and resets.

mod fixture;

use fixture::*;
use stopfuzz::device::bits::*;
use stopfuzz::device::{BlkDevice, ConfigError, DeviceConfig, ErrorPolicy};

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

#[test]
fn features_ok_is_refused_for_bad_features() {
    for features in [F_FLUSH, F_VERSION_1 | 1 << 50] {
        let mut dev = BlkDevice::new(config(1)).unwrap();
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
fn unoffered_features_cannot_be_negotiated() {
    let cfg = DeviceConfig {
        features: F_VERSION_1,
        ..config(1)
    };
    let mut g = Guest::new(cfg);
    g.dev.write_status(S_ACKNOWLEDGE | S_DRIVER);
    g.dev.set_driver_features(F_VERSION_1 | F_FLUSH);
    g.dev.write_status(S_ACKNOWLEDGE | S_DRIVER | S_FEATURES_OK);
    assert_eq!(g.status() & S_FEATURES_OK, 0);
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
        assert_eq!(g.rings.len(), usize::from(queues));
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

#[test]
fn without_mq_only_queue_zero_runs() {
    let mut g = Guest::new(config(2));
    g.init(FEATURES, 8);
    assert_eq!(g.rings.len(), 1);
    g.dev.kick(1);
    g.poll();
    assert!(!g.dev.needs_reset());
}

#[test]
fn queue_size_must_be_a_power_of_two_up_to_the_maximum() {
    let mut g = Guest::new(DeviceConfig {
        queue_max_size: 16,
        ..config(1)
    });
    g.init(FEATURES, 16);
    // The queue is enabled: setup writes are ignored.
    g.dev.queue_set_size(0, 4);
    assert_eq!(
        g.dev.save().err(),
        Some(stopfuzz::device::SaveError::Running)
    );
    let mut dev = BlkDevice::new(DeviceConfig {
        queue_max_size: 16,
        ..config(1)
    })
    .unwrap();
    for (size, ok) in [(3u16, false), (32, false), (0, false), (8, true)] {
        dev.queue_set_size(0, size);
        dev.host_stop();
        let snap = dev.save().unwrap();
        // The size sits at offset 27 of the snapshot.
        let saved = u16::from_le_bytes([snap[27], snap[28]]);
        assert_eq!(saved == size, ok, "size {size}");
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
    let before = g.memory_image();
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
        g.memory_image(),
        before,
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
    let before = g.memory_image();
    g.dev.queue_reset(0);
    assert_eq!(g.dev.queue_position(0), Some((0, 0)));
    assert!(g.dev.held().all(|h| h.queue == 1));
    g.complete_all();
    // Queue 0's late completion wrote nothing; queue 1 completed.
    let after = g.memory_image();
    let q0 = 0x10000..0x13000;
    assert_eq!(before[q0.clone()], after[q0]);
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
    g.read(0, 0, 512, Shape::Plain);
    g.go(0);
    g.dev.queue_reset(0);
    assert_eq!(g.dev.held().count(), 1);
}

#[test]
fn failed_status_stops_the_device() {
    let mut g = Guest::new(config(1));
    g.init(FEATURES, 8);
    g.read(0, 0, 512, Shape::Plain);
    g.go(0);
    g.set_status_bits(S_FAILED, 0);
    assert_ne!(g.status() & S_FAILED, 0);
    let before = g.memory_image();
    g.complete_all();
    assert_eq!(g.memory_image(), before);
}
