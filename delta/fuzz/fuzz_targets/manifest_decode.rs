//! Manifest bytes come back from storage and are untrusted: decoding any
//! input must return a manifest that passes validation or an error, never
//! panic, overflow or allocate without bound. A manifest that decodes must
//! also survive a re-encode round trip unchanged.
//!
//! Mutations of a whole stored manifest mostly break its zstd checksum, so
//! half of the inputs (first byte odd) are taken as the *decompressed* body
//! instead and wrapped into a valid frame here: that way the parser and
//! validator behind the frame are fuzzed as directly as the framing.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    let bytes = if mode & 1 == 1 {
        let mut framed = b"CAIRNMAN".to_vec();
        framed.extend_from_slice(&cairn_delta::FORMAT_VERSION.to_le_bytes());
        let mut enc = zstd::stream::write::Encoder::new(framed, 1).expect("encoder");
        enc.include_checksum(true).expect("checksum flag");
        std::io::Write::write_all(&mut enc, rest).expect("in memory");
        enc.finish().expect("in memory")
    } else {
        rest.to_vec()
    };
    if let Ok(m) = cairn_delta::decode_manifest(&bytes) {
        cairn_delta::validate(&m).expect("a decoded manifest is valid");
        let again = cairn_delta::decode_manifest(&cairn_delta::encode_manifest(&m)).expect("re-encoded manifest decodes");
        assert_eq!(again, m, "encode/decode round trip");
    }
});
