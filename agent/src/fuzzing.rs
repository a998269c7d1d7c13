//! Entry points for the fuzz targets in `fuzz/` (feature `fuzzing`): each
//! takes bytes as an attacker could store them and runs the reader that a
//! command would run on them. Anything a key holder can write is fed as
//! plaintext sealed with a fixed key, so the fuzzer reaches the parsers
//! behind the authentication. None of these may panic; errors are fine.

use crate::blob::{blob_aad, decode_blob, BlobType};
use crate::crypto::{aad, MasterKey};
use crate::id::Id;
use crate::index::{Index, IndexFile};
use crate::pack;
use crate::repository::{decode_metadata, parse_key_file, Config};
use crate::snapshot::Snapshot;
use crate::tree::Tree;

fn key() -> MasterKey {
    MasterKey::from_parts([1; 32], [2; 32], [3; 32])
}

/// A tree blob's plaintext: decoded and checked as restore, check and copy do.
pub fn tree(data: &[u8]) {
    if let Ok(tree) = serde_json::from_slice::<Tree>(data) {
        if tree.validate().is_ok() {
            for n in &tree.nodes {
                let _ = tree.find(&n.name.0);
            }
        }
    }
}

/// A sealed pack header's plaintext (and the 4-byte trailer case).
pub fn pack_header(data: &[u8]) {
    let k = key();
    let id = Id::of_stored(data);
    let sealed = k.seal(aad::PACK_HEADER, data);
    let _ = pack::parse_header(&k, &id, &sealed, u64::from(u32::MAX));
    let _ = pack::read_header(&k, &id, data);
}

/// A blob's plaintext (prefix, payload): first byte picks the type, the
/// next four the raw length the index would claim.
pub fn blob(data: &[u8]) {
    let (Some(&t), Some(len)) = (data.first(), data.get(1..5)) else {
        return;
    };
    let t = if t & 1 == 0 {
        BlobType::Data
    } else {
        BlobType::Tree
    };
    let raw_len = u32::from_le_bytes([len[0], len[1], len[2], len[3]]) % (8 << 20);
    let k = key();
    let id = k.blob_id(&data[5..]);
    let stored = k.seal(&blob_aad(t, &id), &data[5..]);
    let _ = decode_blob(&k, t, &id, &stored, raw_len);
}

/// A metadata file's plaintext (flag byte, JSON or zstd of JSON), parsed as
/// index, snapshot and config.
pub fn metadata(data: &[u8]) {
    let k = key();
    for domain in [aad::INDEX, aad::SNAPSHOT, aad::CONFIG] {
        let stored = k.seal(domain, data);
        let Ok(json) = decode_metadata(&k, domain, &stored, "fuzz") else {
            continue;
        };
        if domain == aad::INDEX {
            index_json(&json);
        } else if domain == aad::SNAPSHOT {
            let _ = serde_json::from_slice::<Snapshot>(&json);
        } else if let Ok(c) = serde_json::from_slice::<Config>(&json) {
            if c.chunker.validate().is_ok() {
                let _ = crate::chunker::Chunker::new(&[0; 32], c.chunker);
            }
        }
    }
}

/// An index file's JSON, merged into an index and looked up as a backup does.
pub fn index_json(json: &[u8]) {
    if let Ok(file) = serde_json::from_slice::<IndexFile>(json) {
        let mut index = Index::new();
        index.add_file(&file);
        index.finish();
        for p in &file.packs {
            for b in &p.blobs {
                let _ = index.lookup(b.blob_type, &b.id);
            }
        }
    }
}

/// A key file (plain JSON), named by its hash as `open` requires. The
/// derivation itself is not run: its cost is capped before it would be.
pub fn key_file(data: &[u8]) {
    let name = Id::of_stored(data).to_hex();
    let _ = parse_key_file(&name, data);
}
