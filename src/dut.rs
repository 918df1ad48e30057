//! The device boundary: everything the engine may do to a device under test.
//!
//! The in-process reference device implements it today; a remote vhost-user back-end can
//! implement it later. A device declares what it offers in [`Capabilities`], and the oracle
//! skips only the checks a device cannot support, saying so in its report.

use vm_memory::GuestMemory;

use crate::backend::Backend;
use crate::device::{
    BlkDevice, ConfigError, DeviceConfig, Held, Interrupts, RestoreError, SaveError, StopState,
};

/// What a device under test lets the harness see and control.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capabilities {
    /// The harness decides when and how each disk I/O completes.
    pub controls_io: bool,
    /// Every guest-memory write is observed exactly, through the write log.
    pub exact_writes: bool,
    /// The same calls always give the same results.
    pub deterministic: bool,
    /// Ring positions and held requests can be read from the device.
    pub introspection: bool,
}

pub trait DeviceUnderTest: Sized {
    fn build(config: DeviceConfig) -> Result<Self, ConfigError>;
    fn capabilities(&self) -> Capabilities;
    fn config(&self) -> &DeviceConfig;

    fn read_status(&self) -> u8;
    fn write_status(&mut self, value: u8);
    fn set_driver_features(&mut self, features: u64);
    fn queue_set_size(&mut self, q: u16, size: u16);
    fn queue_set_addresses(&mut self, q: u16, desc: u64, avail: u64, used: u64);
    fn queue_enable(&mut self, q: u16);
    fn queue_reset(&mut self, q: u16);
    fn kick(&mut self, q: u16);
    fn take_interrupts(&mut self) -> Interrupts;

    fn poll<M: GuestMemory, B: Backend>(&mut self, mem: &M, disk: &mut B);

    fn host_stop(&mut self);
    fn host_resume(&mut self);
    fn host_retry(&mut self);
    fn host_stop_state(&self) -> StopState;
    fn save(&self) -> Result<Vec<u8>, SaveError>;
    /// Builds a fresh device with the same configuration and restores `bytes` into it.
    fn restored<M: GuestMemory>(&self, bytes: &[u8], mem: &M) -> Result<Self, RestoreError>;

    /// `(next_avail, next_used)` of a queue, with `introspection`.
    fn ring_position(&self, q: u16) -> Option<(u16, u16)>;
    /// Requests popped and not yet used, with `introspection`.
    fn held(&self) -> Vec<Held>;
}

impl DeviceUnderTest for BlkDevice {
    fn build(config: DeviceConfig) -> Result<Self, ConfigError> {
        BlkDevice::new(config)
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            controls_io: true,
            exact_writes: true,
            deterministic: true,
            introspection: true,
        }
    }

    fn config(&self) -> &DeviceConfig {
        BlkDevice::config(self)
    }

    fn read_status(&self) -> u8 {
        BlkDevice::read_status(self)
    }

    fn write_status(&mut self, value: u8) {
        BlkDevice::write_status(self, value)
    }

    fn set_driver_features(&mut self, features: u64) {
        BlkDevice::set_driver_features(self, features)
    }

    fn queue_set_size(&mut self, q: u16, size: u16) {
        BlkDevice::queue_set_size(self, q, size)
    }

    fn queue_set_addresses(&mut self, q: u16, desc: u64, avail: u64, used: u64) {
        BlkDevice::queue_set_addresses(self, q, desc, avail, used)
    }

    fn queue_enable(&mut self, q: u16) {
        BlkDevice::queue_enable(self, q)
    }

    fn queue_reset(&mut self, q: u16) {
        BlkDevice::queue_reset(self, q)
    }

    fn kick(&mut self, q: u16) {
        BlkDevice::kick(self, q)
    }

    fn take_interrupts(&mut self) -> Interrupts {
        BlkDevice::take_interrupts(self)
    }

    fn poll<M: GuestMemory, B: Backend>(&mut self, mem: &M, disk: &mut B) {
        BlkDevice::poll(self, mem, disk)
    }

    fn host_stop(&mut self) {
        BlkDevice::host_stop(self)
    }

    fn host_resume(&mut self) {
        BlkDevice::host_resume(self)
    }

    fn host_retry(&mut self) {
        BlkDevice::host_retry(self)
    }

    fn host_stop_state(&self) -> StopState {
        BlkDevice::host_stop_state(self)
    }

    fn save(&self) -> Result<Vec<u8>, SaveError> {
        BlkDevice::save(self)
    }

    fn restored<M: GuestMemory>(&self, bytes: &[u8], mem: &M) -> Result<Self, RestoreError> {
        let mut fresh = BlkDevice::new(self.config().clone()).expect("a built device's config");
        fresh.restore(bytes, mem)?;
        Ok(fresh)
    }

    fn ring_position(&self, q: u16) -> Option<(u16, u16)> {
        self.queue_position(q)
    }

    fn held(&self) -> Vec<Held> {
        BlkDevice::held(self).collect()
    }
}
