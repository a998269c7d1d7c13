//! Blob encoding: compression (skipped when it does not pay), size padding,
//! and encryption bound to the blob's type and ID; and the reverse, which
//! verifies the keyed hash of what it returns.

use serde::{Deserialize, Serialize};

use crate::constants::{NONCE_LEN, PAD_DIVISOR, PAD_MIN, TAG_LEN, TREE_ZSTD_LEVEL};
use crate::crypto::{aad, MasterKey};
use crate::error::{Error, Result};
use crate::id::Id;

/// What a blob holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BlobType {
    /// A chunk of file content.
    Data,
    /// A directory listing (serialised [`crate::tree::Tree`]).
    Tree,
}

impl BlobType {
    /// Position in arrays kept per blob type (data 0, tree 1): open packs,
    /// compression contexts, claimed-ID arrays.
    pub fn index(self) -> usize {
        usize::from(self == BlobType::Tree)
    }

    /// The byte used in associated data and pack headers.
    pub fn as_byte(self) -> u8 {
        match self {
            BlobType::Data => 0,
            BlobType::Tree => 1,
        }
    }

    /// Inverse of [`BlobType::as_byte`].
    pub fn from_byte(b: u8) -> Option<BlobType> {
        match b {
            0 => Some(BlobType::Data),
            1 => Some(BlobType::Tree),
            _ => None,
        }
    }
}

impl std::fmt::Display for BlobType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            BlobType::Data => "data",
            BlobType::Tree => "tree",
        })
    }
}

const COMPRESSION_NONE: u8 = 0;
const COMPRESSION_ZSTD: u8 = 1;
/// Bytes before the payload in a blob's plaintext: compression byte + u32 length.
const BLOB_PREFIX_LEN: usize = 5;

/// The padded plaintext length for a blob whose unpadded plaintext is `n` bytes.
pub fn padded_len(n: u64) -> u64 {
    let granule = (n.max(1).next_power_of_two() / PAD_DIVISOR).max(PAD_MIN);
    n.div_ceil(granule) * granule
}

pub(crate) fn blob_aad(t: BlobType, id: &Id) -> Vec<u8> {
    let mut a = Vec::with_capacity(aad::BLOB_PREFIX.len() + 33);
    a.extend_from_slice(aad::BLOB_PREFIX);
    a.push(t.as_byte());
    a.extend_from_slice(&id.0);
    a
}

/// Chunks larger than this are first probed with a sample: compressing
/// incompressible data (media, archives, encrypted files) is pure cost.
const SAMPLE_ABOVE: usize = 128 * 1024;
const SAMPLE_LEN: usize = 32 * 1024;

/// Compress with zstd at `level` (0 = never), keeping the result only if it
/// saves at least 1/64 of the size. Large chunks are compressed only if a
/// sample from their middle compresses by at least 1/32 at zstd's fastest level.
fn compress(data: &[u8], level: i32, t: BlobType) -> Option<Vec<u8>> {
    if level == 0 || data.len() < 64 {
        return None;
    }
    if data.len() > SAMPLE_ABOVE {
        let mid = data.len() / 2;
        let sample = &data[mid - SAMPLE_LEN / 2..mid + SAMPLE_LEN / 2];
        let c = zstd_compress(sample, 1, t)?;
        if c.len() > SAMPLE_LEN - SAMPLE_LEN / 32 {
            return None;
        }
    }
    let c = zstd_compress(data, level, t)?;
    (c.len() < data.len() - data.len() / 64).then_some(c)
}

type LevelCompressor = Option<(i32, zstd::bulk::Compressor<'static>)>;

thread_local! {
    /// zstd contexts reused per thread (creating and clearing one per blob
    /// cost a few percent of a backup's CPU time): one for data blobs, one for
    /// tree blobs. With one for both, a context alternating between tiny data
    /// blobs and a large tree at a higher level had zstd free its workspace
    /// (too large for too long) and allocate it again: 6 584 allocations of
    /// ~3 MB in a backup of a million small files, against 11 with two.
    static COMPRESSORS: std::cell::RefCell<[LevelCompressor; 2]> =
        const { std::cell::RefCell::new([None, None]) };
}

fn zstd_compress(data: &[u8], level: i32, t: BlobType) -> Option<Vec<u8>> {
    COMPRESSORS.with(|c| {
        let mut c = c.borrow_mut();
        let c = &mut c[t.index()];
        if c.is_none() {
            *c = Some((level, zstd::bulk::Compressor::new(level).ok()?));
        }
        let (l, comp) = c.as_mut()?;
        if *l != level {
            comp.set_compression_level(level).ok()?;
            *l = level;
        }
        comp.compress(data).ok()
    })
}

thread_local! {
    /// One zstd decompression context per thread, reused: creating one per
    /// blob showed up in restore profiles (`ZSTD_createDCtx`, ~1.4 % of samples).
    static DECOMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        const { std::cell::RefCell::new(None) };
}

/// Decompress `payload` into `out` (cleared first); more than `capacity`
/// bytes of output is an error.
fn zstd_decompress(payload: &[u8], capacity: usize, out: &mut Vec<u8>) -> std::io::Result<()> {
    out.clear();
    out.reserve(capacity);
    DECOMPRESSOR.with(|d| {
        let mut d = d.borrow_mut();
        let d = match &mut *d {
            Some(d) => d,
            None => d.insert(zstd::bulk::Decompressor::new()?),
        };
        d.decompress_to_buffer(payload, out).map(|_| ())
    })
}

/// Encode a blob for a pack: `nonce || AEAD(key, aad(type, id), prefix || payload || zeros)`.
pub fn encode_blob(key: &MasterKey, t: BlobType, id: &Id, data: &[u8], zstd_level: i32) -> Vec<u8> {
    encode_blob_buf(key, t, id, blob_buffer(data), zstd_level)
}

/// Bytes in front of the plaintext in a [`blob_buffer`]: room for the nonce
/// and the blob prefix, so an incompressible blob is sealed where it lies.
pub const BLOB_HEADROOM: usize = NONCE_LEN + BLOB_PREFIX_LEN;

/// Copy `data` into a buffer laid out for [`encode_blob_buf`]: headroom, the
/// data, and capacity for the padding and the tag (no reallocation later).
pub fn blob_buffer(data: &[u8]) -> Vec<u8> {
    let padded = padded_len((BLOB_PREFIX_LEN + data.len()) as u64) as usize;
    let mut buf = Vec::with_capacity(NONCE_LEN + padded + TAG_LEN);
    buf.resize(BLOB_HEADROOM, 0);
    buf.extend_from_slice(data);
    buf
}

/// [`encode_blob`] for data already in a [`blob_buffer`] (`buf[BLOB_HEADROOM..]`):
/// incompressible data is padded and sealed in that buffer without a copy;
/// compressed data is written over it (it is smaller). Tree blobs are
/// compressed at [`TREE_ZSTD_LEVEL`] or `zstd_level`, whichever is higher.
pub fn encode_blob_buf(
    key: &MasterKey,
    t: BlobType,
    id: &Id,
    mut buf: Vec<u8>,
    zstd_level: i32,
) -> Vec<u8> {
    let level = match t {
        BlobType::Tree => zstd_level.max(TREE_ZSTD_LEVEL),
        BlobType::Data => zstd_level,
    };
    let (flag, len) = match compress(&buf[BLOB_HEADROOM..], level, t) {
        Some(c) => {
            buf.truncate(BLOB_HEADROOM);
            buf.extend_from_slice(&c);
            (COMPRESSION_ZSTD, c.len())
        }
        None => (COMPRESSION_NONE, buf.len() - BLOB_HEADROOM),
    };
    buf[NONCE_LEN] = flag;
    buf[NONCE_LEN + 1..BLOB_HEADROOM].copy_from_slice(&(len as u32).to_le_bytes());
    let padded = padded_len((BLOB_PREFIX_LEN + len) as u64) as usize;
    buf.resize(NONCE_LEN + padded, 0);
    buf.reserve_exact(TAG_LEN);
    key.seal_in_place(&blob_aad(t, id), &mut buf);
    buf
}

/// Decode what [`encode_blob`] produced and check that the keyed hash of the
/// result equals `id`.
///
/// # Errors
/// [`Error::Corrupt`] naming the blob when authentication, decompression or the hash check fails.
pub fn decode_blob(
    key: &MasterKey,
    t: BlobType,
    id: &Id,
    stored: &[u8],
    raw_len: u32,
) -> Result<Vec<u8>> {
    let mut buf = stored.to_vec();
    let mut scratch = Vec::new();
    match decode_in(key, t, id, &mut buf, raw_len, &mut scratch)? {
        Some(range) => {
            buf.truncate(range.end);
            buf.drain(..range.start);
            Ok(buf)
        }
        None => Ok(scratch),
    }
}

/// [`decode_blob`] without copies: `stored` is decrypted in place and the
/// plaintext is a part of it, or of `scratch` when it was compressed
/// (`scratch` is reused across calls: no allocation per blob).
///
/// # Errors
/// As [`decode_blob`].
pub fn decode_blob_in_place<'a>(
    key: &MasterKey,
    t: BlobType,
    id: &Id,
    stored: &'a mut [u8],
    raw_len: u32,
    scratch: &'a mut Vec<u8>,
) -> Result<&'a [u8]> {
    match decode_in(key, t, id, stored, raw_len, scratch)? {
        Some(range) => Ok(&stored[range]),
        None => Ok(scratch),
    }
}

/// Decrypt `stored` in place, decompress into `scratch` if needed and check
/// the hash. The plaintext is `stored[range]` (`Some`) or `scratch` (`None`).
fn decode_in(
    key: &MasterKey,
    t: BlobType,
    id: &Id,
    stored: &mut [u8],
    raw_len: u32,
    scratch: &mut Vec<u8>,
) -> Result<Option<std::ops::Range<usize>>> {
    let object = || format!("{t} blob {id}");
    let plain = key.open_in_place(&blob_aad(t, id), stored, &object())?;
    if plain.len() < BLOB_PREFIX_LEN {
        return Err(Error::corrupt(object(), "too short"));
    }
    let mut len = [0u8; 4];
    len.copy_from_slice(&plain[1..5]);
    let len = u32::from_le_bytes(len) as usize;
    let payload = plain
        .get(BLOB_PREFIX_LEN..BLOB_PREFIX_LEN + len)
        .ok_or_else(|| Error::corrupt(object(), "payload length exceeds blob"))?;
    let (data, range) = match plain[0] {
        COMPRESSION_NONE => {
            // Offsets in `stored`: the nonce, then the prefix.
            let start = NONCE_LEN + BLOB_PREFIX_LEN;
            (payload, Some(start..start + len))
        }
        COMPRESSION_ZSTD => {
            zstd_decompress(payload, raw_len as usize, scratch)
                .map_err(|e| Error::corrupt(object(), format!("zstd: {e}")))?;
            (&scratch[..], None)
        }
        other => {
            return Err(Error::corrupt(
                object(),
                format!("unknown compression {other}"),
            ))
        }
    };
    // Restore places the blobs of a large file at offsets summed from these
    // lengths: a blob of another length must be an error here, or two
    // mistakes (index and content) could cancel out in the final size check.
    if data.len() != raw_len as usize {
        return Err(Error::corrupt(
            object(),
            format!(
                "decodes to {} bytes but the index records {raw_len}",
                data.len()
            ),
        ));
    }
    if key.blob_id(data) != *id {
        return Err(Error::corrupt(object(), "content does not match its ID"));
    }
    Ok(range)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn padding_granules() {
        assert_eq!(padded_len(1), 64);
        assert_eq!(padded_len(64), 64);
        assert_eq!(padded_len(65), 128);
        assert_eq!(padded_len(1 << 20), 1 << 20);
        assert_eq!(padded_len((1 << 20) + 1), (1 << 20) + 8192);
        for n in [100u64, 5000, 300_000, 3_000_001] {
            let p = padded_len(n);
            assert!(p >= n && (p - n) as f64 / n as f64 <= 1.0 / 128.0 + 64.0 / n as f64);
        }
    }

    #[test]
    fn round_trip_compressible_and_random() {
        let k = MasterKey::from_parts([5; 32], [6; 32], [7; 32]);
        let text = b"the same words again and again ".repeat(1000);
        let mut random = vec![0u8; 100_000];
        crate::crypto::fill_random(&mut random);
        for (data, expect_small) in [(&text[..], true), (&random[..], false)] {
            let id = k.blob_id(data);
            let enc = encode_blob(&k, BlobType::Data, &id, data, 3);
            assert_eq!(enc.len() < data.len() / 2, expect_small);
            let dec = decode_blob(&k, BlobType::Data, &id, &enc, data.len() as u32).unwrap();
            assert_eq!(dec, data);
            // bound to its type and ID
            assert!(decode_blob(&k, BlobType::Tree, &id, &enc, data.len() as u32).is_err());
            let other = k.blob_id(b"x");
            assert!(decode_blob(&k, BlobType::Data, &other, &enc, data.len() as u32).is_err());
            // in place, with one scratch buffer reused across calls
            let mut scratch = b"left over from an earlier blob".to_vec();
            let mut buf = enc.clone();
            let raw = data.len() as u32;
            let dec = decode_blob_in_place(&k, BlobType::Data, &id, &mut buf, raw, &mut scratch);
            assert_eq!(dec.unwrap(), data);
            let mut flipped = enc.clone();
            flipped[NONCE_LEN + 3] ^= 1;
            let dec =
                decode_blob_in_place(&k, BlobType::Data, &id, &mut flipped, raw, &mut scratch);
            assert!(dec.is_err());
            let mut short = enc[..NONCE_LEN + TAG_LEN - 1].to_vec();
            let dec = decode_blob_in_place(&k, BlobType::Data, &id, &mut short, raw, &mut scratch);
            assert!(dec.is_err());
        }
    }

    /// Incompressible bytes (xorshift64).
    fn xorshift_bytes(n: usize, mut x: u64) -> Vec<u8> {
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    #[test]
    fn incompressible_blob_is_sealed_in_its_buffer() {
        let k = MasterKey::from_parts([5; 32], [6; 32], [7; 32]);
        let data = xorshift_bytes(200_000, 1);
        let id = k.blob_id(&data);
        let buf = blob_buffer(&data);
        let (cap, ptr) = (buf.capacity(), buf.as_ptr());
        let enc = encode_blob_buf(&k, BlobType::Data, &id, buf, 3);
        // same allocation, laid out as the format says: nonce, sealed prefix +
        // payload + padding, tag
        assert_eq!((enc.capacity(), enc.as_ptr()), (cap, ptr));
        let padded = padded_len((BLOB_PREFIX_LEN + data.len()) as u64) as usize;
        assert_eq!(enc.len(), NONCE_LEN + padded + TAG_LEN);
        let dec = decode_blob(&k, BlobType::Data, &id, &enc, data.len() as u32).unwrap();
        assert_eq!(dec, data);
    }

    #[test]
    fn tree_blobs_are_compressed_at_least_at_the_tree_level() {
        let k = MasterKey::from_parts([5; 32], [6; 32], [7; 32]);
        // A directory listing: names, numbers and hex chunk IDs.
        let json: String = (0..2000)
            .map(|i| {
                let id = k.blob_id(format!("{i}").as_bytes()).to_hex();
                format!(
                    r#"{{"name":"f{i:05}","size":{},"content":["{id}"]}},"#,
                    i * 37
                )
            })
            .collect();
        let data = json.as_bytes();
        let id = k.blob_id(data);
        let len = |t, level| encode_blob(&k, t, &id, data, level).len();
        assert_eq!(len(BlobType::Tree, 1), len(BlobType::Tree, TREE_ZSTD_LEVEL));
        // (the levels give different sizes on this data: 75 816 vs 82 984 bytes)
        assert_ne!(len(BlobType::Data, 1), len(BlobType::Tree, 1));
        // a higher configured level still applies to trees
        assert_eq!(len(BlobType::Tree, 19), len(BlobType::Data, 19));
    }

    #[test]
    fn a_blob_of_another_length_than_recorded_is_corrupt() {
        let k = MasterKey::from_parts([5; 32], [6; 32], [7; 32]);
        let random = xorshift_bytes(5000, 0x9e37_79b9_7f4a_7c15);
        // Stored compressed, and stored raw (incompressible).
        for data in [vec![7u8; 5000], random] {
            let id = k.blob_id(&data);
            let enc = encode_blob(&k, BlobType::Data, &id, &data, 3);
            let n = data.len() as u32;
            assert!(decode_blob(&k, BlobType::Data, &id, &enc, n).is_ok());
            for wrong in [n - 1, n + 1, n * 2] {
                // zstd refuses a too small output; every other case decodes.
                let err = decode_blob(&k, BlobType::Data, &id, &enc, wrong).unwrap_err();
                let zstd_refused = wrong < n && err.to_string().contains("zstd");
                assert!(
                    zstd_refused || err.to_string().contains("index records"),
                    "{err}"
                );
            }
        }
    }

    #[test]
    fn empty_blob() {
        let k = MasterKey::from_parts([5; 32], [6; 32], [7; 32]);
        let id = k.blob_id(b"");
        let enc = encode_blob(&k, BlobType::Data, &id, b"", 3);
        assert!(decode_blob(&k, BlobType::Data, &id, &enc, 0)
            .unwrap()
            .is_empty());
    }
}
