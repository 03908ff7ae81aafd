//! Pack bytes are untrusted: decoding a run (raw or zstd) with any recorded
//! geometry must produce exactly `raw_len` bytes or an error, and never
//! expand a frame past its recorded size (decompression bombs).
//!
//! Input layout: 1 byte compression, 3 bytes of raw length (capped by the
//! decoder's own limit check), then the stored bytes.
#![no_main]

use cairn_delta::{BlockRun, Compression};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 4 {
        return;
    }
    let compression = match data[0] % 3 {
        0 => Compression::Zstd,
        1 => Compression::Raw,
        _ => Compression::Zero,
    };
    let raw_len = u64::from(u32::from_le_bytes([data[1], data[2], data[3], 0])) << (data[0] >> 6);
    let stored = data[4..].to_vec();
    let run = BlockRun {
        first_block: 0,
        count: 1,
        pack: 0,
        offset: 0,
        stored_len: stored.len() as u64,
        raw_len,
        frame_offset: 0,
        frame_len: raw_len,
        compression,
    };
    if let Ok(raw) = cairn_delta::decode_run(&run, stored) {
        assert_eq!(raw.len() as u64, raw_len);
    }
});
