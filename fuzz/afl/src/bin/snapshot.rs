fn main() {
    afl::fuzz!(|data: &[u8]| stopfuzz::targets::snapshot(data));
}
