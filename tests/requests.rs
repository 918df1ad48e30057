//! Requests, malformed chains, error policies and parked requests.

mod fixture;

use fixture::*;
use stopfuzz::backend::IoError;
use stopfuzz::device::bits::*;
use stopfuzz::device::{DeviceConfig, ErrorPolicy};
use stopfuzz::driver::desc_bytes;
use vm_memory::{Bytes, GuestAddress};

fn guest() -> Guest {
    let mut g = Guest::new(config(1));
    g.init(FEATURES, 16);
    g
}

fn guest_with(write_policy: ErrorPolicy, read_policy: ErrorPolicy) -> Guest {
    let mut g = Guest::new(DeviceConfig {
        write_policy,
        read_policy,
        ..config(1)
    });
    g.init(FEATURES, 16);
    g
}

const SHAPES: [Shape; 4] = [
    Shape::Plain,
    Shape::SplitData,
    Shape::Indirect,
    Shape::SplitHeader,
];

#[test]
fn read_write_flush_and_get_id_in_every_shape() {
    for shape in SHAPES {
        let mut g = guest();
        let data = pattern(9, 1024);
        g.write(0, 3, &data, shape);
        g.go(0);
        g.complete_all();
        let w = g.reap(0);
        assert_eq!((w[0].status, w[0].len), (BLK_S_OK, 1), "{shape:?}");
        let r = g.read(0, 3, 1024, shape);
        g.go(0);
        g.complete_all();
        let done = g.reap(0);
        assert_eq!(done[0].req, r);
        assert_eq!((done[0].status, done[0].len), (BLK_S_OK, 1025), "{shape:?}");
        assert_eq!(done[0].data, data);
        g.flush(0, shape);
        g.go(0);
        g.complete_all();
        assert_eq!(g.reap(0)[0].status, BLK_S_OK);
        g.get_id(0, shape);
        g.go(0);
        let id = g.reap(0);
        assert_eq!((id[0].status, id[0].len), (BLK_S_OK, 21));
        assert_eq!(id[0].data, g.dev.config().device_id);
    }
}

#[test]
fn unknown_types_get_unsupp_and_flush_needs_its_feature() {
    let mut g = guest();
    let r = g.flush(0, Shape::Plain);
    g.set_type(r, 0x1234);
    g.go(0);
    assert_eq!(g.reap(0)[0].status, BLK_S_UNSUPP);
    let mut g = Guest::new(config(1));
    g.init(FEATURES & !F_FLUSH, 16);
    g.flush(0, Shape::Plain);
    g.go(0);
    assert_eq!(g.reap(0)[0].status, BLK_S_UNSUPP);
}

#[test]
fn out_of_order_completion() {
    let mut g = guest();
    let a = g.write(0, 0, &pattern(1, 512), Shape::Plain);
    let b = g.write(0, 1, &pattern(2, 512), Shape::Plain);
    let c = g.write(0, 2, &pattern(3, 512), Shape::Plain);
    g.go(0);
    let tags = g.io_tags();
    for i in [2, 0, 1] {
        g.disk.complete(tags[i]);
        g.poll();
    }
    let order: Vec<_> = g.reap(0).iter().map(|d| d.req).collect();
    assert_eq!(order, [c, a, b]);
}

#[test]
fn request_errors_complete_with_ioerr_and_return_the_head() {
    let mut g = guest();
    // Past capacity, a partial sector, and data in the wrong direction both ways.
    g.read(0, 64, 512, Shape::Plain);
    g.read(0, 0, 100, Shape::Plain);
    let r = g.read(0, 0, 512, Shape::Plain);
    g.flip_data_direction(r);
    let w = g.write(0, 0, &pattern(1, 512), Shape::Plain);
    g.flip_data_direction(w);
    g.go(0);
    let done = g.reap(0);
    assert_eq!(done.len(), 4);
    for d in &done {
        assert_eq!((d.status, d.len), (BLK_S_IOERR, 1), "{:?}", d.req);
    }
    assert!(g.disk.outstanding().next().is_none());
    assert!(!g.dev.needs_reset());
}

/// Writes a hand-made chain from `head` on, publishes it and kicks.
fn publish_chain(g: &mut Guest, head: u16, descs: &[RawDesc]) {
    g.stage_chain(0, head, descs);
    g.dev.kick(0);
    g.poll();
}

fn publish_head(g: &mut Guest, head: u16) {
    publish_chain(g, head, &[]);
}

fn header(g: &Guest, at: u64, t: u32) {
    let mut h = [0u8; 16];
    h[..4].copy_from_slice(&t.to_le_bytes());
    g.mem().write_slice(&h, GuestAddress(at)).unwrap();
}

const N: u16 = DESC_F_NEXT;
const W: u16 = DESC_F_WRITE;

#[test]
fn short_header_gets_ioerr() {
    let mut g = guest();
    let (hdr, status) = (scratch(0), scratch(1));
    header(&g, hdr, T_IN);
    publish_chain(&mut g, 0, &[(hdr, 8, N, 1), (status, 1, W, 0)]);
    assert_eq!(g.used_idx(0), 1);
    assert_eq!(g.used_entry(0, 0), (0, 1));
    assert_eq!(
        g.mem().read_obj::<u8>(GuestAddress(status)).unwrap(),
        BLK_S_IOERR
    );
}

#[test]
fn read_only_status_returns_the_head_without_a_status() {
    let mut g = guest();
    let (hdr, status) = (scratch(0), scratch(1));
    header(&g, hdr, T_IN);
    g.mem().write_obj(0xeeu8, GuestAddress(status)).unwrap();
    g.stage_chain(0, 0, &[(hdr, 16, N, 1), (status, 1, 0, 0)]);
    let cp = g.checkpoint();
    g.dev.kick(0);
    g.poll();
    assert_eq!(g.used_idx(0), 1);
    assert_eq!(g.used_entry(0, 0), (0, 0));
    assert!(!g.dev.needs_reset());
    // The device wrote nothing but the used ring: no status byte anywhere.
    let used = g.driver.queues[0].used;
    for (addr, len) in g.writes_since(cp) {
        assert!(
            (used..used + 0x1000).contains(&addr),
            "write of {len} at {addr:#x}"
        );
    }
    assert_eq!(g.mem().read_obj::<u8>(GuestAddress(status)).unwrap(), 0xee);
}

#[test]
fn broken_chains_make_the_device_need_reset() {
    let (hdr, status, table, nested) = (scratch(0), scratch(1), scratch(2), scratch(3));
    let cases: [(&str, &[RawDesc]); 4] = [
        ("bad next", &[(hdr, 16, N, 200)]),
        ("loop", &[(hdr, 16, N, 1), (status, 1, W | N, 0)]),
        ("nested indirect", &[(table, 32, DESC_F_INDIRECT, 0)]),
        ("empty indirect table", &[(table, 0, DESC_F_INDIRECT, 0)]),
    ];
    for (what, chain) in cases {
        let mut g = guest();
        header(&g, hdr, T_IN);
        // The indirect table itself points at another indirect table.
        let inner = [
            desc_bytes(hdr, 16, N, 1),
            desc_bytes(nested, 16, DESC_F_INDIRECT, 0),
        ];
        g.mem()
            .write_slice(inner.as_flattened(), GuestAddress(table))
            .unwrap();
        g.dev.take_interrupts();
        g.stage_chain(0, 0, chain);
        let cp = g.checkpoint();
        g.dev.kick(0);
        g.poll();
        assert!(g.dev.needs_reset(), "{what}");
        assert_ne!(g.status() & S_NEEDS_RESET, 0);
        assert_eq!(g.dev.take_interrupts().config, 1, "{what}");
        assert_eq!(g.writes_since(cp), [], "{what}: device wrote guest memory");
    }
}

#[test]
fn head_out_of_range_makes_the_device_need_reset() {
    let mut g = guest();
    publish_head(&mut g, 16);
    assert!(g.dev.needs_reset());
    // It stays quiet: a new request, kicked, does nothing.
    g.read(0, 0, 512, Shape::Plain);
    g.publish(0);
    let cp = g.checkpoint();
    g.dev.kick(0);
    g.poll();
    assert_eq!(g.used_idx(0), 0);
    assert!(g.disk.outstanding().next().is_none());
    assert_eq!(g.writes_since(cp), []);
}

#[test]
fn reused_head_in_flight_makes_the_device_need_reset() {
    let mut g = guest();
    let r = g.read(0, 0, 512, Shape::Plain);
    g.go(0);
    assert_eq!(g.dev.held().count(), 1);
    publish_head(&mut g, r.head);
    assert!(g.dev.needs_reset());
    assert_eq!(g.dev.held().count(), 0);
}

#[test]
fn write_policies() {
    use ErrorPolicy::*;
    // (policy, error, status the guest sees or None when parked)
    let cases = [
        (Report, IoError::NoSpace, Some(BLK_S_IOERR)),
        (Report, IoError::Io, Some(BLK_S_IOERR)),
        (Ignore, IoError::NoSpace, Some(BLK_S_OK)),
        (Ignore, IoError::Io, Some(BLK_S_OK)),
        (Stop, IoError::NoSpace, None),
        (Stop, IoError::Io, None),
        (Enospc, IoError::NoSpace, None),
        (Enospc, IoError::Io, Some(BLK_S_IOERR)),
    ];
    for (policy, error, expect) in cases {
        let mut g = guest_with(policy, Report);
        g.write(0, 0, &pattern(1, 512), Shape::Plain);
        g.go(0);
        let cp = g.checkpoint();
        g.disk.fail(g.io_tags()[0], error);
        g.poll();
        let writes = g.writes_since(cp);
        let done = g.reap(0);
        match expect {
            Some(status) => assert_eq!(
                (done[0].status, done[0].len),
                (status, 1),
                "{policy:?} {error:?}"
            ),
            None => {
                assert!(done.is_empty());
                assert_eq!(writes, [], "a parked request wrote guest memory");
                assert_eq!(g.dev.held().filter(|h| h.parked).count(), 1);
            }
        }
    }
}

#[test]
fn read_policies() {
    use ErrorPolicy::*;
    for (policy, expect) in [
        (Report, Some(BLK_S_IOERR)),
        (Ignore, Some(BLK_S_OK)),
        (Stop, None),
    ] {
        let mut g = guest_with(Report, policy);
        g.read(0, 0, 512, Shape::Plain);
        g.go(0);
        g.disk.fail(g.io_tags()[0], IoError::Io);
        g.poll();
        let done = g.reap(0);
        assert_eq!(
            done.first().map(|d| (d.status, d.len)),
            expect.map(|s| (s, 1)),
            "{policy:?}"
        );
    }
}

#[test]
fn flush_follows_the_write_policy() {
    let mut g = guest_with(ErrorPolicy::Stop, ErrorPolicy::Report);
    g.flush(0, Shape::Plain);
    g.go(0);
    g.disk.fail(g.io_tags()[0], IoError::Io);
    g.poll();
    assert_eq!(g.dev.held().filter(|h| h.parked).count(), 1);
}

#[test]
fn parked_requests_retry_in_fetch_order_before_new_buffers() {
    let mut g = guest_with(ErrorPolicy::Enospc, ErrorPolicy::Report);
    let a = g.write(0, 0, &pattern(1, 512), Shape::Plain);
    let b = g.write(0, 1, &pattern(2, 512), Shape::Plain);
    g.go(0);
    g.disk.fill();
    let tags = g.io_tags();
    // b fails first, then a: retry order is still fetch order, a then b.
    g.disk.complete(tags[1]);
    g.disk.complete(tags[0]);
    g.poll();
    assert_eq!(g.dev.held().filter(|h| h.parked).count(), 2);
    // New buffers are not fetched while requests are parked.
    let c = g.write(0, 2, &pattern(3, 512), Shape::Plain);
    g.go(0);
    assert_eq!(g.dev.held().count(), 2);
    assert!(g.disk.outstanding().next().is_none());
    // Heal: the retry goes out first, in fetch order, then the new buffer.
    g.disk.heal();
    g.dev.host_retry();
    g.poll();
    let sectors: Vec<u64> = g
        .disk
        .outstanding()
        .map(|(_, io)| match io {
            stopfuzz::backend::Io::Write { sector, .. } => *sector,
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(sectors, [0, 1, 2]);
    g.complete_all();
    let mut done: Vec<_> = g.reap(0).into_iter().map(|d| (d.req, d.status)).collect();
    done.sort();
    let mut want = vec![(a, BLK_S_OK), (b, BLK_S_OK), (c, BLK_S_OK)];
    want.sort();
    assert_eq!(done, want, "each request completes exactly once");
    assert_eq!(&g.disk.image()[..512], &pattern(1, 512)[..]);
}

#[test]
fn a_retry_that_fails_again_parks_again() {
    let mut g = guest_with(ErrorPolicy::Enospc, ErrorPolicy::Report);
    g.write(0, 0, &pattern(1, 512), Shape::Plain);
    g.go(0);
    g.disk.fill();
    g.complete_all();
    for _ in 0..3 {
        g.dev.host_retry();
        g.poll();
        assert_eq!(g.dev.held().filter(|h| h.parked).count(), 0, "retried");
        g.complete_all();
        assert_eq!(g.reap(0).len(), 0);
        assert_eq!(g.dev.held().filter(|h| h.parked).count(), 1);
    }
    g.disk.heal();
    g.dev.host_retry();
    g.poll();
    g.complete_all();
    assert_eq!(g.reap(0).len(), 1);
    assert_eq!(g.reap(0).len(), 0);
}
