//! Content-defined chunking: FastCDC (2020, normalised) with a gear table
//! derived from the repository's secret chunker key, so chunk boundaries are
//! unpredictable to anyone without the key. Reads a stream with one reusable
//! buffer (bounded memory: two maximum-size chunks).

use std::io::{self, Read};

use fastcdc::v2020::{cut_gear, select_masks, Normalization};

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
        Ok(())
    }
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
    pub fn cut(&self, data: &[u8]) -> usize {
        let p = &self.params;
        let (_, n) = cut_gear(
            data,
            p.min,
            p.avg,
            p.max,
            self.mask_s,
            self.mask_l,
            self.mask_s << 1,
            self.mask_l << 1,
            &self.gear[..],
            &self.gear_ls[..],
        );
        n
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

    /// As [`Chunker::chunk_stream`], reusing `buf` (grown to two maximum chunk
    /// sizes on first use) so that a worker allocates its buffer once, not per file.
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
        if buf.len() < 2 * max {
            buf.resize(2 * max, 0);
        }
        let (mut start, mut end) = (0usize, 0usize);
        let mut eof = false;
        let mut total = 0u64;
        loop {
            // Top up so the window holds at least `max` bytes unless the stream ended.
            while !eof && end - start < max {
                if end == buf.len() {
                    buf.copy_within(start..end, 0);
                    end -= start;
                    start = 0;
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
