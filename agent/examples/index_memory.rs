//! Memory of the in-memory index per million blobs, and of what prune holds
//! on top of it. `cargo run --release --example index_memory [MILLIONS]`.
//!
//! Builds the structures from synthetic entries (random IDs, 100 blobs per
//! pack, as with 16 MiB packs of ~160 KiB stored chunks) and reports the growth
//! of the resident set size.

use cairn::blob::BlobType;
use cairn::index::{Index, IndexFile};
use cairn::pack::PackedBlob;
use cairn::Id;

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap_or(0)
        * 1024
}

fn random_id() -> Id {
    let mut b = [0u8; 32];
    cairn::crypto::fill_random(&mut b);
    Id(b)
}

fn main() {
    let millions: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1);
    let blobs = millions * 1_000_000;
    let per_pack = 100;
    let base = rss_bytes();

    // The index files' contents, as prune keeps them per pack.
    let mut file = IndexFile::default();
    for _ in 0..blobs / per_pack {
        let packed: Vec<PackedBlob> = (0..per_pack)
            .map(|i| PackedBlob {
                blob_type: BlobType::Data,
                id: random_id(),
                offset: i as u32 * 160_000,
                length: 160_000,
                raw_length: 500_000,
            })
            .collect();
        file.add_pack(random_id(), &packed);
    }
    let records = rss_bytes() - base;

    let before = rss_bytes();
    let mut index = Index::new();
    index.add_file(&file);
    index.finish();
    let index_bytes = rss_bytes() - before;

    // Prune marks needed blobs with one bit per index position.
    let before = rss_bytes();
    let mut used = vec![0u64; index.len().div_ceil(64)];
    for (i, _) in index.iter().enumerate() {
        used[i / 64] |= 1 << (i % 64);
    }
    let used_bytes = rss_bytes() - before;

    let per_m = |b: u64| b as f64 / millions as f64 / (1 << 20) as f64;
    println!("blobs: {blobs} in {} packs", blobs / per_pack);
    println!(
        "in-memory index (backup, restore, check): {:.1} MiB per million blobs ({:.1} B/blob)",
        per_m(index_bytes),
        index_bytes as f64 / blobs as f64
    );
    println!(
        "prune, per-pack records from the index files: {:.1} MiB per million blobs",
        per_m(records)
    );
    println!(
        "prune, bit set of needed blobs: {:.2} MiB per million blobs",
        per_m(used_bytes)
    );
    println!(
        "prune total: {:.1} MiB per million blobs",
        per_m(records + index_bytes + used_bytes)
    );
    assert_eq!(
        used.iter().map(|w| w.count_ones() as usize).sum::<usize>(),
        index.len()
    );
}
