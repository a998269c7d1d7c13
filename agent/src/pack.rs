//! Pack files: many encoded blobs followed by an encrypted header listing
//! them, then the header's length. A pack is named by the BLAKE3 hash of its
//! bytes, so it is written once and never changes.
//!
//! ```text
//! blob_0 || blob_1 || ... || seal(header) || u32_le(len(seal(header)))
//! header entry = type u8 || id [32] || offset u32 || length u32 || raw_length u32
//! ```

use crate::backend::StagedFile;
use crate::blob::BlobType;
use crate::crypto::{aad, MasterKey};
use crate::error::{Error, Result};
use crate::id::Id;

/// Size of one header entry in bytes.
pub const HEADER_ENTRY_LEN: usize = 1 + 32 + 4 + 4 + 4;

/// One blob's place in a pack.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PackedBlob {
    /// Blob type.
    pub blob_type: BlobType,
    /// Blob ID.
    pub id: Id,
    /// Offset of the encoded blob in the pack.
    pub offset: u32,
    /// Length of the encoded blob.
    pub length: u32,
    /// Length of the plaintext (uncompressed) blob.
    pub raw_length: u32,
}

/// Builds one pack in memory.
#[derive(Default)]
pub struct PackWriter {
    data: Vec<u8>,
    blobs: Vec<PackedBlob>,
}

/// A finished pack, ready to store.
pub struct FinishedPack {
    /// Name of the pack (hash of `bytes`).
    pub id: Id,
    /// The pack file.
    pub bytes: Vec<u8>,
    /// The blobs it holds.
    pub blobs: Vec<PackedBlob>,
}

impl PackWriter {
    /// An empty pack.
    pub fn new() -> PackWriter {
        PackWriter::default()
    }

    /// Bytes of blob data so far.
    pub fn size(&self) -> usize {
        self.data.len()
    }

    /// Number of blobs so far.
    pub fn len(&self) -> usize {
        self.blobs.len()
    }

    /// True when no blob was added.
    pub fn is_empty(&self) -> bool {
        self.blobs.is_empty()
    }

    /// Append an encoded blob.
    pub fn add(&mut self, blob_type: BlobType, id: Id, encoded: &[u8], raw_length: u32) {
        if self.data.is_empty() {
            self.data
                .reserve(crate::constants::PACK_TARGET_SIZE + crate::constants::CHUNK_MAX);
        }
        self.blobs.push(PackedBlob {
            blob_type,
            id,
            offset: self.data.len() as u32,
            length: encoded.len() as u32,
            raw_length,
        });
        self.data.extend_from_slice(encoded);
    }

    /// Append the encrypted header and name the pack.
    pub fn finish(mut self, key: &MasterKey) -> FinishedPack {
        let header = key.seal(aad::PACK_HEADER, &encode_header(&self.blobs));
        self.data.extend_from_slice(&header);
        self.data
            .extend_from_slice(&(header.len() as u32).to_le_bytes());
        FinishedPack {
            id: Id::of_stored(&self.data),
            bytes: self.data,
            blobs: self.blobs,
        }
    }
}

/// Builds one pack directly in a staged backend file ([`Backend::stage`]),
/// hashing as it goes, so no pack-sized buffer is held in memory.
///
/// [`Backend::stage`]: crate::backend::Backend::stage
pub struct StagedPackWriter {
    out: Box<dyn StagedFile>,
    hasher: blake3::Hasher,
    len: usize,
    blobs: Vec<PackedBlob>,
}

/// A finished staged pack: complete on storage under a temporary name until
/// [`StagedPack::commit`] names it.
pub struct StagedPack {
    /// Name of the pack (hash of its bytes).
    pub id: Id,
    /// Size of the pack file in bytes.
    pub size: u64,
    /// The blobs it holds.
    pub blobs: Vec<PackedBlob>,
    file: Box<dyn StagedFile>,
}

impl StagedPack {
    /// Flush the pack to stable storage and give it its name; returns its blobs.
    ///
    /// # Errors
    /// Storage errors.
    pub fn commit(self) -> Result<Vec<PackedBlob>> {
        self.file.commit(&self.id.to_hex())?;
        Ok(self.blobs)
    }
}

impl StagedPackWriter {
    /// An empty pack written to `out`.
    pub fn new(out: Box<dyn StagedFile>) -> StagedPackWriter {
        StagedPackWriter {
            out,
            hasher: blake3::Hasher::new(),
            len: 0,
            blobs: Vec::new(),
        }
    }

    /// Bytes of blob data so far.
    pub fn size(&self) -> usize {
        self.len
    }

    fn append(&mut self, bytes: &[u8]) -> Result<()> {
        self.out.write_all(bytes)?;
        self.hasher.update(bytes);
        self.len += bytes.len();
        Ok(())
    }

    /// Append an encoded blob.
    ///
    /// # Errors
    /// Storage errors (a full disk).
    pub fn add(
        &mut self,
        blob_type: BlobType,
        id: Id,
        encoded: &[u8],
        raw_length: u32,
    ) -> Result<()> {
        let offset = u32::try_from(self.len)
            .map_err(|_| Error::Internal("pack larger than 4 GiB".into()))?;
        self.append(encoded)?;
        self.blobs.push(PackedBlob {
            blob_type,
            id,
            offset,
            length: encoded.len() as u32,
            raw_length,
        });
        Ok(())
    }

    /// Append the encrypted header and name the pack (not yet committed).
    ///
    /// # Errors
    /// Storage errors.
    pub fn finish(mut self, key: &MasterKey) -> Result<StagedPack> {
        let header = key.seal(aad::PACK_HEADER, &encode_header(&self.blobs));
        self.append(&header)?;
        self.append(&(header.len() as u32).to_le_bytes())?;
        Ok(StagedPack {
            id: Id(*self.hasher.finalize().as_bytes()),
            size: self.len as u64,
            blobs: self.blobs,
            file: self.out,
        })
    }
}

fn encode_header(blobs: &[PackedBlob]) -> Vec<u8> {
    let mut h = Vec::with_capacity(blobs.len() * HEADER_ENTRY_LEN);
    for b in blobs {
        h.push(b.blob_type.as_byte());
        h.extend_from_slice(&b.id.0);
        h.extend_from_slice(&b.offset.to_le_bytes());
        h.extend_from_slice(&b.length.to_le_bytes());
        h.extend_from_slice(&b.raw_length.to_le_bytes());
    }
    h
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut w = [0u8; 4];
    w.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(w)
}

/// Length of the sealed header, read from the last 4 bytes of a pack of
/// `pack_len` bytes.
///
/// # Errors
/// [`Error::Corrupt`] when the trailer is missing or points outside the pack.
pub fn header_len_from_trailer(pack: &Id, pack_len: u64, trailer: &[u8]) -> Result<u32> {
    if trailer.len() != 4 || pack_len < 4 {
        return Err(Error::corrupt(
            format!("pack {pack}"),
            "truncated: no header trailer",
        ));
    }
    let len = u32_at(trailer, 0);
    if u64::from(len) + 4 > pack_len {
        return Err(Error::corrupt(
            format!("pack {pack}"),
            format!("header length {len} exceeds pack size {pack_len}"),
        ));
    }
    Ok(len)
}

/// Decrypt and parse a pack header and check it against the pack's layout.
///
/// # Errors
/// [`Error::Corrupt`] naming the pack when the header does not authenticate or is malformed.
pub fn parse_header(
    key: &MasterKey,
    pack: &Id,
    sealed: &[u8],
    data_len: u64,
) -> Result<Vec<PackedBlob>> {
    let object = format!("pack {pack} header");
    let plain = key.open(aad::PACK_HEADER, sealed, &object)?;
    if plain.len() % HEADER_ENTRY_LEN != 0 {
        return Err(Error::corrupt(
            object,
            "header length is not a whole number of entries",
        ));
    }
    let mut blobs = Vec::with_capacity(plain.len() / HEADER_ENTRY_LEN);
    for e in plain.chunks_exact(HEADER_ENTRY_LEN) {
        let blob_type = BlobType::from_byte(e[0])
            .ok_or_else(|| Error::corrupt(&object, "unknown blob type"))?;
        let mut id = [0u8; 32];
        id.copy_from_slice(&e[1..33]);
        let b = PackedBlob {
            blob_type,
            id: Id(id),
            offset: u32_at(e, 33),
            length: u32_at(e, 37),
            raw_length: u32_at(e, 41),
        };
        if u64::from(b.offset) + u64::from(b.length) > data_len {
            return Err(Error::corrupt(
                &object,
                format!("blob {} lies outside the pack", b.id),
            ));
        }
        blobs.push(b);
    }
    Ok(blobs)
}

/// Parse the header of a whole pack held in memory.
///
/// # Errors
/// As [`parse_header`], plus a truncated pack.
pub fn read_header(key: &MasterKey, pack: &Id, bytes: &[u8]) -> Result<Vec<PackedBlob>> {
    let total = bytes.len() as u64;
    let trailer = bytes.get(bytes.len().saturating_sub(4)..).unwrap_or(&[]);
    let hlen = header_len_from_trailer(pack, total, trailer)? as usize;
    let start = bytes.len() - 4 - hlen;
    parse_header(key, pack, &bytes[start..bytes.len() - 4], start as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blob::{decode_blob, encode_blob};

    #[test]
    fn pack_round_trip_and_corruption() {
        let k = MasterKey::from_parts([1; 32], [2; 32], [3; 32]);
        let mut w = PackWriter::new();
        let blobs: Vec<Vec<u8>> = (0..5u8).map(|i| vec![i; 1000 * (i as usize + 1)]).collect();
        for b in &blobs {
            let id = k.blob_id(b);
            w.add(
                BlobType::Data,
                id,
                &encode_blob(&k, BlobType::Data, &id, b, 3),
                b.len() as u32,
            );
        }
        let p = w.finish(&k);
        assert_eq!(Id::of_stored(&p.bytes), p.id);
        let header = read_header(&k, &p.id, &p.bytes).unwrap();
        assert_eq!(header, p.blobs);
        for (h, b) in header.iter().zip(&blobs) {
            let enc = &p.bytes[h.offset as usize..(h.offset + h.length) as usize];
            assert_eq!(
                &decode_blob(&k, h.blob_type, &h.id, enc, h.raw_length).unwrap(),
                b
            );
        }
        // truncation and bit flips are errors, not panics
        for cut in [0, 1, 3, 4, 10, p.bytes.len() - 1] {
            assert!(read_header(&k, &p.id, &p.bytes[..cut]).is_err());
        }
        // the same blobs written to a staged file give an equivalent pack
        // (the header's nonce is random, so the bytes and name differ)
        let dir = tempfile::tempdir().unwrap();
        let backend = crate::backend::LocalBackend::new(dir.path());
        use crate::backend::{Backend, FileKind};
        backend.create().unwrap();
        std::fs::write(dir.path().join("config"), b"x").unwrap();
        let mut s = StagedPackWriter::new(backend.stage(FileKind::Pack).unwrap().unwrap());
        for h in &p.blobs {
            let enc = &p.bytes[h.offset as usize..(h.offset + h.length) as usize];
            s.add(h.blob_type, h.id, enc, h.raw_length).unwrap();
        }
        let staged = s.finish(&k).unwrap();
        let (sid, ssize) = (staged.id, staged.size);
        assert_eq!(ssize, p.bytes.len() as u64);
        assert_eq!(
            backend.list(FileKind::Pack).unwrap(),
            vec![],
            "not visible before commit"
        );
        assert_eq!(staged.commit().unwrap(), p.blobs);
        let stored = backend.read(FileKind::Pack, &sid.to_hex()).unwrap();
        assert_eq!(Id::of_stored(&stored), sid);
        assert_eq!(read_header(&k, &sid, &stored).unwrap(), p.blobs);
        let data_end = p
            .blobs
            .last()
            .map(|b| (b.offset + b.length) as usize)
            .unwrap();
        assert_eq!(stored[..data_end], p.bytes[..data_end]);
        // committing the same name twice never replaces the file
        let mut twice = StagedPackWriter::new(backend.stage(FileKind::Pack).unwrap().unwrap());
        for h in &p.blobs {
            let enc = &p.bytes[h.offset as usize..(h.offset + h.length) as usize];
            twice.add(h.blob_type, h.id, enc, h.raw_length).unwrap();
        }
        let mut twice = twice.finish(&k).unwrap();
        twice.id = sid;
        let err = twice.commit().unwrap_err();
        assert!(err.to_string().contains("already exists"), "{err}");
        // an abandoned pack leaves nothing behind
        let mut again = StagedPackWriter::new(backend.stage(FileKind::Pack).unwrap().unwrap());
        again
            .add(BlobType::Data, p.blobs[0].id, &p.bytes[..10], 10)
            .unwrap();
        drop(again);
        let leftovers = std::fs::read_dir(dir.path().join("data")).unwrap().count();
        assert_eq!(leftovers, 1, "only the pack's subdirectory");

        let mut bad = p.bytes.clone();
        let n = bad.len();
        bad[n - 10] ^= 0x40;
        assert!(read_header(&k, &p.id, &bad).is_err());
    }
}
