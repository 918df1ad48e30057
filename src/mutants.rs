//! Planted bugs, built only with the `mutants` feature and chosen at run time.
//!
//! Each mutant is one small change in the reference device that mirrors a real bug class
//! (numbers refer to `references/stop-semantics.md`: B# bugs and [#] invariants). A harness
//! that cannot find one has a hole in its driver or oracle. The oracle never looks at the
//! selection: a test checks that its source does not mention mutants at all.
//!
//! The selection is process-wide: [`select`], or the `STOPFUZZ_MUTANT` environment variable
//! (read once), which is how fuzzer binaries get it.

use std::str::FromStr;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU8, Ordering};

macro_rules! mutants {
    ($($(#[$doc:meta])* $name:ident = $id:literal,)*) => {
        /// A planted bug.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
        pub enum Mutant {
            $($(#[$doc])* $name,)*
        }

        impl Mutant {
            /// Every mutant, in declaration order.
            pub const ALL: &[Mutant] = &[$(Mutant::$name,)*];

            /// The name `STOPFUZZ_MUTANT` and [`FromStr`] take.
            pub fn name(self) -> &'static str {
                match self {
                    $(Mutant::$name => $id,)*
                }
            }
        }
    };
}

mutants! {
    /// On resume, `last_avail_idx` is rewound to the used idx and held requests are
    /// forgotten: the thread's canonical bug (B11, B12, B15), which loses a request and runs
    /// another twice once slots were reused [21].
    NaiveRewind = "naive-rewind",
    /// Restore takes `last_avail_idx` from the used idx and drops held requests, as a
    /// back-end that trusts `used->idx` does (B19, B17) [30].
    RestoreFromUsed = "restore-from-used",
    /// A virtqueue reset keeps the cached ring positions (B7: state surviving
    /// SET_VRING_BASE) [6, 36].
    StaleIndexAfterQueueReset = "stale-index-after-queue-reset",
    /// Restore keeps the notification bookkeeping valid, so the first used update after
    /// it may not notify (virtio-queue's QueueState hazard; B8) [32].
    NoNotifyAfterRestore = "no-notify-after-restore",
    /// Save leaves parked requests out of the snapshot (Q-BLK save_device) [26].
    SaveDropsParked = "save-drops-parked",
    /// Under the stop policy a failed request completes with IOERR instead of parking
    /// (Q-BLK handle_rw_error) [24].
    ParkedReportsIoerr = "parked-reports-ioerr",
    /// A parked request is completed with IOERR and also kept for retry: the scsi-disk
    /// double completion (B9) [25].
    ParkedCompletedAndRetried = "parked-completed-and-retried",
    /// A device reset keeps parked requests and retries them afterwards (Q-BLK reset
    /// drops them after blk_drain) [37].
    ParkedRetriedAfterReset = "parked-retried-after-reset",
    /// After the stop acknowledgement the device still re-enables notifications, writing
    /// `avail_event` or the used flags (B16: use after stop) [13].
    WriteAfterAck = "write-after-ack",
    /// Available buffers are counted without 16-bit wrapping, so the device stalls when
    /// avail idx crosses 65535 [1].
    UnwrappedIndex = "unwrapped-index",
    /// With avail idx more than a ring ahead, the device consumes a ring's worth instead
    /// of going NEEDS_RESET (virtio-queue PR #196, cloud-hypervisor #7605) [2].
    ConsumeBeyondWindow = "consume-beyond-window",
    /// A request answered with an error status is never returned to the used ring
    /// (cloud-hypervisor #8401) [9].
    HeadLeakedOnError = "head-leaked-on-error",
    /// Restore accepts more buffers in flight than the ring holds (CVE-2016-5403, B1)
    /// [3, 31].
    RestoreAcceptsInuseOverSize = "restore-accepts-inuse-over-size",
    /// Kicks that arrive while stopped are dropped, and resume does not rescan
    /// (cloud-hypervisor #8004, firecracker #5958) [15].
    KicksLostWhileStopped = "kicks-lost-while-stopped",
    /// Under Drain a parked request does not hold the acknowledgement back [19].
    DrainAckIgnoresParked = "drain-ack-ignores-parked",
    /// The EVENT_IDX test is off by one: it notifies only past `used_event + 1` (B20) [34].
    EventIdxOffByOne = "event-idx-off-by-one",
    /// A device reset forgets a host stop: the rings the VMM stopped run again, and the
    /// device reports itself running (a back-end restarting vrings the front-end stopped
    /// with GET_VRING_BASE) [13, 33].
    HostStopForgottenOnReset = "host-stop-forgotten-on-reset",
    /// Under Drain the acknowledgement also waits for pending kicks to be served, which a
    /// stopping device never does: a drain loop that waits for the queues to go idle
    /// instead of for the buffers it popped [14, 19].
    DrainAckWaitsForKicks = "drain-ack-waits-for-kicks",
    /// SUSPEND reads back set as soon as the driver writes it, DRIVER_OK clearing only at
    /// the real acknowledgement: half an acknowledgement, and a driver that polls SUSPEND
    /// takes the device for suspended while it still completes requests [13, 14, 17].
    SuspendShownBeforeAck = "suspend-shown-before-ack",
    /// Parked requests are retried in reverse fetch order: a retry list kept as a stack
    /// (QEMU's virtio-blk keeps its `rq` list in order for this) [26].
    RetryOutOfOrder = "retry-out-of-order",
    /// A parked request is retried at the next poll, without waiting for the heal or
    /// resume: an internal retry loop that spins on ENOSPC instead of pausing [24, 26].
    RetryWithoutRetryPoint = "retry-without-retry-point",
    /// The device keeps fetching new buffers while a request is parked, where QEMU's
    /// werror=stop pauses the VM [24].
    ConsumeWhileParked = "consume-while-parked",
    /// A retry resubmits every held request, including those whose I/O still runs: a
    /// retry path that does not tell parked from in flight, so one request runs twice
    /// (B9) [25].
    RetryResubmitsRunning = "retry-resubmits-running",
}

impl FromStr for Mutant {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Mutant::ALL
            .iter()
            .copied()
            .find(|m| m.name() == s)
            .ok_or_else(|| {
                let names: Vec<_> = Mutant::ALL.iter().map(|m| m.name()).collect();
                format!("unknown mutant {s:?}; expected one of {}", names.join(", "))
            })
    }
}

/// 0 means none; otherwise the index in `ALL` plus one.
static SELECTED: AtomicU8 = AtomicU8::new(0);
static FROM_ENV: OnceLock<()> = OnceLock::new();

/// Selects the mutant for every device in this process (`None`: the reference device).
pub fn select(mutant: Option<Mutant>) {
    FROM_ENV.get_or_init(|| ());
    let code = mutant.map_or(0, |m| {
        1 + Mutant::ALL.iter().position(|x| *x == m).unwrap() as u8
    });
    SELECTED.store(code, Ordering::Relaxed);
}

/// The selected mutant: the last [`select`], or else `STOPFUZZ_MUTANT`, read on first use.
pub fn selected() -> Option<Mutant> {
    FROM_ENV.get_or_init(|| {
        if let Ok(name) = std::env::var("STOPFUZZ_MUTANT") {
            let mutant = name
                .parse::<Mutant>()
                .unwrap_or_else(|e| panic!("STOPFUZZ_MUTANT: {e}"));
            let code = 1 + Mutant::ALL.iter().position(|x| *x == mutant).unwrap() as u8;
            SELECTED.store(code, Ordering::Relaxed);
        }
    });
    match SELECTED.load(Ordering::Relaxed) {
        0 => None,
        code => Some(Mutant::ALL[usize::from(code - 1)]),
    }
}

/// Whether `mutant` is the selected one; `mutant!(Name)` expands to this.
pub fn on(mutant: Mutant) -> bool {
    selected() == Some(mutant)
}

/// `mutant!(Name)`: whether that planted bug is active. Without the feature it is `false`
/// and the module does not exist.
#[macro_export]
#[doc(hidden)]
macro_rules! mutant {
    ($name:ident) => {
        $crate::mutants::on($crate::mutants::Mutant::$name)
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_are_unique() {
        assert!(Mutant::ALL.len() >= 14);
        for m in Mutant::ALL {
            assert_eq!(m.name().parse::<Mutant>(), Ok(*m));
        }
        let mut names: Vec<_> = Mutant::ALL.iter().map(|m| m.name()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), Mutant::ALL.len());
    }
}
