//! A client for QEMU's qtest text protocol: one command line, one reply line (`OK ...` or
//! `FAIL ...`), with asynchronous `IRQ raise N` / `IRQ lower N` lines in between.
//!
//! QEMU is the client (`-qtest unix:PATH`): stopfuzz listens on PATH before spawning it and
//! accepts here. Every reply is awaited for at most [`REPLY_TIMEOUT`]; a connection that
//! timed out or broke stays broken (a late reply would pair with the wrong command), and
//! every later command fails at once.

use std::io::{BufRead, BufReader, ErrorKind, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::{Duration, Instant};

/// How long QEMU may take to answer one command. Commands run in QEMU's main loop, so a
/// drain or a long block-layer call can delay them, but never by seconds.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(2);

/// The largest transfer one `read`/`write` command carries; longer ones are split.
const CHUNK: usize = 64 * 1024;

/// A qtest connection.
#[derive(Debug)]
pub struct Qtest {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    timeout: Duration,
    /// Why the connection is unusable, once it is.
    broken: Option<String>,
    /// `IRQ ...` lines seen, oldest first.
    irqs: Vec<String>,
}

impl Qtest {
    /// Accepts QEMU's connection on `listener`, waiting at most `wait`. `gone` is asked
    /// between tries whether QEMU is already dead (then its answer is the error).
    pub fn accept(
        listener: &UnixListener,
        wait: Duration,
        mut gone: impl FnMut() -> Option<String>,
    ) -> Result<Qtest, String> {
        listener
            .set_nonblocking(true)
            .map_err(|e| format!("qtest: cannot poll the listening socket: {e}"))?;
        let start = Instant::now();
        let stream = loop {
            match listener.accept() {
                Ok((stream, _)) => break stream,
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(e) => return Err(format!("qtest: accept failed: {e}")),
            }
            if let Some(why) = gone() {
                return Err(format!("qtest: QEMU did not connect: {why}"));
            }
            if start.elapsed() > wait {
                return Err(format!(
                    "qtest: QEMU did not connect within {} ms",
                    wait.as_millis()
                ));
            }
            std::thread::sleep(Duration::from_micros(200));
        };
        Self::from_stream(stream)
    }

    /// A client on an accepted connection.
    pub fn from_stream(stream: UnixStream) -> Result<Qtest, String> {
        let setup = |e: std::io::Error| format!("qtest: cannot set up the socket: {e}");
        stream.set_nonblocking(false).map_err(setup)?;
        let writer = stream.try_clone().map_err(setup)?;
        writer
            .set_write_timeout(Some(REPLY_TIMEOUT))
            .map_err(setup)?;
        Ok(Qtest {
            reader: BufReader::new(stream),
            writer,
            timeout: REPLY_TIMEOUT,
            broken: None,
            irqs: Vec::new(),
        })
    }

    /// Changes the reply timeout (at least 1 ms).
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout.max(Duration::from_millis(1));
    }

    /// Why the connection is unusable, if it is.
    pub fn broken(&self) -> Option<&str> {
        self.broken.as_deref()
    }

    /// The `IRQ ...` lines received so far (only with `irq_intercept_in`), taken.
    pub fn take_irqs(&mut self) -> Vec<String> {
        std::mem::take(&mut self.irqs)
    }

    /// Sends one command line and returns what follows `OK` in the reply (trimmed, maybe
    /// empty). `FAIL ...`, a timeout and a closed socket are errors.
    pub fn command(&mut self, line: &str) -> Result<String, String> {
        if let Some(why) = &self.broken {
            return Err(format!("qtest connection unusable: {why}"));
        }
        if line.contains('\n') {
            return Err(format!("qtest: a command is one line: {line:?}"));
        }
        let result = self.exchange(line);
        if let Err(Broken(why)) = &result {
            self.broken = Some(why.clone());
        }
        match result {
            Ok(Ok(rest)) => Ok(rest),
            Ok(Err(fail)) => Err(format!("qtest `{line}` failed: {fail}")),
            Err(Broken(why)) => Err(format!("qtest `{line}`: {why}")),
        }
    }

    /// Sends every line at once, then reads the replies in order: one round trip instead
    /// of one per command. Returns what follows each `OK`; the first `FAIL` is the error
    /// (the replies after it are still read, so the connection stays in step).
    pub fn pipeline(&mut self, lines: &[String]) -> Result<Vec<String>, String> {
        if let Some(why) = &self.broken {
            return Err(format!("qtest connection unusable: {why}"));
        }
        let mut out = Vec::new();
        for line in lines {
            if line.contains('\n') {
                return Err(format!("qtest: a command is one line: {line:?}"));
            }
            out.extend_from_slice(line.as_bytes());
            out.push(b'\n');
        }
        if let Err(e) = self.writer.write_all(&out) {
            self.broken = Some(format!("cannot send: {e}"));
            return Err(format!("qtest: cannot send: {e}"));
        }
        let mut replies = Vec::with_capacity(lines.len());
        let mut failed = None;
        for line in lines {
            match self.receive() {
                Ok(Ok(rest)) => replies.push(rest),
                Ok(Err(fail)) => {
                    failed.get_or_insert_with(|| format!("qtest `{line}` failed: {fail}"));
                    replies.push(String::new());
                }
                Err(Broken(why)) => {
                    self.broken = Some(why.clone());
                    return Err(format!("qtest `{line}`: {why}"));
                }
            }
        }
        match failed {
            Some(e) => Err(e),
            None => Ok(replies),
        }
    }

    /// The reply (`Ok(Ok)`: OK, `Ok(Err)`: FAIL) or a broken connection.
    fn exchange(&mut self, line: &str) -> Result<Result<String, String>, Broken> {
        let mut out = Vec::with_capacity(line.len() + 1);
        out.extend_from_slice(line.as_bytes());
        out.push(b'\n');
        self.writer
            .write_all(&out)
            .map_err(|e| Broken(format!("cannot send: {e}")))?;
        self.receive()
    }

    /// The next reply, skipping (and keeping) `IRQ` lines.
    fn receive(&mut self) -> Result<Result<String, String>, Broken> {
        let deadline = Instant::now() + self.timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Broken(format!(
                    "no reply within {} ms",
                    self.timeout.as_millis()
                )));
            }
            self.reader
                .get_ref()
                .set_read_timeout(Some(left))
                .map_err(|e| Broken(format!("cannot set a timeout: {e}")))?;
            let mut reply = String::new();
            match self.reader.read_line(&mut reply) {
                Ok(0) => return Err(Broken("QEMU closed the connection".into())),
                Ok(_) if !reply.ends_with('\n') => {
                    return Err(Broken("QEMU closed the connection mid-reply".into()));
                }
                Ok(_) => {}
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    return Err(Broken(format!(
                        "no reply within {} ms",
                        self.timeout.as_millis()
                    )));
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(Broken(format!("cannot read the reply: {e}"))),
            }
            let reply = reply.trim_end();
            if reply.starts_with("IRQ ") {
                self.irqs.push(reply.to_string());
                continue;
            }
            if reply == "OK" {
                return Ok(Ok(String::new()));
            }
            if let Some(rest) = reply.strip_prefix("OK ") {
                return Ok(Ok(rest.trim().to_string()));
            }
            if let Some(rest) = reply.strip_prefix("FAIL") {
                return Ok(Err(rest.trim().to_string()));
            }
            return Err(Broken(format!("unexpected reply {reply:?}")));
        }
    }

    fn value(&mut self, line: &str) -> Result<u64, String> {
        let reply = self.command(line)?;
        parse_hex(&reply).ok_or_else(|| format!("qtest `{line}`: not a number: {reply:?}"))
    }

    /// Reads a byte of guest memory (or MMIO).
    pub fn readb(&mut self, addr: u64) -> Result<u8, String> {
        Ok(self.value(&format!("readb {addr:#x}"))? as u8)
    }
    /// Reads a little-endian u16.
    pub fn readw(&mut self, addr: u64) -> Result<u16, String> {
        Ok(self.value(&format!("readw {addr:#x}"))? as u16)
    }
    /// Reads a little-endian u32.
    pub fn readl(&mut self, addr: u64) -> Result<u32, String> {
        Ok(self.value(&format!("readl {addr:#x}"))? as u32)
    }
    /// Reads a little-endian u64.
    pub fn readq(&mut self, addr: u64) -> Result<u64, String> {
        self.value(&format!("readq {addr:#x}"))
    }
    /// Writes a byte.
    pub fn writeb(&mut self, addr: u64, v: u8) -> Result<(), String> {
        self.command(&format!("writeb {addr:#x} {v:#x}")).map(drop)
    }
    /// Writes a little-endian u16.
    pub fn writew(&mut self, addr: u64, v: u16) -> Result<(), String> {
        self.command(&format!("writew {addr:#x} {v:#x}")).map(drop)
    }
    /// Writes a little-endian u32.
    pub fn writel(&mut self, addr: u64, v: u32) -> Result<(), String> {
        self.command(&format!("writel {addr:#x} {v:#x}")).map(drop)
    }
    /// Writes a little-endian u64.
    pub fn writeq(&mut self, addr: u64, v: u64) -> Result<(), String> {
        self.command(&format!("writeq {addr:#x} {v:#x}")).map(drop)
    }
    /// Reads an I/O port byte.
    pub fn inb(&mut self, port: u16) -> Result<u8, String> {
        Ok(self.value(&format!("inb {port:#x}"))? as u8)
    }
    /// Reads an I/O port u16.
    pub fn inw(&mut self, port: u16) -> Result<u16, String> {
        Ok(self.value(&format!("inw {port:#x}"))? as u16)
    }
    /// Reads an I/O port u32.
    pub fn inl(&mut self, port: u16) -> Result<u32, String> {
        Ok(self.value(&format!("inl {port:#x}"))? as u32)
    }
    /// Writes an I/O port byte.
    pub fn outb(&mut self, port: u16, v: u8) -> Result<(), String> {
        self.command(&format!("outb {port:#x} {v:#x}")).map(drop)
    }
    /// Writes an I/O port u16.
    pub fn outw(&mut self, port: u16, v: u16) -> Result<(), String> {
        self.command(&format!("outw {port:#x} {v:#x}")).map(drop)
    }
    /// Writes an I/O port u32.
    pub fn outl(&mut self, port: u16, v: u32) -> Result<(), String> {
        self.command(&format!("outl {port:#x} {v:#x}")).map(drop)
    }

    /// Reads `len` bytes of guest memory.
    pub fn read(&mut self, addr: u64, len: usize) -> Result<Vec<u8>, String> {
        let mut out = Vec::with_capacity(len);
        while out.len() < len {
            let n = (len - out.len()).min(CHUNK);
            let at = addr
                .checked_add(out.len() as u64)
                .ok_or_else(|| format!("qtest read: {addr:#x}+{len} overflows"))?;
            let line = format!("read {at:#x} {n:#x}");
            let reply = self.command(&line)?;
            let bytes = decode_hex(&reply)
                .filter(|b| b.len() == n)
                .ok_or_else(|| format!("qtest `{line}`: bad data {:?}", cut(&reply)))?;
            out.extend_from_slice(&bytes);
        }
        Ok(out)
    }

    /// Writes `data` to guest memory.
    pub fn write(&mut self, addr: u64, data: &[u8]) -> Result<(), String> {
        for (i, chunk) in data.chunks(CHUNK).enumerate() {
            let at = addr
                .checked_add((i * CHUNK) as u64)
                .ok_or_else(|| format!("qtest write: {addr:#x}+{} overflows", data.len()))?;
            let mut line = format!("write {at:#x} {:#x} 0x", chunk.len());
            for b in chunk {
                line.push_str(&format!("{b:02x}"));
            }
            self.command(&line)?;
        }
        Ok(())
    }
}

/// A broken connection, as opposed to a `FAIL` reply.
struct Broken(String);

fn cut(s: &str) -> &str {
    s.get(..s.len().min(80)).unwrap_or(s)
}

/// `0x1f` (or `1f`) as a number.
fn parse_hex(s: &str) -> Option<u64> {
    let digits = s.strip_prefix("0x").unwrap_or(s);
    u64::from_str_radix(digits, 16).ok()
}

/// `0x0102ff` as bytes.
fn decode_hex(s: &str) -> Option<Vec<u8>> {
    let digits = s.strip_prefix("0x").unwrap_or(s).as_bytes();
    if !digits.len().is_multiple_of(2) {
        return None;
    }
    digits
        .chunks(2)
        .map(|p| u8::from_str_radix(std::str::from_utf8(p).ok()?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake QEMU on the other end that answers each line with `answer(line)` (None:
    /// stays silent).
    fn fake(answer: fn(&str) -> Option<String>) -> Qtest {
        let (ours, theirs) = UnixStream::pair().unwrap();
        std::thread::spawn(move || {
            let mut w = theirs.try_clone().unwrap();
            for line in BufReader::new(theirs).lines() {
                let Ok(line) = line else { return };
                if let Some(reply) = answer(&line) {
                    let _ = w.write_all(reply.as_bytes());
                }
            }
        });
        Qtest::from_stream(ours).unwrap()
    }

    #[test]
    fn irq_lines_are_filtered_and_values_parsed() {
        let mut q = fake(|line| {
            Some(match line {
                "readl 0x1000" => "IRQ raise 21\nOK 0x00000000deadbeef\n".into(),
                "read 0x2000 0x3" => "OK 0x01ff7e\n".into(),
                "inb 0xcfc" => "FAIL no\n".into(),
                _ => "OK\n".into(),
            })
        });
        assert_eq!(q.readl(0x1000).unwrap(), 0xdeadbeef);
        assert_eq!(q.take_irqs(), vec!["IRQ raise 21".to_string()]);
        assert_eq!(q.read(0x2000, 3).unwrap(), vec![1, 0xff, 0x7e]);
        assert!(q.inb(0xcfc).unwrap_err().contains("failed: no"));
        // A FAIL leaves the connection usable.
        q.writeb(0x10, 1).unwrap();
        let lines = ["readl 0x1000", "writeb 0x1 0x2"].map(String::from);
        assert_eq!(
            q.pipeline(&lines).unwrap(),
            vec!["0x00000000deadbeef".to_string(), String::new()]
        );
        let lines = ["inb 0xcfc", "readl 0x1000"].map(String::from);
        assert!(q.pipeline(&lines).unwrap_err().contains("inb 0xcfc"));
        // Still in step.
        assert_eq!(q.readl(0x1000).unwrap(), 0xdeadbeef);
    }

    #[test]
    fn a_silent_peer_times_out_and_breaks_the_connection() {
        let mut q = fake(|_| None);
        q.set_timeout(Duration::from_millis(50));
        let start = Instant::now();
        assert!(q.readb(0).unwrap_err().contains("no reply within"));
        assert!(start.elapsed() < Duration::from_secs(1));
        assert!(q.readb(0).unwrap_err().contains("unusable"));
    }

    #[test]
    fn hex_helpers() {
        assert_eq!(parse_hex("0x10"), Some(16));
        assert_eq!(parse_hex("zz"), None);
        assert_eq!(decode_hex("0x"), Some(vec![]));
        assert_eq!(decode_hex("0x1"), None);
    }
}
