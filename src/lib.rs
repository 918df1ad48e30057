//! stopfuzz: a fuzzing and fault-injection harness for virtio devices that are stopped,
//! resumed, migrated, reset, or made to retry failed I/O.
//!
//! Bytes decode to a [`program::Program`]; the [`engine`] runs it with the guest
//! [`driver`] against a device under test ([`dut`]), and the [`oracle`] checks every step
//! against the [`model`]. [`targets`] are the entry points the fuzzers call.

pub mod backend;
#[cfg(feature = "mutants")]
pub mod bench;
pub mod device;
pub mod driver;
pub mod dut;
pub mod engine;
pub mod explore;
pub mod memory;
pub mod model;
#[cfg(feature = "mutants")]
pub mod mutants;
pub mod oracle;
pub mod program;
pub mod seeds;
pub mod targets;
pub mod trace;
