//! A compact set of blob keys, for sets that grow with the number of new
//! blobs (the blobs a backup or a copy has claimed and not indexed yet).
//!
//! A `HashSet<(BlobType, Id)>` of a million keys takes ~70 MB (33-byte
//! buckets, a power-of-two bucket count at most 7/8 full) and, while it
//! grows, the old table as well. Here recent keys sit in a small hash set;
//! every [`RECENT_MAX`] insertions they are sorted and merged into one sorted
//! array of IDs per blob type: 32 bytes per key, grown in place.

use std::collections::HashSet;

use crate::blob::BlobType;
use crate::id::Id;

/// Keys kept in the hash set before they are merged into the sorted arrays.
const RECENT_MAX: usize = 1 << 16;

/// A set of (blob type, blob ID).
#[derive(Default)]
pub struct BlobSet {
    recent: HashSet<(BlobType, Id)>,
    /// Sorted IDs, one array per blob type (data, tree).
    sorted: [Vec<Id>; 2],
}

impl BlobSet {
    /// An empty set.
    pub fn new() -> BlobSet {
        BlobSet::default()
    }

    /// Whether the key is in the set.
    pub fn contains(&self, t: BlobType, id: &Id) -> bool {
        self.recent.contains(&(t, *id)) || self.sorted[t.index()].binary_search(id).is_ok()
    }

    /// Add a key; false if it was already there.
    pub fn insert(&mut self, t: BlobType, id: Id) -> bool {
        if self.sorted[t.index()].binary_search(&id).is_ok() || !self.recent.insert((t, id)) {
            return false;
        }
        if self.recent.len() >= RECENT_MAX {
            self.compact();
        }
        true
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.recent.len() + self.sorted.iter().map(Vec::len).sum::<usize>()
    }

    /// True when the set is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Move the recent keys into the sorted arrays.
    fn compact(&mut self) {
        let mut batch: [Vec<Id>; 2] = Default::default();
        for (t, id) in self.recent.drain() {
            batch[t.index()].push(id);
        }
        for (sorted, mut add) in self.sorted.iter_mut().zip(batch) {
            add.sort_unstable();
            merge_into(sorted, &add);
        }
        self.recent.shrink_to(RECENT_MAX);
    }
}

/// Merge the sorted `add` into the sorted `v`, in place: `v` grows by exactly
/// `add.len()` and the merge fills it from the back, so no second array of
/// `v`'s size is ever allocated.
fn merge_into(v: &mut Vec<Id>, add: &[Id]) {
    if add.is_empty() {
        return;
    }
    let old = v.len();
    v.reserve_exact(add.len());
    v.resize(old + add.len(), Id::default());
    let (mut i, mut j) = (old, add.len());
    for k in (0..v.len()).rev() {
        if j == 0 {
            break; // the rest of `v` is already in place
        }
        if i > 0 && v[i - 1] > add[j - 1] {
            v[k] = v[i - 1];
            i -= 1;
        } else {
            v[k] = add[j - 1];
            j -= 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u64) -> Id {
        Id(*blake3::hash(&n.to_le_bytes()).as_bytes())
    }

    #[test]
    fn set_semantics_across_compactions() {
        let mut s = BlobSet::new();
        let n = (RECENT_MAX * 3 + 123) as u64;
        for i in 0..n {
            assert!(s.insert(BlobType::Data, id(i)), "new key {i}");
            // every key is found again, before and after it is compacted
            assert!(!s.insert(BlobType::Data, id(i / 2)));
        }
        assert_eq!(s.len(), n as usize);
        assert!(s.sorted[0].windows(2).all(|w| w[0] < w[1]));
        for i in 0..n {
            assert!(s.contains(BlobType::Data, &id(i)));
            assert!(!s.contains(BlobType::Tree, &id(i)), "types are separate");
        }
        for i in n..n + 1000 {
            assert!(!s.contains(BlobType::Data, &id(i)));
        }
        assert!(s.insert(BlobType::Tree, id(1)));
        assert!(!s.insert(BlobType::Tree, id(1)));
        assert_eq!(s.len(), n as usize + 1);
    }

    #[test]
    fn merge_into_keeps_order() {
        let mut v: Vec<Id> = (0..50u8).map(|b| Id([b * 2; 32])).collect();
        let add: Vec<Id> = (0..60u8).map(|b| Id([b * 2 + 1; 32])).collect();
        merge_into(&mut v, &add);
        assert_eq!(v.len(), 110);
        assert!(v.windows(2).all(|w| w[0] < w[1]));
        let mut e = Vec::new();
        merge_into(&mut e, &add);
        assert_eq!(e, add);
    }
}
