//! Used-buffer notifications: EVENT_IDX's `vring_need_event` across the 16-bit wrap, and
//! the flags rule without EVENT_IDX.

mod fixture;

use fixture::*;
use stopfuzz::device::bits::*;

/// Completes one read and returns whether the device interrupted.
fn one(g: &mut Guest) -> bool {
    g.read(0, 0, 512, Shape::Plain);
    g.go(0);
    g.complete_all();
    g.reap(0);
    g.dev.take_interrupts().used[0] == 1
}

#[test]
fn event_idx_notifies_exactly_when_used_event_is_crossed() {
    for start in [0u16, 0xfff0] {
        let mut g = Guest::new(config(1));
        g.init(FEATURES, 16);
        if start != 0 {
            g.start_indices_at(start);
        }
        // The first decision after init or restore notifies, even with used_event far off.
        g.set_used_event(0, start.wrapping_add(1000));
        assert!(one(&mut g));
        // Then only the update from used_event to used_event + 1 does, across the wrap.
        let mut notified = Vec::new();
        for _ in 0..40 {
            let before = g.used_idx(0);
            g.set_used_event(0, start.wrapping_add(20));
            if one(&mut g) {
                notified.push(before);
            }
        }
        assert_eq!(notified, [start.wrapping_add(20)], "start {start:#x}");
    }
}

#[test]
fn event_idx_batches_notify_when_the_batch_covers_used_event() {
    let mut g = Guest::new(config(1));
    g.init(FEATURES, 16);
    assert!(one(&mut g));
    // A batch of three moving used idx 1 -> 4 covers used_event 2.
    g.set_used_event(0, 2);
    for i in 0..3 {
        g.read(0, i, 512, Shape::Indirect);
    }
    g.go(0);
    g.complete_all();
    assert_eq!(g.dev.take_interrupts().used[0], 1);
    // And one moving 4 -> 7 does not cover it.
    for i in 0..3 {
        g.read(0, i, 512, Shape::Indirect);
    }
    g.go(0);
    g.complete_all();
    assert_eq!(g.dev.take_interrupts().used[0], 0);
}

#[test]
fn event_idx_publishes_avail_event() {
    let mut g = Guest::new(config(1));
    g.init(FEATURES, 16);
    for n in 1..=3u16 {
        g.read(0, 0, 512, Shape::Plain);
        g.go(0);
        assert_eq!(
            g.avail_event(0),
            n,
            "the device asks to be kicked at next_avail"
        );
        g.complete_all();
        g.reap(0);
    }
}

#[test]
fn without_event_idx_the_flags_rule_applies() {
    let mut g = Guest::new(config(1));
    g.init(FEATURES & !F_EVENT_IDX, 16);
    assert!(one(&mut g));
    assert!(one(&mut g), "flags 0: every update notifies");
    g.set_avail_flags(0, AVAIL_F_NO_INTERRUPT);
    assert!(!one(&mut g));
    assert!(!one(&mut g));
    g.set_avail_flags(0, 0);
    assert!(one(&mut g));
}

#[test]
fn no_used_update_no_notification() {
    let mut g = Guest::new(config(1));
    g.init(FEATURES, 16);
    g.dev.kick(0);
    g.poll();
    g.read(0, 0, 512, Shape::Plain);
    g.go(0);
    assert_eq!(
        g.dev.take_interrupts().used[0],
        0,
        "in flight, nothing used yet"
    );
}
