//! The control socket: a line protocol through which the front-end steers the served disk.
//!
//! One command per line, one answer per command: `ok`, `ok <details>` or `err <why>`. The
//! commands are listed on [`Command`]; the README has the same list for front-end authors.
//! Any bytes are input: a bad line gets an `err` and the connection stays usable.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};

use super::disk::{Applies, FailRule};
use crate::backend::IoError;

/// The longest command line read; a longer one is answered `err` and skipped.
const MAX_LINE: usize = 256;

/// A control command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    /// `hold`: I/O submitted from now on stays in flight.
    Hold,
    /// `release [N]`: run the N oldest held I/Os and complete their requests; without N, run
    /// all of them and stop holding.
    Release(Option<usize>),
    /// `release-nth K`: run the held I/O at position K (0 is the oldest) now, out of order;
    /// holding stays on.
    ReleaseNth(usize),
    /// `fail <first-sector> <count> <eio|enospc> <once|always>`: I/O touching the range
    /// fails when it runs.
    Fail(FailRule),
    /// `clear`: remove every fail rule.
    Clear,
    /// `reset`: `clear`, then `release`.
    Reset,
    /// `status`: `ok hold=<on|off> held=<n> rules=<n> completed=<n>`.
    Status,
}

/// Parses one command line (without its newline).
pub fn parse(line: &str) -> Result<Command, String> {
    let words: Vec<&str> = line.split_ascii_whitespace().collect();
    match words.as_slice() {
        ["hold"] => Ok(Command::Hold),
        ["release"] => Ok(Command::Release(None)),
        ["release", n] => Ok(Command::Release(Some(number(n)?))),
        ["release-nth", k] => Ok(Command::ReleaseNth(number(k)?)),
        ["fail", first, count, error, when] => {
            let count = number(count)?;
            if count == 0 {
                return Err("count must be at least 1".into());
            }
            let error = match *error {
                "eio" => IoError::Io,
                "enospc" => IoError::NoSpace,
                other => return Err(format!("unknown error {other:?}: eio or enospc")),
            };
            let once = match *when {
                "once" => true,
                "always" => false,
                other => return Err(format!("unknown repeat {other:?}: once or always")),
            };
            Ok(Command::Fail(FailRule {
                first: number(first)?,
                count,
                error,
                once,
                applies: Applies::Both,
            }))
        }
        ["clear"] => Ok(Command::Clear),
        ["reset"] => Ok(Command::Reset),
        ["status"] => Ok(Command::Status),
        [] => Err("empty command".into()),
        [cmd, ..] => Err(format!(
            "unknown command or wrong arguments: {cmd:?}; commands: hold, release [N], \
             release-nth K, fail FIRST COUNT eio|enospc once|always, clear, reset, status"
        )),
    }
}

fn number<T: std::str::FromStr>(word: &str) -> Result<T, String> {
    word.parse()
        .map_err(|_| format!("{word:?} is not a non-negative integer in range"))
}

/// Serves control connections on `listener` until the process ends, one thread each.
/// `apply` carries out a command and gives the answer's text after `ok`.
pub fn serve<F>(listener: UnixListener, apply: F)
where
    F: Fn(Command) -> Result<String, String> + Clone + Send + 'static,
{
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        let apply = apply.clone();
        let _ = std::thread::Builder::new()
            .name("serve-control".into())
            .spawn(move || {
                if let Err(e) = converse(stream, apply) {
                    eprintln!("stopfuzz serve: control connection: {e}");
                }
            });
    }
}

fn converse<F>(stream: UnixStream, apply: F) -> std::io::Result<()>
where
    F: Fn(Command) -> Result<String, String>,
{
    let mut out = stream.try_clone()?;
    let mut lines = BufReader::new(stream);
    let mut line = Vec::new();
    loop {
        line.clear();
        // Read at most one byte past the limit, so an overlong line is seen without
        // buffering all of it.
        let n = (&mut lines)
            .take(MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut line)?;
        if n == 0 {
            return Ok(());
        }
        let answer = if line.last() != Some(&b'\n') && n > MAX_LINE {
            skip_line(&mut lines)?;
            Err(format!("line longer than {MAX_LINE} bytes"))
        } else {
            match std::str::from_utf8(&line) {
                Ok(text) => parse(text.trim_end()).and_then(&apply),
                Err(_) => Err("not UTF-8".into()),
            }
        };
        let reply = match answer {
            Ok(details) if details.is_empty() => "ok\n".to_string(),
            Ok(details) => format!("ok {details}\n"),
            Err(why) => format!("err {}\n", why.replace('\n', " ")),
        };
        out.write_all(reply.as_bytes())?;
    }
}

/// Discards the rest of an overlong line.
fn skip_line(lines: &mut impl BufRead) -> std::io::Result<()> {
    let mut sink = Vec::new();
    loop {
        sink.clear();
        let n = lines.take(4096).read_until(b'\n', &mut sink)?;
        if n == 0 || sink.last() == Some(&b'\n') {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_parse() {
        assert_eq!(parse("hold"), Ok(Command::Hold));
        assert_eq!(parse("  release  "), Ok(Command::Release(None)));
        assert_eq!(parse("release 2"), Ok(Command::Release(Some(2))));
        assert_eq!(
            parse("fail 8 4 enospc once"),
            Ok(Command::Fail(FailRule {
                first: 8,
                count: 4,
                error: IoError::NoSpace,
                once: true,
                applies: Applies::Both,
            }))
        );
        assert_eq!(parse("release-nth 0"), Ok(Command::ReleaseNth(0)));
        assert_eq!(parse("status"), Ok(Command::Status));
    }

    #[test]
    fn bad_lines_are_errors() {
        for line in [
            "",
            "hodl",
            "release -1",
            "release 1 2",
            "release-nth",
            "fail 8 0 eio once",
            "fail 8 1 eperm once",
            "fail 8 1 eio twice",
            "fail x 1 eio once",
            "fail 99999999999999999999999 1 eio once",
            "fail 1 2 eio",
        ] {
            assert!(parse(line).is_err(), "{line:?}");
        }
    }

    #[test]
    fn a_connection_survives_bad_input() {
        let (a, mut b) = UnixStream::pair().unwrap();
        let server = std::thread::spawn(move || converse(a, |c| Ok(format!("{c:?}"))));
        let long = "x".repeat(MAX_LINE * 3);
        let mut input = b"bogus\n\xff\n".to_vec();
        input.extend_from_slice(format!("{long}\nhold\n").as_bytes());
        b.write_all(&input).unwrap();
        b.shutdown(std::net::Shutdown::Write).unwrap();
        let mut replies = String::new();
        b.read_to_string(&mut replies).unwrap();
        server.join().unwrap().unwrap();
        let lines: Vec<&str> = replies.lines().collect();
        assert_eq!(lines.len(), 4, "{replies}");
        assert!(
            lines[..3].iter().all(|l| l.starts_with("err ")),
            "{replies}"
        );
        assert_eq!(lines[3], "ok Hold");
    }
}
