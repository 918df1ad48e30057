//! Back-end command templates: how to start a back-end on a socket and a disk image, and
//! what the harness must expect of it.
//!
//! A template is a command line with placeholders, split on whitespace (single or double
//! quotes keep a word together):
//! - `{socket}`: the vhost-user socket the back-end listens on (required);
//! - `{image}`: a raw disk image file the harness creates, zeroes and reads back;
//! - `{blockdev}`: QEMU `--blockdev` arguments for that image (several words), with a
//!   `blkdebug` layer when the input injects faults; when it asks for a slow disk, a
//!   `null-co` disk whose every request takes 2 ms and which keeps no data (the model then
//!   checks no data);
//! - `{faults}`: a file the back-end reads at start, one fault per line (`write 12 enospc`,
//!   `read 3 eio`): every write (read) touching that sector fails with that error. It is
//!   empty when the input injects none. `stopfuzz serve --faults` takes it.
//!
//! Only a template with `{blockdev}` or `{faults}` gets faults, and only `{blockdev}` slow
//! I/O.
//!
//! It also declares the error policy the back-end implements, so the model expects the
//! right status: qemu-storage-daemon completes every failed request with IOERR (`report`).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::backend::IoError;
use crate::contract::ErrorPolicy;
use crate::dut::{Fault, Known};

/// qemu-storage-daemon's vhost-user-blk export: the default template.
pub const QSD: &str = "qemu-storage-daemon {blockdev} --export type=vhost-user-blk,id=export0,node-name=disk0,addr.type=unix,addr.path={socket},writable=on,num-queues=1";

/// What qemu-storage-daemon's vhost-user-blk export answers GET_ID with.
pub const QSD_ID: &str = "vhost_user_blk";

/// How long each request of a slow disk takes: long enough that requests are really in
/// flight across a stop. (QEMU's `throttle` filter lets the first requests of a burst
/// through at once, so a short program would never wait.)
pub const SLOW_LATENCY_NS: u64 = 2_000_000;

/// A back-end command template and what its back-end promises.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Template {
    /// The words, placeholders unexpanded.
    words: Vec<String>,
    /// The template as given.
    pub text: String,
    /// What a failed write or flush does.
    pub write_policy: ErrorPolicy,
    /// What a failed read does.
    pub read_policy: ErrorPolicy,
    /// A worker keeps its back-end for the next run where that is sound.
    pub reuse: bool,
    /// The ID string the back-end answers GET_ID with (at most 20 bytes).
    pub id: String,
    /// Known deviations of this back-end that the oracle lets pass (each documented in
    /// docs/findings/); `--strict` clears them.
    pub known: Known,
}

/// What one back-end is started with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Disk {
    /// Sectors in the image.
    pub sectors: u64,
    /// Faults, when the template can inject them.
    pub faults: Vec<Fault>,
    /// A throttled disk.
    pub slow: bool,
}

impl Template {
    /// Parses `text`, with the error policy `policy` (`report`, `ignore`, or
    /// `write=P,read=P`).
    pub fn parse(text: &str, policy: &str) -> Result<Template, String> {
        let words = split(text)?;
        if words.is_empty() {
            return Err("the back-end command is empty".into());
        }
        if !words.iter().any(|w| w.contains("{socket}")) {
            return Err(format!(
                "the back-end command {text:?} has no {{socket}} placeholder: stopfuzz cannot tell it where to listen"
            ));
        }
        for w in &words {
            let mut rest = w.as_str();
            while let Some(open) = rest.find('{') {
                let close = rest[open..].find('}').map(|c| open + c);
                let name = close.map(|c| &rest[open..=c]);
                match name {
                    Some("{socket}" | "{image}" | "{blockdev}" | "{faults}") => {}
                    _ => {
                        return Err(format!(
                            "unknown placeholder in {w:?}; the template takes {{socket}}, {{image}}, {{blockdev}} and {{faults}}"
                        ));
                    }
                }
                rest = &rest[close.unwrap_or(rest.len() - 1) + 1..];
            }
        }
        let (write_policy, read_policy) = parse_policy(policy)?;
        Ok(Template {
            words,
            text: text.to_string(),
            write_policy,
            read_policy,
            reuse: false,
            id: QSD_ID.to_string(),
            known: Known {
                get_id_unpadded: text == QSD,
                failed_read_len: text == QSD,
                busy_queue_reset: false,
            },
        })
    }

    /// The shipped qemu-storage-daemon template.
    pub fn qsd() -> Template {
        Template::parse(QSD, "report").expect("the shipped template parses")
    }

    /// The ID string the device answers GET_ID with, and how many bytes of it to check.
    pub fn device_id(&self) -> ([u8; crate::virtio::ID_BYTES], usize) {
        let mut id = [0u8; crate::virtio::ID_BYTES];
        let n = self.id.len().min(id.len());
        id[..n].copy_from_slice(&self.id.as_bytes()[..n]);
        let checked = if self.known.get_id_unpadded {
            (n + 1).min(id.len())
        } else {
            id.len()
        };
        (id, checked)
    }

    /// Sets the GET_ID answer, or says why it cannot be one.
    pub fn set_id(&mut self, id: &str) -> Result<(), String> {
        if id.len() > crate::virtio::ID_BYTES {
            return Err(format!(
                "--backend-id {id:?} is longer than virtio-blk's {} ID bytes",
                crate::virtio::ID_BYTES
            ));
        }
        self.id = id.to_string();
        Ok(())
    }

    /// Whether the back-end gets faults (`{blockdev}` or `{faults}`).
    pub fn injects(&self) -> bool {
        self.words
            .iter()
            .any(|w| w.contains("{blockdev}") || w.contains("{faults}"))
    }

    /// Whether the back-end gets a slow disk when the input asks (`{blockdev}`).
    pub fn slows(&self) -> bool {
        self.words.iter().any(|w| w == "{blockdev}")
    }

    /// The command for one back-end, and the files it reads (path, contents), to be
    /// written into `scratch` first.
    pub fn expand(
        &self,
        socket: &Path,
        image: &Path,
        scratch: &Path,
        disk: &Disk,
    ) -> (Vec<String>, Vec<(PathBuf, String)>) {
        let blkdebug = scratch.join("blkdebug.conf");
        let faults = scratch.join("faults");
        let mut files = Vec::new();
        let mut argv = Vec::new();
        for w in &self.words {
            if w == "{blockdev}" {
                let layered = !disk.faults.is_empty();
                argv.extend(blockdev(image, layered.then_some(&*blkdebug), disk));
                if layered {
                    files.push((blkdebug.clone(), blkdebug_config(&disk.faults)));
                }
                continue;
            }
            if w.contains("{faults}") {
                let lines: String = disk.faults.iter().map(|f| format!("{f}\n")).collect();
                files.push((faults.clone(), lines));
            }
            argv.push(
                w.replace("{socket}", &socket.display().to_string())
                    .replace("{image}", &image.display().to_string())
                    .replace("{faults}", &faults.display().to_string()),
            );
        }
        files.dedup_by(|a, b| a.0 == b.0);
        (argv, files)
    }

    /// The policy as `--backend-policy` takes it.
    pub fn policy_text(&self) -> String {
        format!(
            "write={},read={}",
            policy_name(self.write_policy),
            policy_name(self.read_policy)
        )
    }
}

/// `--blockdev` words: the image file, or for a slow disk `null-co` with a latency (every
/// request takes [`SLOW_LATENCY_NS`], data is not kept); then blkdebug and raw when faulty.
/// The top node is `disk0`.
fn blockdev(image: &Path, blkdebug: Option<&Path>, disk: &Disk) -> Vec<String> {
    let base = if disk.slow {
        format!(
            "driver=null-co,size={},latency-ns={SLOW_LATENCY_NS},read-zeroes=on",
            disk.sectors * crate::backend::SECTOR_SIZE
        )
    } else {
        format!(
            "driver=file,filename={},locking=off",
            image.display().to_string().replace(',', ",,")
        )
    };
    let mut nodes: Vec<(&str, String)> = vec![("file0", base)];
    if let Some(config) = blkdebug {
        nodes.push((
            "dbg0",
            format!(
                "driver=blkdebug,config={},image=file0",
                config.display().to_string().replace(',', ",,")
            ),
        ));
        // raw on top fires blkdebug's read_aio and write_aio events for every request.
        nodes.push(("raw0", "driver=raw,file=dbg0".into()));
    }
    let last = nodes.len() - 1;
    let mut out = Vec::new();
    for (i, (name, spec)) in nodes.iter().enumerate() {
        let name = if i == last { "disk0" } else { name };
        out.push("--blockdev".into());
        out.push(format!("{spec},node-name={name}"));
    }
    out
}

/// A blkdebug configuration failing every read or write that touches a fault's sector
/// (blkdebug's sectors are 512 bytes, as virtio-blk's).
pub fn blkdebug_config(faults: &[Fault]) -> String {
    let mut out = String::new();
    for f in faults {
        let (event, iotype) = if f.write {
            ("write_aio", "write")
        } else {
            ("read_aio", "read")
        };
        let errno = match f.error {
            IoError::NoSpace => libc::ENOSPC,
            IoError::Io => libc::EIO,
        };
        let _ = write!(
            out,
            "[inject-error]\nevent = \"{event}\"\niotype = \"{iotype}\"\nerrno = \"{errno}\"\nsector = \"{}\"\n\n",
            f.sector
        );
    }
    out
}

fn parse_policy(text: &str) -> Result<(ErrorPolicy, ErrorPolicy), String> {
    let one = |p: &str| match p {
        "report" => Ok(ErrorPolicy::Report),
        "ignore" => Ok(ErrorPolicy::Ignore),
        _ => Err(format!(
            "unknown error policy {p:?}: a back-end declares report or ignore"
        )),
    };
    if !text.contains('=') {
        let p = one(text)?;
        return Ok((p, p));
    }
    let (mut write, mut read) = (ErrorPolicy::Report, ErrorPolicy::Report);
    for part in text.split(',') {
        match part.split_once('=') {
            Some(("write", p)) => write = one(p)?,
            Some(("read", p)) => read = one(p)?,
            _ => {
                return Err(format!(
                    "bad policy part {part:?}; expected write=P or read=P"
                ));
            }
        }
    }
    Ok((write, read))
}

/// A policy as QEMU's werror/rerror spell it.
pub(crate) fn policy_name(p: ErrorPolicy) -> &'static str {
    match p {
        ErrorPolicy::Report => "report",
        ErrorPolicy::Ignore => "ignore",
        ErrorPolicy::Stop => "stop",
        ErrorPolicy::Enospc => "enospc",
    }
}

/// Splits on whitespace; quotes group words.
fn split(text: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut quote: Option<char> = None;
    for c in text.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => word.push(c),
            (None, '\'' | '"') => {
                quote = Some(c);
                in_word = true;
            }
            (None, c) if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            (None, c) => {
                word.push(c);
                in_word = true;
            }
        }
    }
    if quote.is_some() {
        return Err(format!("unbalanced quote in the back-end command {text:?}"));
    }
    if in_word {
        words.push(word);
    }
    Ok(words)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_need_a_socket_and_known_placeholders() {
        assert!(Template::parse("backend --image {image}", "report").is_err());
        assert!(Template::parse("backend --socket {sock}", "report").is_err());
        assert!(Template::parse("", "report").is_err());
        assert!(Template::parse("backend '{socket}", "report").is_err());
        assert!(Template::parse("backend {socket}", "panic").is_err());
        let t = Template::parse(
            "stopfuzz serve --socket {socket} --image '{image}'",
            "ignore",
        )
        .unwrap();
        assert_eq!(t.write_policy, ErrorPolicy::Ignore);
        assert!(!t.injects());
        let disk = Disk {
            sectors: 8,
            faults: vec![],
            slow: true,
        };
        let (argv, files) = t.expand(Path::new("/s"), Path::new("/i"), Path::new("/c"), &disk);
        assert_eq!(
            argv,
            ["stopfuzz", "serve", "--socket", "/s", "--image", "/i"]
        );
        assert_eq!(files, []);
    }

    #[test]
    fn a_faults_file_lists_one_fault_a_line_and_reads_back() {
        let t = Template::parse("b --socket {socket} --faults={faults}", "report").unwrap();
        assert!(t.injects() && !t.slows());
        let faults = vec![
            Fault {
                write: true,
                sector: 3,
                error: IoError::NoSpace,
            },
            Fault {
                write: false,
                sector: 60,
                error: IoError::Io,
            },
        ];
        let disk = Disk {
            sectors: 64,
            faults: faults.clone(),
            slow: false,
        };
        let (argv, files) = t.expand(Path::new("/s"), Path::new("/i"), Path::new("/d"), &disk);
        assert_eq!(argv, ["b", "--socket", "/s", "--faults=/d/faults"]);
        assert_eq!(
            files,
            [(
                PathBuf::from("/d/faults"),
                "write 3 enospc\nread 60 eio\n".into()
            )]
        );
        assert_eq!(crate::dut::parse_faults(&files[0].1), Ok(faults));
        assert_eq!(crate::dut::parse_faults("# none\n\n"), Ok(vec![]));
        for bad in [
            "write 3",
            "erase 3 eio",
            "read x eio",
            "read 3 eperm",
            "read -1 eio",
        ] {
            assert!(crate::dut::parse_faults(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_qsd_template_layers_blkdebug_and_throttle() {
        let t = Template::qsd();
        assert!(t.injects());
        let fault = Fault {
            write: true,
            sector: 3,
            error: IoError::NoSpace,
        };
        let disk = Disk {
            sectors: 8,
            faults: vec![fault],
            slow: true,
        };
        let (argv, files) = t.expand(Path::new("/s"), Path::new("/i"), Path::new("/c"), &disk);
        let line = argv.join(" ");
        assert!(line.contains("--blockdev driver=null-co,size=4096,latency-ns=2000000"));
        assert!(
            line.contains("driver=blkdebug,config=/c/blkdebug.conf,image=file0,node-name=dbg0")
        );
        assert!(line.contains("driver=raw,file=dbg0,node-name=disk0"));
        assert!(line.contains("addr.path=/s,"));
        let config = &files[0].1;
        assert!(config.contains("iotype = \"write\"") && config.contains("errno = \"28\""));
        assert!(config.contains("sector = \"3\""));
        let plain = Disk {
            faults: vec![],
            slow: false,
            ..disk
        };
        assert!(!line.contains("/i"), "a slow disk keeps no image");
        let (argv, files) = t.expand(Path::new("/s"), Path::new("/i"), Path::new("/c"), &plain);
        assert!(argv.join(" ").contains("locking=off,node-name=disk0"));
        assert_eq!(files, []);
    }
}
