//! stopfuzz: a fuzzing and fault-injection harness for virtio devices that are stopped,
//! resumed, migrated, reset, or made to retry failed I/O.
//!
//! This crate holds the device under test, [`device::BlkDevice`], and the disk behind it,
//! [`backend::MemDisk`].

pub mod backend;
pub mod device;
