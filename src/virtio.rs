//! The virtio and virtio-blk numbers both sides take from the spec, named once.
//!
//! The driver and the device each implement the rules on their own; only the numbers are
//! shared, so a mistake in one side's logic cannot hide in the other's.

use virtio_bindings::{virtio_blk, virtio_config, virtio_ring};

const fn bit(n: u32) -> u64 {
    1 << n
}

/// `VIRTIO_BLK_F_FLUSH`: the device takes FLUSH requests.
pub const F_FLUSH: u64 = bit(virtio_blk::VIRTIO_BLK_F_FLUSH);
/// `VIRTIO_BLK_F_MQ`: more than one request queue.
pub const F_MQ: u64 = bit(virtio_blk::VIRTIO_BLK_F_MQ);
/// `VIRTIO_RING_F_INDIRECT_DESC`: a descriptor may point to a table of descriptors.
pub const F_INDIRECT_DESC: u64 = bit(virtio_ring::VIRTIO_RING_F_INDIRECT_DESC);
/// `VIRTIO_RING_F_EVENT_IDX`: kicks and interrupts are suppressed by `avail_event` and
/// `used_event` instead of the ring flags.
pub const F_EVENT_IDX: u64 = bit(virtio_ring::VIRTIO_RING_F_EVENT_IDX);
/// `VIRTIO_F_VERSION_1`: virtio 1.x, not legacy.
pub const F_VERSION_1: u64 = bit(virtio_config::VIRTIO_F_VERSION_1);
/// `VIRTIO_F_RING_RESET`: one virtqueue can be reset on its own.
pub const F_RING_RESET: u64 = bit(virtio_config::VIRTIO_F_RING_RESET);
/// `VIRTIO_F_SUSPEND`, virtio 1.4 (not yet in virtio-bindings).
pub const F_SUSPEND: u64 = bit(43);
/// Gates the seed proposal's STOP status bit. The proposal never got a feature number
/// merged, so stopfuzz uses bit 63, which no virtio device or transport assigns.
pub const F_STOP: u64 = bit(63);

/// ACKNOWLEDGE: the guest has found the device.
pub const S_ACKNOWLEDGE: u8 = virtio_config::VIRTIO_CONFIG_S_ACKNOWLEDGE as u8;
/// DRIVER: the guest has a driver for it.
pub const S_DRIVER: u8 = virtio_config::VIRTIO_CONFIG_S_DRIVER as u8;
/// DRIVER_OK: the driver is set up and ready to drive the device.
pub const S_DRIVER_OK: u8 = virtio_config::VIRTIO_CONFIG_S_DRIVER_OK as u8;
/// FEATURES_OK: negotiation is done; it reads back set only if the device accepts the
/// driver's features.
pub const S_FEATURES_OK: u8 = virtio_config::VIRTIO_CONFIG_S_FEATURES_OK as u8;
/// SUSPEND, virtio 1.4: the value 16 in the 8-bit status field.
pub const S_SUSPEND: u8 = 16;
/// DEVICE_STOPPED from the STOP proposal's QEMU prototype: the value 32.
pub const S_STOPPED: u8 = 32;
/// DEVICE_NEEDS_RESET: the device hit an error it cannot recover from without a reset.
pub const S_NEEDS_RESET: u8 = virtio_config::VIRTIO_CONFIG_S_NEEDS_RESET as u8;
/// FAILED: the guest has given up on the device.
pub const S_FAILED: u8 = virtio_config::VIRTIO_CONFIG_S_FAILED as u8;

/// Request type: read.
pub const T_IN: u32 = virtio_blk::VIRTIO_BLK_T_IN;
/// Request type: write.
pub const T_OUT: u32 = virtio_blk::VIRTIO_BLK_T_OUT;
/// Request type: flush.
pub const T_FLUSH: u32 = virtio_blk::VIRTIO_BLK_T_FLUSH;
/// Request type: read the device's ID string.
pub const T_GET_ID: u32 = virtio_blk::VIRTIO_BLK_T_GET_ID;

/// Request status: success.
pub const BLK_S_OK: u8 = virtio_blk::VIRTIO_BLK_S_OK as u8;
/// Request status: I/O error, or a malformed request.
pub const BLK_S_IOERR: u8 = virtio_blk::VIRTIO_BLK_S_IOERR as u8;
/// Request status: unsupported request type.
pub const BLK_S_UNSUPP: u8 = virtio_blk::VIRTIO_BLK_S_UNSUPP as u8;

/// Length of the GET_ID answer.
pub const ID_BYTES: usize = virtio_blk::VIRTIO_BLK_ID_BYTES as usize;

/// Descriptor flag: the chain goes on at `next`.
pub const DESC_F_NEXT: u16 = virtio_ring::VRING_DESC_F_NEXT as u16;
/// Descriptor flag: the buffer is device-writable.
pub const DESC_F_WRITE: u16 = virtio_ring::VRING_DESC_F_WRITE as u16;
/// Descriptor flag: the buffer is a table of descriptors.
pub const DESC_F_INDIRECT: u16 = virtio_ring::VRING_DESC_F_INDIRECT as u16;
/// Avail ring flag: the driver wants no used-buffer interrupts (without EVENT_IDX).
pub const AVAIL_F_NO_INTERRUPT: u16 = virtio_ring::VRING_AVAIL_F_NO_INTERRUPT as u16;
/// Used ring flag: the device wants no kicks (without EVENT_IDX).
pub const USED_F_NO_NOTIFY: u16 = virtio_ring::VRING_USED_F_NO_NOTIFY as u16;
