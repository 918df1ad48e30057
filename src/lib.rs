//! stopfuzz: a fuzzing and fault-injection harness for virtio devices that are stopped,
//! resumed, migrated, reset, or made to retry failed I/O.
//!
//! Bytes decode to a [`program::Program`]; the [`engine`] runs it with the guest
//! [`driver`] against any device behind the boundary in [`dut`], and the [`oracle`] checks
//! every step against the [`model`] and the harness's record of the [`stops`] it asked for. [`targets`] are the entry points the fuzzers call;
//! [`explore`] is the built-in explorer behind `stopfuzz run`.
//!
//! The reference device is [`device`]. Nothing on the checking side (engine, oracle,
//! model, driver, program) imports it: they speak [`dut`], [`contract`] and [`virtio`].

#![warn(missing_docs)]

pub mod backend;
#[cfg(feature = "mutants")]
pub mod bench;
pub mod contract;
pub mod device;
pub mod driver;
pub mod dut;
pub mod engine;
pub mod explore;
pub mod memory;
pub mod minimize;
pub mod model;
#[cfg(feature = "mutants")]
pub mod mutants;
pub mod oracle;
pub mod program;
pub mod reach;
pub mod seeds;
pub mod serve;
pub mod shadow;
pub mod stops;
pub mod targets;
pub mod trace;
pub mod virtio;
