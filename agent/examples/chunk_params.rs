//! Measures the chunk-size trade-off that fixed Cairn's FastCDC parameters:
//! deduplication after small edits versus the number of chunks (index memory,
//! objects, per-blob overhead), and the storage cost of blob padding.
//!
//!     cargo run --release -p cairn-agent --example chunk_params
//!
//! Data is generated in memory with fixed seeds: 256 MiB, half pseudo-random
//! and half text-like. Two edits: 100 insertions of 1–64 bytes at random
//! offsets, and 1000 rewrites of random aligned 8 KiB pages (a database).

use std::collections::HashSet;

use cairn::blob::padded_len;
use cairn::chunker::{Chunker, ChunkerParams};

fn xorshift(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

fn dataset(len: usize) -> Vec<u8> {
    let mut s = 0x1234_5678_9abc_def1u64;
    let mut out = Vec::with_capacity(len);
    let words: Vec<&[u8]> =
        b"backup restore chunk index pack blob tree key volume claim the a of and"
            .split(|&b| b == b' ')
            .collect();
    while out.len() < len / 2 {
        out.extend_from_slice(&xorshift(&mut s).to_le_bytes());
    }
    while out.len() < len {
        let w = words[(xorshift(&mut s) % words.len() as u64) as usize];
        out.extend_from_slice(w);
        out.push(if xorshift(&mut s).is_multiple_of(10) {
            b'\n'
        } else {
            b' '
        });
    }
    out.truncate(len);
    out
}

fn chunks(c: &Chunker, data: &[u8]) -> Vec<(blake3::Hash, usize)> {
    let mut out = Vec::new();
    c.chunk_stream::<_, std::io::Error>(data, |ch| {
        out.push((blake3::hash(ch), ch.len()));
        Ok(())
    })
    .expect("in-memory chunking");
    out
}

fn added(c: &Chunker, base: &[u8], edited: &[u8]) -> (usize, usize) {
    let known: HashSet<blake3::Hash> = chunks(c, base).into_iter().map(|(h, _)| h).collect();
    let new: Vec<_> = chunks(c, edited)
        .into_iter()
        .filter(|(h, _)| !known.contains(h))
        .collect();
    (new.len(), new.iter().map(|(_, l)| l).sum())
}

fn main() {
    let len = 256 << 20;
    let base = dataset(len);
    let mut s = 42u64;
    let mut inserted = base.clone();
    for _ in 0..100 {
        let at = (xorshift(&mut s) % inserted.len() as u64) as usize;
        let n = 1 + (xorshift(&mut s) % 64) as usize;
        let bytes: Vec<u8> = (0..n).map(|_| xorshift(&mut s) as u8).collect();
        inserted.splice(at..at, bytes);
    }
    let mut paged = base.clone();
    for _ in 0..1000 {
        let page = (xorshift(&mut s) % (len as u64 / 8192)) as usize * 8192;
        for b in &mut paged[page..page + 8192] {
            *b = xorshift(&mut s) as u8;
        }
    }
    println!("256 MiB input; MiB added after each edit (lower is better)");
    println!(
        "{:>22} {:>8} {:>12} {:>12} {:>14} {:>10}",
        "min/avg/max KiB", "chunks", "100 inserts", "1000 pages", "index bytes", "padding"
    );
    for (min, avg, max) in [
        (64, 256, 1024),
        (128, 512, 2048),
        (256, 1024, 4096),
        (512, 2048, 8192),
    ] {
        let params = ChunkerParams {
            min: min << 10,
            avg: avg << 10,
            max: max << 10,
            normalization: 1,
        };
        let c = Chunker::new(&[7; 32], params);
        let all = chunks(&c, &base);
        // padding cost on the incompressible half, where stored size = chunk size
        let (raw, padded) = all
            .iter()
            .take(all.len() / 2)
            .fold((0u64, 0u64), |(r, p), (_, l)| {
                (r + *l as u64 + 5, p + padded_len(*l as u64 + 5))
            });
        let (_, ins) = added(&c, &base, &inserted);
        let (_, pag) = added(&c, &base, &paged);
        println!(
            "{:>22} {:>8} {:>12.1} {:>12.1} {:>14} {:>9.3}%",
            format!("{min}/{avg}/{max}"),
            all.len(),
            ins as f64 / (1 << 20) as f64,
            pag as f64 / (1 << 20) as f64,
            all.len() * 48,
            (padded - raw) as f64 / raw as f64 * 100.0
        );
    }
}
