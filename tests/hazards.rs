//! The virtio-queue 0.18 hazards from DESIGN.md. Each test first shows the hazard on a bare
//! `Queue`, then shows the device handling it.

mod fixture;

use std::sync::atomic::Ordering;

use fixture::*;
use stopfuzz::device::bits::*;
use stopfuzz::device::{BlkDevice, RestoreError, Snapshot};
use stopfuzz::driver::desc_bytes;
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::{Queue, QueueOwnedT, QueueState, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// A bare queue over the driver's ring 0.
fn bare_queue(g: &Guest) -> Queue {
    let ring = &g.driver.queues[0];
    let mut q = Queue::new(ring.size).unwrap();
    q.try_set_desc_table_address(GuestAddress(ring.desc))
        .unwrap();
    q.try_set_avail_ring_address(GuestAddress(ring.avail))
        .unwrap();
    q.try_set_used_ring_address(GuestAddress(ring.used))
        .unwrap();
    q.set_event_idx(true);
    q.set_ready(true);
    q
}

#[test]
fn pop_descriptor_chain_swallows_an_invalid_avail_idx() {
    let mut g = Guest::new(config(1));
    g.init(FEATURES, 16);
    g.driver.set_avail_idx(g.gm.mem(), 0, 17);
    // Hazard: pop says "empty" while enable_notification says "more": a drain loop spins.
    let mut q = bare_queue(&g);
    assert!(q.pop_descriptor_chain(g.mem()).is_none());
    assert!(q.enable_notification(g.mem()).unwrap());
    assert!(matches!(
        q.iter(g.mem()),
        Err(virtio_queue::Error::InvalidAvailRingIndex)
    ));
    // The device: NEEDS_RESET at once, nothing consumed, no guest write.
    let cp = g.checkpoint();
    g.dev.kick(0);
    g.poll();
    assert!(g.dev.needs_reset());
    assert_eq!(g.dev.queue_position(0), Some((0, 0)));
    assert!(g.disk.outstanding().next().is_none());
    assert_eq!(g.writes_since(cp), []);
}

#[test]
fn an_avail_idx_moved_backwards_is_the_same_hazard() {
    let mut g = Guest::new(config(1));
    g.init(FEATURES, 16);
    g.read(0, 0, 512, Shape::Plain);
    g.go(0);
    assert!(!g.dev.needs_reset());
    g.driver.set_avail_idx(g.gm.mem(), 0, 0);
    g.dev.kick(0);
    g.poll();
    assert!(g.dev.needs_reset());
}

#[test]
fn queue_state_forgets_notification_bookkeeping() {
    let mut g = Guest::new(config(1));
    g.init(FEATURES, 16);
    g.set_used_event(0, 0);
    // Hazard: after state() -> try_from, needs_notification misses the update at used_event.
    let mut kept = bare_queue(&g);
    kept.add_used(g.mem(), 0, 1).unwrap();
    assert!(kept.needs_notification(g.mem()).unwrap());
    let mut q = bare_queue(&g);
    q.add_used(g.mem(), 0, 1).unwrap();
    let mut restored = Queue::try_from(q.state()).unwrap();
    assert!(!restored.needs_notification(g.mem()).unwrap());
    // The device notifies on the first used update after a restore, whatever used_event
    // says, and only on the first. Not reaping keeps used_event where the test put it.
    let mut g = Guest::new(config(1));
    g.init(FEATURES, 16);
    let interrupts = |g: &mut Guest| {
        g.read(0, 0, 512, Shape::Plain);
        g.go(0);
        g.complete_all();
        g.dev.take_interrupts().used[0]
    };
    g.set_used_event(0, 1000);
    assert_eq!(interrupts(&mut g), 1, "the first decision after init");
    assert_eq!(interrupts(&mut g), 0, "used_event is far away");
    g.migrate();
    assert_eq!(interrupts(&mut g), 1, "the first used update after restore");
    assert_eq!(interrupts(&mut g), 0, "only the first");
}

#[test]
fn queue_try_from_does_not_check_ring_positions() {
    let mut g = Guest::new(config(1));
    g.init(FEATURES, 16);
    // Hazard: any next_avail is accepted.
    let state = QueueState {
        next_avail: 12345,
        ..bare_queue(&g).state()
    };
    assert_eq!(Queue::try_from(state).unwrap().next_avail(), 12345);
    // The device checks positions against guest memory.
    g.dev.host_stop();
    let mut snap = Snapshot::decode(&g.dev.save().unwrap()).unwrap();
    snap.queues[0].next_avail = 12345;
    let mut fresh = BlkDevice::new(g.dev.config().clone()).unwrap();
    assert!(matches!(
        fresh.restore(&snap.encode(), g.mem()),
        Err(RestoreError::Inuse { inuse: 12345, .. })
    ));
}

#[test]
fn bad_chains_end_silently_in_virtio_queue() {
    let mut g = Guest::new(config(1));
    g.init(FEATURES, 16);
    let (header, table, nested) = (scratch(0), scratch(2), scratch(3));
    // head 0: a header whose next is out of range; head 1: nested indirect; head 99 is
    // past the ring.
    g.stage_chain(0, 0, &[(header, 16, DESC_F_NEXT, 99)]);
    g.stage_chain(0, 1, &[(table, 16, DESC_F_INDIRECT, 0)]);
    let inner = desc_bytes(nested, 16, DESC_F_INDIRECT, 0);
    g.mem().write_slice(&inner, GuestAddress(table)).unwrap();
    g.stage_chain(0, 99, &[]);
    // Hazard: no error anywhere, just short chains.
    let mut q = bare_queue(&g);
    let lens: Vec<usize> = q.iter(g.mem()).unwrap().map(|c| c.count()).collect();
    assert_eq!(lens, [1, 0, 0]);
    // Head 99 cannot even be returned.
    assert!(q.add_used(g.mem(), 99, 0).is_err());
    // The device: NEEDS_RESET on the first one, holding nothing.
    g.dev.kick(0);
    g.poll();
    assert!(g.dev.needs_reset());
    assert_eq!(g.dev.held().count(), 0);
}

#[test]
fn add_used_can_fail_after_advancing_next_used() {
    // Two regions with a hole: the used ring header (flags, idx) falls in the hole, its
    // first element does not.
    let mem = GuestMemoryMmap::<()>::from_ranges(&[
        (GuestAddress(0), 0x20000 - 0x1000),
        (GuestAddress(0x20000), 0x10000),
    ])
    .unwrap();
    let used = 0x1fffc;
    let mut q = Queue::new(16).unwrap();
    q.try_set_used_ring_address(GuestAddress(used)).unwrap();
    q.set_ready(true);
    // Hazard: the call fails, but next_used moved.
    assert!(q.add_used(&mem, 0, 1).is_err());
    assert_eq!(q.next_used(), 1);
    // The device treats it as fatal.
    let mut dev = BlkDevice::new(config(1)).unwrap();
    let mut disk = stopfuzz::backend::MemDisk::new(64);
    dev.write_status(S_ACKNOWLEDGE | S_DRIVER);
    dev.set_driver_features(FEATURES);
    dev.write_status(S_ACKNOWLEDGE | S_DRIVER | S_FEATURES_OK);
    dev.queue_set_size(0, 16);
    dev.queue_set_addresses(0, 0x1000, 0x2000, used);
    dev.queue_enable(0);
    dev.write_status(S_ACKNOWLEDGE | S_DRIVER | S_FEATURES_OK | S_DRIVER_OK);
    // One GET_ID request: header, 20-byte id buffer, status.
    mem.write_obj(T_GET_ID, GuestAddress(0x4000)).unwrap();
    let chain = [
        desc_bytes(0x4000, 16, DESC_F_NEXT, 1),
        desc_bytes(0x5000, 20, DESC_F_NEXT | DESC_F_WRITE, 2),
        desc_bytes(0x6000, 1, DESC_F_WRITE, 0),
    ];
    mem.write_slice(chain.as_flattened(), GuestAddress(0x1000))
        .unwrap();
    mem.write_obj(0u16, GuestAddress(0x2004)).unwrap();
    mem.write_obj(1u16, GuestAddress(0x2002)).unwrap();
    dev.kick(0);
    dev.poll(&mem, &mut disk);
    // The element landed (id 0, len 21), the index could not be published.
    assert_eq!(
        mem.read_obj::<[u32; 2]>(GuestAddress(0x20000)).unwrap(),
        [0, 21]
    );
    assert!(dev.needs_reset());
}

#[test]
fn the_mock_rings_overlap_and_do_not_wrap() {
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
    // Hazard: the mock puts the used ring inside the avail ring...
    let vq = MockSplitQueue::new(&mem, 16);
    let avail_end = vq.avail_addr().0 + 4 + 2 * 16 + 2;
    assert!(vq.used_addr().0 < avail_end);
    // ...and its chain building cannot go past ring size.
    let mut vq = MockSplitQueue::new(&mem, 4);
    for _ in 0..4 {
        vq.add_chain(1).unwrap();
    }
    assert!(vq.add_chain(1).is_err());
    // The driver's rings are disjoint and wrap: 200 requests through a 4-entry ring.
    let mut g = Guest::new(config(1));
    g.init(FEATURES, 4);
    let ring = &g.driver.queues[0];
    assert!(ring.avail + 4 + 2 * 4 + 2 <= ring.used);
    for i in 0..200u32 {
        g.read(0, u64::from(i % 64), 512, Shape::Indirect);
        g.go(0);
        g.complete_all();
        assert_eq!(g.reap(0).len(), 1);
    }
    assert_eq!(g.used_idx(0), 200);
    let used = g.dev.queue_position(0).unwrap();
    assert_eq!(used, (200, 200));
    let q = bare_queue(&g);
    assert_eq!(q.used_idx(g.mem(), Ordering::Acquire).unwrap().0, 200);
}
