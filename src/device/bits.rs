//! The spec's numbers, plus what this device offers.

pub use crate::virtio::*;

/// Every feature the device can offer.
pub const SUPPORTED: u64 = F_FLUSH
    | F_MQ
    | F_INDIRECT_DESC
    | F_EVENT_IDX
    | F_VERSION_1
    | F_RING_RESET
    | F_SUSPEND
    | F_STOP;
