//! QEMU's own virtio-blk-pci as a device under test, with no guest OS: stopfuzz drives
//! the device through QEMU's qtest protocol (MMIO, port I/O) and QMP (run state, migration),
//! and shares guest RAM with QEMU through a memfd, so rings and DMA need no copying.
//!
//! One job per module: [`firmware`] (a BIOS that only halts), [`qtest`] (the qtest text
//! protocol), [`qmp`] (the QMP JSON protocol), [`pci`] (config space, BARs, capabilities,
//! MSI-X), [`machine`] (one QEMU process and the virtio-pci transport on top of them).

pub mod firmware;
pub mod machine;
pub mod pci;
pub mod qmp;
pub mod qtest;
