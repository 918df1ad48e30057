//! The reference device behind the boundary: every capability, exact write observation,
//! and a disk the harness controls.

use super::{
    Capabilities, Description, Device, DeviceError, DiskControl, Env, Events, Held, HostControl,
    Introspection, Migration, RingBase, SavedQueue, SavedState, SnapshotInspection, StopState,
    Want, WriteObservation,
};
use crate::device::request::{BlkRequest, Kind};
use crate::device::{self, BlkDevice, DeviceConfig, MAX_QUEUE_SIZE, SavedRequest, Snapshot, bits};

/// The GET_ID answer of every reference device.
pub const DEVICE_ID: [u8; 20] = *b"stopfuzz-reference\0\0";

/// A reference device offering every feature, built as `want` asks.
pub fn build(want: &Want) -> Result<Box<dyn Device>, DeviceError> {
    let config = DeviceConfig {
        num_queues: want.queues,
        queue_max_size: MAX_QUEUE_SIZE,
        capacity: want.capacity,
        features: bits::SUPPORTED,
        inflight: want.contract.inflight,
        write_policy: want.contract.write_policy,
        read_policy: want.contract.read_policy,
        device_id: DEVICE_ID,
    };
    let dev = BlkDevice::new(config).map_err(|e| DeviceError::Build(e.to_string()))?;
    Ok(Box::new(dev))
}

fn stop_state(s: device::StopState) -> StopState {
    match s {
        device::StopState::Running => StopState::Running,
        device::StopState::Stopping => StopState::Stopping,
        device::StopState::Stopped => StopState::Stopped,
    }
}

impl Device for BlkDevice {
    fn describe(&self) -> Description {
        let c = self.config();
        Description {
            features: c.features,
            num_queues: c.num_queues,
            queue_max_size: c.queue_max_size,
            capacity: c.capacity,
            device_id: c.device_id,
            contract: crate::contract::Contract {
                inflight: c.inflight,
                write_policy: c.write_policy,
                read_policy: c.read_policy,
            },
            faults: Vec::new(),
            id_checked: crate::virtio::ID_BYTES,
            known: Default::default(),
            keeps_data: true,
        }
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            writes: WriteObservation::Exact,
            disk: DiskControl::Harness,
            deterministic: true,
            faults: false,
            resume_forgets_signal: false,
            interrupts_in_memory: false,
            heals: false,
            stop_freezes_guest: false,
            save_ends_device: false,
            queue_state_at_stops: false,
            abuse: false,
        }
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

    fn poll(&mut self, env: &mut Env) {
        BlkDevice::poll(self, env.mem, env.disk)
    }

    fn take_events(&mut self) -> Events {
        let i = BlkDevice::take_interrupts(self);
        let mut used = [0; crate::program::MAX_QUEUES];
        for (e, n) in used.iter_mut().zip(i.used) {
            *e = n;
        }
        Events {
            used,
            config: i.config,
            ..Events::default()
        }
    }

    fn host(&mut self) -> Option<&mut dyn HostControl> {
        Some(self)
    }

    fn migration(&mut self) -> Option<&mut dyn Migration> {
        Some(self)
    }

    fn ring_base(&mut self) -> Option<&mut dyn RingBase> {
        Some(self)
    }

    fn introspection(&self) -> Option<&dyn Introspection> {
        Some(self)
    }

    fn snapshot_inspection(&self) -> Option<&dyn SnapshotInspection> {
        Some(self)
    }
}

impl HostControl for BlkDevice {
    fn stop(&mut self, _: &mut Env) {
        self.host_stop()
    }

    fn resume(&mut self, _: &mut Env) {
        self.host_resume()
    }

    fn retry(&mut self, _: &mut Env) {
        self.host_retry()
    }

    fn stop_state(&mut self) -> StopState {
        stop_state(self.host_stop_state())
    }
}

impl Migration for BlkDevice {
    fn save(&mut self) -> Result<Vec<u8>, DeviceError> {
        BlkDevice::save(self).map_err(|e| DeviceError::Refused(e.to_string()))
    }

    fn restore_fresh(
        &mut self,
        bytes: &[u8],
        env: &mut Env,
    ) -> Result<Box<dyn Device>, DeviceError> {
        let mut fresh =
            BlkDevice::new(self.config().clone()).map_err(|e| DeviceError::Build(e.to_string()))?;
        fresh
            .restore(bytes, env.mem)
            .map_err(|e| DeviceError::Refused(e.to_string()))?;
        Ok(Box::new(fresh))
    }
}

impl RingBase for BlkDevice {
    fn set_base(&mut self, q: u16, index: u16) {
        self.queue_set_base(q, index)
    }
}

impl Introspection for BlkDevice {
    fn ring_position(&self, q: u16) -> Option<(u16, u16)> {
        self.queue_position(q)
    }

    fn held(&self) -> Vec<Held> {
        BlkDevice::held(self)
            .map(|h| Held {
                queue: h.queue,
                head: h.head,
                parked: h.parked,
            })
            .collect()
    }
}

impl SnapshotInspection for BlkDevice {
    fn inspect(&self, bytes: &[u8]) -> Result<SavedState, DeviceError> {
        let snap = Snapshot::decode(bytes).map_err(|e| DeviceError::Refused(e.to_string()))?;
        Ok(SavedState {
            status: snap.status,
            driver_features: snap.driver_features,
            queues: snap
                .queues
                .iter()
                .map(|q| SavedQueue {
                    size: q.size,
                    ready: q.ready,
                    desc: q.desc_table,
                    avail: q.avail_ring,
                    used: q.used_ring,
                    next_avail: q.next_avail,
                    next_used: q.next_used,
                })
                .collect(),
            held: snap.requests.iter().map(|r| (r.queue, r.head)).collect(),
        })
    }
}

/// Byte flips of a reference snapshot with one held request, each making it inconsistent
/// in one named way, as `(offset, xor)` for the snapshot target's seeds. The offsets come
/// from the encoder, so they follow the format instead of being written down.
pub struct SnapshotFlips {
    /// Inuse no longer matches the records.
    pub next_avail: (u16, u8),
    /// The record count XOR 2.
    pub record_count: (u16, u8),
    /// A head past the ring.
    pub record_head: (u16, u8),
    /// NEEDS_RESET in the saved status.
    pub status: (u16, u8),
    /// A negotiated feature no device offers.
    pub features: (u16, u8),
}

/// The flips for a device with `num_queues` queues. A field's offset depends only on the
/// queues and the records before it, so any such snapshot locates the same bytes.
pub fn snapshot_flips(num_queues: u16) -> SnapshotFlips {
    let mut base = BlkDevice::new(DeviceConfig {
        num_queues,
        ..DeviceConfig::default()
    })
    .expect("a valid config")
    .snapshot()
    .expect("a fresh device saves");
    base.requests.push(SavedRequest {
        queue: 0,
        head: 0,
        req: BlkRequest {
            kind: Kind::Out,
            sector: 0,
            data: Vec::new(),
            status: 0,
        },
    });
    let flip = |edit: &dyn Fn(&mut Snapshot)| field_flip(&base, edit);
    SnapshotFlips {
        next_avail: flip(&|s| s.queues[0].next_avail ^= 1),
        record_count: flip(&|s| {
            let r = s.requests[0].clone();
            s.requests.resize(s.requests.len() ^ 2, r);
        }),
        record_head: flip(&|s| s.requests[0].head ^= 0x80),
        status: flip(&|s| s.status ^= bits::S_NEEDS_RESET),
        features: flip(&|s| s.driver_features ^= 1 << 36),
    }
}

/// A mutate-mode flip `(offset, xor)` for the snapshot target: where `edit` first changes
/// the encoding of `base`, and the XOR that makes that change. Offsets come from the encoder,
/// so they follow the snapshot format instead of being written down here.
fn field_flip(base: &Snapshot, edit: impl FnOnce(&mut Snapshot)) -> (u16, u8) {
    let before = base.encode();
    let mut edited = base.clone();
    edit(&mut edited);
    let after = edited.encode();
    let at = before
        .iter()
        .zip(&after)
        .position(|(a, b)| a != b)
        .expect("the edit changes the snapshot");
    let offset = u16::try_from(at).expect("a snapshot offset fits the input's u16");
    (offset, before[at] ^ after[at])
}
