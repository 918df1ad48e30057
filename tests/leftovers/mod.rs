//! What a test binary left running: the processes whose command lines name one of its
//! scratch directories (`stopfuzz-KIND-PID-N`, `dut::process::Scratch`), children or not.

/// This test binary's processes of scratch kind `kind` (`qemu`, `vu`), one `pgrep -a` line
/// each, once they have had a moment to exit.
pub fn leftovers(kind: &str) -> String {
    std::thread::sleep(std::time::Duration::from_millis(100));
    let pattern = format!("stopfuzz-{kind}-{}-", std::process::id());
    let out = std::process::Command::new("pgrep")
        .args(["-a", "-f", &pattern])
        .output();
    out.map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}
