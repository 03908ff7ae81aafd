//! How fast one thread hashes file data the two ways a backup can: the
//! block hashes of [`BlockHashKind::Standalone`] chains (each block's own
//! BLAKE3, plus the 1 MiB chunk's part of the file's BLAKE3: every byte
//! hashed twice) and of [`BlockHashKind::FileTree`] chains (each block's
//! value in the file's BLAKE3 tree, merged into the file's hash: once),
//! the latter both one block per call to the blake3 crate and as a backup
//! hashes them, eight chunks at a time across blocks ([`block_values`]).
//!
//! `cargo run --release -p cairn-bench --bin block-hashing [-- --mib N --runs R]`

use std::hint::black_box;
use std::time::Instant;

use blake3::hazmat::HasherExt;
use cairn_bench::{Table, machine, median};
use cairn_delta::{BlockHashKind, block_hash, block_values};
use clap::Parser;

#[derive(Parser)]
#[command(about = "single-thread hashing speed of cairn's two block-hash kinds")]
struct Args {
    /// MiB hashed per measurement.
    #[arg(long, default_value_t = 1024)]
    mib: usize,
    /// Measurements per figure; the median is printed.
    #[arg(long, default_value_t = 5)]
    runs: usize,
}

const CHUNK: usize = 1 << 20;

fn main() {
    let args = Args::parse();
    // Pseudo-random, so no hashing shortcut could apply.
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let chunk: Vec<u8> = (0..CHUNK)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let mut t = Table::new(&[
        "block size",
        "standalone MB/s",
        "file tree, a block per call, MB/s",
        "file tree, 8 chunks across blocks (cairn), MB/s",
        "across blocks / a block per call",
    ]);
    for bs in [4usize << 10, 8 << 10, 16 << 10] {
        let speed = |f: &dyn Fn(u64)| {
            let samples: Vec<f64> = (0..args.runs)
                .map(|_| {
                    let start = Instant::now();
                    for c in 0..args.mib as u64 {
                        f(c * CHUNK as u64);
                    }
                    (args.mib * CHUNK) as f64 / 1e6 / start.elapsed().as_secs_f64()
                })
                .collect();
            median(&samples)
        };
        let standalone = speed(&|offset| {
            black_box(blake3::Hasher::new().set_input_offset(offset + CHUNK as u64).update(&chunk).finalize_non_root());
            for block in chunk.chunks(bs) {
                black_box(block_hash(block));
            }
        });
        let file_tree = speed(&|offset| {
            for (i, block) in chunk.chunks(bs).enumerate() {
                black_box(BlockHashKind::FileTree.hash(block, offset + CHUNK as u64 + (i * bs) as u64));
            }
        });
        let across = speed(&|offset| {
            let mut values = Vec::with_capacity(CHUNK / bs);
            block_values(&chunk, offset + CHUNK as u64, bs, &mut values);
            black_box(values);
        });
        t.row(vec![
            format!("{} KiB", bs >> 10),
            format!("{standalone:.0}"),
            format!("{file_tree:.0}"),
            format!("{across:.0}"),
            format!("{:.2}", across / file_tree),
        ]);
    }
    println!("block hashing, one thread, {} MiB per measurement, median of {}, {}", args.mib, args.runs, machine());
    print!("{}", t.render());
}
