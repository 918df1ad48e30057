//! A small client for QEMU's QMP protocol: JSON objects, one a line, over a unix socket on
//! which QEMU listens (`-qmp unix:PATH,server=on,wait=off`).
//!
//! Every command carries an `id`, so a reply that arrives after its command timed out is
//! recognised and skipped rather than taken for the next command's. Events met while
//! waiting are kept for [`Qmp::take_events`].

use std::io::{BufRead, BufReader, ErrorKind, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// How long one command may take by default. `stop` drains in-flight I/O first, which
/// may take as long as the slowest request.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// A QMP connection in command mode.
#[derive(Debug)]
pub struct Qmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    timeout: Duration,
    next_id: u64,
    events: Vec<Value>,
    greeting: Value,
    /// Why the connection is unusable, once it is.
    broken: Option<String>,
}

impl Qmp {
    /// Connects to `path`, retrying for at most `wait` while QEMU sets up its socket (`gone`
    /// is asked between tries whether QEMU already died), reads the greeting and enters
    /// command mode.
    pub fn connect(
        path: &Path,
        wait: Duration,
        mut gone: impl FnMut() -> Option<String>,
    ) -> Result<Qmp, String> {
        let start = Instant::now();
        let stream = loop {
            match UnixStream::connect(path) {
                Ok(s) => break s,
                Err(e) => {
                    if let Some(why) = gone() {
                        return Err(format!("QMP: QEMU is gone: {why}"));
                    }
                    if start.elapsed() > wait {
                        return Err(format!(
                            "QMP: cannot connect to {} within {} ms: {e}",
                            path.display(),
                            wait.as_millis()
                        ));
                    }
                    std::thread::sleep(Duration::from_micros(500));
                }
            }
        };
        let setup = |e: std::io::Error| format!("QMP: cannot set up the socket: {e}");
        let writer = stream.try_clone().map_err(setup)?;
        writer
            .set_write_timeout(Some(REPLY_TIMEOUT))
            .map_err(setup)?;
        let mut qmp = Qmp {
            reader: BufReader::new(stream),
            writer,
            timeout: REPLY_TIMEOUT,
            next_id: 0,
            events: Vec::new(),
            greeting: Value::Null,
            broken: None,
        };
        let deadline = Instant::now() + qmp.timeout;
        let greeting = qmp
            .next_message(deadline)
            .map_err(|e| format!("QMP greeting: {e}"))?;
        if greeting.get("QMP").is_none() {
            return Err(format!("QMP: not a greeting: {greeting}"));
        }
        qmp.greeting = greeting;
        qmp.execute("qmp_capabilities", Value::Null)?;
        Ok(qmp)
    }

    /// The greeting (QEMU's version and capabilities).
    pub fn greeting(&self) -> &Value {
        &self.greeting
    }

    /// Changes the reply timeout (at least 1 ms).
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout.max(Duration::from_millis(1));
    }

    /// Events received so far, oldest first, taken.
    pub fn take_events(&mut self) -> Vec<Value> {
        std::mem::take(&mut self.events)
    }

    /// Runs `cmd` with `args` (an object, or null for none) and returns its `return` value;
    /// an `error` reply is `Err` with QEMU's description.
    pub fn execute(&mut self, cmd: &str, args: Value) -> Result<Value, String> {
        let timeout = self.timeout;
        self.execute_within(cmd, args, timeout)
    }

    /// Like [`execute`](Self::execute), waiting at most `timeout` for the reply.
    pub fn execute_within(
        &mut self,
        cmd: &str,
        args: Value,
        timeout: Duration,
    ) -> Result<Value, String> {
        if let Some(why) = &self.broken {
            return Err(format!("QMP connection unusable: {why}"));
        }
        let id = self.next_id;
        self.next_id += 1;
        let mut msg = json!({ "execute": cmd, "id": id });
        match args {
            Value::Null => {}
            Value::Object(_) => msg["arguments"] = args,
            other => return Err(format!("QMP `{cmd}`: arguments must be an object: {other}")),
        }
        let mut line = msg.to_string();
        line.push('\n');
        if let Err(e) = self.writer.write_all(line.as_bytes()) {
            self.broken = Some(format!("cannot send: {e}"));
            return Err(format!("QMP `{cmd}`: cannot send: {e}"));
        }
        let deadline = Instant::now() + timeout;
        loop {
            let reply = self
                .next_message(deadline)
                .map_err(|e| format!("QMP `{cmd}`: {e}"))?;
            if reply.get("event").is_some() {
                self.events.push(reply);
                continue;
            }
            if reply.get("id").and_then(Value::as_u64) != Some(id) {
                // The late reply of a command that timed out.
                continue;
            }
            if let Some(ret) = reply.get("return") {
                return Ok(ret.clone());
            }
            if let Some(err) = reply.get("error") {
                let desc = err.get("desc").and_then(Value::as_str).unwrap_or("?");
                return Err(format!("QMP `{cmd}` failed: {desc}"));
            }
            return Err(format!("QMP `{cmd}`: unexpected reply {reply}"));
        }
    }

    /// Waits at most `timeout` for an event named `name` (one already received counts),
    /// and takes it; other events stay for [`take_events`](Self::take_events).
    pub fn wait_event(&mut self, name: &str, timeout: Duration) -> Result<Value, String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(i) = self
                .events
                .iter()
                .position(|e| e.get("event").and_then(Value::as_str) == Some(name))
            {
                return Ok(self.events.remove(i));
            }
            match self.next_message(deadline) {
                Ok(m) if m.get("event").is_some() => self.events.push(m),
                Ok(_) => {}
                Err(e) => return Err(format!("QMP: waiting for event {name}: {e}")),
            }
        }
    }

    /// The next JSON object QEMU sends, by `deadline`. A timeout leaves the connection
    /// usable only if no partial line was read.
    fn next_message(&mut self, deadline: Instant) -> Result<Value, String> {
        let mut line = String::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(self.timed_out(&line));
            }
            if let Err(e) = self.reader.get_ref().set_read_timeout(Some(left)) {
                self.broken = Some(format!("cannot set a timeout: {e}"));
                return Err(format!("cannot set a timeout: {e}"));
            }
            match self.reader.read_line(&mut line) {
                Ok(0) => {
                    self.broken = Some("QEMU closed the connection".into());
                    return Err("QEMU closed the connection".into());
                }
                Ok(_) if line.ends_with('\n') => break,
                Ok(_) => {}
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    return Err(self.timed_out(&line));
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    self.broken = Some(format!("cannot read: {e}"));
                    return Err(format!("cannot read: {e}"));
                }
            }
        }
        serde_json::from_str(&line).map_err(|e| format!("bad JSON from QEMU ({e}): {line:?}"))
    }

    fn timed_out(&mut self, partial: &str) -> String {
        if !partial.is_empty() {
            self.broken = Some("a reply was cut off by a timeout".into());
        }
        format!("no reply within {} ms", self.timeout.as_millis())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    /// A fake QEMU: greets, then answers each command by `answer(command, id)`.
    fn fake(answer: fn(&str, &Value) -> Option<String>) -> (Qmp, crate::dut::process::Scratch) {
        let scratch = crate::dut::process::Scratch::new("qmp-test").unwrap();
        let path = scratch.join("qmp.sock");
        let listener = UnixListener::bind(&path).unwrap();
        std::thread::spawn(move || {
            let (s, _) = listener.accept().unwrap();
            let mut w = s.try_clone().unwrap();
            let _ = w.write_all(b"{\"QMP\": {\"version\": {}, \"capabilities\": []}}\n");
            for line in BufReader::new(s).lines() {
                let Ok(line) = line else { return };
                let v: Value = serde_json::from_str(&line).unwrap();
                let cmd = v["execute"].as_str().unwrap().to_string();
                if let Some(reply) = answer(&cmd, &v["id"]) {
                    let _ = w.write_all(reply.as_bytes());
                }
            }
        });
        let qmp = Qmp::connect(&path, Duration::from_secs(2), || None).unwrap();
        (qmp, scratch)
    }

    #[test]
    fn events_are_kept_and_errors_described() {
        let (mut qmp, _s) = fake(|cmd, id| {
            Some(match cmd {
                "stop" => format!(
                    "{{\"event\": \"STOP\", \"data\": {{}}}}\n{{\"return\": {{}}, \"id\": {id}}}\n"
                ),
                "bad" => format!(
                    "{{\"error\": {{\"class\": \"GenericError\", \"desc\": \"nope\"}}, \"id\": {id}}}\n"
                ),
                "slow" => return None,
                _ => format!("{{\"return\": {{\"status\": \"paused\"}}, \"id\": {id}}}\n"),
            })
        });
        assert_eq!(qmp.execute("stop", Value::Null).unwrap(), json!({}));
        let events = qmp.take_events();
        assert_eq!(events.len(), 1);
        assert_eq!(events[0]["event"], "STOP");
        assert!(qmp.execute("bad", json!({})).unwrap_err().contains("nope"));
        assert!(qmp.execute("x", json!(3)).unwrap_err().contains("object"));
        let err = qmp
            .execute_within("slow", Value::Null, Duration::from_millis(30))
            .unwrap_err();
        assert!(err.contains("no reply"), "{err}");
        assert_eq!(
            qmp.execute("query-status", Value::Null).unwrap()["status"],
            "paused"
        );
    }
}
