//! The dimensions of what the device supports, and which of their values and pairs a set of
//! runs reaches. `stopfuzz reach` prints it for the seeds and the explorer's own inputs; a
//! test holds the generator to it, so a value or pair no run reaches is seen, not assumed.
//!
//! A run is described by labels, one `dimension=value` per fact: its config, the requests
//! and lifecycle ops its program holds, and the scenarios it reached. Config and ops are read
//! from the program, scenarios from the run itself.

use std::collections::BTreeMap;

use crate::contract::{ErrorPolicy, InflightPolicy};
use crate::engine::{Report, Scenarios};
use crate::program::{Op, Program, ReqType, Shape, Trigger};
use crate::targets::{Target, snapshot_input};

/// Every dimension, with every value it can take.
pub const DIMENSIONS: &[(&str, &[&str])] = &[
    ("queues", &["1", "2", "3", "4"]),
    (
        "queue_size",
        &["2", "4", "8", "16", "32", "64", "128", "256"],
    ),
    ("contract", &["drain", "track"]),
    ("trigger", &["suspend", "stop-bit"]),
    ("event_idx", &["off", "on"]),
    ("indirect", &["off", "on"]),
    ("flush", &["off", "on"]),
    ("ring_reset", &["off", "on"]),
    ("write_policy", &["report", "ignore", "stop", "enospc"]),
    ("read_policy", &["report", "ignore", "stop"]),
    ("start_index", &["0", "low", "near-wrap"]),
    ("disk_sectors", &["8-16", "24-32", "40-64"]),
    (
        "request",
        &[
            "read/plain",
            "read/split-data",
            "read/indirect",
            "read/split-header",
            "write/plain",
            "write/split-data",
            "write/indirect",
            "write/split-header",
            "flush/plain",
            "flush/split-data",
            "flush/indirect",
            "flush/split-header",
            "get-id/plain",
            "get-id/split-data",
            "get-id/indirect",
            "get-id/split-header",
        ],
    ),
    ("sectors", &["1", "2", "3", "4"]),
    (
        "lifecycle",
        &[
            "driver-stop",
            "driver-resume",
            "host-stop",
            "host-resume",
            "migrate",
            "queue-reset",
            "device-reset",
            "disk-full",
            "fail",
            "heal",
        ],
    ),
    (
        "scenario",
        &[
            "wrap_with_inflight",
            "stop_acked_with_inflight",
            "migration_with_parked",
            "ooo_then_slot_reuse",
            "rejected_restore",
            "needs_reset_hostile",
            "stop_across_lifecycle",
            "stop_due_then_acked",
            "driver_stop_acked",
            "retry_with_two_parked",
        ],
    ),
];

/// The pairs of dimensions whose combinations are counted: each config dimension that
/// changes what a stop or a failure means, against the states a run reaches and the ops
/// it holds.
pub const PAIRS: &[(&str, &str)] = &[
    ("contract", "trigger"),
    ("contract", "write_policy"),
    ("trigger", "write_policy"),
    ("contract", "scenario"),
    ("trigger", "scenario"),
    ("write_policy", "scenario"),
    ("read_policy", "scenario"),
    ("queues", "scenario"),
    ("event_idx", "scenario"),
    ("indirect", "scenario"),
    ("contract", "lifecycle"),
    ("trigger", "lifecycle"),
    ("request", "queues"),
    ("request", "contract"),
];

/// Why a label can never be reached through `target`, if it cannot.
pub fn unreachable(target: Target, label: &str) -> Option<&'static str> {
    match (target, label) {
        (Target::BlkHostile, "scenario=needs_reset_hostile") => None,
        (_, "scenario=needs_reset_hostile") => Some("only hostile ops make a device need a reset"),
        (Target::Snapshot, "scenario=rejected_restore") => None,
        (_, "scenario=rejected_restore") => Some("only the snapshot target edits a snapshot"),
        _ => None,
    }
}

/// Why a pair can never be reached, if it cannot.
pub fn unreachable_pair(a: &str, b: &str) -> Option<&'static str> {
    match (a, b) {
        ("contract=drain", "scenario=migration_with_parked") => {
            Some("under Drain a parked request withholds the stop, so no migration saves one")
        }
        _ => None,
    }
}

/// The seeds of `target`, then `execs` of the explorer's inputs for `seed`, each run
/// against the reference device and counted.
pub fn measure(target: Target, execs: u64, seed: u64) -> Reach {
    let mut reach = Reach::default();
    let seeds = crate::seeds::seeds();
    let inputs = seeds
        .iter()
        .filter(|s| s.target == target)
        .map(|s| s.bytes.clone())
        .chain((0..execs).map(|i| crate::explore::input(target, seed, i)));
    for data in inputs {
        let report = target.run(&data, false);
        reach.add(target, &data, &report);
    }
    reach
}

/// Counts of labels and label pairs over many runs.
#[derive(Clone, Debug, Default)]
pub struct Reach {
    /// Runs counted.
    pub runs: u64,
    values: BTreeMap<String, u64>,
    pairs: BTreeMap<(String, String), u64>,
}

impl Reach {
    /// Counts one run of `data` through `target`.
    pub fn add(&mut self, target: Target, data: &[u8], report: &Report) {
        let program = match target {
            Target::Snapshot => snapshot_input(data).1,
            _ => Program::decode(data),
        };
        let labels = labels(&program, report);
        self.runs += 1;
        for l in &labels {
            *self.values.entry(l.clone()).or_default() += 1;
        }
        for &(a, b) in PAIRS {
            for la in labels.iter().filter(|l| dimension(l) == a) {
                for lb in labels.iter().filter(|l| dimension(l) == b) {
                    *self.pairs.entry((la.clone(), lb.clone())).or_default() += 1;
                }
            }
        }
    }

    /// Runs that reached `label`.
    pub fn value(&self, label: &str) -> u64 {
        self.values.get(label).copied().unwrap_or(0)
    }

    /// Runs that reached both labels.
    pub fn pair(&self, a: &str, b: &str) -> u64 {
        self.pairs
            .get(&(a.to_string(), b.to_string()))
            .copied()
            .unwrap_or(0)
    }

    /// Every value no run reached and that `target` can reach.
    pub fn missing_values(&self, target: Target) -> Vec<String> {
        all_values()
            .filter(|l| self.value(l) == 0 && unreachable(target, l).is_none())
            .collect()
    }

    /// Every pair of [`PAIRS`] no run reached and that `target` can reach.
    pub fn missing_pairs(&self, target: Target) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for &(a, b) in PAIRS {
            for la in values_of(a) {
                for lb in values_of(b) {
                    let possible = unreachable(target, &la).is_none()
                        && unreachable(target, &lb).is_none()
                        && unreachable_pair(&la, &lb).is_none();
                    if possible && self.pair(&la, &lb) == 0 {
                        out.push((la.clone(), lb));
                    }
                }
            }
        }
        out
    }

    /// The report `stopfuzz reach` prints.
    pub fn render(&self, target: Target) -> String {
        let mut out = String::new();
        let total_values = all_values().count();
        let missing = self.missing_values(target);
        out.push_str(&format!(
            "values: {}/{} reached by {} runs\n",
            total_values - missing.len(),
            total_values,
            self.runs
        ));
        for (dim, values) in DIMENSIONS {
            let counts: Vec<String> = values
                .iter()
                .map(|v| format!("{v}={}", self.value(&format!("{dim}={v}"))))
                .collect();
            out.push_str(&format!("  {dim}: {}\n", counts.join(" ")));
        }
        for l in all_values().filter(|l| self.value(l) == 0) {
            let why = unreachable(target, &l).unwrap_or("NOT REACHED");
            out.push_str(&format!("  never {l}: {why}\n"));
        }
        let missing_pairs = self.missing_pairs(target);
        let total_pairs: usize = PAIRS
            .iter()
            .map(|(a, b)| values_of(a).count() * values_of(b).count())
            .sum();
        let impossible = total_pairs - self.pairs.len() - missing_pairs.len();
        out.push_str(&format!(
            "pairs: {}/{} reached ({} impossible for this target)\n",
            self.pairs.len(),
            total_pairs - impossible,
            impossible
        ));
        for &(a, b) in PAIRS {
            for la in values_of(a) {
                for lb in values_of(b) {
                    if let Some(why) = unreachable_pair(&la, &lb) {
                        out.push_str(&format!("  never {la} with {lb}: {why}\n"));
                    }
                }
            }
        }
        for (a, b) in &missing_pairs {
            out.push_str(&format!("  never {a} with {b}: NOT REACHED\n"));
        }
        out
    }
}

fn dimension(label: &str) -> &str {
    label.split('=').next().unwrap_or(label)
}

fn values_of(dim: &str) -> impl Iterator<Item = String> + '_ {
    DIMENSIONS
        .iter()
        .filter(move |(d, _)| *d == dim)
        .flat_map(|(d, values)| values.iter().map(move |v| format!("{d}={v}")))
}

fn all_values() -> impl Iterator<Item = String> {
    DIMENSIONS
        .iter()
        .flat_map(|(d, values)| values.iter().map(move |v| format!("{d}={v}")))
}

fn on_off(on: bool) -> &'static str {
    if on { "on" } else { "off" }
}

fn policy(p: ErrorPolicy) -> &'static str {
    match p {
        ErrorPolicy::Report => "report",
        ErrorPolicy::Ignore => "ignore",
        ErrorPolicy::Stop => "stop",
        ErrorPolicy::Enospc => "enospc",
    }
}

/// The labels of one run, sorted and without repeats.
fn labels(program: &Program, report: &Report) -> Vec<String> {
    let c = &program.config;
    let mut out = vec![
        format!("queues={}", c.queues),
        format!("queue_size={}", c.queue_size),
        format!(
            "contract={}",
            match c.inflight {
                InflightPolicy::Drain => "drain",
                InflightPolicy::Track => "track",
            }
        ),
        format!(
            "trigger={}",
            match c.trigger {
                Trigger::Suspend => "suspend",
                Trigger::StopBit => "stop-bit",
            }
        ),
        format!("event_idx={}", on_off(c.event_idx)),
        format!("indirect={}", on_off(c.indirect)),
        format!("flush={}", on_off(c.flush)),
        format!("ring_reset={}", on_off(c.ring_reset)),
        format!("write_policy={}", policy(c.write_policy)),
        format!("read_policy={}", policy(c.read_policy)),
        format!(
            "start_index={}",
            match c.start_index {
                0 => "0",
                i if i >= 0xff00 => "near-wrap",
                _ => "low",
            }
        ),
        format!(
            "disk_sectors={}",
            match c.disk_sectors {
                0..=16 => "8-16",
                17..=32 => "24-32",
                _ => "40-64",
            }
        ),
    ];
    for op in &program.ops {
        match op {
            Op::Submit {
                req,
                shape,
                sectors,
                ..
            } => {
                out.push(format!("request={}/{}", request(*req), self::shape(*shape)));
                if matches!(req, ReqType::Read | ReqType::Write) {
                    out.push(format!("sectors={sectors}"));
                }
            }
            Op::DriverStop => out.push("lifecycle=driver-stop".into()),
            Op::DriverResume => out.push("lifecycle=driver-resume".into()),
            Op::HostStop => out.push("lifecycle=host-stop".into()),
            Op::HostResume => out.push("lifecycle=host-resume".into()),
            Op::Migrate => out.push("lifecycle=migrate".into()),
            Op::QueueReset { .. } => out.push("lifecycle=queue-reset".into()),
            Op::DeviceReset => out.push("lifecycle=device-reset".into()),
            Op::SystemReset => out.push("lifecycle=system-reset".into()),
            Op::DiskFull => out.push("lifecycle=disk-full".into()),
            Op::Fail { .. } => out.push("lifecycle=fail".into()),
            Op::Heal => out.push("lifecycle=heal".into()),
            _ => {}
        }
    }
    for (flag, name) in Scenarios::NAMES {
        if report.scenarios.has(flag) {
            out.push(format!("scenario={name}"));
        }
    }
    out.sort();
    out.dedup();
    out
}

fn request(r: ReqType) -> &'static str {
    match r {
        ReqType::Read => "read",
        ReqType::Write => "write",
        ReqType::Flush => "flush",
        ReqType::GetId => "get-id",
    }
}

fn shape(s: Shape) -> &'static str {
    match s {
        Shape::Plain => "plain",
        Shape::SplitData => "split-data",
        Shape::Indirect => "indirect",
        Shape::SplitHeader => "split-header",
    }
}
