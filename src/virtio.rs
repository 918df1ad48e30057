//! The virtio and virtio-blk numbers both sides take from the spec, named once.
//!
//! The driver and the device each implement the rules on their own; only the numbers are
//! shared, so a mistake in one side's logic cannot hide in the other's.

use virtio_bindings::{virtio_blk, virtio_config, virtio_ring};

const fn bit(n: u32) -> u64 {
    1 << n
}

pub const F_FLUSH: u64 = bit(virtio_blk::VIRTIO_BLK_F_FLUSH);
pub const F_MQ: u64 = bit(virtio_blk::VIRTIO_BLK_F_MQ);
pub const F_INDIRECT_DESC: u64 = bit(virtio_ring::VIRTIO_RING_F_INDIRECT_DESC);
pub const F_EVENT_IDX: u64 = bit(virtio_ring::VIRTIO_RING_F_EVENT_IDX);
pub const F_VERSION_1: u64 = bit(virtio_config::VIRTIO_F_VERSION_1);
pub const F_RING_RESET: u64 = bit(virtio_config::VIRTIO_F_RING_RESET);
/// `VIRTIO_F_SUSPEND`, virtio 1.4 (not yet in virtio-bindings).
pub const F_SUSPEND: u64 = bit(43);
/// Gates the seed proposal's STOP status bit. The proposal never got a feature number
/// merged, so stopfuzz uses bit 63, which no virtio device or transport assigns.
pub const F_STOP: u64 = bit(63);

pub const S_ACKNOWLEDGE: u8 = virtio_config::VIRTIO_CONFIG_S_ACKNOWLEDGE as u8;
pub const S_DRIVER: u8 = virtio_config::VIRTIO_CONFIG_S_DRIVER as u8;
pub const S_DRIVER_OK: u8 = virtio_config::VIRTIO_CONFIG_S_DRIVER_OK as u8;
pub const S_FEATURES_OK: u8 = virtio_config::VIRTIO_CONFIG_S_FEATURES_OK as u8;
/// SUSPEND, virtio 1.4: the value 16 in the 8-bit status field.
pub const S_SUSPEND: u8 = 16;
/// DEVICE_STOPPED from the STOP proposal's QEMU prototype: the value 32.
pub const S_STOPPED: u8 = 32;
pub const S_NEEDS_RESET: u8 = virtio_config::VIRTIO_CONFIG_S_NEEDS_RESET as u8;
pub const S_FAILED: u8 = virtio_config::VIRTIO_CONFIG_S_FAILED as u8;

pub const T_IN: u32 = virtio_blk::VIRTIO_BLK_T_IN;
pub const T_OUT: u32 = virtio_blk::VIRTIO_BLK_T_OUT;
pub const T_FLUSH: u32 = virtio_blk::VIRTIO_BLK_T_FLUSH;
pub const T_GET_ID: u32 = virtio_blk::VIRTIO_BLK_T_GET_ID;

pub const BLK_S_OK: u8 = virtio_blk::VIRTIO_BLK_S_OK as u8;
pub const BLK_S_IOERR: u8 = virtio_blk::VIRTIO_BLK_S_IOERR as u8;
pub const BLK_S_UNSUPP: u8 = virtio_blk::VIRTIO_BLK_S_UNSUPP as u8;

/// Length of the GET_ID answer.
pub const ID_BYTES: usize = virtio_blk::VIRTIO_BLK_ID_BYTES as usize;

pub const DESC_F_NEXT: u16 = virtio_ring::VRING_DESC_F_NEXT as u16;
pub const DESC_F_WRITE: u16 = virtio_ring::VRING_DESC_F_WRITE as u16;
pub const DESC_F_INDIRECT: u16 = virtio_ring::VRING_DESC_F_INDIRECT as u16;
pub const AVAIL_F_NO_INTERRUPT: u16 = virtio_ring::VRING_AVAIL_F_NO_INTERRUPT as u16;
pub const USED_F_NO_NOTIFY: u16 = virtio_ring::VRING_USED_F_NO_NOTIFY as u16;
