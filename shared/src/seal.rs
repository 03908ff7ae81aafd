//! Encryption at rest: every stored object sealed with XChaCha20-Poly1305.
//!
//! Why it looks like this:
//! - **Frames, not one blob.** An object is cut into frames of
//!   [`FRAME_SIZE`] plaintext bytes, each sealed on its own. Uploads and
//!   verifies stream with one frame in memory, and a restore's range read of
//!   a pack maps to the few frames that cover it (ciphertext offsets are
//!   computable from the header), so encryption keeps range reads cheap.
//! - **A fresh random 192-bit nonce per frame.** XChaCha20's extended nonce
//!   makes random nonces safe for any number of frames under one key; no
//!   counter state has to survive restarts or be shared between workers.
//! - **Associated data binds each frame to its place**: the object header
//!   (format, key id, frame size, plaintext length), the backup id, the
//!   object's name and the frame index. A frame cannot be moved to another
//!   index, object or backup, and an object cannot be truncated or extended,
//!   without failing authentication. Every object has at least one frame, so
//!   even an empty one is authenticated.
//! - **A small plaintext header names the key id**, so a chain can span a
//!   key rotation: each object is opened with the key it names, new objects
//!   are sealed with the key file's first (current) key. The header also
//!   carries a key check value (a keyed BLAKE3 of a constant), so a wrong
//!   key is reported as a wrong key and not as corruption.
//! - **Failures never yield bytes**: an object that does not open is an
//!   error naming the object and the key id; key material is never printed
//!   (the key ring's `Debug` shows ids only).
//!
//! Layout: `MAGIC (16) | key id length (1) | key id | key check (16) |
//! frame size (u32 LE) | plaintext length (u64 LE)`, then per frame
//! `nonce (24) | ciphertext | tag (16)`.

use std::fmt;
use std::path::{Path, PathBuf};

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use uuid::Uuid;

/// First bytes of a sealed object (binary, so text never matches it).
pub const MAGIC: &[u8; 16] = b"\x89CAIRN-SEALED\r\n\x1a";
/// Plaintext bytes per frame.
pub const FRAME_SIZE: u32 = 1 << 20;
const NONCE_LEN: u64 = 24;
const TAG_LEN: u64 = 16;
const KEY_CHECK_LEN: usize = 16;
const MAX_KEY_ID: usize = 64;
/// Longest possible header: enough to read before knowing the key id length.
pub const MAX_HEADER_LEN: u64 = (MAGIC.len() + 1 + MAX_KEY_ID + KEY_CHECK_LEN + 4 + 8) as u64;
const KEY_CHECK_CONTEXT: &[u8] = b"cairn seal key check v1";

/// What can go wrong loading keys or opening a sealed object.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    /// The key file cannot be used (the message never quotes key material).
    #[error("encryption key file {path}: {reason}", path = .path.display())]
    KeyFile { path: PathBuf, reason: String },
    /// The object is sealed but this process has no keys.
    #[error(
        "{object} is encrypted with key id {key_id:?}, but no CAIRN_ENCRYPTION_KEY_FILE is configured to decrypt it"
    )]
    NoKeys { object: String, key_id: String },
    /// The object names a key id the key file does not hold.
    #[error("{object} is encrypted with key id {key_id:?}, which the encryption key file does not hold")]
    UnknownKey { object: String, key_id: String },
    /// The key file holds the key id but a different key.
    #[error(
        "{object} is encrypted with key id {key_id:?}, but the key under that id in the key file is not that key (wrong key)"
    )]
    WrongKey { object: String, key_id: String },
    /// A frame failed to authenticate: altered, swapped, moved or truncated.
    #[error(
        "{object}: frame {frame} does not authenticate under key id {key_id:?}: the object was altered, truncated, reordered or moved from another object"
    )]
    Tampered { object: String, key_id: String, frame: u64 },
    /// The header or the object's length is not what a sealed object has.
    #[error("{object}: not a valid encrypted object: {reason}")]
    Malformed { object: String, reason: String },
}

/// The keys of `CAIRN_ENCRYPTION_KEY_FILE`: the first is the current one,
/// used for everything sealed from now on; the others still open objects
/// sealed before a rotation.
#[derive(Clone)]
pub struct KeyRing {
    keys: Vec<(String, [u8; 32])>,
}

impl fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ids: Vec<&str> = self.keys.iter().map(|(id, _)| id.as_str()).collect();
        f.debug_struct("KeyRing").field("key_ids", &ids).finish_non_exhaustive()
    }
}

impl KeyRing {
    /// Reads a key file: one `<key-id> <key>` per line, the key as 64 hex
    /// digits or the standard base64 of 32 bytes; blank lines and lines
    /// starting with `#` are skipped.
    pub fn load(path: &Path) -> Result<KeyRing, SealError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| SealError::KeyFile { path: path.to_path_buf(), reason: format!("cannot read: {e}") })?;
        KeyRing::parse(&text).map_err(|reason| SealError::KeyFile { path: path.to_path_buf(), reason })
    }

    /// Parses key file text; errors name the line, never its content.
    pub fn parse(text: &str) -> Result<KeyRing, String> {
        let mut keys: Vec<(String, [u8; 32])> = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let n = n + 1;
            let mut parts = line.split_whitespace();
            let (Some(id), Some(key), None) = (parts.next(), parts.next(), parts.next()) else {
                return Err(format!("line {n}: expected `<key-id> <key>`"));
            };
            if id.len() > MAX_KEY_ID || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b)) {
                return Err(format!(
                    "line {n}: a key id is 1 to {MAX_KEY_ID} ASCII letters, digits, '-', '_', '.' or ':'"
                ));
            }
            let key = decode_key(key).ok_or_else(|| {
                format!("line {n} (key id {id:?}): the key is not 64 hex digits or base64 of 32 bytes")
            })?;
            if keys.iter().any(|(k, _)| k == id) {
                return Err(format!("line {n}: key id {id:?} appears twice"));
            }
            keys.push((id.to_owned(), key));
        }
        if keys.is_empty() {
            return Err("holds no key".into());
        }
        Ok(KeyRing { keys })
    }

    /// The id new objects are sealed with.
    pub fn current_id(&self) -> &str {
        &self.keys[0].0
    }

    fn get(&self, id: &str) -> Option<&[u8; 32]> {
        self.keys.iter().find(|(k, _)| k == id).map(|(_, key)| key)
    }
}

fn decode_key(text: &str) -> Option<[u8; 32]> {
    use base64::Engine;
    let bytes = if text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
        (0..32).map(|i| u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()).collect::<Option<Vec<u8>>>()?
    } else {
        base64::engine::general_purpose::STANDARD.decode(text).ok()?
    };
    bytes.try_into().ok()
}

fn key_check(key: &[u8; 32]) -> [u8; KEY_CHECK_LEN] {
    let mut out = [0u8; KEY_CHECK_LEN];
    out.copy_from_slice(&blake3::keyed_hash(key, KEY_CHECK_CONTEXT).as_bytes()[..KEY_CHECK_LEN]);
    out
}

/// Where an object belongs, bound into every frame's associated data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    /// The backup the object belongs to (`backups/<id>/...`).
    pub backup_id: Option<Uuid>,
    /// The object's name within its backup (`manifest`, `pack-00000`), or
    /// its whole key if it is not a backup's object.
    pub name: String,
}

impl Binding {
    /// The binding of object `key` (`backups/<id>/<attempt>/<name>`). The
    /// attempt is left out: it only says which try wrote the object.
    pub fn of_key(key: &str) -> Binding {
        let parts: Vec<&str> = key.split('/').collect();
        if let ["backups", id, _attempt, name] = parts.as_slice()
            && let Ok(id) = Uuid::parse_str(id)
        {
            return Binding { backup_id: Some(id), name: (*name).to_owned() };
        }
        Binding { backup_id: None, name: key.to_owned() }
    }
}

/// The plaintext header of a sealed object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub key_id: String,
    key_check: [u8; KEY_CHECK_LEN],
    pub frame_size: u32,
    pub plaintext_len: u64,
    /// The header's encoded bytes (part of every frame's associated data).
    bytes: Vec<u8>,
}

impl Header {
    fn new(key_id: &str, key: &[u8; 32], frame_size: u32, plaintext_len: u64) -> Header {
        let check = key_check(key);
        let mut bytes = Vec::with_capacity(MAX_HEADER_LEN as usize);
        bytes.extend_from_slice(MAGIC);
        bytes.push(key_id.len() as u8);
        bytes.extend_from_slice(key_id.as_bytes());
        bytes.extend_from_slice(&check);
        bytes.extend_from_slice(&frame_size.to_le_bytes());
        bytes.extend_from_slice(&plaintext_len.to_le_bytes());
        Header { key_id: key_id.to_owned(), key_check: check, frame_size, plaintext_len, bytes }
    }

    /// Parses a header from the start of an object. `Ok(None)`: the object
    /// is not sealed (it was stored before encryption was turned on).
    pub fn parse(object: &str, start: &[u8]) -> Result<Option<Header>, SealError> {
        if !start.starts_with(MAGIC) {
            return Ok(None);
        }
        let bad = |reason: &str| SealError::Malformed { object: object.to_owned(), reason: reason.to_owned() };
        let rest = &start[MAGIC.len()..];
        let (&id_len, rest) = rest.split_first().ok_or_else(|| bad("truncated header"))?;
        let id_len = usize::from(id_len);
        if id_len == 0 || id_len > MAX_KEY_ID {
            return Err(bad("key id length out of range"));
        }
        if rest.len() < id_len + KEY_CHECK_LEN + 12 {
            return Err(bad("truncated header"));
        }
        let key_id = std::str::from_utf8(&rest[..id_len]).map_err(|_| bad("key id is not UTF-8"))?.to_owned();
        let rest = &rest[id_len..];
        let key_check: [u8; KEY_CHECK_LEN] = rest[..KEY_CHECK_LEN].try_into().expect("length checked");
        let frame_size = u32::from_le_bytes(rest[KEY_CHECK_LEN..KEY_CHECK_LEN + 4].try_into().expect("4 bytes"));
        let plaintext_len =
            u64::from_le_bytes(rest[KEY_CHECK_LEN + 4..KEY_CHECK_LEN + 12].try_into().expect("8 bytes"));
        if frame_size == 0 || frame_size > 64 << 20 {
            return Err(bad("frame size out of range"));
        }
        if plaintext_len > 1 << 60 {
            return Err(bad("plaintext length out of range"));
        }
        let len = MAGIC.len() + 1 + id_len + KEY_CHECK_LEN + 12;
        Ok(Some(Header { key_id, key_check, frame_size, plaintext_len, bytes: start[..len].to_vec() }))
    }

    /// Length of the encoded header.
    pub fn len(&self) -> u64 {
        self.bytes.len() as u64
    }

    /// A header is never empty; for clippy's `len_without_is_empty`.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Number of frames (at least one, so an empty object is authenticated).
    pub fn frames(&self) -> u64 {
        self.plaintext_len.div_ceil(u64::from(self.frame_size)).max(1)
    }

    /// Plaintext length of frame `i`.
    fn frame_plain_len(&self, i: u64) -> u64 {
        let fs = u64::from(self.frame_size);
        self.plaintext_len.saturating_sub(i * fs).min(fs)
    }

    /// Offset of frame `i` in the sealed object.
    pub fn frame_offset(&self, i: u64) -> u64 {
        self.len() + i * (u64::from(self.frame_size) + NONCE_LEN + TAG_LEN)
    }

    /// Total length of the sealed object.
    pub fn sealed_len(&self) -> u64 {
        self.frame_offset(self.frames() - 1) + NONCE_LEN + self.frame_plain_len(self.frames() - 1) + TAG_LEN
    }

    /// The frames covering plaintext `start..end` and the sealed byte range
    /// holding them.
    pub fn sealed_range(&self, start: u64, end: u64) -> (std::ops::Range<u64>, std::ops::Range<u64>) {
        let fs = u64::from(self.frame_size);
        let first = (start / fs).min(self.frames() - 1);
        let last = (end.saturating_sub(1) / fs).clamp(first, self.frames() - 1);
        let bytes =
            self.frame_offset(first)..self.frame_offset(last) + NONCE_LEN + self.frame_plain_len(last) + TAG_LEN;
        (first..last + 1, bytes)
    }
}

fn aad(header: &Header, binding: &Binding, frame: u64) -> Vec<u8> {
    let mut a = Vec::with_capacity(header.bytes.len() + 16 + 4 + binding.name.len() + 8);
    a.extend_from_slice(&header.bytes);
    a.extend_from_slice(binding.backup_id.unwrap_or_default().as_bytes());
    a.extend_from_slice(&(binding.name.len() as u32).to_le_bytes());
    a.extend_from_slice(binding.name.as_bytes());
    a.extend_from_slice(&frame.to_le_bytes());
    a
}

/// Seals an object frame by frame with the key ring's current key.
pub struct Sealer {
    header: Header,
    cipher: XChaCha20Poly1305,
    binding: Binding,
    next_frame: u64,
}

impl Sealer {
    /// A sealer for an object of exactly `plaintext_len` bytes at `key`.
    pub fn new(keys: &KeyRing, key: &str, plaintext_len: u64) -> Sealer {
        let (id, k) = &keys.keys[0];
        Sealer {
            header: Header::new(id, k, FRAME_SIZE, plaintext_len),
            cipher: XChaCha20Poly1305::new(k.into()),
            binding: Binding::of_key(key),
            next_frame: 0,
        }
    }

    /// The header to write before the frames.
    pub fn header_bytes(&self) -> &[u8] {
        &self.header.bytes
    }

    /// Plaintext bytes the next frame must hold.
    pub fn next_frame_len(&self) -> usize {
        self.header.frame_plain_len(self.next_frame) as usize
    }

    /// Seals the next frame (exactly [`Self::next_frame_len`] bytes).
    pub fn seal_frame(&mut self, plain: &[u8]) -> Vec<u8> {
        assert!(self.next_frame < self.header.frames(), "more frames than the header announces");
        assert_eq!(plain.len(), self.next_frame_len(), "frame length differs from the header's");
        let nonce: [u8; 24] = rand::random();
        let aad = aad(&self.header, &self.binding, self.next_frame);
        let sealed = self
            .cipher
            .encrypt(&XNonce::from(nonce), Payload { msg: plain, aad: &aad })
            .expect("XChaCha20-Poly1305 encryption of a bounded frame cannot fail");
        self.next_frame += 1;
        let mut out = Vec::with_capacity(nonce.len() + sealed.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        out
    }

    /// Whether every frame has been sealed.
    pub fn done(&self) -> bool {
        self.next_frame == self.header.frames()
    }
}

/// Seals a whole object in memory.
pub fn seal(keys: &KeyRing, key: &str, plain: &[u8]) -> Vec<u8> {
    let mut s = Sealer::new(keys, key, plain.len() as u64);
    let mut out = s.header_bytes().to_vec();
    let mut rest = plain;
    while !s.done() {
        let (frame, tail) = rest.split_at(s.next_frame_len());
        out.extend_from_slice(&s.seal_frame(frame));
        rest = tail;
    }
    out
}

/// Opens the frames of one sealed object.
pub struct Opener {
    header: Header,
    cipher: XChaCha20Poly1305,
    binding: Binding,
    object: String,
}

impl Opener {
    /// An opener for object `key` with this header: checks that the key it
    /// names is known and is the right one.
    pub fn new(keys: Option<&KeyRing>, key: &str, header: Header) -> Result<Opener, SealError> {
        let object = key.to_owned();
        let Some(keys) = keys else {
            return Err(SealError::NoKeys { object, key_id: header.key_id });
        };
        let Some(k) = keys.get(&header.key_id) else {
            return Err(SealError::UnknownKey { object, key_id: header.key_id });
        };
        if key_check(k) != header.key_check {
            return Err(SealError::WrongKey { object, key_id: header.key_id });
        }
        Ok(Opener { cipher: XChaCha20Poly1305::new(k.into()), binding: Binding::of_key(key), header, object })
    }

    pub fn header(&self) -> &Header {
        &self.header
    }

    /// Opens frame `index` from its sealed bytes.
    pub fn open_frame(&self, index: u64, sealed: &[u8]) -> Result<Vec<u8>, SealError> {
        let expected = NONCE_LEN + self.header.frame_plain_len(index) + TAG_LEN;
        if index >= self.header.frames() || sealed.len() as u64 != expected {
            return Err(SealError::Malformed {
                object: self.object.clone(),
                reason: format!("frame {index} is {} bytes, {expected} expected (truncated?)", sealed.len()),
            });
        }
        let (nonce, ct) = sealed.split_at(NONCE_LEN as usize);
        let nonce: [u8; NONCE_LEN as usize] = nonce.try_into().expect("split at the nonce length");
        let aad = aad(&self.header, &self.binding, index);
        self.cipher.decrypt(&XNonce::from(nonce), Payload { msg: ct, aad: &aad }).map_err(|_| SealError::Tampered {
            object: self.object.clone(),
            key_id: self.header.key_id.clone(),
            frame: index,
        })
    }

    /// Opens consecutive frames `frames` from the sealed bytes holding them.
    pub fn open_frames(&self, frames: std::ops::Range<u64>, mut sealed: &[u8]) -> Result<Vec<u8>, SealError> {
        let mut out = Vec::new();
        for i in frames {
            let n = ((NONCE_LEN + self.header.frame_plain_len(i) + TAG_LEN) as usize).min(sealed.len());
            let (frame, rest) = sealed.split_at(n);
            out.extend_from_slice(&self.open_frame(i, frame)?);
            sealed = rest;
        }
        if !sealed.is_empty() {
            return Err(SealError::Malformed { object: self.object.clone(), reason: "trailing bytes".into() });
        }
        Ok(out)
    }
}

/// Opens a stream of a sealed-or-plain object chunk by chunk, keeping at
/// most one frame buffered: for verifying and reading whole objects.
pub struct StreamOpener<'k> {
    keys: Option<&'k KeyRing>,
    object: String,
    buf: Vec<u8>,
    state: StreamState,
    received: u64,
}

enum StreamState {
    Start,
    Plain,
    Sealed { opener: Box<Opener>, next_frame: u64 },
}

impl<'k> StreamOpener<'k> {
    pub fn new(keys: Option<&'k KeyRing>, object: &str) -> Self {
        StreamOpener { keys, object: object.to_owned(), buf: Vec::new(), state: StreamState::Start, received: 0 }
    }

    /// Feeds the next chunk of the stored object; returns the plaintext
    /// that became available.
    pub fn push(&mut self, chunk: &[u8]) -> Result<Vec<u8>, SealError> {
        self.received += chunk.len() as u64;
        if let StreamState::Plain = self.state {
            return Ok(chunk.to_vec());
        }
        self.buf.extend_from_slice(chunk);
        self.drain(false)
    }

    /// The end of the stored object: returns the last plaintext and checks
    /// that the object was complete.
    pub fn finish(mut self) -> Result<Vec<u8>, SealError> {
        let out = self.drain(true)?;
        if let StreamState::Sealed { opener, next_frame } = &self.state
            && (*next_frame != opener.header.frames() || self.received != opener.header.sealed_len())
        {
            return Err(SealError::Malformed {
                object: self.object.clone(),
                reason: format!(
                    "{} bytes stored, the header announces {} (truncated or extended)",
                    self.received,
                    opener.header.sealed_len()
                ),
            });
        }
        Ok(out)
    }

    fn drain(&mut self, end: bool) -> Result<Vec<u8>, SealError> {
        if let StreamState::Start = self.state {
            let decided = self.buf.len() >= MAX_HEADER_LEN as usize
                || end
                || (!self.buf.is_empty() && !MAGIC.starts_with(&self.buf[..self.buf.len().min(MAGIC.len())]));
            if !decided {
                return Ok(Vec::new());
            }
            match Header::parse(&self.object, &self.buf)? {
                None => {
                    self.state = StreamState::Plain;
                    return Ok(std::mem::take(&mut self.buf));
                }
                Some(h) => {
                    let skip = h.len() as usize;
                    let opener = Opener::new(self.keys, &self.object, h)?;
                    self.buf.drain(..skip);
                    self.state = StreamState::Sealed { opener: Box::new(opener), next_frame: 0 };
                }
            }
        }
        let mut out = Vec::new();
        if let StreamState::Sealed { opener, next_frame } = &mut self.state {
            while *next_frame < opener.header.frames() {
                let n = (NONCE_LEN + opener.header.frame_plain_len(*next_frame) + TAG_LEN) as usize;
                if self.buf.len() < n {
                    break;
                }
                let frame: Vec<u8> = self.buf.drain(..n).collect();
                out.extend_from_slice(&opener.open_frame(*next_frame, &frame)?);
                *next_frame += 1;
            }
            if *next_frame == opener.header.frames() && !self.buf.is_empty() {
                return Err(SealError::Malformed {
                    object: self.object.clone(),
                    reason: "bytes after the last frame".into(),
                });
            }
        }
        Ok(out)
    }
}

/// Opens a whole stored object (sealed or plain) held in memory.
pub fn open(keys: Option<&KeyRing>, key: &str, stored: &[u8]) -> Result<Vec<u8>, SealError> {
    let mut s = StreamOpener::new(keys, key);
    let mut out = s.push(stored)?;
    out.extend_from_slice(&s.finish()?);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring(text: &str) -> KeyRing {
        KeyRing::parse(text).unwrap()
    }

    const K1: &str = "k1 0000000000000000000000000000000000000000000000000000000000000001";
    const K2: &str = "k2 AgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgI=";
    const KEY: &str = "backups/0190a6f2-0000-7000-8000-000000000001/1/pack-00000";

    #[test]
    fn round_trip_of_every_length_around_frame_edges() {
        let keys = ring(K1);
        for len in [0usize, 1, FRAME_SIZE as usize - 1, FRAME_SIZE as usize, FRAME_SIZE as usize + 1, 3 << 20] {
            let plain: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
            let sealed = seal(&keys, KEY, &plain);
            let header = Header::parse(KEY, &sealed).unwrap().unwrap();
            assert_eq!(header.sealed_len(), sealed.len() as u64, "len {len}");
            assert_eq!(open(Some(&keys), KEY, &sealed).unwrap(), plain, "len {len}");
            // Chunked streaming gives the same.
            let mut s = StreamOpener::new(Some(&keys), KEY);
            let mut got = Vec::new();
            for c in sealed.chunks(333_333) {
                got.extend(s.push(c).unwrap());
            }
            got.extend(s.finish().unwrap());
            assert_eq!(got, plain);
            // Range reads map to frames.
            if len > 10 {
                let opener = Opener::new(Some(&keys), KEY, header.clone()).unwrap();
                for (a, b) in [(0, 1), (len as u64 - 5, len as u64), (5, len as u64 / 2 + 3)] {
                    let (frames, bytes) = header.sealed_range(a, b);
                    let p =
                        opener.open_frames(frames.clone(), &sealed[bytes.start as usize..bytes.end as usize]).unwrap();
                    let off = frames.start * u64::from(FRAME_SIZE);
                    assert_eq!(&p[(a - off) as usize..(b - off) as usize], &plain[a as usize..b as usize]);
                }
            }
        }
    }

    #[test]
    fn plain_objects_pass_through_and_sealed_ones_need_their_key() {
        let k1 = ring(K1);
        assert_eq!(open(Some(&k1), KEY, b"plain bytes").unwrap(), b"plain bytes");
        assert_eq!(open(None, KEY, b"").unwrap(), b"");
        let sealed = seal(&k1, KEY, b"secret");
        assert!(!sealed.windows(6).any(|w| w == b"secret"));
        let e = open(None, KEY, &sealed).unwrap_err().to_string();
        assert!(e.contains("key id \"k1\"") && e.contains("no CAIRN_ENCRYPTION_KEY_FILE"), "{e}");
        let e = open(Some(&ring(K2)), KEY, &sealed).unwrap_err().to_string();
        assert!(e.contains("key id \"k1\", which the encryption key file does not hold"), "{e}");
        let wrong = ring("k1 0000000000000000000000000000000000000000000000000000000000000002");
        let e = open(Some(&wrong), KEY, &sealed).unwrap_err().to_string();
        assert!(e.contains("(wrong key)") && !e.contains("00000000000000000000"), "{e}");
        // Rotation: the new ring's first key seals, the old one still opens.
        let rotated = ring(&format!("{K2}\n{K1}\n"));
        assert_eq!(open(Some(&rotated), KEY, &sealed).unwrap(), b"secret");
        let resealed = seal(&rotated, KEY, b"secret");
        assert_eq!(Header::parse(KEY, &resealed).unwrap().unwrap().key_id, "k2");
    }

    #[test]
    fn moved_reordered_truncated_or_flipped_objects_fail() {
        let keys = ring(K1);
        let plain = vec![5u8; FRAME_SIZE as usize * 2 + 10];
        let sealed = seal(&keys, KEY, &plain);
        // Another object name, another backup.
        assert!(matches!(
            open(Some(&keys), &KEY.replace("pack-00000", "pack-00001"), &sealed),
            Err(SealError::Tampered { frame: 0, .. })
        ));
        let other = KEY.replace("0190a6f2", "0190a6f3");
        assert!(matches!(open(Some(&keys), &other, &sealed), Err(SealError::Tampered { .. })));
        // The attempt is not bound: a backup's objects may move between attempts.
        assert!(open(Some(&keys), &KEY.replace("/1/", "/2/"), &sealed).is_ok());
        // Swap frames 0 and 1.
        let h = Header::parse(KEY, &sealed).unwrap().unwrap();
        let (f0, f1) = (h.frame_offset(0) as usize, h.frame_offset(1) as usize);
        let n = f1 - f0;
        let mut swapped = sealed.clone();
        swapped[f0..f0 + n].copy_from_slice(&sealed[f1..f1 + n]);
        swapped[f1..f1 + n].copy_from_slice(&sealed[f0..f0 + n]);
        assert!(matches!(open(Some(&keys), KEY, &swapped), Err(SealError::Tampered { frame: 0, .. })));
        // Truncation, extension, a flipped bit, a changed header.
        assert!(open(Some(&keys), KEY, &sealed[..sealed.len() - 1]).is_err());
        let mut longer = sealed.clone();
        longer.push(0);
        assert!(open(Some(&keys), KEY, &longer).is_err());
        let mut flipped = sealed.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert!(matches!(open(Some(&keys), KEY, &flipped), Err(SealError::Tampered { frame: 2, .. })));
        let mut shorter_header = sealed.clone();
        let len_at = (h.len() - 8) as usize;
        shorter_header[len_at] ^= 1;
        assert!(open(Some(&keys), KEY, &shorter_header).is_err());
    }

    #[test]
    fn key_files_are_parsed_strictly_and_never_echoed() {
        assert_eq!(ring(&format!("# comment\n\n{K2}\n{K1}\n")).current_id(), "k2");
        for bad in [
            "",
            "# only a comment",
            "k1",
            "k1 abcd",
            "k1 zz00000000000000000000000000000000000000000000000000000000000000",
            "bad/id 0000000000000000000000000000000000000000000000000000000000000001",
            &format!("{K1}\n{K1}"),
        ] {
            let e = KeyRing::parse(bad).unwrap_err();
            assert!(!e.contains("00000000000000"), "{e}");
        }
        let dbg = format!("{:?}", ring(K1));
        assert!(dbg.contains("k1") && !dbg.contains("0000000000"), "{dbg}");
    }
}
