//! The firmware QEMU boots: 64 KiB that only halt.
//!
//! With `-S` nothing runs, but after `cont` the vCPU starts at the reset vector; SeaBIOS
//! would then reprogram the PCI BARs stopfuzz assigned. This image halts forever instead,
//! so a running VM keeps its PCI configuration and costs almost no CPU.

use std::path::Path;

/// The image size: QEMU maps `-bios` so that it ends at 4 GiB, with the reset vector
/// 16 bytes from the end.
pub const SIZE: usize = 64 * 1024;

/// The image: `hlt` (0xF4) everywhere; at the reset vector `hlt; jmp $-3`, so that an
/// interrupt that wakes the CPU sends it straight back to `hlt`.
pub fn image() -> Vec<u8> {
    let mut bios = vec![0xF4u8; SIZE];
    bios[SIZE - 16..SIZE - 13].copy_from_slice(&[0xF4, 0xEB, 0xFD]);
    bios
}

/// Writes [`image`] to `path`.
pub fn write(path: &Path) -> Result<(), String> {
    std::fs::write(path, image())
        .map_err(|e| format!("cannot write the firmware to {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reset_vector_halts_and_loops_back() {
        let bios = image();
        assert_eq!(bios.len(), 65536);
        assert_eq!(&bios[SIZE - 16..SIZE - 13], &[0xF4, 0xEB, 0xFD]);
        assert!(bios[..SIZE - 16].iter().all(|&b| b == 0xF4));
        // jmp rel8 -3 from the byte after it lands on the hlt before it.
        assert_eq!(
            (SIZE - 13) as isize + (0xFDu8 as i8) as isize,
            (SIZE - 16) as isize
        );
    }
}
