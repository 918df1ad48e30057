fn main() {
    afl::fuzz!(|data: &[u8]| stopfuzz::targets::blk_hostile(data));
}
