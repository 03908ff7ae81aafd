//! The blocks' chaining values of a run of data, with every SIMD lane busy.
//!
//! Why: a backup hashes each block of each changed file as its own subtree
//! of the file's BLAKE3 tree ([`crate::tree_hash`]). The blake3 crate hashes
//! the 1 KiB chunks of one input in parallel lanes, but a 4 KiB block, the
//! default, is only four chunks: with one block per call, half of AVX2's
//! eight lanes (and three quarters of AVX-512's sixteen) stayed idle, and
//! the three parent nodes above a block's chunks were each compressed on
//! their own. That hashing was the largest share of a worker's CPU in a
//! PostgreSQL incremental (27 % of `perf`'s samples, more than zstd's).
//!
//! How: the chunks of consecutive blocks are hashed sixteen at a time with
//! AVX-512 (eight with AVX2), whichever blocks they belong to (each lane its
//! own chunk, with its own chunk counter); then each level of parent nodes
//! up to the blocks is hashed the same way, sixteen or eight parents at
//! once (a parent's input, its two children's values, lies contiguous in
//! the level below). On one core of the benchmark host (AMD EPYC, AVX-512)
//! 4 KiB blocks hash at 5.5–5.9 GB/s this way, against 2.8 GB/s one block
//! per call to the crate (`target/release/block-hashing`). The values are
//! exactly the crate's: the tests compare
//! them, chunk by chunk and block by block, with `blake3::Hasher` at offsets
//! across the 32-bit counter boundary, on every path. Without AVX2 (or off
//! x86-64), and for what is left after the last full group, the crate
//! hashes one chunk or parent at a time; blocks of 16 KiB and more (8 KiB
//! and more without AVX-512) go to it whole ([`wide_below`]).
//!
//! The compression function is BLAKE3's, as its specification gives it;
//! the lane-parallel form (state words transposed across lanes) is the one
//! the reference implementation's `hash_many` uses.

use blake3::hazmat::{ChainingValue, Mode, merge_subtrees_non_root};

use crate::tree_hash;

/// BLAKE3's chunk: the leaves of its tree.
pub(crate) const CHUNK_LEN: usize = 1024;

/// A parent node's input: its two children's chaining values.
const PARENT_LEN: usize = 64;

/// Blocks of this size and more go to the crate one at a time, their
/// chunks filling its lanes (`block-hashing`, AMD EPYC with AVX-512: at
/// 8 KiB 5.9 GB/s here against the crate's 4.9, at 16 KiB 5.8 against 6.0).
/// The AVX2 kernel, not measured against the crate's at 8 KiB, keeps to
/// 4 KiB blocks.
fn wide_below() -> usize {
    #[cfg(target_arch = "x86_64")]
    if avx512::available() {
        return 16 * CHUNK_LEN;
    }
    8 * CHUNK_LEN
}

/// The chaining value of every block of `data`, which starts at `offset`
/// of its file, a multiple of `block_size` (a power of two of at least one
/// chunk); the last block may be shorter. Appended to `out`, in order: a
/// [`crate::BlockHashKind::FileTree`] chain's block hashes are their first
/// 16 bytes.
pub fn block_values(data: &[u8], offset: u64, block_size: usize, out: &mut Vec<ChainingValue>) {
    debug_assert!(block_size.is_power_of_two() && block_size >= CHUNK_LEN && offset.is_multiple_of(block_size as u64));
    if block_size >= wide_below() {
        let blocks = data.chunks(block_size).enumerate();
        out.extend(blocks.map(|(i, b)| tree_hash::subtree_value(b, offset + (i * block_size) as u64)));
        return;
    }
    let whole = data.len() / block_size * block_size;
    let mut level = Vec::with_capacity(whole / CHUNK_LEN);
    chunk_values(&data[..whole], offset / CHUNK_LEN as u64, &mut level);
    let mut width = CHUNK_LEN;
    while width < block_size {
        let mut up = Vec::with_capacity(level.len() / 2);
        parent_values(level.as_flattened(), &mut up);
        level = up;
        width *= 2;
    }
    out.extend(level);
    if whole < data.len() {
        out.push(tree_hash::subtree_value(&data[whole..], offset + whole as u64));
    }
}

/// The chaining values of the whole chunks `data` is made of, the first
/// being chunk `first` of its file.
fn chunk_values(data: &[u8], first: u64, out: &mut Vec<ChainingValue>) {
    debug_assert!(data.len().is_multiple_of(CHUNK_LEN));
    let done = wide(data, CHUNK_LEN, |group, at| Inputs::chunks(group, first + (at / CHUNK_LEN) as u64), out);
    for (i, chunk) in data[done..].chunks_exact(CHUNK_LEN).enumerate() {
        let index = first + (done / CHUNK_LEN + i) as u64;
        out.push(tree_hash::subtree_value(chunk, index * CHUNK_LEN as u64));
    }
}

/// The (non-root) parents of consecutive pairs of values, `pairs` being
/// the values' bytes.
fn parent_values(pairs: &[u8], out: &mut Vec<ChainingValue>) {
    debug_assert!(pairs.len().is_multiple_of(PARENT_LEN));
    let done = wide(pairs, PARENT_LEN, |group, _| Inputs::parents(group), out);
    for pair in pairs[done..].chunks_exact(PARENT_LEN) {
        let (left, right) = pair.split_at(PARENT_LEN / 2);
        let value = |half: &[u8]| -> ChainingValue { half.try_into().expect("32 bytes") };
        out.push(merge_subtrees_non_root(&value(left), &value(right), Mode::Hash));
    }
}

/// Hashes the leading full groups of `data` (inputs of `stride` bytes) with
/// the widest kernel the CPU has, then with AVX2; the bytes done.
#[cfg_attr(not(target_arch = "x86_64"), allow(unused_variables, clippy::ptr_arg))]
fn wide<'a>(
    data: &'a [u8],
    stride: usize,
    inputs: impl Fn(&'a [u8], usize) -> Inputs<'a>,
    out: &mut Vec<ChainingValue>,
) -> usize {
    #[allow(unused_mut)]
    let mut done = 0;
    #[cfg(target_arch = "x86_64")]
    {
        if avx512::available() {
            for group in data.chunks_exact(avx512::LANES * stride) {
                avx512::hash(inputs(group, done), out);
                done += group.len();
            }
        }
        if avx2::available() {
            for group in data[done..].chunks_exact(avx2::LANES * stride) {
                avx2::hash(inputs(group, done), out);
                done += group.len();
            }
        }
    }
    done
}

/// What one call of a kernel hashes: one input per lane, `stride` bytes
/// apart in `bytes`, each of `blocks` 64-byte blocks.
#[derive(Clone, Copy)]
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
struct Inputs<'a> {
    bytes: &'a [u8],
    stride: usize,
    blocks: usize,
    /// Lane i's counter is `counter + i` (chunks) or 0 (parents).
    counter: u64,
    increment: bool,
    /// Flags of every block; `start` is added to the first, `end` to the last.
    flags: u32,
    start: u32,
    end: u32,
}

const CHUNK_START: u32 = 1;
const CHUNK_END: u32 = 2;
const PARENT: u32 = 4;

impl<'a> Inputs<'a> {
    /// Consecutive chunks, the first being chunk `first` of its file.
    fn chunks(bytes: &'a [u8], first: u64) -> Self {
        let blocks = CHUNK_LEN / 64;
        Inputs {
            bytes,
            stride: CHUNK_LEN,
            blocks,
            counter: first,
            increment: true,
            flags: 0,
            start: CHUNK_START,
            end: CHUNK_END,
        }
    }

    /// Consecutive parents' inputs.
    fn parents(bytes: &'a [u8]) -> Self {
        Inputs { bytes, stride: PARENT_LEN, blocks: 1, counter: 0, increment: false, flags: PARENT, start: 0, end: 0 }
    }

    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    fn counter_of(&self, lane: u64) -> u64 {
        if self.increment { self.counter + lane } else { self.counter }
    }

    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    fn flags_of(&self, block: usize) -> u32 {
        let start = if block == 0 { self.start } else { 0 };
        let end = if block + 1 == self.blocks { self.end } else { 0 };
        self.flags | start | end
    }
}

/// Runs BLAKE3's seven rounds on the lane-parallel state `v` with message
/// `m`, unrolled (every index a constant), with the vector operations given:
/// `add`, `xor` and right rotations by 16, 12, 8 and 7 bits. A macro so
/// that all of it is inlined (the compiler declined to inline a round
/// function, and each call then went through memory).
#[cfg(target_arch = "x86_64")]
macro_rules! rounds {
    ($v:ident, $m:ident, $add:path, $xor:path, $r16:path, $r12:path, $r8:path, $r7:path) => {{
        macro_rules! g {
            ($a:literal, $b:literal, $c:literal, $d:literal, $x:expr, $y:expr) => {
                $v[$a] = $add($add($v[$a], $v[$b]), $x);
                $v[$d] = $r16($xor($v[$d], $v[$a]));
                $v[$c] = $add($v[$c], $v[$d]);
                $v[$b] = $r12($xor($v[$b], $v[$c]));
                $v[$a] = $add($add($v[$a], $v[$b]), $y);
                $v[$d] = $r8($xor($v[$d], $v[$a]));
                $v[$c] = $add($v[$c], $v[$d]);
                $v[$b] = $r7($xor($v[$b], $v[$c]));
            };
        }
        macro_rules! round {
            ($r:literal) => {
                let s = &SCHEDULE[$r];
                g!(0, 4, 8, 12, $m[s[0]], $m[s[1]]);
                g!(1, 5, 9, 13, $m[s[2]], $m[s[3]]);
                g!(2, 6, 10, 14, $m[s[4]], $m[s[5]]);
                g!(3, 7, 11, 15, $m[s[6]], $m[s[7]]);
                g!(0, 5, 10, 15, $m[s[8]], $m[s[9]]);
                g!(1, 6, 11, 12, $m[s[10]], $m[s[11]]);
                g!(2, 7, 8, 13, $m[s[12]], $m[s[13]]);
                g!(3, 4, 9, 14, $m[s[14]], $m[s[15]]);
            };
        }
        round!(0);
        round!(1);
        round!(2);
        round!(3);
        round!(4);
        round!(5);
        round!(6);
    }};
}

/// Runs every block of `$job` through BLAKE3's compression function on the
/// lane-parallel chaining values `$h`, with the vector operations given
/// (`set1`, `add`, `xor`; the rotations are the kernel's `rotate_*`).
#[cfg(target_arch = "x86_64")]
macro_rules! compress_blocks {
    ($job:ident, $h:ident, $counter_low:ident, $counter_high:ident, $set1:path, $add:path, $xor:path) => {
        for b in 0..$job.blocks {
            let m = message($job.bytes, $job.stride, b);
            let mut v = [
                $h[0],
                $h[1],
                $h[2],
                $h[3],
                $h[4],
                $h[5],
                $h[6],
                $h[7],
                $set1(IV[0] as i32),
                $set1(IV[1] as i32),
                $set1(IV[2] as i32),
                $set1(IV[3] as i32),
                $counter_low,
                $counter_high,
                $set1(BLOCK_LEN as i32),
                $set1($job.flags_of(b) as i32),
            ];
            rounds!(v, m, $add, $xor, rotate_16, rotate_12, rotate_8, rotate_7);
            for i in 0..8 {
                $h[i] = $xor(v[i], v[i + 8]);
            }
        }
    };
}

#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)] // runtime-detected AVX2 and unaligned 32-byte loads and stores; see each `SAFETY`
mod avx2 {
    use std::arch::x86_64::*;

    use blake3::hazmat::ChainingValue;

    use super::Inputs;

    /// Inputs hashed at once: one per 32-bit lane of a 256-bit register.
    pub(super) const LANES: usize = 8;

    pub(super) const IV: [u32; 8] =
        [0x6A09E667, 0xBB67AE85, 0x3C6EF372, 0xA54FF53A, 0x510E527F, 0x9B05688C, 0x1F83D9AB, 0x5BE0CD19];
    pub(super) const BLOCK_LEN: usize = 64;

    /// The message words each round takes, in order: round r + 1 permutes
    /// round r's with BLAKE3's fixed permutation.
    pub(super) const SCHEDULE: [[usize; 16]; 7] = schedule();

    const fn schedule() -> [[usize; 16]; 7] {
        const PERMUTATION: [usize; 16] = [2, 6, 3, 10, 7, 0, 4, 13, 1, 11, 12, 5, 9, 14, 15, 8];
        let mut s = [[0; 16]; 7];
        let mut i = 0;
        while i < 16 {
            s[0][i] = i;
            i += 1;
        }
        let mut r = 1;
        while r < 7 {
            let mut i = 0;
            while i < 16 {
                s[r][i] = s[r - 1][PERMUTATION[i]];
                i += 1;
            }
            r += 1;
        }
        s
    }

    pub(super) fn available() -> bool {
        std::arch::is_x86_feature_detected!("avx2")
    }

    /// Appends the chaining values of the eight inputs of `job`.
    pub(super) fn hash(job: Inputs<'_>, out: &mut Vec<ChainingValue>) {
        assert!(available() && job.bytes.len() == LANES * job.stride && job.blocks * BLOCK_LEN <= job.stride);
        // SAFETY: the CPU has AVX2 (checked just above).
        out.extend(unsafe { hash8(job) });
    }

    #[target_feature(enable = "avx2")]
    fn hash8(job: Inputs<'_>) -> [ChainingValue; LANES] {
        let counter = |shift: u32| {
            let c = |lane: u64| (job.counter_of(lane) >> shift) as u32 as i32;
            _mm256_setr_epi32(c(0), c(1), c(2), c(3), c(4), c(5), c(6), c(7))
        };
        let (counter_low, counter_high) = (counter(0), counter(32));
        let mut h = IV.map(|w| _mm256_set1_epi32(w as i32));
        compress_blocks!(job, h, counter_low, counter_high, _mm256_set1_epi32, _mm256_add_epi32, _mm256_xor_si256);
        transpose(&mut h);
        h.map(|lane| {
            let mut cv = [0u8; 32];
            // SAFETY: `cv` is 32 writable bytes; the store is unaligned.
            unsafe { _mm256_storeu_si256(cv.as_mut_ptr().cast(), lane) };
            cv
        })
    }

    /// Block `b` of each of the eight inputs of `bytes` (`stride` apart), as
    /// sixteen vectors: vector j holds message word j of every lane.
    #[target_feature(enable = "avx2")]
    #[inline]
    pub(super) fn message(bytes: &[u8], stride: usize, b: usize) -> [__m256i; 16] {
        let half = |lane: usize, at: usize| {
            let half: &[u8; 32] = bytes[lane * stride + b * BLOCK_LEN + at..][..32].try_into().expect("32 bytes");
            // SAFETY: `half` is 32 readable bytes; the load is unaligned.
            unsafe { _mm256_loadu_si256(half.as_ptr().cast()) }
        };
        let mut low: [__m256i; 8] = std::array::from_fn(|lane| half(lane, 0));
        let mut high: [__m256i; 8] = std::array::from_fn(|lane| half(lane, 32));
        transpose(&mut low);
        transpose(&mut high);
        std::array::from_fn(|j| if j < 8 { low[j] } else { high[j - 8] })
    }

    /// An 8 × 8 transpose of 32-bit words: word i of vector j becomes word j
    /// of vector i.
    #[target_feature(enable = "avx2")]
    #[inline]
    pub(super) fn transpose(v: &mut [__m256i; 8]) {
        let ab_0145 = _mm256_unpacklo_epi32(v[0], v[1]);
        let ab_2367 = _mm256_unpackhi_epi32(v[0], v[1]);
        let cd_0145 = _mm256_unpacklo_epi32(v[2], v[3]);
        let cd_2367 = _mm256_unpackhi_epi32(v[2], v[3]);
        let ef_0145 = _mm256_unpacklo_epi32(v[4], v[5]);
        let ef_2367 = _mm256_unpackhi_epi32(v[4], v[5]);
        let gh_0145 = _mm256_unpacklo_epi32(v[6], v[7]);
        let gh_2367 = _mm256_unpackhi_epi32(v[6], v[7]);
        let abcd_04 = _mm256_unpacklo_epi64(ab_0145, cd_0145);
        let abcd_15 = _mm256_unpackhi_epi64(ab_0145, cd_0145);
        let abcd_26 = _mm256_unpacklo_epi64(ab_2367, cd_2367);
        let abcd_37 = _mm256_unpackhi_epi64(ab_2367, cd_2367);
        let efgh_04 = _mm256_unpacklo_epi64(ef_0145, gh_0145);
        let efgh_15 = _mm256_unpackhi_epi64(ef_0145, gh_0145);
        let efgh_26 = _mm256_unpacklo_epi64(ef_2367, gh_2367);
        let efgh_37 = _mm256_unpackhi_epi64(ef_2367, gh_2367);
        v[0] = _mm256_permute2x128_si256::<0x20>(abcd_04, efgh_04);
        v[1] = _mm256_permute2x128_si256::<0x20>(abcd_15, efgh_15);
        v[2] = _mm256_permute2x128_si256::<0x20>(abcd_26, efgh_26);
        v[3] = _mm256_permute2x128_si256::<0x20>(abcd_37, efgh_37);
        v[4] = _mm256_permute2x128_si256::<0x31>(abcd_04, efgh_04);
        v[5] = _mm256_permute2x128_si256::<0x31>(abcd_15, efgh_15);
        v[6] = _mm256_permute2x128_si256::<0x31>(abcd_26, efgh_26);
        v[7] = _mm256_permute2x128_si256::<0x31>(abcd_37, efgh_37);
    }

    // Right rotations of each 32-bit word; by 16 and 8, a byte shuffle.
    #[target_feature(enable = "avx2")]
    #[inline]
    fn rotate_16(x: __m256i) -> __m256i {
        let by = _mm256_setr_epi8(
            2, 3, 0, 1, 6, 7, 4, 5, 10, 11, 8, 9, 14, 15, 12, 13, 2, 3, 0, 1, 6, 7, 4, 5, 10, 11, 8, 9, 14, 15, 12, 13,
        );
        _mm256_shuffle_epi8(x, by)
    }

    #[target_feature(enable = "avx2")]
    #[inline]
    fn rotate_8(x: __m256i) -> __m256i {
        let by = _mm256_setr_epi8(
            1, 2, 3, 0, 5, 6, 7, 4, 9, 10, 11, 8, 13, 14, 15, 12, 1, 2, 3, 0, 5, 6, 7, 4, 9, 10, 11, 8, 13, 14, 15, 12,
        );
        _mm256_shuffle_epi8(x, by)
    }

    #[target_feature(enable = "avx2")]
    #[inline]
    fn rotate_12(x: __m256i) -> __m256i {
        _mm256_or_si256(_mm256_srli_epi32::<12>(x), _mm256_slli_epi32::<20>(x))
    }

    #[target_feature(enable = "avx2")]
    #[inline]
    fn rotate_7(x: __m256i) -> __m256i {
        _mm256_or_si256(_mm256_srli_epi32::<7>(x), _mm256_slli_epi32::<25>(x))
    }
}

/// Sixteen inputs at once in 512-bit registers, whose rotations are one
/// instruction each. Results are transposed eight lanes at a time with
/// [`avx2`]'s transpose (every AVX-512 CPU has AVX2).
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)] // runtime-detected AVX-512F and AVX2; see each `SAFETY`
mod avx512 {
    use std::arch::x86_64::*;

    use blake3::hazmat::ChainingValue;

    use super::Inputs;
    use super::avx2::{BLOCK_LEN, IV, SCHEDULE, transpose};

    pub(super) const LANES: usize = 16;

    pub(super) fn available() -> bool {
        std::arch::is_x86_feature_detected!("avx512f") && std::arch::is_x86_feature_detected!("avx2")
    }

    /// Appends the chaining values of the sixteen inputs of `job`.
    pub(super) fn hash(job: Inputs<'_>, out: &mut Vec<ChainingValue>) {
        assert!(available() && job.bytes.len() == LANES * job.stride && job.blocks * BLOCK_LEN <= job.stride);
        // SAFETY: the CPU has AVX-512F and AVX2 (checked just above).
        out.extend(unsafe { hash16(job) });
    }

    #[target_feature(enable = "avx512f,avx2")]
    fn hash16(job: Inputs<'_>) -> [ChainingValue; LANES] {
        let counter = |shift: u32| {
            let c = |lane: u64| (job.counter_of(lane) >> shift) as u32 as i32;
            _mm512_setr_epi32(
                c(0),
                c(1),
                c(2),
                c(3),
                c(4),
                c(5),
                c(6),
                c(7),
                c(8),
                c(9),
                c(10),
                c(11),
                c(12),
                c(13),
                c(14),
                c(15),
            )
        };
        let (counter_low, counter_high) = (counter(0), counter(32));
        let mut h = IV.map(|w| _mm512_set1_epi32(w as i32));
        compress_blocks!(job, h, counter_low, counter_high, _mm512_set1_epi32, _mm512_add_epi32, _mm512_xor_si512);
        #[allow(clippy::redundant_closure)] // a target-feature function is not a closure
        let mut low = h.map(|x| _mm512_castsi512_si256(x));
        #[allow(clippy::redundant_closure)]
        let mut high = h.map(|x| _mm512_extracti64x4_epi64::<1>(x));
        transpose(&mut low);
        transpose(&mut high);
        std::array::from_fn(|lane| {
            let words = if lane < 8 { low[lane] } else { high[lane - 8] };
            let mut cv = [0u8; 32];
            // SAFETY: `cv` is 32 writable bytes; the store is unaligned.
            unsafe { _mm256_storeu_si256(cv.as_mut_ptr().cast(), words) };
            cv
        })
    }

    /// Block `b` of each of the sixteen inputs of `bytes` (`stride` apart),
    /// as sixteen vectors: vector j holds message word j of every lane. One
    /// load per lane, then a 16 × 16 transpose of 32-bit words in four
    /// stages (32-, 64-bit interleaves, then two of 128-bit lanes).
    #[target_feature(enable = "avx512f,avx2")]
    #[inline]
    fn message(bytes: &[u8], stride: usize, b: usize) -> [__m512i; 16] {
        let v: [__m512i; 16] = std::array::from_fn(|lane| {
            let block: &[u8; 64] = bytes[lane * stride + b * BLOCK_LEN..][..64].try_into().expect("64 bytes");
            // SAFETY: `block` is 64 readable bytes; the load is unaligned.
            unsafe { _mm512_loadu_si512(block.as_ptr().cast()) }
        });
        // Pairs of rows: per 128-bit group g, words 4g, 4g+1 (`lo`) and
        // 4g+2, 4g+3 (`hi`) of both rows, interleaved.
        let lo32: [__m512i; 8] = std::array::from_fn(|p| _mm512_unpacklo_epi32(v[2 * p], v[2 * p + 1]));
        let hi32: [__m512i; 8] = std::array::from_fn(|p| _mm512_unpackhi_epi32(v[2 * p], v[2 * p + 1]));
        // Quads of rows: q4[q][k] holds, per group g, word 4g + k of rows
        // 4q..4q+4.
        let q4: [[__m512i; 4]; 4] = std::array::from_fn(|q| {
            [
                _mm512_unpacklo_epi64(lo32[2 * q], lo32[2 * q + 1]),
                _mm512_unpackhi_epi64(lo32[2 * q], lo32[2 * q + 1]),
                _mm512_unpacklo_epi64(hi32[2 * q], hi32[2 * q + 1]),
                _mm512_unpackhi_epi64(hi32[2 * q], hi32[2 * q + 1]),
            ]
        });
        // Octets of rows: o8[h][k] holds words k and k + 8 of rows
        // 8h..8h+8.
        let o8: [[__m512i; 8]; 2] = std::array::from_fn(|h| {
            std::array::from_fn(|k| {
                let (a, c) = (q4[2 * h][k % 4], q4[2 * h + 1][k % 4]);
                if k < 4 { _mm512_shuffle_i32x4::<0x88>(a, c) } else { _mm512_shuffle_i32x4::<0xDD>(a, c) }
            })
        });
        std::array::from_fn(|j| {
            let (a, c) = (o8[0][j % 8], o8[1][j % 8]);
            if j < 8 { _mm512_shuffle_i32x4::<0x88>(a, c) } else { _mm512_shuffle_i32x4::<0xDD>(a, c) }
        })
    }

    #[target_feature(enable = "avx512f,avx2")]
    #[inline]
    fn rotate_16(x: __m512i) -> __m512i {
        _mm512_ror_epi32::<16>(x)
    }

    #[target_feature(enable = "avx512f,avx2")]
    #[inline]
    fn rotate_12(x: __m512i) -> __m512i {
        _mm512_ror_epi32::<12>(x)
    }

    #[target_feature(enable = "avx512f,avx2")]
    #[inline]
    fn rotate_8(x: __m512i) -> __m512i {
        _mm512_ror_epi32::<8>(x)
    }

    #[target_feature(enable = "avx512f,avx2")]
    #[inline]
    fn rotate_7(x: __m512i) -> __m512i {
        _mm512_ror_epi32::<7>(x)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    /// Every chunk's value is the crate's, in both paths, including chunk
    /// counters that cross 2^32 within one group of eight.
    #[test]
    fn chunk_values_are_blake3s_own() {
        let d = data(27 * CHUNK_LEN, 7);
        for first in [0u64, 1, 5, 1000, (1 << 32) - 3, (1 << 40) + 17] {
            let mut got = Vec::new();
            chunk_values(&d, first, &mut got);
            assert_eq!(got.len(), 27);
            for (i, (chunk, value)) in d.chunks(CHUNK_LEN).zip(&got).enumerate() {
                let want = tree_hash::subtree_value(chunk, (first + i as u64) * CHUNK_LEN as u64);
                assert_eq!(value, &want, "chunk {i} after chunk {first}");
            }
        }
    }

    /// Block values are the crate's for each block size, any number of
    /// blocks (some groups of eight chunks straddle blocks, some don't) and
    /// a last block of any length.
    #[test]
    fn block_values_are_blake3s_own() {
        let d = data(600_000, 11);
        for bs in [4096usize, 8192, 16384, 65536] {
            for len in [1, 1023, 1024, bs - 1, bs, bs + 1, 3 * bs, 3 * bs + 1000, 7 * bs + 4095, d.len()] {
                for offset in [0u64, bs as u64 * 3, bs as u64 * ((1 << 32) / (bs as u64 / 1024) - 1)] {
                    let mut got = Vec::new();
                    block_values(&d[..len], offset, bs, &mut got);
                    let want: Vec<_> = d[..len]
                        .chunks(bs)
                        .enumerate()
                        .map(|(i, b)| tree_hash::subtree_value(b, offset + (i * bs) as u64))
                        .collect();
                    assert_eq!(got, want, "block size {bs}, {len} bytes at {offset}");
                }
            }
        }
    }

    /// Parents of 27 pairs (one group of sixteen, one of eight, three
    /// alone where the CPU has AVX-512) are the crate's.
    #[test]
    fn parent_values_are_blake3s_own() {
        let pairs = data(27 * PARENT_LEN, 5);
        let mut got = Vec::new();
        parent_values(&pairs, &mut got);
        let want: Vec<_> = pairs
            .chunks(PARENT_LEN)
            .map(|p| {
                let (l, r) = p.split_at(32);
                merge_subtrees_non_root(&l.try_into().unwrap(), &r.try_into().unwrap(), Mode::Hash)
            })
            .collect();
        assert_eq!(got, want);
    }

    /// Each vector kernel ran where the CPU has it (the tests above would
    /// pass on the crate's path alone), on chunks and on parents.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn each_kernel_matches_where_it_runs() {
        type Kernel = fn(Inputs<'_>, &mut Vec<ChainingValue>);
        let kernels: [(&str, bool, usize, Kernel); 2] = [
            ("avx2", avx2::available(), avx2::LANES, avx2::hash),
            ("avx512", avx512::available(), avx512::LANES, avx512::hash),
        ];
        for (name, available, lanes, hash) in kernels {
            if !available {
                eprintln!("no {name} here: its kernel is not tested");
                continue;
            }
            let d = data(lanes * CHUNK_LEN, 3);
            let mut got = Vec::new();
            hash(Inputs::chunks(&d, (1 << 32) - 5), &mut got);
            let want: Vec<_> = d
                .chunks(CHUNK_LEN)
                .enumerate()
                .map(|(i, c)| tree_hash::subtree_value(c, ((1 << 32) - 5 + i as u64) * CHUNK_LEN as u64))
                .collect();
            assert_eq!(got, want, "{name} chunks");
            let mut got = Vec::new();
            hash(Inputs::parents(&d[..lanes * PARENT_LEN]), &mut got);
            let mut want = Vec::new();
            for p in d[..lanes * PARENT_LEN].chunks(PARENT_LEN) {
                let (l, r) = p.split_at(32);
                want.push(merge_subtrees_non_root(&l.try_into().unwrap(), &r.try_into().unwrap(), Mode::Hash));
            }
            assert_eq!(got, want, "{name} parents");
        }
    }
}
