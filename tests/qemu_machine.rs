//! QEMU's own virtio-blk-pci, driven with no guest OS through qtest and QMP
//! (src/dut/qemu/). Skipped, with a message, where qemu-system-x86_64 is not installed.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use stopfuzz::dut::process::Scratch;
use stopfuzz::dut::qemu::machine::{Config, Machine, QemuFault, QueueStatus, Tuning};
use stopfuzz::memory::GuestMem;
use vm_memory::{Bytes, GuestAddress};

const RAM: usize = 16 << 20;
const QSIZE: u16 = 16;
const DESC: u64 = 0x10_0000;
const AVAIL: u64 = 0x10_1000;
const USED: u64 = 0x10_2000;
const HEADER: u64 = 0x11_0000;
const DATA: u64 = 0x11_1000;
const STATUS: u64 = 0x11_2000;
const MSI_ADDR: u64 = 0x1000;
const MSI_DATA: u32 = 0x4321;
const VERSION_1: u64 = 1 << 32;

fn qemu_installed() -> bool {
    let found = std::process::Command::new("qemu-system-x86_64")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        eprintln!("qemu-system-x86_64 is not installed: test skipped (ci/install-qemu.sh)");
    }
    found
}

fn alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks that the pid exists.
    unsafe { libc::kill(pid, 0) == 0 }
}

struct Rig {
    gm: GuestMem,
    image: PathBuf,
    _scratch: Scratch,
}

fn rig() -> Rig {
    let scratch = Scratch::new("qemu-test").unwrap();
    let image = scratch.join("disk.img");
    std::fs::write(&image, vec![0u8; 32 * 1024]).unwrap();
    Rig {
        gm: GuestMem::shared(RAM, 1 << 16).unwrap(),
        image,
        _scratch: scratch,
    }
}

fn config(rig: &Rig) -> Config {
    Config::new(rig.gm.share().unwrap(), rig.image.clone())
}

fn timed<T>(what: &str, f: impl FnOnce() -> T) -> T {
    let start = Instant::now();
    let v = f();
    eprintln!("{what}: {:.2} ms", start.elapsed().as_secs_f64() * 1e3);
    v
}

const RING_RESET: u64 = 1 << 40;

/// Reset, features VERSION_1, one queue of QSIZE at DESC/AVAIL/USED on MSI-X vector 1.
fn init(m: &mut Machine) {
    init_with(m, VERSION_1);
}

fn init_with(m: &mut Machine, features: u64) {
    m.set_status(0).unwrap();
    assert_eq!(m.status().unwrap(), 0);
    m.set_status(1 | 2).unwrap();
    assert_ne!(m.device_features().unwrap() & VERSION_1, 0);
    m.set_driver_features(features).unwrap();
    m.set_status(1 | 2 | 8).unwrap();
    assert_eq!(m.status().unwrap() & 8, 8, "FEATURES_OK taken");
    assert!(m.num_queues().unwrap() >= 1);
    assert!(m.queue_max_size(0).unwrap() >= QSIZE);
    m.set_msix(1, MSI_ADDR, MSI_DATA).unwrap();
    m.setup_queue(0, QSIZE, DESC, AVAIL, USED, 1).unwrap();
    m.enable_queue(0).unwrap();
    m.set_status(1 | 2 | 8 | 4).unwrap();
    assert_eq!(m.status().unwrap(), 15);
}

/// Writes a 512-byte write request for `sector` as descriptors 0..3 and publishes it as
/// avail entry `n` (so avail idx becomes n + 1).
fn publish_write(gm: &GuestMem, n: u16, sector: u64, pattern: u8) {
    let mem = gm.mem();
    mem.write_obj(1u32, GuestAddress(HEADER)).unwrap(); // VIRTIO_BLK_T_OUT
    mem.write_obj(0u32, GuestAddress(HEADER + 4)).unwrap();
    mem.write_obj(sector, GuestAddress(HEADER + 8)).unwrap();
    mem.write_slice(&[pattern; 512], GuestAddress(DATA))
        .unwrap();
    mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
    let descs: [(u64, u32, u16, u16); 3] = [
        (HEADER, 16, 1, 1), // NEXT
        (DATA, 512, 1, 2),  // NEXT
        (STATUS, 1, 2, 0),  // WRITE
    ];
    for (i, (addr, len, flags, next)) in descs.iter().enumerate() {
        let d = DESC + 16 * i as u64;
        mem.write_obj(*addr, GuestAddress(d)).unwrap();
        mem.write_obj(*len, GuestAddress(d + 8)).unwrap();
        mem.write_obj(*flags, GuestAddress(d + 12)).unwrap();
        mem.write_obj(*next, GuestAddress(d + 14)).unwrap();
    }
    mem.write_obj(0u16, GuestAddress(AVAIL + 4 + 2 * u64::from(n % QSIZE)))
        .unwrap();
    std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
    mem.write_obj(n + 1, GuestAddress(AVAIL + 2)).unwrap();
}

fn used_idx(gm: &GuestMem) -> u16 {
    gm.mem().read_obj(GuestAddress(USED + 2)).unwrap()
}

/// Polls the used idx until it reaches `want`, for at most `wait`.
fn await_used(gm: &GuestMem, want: u16, wait: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < wait {
        if used_idx(gm) == want {
            return true;
        }
        std::thread::sleep(Duration::from_micros(50));
    }
    used_idx(gm) == want
}

fn sector(image: &Path, n: u64) -> Vec<u8> {
    let all = std::fs::read(image).unwrap();
    all[(n * 512) as usize..(n * 512 + 512) as usize].to_vec()
}

#[test]
fn ram_is_shared_both_ways() {
    if !qemu_installed() {
        return;
    }
    let rig = rig();
    let mut m = Machine::start(&config(&rig)).unwrap();
    m.qtest().writel(0x20_0000, 0xdead_beef).unwrap();
    let got: u32 = rig.gm.mem().read_obj(GuestAddress(0x20_0000)).unwrap();
    assert_eq!(
        got, 0xdead_beef,
        "a qtest write shows in stopfuzz's mapping"
    );
    rig.gm
        .mem()
        .write_obj(0x1234_5678u32, GuestAddress(0x30_0000))
        .unwrap();
    assert_eq!(m.qtest().readl(0x30_0000).unwrap(), 0x1234_5678);
    // Above the PC hole too.
    rig.gm
        .mem()
        .write_obj(0x55u8, GuestAddress(RAM as u64 - 1))
        .unwrap();
    assert_eq!(m.qtest().readb(RAM as u64 - 1).unwrap(), 0x55);
}

#[test]
fn a_write_completes_and_interrupts() {
    if !qemu_installed() {
        return;
    }
    let rig = rig();
    let mut m = timed("start to ready", || Machine::start(&config(&rig)).unwrap());
    assert_eq!(m.run_state().unwrap(), "prelaunch");
    let cap = m.config_read(0, 8).unwrap();
    assert_eq!(
        u64::from_le_bytes(cap.try_into().unwrap()),
        64,
        "32 KiB in sectors"
    );
    timed("virtio init", || init(&mut m));
    m.cont().unwrap();
    publish_write(&rig.gm, 0, 3, 0xa5);
    timed("one write request", || {
        m.notify(0).unwrap();
        assert!(
            await_used(&rig.gm, 1, Duration::from_secs(2)),
            "used idx moves"
        );
    });
    let status: u8 = rig.gm.mem().read_obj(GuestAddress(STATUS)).unwrap();
    assert_eq!(status, 0);
    assert_eq!(sector(&rig.image, 3), vec![0xa5; 512]);
    let start = Instant::now();
    let mut msi = 0u32;
    while msi != MSI_DATA && start.elapsed() < Duration::from_secs(1) {
        msi = rig.gm.mem().read_obj(GuestAddress(MSI_ADDR)).unwrap();
    }
    assert_eq!(msi, MSI_DATA, "the MSI-X message landed in RAM");
    timed("stop", || m.stop().unwrap());
    assert_eq!(m.run_state().unwrap(), "paused");
    timed("cont", || m.cont().unwrap());
    assert_eq!(m.run_state().unwrap(), "running");
    let qs = m.queue_status(0).unwrap();
    assert_eq!((qs.last_avail_idx, qs.used_idx, qs.inuse), (1, 1, 0));
    assert!(m.death().is_none());
    let argv = m.argv().join(" ");
    assert!(argv.contains("memory-backend-file,id=ram0"), "{argv}");
    assert!(
        argv.contains("virtio-blk-pci,id=vblk,drive=d0,disable-legacy=on"),
        "{argv}"
    );
    let pid = m.pid();
    let dir = m.scratch_dir().to_path_buf();
    assert!(alive(pid) && dir.exists());
    drop(m);
    assert!(!alive(pid), "a dropped machine leaves no QEMU behind");
    assert!(!dir.exists(), "nor its scratch directory");
}

#[test]
fn enospc_with_werror_stop_parks_the_write_until_cont() {
    if !qemu_installed() {
        return;
    }
    let rig = rig();
    let mut cfg = config(&rig);
    cfg.faults = vec![QemuFault {
        write: true,
        sector: 3,
        errno: 28,
        once: true,
    }];
    cfg.props = vec![("werror".into(), "stop".into())];
    let mut m = Machine::start(&cfg).unwrap();
    init(&mut m);
    m.cont().unwrap();
    publish_write(&rig.gm, 0, 3, 0x5a);
    m.notify(0).unwrap();
    let start = Instant::now();
    while m.run_state().unwrap() != "io-error" && start.elapsed() < Duration::from_secs(2) {
        std::thread::sleep(Duration::from_micros(200));
    }
    assert_eq!(m.run_state().unwrap(), "io-error");
    assert_eq!(used_idx(&rig.gm), 0, "no used entry while parked");
    assert_eq!(m.queue_status(0).unwrap().inuse, 1);
    let events = m.qmp_events();
    assert!(
        events.iter().any(|e| e["event"] == "BLOCK_IO_ERROR"),
        "{events:?}"
    );
    m.cont().unwrap();
    assert!(await_used(&rig.gm, 1, Duration::from_secs(2)));
    assert_eq!(
        rig.gm.mem().read_obj::<u8>(GuestAddress(STATUS)).unwrap(),
        0
    );
    assert_eq!(sector(&rig.image, 3), vec![0x5a; 512]);
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(used_idx(&rig.gm), 1, "completed exactly once");
    assert_eq!(m.run_state().unwrap(), "running");
}

fn round_trip(tuning: Tuning) -> (QueueStatus, QueueStatus) {
    let rig = rig();
    let mut cfg = config(&rig);
    let mut m = Machine::start_tuned(&cfg, tuning).unwrap();
    init(&mut m);
    m.cont().unwrap();
    publish_write(&rig.gm, 0, 3, 0x11);
    m.notify(0).unwrap();
    assert!(await_used(&rig.gm, 1, Duration::from_secs(2)));
    let before = m.queue_status(0).unwrap();
    let layout = m.layout().clone();
    let file = rig._scratch.join("migration");
    let start = Instant::now();
    m.stop().unwrap();
    m.migrate_to(&file).unwrap();
    let saved = start.elapsed();
    assert_eq!(m.run_state().unwrap(), "postmigrate");
    drop(m);
    cfg.incoming = Some(file.clone());
    let start = Instant::now();
    let mut n = Machine::start_tuned(&cfg, tuning).unwrap();
    let loaded = start.elapsed();
    eprintln!(
        "migration (ignore_shared {}): save {:.2} ms, {} bytes; spawn+load {:.2} ms",
        tuning.ignore_shared,
        saved.as_secs_f64() * 1e3,
        std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0),
        loaded.as_secs_f64() * 1e3
    );
    assert_eq!(n.run_state().unwrap(), "paused");
    assert_eq!(n.status().unwrap(), 15, "device status came across");
    assert_eq!(n.layout(), &layout, "PCI layout re-discovered");
    let after = n.queue_status(0).unwrap();
    // The destination goes on: a second request on the same queue.
    n.cont().unwrap();
    publish_write(&rig.gm, 1, 4, 0x22);
    n.notify(0).unwrap();
    assert!(await_used(&rig.gm, 2, Duration::from_secs(2)));
    assert_eq!(sector(&rig.image, 4), vec![0x22; 512]);
    (before, after)
}

#[test]
fn migration_to_a_file_and_back_keeps_the_queue() {
    if !qemu_installed() {
        return;
    }
    for ignore_shared in [true, false] {
        let (before, after) = round_trip(Tuning { ignore_shared });
        assert_eq!(before, after);
    }
}

#[test]
fn bad_input_is_an_error() {
    if !qemu_installed() {
        return;
    }
    let rig = rig();
    let mut cfg = config(&rig);
    cfg.faults = vec![QemuFault {
        write: true,
        sector: 0,
        errno: 7,
        once: false,
    }];
    assert!(Machine::start(&cfg).unwrap_err().contains("errno 7"));
    let mut cfg = config(&rig);
    cfg.props = vec![("werror".into(), "bogus".into())];
    let e = Machine::start(&cfg).unwrap_err();
    assert!(e.contains("exited"), "{e}");
    let mut cfg = config(&rig);
    cfg.binary = "/nonexistent/qemu".into();
    assert!(Machine::start(&cfg).is_err());
    let mut cfg = config(&rig);
    cfg.image = "/nonexistent.img".into();
    assert!(Machine::start(&cfg).is_err());
}

#[test]
fn a_queue_reset_with_ring_reset_and_the_queue_goes_on() {
    if !qemu_installed() {
        return;
    }
    let rig = rig();
    let mut m = Machine::start(&config(&rig)).unwrap();
    assert_ne!(m.device_features().unwrap() & RING_RESET, 0);
    init_with(&mut m, VERSION_1 | RING_RESET);
    m.cont().unwrap();
    publish_write(&rig.gm, 0, 1, 0x31);
    m.notify(0).unwrap();
    assert!(await_used(&rig.gm, 1, Duration::from_secs(2)));
    timed("queue reset", || m.reset_queue(0).unwrap());
    let qs = m.queue_status(0).unwrap();
    assert_eq!((qs.last_avail_idx, qs.used_idx), (0, 0), "{qs:?}");
    // Set up again from index 0.
    for a in [AVAIL, USED] {
        rig.gm.mem().write_obj(0u32, GuestAddress(a)).unwrap();
    }
    m.setup_queue(0, QSIZE, DESC, AVAIL, USED, 1).unwrap();
    m.enable_queue(0).unwrap();
    publish_write(&rig.gm, 0, 2, 0x32);
    m.notify(0).unwrap();
    assert!(await_used(&rig.gm, 1, Duration::from_secs(2)));
    assert_eq!(sector(&rig.image, 2), vec![0x32; 512]);
}

#[test]
fn stop_drains_a_slow_request() {
    if !qemu_installed() {
        return;
    }
    let rig = rig();
    let mut cfg = config(&rig);
    cfg.slow = Some(50_000_000);
    let mut m = Machine::start(&cfg).unwrap();
    init(&mut m);
    m.cont().unwrap();
    publish_write(&rig.gm, 0, 3, 0x77);
    m.notify(0).unwrap();
    // Taken, not completed (a qtest round trip lets QEMU's main loop run).
    m.status().unwrap();
    assert_eq!(used_idx(&rig.gm), 0);
    timed("stop with a 50 ms request in flight", || m.stop().unwrap());
    assert_eq!(used_idx(&rig.gm), 1, "stop returned after the drain");
    assert_eq!(sector(&rig.image, 3), vec![0; 512], "null-co keeps no data");
    assert_eq!(m.run_state().unwrap(), "paused");
}

#[test]
fn a_parked_request_migrates_and_completes_on_the_destination() {
    if !qemu_installed() {
        return;
    }
    let rig = rig();
    let mut cfg = config(&rig);
    cfg.faults = vec![QemuFault {
        write: true,
        sector: 3,
        errno: 5,
        once: true,
    }];
    cfg.props = vec![("werror".into(), "stop".into())];
    let mut m = Machine::start(&cfg).unwrap();
    init(&mut m);
    m.cont().unwrap();
    publish_write(&rig.gm, 0, 3, 0x44);
    m.notify(0).unwrap();
    let start = Instant::now();
    while m.run_state().unwrap() != "io-error" && start.elapsed() < Duration::from_secs(2) {
        std::thread::sleep(Duration::from_micros(200));
    }
    assert_eq!(m.run_state().unwrap(), "io-error");
    let file = rig._scratch.join("parked");
    m.migrate_to(&file).unwrap();
    drop(m);
    // The destination has no blkdebug node: the retry succeeds.
    cfg.faults.clear();
    cfg.incoming = Some(file);
    let mut n = Machine::start(&cfg).unwrap();
    assert_eq!(n.run_state().unwrap(), "io-error");
    assert_eq!(n.queue_status(0).unwrap().inuse, 1);
    assert_eq!(used_idx(&rig.gm), 0);
    n.cont().unwrap();
    assert!(await_used(&rig.gm, 1, Duration::from_secs(2)));
    assert_eq!(sector(&rig.image, 3), vec![0x44; 512]);
}

#[test]
fn a_killed_qemu_is_a_death_and_commands_fail() {
    if !qemu_installed() {
        return;
    }
    let rig = rig();
    let mut m = Machine::start(&config(&rig)).unwrap();
    // SAFETY: the pid is the machine's own child.
    unsafe { libc::kill(m.pid(), libc::SIGKILL) };
    let start = Instant::now();
    while m.death().is_none() && start.elapsed() < Duration::from_secs(2) {
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(m.death().unwrap().contains("QEMU exited"));
    assert!(m.status().is_err());
    assert!(m.run_state().is_err());
}

/// Figures for the report: `cargo test --test qemu_machine -- --ignored --nocapture`.
#[test]
#[ignore]
fn timings() {
    if !qemu_installed() {
        return;
    }
    let rig = rig();
    let mut starts = vec![];
    for _ in 0..8 {
        let t = Instant::now();
        let m = Machine::start(&config(&rig)).unwrap();
        starts.push(t.elapsed().as_secs_f64() * 1e3);
        drop(m);
    }
    starts.sort_by(f64::total_cmp);
    eprintln!("start to ready: median {:.1} ms of 8", starts[4]);
    let mut m = Machine::start(&config(&rig)).unwrap();
    let t = Instant::now();
    for _ in 0..1000 {
        m.status().unwrap();
    }
    eprintln!(
        "one qtest round trip: {:.1} us",
        t.elapsed().as_secs_f64() * 1e3
    );
    let t = Instant::now();
    for _ in 0..100 {
        init(&mut m);
    }
    eprintln!("reset + init: {:.3} ms", t.elapsed().as_secs_f64() * 10.0);
    m.cont().unwrap();
    let t = Instant::now();
    for n in 0..200u16 {
        publish_write(&rig.gm, n, u64::from(n % 64), n as u8);
        m.notify(0).unwrap();
        assert!(await_used(&rig.gm, n + 1, Duration::from_secs(2)));
    }
    eprintln!(
        "one 512-byte write, kick to used: {:.3} ms",
        t.elapsed().as_secs_f64() * 5.0
    );
    let t = Instant::now();
    for _ in 0..100 {
        m.stop().unwrap();
        m.cont().unwrap();
    }
    eprintln!("stop + cont: {:.3} ms", t.elapsed().as_secs_f64() * 10.0);
    drop(m);
    for ignore_shared in [true, false] {
        let t = Instant::now();
        round_trip(Tuning { ignore_shared });
        eprintln!(
            "whole round trip test (ignore_shared {ignore_shared}): {:.1} ms",
            t.elapsed().as_secs_f64() * 1e3
        );
    }
}
