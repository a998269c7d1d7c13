//! Content-defined chunking: FastCDC (2020, normalised) with a gear table
//! derived from the repository's secret chunker key, so chunk boundaries are
//! unpredictable to anyone without the key. Reads a stream with one reusable
//! buffer (bounded memory: two maximum-size chunks).

use std::io::{self, Read};

use fastcdc::v2020::{select_masks, Normalization};

/// Chunk size parameters, stored in the repository config.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ChunkerParams {
    /// Minimum chunk size in bytes (even).
    pub min: usize,
    /// Average chunk size in bytes (even).
    pub avg: usize,
    /// Maximum chunk size in bytes (even).
    pub max: usize,
    /// FastCDC normalisation level (0..=3).
    pub normalization: u8,
}

impl ChunkerParams {
    /// Check the bounds FastCDC requires.
    pub fn validate(&self) -> Result<(), String> {
        let even =
            self.min.is_multiple_of(2) && self.avg.is_multiple_of(2) && self.max.is_multiple_of(2);
        if !even
            || self.min < 64
            || self.min > self.avg
            || self.avg > self.max
            || self.max > 64 << 20
        {
            return Err(format!("invalid chunker sizes {self:?}"));
        }
        if self.normalization > 3 {
            return Err(format!(
                "invalid normalisation level {}",
                self.normalization
            ));
        }
        // FastCDC's mask table ends at 25 bits: the small-chunk mask uses
        // log2(avg) + normalisation bits (about 24 MiB at level 1).
        if mask_bits(self.avg) + u32::from(self.normalization) > 25 {
            return Err(format!(
                "average chunk size {} too large for normalisation level {}",
                self.avg, self.normalization
            ));
        }
        Ok(())
    }
}

/// The mask width FastCDC 2020 derives from an average size.
fn mask_bits(avg: usize) -> u32 {
    (avg as f64).log2().round() as u32
}

/// A keyed FastCDC chunker. Cheap to clone (two 2 KiB tables).
#[derive(Clone)]
pub struct Chunker {
    params: ChunkerParams,
    gear: Box<[u64; 256]>,
    gear_ls: Box<[u64; 256]>,
    mask_s: u64,
    mask_l: u64,
}

impl Chunker {
    /// Build the chunker: the gear table is 256 little-endian u64 words read from
    /// BLAKE3's extendable output keyed with `key` over the context string
    /// `cairn/v1/gear`.
    pub fn new(key: &[u8; 32], params: ChunkerParams) -> Chunker {
        let mut xof = blake3::Hasher::new_keyed(key);
        xof.update(b"cairn/v1/gear");
        let mut bytes = [0u8; 256 * 8];
        xof.finalize_xof().fill(&mut bytes);
        let mut gear = Box::new([0u64; 256]);
        let mut gear_ls = Box::new([0u64; 256]);
        for (i, w) in bytes.chunks_exact(8).enumerate() {
            let mut word = [0u8; 8];
            word.copy_from_slice(w);
            gear[i] = u64::from_le_bytes(word);
            gear_ls[i] = gear[i] << 1;
        }
        let level = match params.normalization {
            0 => Normalization::Level0,
            1 => Normalization::Level1,
            2 => Normalization::Level2,
            _ => Normalization::Level3,
        };
        let (mask_s, mask_l) = select_masks(params.avg, level);
        Chunker {
            params,
            gear,
            gear_ls,
            mask_s,
            mask_l,
        }
    }

    /// Length of the first chunk of `data`, assuming `data` is either at least
    /// `max` bytes long or the rest of the stream.
    ///
    /// The cut points are exactly FastCDC 2020's (`fastcdc::v2020::cut_gear`
    /// with the "two bytes per step" gear scan; a test compares the two), found
    /// faster: the gear hash at a position depends only on the 64 bytes up to
    /// it (each step shifts the 64-bit hash left), so blocks of the window
    /// can be hashed as independent chains whose steps the CPU overlaps. A
    /// group of blocks that contains a candidate is scanned again in order to find
    /// the first one.
    pub fn cut(&self, data: &[u8]) -> usize {
        self.cut_blocks(data, CUT_BLOCK_PAIRS)
    }

    fn cut_blocks(&self, data: &[u8], block: usize) -> usize {
        let p = &self.params;
        let mut remaining = data.len();
        if remaining <= p.min {
            return remaining;
        }
        let mut center = p.avg;
        if remaining > p.max {
            remaining = p.max;
        } else if remaining < center {
            center = remaining;
        }
        let scan = Scan {
            src: &data[..remaining],
            gear: &self.gear,
            gear_ls: &self.gear_ls,
            first_pair: p.min / 2,
        };
        // Positions are tested in pairs (2i, 2i + 1): the strict masks before
        // `center`, the relaxed ones from there to the end of the window.
        let (start, mid, end) = (p.min / 2, center / 2, remaining / 2);
        let strict = (self.mask_s << 1, self.mask_s);
        let relaxed = (self.mask_l << 1, self.mask_l);
        for (from, to, masks) in [(start, mid, strict), (mid.max(start), end, relaxed)] {
            let mut x = from;
            while x + LANES * block <= to {
                if scan.any_in_blocks(x, block, masks) {
                    return scan.first(x, x + LANES * block, masks).unwrap_or(remaining);
                }
                x += LANES * block;
            }
            if let Some(cut) = scan.first(x, to, masks) {
                return cut;
            }
        }
        remaining
    }

    /// Split everything `reader` yields into chunks, calling `on_chunk` for each
    /// in order. Returns the number of bytes read. An empty stream gives no chunk.
    ///
    /// # Errors
    /// Read errors from `reader`, or the first error `on_chunk` returns.
    pub fn chunk_stream<R: Read, E: From<io::Error>>(
        &self,
        reader: R,
        on_chunk: impl FnMut(&[u8]) -> Result<(), E>,
    ) -> Result<u64, E> {
        self.chunk_stream_with(&mut Vec::new(), reader, on_chunk)
    }

    /// As [`Chunker::chunk_stream`], reusing `buf` so that a worker allocates
    /// its buffer once, not per file. The buffer grows (doubling, from
    /// [`STREAM_BUF_MIN`]) only while a window does not fit, up to two maximum
    /// chunk sizes: a worker that only ever sees small files keeps a small one.
    ///
    /// # Errors
    /// Read errors from `reader`, or the first error `on_chunk` returns.
    pub fn chunk_stream_with<R: Read, E: From<io::Error>>(
        &self,
        buf: &mut Vec<u8>,
        mut reader: R,
        mut on_chunk: impl FnMut(&[u8]) -> Result<(), E>,
    ) -> Result<u64, E> {
        let max = self.params.max;
        let (mut start, mut end) = (0usize, 0usize);
        let mut eof = false;
        let mut total = 0u64;
        loop {
            // Top up so the window holds at least `max` bytes unless the stream ended.
            while !eof && end - start < max {
                if end == buf.len() {
                    if buf.len() < 2 * max && start <= buf.len() / 2 {
                        // Mostly unconsumed bytes: grow rather than move them.
                        let len = (buf.len() * 2).max(STREAM_BUF_MIN).min(2 * max);
                        buf.resize(len, 0);
                    } else {
                        buf.copy_within(start..end, 0);
                        end -= start;
                        start = 0;
                    }
                }
                match reader.read(&mut buf[end..]) {
                    Ok(0) => eof = true,
                    Ok(n) => {
                        end += n;
                        total += n as u64;
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e.into()),
                }
            }
            if start == end {
                return Ok(total);
            }
            let n = self.cut(&buf[start..end]);
            on_chunk(&buf[start..start + n])?;
            start += n;
        }
    }
}

/// First size of a stream buffer (see [`Chunker::chunk_stream_with`]).
pub const STREAM_BUF_MIN: usize = 64 * 1024;

/// Pairs of bytes per block in [`Chunker::cut`]'s scan (4 KiB).
const CUT_BLOCK_PAIRS: usize = 2048;

/// Blocks hashed side by side. Two measured fastest here (chunk stage 2.74 →
/// 3.5–3.65 GiB/s); three and four were no faster than two.
const LANES: usize = 2;

/// Pairs of bytes of history the gear hash depends on: a 64-bit hash shifted
/// left by one bit per byte forgets a byte's contribution after 64 more bytes.
const GEAR_HISTORY_PAIRS: usize = 32;

/// The gear scan over one cut window. Positions are in pairs of bytes; the
/// hash starts from zero at `first_pair` (the minimum chunk size).
struct Scan<'a> {
    src: &'a [u8],
    gear: &'a [u64; 256],
    gear_ls: &'a [u64; 256],
    first_pair: usize,
}

impl Scan<'_> {
    /// The hash just before pair `at`, rebuilt from the bytes it depends on.
    #[inline(always)]
    fn hash_before(&self, at: usize) -> u64 {
        let from = at.saturating_sub(GEAR_HISTORY_PAIRS).max(self.first_pair);
        let mut hash = 0u64;
        for pair in self.src[2 * from..2 * at].chunks_exact(2) {
            hash = (hash << 2)
                .wrapping_add(self.gear_ls[pair[0] as usize])
                .wrapping_add(self.gear[pair[1] as usize]);
        }
        hash
    }

    /// The first cut position in pairs `[from, to)`, in order (FastCDC's loop).
    fn first(&self, from: usize, to: usize, (mask_ls, mask): (u64, u64)) -> Option<usize> {
        if from >= to {
            return None;
        }
        let mut hash = self.hash_before(from);
        for (i, pair) in self.src[2 * from..2 * to].chunks_exact(2).enumerate() {
            hash = (hash << 2).wrapping_add(self.gear_ls[pair[0] as usize]);
            if hash & mask_ls == 0 {
                return Some(2 * (from + i));
            }
            hash = hash.wrapping_add(self.gear[pair[1] as usize]);
            if hash & mask == 0 {
                return Some(2 * (from + i) + 1);
            }
        }
        None
    }

    /// Whether pairs `[x, x + LANES * block)` hold a cut position, hashing
    /// the blocks as independent chains.
    #[inline(always)]
    fn any_in_blocks(&self, x: usize, block: usize, (mask_ls, mask): (u64, u64)) -> bool {
        let mut h = [0u64; LANES];
        for (l, h) in h.iter_mut().enumerate() {
            *h = self.hash_before(x + l * block);
        }
        let src = &self.src[2 * x..2 * (x + LANES * block)];
        for k in (0..2 * block).step_by(2) {
            for l in 0..LANES {
                h[l] = (h[l] << 2).wrapping_add(self.gear_ls[src[2 * l * block + k] as usize]);
            }
            if h.iter().any(|&h| h & mask_ls == 0) {
                return true;
            }
            for l in 0..LANES {
                h[l] = h[l].wrapping_add(self.gear[src[2 * l * block + k + 1] as usize]);
            }
            if h.iter().any(|&h| h & mask == 0) {
                return true;
            }
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::constants::*;

    fn params() -> ChunkerParams {
        ChunkerParams {
            min: CHUNK_MIN,
            avg: CHUNK_AVG,
            max: CHUNK_MAX,
            normalization: CHUNK_NORMALIZATION,
        }
    }

    fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 32) as u8
            })
            .collect()
    }

    fn chunk_lengths(c: &Chunker, data: &[u8], read_size: usize) -> Vec<usize> {
        struct Slow<'a>(&'a [u8], usize);
        impl Read for Slow<'_> {
            fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
                let n = self.0.len().min(out.len()).min(self.1);
                out[..n].copy_from_slice(&self.0[..n]);
                self.0 = &self.0[n..];
                Ok(n)
            }
        }
        let mut lens = Vec::new();
        let total = c
            .chunk_stream::<_, io::Error>(Slow(data, read_size), |ch| {
                lens.push(ch.len());
                Ok(())
            })
            .unwrap();
        assert_eq!(total as usize, data.len());
        lens
    }

    #[test]
    fn boundaries_do_not_depend_on_read_sizes_and_respect_limits() {
        let c = Chunker::new(&[9; 32], params());
        let data = pseudo_random(20 << 20, 1);
        let a = chunk_lengths(&c, &data, 1 << 20);
        let b = chunk_lengths(&c, &data, 4093);
        assert_eq!(a, b);
        assert_eq!(a.iter().sum::<usize>(), data.len());
        for &l in &a[..a.len() - 1] {
            assert!((CHUNK_MIN..=CHUNK_MAX).contains(&l), "chunk of {l} bytes");
        }
        assert!(a.len() >= 8, "expected ~20 chunks, got {}", a.len());
    }

    #[test]
    fn reused_buffer_grows_only_as_files_need() {
        let c = Chunker::new(&[9; 32], params());
        let big = pseudo_random(9 << 20, 3);
        let lens = |buf: &mut Vec<u8>, data: &[u8]| {
            let mut v = Vec::new();
            c.chunk_stream_with::<_, io::Error>(buf, data, |ch| {
                v.push(ch.len());
                Ok(())
            })
            .unwrap();
            v
        };
        let mut buf = Vec::new();
        for n in [0, 1, 300, STREAM_BUF_MIN - 1] {
            assert_eq!(
                lens(&mut buf, &big[..n]),
                chunk_lengths(&c, &big[..n], 1 << 20)
            );
            assert_eq!(buf.len(), STREAM_BUF_MIN, "small files keep a small buffer");
        }
        // a large file after small ones: same chunks as with a fresh buffer
        assert_eq!(lens(&mut buf, &big), chunk_lengths(&c, &big, 4093));
        assert_eq!(buf.len(), 2 * CHUNK_MAX);
        assert_eq!(lens(&mut buf, &big[..5000]), vec![5000]);
        assert_eq!(buf.len(), 2 * CHUNK_MAX, "grown once, kept");

        // chunk sizes far below the first buffer size (the smallest valid)
        let small = ChunkerParams {
            min: 64,
            avg: 128,
            max: 256,
            normalization: 1,
        };
        let c = Chunker::new(&[9; 32], small);
        let mut buf = Vec::new();
        let mut total = 0;
        c.chunk_stream_with::<_, io::Error>(&mut buf, &big[..100_000], |ch| {
            assert!(ch.len() <= 256);
            total += ch.len();
            Ok(())
        })
        .unwrap();
        assert_eq!(total, 100_000);
        assert_eq!(buf.len(), 512, "never more than two maximum chunks");
    }

    #[test]
    fn key_changes_boundaries() {
        let data = pseudo_random(16 << 20, 2);
        let a = chunk_lengths(&Chunker::new(&[1; 32], params()), &data, 1 << 16);
        let b = chunk_lengths(&Chunker::new(&[2; 32], params()), &data, 1 << 16);
        assert_ne!(a, b);
    }

    #[test]
    fn insertion_only_changes_nearby_chunks() {
        let c = Chunker::new(&[3; 32], params());
        let data = pseudo_random(32 << 20, 3);
        let mut edited = data.clone();
        edited.splice(16 << 20..16 << 20, b"inserted bytes".iter().copied());
        let mut set = std::collections::HashSet::new();
        let mut offset = 0;
        for l in chunk_lengths(&c, &data, 1 << 20) {
            set.insert(blake3::hash(&data[offset..offset + l]));
            offset += l;
        }
        let (mut offset, mut new) = (0, 0);
        for l in chunk_lengths(&c, &edited, 1 << 20) {
            if !set.contains(&blake3::hash(&edited[offset..offset + l])) {
                new += 1;
            }
            offset += l;
        }
        assert!((1..=2).contains(&new), "{new} chunks changed");
    }

    /// FastCDC 2020's own scan, the definition the multi-chain scan must match.
    fn reference_cut(c: &Chunker, data: &[u8]) -> usize {
        let p = &c.params;
        fastcdc::v2020::cut_gear(
            data,
            p.min,
            p.avg,
            p.max,
            c.mask_s,
            c.mask_l,
            c.mask_s << 1,
            c.mask_l << 1,
            &c.gear[..],
            &c.gear_ls[..],
        )
        .1
    }

    #[test]
    fn multi_chain_scan_finds_fastcdc_cut_points() {
        let small = ChunkerParams {
            min: 64,
            avg: 256,
            max: 1024,
            normalization: 2,
        };
        let mut cases = 0;
        for (seed, params) in [(1, params()), (2, small), (3, small)] {
            let c = Chunker::new(&[seed as u8; 32], params);
            let mut data = pseudo_random(6 << 20, seed);
            // Runs of one byte value: no cut for a while, then the maximum.
            data[1 << 20..3 << 20].fill(0);
            let mut rest = &data[..];
            while !rest.is_empty() {
                let want = reference_cut(&c, rest);
                assert_eq!(
                    c.cut(rest),
                    want,
                    "seed {seed} at {}",
                    data.len() - rest.len()
                );
                // Block sizes around the history length and odd ones.
                for block in [1, 7, 31, 32, 33, 100] {
                    assert_eq!(c.cut_blocks(rest, block), want, "block {block}");
                }
                // Windows ending at every parity, shorter than the maximum.
                for cut_len in [want.saturating_sub(1), want + 1, params.avg + 1] {
                    let w = &rest[..cut_len.min(rest.len())];
                    assert_eq!(c.cut_blocks(w, 7), reference_cut(&c, w));
                    assert_eq!(c.cut(w), reference_cut(&c, w));
                }
                rest = &rest[want..];
                cases += 1;
            }
        }
        assert!(cases > 1000, "only {cases} chunks compared");
    }

    /// Test vector in docs/FORMAT.md (cross-checked with Python `blake3`).
    #[test]
    fn gear_table_vector() {
        let c = Chunker::new(&[9; 32], params());
        assert_eq!(
            c.gear[..4],
            [
                0x26f1e9488f333beb,
                0x4ddca622468d3e2f,
                0xb98fd1463b54a68c,
                0x7de6eaa597d88c33
            ]
        );
        assert_eq!(c.gear_ls[0], 0x26f1e9488f333beb << 1);
    }

    #[test]
    fn sizes_the_mask_table_cannot_serve_are_invalid() {
        let params = |avg: usize, normalization: u8| ChunkerParams {
            min: 64,
            avg,
            max: 64 << 20,
            normalization,
        };
        for n in 0..=3u8 {
            for avg in [64usize, 1 << 20, 16 << 20, 24 << 20, 32 << 20, 64 << 20] {
                let p = params(avg, n);
                // Valid parameters must build a chunker without panicking.
                if p.validate().is_ok() {
                    let _ = Chunker::new(&[1; 32], p);
                }
            }
        }
        assert!(params(24 << 20, 1).validate().is_err());
        assert!(params(16 << 20, 1).validate().is_ok());
        assert!(params(64 << 20, 0).validate().is_err());
    }

    #[test]
    fn empty_and_tiny_streams() {
        let c = Chunker::new(&[4; 32], params());
        assert!(chunk_lengths(&c, &[], 100).is_empty());
        assert_eq!(chunk_lengths(&c, &[7], 100), vec![1]);
        assert_eq!(
            chunk_lengths(&c, &vec![0; CHUNK_MAX * 2 + 5], 1 << 20),
            vec![CHUNK_MAX, CHUNK_MAX, 5]
        );
    }
}
