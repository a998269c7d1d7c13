//! `copy`: copy snapshots into a second repository (the off-site copy of the
//! 3-2-1 rule), transferring only the blobs the target lacks.
//!
//! Every blob is decrypted with the source's key and sealed again with the
//! target's, so the two repositories may have different passwords and keys.
//! When they share blob-ID keys (the target was made with
//! `cairn init --from-repo SOURCE`), blob IDs are equal in both and a data
//! blob the target already has is skipped without being read. Otherwise IDs
//! differ: each blob of a copied snapshot is read and hashed under the
//! target's key, and only blobs the target lacks are stored.
//!
//! The target is written like a backup, through the repository writer
//! ([`crate::writer`]): packs, then their index, then the snapshot, and, as in
//! a backup, every tree is rebuilt and looked up like any other blob, never
//! reused with everything below it because its ID is known: a tree can be in
//! a live pack of the target while the data under it is only in packs a
//! prune has marked (FORMAT.md §12), and a copy trusting that tree would
//! write a snapshot whose data the prune then deletes. So a concurrent prune
//! on the target is as safe as with backups. Snapshots already copied (same
//! `original`) are skipped.

use std::collections::{HashMap, HashSet};

use serde::Serialize;

use crate::backend::FileKind;
use crate::blob::BlobType;
use crate::error::{Error, Result};
use crate::id::Id;
use crate::repository::IndexedRepository;
use crate::snapshot::Snapshot;
use crate::tree::{NodeType, Tree};
use crate::writer::{write_session, Batch, Indexing, Writer};

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
    /// Blobs read from the source (trees included).
    pub blobs_read: u64,
    /// Of those, tree blobs: every tree of a copied snapshot is read, also
    /// when the target has it (it is rebuilt and looked up, as in a backup).
    pub trees_read: u64,
    /// Blobs stored in the target.
    pub blobs_stored: u64,
    /// Plaintext bytes of the blobs stored.
    pub bytes_stored: u64,
    /// Pack bytes written to the target.
    pub pack_bytes_written: u64,
}

struct Copier<'a, 'w> {
    src: &'a IndexedRepository<'a>,
    /// Saves to the target's writer, handed over in batches (many tiny
    /// files are many tiny blobs).
    out: Batch<'w, 'w, 'w>,
    same_ids: bool,
    /// Source blob ID → target blob ID (different-key mode), or blobs known
    /// present (same-key mode, mapping to themselves).
    data_map: HashMap<Id, Id>,
    tree_map: HashMap<Id, Id>,
    report: CopyReport,
}

impl<'w> Copier<'_, 'w> {
    fn dst(&self) -> &Writer<'w, 'w> {
        self.out.writer()
    }

    fn has(&self, t: BlobType, id: &Id) -> bool {
        self.dst().has(t, id)
    }

    fn store(&mut self, t: BlobType, id: Id, plain: &[u8]) -> Result<()> {
        let Some(ticket) = self.dst().claim(t, id) else {
            return Ok(());
        };
        self.report.blobs_stored += 1;
        self.report.bytes_stored += plain.len() as u64;
        self.out.save(ticket, t, id, plain)
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
                // A large file is many blobs: stop within it, not after it.
                crate::interrupt::check()?;
                if self.dst().failed() {
                    return Err(Error::Internal("writing to the target failed".into()));
                }
                let sid = to_read[next];
                next += 1;
                self.report.blobs_read += 1;
                let tid = if self.same_ids {
                    sid
                } else {
                    self.dst().repo().key().blob_id(plain)
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
        crate::interrupt::check()?;
        if self.dst().failed() {
            // The writer's own error is what the session reports.
            return Err(Error::Internal("writing to the target failed".into()));
        }
        let mut tree: Tree = self.src.load_tree(id)?;
        self.report.blobs_read += 1;
        self.report.trees_read += 1;
        for node in &mut tree.nodes {
            if node.node_type == NodeType::File && !node.content.is_empty() {
                node.content = self.copy_content(&node.content)?;
            }
            if let Some(sub) = node.subtree {
                node.subtree = Some(self.copy_tree(&sub)?);
            }
        }
        let bytes = tree.to_bytes();
        let tid = self.dst().repo().key().blob_id(&bytes);
        if !self.has(BlobType::Tree, &tid) {
            self.store(BlobType::Tree, tid, &bytes)?;
        }
        self.tree_map.insert(*id, tid);
        Ok(tid)
    }
}

/// Copy `snapshots` (all when empty) from `src` to `dst`. Both indexes must
/// be loaded.
///
/// # Errors
/// Storage errors; corrupt source objects (named).
pub fn copy(
    src: &IndexedRepository<'_>,
    dst: &IndexedRepository<'_>,
    snapshots: &[Id],
) -> Result<CopyReport> {
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
    let (report, stored) = write_session(dst, Indexing::Write, |writer| {
        let mut c = Copier {
            src,
            out: writer.batch(),
            same_ids,
            data_map: HashMap::new(),
            tree_map: HashMap::new(),
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
            c.out.flush()?; // the index before the snapshot that needs it
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
    })?;
    Ok(CopyReport {
        pack_bytes_written: stored.pack_bytes,
        ..report
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{Backend, LocalBackend};
    use crate::commands::backup::{backup, BackupOptions};
    use crate::index::IndexFile;
    use crate::repository::KdfCost;
    use crate::repository::Repository;

    const COST: KdfCost = KdfCost {
        memory_kib: 1024,
        iterations: 1,
    };

    fn open(dir: &std::path::Path) -> IndexedRepository<'static> {
        let r = Repository::open(Box::new(LocalBackend::new(dir)), b"pw").unwrap();
        r.into_indexed().unwrap()
    }

    /// What a prune that ran after `forget` leaves: the target's one index
    /// file lists its tree packs live and its data packs marked (the trees
    /// of the forgotten snapshot share a pack with a tree still needed).
    fn mark_data_packs(dir: &std::path::Path) {
        let backend = LocalBackend::new(dir);
        let repo = open(dir);
        let mut merged = IndexFile::default();
        for f in backend.list(FileKind::Index).unwrap() {
            let id: Id = f.name.parse().unwrap();
            let file: IndexFile = repo.load_json(FileKind::Index, &id).unwrap();
            merged.packs.extend(file.packs);
            backend.remove(FileKind::Index, &f.name).unwrap();
        }
        for p in &mut merged.packs {
            if p.blobs.iter().all(|b| b.blob_type == BlobType::Data) {
                p.marked = Some(chrono::Utc::now());
            }
        }
        repo.save_json(FileKind::Index, &merged).unwrap();
        for f in backend.list(FileKind::Snapshot).unwrap() {
            backend.remove(FileKind::Snapshot, &f.name).unwrap();
        }
    }

    /// Every data blob under `tree` must be in a live pack of `repo`.
    fn assert_data_live(repo: &IndexedRepository<'_>, tree: &Id) {
        let mut stack = vec![*tree];
        while let Some(id) = stack.pop() {
            for node in repo.load_tree(&id).unwrap().nodes {
                stack.extend(node.subtree);
                for blob in &node.content {
                    assert!(
                        repo.index().contains_live(BlobType::Data, blob),
                        "{} depends on blob {blob}, which is only in packs a prune marked",
                        node.name.display()
                    );
                }
            }
        }
    }

    /// A tree live in the target while the data below it is only in marked
    /// packs (FORMAT.md §12): a copy that reused the tree with everything
    /// below it wrote a snapshot whose data the prune then deleted.
    #[test]
    fn a_copy_never_depends_on_data_only_in_marked_packs() {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        std::fs::create_dir_all(data.join("sub")).unwrap();
        std::fs::write(data.join("sub/file"), vec![7u8; 300_000]).unwrap();
        std::fs::write(data.join("top"), b"top level").unwrap();
        let src_dir = tmp.path().join("src");
        let dst_dir = tmp.path().join("dst");
        let src = Repository::init(Box::new(LocalBackend::new(&src_dir)), b"pw", COST).unwrap();
        let src = src.load_index().unwrap();
        let dst_backend = Box::new(LocalBackend::new(&dst_dir));
        Repository::init_from(dst_backend, b"pw", COST, Some(&src)).unwrap();
        let snap = backup(
            &src,
            &BackupOptions {
                paths: vec![data.clone()],
                ..Default::default()
            },
        )
        .unwrap();
        let src = open(&src_dir);

        let first = copy(&src, &open(&dst_dir), &[]).unwrap();
        assert_eq!(first.copied.len(), 1);
        let dst = open(&dst_dir);
        let (_, copied) = dst.snapshots().unwrap().pop().unwrap();
        assert_data_live(&dst, &copied.tree);
        assert!(first.same_blob_ids);
        mark_data_packs(&dst_dir);

        let dst = open(&dst_dir);
        let again = copy(&src, &dst, &[snap.snapshot_id]).unwrap();
        assert_eq!(again.copied.len(), 1, "{again:?}");
        assert!(
            again.blobs_stored >= 2,
            "the data was stored again: {again:?}"
        );
        let dst = open(&dst_dir);
        let (_, copied) = dst.snapshots().unwrap().pop().unwrap();
        assert_data_live(&dst, &copied.tree);
    }
}
