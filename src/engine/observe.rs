//! Every call into the device goes through [`Run::call`], which observes what the call did
//! (guest-memory writes as the device lets them be seen, events, new disk I/O, status and
//! ring positions), advances the bookkeeping (the driver reads used entries, the model
//! completes requests and records I/O) and, unless the oracle is off, checks all of it.

use super::{Run, Scenarios};
use crate::backend::{Io, IoTag};
use crate::dut::{Device, DiskControl, Env, Events, StopState, WriteObservation};
use crate::memory::Checkpoint;
use crate::oracle::always::{self, Activity};
use crate::oracle::{Check, conforming};
use crate::program::MAX_QUEUES;
use crate::stops::{Side, Stops};
use crate::virtio::*;

/// What the oracle sees of the device at one moment. Fixed arrays: this is built twice per
/// device call.
#[derive(Clone, Debug)]
pub(super) struct View {
    pub status: u8,
    pub host: Option<StopState>,
    /// Per queue: (next_avail, next_used), with introspection.
    pub position: [Option<(u16, u16)>; MAX_QUEUES],
    pub avail: [u16; MAX_QUEUES],
    pub used: [u16; MAX_QUEUES],
}

impl Run<'_> {
    /// Calls into the device and observes, records and checks what the call did.
    pub(super) fn call(&mut self, f: impl FnOnce(&mut dyn Device, &mut Env)) -> Check {
        let diff = self.checks && self.shadow.is_some();
        if diff {
            self.sync_shadow();
        }
        let asked = self.stops;
        if diff {
            self.stopped_span(asked.stopped())?;
        }
        let cp = self.mem.checkpoint();
        let submitted = self.disk.submitted();
        let before = self.checks.then(|| {
            let used = self.used_before();
            self.view(used)
        });
        {
            let mut env = Env {
                mem: self.mem.mem(),
                disk: &mut self.disk,
            };
            f(self.dev.as_mut(), &mut env);
        }
        let events = self.dev.take_events();
        self.last_events = events;
        let new_io: Vec<(IoTag, Io)> = match self.caps.disk {
            DiskControl::Harness => self
                .disk
                .outstanding()
                .filter(|(t, _)| *t >= submitted)
                .map(|(t, io)| (t, io.clone()))
                .collect(),
            DiskControl::External => Vec::new(),
        };
        // Used idx cannot move in a call that, seen exactly, wrote nothing.
        let quiet = self.caps.writes == WriteObservation::Exact
            && self.mem.writes_since(cp).next().is_none();
        let mut used = [0u16; MAX_QUEUES];
        for q in 0..self.queues() {
            let i = usize::from(q);
            used[i] = match (events.used_idx[i], self.used_seen[i]) {
                (Some(u), _) => u,
                (None, Some(u)) if quiet => u,
                _ => self.driver.used_idx(self.mem.mem(), q),
            };
            self.used_seen[i] = Some(used[i]);
        }
        // Diffed after used idx is read: a device in another process writes a request's
        // buffers before its used entry, so they are never seen after the model let go of it.
        let writes = self.device_writes(cp);
        if diff {
            self.synced = self.mem.checkpoint();
        }
        // A device that died is reported as such, ahead of what its death looks like.
        if let Some(failure) = self.dev.failure() {
            // A back-end may refuse a hostile driver: end the connection, or exit.
            if !(failure.refused && self.hostile) {
                return Err(crate::oracle::always::device_failed(failure.why));
            }
            // Its death, and why it said it refused (else the last thing it said).
            let mut lines = failure.why.lines().filter(|l| !l.trim().is_empty());
            let first = lines.next().unwrap_or_default().to_string();
            let rest: Vec<&str> = lines.collect();
            let said = rest
                .iter()
                .find(|l| l.contains("refus") || l.contains("vu_panic"))
                .or(rest.last())
                .map(|l| format!(" / {l}"))
                .unwrap_or_default();
            self.note(|| format!("the back-end refused the hostile driver: {first}{said}"));
        }
        self.observe(before, &asked, used, &writes, events, &new_io)
    }

    pub(super) fn poll(&mut self) -> Check {
        let due = self.checks && self.stops.pending() && self.ack_due();
        let waiting = self.stops;
        // This poll consumes the retry point if the record lets the device run disk I/O.
        let retry_at = self
            .model
            .retry_point
            .filter(|_| !self.stops.stopped() && self.live());
        let parked = self.model.parked_count();
        self.polling = true;
        let result = self.call(|d, env| d.poll(env));
        self.polling = false;
        result?;
        if let Some(step) = retry_at {
            if self.conforming() && !self.foreign {
                self.check(|| conforming::retried_all(&self.model, step))?;
                if parked >= 2 && self.model.parked_count() == 0 {
                    self.scenarios.set(Scenarios::RETRY_TWO_PARKED);
                }
            }
            self.model.retry_point = None;
        }
        self.model.polled();
        if self.checks {
            // A poll that made the acknowledgement undue (a retry the host asked for started
            // disk I/O) does not count against it.
            let still_due = due && self.stops.pending() && self.ack_due();
            self.judge_acks(&waiting, due, still_due)?;
        }
        Ok(())
    }

    /// The device's status says it runs: DRIVER_OK, and neither NEEDS_RESET nor FAILED.
    fn live(&self) -> bool {
        self.dev.read_status() & (S_DRIVER_OK | S_NEEDS_RESET | S_FAILED) == S_DRIVER_OK
    }

    /// Whether the contract allows the acknowledgement of a waiting stop now, as far as the
    /// harness knows: only where the model follows the device.
    fn ack_due(&self) -> bool {
        self.conforming()
            && !self.foreign
            && conforming::ack_due(
                self.desc.contract.inflight,
                &self.model,
                self.disk.outstanding().next().is_some(),
            )
    }

    /// After a poll: a stop that waits although its acknowledgement was due as the poll
    /// began and still is as it ends is one poll more overdue.
    fn judge_acks(&mut self, waiting: &Stops, due: bool, still_due: bool) -> Check {
        let policy = self.desc.contract.inflight;
        let stops = [
            ("driver", waiting.driver, &mut self.stops.driver),
            ("host", waiting.host, &mut self.stops.host),
        ];
        for (which, was, stop) in stops {
            if !was.pending() {
                continue;
            }
            if stop.pending() {
                stop.overdue = if still_due { stop.overdue + 1 } else { 0 };
                conforming::stop_acked(which, policy, stop.overdue)?;
            } else if due {
                self.scenarios.set(Scenarios::STOP_DUE_THEN_ACKED);
            }
        }
        Ok(())
    }

    /// Bookkeeping, at every oracle level: a stop the harness asked for is acknowledged
    /// once the device presents it, the trigger's bit to the driver or `Stopped` to the
    /// host. Returns whether one was acknowledged in this call.
    fn note_acks(&mut self, after: Option<&View>) -> bool {
        if !self.stops.pending() {
            return false;
        }
        let (status, host) = match after {
            Some(v) => (v.status, v.host),
            None => (
                self.dev.read_status(),
                self.dev.host().map(|h| h.stop_state()),
            ),
        };
        let mut newly = false;
        if self.stops.driver.pending() && always::driver_stop_presented(self.cfg.trigger, status) {
            self.stops.acknowledge(Side::Driver);
            self.scenarios.set(Scenarios::DRIVER_STOP_ACKED);
            newly = true;
        }
        if self.stops.host.pending() && host == Some(StopState::Stopped) {
            self.stops.acknowledge(Side::Host);
            newly = true;
        }
        newly
    }

    fn used_before(&mut self) -> [u16; MAX_QUEUES] {
        let mut used = [0u16; MAX_QUEUES];
        for q in 0..self.queues() {
            let i = usize::from(q);
            used[i] = match self.used_seen[i] {
                Some(u) => u,
                None => self.driver.used_idx(self.mem.mem(), q),
            };
            self.used_seen[i] = Some(used[i]);
        }
        used
    }

    /// The device and the rings now. Avail idx comes from the driver, its only writer (the
    /// write checks hold the device to that).
    fn view(&mut self, used: [u16; MAX_QUEUES]) -> View {
        let mut view = View {
            status: self.dev.read_status(),
            host: self.dev.host().map(|h| h.stop_state()),
            position: [None; MAX_QUEUES],
            avail: [0; MAX_QUEUES],
            used,
        };
        let intro = self.dev.introspection();
        for (i, dq) in self.driver.queues.iter().enumerate() {
            if let Some(intro) = intro {
                view.position[i] = intro.ring_position(i as u16);
            }
            view.avail[i] = dq.published;
        }
        view
    }

    /// Seen as a diff, a stop's writes outside the pages the driver uses show only in all of
    /// memory: compared once, at the first call after the stop ended (no call ran since the
    /// last stopped one, so whatever differs was written while stopped).
    fn stopped_span(&mut self, stopped: bool) -> Check {
        if stopped {
            self.stop_unscanned = true;
            return Ok(());
        }
        if !std::mem::take(&mut self.stop_unscanned) {
            return Ok(());
        }
        let writes = self.diff_everything();
        let activity = Activity {
            writes: writes.len(),
            ..Activity::default()
        };
        always::quiet_when_stopped(true, activity)
    }

    /// What the device wrote since `cp`, as far as it lets the harness see (checks only).
    fn device_writes(&mut self, cp: Checkpoint) -> Vec<(u64, u32)> {
        if !self.checks {
            return Vec::new();
        }
        match self.caps.writes {
            WriteObservation::Exact => self.mem.writes_since(cp).collect(),
            WriteObservation::Diff => {
                let pages = self.driver.pages_in_use();
                let writes = match self.shadow.as_mut() {
                    Some(shadow) => shadow.diff(self.mem, &pages),
                    None => Vec::new(),
                };
                self.not_interrupts(writes)
            }
            WriteObservation::Blind => Vec::new(),
        }
    }

    /// Every byte of guest memory that differs from the shadow, which then holds memory as
    /// it is now.
    fn diff_everything(&mut self) -> Vec<(u64, u32)> {
        let writes = match self.shadow.as_mut() {
            Some(shadow) => {
                let everything = shadow.everything();
                shadow.diff(self.mem, &[everything])
            }
            None => Vec::new(),
        };
        self.synced = self.mem.checkpoint();
        self.not_interrupts(writes)
    }

    /// Drops the device's interrupt messages from its writes, where they land in memory.
    fn not_interrupts(&self, mut writes: Vec<(u64, u32)>) -> Vec<(u64, u32)> {
        if self.caps.interrupts_in_memory {
            let page = crate::driver::layout::DEVICE_PAGE;
            writes.retain(|&(a, l)| a + u64::from(l) <= page.start || a >= page.end);
        }
        writes
    }

    /// Takes the harness's own writes since the last device call into the shadow.
    fn sync_shadow(&mut self) {
        if let Some(shadow) = self.shadow.as_mut() {
            shadow.sync(self.mem, self.synced);
        }
    }

    /// With writes seen as a diff, the whole memory once more: a write outside the pages the
    /// driver laid out shows up only here.
    pub(super) fn final_diff(&mut self) -> Check {
        if !self.checks || self.shadow.is_none() {
            return Ok(());
        }
        self.sync_shadow();
        let writes = self.diff_everything();
        let allowed = always::allowed_writes(&self.driver, None);
        always::write_confined(&writes, &allowed)
    }

    /// `asked` is the harness's record as the call began: the device is judged by it.
    fn observe(
        &mut self,
        before: Option<View>,
        asked: &Stops,
        used: [u16; MAX_QUEUES],
        writes: &[(u64, u32)],
        events: Events,
        new_io: &[(IoTag, Io)],
    ) -> Check {
        let after = before.as_ref().map(|_| self.view(used));
        let newly_acked = self.note_acks(after.as_ref());
        if let (Some(before), Some(after)) = (&before, &after) {
            let activity = Activity {
                writes: writes.len(),
                interrupts: events.total(),
                new_io: new_io.len(),
            };
            always::stop_state(self.cfg.trigger, &self.stops, after.status, after.host)?;
            always::quiet_when_stopped(asked.stopped(), activity)?;
            always::broken_stays_quiet(before.status & S_NEEDS_RESET != 0, activity)?;
            if !self.foreign {
                if !writes.is_empty() {
                    // The model has not yet seen this call's completions: these are the
                    // buffers the device held when the call began.
                    let model = self.conforming().then_some(&self.model);
                    always::write_confined(writes, &always::allowed_writes(&self.driver, model))?;
                }
                if after.status & S_NEEDS_RESET != 0 && self.mode == super::Mode::Hostile {
                    self.scenarios.set(Scenarios::NEEDS_RESET_HOSTILE);
                }
                if self.conforming() {
                    conforming::never_needs_reset(after.status)?;
                }
            }
        }
        if self.foreign {
            return Ok(());
        }
        let external = self.caps.disk == DiskControl::External;
        for q in 0..self.queues() {
            let i = usize::from(q);
            let size = self.driver.queues[i].size;
            if let (Some(b), Some(a)) = (&before, &after)
                && let (Some(pb), Some(pa)) = (b.position[i], a.position[i])
            {
                always::inuse_bound(q, pa.0, pa.1, size)?;
                if self.polling && asked.requested() {
                    always::not_consumed_while_stopping(q, (pb.0, pa.0))?;
                }
                if self.polling {
                    let window = b.avail[i].wrapping_sub(pb.0);
                    always::avail_window(q, window, size, (pb.0, pa.0))?;
                }
                if (pa.0 < pb.0 || a.used[i] < b.used[i]) && self.open_inflight() {
                    self.scenarios.set(Scenarios::WRAP_INFLIGHT);
                }
            }
            let elems = if used[i] == self.driver.queues[i].observed {
                Vec::new()
            } else {
                self.driver.observe(self.mem.mem(), q, used[i])
            };
            if let Some(b) = &before {
                let ids: Vec<u32> = elems.iter().map(|e| e.id).collect();
                always::used_monotone(q, b.used[i], used[i], b.avail[i], size, &ids)?;
            }
            if !self.conforming() {
                continue;
            }
            for elem in elems {
                let id = self
                    .model
                    .published(q, elem.id as u16)
                    .filter(|_| elem.id <= 0xffff);
                if let (true, Some(id)) = (external, id) {
                    self.model.external_io_done(id);
                }
                self.check(|| conforming::used_entry(&self.model, self.mem.mem(), q, elem))?;
                if let Some(id) = id {
                    self.model.complete(id);
                }
            }
        }
        // A pause is judged by what was open when the call began: a request that fails
        // while a reset drains it may pause the VM, and the reset then drops it.
        self.paused_on_error |= events.io_error_pause;
        if events.io_error_pause && self.conforming() {
            self.check(|| conforming::error_pause(&self.model))?;
        }
        // A reset this call made drops what it did not complete.
        self.drop_reset();
        if !self.conforming() {
            return Ok(());
        }
        for (tag, io) in new_io {
            let owner = self.model.owner_of(io);
            self.check(|| conforming::exactly_once_io(&self.model, io, owner))?;
            if let Some(id) = owner {
                self.check(|| conforming::retry(&self.model, id))?;
                self.model.io_started(*tag, id);
            }
        }
        let (Some(before), Some(after)) = (before, after) else {
            return Ok(());
        };
        self.last_undue = events.config;
        for q in 0..self.queues() {
            let i = usize::from(q);
            let moved = used[i] != before.used[i];
            // A device completing on its own time decides per used entry; with EVENT_IDX
            // only one decision can cross `used_event`.
            let decisions = if self.caps.deterministic
                || (self.driver.has(F_EVENT_IDX) && self.signal_valid[i])
            {
                1
            } else {
                u32::from(used[i].wrapping_sub(before.used[i]))
            };
            if !moved {
                self.last_undue += events.used[i];
            }
            // Movement up to where the driver last moved `used_event` was decided under an
            // older value: it may have notified, and is owed nothing.
            let span = used[i].wrapping_sub(before.used[i]);
            let from = match self.event_moved_at[i] {
                Some(m) if m.wrapping_sub(before.used[i]) <= span => m,
                Some(_) => used[i],
                None => before.used[i],
            };
            if self.event_moved_at[i].is_some_and(|m| m.wrapping_sub(before.used[i]) <= span) {
                self.event_moved_at[i] = None;
            }
            let unjudged = from != before.used[i];
            let expected = !self.signal_valid[i]
                || (from != used[i]
                    && conforming::notification_due(
                        &self.driver,
                        self.mem.mem(),
                        q,
                        from,
                        used[i],
                    ));
            let spurious = moved && self.signal_forgotten[i];
            let count = events.used[i];
            conforming::notify(q, moved, expected, spurious, unjudged, count, decisions)?;
            if moved {
                self.signal_valid[i] = true;
                self.signal_forgotten[i] = false;
            }
        }
        if newly_acked {
            self.check_contract(&after)?;
        }
        Ok(())
    }

    pub(super) fn open_inflight(&self) -> bool {
        self.model
            .open_ids()
            .any(|id| self.model.requests[id].state == crate::model::ReqState::Published)
    }

    /// At a stop acknowledgement, the held requests are what the contract says.
    fn check_contract(&mut self, view: &View) -> Check {
        if self.open_inflight() {
            self.scenarios.set(Scenarios::STOP_ACKED_INFLIGHT);
        }
        let Some(intro) = self.dev.introspection() else {
            return Ok(());
        };
        let next_avail: Vec<Option<u16>> = view.position.iter().map(|p| p.map(|p| p.0)).collect();
        conforming::contract(
            self.desc.contract.inflight,
            &intro.held(),
            &self.model,
            &next_avail,
        )
    }
}
