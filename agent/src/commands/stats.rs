//! Repository statistics: how much is stored versus how much the snapshots
//! describe, which is the deduplication and compression ratio users care about.

use std::collections::HashSet;

use serde::Serialize;

use crate::backend::FileKind;
use crate::blob::BlobType;
use crate::constants::MAX_TREE_DEPTH;
use crate::error::{Error, Result};
use crate::id::Id;
use crate::repository::IndexedRepository;
use crate::tree::NodeType;

/// Figures for `cairn stats`.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RepoStats {
    /// Number of snapshots counted.
    pub snapshots: u64,
    /// Files over all counted snapshots (with repetition).
    pub total_files: u64,
    /// Bytes of files over all counted snapshots (with repetition): what a restore of each would write.
    pub total_size: u64,
    /// Distinct data blobs referenced by the counted snapshots.
    pub unique_blobs: u64,
    /// Plaintext bytes of those distinct blobs (after deduplication, before compression).
    pub unique_size: u64,
    /// Bytes stored in pack files (whole repository).
    pub stored_size: u64,
    /// Pack files.
    pub packs: u64,
    /// Blobs in the index (whole repository).
    pub indexed_blobs: u64,
    /// `total_size / stored_size`.
    pub ratio: f64,
}

/// Compute statistics over the given snapshots (all when empty).
///
/// # Errors
/// Storage errors; unreadable trees.
pub fn stats(repo: &IndexedRepository<'_>, snapshots: &[Id]) -> Result<RepoStats> {
    let mut s = RepoStats::default();
    let mut seen: HashSet<Id> = HashSet::new();
    let mut seen_trees: HashSet<Id> = HashSet::new();
    let ids: Vec<Id> = if snapshots.is_empty() {
        repo.snapshots()?.into_iter().map(|(id, _)| id).collect()
    } else {
        snapshots.to_vec()
    };
    for id in &ids {
        let snap: crate::snapshot::Snapshot = repo.load_json(FileKind::Snapshot, id)?;
        s.snapshots += 1;
        // As the snapshots record them: a crafted summary must not overflow.
        s.total_files = s.total_files.saturating_add(snap.summary.total_files);
        s.total_size = s.total_size.saturating_add(snap.summary.total_bytes);
        // Only distinct blobs count, so each distinct tree is read once, over
        // all snapshots: a snapshot whose trees share subtrees (two equal
        // directories; a crafted one at every level) costs no more than its
        // trees.
        let mut todo = vec![(snap.tree, 0usize)];
        while let Some((tree_id, depth)) = todo.pop() {
            if !seen_trees.insert(tree_id) {
                continue;
            }
            if depth > MAX_TREE_DEPTH {
                return Err(Error::corrupt(
                    format!("tree {tree_id}"),
                    format!("nested deeper than {MAX_TREE_DEPTH} directories"),
                ));
            }
            for node in repo.load_tree(&tree_id)?.nodes {
                if node.node_type == NodeType::File {
                    for b in &node.content {
                        if seen.insert(*b) {
                            if let Some(loc) = repo.index().lookup(BlobType::Data, b) {
                                s.unique_size += u64::from(loc.raw_length);
                            }
                        }
                    }
                }
                todo.extend(node.subtree.map(|t| (t, depth + 1)));
            }
        }
    }
    s.unique_blobs = seen.len() as u64;
    for p in repo.backend().list(FileKind::Pack)? {
        s.packs += 1;
        s.stored_size += p.size;
    }
    s.indexed_blobs = repo.index().len() as u64;
    s.ratio = if s.stored_size > 0 {
        s.total_size as f64 / s.stored_size as f64
    } else {
        0.0
    };
    Ok(s)
}
