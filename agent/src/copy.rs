//! `copy`: copy snapshots into a second repository (the off-site copy of the
//! 3-2-1 rule), transferring only the blobs the target lacks.
//!
//! Every blob is decrypted with the source's key and sealed again with the
//! target's, so the two repositories may have different passwords and keys.
//! When they share blob-ID keys (the target was made with
//! `cairn init --from-repo SOURCE`), blob IDs are equal in both and a blob or
//! whole tree the target already has is skipped without being read. Otherwise
//! IDs differ: each blob of a copied snapshot is read and hashed under the
//! target's key, and only blobs the target lacks are stored.
//!
//! The target is written like a backup: packs, then their index, then the
//! snapshot, so a concurrent prune on the target is as safe as with backups.
//! Snapshots already copied (same `original`) are skipped.

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use serde::Serialize;

use crate::backend::FileKind;
use crate::blob::{encode_blob, BlobType};
use crate::blobset::BlobSet;
use crate::constants::{INDEX_FLUSH_BLOBS, INDEX_FLUSH_INTERVAL};
use crate::error::{Error, Result};
use crate::id::Id;
use crate::index::IndexFile;
use crate::pack::PackWriter;
use crate::repository::Repository;
use crate::snapshot::Snapshot;
use crate::tree::{NodeType, Tree};

/// Largest run of adjacent blobs fetched with one read.
const MAX_READ_RUN: u64 = 16 << 20;

/// Result of a copy.
#[derive(Clone, Debug, Default, Serialize)]
pub struct CopyReport {
    /// Snapshots copied: (source ID, new target ID).
    pub copied: Vec<(Id, Id)>,
    /// Source snapshots skipped because the target has a copy already.
    pub skipped: Vec<Id>,
    /// Whether source and target share blob IDs (incremental copies).
    pub same_blob_ids: bool,
    /// Blobs read from the source.
    pub blobs_read: u64,
    /// Blobs stored in the target.
    pub blobs_stored: u64,
    /// Plaintext bytes of the blobs stored.
    pub bytes_stored: u64,
    /// Pack bytes written to the target.
    pub pack_bytes_written: u64,
}

struct Copier<'a> {
    src: &'a Repository,
    dst: &'a Repository,
    same_ids: bool,
    /// Source blob ID → target blob ID (different-key mode), or blobs known
    /// present (same-key mode, mapping to themselves).
    data_map: HashMap<Id, Id>,
    tree_map: HashMap<Id, Id>,
    /// Blobs stored by this run, not yet in the target's loaded index.
    pending: BlobSet,
    writers: [PackWriter; 2],
    index: IndexFile,
    last_index: Instant,
    report: CopyReport,
}

impl Copier<'_> {
    fn has(&self, t: BlobType, id: &Id) -> bool {
        self.dst.index().contains_live(t, id) || self.pending.contains(t, id)
    }

    fn store(&mut self, t: BlobType, id: Id, plain: &[u8]) -> Result<()> {
        if !self.pending.insert(t, id) {
            return Ok(());
        }
        let encoded = encode_blob(self.dst.key(), t, &id, plain, self.dst.config().zstd_level);
        self.report.blobs_stored += 1;
        self.report.bytes_stored += plain.len() as u64;
        let w = &mut self.writers[t.index()];
        w.add(t, id, &encoded, plain.len() as u32);
        if w.size() >= self.dst.config().pack_size {
            let full = std::mem::take(w);
            self.write_pack(full)?;
        }
        Ok(())
    }

    fn write_pack(&mut self, w: PackWriter) -> Result<()> {
        let p = w.finish(self.dst.key());
        self.report.pack_bytes_written += p.bytes.len() as u64;
        self.dst
            .backend()
            .write(FileKind::Pack, &p.id.to_hex(), p.bytes)?;
        self.index.add_pack(p.id, &p.blobs);
        // Index uploaded packs soon, as a backup does (prune's grace rule).
        if self.index.blob_count() >= INDEX_FLUSH_BLOBS
            || self.last_index.elapsed() >= INDEX_FLUSH_INTERVAL
        {
            let file = std::mem::take(&mut self.index);
            self.dst.save_json(FileKind::Index, &file)?;
            self.last_index = Instant::now();
        }
        Ok(())
    }

    /// Map a file's content to target IDs, storing what the target lacks.
    fn copy_content(&mut self, content: &[Id]) -> Result<Vec<Id>> {
        let mut to_read: Vec<Id> = Vec::new();
        let mut queued = HashSet::new();
        for id in content {
            if self.data_map.contains_key(id) {
                continue;
            }
            if self.same_ids && self.has(BlobType::Data, id) {
                self.data_map.insert(*id, *id);
            } else if queued.insert(*id) {
                to_read.push(*id);
            }
        }
        if !to_read.is_empty() {
            // Streamed: one blob in memory at a time, whatever the file size.
            let src = self.src;
            let mut next = 0;
            src.read_data_blobs(&to_read, MAX_READ_RUN, |plain| {
                let sid = to_read[next];
                next += 1;
                self.report.blobs_read += 1;
                let tid = if self.same_ids {
                    sid
                } else {
                    self.dst.key().blob_id(plain)
                };
                if !self.has(BlobType::Data, &tid) {
                    self.store(BlobType::Data, tid, plain)?;
                }
                self.data_map.insert(sid, tid);
                Ok(())
            })?;
        }
        content
            .iter()
            .map(|id| {
                self.data_map
                    .get(id)
                    .copied()
                    .ok_or_else(|| Error::Internal(format!("blob {id} not copied")))
            })
            .collect()
    }

    /// Copy a tree and everything below it; returns its target ID.
    fn copy_tree(&mut self, id: &Id) -> Result<Id> {
        if let Some(t) = self.tree_map.get(id) {
            return Ok(*t);
        }
        // With shared IDs, a tree the target has comes with everything below it.
        if self.same_ids && self.has(BlobType::Tree, id) {
            self.tree_map.insert(*id, *id);
            return Ok(*id);
        }
        let mut tree: Tree = self.src.load_tree(id)?;
        self.report.blobs_read += 1;
        for node in &mut tree.nodes {
            if node.node_type == NodeType::File && !node.content.is_empty() {
                node.content = self.copy_content(&node.content)?;
            }
            if let Some(sub) = node.subtree {
                node.subtree = Some(self.copy_tree(&sub)?);
            }
        }
        let bytes = tree.to_bytes();
        let tid = self.dst.key().blob_id(&bytes);
        if !self.has(BlobType::Tree, &tid) {
            self.store(BlobType::Tree, tid, &bytes)?;
        }
        self.tree_map.insert(*id, tid);
        Ok(tid)
    }

    /// Write the remaining packs and the index of everything stored so far.
    fn flush(&mut self) -> Result<()> {
        for i in 0..2 {
            let w = std::mem::take(&mut self.writers[i]);
            if !w.is_empty() {
                self.write_pack(w)?;
            }
        }
        if !self.index.packs.is_empty() {
            let file = std::mem::take(&mut self.index);
            self.dst.save_json(FileKind::Index, &file)?;
        }
        Ok(())
    }
}

/// Copy `snapshots` (all when empty) from `src` to `dst`. Both indexes must
/// be loaded.
///
/// # Errors
/// Storage errors; corrupt source objects (named).
pub fn copy(src: &Repository, dst: &Repository, snapshots: &[Id]) -> Result<CopyReport> {
    let all = src.snapshots()?;
    let selected: Vec<(Id, Snapshot)> = if snapshots.is_empty() {
        all
    } else {
        all.into_iter()
            .filter(|(id, _)| snapshots.contains(id))
            .collect()
    };
    let present: HashSet<Id> = dst
        .snapshots()?
        .into_iter()
        .flat_map(|(id, s)| [Some(id), s.original])
        .flatten()
        .collect();
    let same_ids = src.key().same_blob_ids(dst.key());
    let mut c = Copier {
        src,
        dst,
        same_ids,
        data_map: HashMap::new(),
        tree_map: HashMap::new(),
        pending: BlobSet::new(),
        writers: [PackWriter::new(), PackWriter::new()],
        index: IndexFile::default(),
        last_index: Instant::now(),
        report: CopyReport {
            same_blob_ids: same_ids,
            ..CopyReport::default()
        },
    };
    for (id, snap) in selected {
        let original = snap.original.unwrap_or(id);
        if present.contains(&original) || present.contains(&id) {
            c.report.skipped.push(id);
            continue;
        }
        let tree = c.copy_tree(&snap.tree)?;
        c.flush()?; // the index before the snapshot that needs it
        let copy = Snapshot {
            tree,
            original: Some(original),
            // The parent is an ID in the source repository: meaningless here.
            parent: None,
            ..snap
        };
        let new_id = dst.save_json(FileKind::Snapshot, &copy)?;
        c.report.copied.push((id, new_id));
    }
    Ok(c.report)
}
