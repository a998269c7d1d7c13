//! The index: where each blob lives (pack, offset, length). On storage, index
//! files list packs and their blobs; in memory, one sorted array of 48-byte
//! entries answers lookups by binary search.
//!
//! A pack is either *live* or *marked* for deletion by `prune` (with the time
//! of marking). Backups deduplicate only against live packs; reads (restore,
//! check, trees) use any copy, live first. When index files disagree, live
//! wins: a pack listed live by any file is live (see `docs/FORMAT.md`, prune).

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::blob::BlobType;
use crate::id::Id;
use crate::pack::PackedBlob;

/// One blob as recorded in an index file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexBlob {
    /// Blob ID.
    pub id: Id,
    /// Blob type.
    #[serde(rename = "type")]
    pub blob_type: BlobType,
    /// Offset in the pack.
    pub offset: u32,
    /// Encoded length in the pack.
    pub length: u32,
    /// Plaintext length.
    pub raw_length: u32,
}

/// One pack as recorded in an index file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexPack {
    /// Pack ID (its file name).
    pub id: Id,
    /// Blobs in the pack.
    pub blobs: Vec<IndexBlob>,
    /// Set when `prune` marked the pack for deletion: the time of marking.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub marked: Option<DateTime<Utc>>,
}

/// Contents of an index file.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexFile {
    /// Packs this file describes.
    pub packs: Vec<IndexPack>,
}

impl IndexFile {
    /// Record a pack.
    pub fn add_pack(&mut self, pack: Id, blobs: &[PackedBlob]) {
        self.packs.push(IndexPack {
            id: pack,
            blobs: blobs
                .iter()
                .map(|b| IndexBlob {
                    id: b.id,
                    blob_type: b.blob_type,
                    offset: b.offset,
                    length: b.length,
                    raw_length: b.raw_length,
                })
                .collect(),
            marked: None,
        });
    }

    /// Number of blobs listed.
    pub fn blob_count(&self) -> usize {
        self.packs.iter().map(|p| p.blobs.len()).sum()
    }
}

/// Where a blob is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlobLocation {
    /// Pack holding the blob.
    pub pack: Id,
    /// Offset in the pack.
    pub offset: u32,
    /// Encoded length.
    pub length: u32,
    /// Plaintext length.
    pub raw_length: u32,
}

const TREE_BIT: u32 = 1 << 31;

/// 48 bytes: the whole per-blob memory cost of the in-memory index.
#[derive(Clone, Copy, Debug)]
struct Entry {
    id: Id,
    /// Pack number (index into `packs`); the top bit marks tree blobs.
    pack_and_type: u32,
    offset: u32,
    length: u32,
    raw_length: u32,
}

impl Entry {
    fn blob_type(&self) -> BlobType {
        if self.pack_and_type & TREE_BIT != 0 {
            BlobType::Tree
        } else {
            BlobType::Data
        }
    }
    fn key(&self) -> (Id, BlobType) {
        (self.id, self.blob_type())
    }
}

/// The in-memory index of a repository.
#[derive(Default)]
pub struct Index {
    packs: Vec<Id>,
    pack_numbers: HashMap<Id, u32>,
    /// Per pack: listed live by some index file.
    live: Vec<bool>,
    entries: Vec<Entry>,
    sorted: bool,
}

impl Index {
    /// An empty index.
    pub fn new() -> Index {
        Index {
            sorted: true,
            ..Index::default()
        }
    }

    /// Add all blobs of an index file. Call [`Index::finish`] before lookups.
    pub fn add_file(&mut self, file: &IndexFile) {
        for p in &file.packs {
            let n = self.pack_number(p.id);
            if p.marked.is_none() {
                self.live[n as usize] = true;
            }
            for b in &p.blobs {
                self.push(n, b.id, b.blob_type, b.offset, b.length, b.raw_length);
            }
        }
    }

    /// Add the blobs of one pack. Call [`Index::finish`] before lookups.
    pub fn add_pack(&mut self, pack: Id, blobs: &[PackedBlob]) {
        let n = self.pack_number(pack);
        self.live[n as usize] = true;
        for b in blobs {
            self.push(n, b.id, b.blob_type, b.offset, b.length, b.raw_length);
        }
    }

    fn pack_number(&mut self, pack: Id) -> u32 {
        let next = self.packs.len() as u32;
        *self.pack_numbers.entry(pack).or_insert_with(|| {
            self.packs.push(pack);
            self.live.push(false);
            next
        })
    }

    fn push(&mut self, pack: u32, id: Id, t: BlobType, offset: u32, length: u32, raw_length: u32) {
        let type_bit = if t == BlobType::Tree { TREE_BIT } else { 0 };
        self.entries.push(Entry {
            id,
            pack_and_type: pack | type_bit,
            offset,
            length,
            raw_length,
        });
        self.sorted = false;
    }

    /// Sort for lookups, dropping duplicate copies of a blob (kept: a copy in a
    /// live pack if there is one, else the first pack added).
    pub fn finish(&mut self) {
        if !self.sorted {
            let live = &self.live;
            // Unstable (no scratch buffer of half the entries); the pack
            // number breaks ties, so the first pack added wins among equals.
            self.entries.sort_unstable_by_key(|e| {
                let n = e.pack_and_type & !TREE_BIT;
                (e.key(), !live[n as usize], n)
            });
            self.entries.dedup_by_key(|e| e.key());
            self.entries.shrink_to_fit();
            self.sorted = true;
        }
    }

    fn find(&self, t: BlobType, id: &Id) -> Option<&Entry> {
        debug_assert!(self.sorted, "Index::finish must be called before lookups");
        self.entries
            .binary_search_by(|e| e.key().cmp(&(*id, t)))
            .ok()
            .map(|i| &self.entries[i])
    }

    /// Position of the blob in the sorted index (`0..len()`), if indexed: a
    /// dense key for per-blob bit sets (prune marks needed blobs with one bit).
    pub fn position(&self, t: BlobType, id: &Id) -> Option<usize> {
        debug_assert!(self.sorted, "Index::finish must be called before lookups");
        self.entries
            .binary_search_by(|e| e.key().cmp(&(*id, t)))
            .ok()
    }

    /// Location of the blob at `position`.
    pub fn location_at(&self, position: usize) -> Option<BlobLocation> {
        self.entries.get(position).map(|e| BlobLocation {
            pack: self.packs[(e.pack_and_type & !TREE_BIT) as usize],
            offset: e.offset,
            length: e.length,
            raw_length: e.raw_length,
        })
    }

    /// Where the blob is stored, if indexed.
    pub fn lookup(&self, t: BlobType, id: &Id) -> Option<BlobLocation> {
        self.find(t, id).map(|e| BlobLocation {
            pack: self.packs[(e.pack_and_type & !TREE_BIT) as usize],
            offset: e.offset,
            length: e.length,
            raw_length: e.raw_length,
        })
    }

    /// Whether the blob is indexed (in any pack, live or marked): it can be read.
    pub fn contains(&self, t: BlobType, id: &Id) -> bool {
        self.find(t, id).is_some()
    }

    /// Whether the blob is in a live pack: a new snapshot may refer to it
    /// without storing it again. Backups deduplicate with this, never with
    /// [`Index::contains`], so they cannot revive data prune has marked.
    pub fn contains_live(&self, t: BlobType, id: &Id) -> bool {
        self.find(t, id)
            .is_some_and(|e| self.live[(e.pack_and_type & !TREE_BIT) as usize])
    }

    /// Whether a pack is listed live by some index file.
    pub fn is_live(&self, pack: &Id) -> bool {
        self.pack_numbers
            .get(pack)
            .is_some_and(|&n| self.live[n as usize])
    }

    /// Number of distinct blobs.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when no blob is indexed.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Packs referenced by the index.
    pub fn packs(&self) -> &[Id] {
        &self.packs
    }

    /// Every indexed blob with its location.
    pub fn iter(&self) -> impl Iterator<Item = (BlobType, Id, BlobLocation)> + '_ {
        self.entries.iter().map(|e| {
            (
                e.blob_type(),
                e.id,
                BlobLocation {
                    pack: self.packs[(e.pack_and_type & !TREE_BIT) as usize],
                    offset: e.offset,
                    length: e.length,
                    raw_length: e.raw_length,
                },
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_is_48_bytes() {
        assert_eq!(std::mem::size_of::<Entry>(), 48);
    }

    #[test]
    fn lookup_by_type_and_id() {
        let mut idx = Index::new();
        let (a, b, pack) = (Id([1; 32]), Id([2; 32]), Id([9; 32]));
        let blobs = [
            PackedBlob {
                blob_type: BlobType::Data,
                id: a,
                offset: 0,
                length: 10,
                raw_length: 20,
            },
            PackedBlob {
                blob_type: BlobType::Tree,
                id: b,
                offset: 10,
                length: 5,
                raw_length: 5,
            },
        ];
        let mut file = IndexFile::default();
        file.add_pack(pack, &blobs);
        let json = serde_json::to_vec(&file).unwrap();
        idx.add_file(&serde_json::from_slice(&json).unwrap());
        idx.add_pack(Id([8; 32]), &blobs[..1]); // duplicate copy elsewhere
        idx.finish();
        assert_eq!(idx.len(), 2);
        let loc = idx.lookup(BlobType::Data, &a).unwrap();
        assert_eq!(
            (loc.pack, loc.offset, loc.length, loc.raw_length),
            (pack, 0, 10, 20)
        );
        assert!(idx.contains(BlobType::Tree, &b));
        assert!(!idx.contains(BlobType::Data, &b));
        assert!(!idx.contains(BlobType::Tree, &a));
    }
}
