//! A whole restore from untrusted artifacts: the input holds up to three
//! manifests and a pack blob; whatever they say, restoring them into an
//! empty directory must either succeed or fail with an error, and never
//! write outside that directory.
//!
//! Input layout: a flags byte (low bits: number of manifests, 1..=3; bit 7:
//! the manifests are given as decompressed bodies, wrapped into valid zstd
//! frames here so that mutations reach the parser and the restore rather
//! than the frame checksum), then each manifest as a 3-byte little-endian
//! length and its bytes, then the pack bytes every pack of every link
//! reads from.
#![no_main]

use std::io;

use cairn_delta::{ChainLink, PackSource};
use libfuzzer_sys::fuzz_target;
use uuid::Uuid;

struct Blob<'a>(&'a [u8]);

impl PackSource for Blob<'_> {
    fn read_range(&self, _: Uuid, _: &str, offset: u64, len: u64) -> io::Result<Vec<u8>> {
        let start = usize::try_from(offset).map_err(io::Error::other)?.min(self.0.len());
        let end = start.saturating_add(usize::try_from(len).map_err(io::Error::other)?).min(self.0.len());
        Ok(self.0[start..end].to_vec())
    }
}

fn frame(body: &[u8]) -> Vec<u8> {
    let mut framed = b"CAIRNMAN".to_vec();
    framed.extend_from_slice(&cairn_delta::FORMAT_VERSION.to_le_bytes());
    let mut enc = zstd::stream::write::Encoder::new(framed, 1).expect("encoder");
    enc.include_checksum(true).expect("checksum flag");
    std::io::Write::write_all(&mut enc, body).expect("in memory");
    enc.finish().expect("in memory")
}

fuzz_target!(|data: &[u8]| {
    let Some((&count, mut rest)) = data.split_first() else { return };
    let mut links = Vec::new();
    for _ in 0..(count % 3 + 1) {
        if rest.len() < 3 {
            return;
        }
        let len = usize::from(rest[0]) | usize::from(rest[1]) << 8 | usize::from(rest[2]) << 16;
        let Some(bytes) = rest.get(3..3 + len) else { return };
        let framed;
        let bytes = if count & 0x80 != 0 {
            framed = frame(bytes);
            &framed[..]
        } else {
            bytes
        };
        let Ok(link) = ChainLink::from_bytes(bytes) else { return };
        links.push(link);
        rest = &rest[3 + len..];
    }
    let outer = tempfile::tempdir().expect("temp dir");
    let target = outer.path().join("target");
    std::fs::create_dir(&target).expect("target dir");
    let _ = cairn_delta::restore_chain(&links, &Blob(rest), &target, &mut |_, _| {});
    // Nothing but the target itself may exist beside it.
    let names: Vec<_> = std::fs::read_dir(outer.path()).expect("read outer").map(|e| e.expect("entry").file_name()).collect();
    assert_eq!(names, vec![std::ffi::OsString::from("target")], "restore wrote outside its target");
});
