//! Per-stage throughput of the backup pipeline on this machine, one core:
//! chunking (FastCDC with the keyed gear table), keyed BLAKE3 blob IDs, zstd
//! at the default level (text) and the incompressibility probe (random data),
//! XChaCha20-Poly1305 sealing, whole-blob encoding, and packing.
//!
//!     cargo bench -p cairn-agent --bench stages
//!
//! The pipeline's physical limit for two cores is twice the slowest stage's
//! throughput (the definition); a stricter bound, since every byte
//! passes every stage, is two over the sum of the per-byte costs.
//! docs/PERFORMANCE.md records both.

use cairn::blob::{encode_blob, BlobType};
use cairn::chunker::{Chunker, ChunkerParams};
use cairn::constants::{CHUNK_AVG, CHUNK_MAX, CHUNK_MIN, CHUNK_NORMALIZATION, DEFAULT_ZSTD_LEVEL};
use cairn::crypto::MasterKey;
use cairn::pack::PackWriter;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};

const INPUT: usize = 32 << 20;

fn random(n: usize) -> Vec<u8> {
    // xorshift: reproducible and fast; incompressible for zstd.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn text(n: usize) -> Vec<u8> {
    let words: Vec<&[u8]> = b"backup restore snapshot chunk index pack blob tree key repository \
        kubernetes volume claim schedule retention prune check copy object storage the a of and"
        .split(|b| *b == b' ')
        .filter(|w| !w.is_empty())
        .collect();
    let mut r = random(n / 4 + 64);
    let mut out = Vec::with_capacity(n + 32);
    let mut i = 0;
    while out.len() < n {
        let w = words[r[i % r.len()] as usize % words.len()];
        out.extend_from_slice(w);
        out.push(if r[(i + 1) % r.len()].is_multiple_of(9) {
            b'\n'
        } else {
            b' '
        });
        i += 2;
        if i >= r.len() {
            r.rotate_left(1);
            i = 0;
        }
    }
    out.truncate(n);
    out
}

fn stages(c: &mut Criterion) {
    let key = MasterKey::generate();
    let params = ChunkerParams {
        min: CHUNK_MIN,
        avg: CHUNK_AVG,
        max: CHUNK_MAX,
        normalization: CHUNK_NORMALIZATION,
    };
    let chunker = Chunker::new(key.chunker_key(), params);
    let rnd = random(INPUT);
    let txt = text(INPUT);
    let chunk_r = &rnd[..CHUNK_AVG];
    let chunk_t = &txt[..CHUNK_AVG];

    let mut g = c.benchmark_group("stage");
    g.sample_size(20);
    g.throughput(Throughput::Bytes(INPUT as u64));
    g.bench_function("chunk (FastCDC)", |b| {
        b.iter(|| {
            let mut rest = &rnd[..];
            let mut n = 0;
            while !rest.is_empty() {
                let cut = chunker.cut(rest);
                rest = &rest[cut..];
                n += 1;
            }
            n
        })
    });
    g.throughput(Throughput::Bytes(CHUNK_AVG as u64));
    g.bench_function("blob ID (keyed BLAKE3)", |b| {
        b.iter(|| key.blob_id(chunk_r))
    });
    g.bench_function("zstd level 3 (text)", |b| {
        b.iter(|| zstd::bulk::compress(chunk_t, DEFAULT_ZSTD_LEVEL).map(|v| v.len()))
    });
    g.bench_function("seal (XChaCha20-Poly1305)", |b| {
        b.iter_batched(
            || {
                let mut v = Vec::with_capacity(CHUNK_AVG + 64);
                v.extend_from_slice(chunk_r);
                v
            },
            |mut buf| {
                key.seal_in_place(b"aad", &mut buf);
                buf.len()
            },
            BatchSize::SmallInput,
        )
    });
    let id_r = key.blob_id(chunk_r);
    let id_t = key.blob_id(chunk_t);
    g.bench_function("encode blob (random: probe + seal)", |b| {
        b.iter(|| encode_blob(&key, BlobType::Data, &id_r, chunk_r, DEFAULT_ZSTD_LEVEL).len())
    });
    g.bench_function("encode blob (text: zstd + seal)", |b| {
        b.iter(|| encode_blob(&key, BlobType::Data, &id_t, chunk_t, DEFAULT_ZSTD_LEVEL).len())
    });
    let encoded: Vec<_> = rnd
        .chunks(CHUNK_AVG)
        .take(32)
        .map(|c| {
            let id = key.blob_id(c);
            (id, encode_blob(&key, BlobType::Data, &id, c, 0))
        })
        .collect();
    g.throughput(Throughput::Bytes((32 * CHUNK_AVG) as u64));
    g.bench_function("pack (32 blobs + header)", |b| {
        b.iter(|| {
            let mut p = PackWriter::new();
            for (id, e) in &encoded {
                p.add(BlobType::Data, *id, e, CHUNK_AVG as u32);
            }
            p.finish(&key)
        })
    });
    g.finish();
}

criterion_group!(benches, stages);
criterion_main!(benches);
