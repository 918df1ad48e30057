//! Stop triggers under both in-flight contracts, the mailing-list thread's example, and
//! ring indices running across 65535.

mod fixture;

use fixture::*;
use stopfuzz::device::bits::*;
use stopfuzz::device::{DeviceConfig, ErrorPolicy, InflightPolicy, StopState};

fn guest(inflight: InflightPolicy, size: u16) -> Guest {
    let mut g = Guest::new(DeviceConfig {
        inflight,
        write_policy: ErrorPolicy::Enospc,
        ..config(1)
    });
    g.init(FEATURES, size);
    g
}

/// The driver-visible triggers: (status bit to set, what a resume write looks like).
#[derive(Clone, Copy, Debug)]
enum Trigger {
    Suspend,
    StopBit,
    Host,
}

const TRIGGERS: [Trigger; 3] = [Trigger::Suspend, Trigger::StopBit, Trigger::Host];

fn stop(g: &mut Guest, t: Trigger) {
    match t {
        Trigger::Suspend => g.set_status_bits(S_SUSPEND, 0),
        Trigger::StopBit => g.set_status_bits(S_STOPPED, 0),
        Trigger::Host => g.dev.host_stop(),
    }
}

fn resume(g: &mut Guest, t: Trigger) {
    match t {
        Trigger::Suspend => g.set_status_bits(S_DRIVER_OK, S_SUSPEND),
        Trigger::StopBit => g.set_status_bits(0, S_STOPPED),
        Trigger::Host => g.dev.host_resume(),
    }
}

fn acked(g: &Guest, t: Trigger) -> bool {
    let s = g.status();
    match t {
        Trigger::Suspend => s & S_SUSPEND != 0 && s & S_DRIVER_OK == 0,
        Trigger::StopBit => s & S_STOPPED != 0,
        Trigger::Host => g.dev.host_stop_state() == StopState::Stopped,
    }
}

#[test]
fn ack_is_visible_as_each_trigger_defines() {
    for t in TRIGGERS {
        let mut g = guest(InflightPolicy::Drain, 16);
        let running = g.status();
        stop(&mut g, t);
        assert!(acked(&g, t), "{t:?}: an idle device acknowledges at once");
        match t {
            Trigger::Suspend => assert_eq!(g.status(), (running & !S_DRIVER_OK) | S_SUSPEND),
            Trigger::StopBit => {
                assert_eq!(g.status(), running | S_STOPPED);
                assert_eq!(g.dev.queue_indices(0), Some((0, 0)));
            }
            Trigger::Host => assert_eq!(g.status(), running, "a host stop is invisible"),
        }
        resume(&mut g, t);
        assert!(!acked(&g, t));
        assert_eq!(g.status(), running, "{t:?}");
        assert_eq!(g.dev.queue_indices(0), None);
    }
}

#[test]
fn stop_bits_need_their_features() {
    let mut g = Guest::new(config(1));
    g.init(FEATURES & !(F_SUSPEND | F_STOP), 16);
    let running = g.status();
    g.set_status_bits(S_SUSPEND, 0);
    g.set_status_bits(S_STOPPED, 0);
    assert_eq!(g.status(), running);
    assert_eq!(g.dev.driver_stop_state(), StopState::Running);
}

#[test]
fn suspend_is_ignored_before_driver_ok() {
    let mut g = Guest::new(config(1));
    g.dev.write_status(S_ACKNOWLEDGE | S_DRIVER | S_SUSPEND);
    assert_eq!(g.dev.driver_stop_state(), StopState::Running);
    assert_eq!(g.status() & S_SUSPEND, 0);
}

#[test]
fn drain_acks_only_when_everything_popped_is_used() {
    for t in TRIGGERS {
        let mut g = guest(InflightPolicy::Drain, 16);
        let a = g.read(0, 0, 512, Shape::Plain);
        let b = g.write(0, 1, &pattern(1, 512), Shape::Plain);
        g.go(0);
        stop(&mut g, t);
        assert!(!acked(&g, t), "{t:?}: two requests in flight");
        let tags = g.io_tags();
        g.disk.complete(tags[1]);
        g.poll();
        assert!(!acked(&g, t), "{t:?}: one left");
        g.disk.complete(tags[0]);
        g.poll();
        assert!(acked(&g, t), "{t:?}");
        assert_eq!(g.dev.queue_position(0), Some((2, 2)));
        let done: Vec<_> = g.reap(0).iter().map(|d| d.req).collect();
        assert_eq!(done, [b, a]);
    }
}

#[test]
fn drain_waits_for_parked_requests_until_heal() {
    let mut g = guest(InflightPolicy::Drain, 16);
    g.write(0, 0, &pattern(1, 512), Shape::Plain);
    g.go(0);
    g.disk.fill();
    g.complete_all();
    g.dev.host_stop();
    g.poll();
    assert_eq!(g.dev.host_stop_state(), StopState::Stopping);
    g.disk.heal();
    g.dev.host_retry();
    g.poll();
    assert_eq!(
        g.dev.host_stop_state(),
        StopState::Stopping,
        "retry in flight"
    );
    g.complete_all();
    assert_eq!(g.dev.host_stop_state(), StopState::Stopped);
    assert_eq!(g.reap(0)[0].status, BLK_S_OK);
}

#[test]
fn track_acks_when_no_io_is_outstanding_and_keeps_the_parked() {
    for t in TRIGGERS {
        let mut g = guest(InflightPolicy::Track, 16);
        let a = g.write(0, 0, &pattern(1, 512), Shape::Plain);
        let b = g.write(0, 1, &pattern(2, 512), Shape::Plain);
        g.go(0);
        stop(&mut g, t);
        assert!(!acked(&g, t), "{t:?}: I/O outstanding");
        g.disk.fill();
        let tags = g.io_tags();
        g.disk.complete(tags[0]);
        g.poll();
        assert!(!acked(&g, t));
        g.disk.heal();
        g.disk.complete(tags[1]);
        g.poll();
        assert!(acked(&g, t), "{t:?}");
        let held: Vec<_> = g.dev.held().map(|h| (h.head, h.parked)).collect();
        assert_eq!(held, [(a.head, true)]);
        assert_eq!(g.dev.queue_position(0), Some((2, 1)));
        assert_eq!(g.reap(0)[0].req, b);
        // Resume resubmits it.
        resume(&mut g, t);
        g.poll();
        g.complete_all();
        assert_eq!(g.reap(0)[0].req, a);
        assert_eq!(&g.disk.image()[..512], &pattern(1, 512)[..]);
    }
}

#[test]
fn after_the_ack_the_device_is_silent() {
    for t in TRIGGERS {
        let mut g = guest(InflightPolicy::Track, 16);
        g.write(0, 0, &pattern(1, 512), Shape::Plain);
        g.go(0);
        g.disk.fill();
        g.complete_all();
        stop(&mut g, t);
        assert!(acked(&g, t));
        g.dev.take_interrupts();
        // A host stop leaves the guest free to publish and kick; nothing may happen.
        if let Trigger::Host = t {
            g.read(0, 0, 512, Shape::Plain);
            g.publish(0);
        }
        let cp = g.checkpoint();
        g.dev.kick(0);
        g.disk.heal();
        g.dev.host_retry();
        for _ in 0..3 {
            g.poll();
        }
        assert!(
            g.disk.outstanding().next().is_none(),
            "{t:?}: I/O while stopped"
        );
        assert_eq!(
            g.writes_since(cp),
            [],
            "{t:?}: guest memory written while stopped"
        );
        assert_eq!(g.dev.take_interrupts(), Default::default());
        // Stopping again is a no-op.
        stop(&mut g, t);
        assert!(acked(&g, t));
        resume(&mut g, t);
        g.poll();
        g.complete_all();
        let expect = if let Trigger::Host = t { 2 } else { 1 };
        assert_eq!(g.reap(0).len(), expect, "{t:?}: kick kept across the stop");
    }
}

#[test]
fn resume_while_running_is_a_no_op() {
    let mut g = guest(InflightPolicy::Track, 16);
    let s = g.status();
    g.dev.host_resume();
    g.set_status_bits(0, S_STOPPED);
    assert_eq!(g.status(), s);
    assert_eq!(g.dev.host_stop_state(), StopState::Running);
}

#[test]
fn a_request_to_stop_can_be_withdrawn_before_the_ack() {
    for t in TRIGGERS {
        let mut g = guest(InflightPolicy::Drain, 16);
        g.read(0, 0, 512, Shape::Plain);
        g.go(0);
        stop(&mut g, t);
        resume(&mut g, t);
        g.complete_all();
        assert!(!acked(&g, t), "{t:?}");
        g.read(0, 1, 512, Shape::Plain);
        g.go(0);
        g.complete_all();
        assert_eq!(g.reap(0).len(), 2);
    }
}

#[test]
fn buffers_made_available_while_host_stopped_run_after_resume_without_a_kick() {
    let mut g = guest(InflightPolicy::Drain, 16);
    g.dev.host_stop();
    g.read(0, 0, 512, Shape::Plain);
    g.publish(0);
    g.poll();
    assert!(g.disk.outstanding().next().is_none());
    g.dev.host_resume();
    g.poll();
    g.complete_all();
    assert_eq!(g.reap(0).len(), 1);
}

/// The example from the virtio-dev STOP thread: a 4-entry ring, completions out of order,
/// freed heads and avail slots reused, then a stop. A device that rewinds
/// `last_avail_idx` to the used idx would lose A and B and run E and F twice.
#[test]
fn thread_example_out_of_order_completion_and_avail_slot_reuse() {
    for migrate in [false, true] {
        let mut g = guest(InflightPolicy::Track, 4);
        let data = |i: u8| pattern(i, 512);
        let reqs: Vec<_> = (0..4u8)
            .map(|i| g.write(0, u64::from(i), &data(i), Shape::Indirect))
            .collect();
        g.go(0);
        let tags = g.io_tags();
        // A and B hit a full disk and park; C and D complete.
        g.disk.fill();
        g.disk.complete(tags[0]);
        g.disk.complete(tags[1]);
        g.disk.heal();
        g.disk.complete(tags[3]);
        g.disk.complete(tags[2]);
        g.poll();
        let first: Vec<_> = g.reap(0).iter().map(|d| d.req).collect();
        assert_eq!(first, [reqs[3], reqs[2]]);
        // E and F reuse the freed heads and overwrite avail slots 0 and 1.
        let e = g.write(0, 4, &data(4), Shape::Indirect);
        let f = g.write(0, 5, &data(5), Shape::Indirect);
        assert_eq!([e.head, f.head], [reqs[2].head, reqs[3].head]);
        g.publish(0);
        g.dev.host_stop();
        assert_eq!(g.dev.host_stop_state(), StopState::Stopped);
        assert_eq!(g.dev.queue_position(0), Some((4, 2)));
        if migrate {
            g.migrate();
        } else {
            g.dev.host_resume();
        }
        g.dev.host_retry();
        g.poll();
        g.complete_all();
        g.poll();
        g.complete_all();
        let mut rest: Vec<_> = g.reap(0).iter().map(|d| (d.req, d.status)).collect();
        rest.sort();
        let mut want = vec![(reqs[0], 0), (reqs[1], 0), (e, 0), (f, 0)];
        want.sort();
        assert_eq!(rest, want, "migrate={migrate}: each request exactly once");
        for i in 0..6u8 {
            let at = usize::from(i) * 512;
            assert_eq!(&g.disk.image()[at..at + 512], &data(i)[..], "sector {i}");
        }
        assert_eq!(g.used_idx(0), 6);
    }
}

#[test]
fn indices_run_across_65535() {
    for inflight in [InflightPolicy::Drain, InflightPolicy::Track] {
        let mut g = guest(inflight, 16);
        g.start_indices_at(0xfff0);
        let mut written = 0u64;
        // 40 requests of 4 in flight cross the wrap with requests outstanding.
        for round in 0..10u8 {
            let reqs: Vec<_> = (0..4u8)
                .map(|i| {
                    let sector = (written + u64::from(i)) % 64;
                    g.write(0, sector, &pattern(round ^ i, 512), Shape::Plain)
                })
                .collect();
            g.go(0);
            // Migrate mid-flight on some rounds, with I/O drained first.
            let tags = g.io_tags();
            for &t in tags.iter().rev() {
                g.disk.complete(t);
            }
            if round % 3 == 0 {
                g.poll();
                g.migrate();
            }
            g.poll();
            let done: Vec<_> = g.reap(0).iter().map(|d| d.req).collect();
            let mut want = reqs.clone();
            want.reverse();
            assert_eq!(done, want, "{inflight:?} round {round}");
            written += 4;
        }
        assert_eq!(g.used_idx(0), 0xfff0u16.wrapping_add(40));
        assert_eq!(g.dev.queue_position(0), Some((24, 24)));
    }
}
