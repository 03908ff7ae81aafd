//! Binary manifest encoding.
//!
//! Why a hand-written format and not JSON/serde: a 10 GiB tree at 4 KiB
//! blocks has 2.6M block hashes; as raw 16-byte fields they cost 40 MiB, as
//! JSON hex strings more than three times that, and they do not compress.
//! The encoding is therefore plain length-prefixed binary (LEB128 varints,
//! zigzag for signed, paths front-coded against the previous path since
//! entries are sorted, run positions delta-coded), inside one zstd frame with
//! its content checksum, behind an uncompressed magic + version so a reader
//! can refuse a format it does not know before decompressing anything.
//!
//! Decoding treats the bytes as hostile: no length field is trusted for an
//! allocation (vectors grow as data actually arrives, strings are capped),
//! the decompressed size is capped while it is decompressed, the memory the
//! decoded manifest takes is accounted before it is kept ([`DecodeLimits`]),
//! arithmetic is checked, and the result is
//! validated as a whole (paths, ordering, references, run geometry) so the
//! restore code can rely on those invariants.

use std::collections::HashSet;
use std::io::{BufReader, Read};

use uuid::Uuid;

use crate::error::DeltaError;
use crate::manifest::*;
use crate::{FORMAT_VERSION, MAX_BLOCK_SIZE, MIN_BLOCK_SIZE};

const MAGIC: &[u8; 8] = b"CAIRNMAN";
const PREFIX_LEN: usize = 12;
const MANIFEST_ZSTD_LEVEL: i32 = 3;

/// Decompressed manifests larger than this are refused (about 128 Mi blocks).
pub const MAX_MANIFEST_DECODED: u64 = 2 << 30;
/// Memory a decoded manifest may take (entries, paths, block hashes, runs,
/// as accounted while parsing). A 10 GiB tree at 4 KiB blocks needs about
/// 60 MiB; a manifest that would need more is refused before allocating it.
pub const MAX_MANIFEST_MEMORY: u64 = 1 << 30;

/// Bounds applied while decoding a manifest (untrusted input).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeLimits {
    /// Largest decompressed body; a zstd frame that expands further is a
    /// decompression bomb and is refused as soon as it passes the limit.
    pub max_decoded: u64,
    /// Largest memory the decoded manifest may take.
    pub max_memory: u64,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        DecodeLimits { max_decoded: MAX_MANIFEST_DECODED, max_memory: MAX_MANIFEST_MEMORY }
    }
}
/// Longest path / symlink target / name accepted in a manifest.
pub const MAX_STRING: usize = 4096;
/// Largest decoded size of one stored (non-zero) run; bounds restore memory.
pub const MAX_RUN_RAW: u64 = 8 << 20;
/// Largest file size accepted (keeps all offset arithmetic far from overflow).
const MAX_FILE_SIZE: u64 = 1 << 60;

const KIND_DIR: u8 = 0;
const KIND_FILE: u8 = 1;
const KIND_SYMLINK: u8 = 2;
const KIND_HARDLINK: u8 = 3;

const HASHES_STANDALONE: u8 = 0;
const HASHES_FILE_TREE: u8 = 1;

const COMP_ZSTD: u8 = 0;
const COMP_RAW: u8 = 1;
const COMP_ZERO: u8 = 2;

/// Encode a manifest (magic, version, zstd-compressed body) in the version
/// its header names.
///
/// # Panics
/// If a [`HashCoverage::StoredOnly`] manifest names a version before 4,
/// which would have to record hashes this manifest does not hold.
pub fn encode_manifest(m: &Manifest) -> Vec<u8> {
    let mut b = Vec::with_capacity(1024);
    let h = &m.header;
    assert!(
        h.format_version >= 4 || m.hashes == HashCoverage::All,
        "a manifest holding only its stored blocks' hashes cannot be encoded in version {}",
        h.format_version
    );
    b.extend_from_slice(h.backup_id.as_bytes());
    b.extend_from_slice(h.instance_id.as_bytes());
    match &h.parent {
        None => b.push(0),
        Some(p) => {
            b.push(1);
            b.extend_from_slice(p.backup_id.as_bytes());
            put_str(&mut b, &p.checksum);
        }
    }
    put_var(&mut b, u64::from(h.block_size));
    if h.format_version >= 3 {
        b.push(match h.block_hashes {
            BlockHashKind::Standalone => HASHES_STANDALONE,
            BlockHashKind::FileTree => HASHES_FILE_TREE,
        });
    }
    put_var(&mut b, h.packs.len() as u64);
    for p in &h.packs {
        put_str(&mut b, &p.name);
        put_var(&mut b, p.size);
        put_str(&mut b, &p.blake3);
    }
    put_var(&mut b, m.entries.len() as u64);
    let mut prev: &str = "";
    for e in &m.entries {
        let shared = common_prefix(prev.as_bytes(), e.path.as_bytes());
        put_var(&mut b, shared as u64);
        put_bytes(&mut b, &e.path.as_bytes()[shared..]);
        prev = &e.path;
        b.push(match e.kind {
            EntryKind::Dir => KIND_DIR,
            EntryKind::File(_) => KIND_FILE,
            EntryKind::Symlink { .. } => KIND_SYMLINK,
            EntryKind::HardLink { .. } => KIND_HARDLINK,
        });
        put_var(&mut b, u64::from(e.mode));
        put_time(&mut b, e.mtime);
        put_var(&mut b, u64::from(e.uid));
        put_var(&mut b, u64::from(e.gid));
        match &e.kind {
            EntryKind::Dir => {}
            EntryKind::Symlink { target } => put_str(&mut b, target),
            EntryKind::HardLink { to } => put_str(&mut b, to),
            EntryKind::File(f) => {
                put_var(&mut b, f.size);
                put_var(&mut b, f.inode);
                put_time(&mut b, f.ctime);
                b.extend_from_slice(&f.blake3);
                if h.format_version < 4 {
                    for bh in &f.block_hashes {
                        b.extend_from_slice(bh);
                    }
                }
                if h.format_version >= 2 {
                    match &f.base {
                        None => b.push(0),
                        Some(base) => {
                            b.push(1);
                            put_str(&mut b, base);
                        }
                    }
                }
                match &f.content {
                    FileContent::Unchanged => b.push(0),
                    FileContent::Stored(runs) => {
                        b.push(1);
                        put_var(&mut b, runs.len() as u64);
                        let mut prev_end = 0u64;
                        for r in runs {
                            put_var(&mut b, r.first_block.wrapping_sub(prev_end));
                            prev_end = r.end_block();
                            put_var(&mut b, r.count);
                            match r.compression {
                                Compression::Zero => b.push(COMP_ZERO),
                                c => {
                                    b.push(if c == Compression::Zstd { COMP_ZSTD } else { COMP_RAW });
                                    put_var(&mut b, u64::from(r.pack));
                                    put_var(&mut b, r.offset);
                                    put_var(&mut b, r.stored_len);
                                }
                            }
                            put_var(&mut b, r.raw_len);
                            if h.format_version >= 3 && r.compression != Compression::Zero {
                                put_var(&mut b, r.frame_offset);
                                put_var(&mut b, r.frame_len);
                            }
                        }
                    }
                }
                if h.format_version >= 4 {
                    // Only the stored blocks' hashes; the rest are the parent's.
                    match m.hashes {
                        HashCoverage::StoredOnly => f.block_hashes.iter().for_each(|bh| b.extend_from_slice(bh)),
                        HashCoverage::All => {
                            // One hash per stored block, as the decoder
                            // reads them; a crafted manifest (tests encode
                            // them) may have runs past its hashes: zeros.
                            for r in f.runs() {
                                for i in r.first_block..r.end_block() {
                                    let bh = usize::try_from(i).ok().and_then(|i| f.block_hashes.get(i));
                                    b.extend_from_slice(bh.unwrap_or(&[0; 16]));
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    let body = zstd_compress(&b);
    let mut out = Vec::with_capacity(PREFIX_LEN + body.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&h.format_version.to_le_bytes());
    out.extend_from_slice(&body);
    out
}

fn zstd_compress(data: &[u8]) -> Vec<u8> {
    let mut enc = zstd::stream::write::Encoder::new(Vec::new(), MANIFEST_ZSTD_LEVEL).expect("zstd encoder on a Vec");
    enc.include_checksum(true).expect("zstd checksum flag");
    enc.set_pledged_src_size(Some(data.len() as u64)).expect("zstd pledged size");
    std::io::Write::write_all(&mut enc, data).expect("writing to a Vec");
    enc.finish().expect("writing to a Vec")
}

/// Decode and validate manifest bytes (untrusted input).
pub fn decode_manifest(bytes: &[u8]) -> Result<Manifest, DeltaError> {
    decode_manifest_with_limits(bytes, &DecodeLimits::default())
}

/// [`decode_manifest`] with explicit bounds (tests use small ones).
pub fn decode_manifest_with_limits(bytes: &[u8], limits: &DecodeLimits) -> Result<Manifest, DeltaError> {
    if bytes.len() < PREFIX_LEN {
        return Err(DeltaError::corrupt(format!("{} bytes is too short for a manifest", bytes.len())));
    }
    if &bytes[..8] != MAGIC {
        return Err(DeltaError::corrupt("bad magic (not a cairn manifest)"));
    }
    let version = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
    check_version(version)?;
    let frame = &bytes[PREFIX_LEN..];
    match zstd::zstd_safe::find_frame_compressed_size(frame) {
        Ok(n) if n == frame.len() => {}
        Ok(n) => {
            return Err(DeltaError::corrupt(format!(
                "{} trailing bytes after the compressed body",
                frame.len().saturating_sub(n)
            )));
        }
        Err(_) => return Err(DeltaError::corrupt("compressed body is not one zstd frame")),
    }
    let mut dec = zstd::stream::read::Decoder::with_buffer(frame)
        .map_err(|e| DeltaError::corrupt(format!("zstd: {e}")))?
        .single_frame();
    // Bound decoder memory even if the frame header asks for a huge window.
    dec.window_log_max(27).map_err(|e| DeltaError::corrupt(format!("zstd: {e}")))?;
    let body = LimitedRead { inner: dec, left: limits.max_decoded };
    let mut r = Reader { inner: BufReader::with_capacity(64 << 10, body), budget: limits.max_memory };
    let m = parse_body(&mut r, version)?;
    // Reading past the end verifies the zstd checksum and rejects extra bytes.
    let mut extra = [0u8; 1];
    match r.inner.read(&mut extra) {
        Ok(0) => {}
        Ok(_) => return Err(DeltaError::corrupt("trailing data after the last entry")),
        Err(e) => return Err(DeltaError::corrupt(format!("compressed body: {e}"))),
    }
    validate(&m)?;
    Ok(m)
}

fn parse_body<R: Read>(r: &mut Reader<R>, version: u32) -> Result<Manifest, DeltaError> {
    let backup_id = r.uuid("backup id")?;
    let instance_id = r.uuid("instance id")?;
    let parent = match r.u8("parent flag")? {
        0 => None,
        1 => Some(ParentRef { backup_id: r.uuid("parent id")?, checksum: r.string("parent checksum")? }),
        x => return Err(DeltaError::corrupt(format!("bad parent flag {x}"))),
    };
    let block_size = r.u32("block size")?;
    let block_hashes = match version {
        1 | 2 => BlockHashKind::Standalone,
        _ => match r.u8("block hash kind")? {
            HASHES_STANDALONE => BlockHashKind::Standalone,
            HASHES_FILE_TREE => BlockHashKind::FileTree,
            x => return Err(DeltaError::corrupt(format!("bad block hash kind {x}"))),
        },
    };
    let npacks = r.var("pack count")?;
    let mut packs = Vec::with_capacity(npacks.min(1024) as usize);
    for _ in 0..npacks {
        let pack =
            PackRef { name: r.string("pack name")?, size: r.var("pack size")?, blake3: r.string("pack checksum")? };
        r.charge(size_of::<PackRef>() + pack.name.len() + pack.blake3.len(), "pack list")?;
        packs.push(pack);
    }
    if !(MIN_BLOCK_SIZE..=MAX_BLOCK_SIZE).contains(&block_size) || !block_size.is_power_of_two() {
        return Err(DeltaError::corrupt(format!(
            "block size {block_size} is not a power of two in {MIN_BLOCK_SIZE}..={MAX_BLOCK_SIZE}"
        )));
    }
    let nentries = r.var("entry count")?;
    let mut entries: Vec<Entry> = Vec::with_capacity(nentries.min(4096) as usize);
    for i in 0..nentries {
        let ctx = || format!("entry {i}");
        let shared = r.var("path prefix")? as usize;
        let prev = entries.last().map(|e| e.path.as_bytes()).unwrap_or(b"");
        if shared > prev.len() {
            return Err(DeltaError::corrupt(format!("{}: path prefix length {shared} exceeds previous path", ctx())));
        }
        let mut pb = prev[..shared].to_vec();
        pb.extend_from_slice(&r.bytes("path")?);
        if pb.len() > MAX_STRING {
            return Err(DeltaError::corrupt(format!("{}: path too long", ctx())));
        }
        let path = String::from_utf8(pb).map_err(|_| DeltaError::corrupt(format!("{}: path is not UTF-8", ctx())))?;
        let kind = r.u8("entry kind")?;
        let mode = r.u32("mode")?;
        let mtime = r.time("mtime")?;
        let uid = r.u32("uid")?;
        let gid = r.u32("gid")?;
        let kind = match kind {
            KIND_DIR => EntryKind::Dir,
            KIND_SYMLINK => EntryKind::Symlink { target: r.string("symlink target")? },
            KIND_HARDLINK => EntryKind::HardLink { to: r.string("hard link target")? },
            KIND_FILE => EntryKind::File(parse_file(r, version, block_size, &path)?),
            k => {
                return Err(DeltaError::corrupt(format!("{path:?}: unknown entry kind {k}")));
            }
        };
        let extra = match &kind {
            EntryKind::Symlink { target } => target.len(),
            EntryKind::HardLink { to } => to.len(),
            _ => 0,
        };
        r.charge(size_of::<Entry>() + path.len() + extra, "entries")?;
        entries.push(Entry { path, kind, mode, mtime, uid, gid });
    }
    let hashes = if version >= 4 && parent.is_some() { HashCoverage::StoredOnly } else { HashCoverage::All };
    Ok(Manifest {
        header: Header { format_version: version, backup_id, instance_id, parent, block_size, block_hashes, packs },
        entries,
        hashes,
    })
}

fn parse_file<R: Read>(r: &mut Reader<R>, version: u32, block_size: u32, path: &str) -> Result<FileEntry, DeltaError> {
    let size = r.var("file size")?;
    if size > MAX_FILE_SIZE {
        return Err(DeltaError::corrupt(format!("{path:?}: file size {size} out of range")));
    }
    let inode = r.var("inode")?;
    let ctime = r.time("ctime")?;
    let mut blake3 = [0u8; 32];
    r.exact(&mut blake3, "file checksum")?;
    let nblocks = block_count(size, block_size);
    let mut block_hashes = Vec::new();
    if version < 4 {
        read_hashes(
            r,
            &mut block_hashes,
            nblocks,
            &format!("block hashes of {path:?} ({nblocks} blocks for {size} bytes)"),
        )?;
    }
    let base = match version {
        1 => None,
        _ => match r.u8("base flag")? {
            0 => None,
            1 => {
                let base = r.string("base path")?;
                r.charge(base.len(), "base paths")?;
                Some(base)
            }
            x => return Err(DeltaError::corrupt(format!("{path:?}: bad base flag {x}"))),
        },
    };
    let content = match r.u8("content tag")? {
        0 => FileContent::Unchanged,
        1 => {
            let nruns = r.var("run count")?;
            let mut runs = Vec::with_capacity(nruns.min(4096) as usize);
            let mut prev_end = 0u64;
            for _ in 0..nruns {
                let gap = r.var("run position")?;
                let first_block = prev_end
                    .checked_add(gap)
                    .ok_or_else(|| DeltaError::corrupt(format!("{path:?}: run position overflows")))?;
                let count = r.var("run length")?;
                let end = first_block
                    .checked_add(count)
                    .ok_or_else(|| DeltaError::corrupt(format!("{path:?}: run length overflows")))?;
                prev_end = end;
                let (compression, pack, offset, stored_len) = match r.u8("compression")? {
                    COMP_ZERO => (Compression::Zero, 0, 0, 0),
                    c @ (COMP_ZSTD | COMP_RAW) => {
                        let pack = r.u32("run pack")?;
                        let offset = r.var("run offset")?;
                        let stored = r.var("run stored length")?;
                        let comp = if c == COMP_ZSTD { Compression::Zstd } else { Compression::Raw };
                        (comp, pack, offset, stored)
                    }
                    c => {
                        return Err(DeltaError::corrupt(format!("{path:?}: unknown compression {c}")));
                    }
                };
                let raw_len = r.var("run raw length")?;
                r.charge(size_of::<BlockRun>(), "block runs")?;
                let (frame_offset, frame_len) = match (version, compression) {
                    (_, Compression::Zero) => (0, 0),
                    (1 | 2, _) => (0, raw_len),
                    _ => (r.var("run frame offset")?, r.var("run frame length")?),
                };
                runs.push(BlockRun {
                    first_block,
                    count,
                    pack,
                    offset,
                    stored_len,
                    raw_len,
                    frame_offset,
                    frame_len,
                    compression,
                });
            }
            FileContent::Stored(runs)
        }
        t => return Err(DeltaError::corrupt(format!("{path:?}: unknown content tag {t}"))),
    };
    if version >= 4 {
        // Geometry is checked by `validate`; here only the count matters,
        // and it is bounded by the data actually present.
        let stored = content_blocks(&content);
        read_hashes(r, &mut block_hashes, stored, &format!("block hashes of {path:?} ({stored} stored blocks)"))?;
    }
    Ok(FileEntry { size, inode, ctime, blake3, block_hashes, base, content })
}

/// Blocks a file's runs cover (saturating: a hostile count fails reading).
fn content_blocks(content: &FileContent) -> u64 {
    match content {
        FileContent::Unchanged => 0,
        FileContent::Stored(runs) => runs.iter().fold(0u64, |n, r| n.saturating_add(r.count)),
    }
}

/// Reads `count` block hashes, growing with the data actually present,
/// never by the claimed count.
fn read_hashes<R: Read>(r: &mut Reader<R>, out: &mut Vec<BlockHash>, count: u64, what: &str) -> Result<(), DeltaError> {
    out.reserve(count.min(1 << 16) as usize);
    for _ in 0..count {
        r.charge(size_of::<BlockHash>(), what)?;
        let mut h = [0u8; 16];
        r.exact(&mut h, what)?;
        out.push(h);
    }
    Ok(())
}

/// Check every invariant the rest of the crate relies on.
pub fn validate(m: &Manifest) -> Result<(), DeltaError> {
    let h = &m.header;
    let bad = |msg: String| Err(DeltaError::corrupt(msg));
    check_version(h.format_version)?;
    if !(MIN_BLOCK_SIZE..=MAX_BLOCK_SIZE).contains(&h.block_size) || !h.block_size.is_power_of_two() {
        return bad(format!("block size {} out of range", h.block_size));
    }
    if m.hashes == HashCoverage::StoredOnly && (h.format_version < 4 || h.parent.is_none()) {
        return bad(format!(
            "only stored blocks' hashes in a version {} {} backup",
            h.format_version,
            if h.parent.is_some() { "incremental" } else { "full" }
        ));
    }
    if h.format_version < 3 && h.block_hashes != BlockHashKind::Standalone {
        return bad(format!("file-tree block hashes in a version {} manifest", h.format_version));
    }
    if let Some(p) = &h.parent {
        if !is_hex64(&p.checksum) {
            return bad(format!("parent checksum {:?} is not 64 hex digits", p.checksum));
        }
        if p.backup_id == h.backup_id {
            return bad("backup names itself as its parent".into());
        }
    }
    let mut names = HashSet::new();
    for p in &h.packs {
        if !valid_pack_name(&p.name) {
            return bad(format!("invalid pack name {:?}", p.name));
        }
        if !names.insert(p.name.as_str()) {
            return bad(format!("duplicate pack name {:?}", p.name));
        }
        if !is_hex64(&p.blake3) {
            return bad(format!("pack {}: checksum is not 64 hex digits", p.name));
        }
    }
    let Some(root) = m.entries.first() else {
        return bad("no entries (the root directory is missing)".into());
    };
    if !root.path.is_empty() || root.kind != EntryKind::Dir {
        return bad("first entry must be the root directory \"\"".into());
    }
    let bs = u64::from(h.block_size);
    let mut dirs: HashSet<&str> = HashSet::new();
    for (i, e) in m.entries.iter().enumerate() {
        let refuse = |reason: String| Err(DeltaError::unsafe_entry(&e.path, reason));
        if e.mode > 0o7777 {
            return refuse(format!("mode {:o} out of range", e.mode));
        }
        if e.mtime.nsec >= 1_000_000_000 {
            return refuse("mtime nanoseconds out of range".into());
        }
        if e.uid == u32::MAX || e.gid == u32::MAX {
            return refuse("owner or group -1 (\"leave unchanged\") is not an id".into());
        }
        if i > 0 {
            check_rel_path(&e.path)?;
            let prev = &m.entries[i - 1].path;
            if e.path == *prev {
                return refuse("duplicate name".into());
            }
            if e.path.as_str() < prev.as_str() {
                return refuse(format!("out of order after {prev:?} (entries are sorted, parents first)"));
            }
            let parent = e.path.rsplit_once('/').map(|(p, _)| p).unwrap_or("");
            if !dirs.contains(parent) {
                return refuse(format!(
                    "parent {parent:?} is not a directory declared before it (a symlink or file cannot hold entries)"
                ));
            }
        }
        match &e.kind {
            EntryKind::Dir => {
                dirs.insert(&e.path);
            }
            EntryKind::Symlink { target } => {
                if target.is_empty() || target.len() > MAX_STRING || target.contains('\0') {
                    return refuse("symlink target is empty, too long or contains NUL".into());
                }
            }
            EntryKind::HardLink { to } => {
                let ok = m.entries[..i]
                    .binary_search_by(|x| x.path.as_str().cmp(to))
                    .ok()
                    .is_some_and(|j| matches!(m.entries[j].kind, EntryKind::File(_)));
                if !ok {
                    return refuse(format!("hard link to {to:?}, which is not an earlier file entry"));
                }
            }
            EntryKind::File(f) => validate_file(m, &e.path, f, bs)?,
        }
    }
    Ok(())
}

fn validate_file(m: &Manifest, path: &str, f: &FileEntry, bs: u64) -> Result<(), DeltaError> {
    let h = &m.header;
    let bad = |msg: String| Err(DeltaError::unsafe_entry(path, msg));
    if f.size > MAX_FILE_SIZE {
        return bad(format!("size {} out of range", f.size));
    }
    if f.ctime.nsec >= 1_000_000_000 {
        return bad("ctime nanoseconds out of range".into());
    }
    let nblocks = block_count(f.size, h.block_size);
    let expect_hashes = match m.hashes {
        HashCoverage::All => nblocks,
        HashCoverage::StoredOnly => content_blocks(&f.content),
    };
    if f.block_hashes.len() as u64 != expect_hashes {
        return bad(format!(
            "{} block hashes for {} blocks{}",
            f.block_hashes.len(),
            expect_hashes,
            if m.hashes == HashCoverage::All { "" } else { " stored" }
        ));
    }
    if let Some(base) = &f.base {
        // Only a key into the parent's manifest, never a filesystem path;
        // checked as strictly anyway.
        if h.format_version < 2 {
            return bad(format!("a rename base in a version {} manifest", h.format_version));
        }
        if h.parent.is_none() {
            return bad("a rename base in a backup without parent".into());
        }
        if base == path || base.len() > MAX_STRING {
            return bad(format!("rename base {base:?} is the file itself or too long"));
        }
        if let Err(e) = check_rel_path(base) {
            return bad(format!("rename base {base:?}: {e}"));
        }
    }
    let runs = match &f.content {
        FileContent::Unchanged => {
            if h.parent.is_none() {
                return bad("marked unchanged in a backup without parent".into());
            }
            return Ok(());
        }
        FileContent::Stored(runs) => runs,
    };
    let mut prev_end = 0u64;
    let mut covered = 0u64;
    for r in runs {
        if r.count == 0 {
            return bad("empty block run".into());
        }
        if r.first_block < prev_end {
            return bad(format!("block run at {} overlaps or is unsorted", r.first_block));
        }
        let end = r.first_block.saturating_add(r.count);
        if end > nblocks {
            return bad(format!("block run {}..{} beyond the file's {} blocks", r.first_block, end, nblocks));
        }
        prev_end = end;
        covered += r.count;
        let expect_raw = (end * bs).min(f.size) - r.first_block * bs;
        if r.raw_len != expect_raw {
            return bad(format!(
                "block run {}..{}: raw length {} should be {}",
                r.first_block, end, r.raw_len, expect_raw
            ));
        }
        match r.compression {
            Compression::Zero => {
                if r.stored_len != 0 || r.pack != 0 || r.offset != 0 || r.frame_offset != 0 || r.frame_len != 0 {
                    return bad("zero run with stored bytes".into());
                }
            }
            c => {
                if r.frame_len > MAX_RUN_RAW {
                    return bad(format!("block run in a frame of {} bytes, over the limit", r.frame_len));
                }
                if r.frame_offset.checked_add(r.raw_len).is_none_or(|end| end > r.frame_len) {
                    return bad(format!(
                        "block run of {} bytes at {} in a frame of {} bytes",
                        r.raw_len, r.frame_offset, r.frame_len
                    ));
                }
                if h.format_version < 3 && r.frame_len != r.raw_len {
                    return bad(format!("a shared frame in a version {} manifest", h.format_version));
                }
                if c == Compression::Raw && r.stored_len != r.frame_len {
                    return bad("raw run whose stored length differs from its frame's length".into());
                }
                if c == Compression::Zstd && r.stored_len == 0 {
                    return bad("empty compressed run".into());
                }
                let Some(pack) = h.packs.get(r.pack as usize) else {
                    return bad(format!("block run names pack #{} of {}", r.pack, h.packs.len()));
                };
                match r.offset.checked_add(r.stored_len) {
                    Some(e) if e <= pack.size => {}
                    _ => {
                        return bad(format!(
                            "block run at offset {} (+{}) beyond the end of pack {} ({} bytes)",
                            r.offset, r.stored_len, pack.name, pack.size
                        ));
                    }
                }
            }
        }
    }
    if h.parent.is_none() && covered != nblocks {
        return bad(format!("backup without parent stores {covered} of {nblocks} blocks"));
    }
    Ok(())
}

/// Refuses a version this build does not read.
fn check_version(version: u32) -> Result<(), DeltaError> {
    if (crate::OLDEST_FORMAT_VERSION..=FORMAT_VERSION).contains(&version) {
        Ok(())
    } else {
        Err(DeltaError::UnsupportedVersion { found: version, supported: FORMAT_VERSION })
    }
}

/// A manifest path: relative, `/`-separated, no empty, `.` or `..` component.
pub(crate) fn check_rel_path(path: &str) -> Result<(), DeltaError> {
    let bad = |why: &str| Err(DeltaError::unsafe_entry(path, why));
    if path.is_empty() {
        return bad("empty path");
    }
    if path.starts_with('/') {
        return bad("absolute path");
    }
    if path.contains('\0') {
        return bad("path contains NUL");
    }
    for c in path.split('/') {
        match c {
            "" => return bad("empty path component"),
            "." => return bad("`.` path component"),
            ".." => return bad("`..` path component (would climb out of the target)"),
            _ => {}
        }
    }
    Ok(())
}

pub(crate) fn valid_pack_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name != "."
        && name != ".."
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

fn common_prefix(a: &[u8], b: &[u8]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

fn put_var(b: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        b.push((v as u8) | 0x80);
        v >>= 7;
    }
    b.push(v as u8);
}

fn put_bytes(b: &mut Vec<u8>, s: &[u8]) {
    put_var(b, s.len() as u64);
    b.extend_from_slice(s);
}

fn put_str(b: &mut Vec<u8>, s: &str) {
    put_bytes(b, s.as_bytes());
}

fn put_time(b: &mut Vec<u8>, t: Timestamp) {
    put_var(b, ((t.sec << 1) ^ (t.sec >> 63)) as u64);
    put_var(b, u64::from(t.nsec));
}

/// A reader that fails once more than `left` bytes came through: the
/// decompressed body is bounded however well the frame compresses.
struct LimitedRead<R> {
    inner: R,
    left: u64,
}

impl<R: Read> Read for LimitedRead<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        match self.left.checked_sub(n as u64) {
            Some(left) => {
                self.left = left;
                Ok(n)
            }
            None => {
                Err(std::io::Error::other("decompressed manifest exceeds its size limit (decompression bomb refused)"))
            }
        }
    }
}

struct Reader<R> {
    inner: R,
    /// Bytes of memory the decoded manifest may still take.
    budget: u64,
}

impl<R: Read> Reader<R> {
    /// Account for `bytes` of decoded manifest before keeping them.
    fn charge(&mut self, bytes: usize, what: &str) -> Result<(), DeltaError> {
        match self.budget.checked_sub(bytes as u64) {
            Some(left) => {
                self.budget = left;
                Ok(())
            }
            None => Err(DeltaError::corrupt(format!(
                "{what}: the manifest needs more memory than the decoding limit allows; refused before allocating"
            ))),
        }
    }

    fn exact(&mut self, buf: &mut [u8], what: &str) -> Result<(), DeltaError> {
        self.inner.read_exact(buf).map_err(|e| {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                DeltaError::corrupt(format!("truncated while reading {what}"))
            } else {
                DeltaError::corrupt(format!("reading {what}: {e}"))
            }
        })
    }

    fn u8(&mut self, what: &str) -> Result<u8, DeltaError> {
        let mut b = [0u8; 1];
        self.exact(&mut b, what)?;
        Ok(b[0])
    }

    fn var(&mut self, what: &str) -> Result<u64, DeltaError> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.u8(what)?;
            let bits = u64::from(b & 0x7f);
            if shift == 63 && bits > 1 {
                break;
            }
            v |= bits << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(DeltaError::corrupt(format!("{what}: varint overflows 64 bits")))
    }

    fn u32(&mut self, what: &str) -> Result<u32, DeltaError> {
        let v = self.var(what)?;
        u32::try_from(v).map_err(|_| DeltaError::corrupt(format!("{what}: {v} out of range")))
    }

    fn time(&mut self, what: &str) -> Result<Timestamp, DeltaError> {
        let z = self.var(what)?;
        let sec = ((z >> 1) as i64) ^ -((z & 1) as i64);
        let nsec = self.u32(what)?;
        if nsec >= 1_000_000_000 {
            return Err(DeltaError::corrupt(format!("{what}: nanoseconds {nsec} out of range")));
        }
        Ok(Timestamp { sec, nsec })
    }

    fn uuid(&mut self, what: &str) -> Result<Uuid, DeltaError> {
        let mut b = [0u8; 16];
        self.exact(&mut b, what)?;
        Ok(Uuid::from_bytes(b))
    }

    fn bytes(&mut self, what: &str) -> Result<Vec<u8>, DeltaError> {
        let len = self.var(what)?;
        if len > MAX_STRING as u64 {
            return Err(DeltaError::corrupt(format!("{what}: length {len} exceeds {MAX_STRING}")));
        }
        let mut v = vec![0u8; len as usize];
        self.exact(&mut v, what)?;
        Ok(v)
    }

    fn string(&mut self, what: &str) -> Result<String, DeltaError> {
        String::from_utf8(self.bytes(what)?).map_err(|_| DeltaError::corrupt(format!("{what} is not UTF-8")))
    }
}
