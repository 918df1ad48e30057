//! What a device promises about stops and failed I/O: the contract a program declares and
//! the oracle holds the device to. Both the harness and the devices speak these types.

use crate::backend::IoError;

/// What the device guarantees about popped requests when it acknowledges a stop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InflightPolicy {
    /// Acknowledge only when every popped buffer has been used. Parked requests hold the
    /// acknowledgement back until the disk heals and they complete.
    Drain,
    /// Acknowledge once no disk I/O is outstanding. Popped but unused requests are kept by
    /// head, saved with the device, and resubmitted after resume or restore.
    Track,
}

/// What a failed I/O does, per direction, as QEMU's `werror` and `rerror`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorPolicy {
    /// Complete with IOERR.
    Report,
    /// Complete with OK.
    Ignore,
    /// Park the request until the host retries it.
    Stop,
    /// Park on ENOSPC, report anything else. Writes only.
    Enospc,
}

/// What a failed attempt leads to under a policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Reaction {
    Report,
    Ignore,
    Park,
}

impl ErrorPolicy {
    /// Whether it parks a request for some error.
    pub(crate) fn parks(self) -> bool {
        matches!(self, ErrorPolicy::Stop | ErrorPolicy::Enospc)
    }

    pub(crate) fn reaction(self, error: IoError) -> Reaction {
        match (self, error) {
            (ErrorPolicy::Report, _) | (ErrorPolicy::Enospc, IoError::Io) => Reaction::Report,
            (ErrorPolicy::Ignore, _) => Reaction::Ignore,
            (ErrorPolicy::Stop, _) | (ErrorPolicy::Enospc, IoError::NoSpace) => Reaction::Park,
        }
    }
}

/// The whole contract: the in-flight policy at a stop and the error policy per direction
/// (`read` is rerror, `write` is werror and also covers flushes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Contract {
    /// What a stop acknowledgement waits for.
    pub inflight: InflightPolicy,
    /// What a failed write or flush does.
    pub write_policy: ErrorPolicy,
    /// What a failed read does.
    pub read_policy: ErrorPolicy,
}
