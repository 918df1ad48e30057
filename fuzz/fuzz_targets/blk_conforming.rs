#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| stopfuzz::targets::blk_conforming(data));
