//! `repair index` and `repair snapshots`.
//!
//! `repair index`: rebuild the index from the packs themselves. After a pack
//! is lost or damaged, the old index still lists its blobs, so every later
//! backup deduplicates against data that is gone and every snapshot it
//! writes is unrestorable. The rebuilt index lists exactly the blobs whose
//! pack headers read and authenticate, so the next backup stores the missing
//! data again (files whose content is not all indexed are read again, trees
//! not indexed are written again).
//!
//! Not to be run while a prune runs: prune's marks are dropped (every pack is
//! live again; the next prune marks what is unused, which only delays
//! deletion), and the old index files are deleted once the new ones exist.
//! A pack that disappears meanwhile (a prune deleting it) makes repair give
//! up and leave the old index; so does any storage error other than a damaged
//! pack header. A pack whose header is damaged keeps the old index's entries
//! (its blobs are sealed one by one and may well be intact).
//!
//! `repair snapshots` ([`repair_snapshots`]): after data is lost for good,
//! write copies of the damaged snapshots without it, so that what is left
//! restores (restic's command of the same name).

use std::collections::{HashMap, HashSet};

use crate::backend::FileKind;
use crate::blob::BlobType;
use crate::commands::check::{read_pack_blobs, read_pack_header};
use crate::commands::damage::{Assessor, Damage};
use crate::constants::{INDEX_FLUSH_BLOBS, MAX_TREE_DEPTH};
use crate::error::{Error, Result};
use crate::id::Id;
use crate::index::IndexFile;
use crate::pack::PackedBlob;
use crate::repository::{IndexedRepository, Repository};
use crate::snapshot::Snapshot;
use crate::tree::{NodeType, Tree};
use crate::writer::{write_session, Indexing, Writer};

/// What `repair index` did.
#[derive(Debug, Default, serde::Serialize)]
pub struct IndexRepair {
    /// Packs whose headers were read and indexed.
    pub packs_indexed: u64,
    /// Blobs in the new index.
    pub blobs_indexed: u64,
    /// Packs whose header is damaged (the old index's entries for them are kept).
    pub packs_unreadable: Vec<(String, String)>,
    /// Blobs the old index listed in packs that are gone or unreadable.
    pub blobs_lost: u64,
    /// Index files written.
    pub index_files_written: u64,
    /// Old index files removed.
    pub index_files_removed: u64,
}

/// Rebuild the index from pack headers, then replace the old index files.
///
/// # Errors
/// Storage errors while listing, writing or removing; a pack that cannot be
/// read is reported in the result, not an error.
pub fn repair_index(repo: &Repository) -> Result<IndexRepair> {
    let mut report = IndexRepair::default();
    // Index files first: each lists only packs uploaded before it, so all of
    // them are in the pack listing that follows (unless deleted meanwhile).
    let old_files: Vec<String> = repo
        .backend()
        .list(FileKind::Index)?
        .into_iter()
        .map(|f| f.name)
        .filter(|n| n.parse::<Id>().is_ok())
        .collect();
    // What the old index promised, to count what is lost. A damaged index
    // file is skipped by load_index (and replaced here all the same).
    let old_index = repo.load_index()?;
    let promised: std::collections::HashMap<Id, u64> = {
        let mut m = std::collections::HashMap::new();
        for (_, _, loc) in old_index.index().iter() {
            *m.entry(loc.pack).or_insert(0) += 1;
        }
        m
    };
    let packs = repo.backend().list(FileKind::Pack)?;
    let mut present = std::collections::HashSet::new();
    let mut file = IndexFile::default();
    let mut written = Vec::new();
    let mut unreadable = std::collections::HashSet::new();
    for p in &packs {
        let Ok(id) = p.name.parse::<Id>() else {
            continue;
        };
        let blobs = match read_pack_header(repo, &id, p.size) {
            Ok(blobs) => blobs,
            // A damaged header: the blobs may still be intact (each is sealed
            // on its own), so what the old index knew of them is kept below.
            Err(e @ Error::Corrupt { .. }) => {
                tracing::warn!("pack {id}: {e}");
                report.packs_unreadable.push((id.to_hex(), e.to_string()));
                unreadable.insert(id);
                continue;
            }
            // Anything else (a timeout, a permission) says nothing about the
            // pack: stop before anything is replaced.
            Err(e) => {
                discard(repo, &written);
                return Err(e);
            }
        };
        present.insert(id);
        report.packs_indexed += 1;
        report.blobs_indexed += blobs.len() as u64;
        file.add_pack(id, &blobs);
        if file.blob_count() >= INDEX_FLUSH_BLOBS {
            written.push(repo.save_json(FileKind::Index, &std::mem::take(&mut file))?);
        }
    }
    // Packs with a damaged header keep the old index's entries.
    let mut kept: std::collections::HashMap<Id, Vec<PackedBlob>> = std::collections::HashMap::new();
    for (blob_type, id, loc) in old_index.index().iter() {
        if unreadable.contains(&loc.pack) {
            kept.entry(loc.pack).or_default().push(PackedBlob {
                blob_type,
                id,
                offset: loc.offset,
                length: loc.length,
                raw_length: loc.raw_length,
            });
        }
    }
    for (pack, blobs) in &kept {
        present.insert(*pack);
        report.blobs_indexed += blobs.len() as u64;
        file.add_pack(*pack, blobs);
    }
    if !file.packs.is_empty() {
        written.push(repo.save_json(FileKind::Index, &file)?);
    }
    // A prune deleting packs meanwhile would leave the new index listing
    // packs that are gone: then keep the old index, and say so.
    let now: std::collections::HashSet<String> = repo
        .backend()
        .list(FileKind::Pack)?
        .into_iter()
        .map(|f| f.name)
        .collect();
    if let Some(gone) = present.iter().find(|p| !now.contains(&p.to_hex())) {
        discard(repo, &written);
        return Err(Error::Refused(format!(
            "pack {gone} disappeared while the index was rebuilt (is a prune running?): nothing was changed; run repair again when it is done"
        )));
    }
    report.index_files_written = written.len() as u64;
    report.blobs_lost = promised
        .iter()
        .filter(|(pack, _)| !present.contains(*pack))
        .map(|(_, n)| n)
        .sum();
    let written: std::collections::HashSet<String> = written.iter().map(Id::to_hex).collect();
    for name in old_files.into_iter().filter(|n| !written.contains(n)) {
        match repo.backend().remove(FileKind::Index, &name) {
            Ok(()) | Err(crate::error::Error::NotFound(_)) => report.index_files_removed += 1,
            Err(e) => return Err(e),
        }
    }
    Ok(report)
}

/// Remove the index files this run wrote, when it gives up: the old ones
/// stay as they were. (Left behind, they would only duplicate entries.)
fn discard(repo: &Repository, written: &[Id]) {
    for id in written {
        if let Err(e) = repo.backend().remove(FileKind::Index, &id.to_hex()) {
            tracing::warn!("index {id} written by the stopped repair stays: {e}");
        }
    }
}

/// Options of `repair snapshots`.
#[derive(Clone, Debug, Default)]
pub struct SnapshotRepairOptions {
    /// The snapshots to repair (every snapshot when empty).
    pub snapshots: Vec<Id>,
    /// Remove each damaged snapshot once its repaired copy is written (and
    /// those that cannot be repaired at all).
    pub forget: bool,
    /// Decide and report, write nothing.
    pub dry_run: bool,
    /// Also read every pack whole and count the blobs that do not decode as
    /// lost (what `check --read-data` finds inside packs that are present).
    pub read_data: bool,
}

/// One snapshot `repair snapshots` rewrote.
#[derive(Debug, serde::Serialize)]
pub struct RepairedSnapshot {
    /// The damaged snapshot.
    pub snapshot: Id,
    /// Its repaired copy (`None` in a dry run).
    pub repaired: Option<Id>,
    /// Files that lost data: kept with what is left, renamed `NAME.repaired`.
    pub damaged_files: u64,
    /// Directories whose tree is lost: now empty, renamed `NAME.repaired`.
    pub damaged_dirs: u64,
    /// Up to ten of the damaged paths, as they were named.
    pub examples: Vec<String>,
}

/// What `repair snapshots` did.
#[derive(Debug, Default, serde::Serialize)]
pub struct SnapshotRepair {
    /// Snapshots read.
    pub snapshots: u64,
    /// Damaged snapshots and their repaired copies.
    pub repaired: Vec<RepairedSnapshot>,
    /// Snapshots whose root tree is lost: nothing of them can be restored.
    pub unrepairable: Vec<Id>,
    /// Damaged snapshots removed (`--forget`).
    pub forgotten: u64,
    /// Whether this was a dry run.
    pub dry_run: bool,
}

/// The name a damaged entry is given, so that a restore never hands an
/// application a truncated file or an empty directory under its own name.
pub const REPAIRED_SUFFIX: &[u8] = b".repaired";

/// The longest entry name most filesystems take (NAME_MAX).
const NAME_MAX: usize = 255;

/// `STEM.repaired`, or `STEM.repaired-N` for `n` > 1, with the stem cut so
/// that the whole is at most [`NAME_MAX`] bytes.
fn repaired_name(stem: &[u8], n: u32) -> Vec<u8> {
    let mut suffix = REPAIRED_SUFFIX.to_vec();
    if n > 1 {
        suffix.extend_from_slice(format!("-{n}").as_bytes());
    }
    let keep = stem.len().min(NAME_MAX.saturating_sub(suffix.len()));
    let mut name = stem[..keep].to_vec();
    name.extend_from_slice(&suffix);
    name
}

/// The tag every repaired snapshot gets.
pub const REPAIRED_TAG: &str = "repaired";

/// Write a copy of every damaged snapshot without what is lost: a file that
/// lost data keeps the blobs that are left (its size shrinks to theirs) and
/// is renamed `NAME.repaired`; a directory whose tree is lost becomes an
/// empty directory `NAME.repaired`. The copy is tagged `repaired`, and its
/// `original` names the damaged snapshot. The damaged snapshot itself stays
/// unless `forget` is set. Lost means what `check` reports as lost: a blob in
/// no index, a tree that does not read, and with `read_data` a blob that
/// does not decode inside a pack that is present. The index must be whole
/// first: the repair refuses while an index file cannot be read or the index
/// lists packs that storage no longer holds (`repair index` rebuilds it).
///
/// # Errors
/// [`Error::Refused`] for the cases above (nothing changed); storage errors
/// (nothing lost is mistaken for one: a timeout stops the repair instead of
/// cutting a directory out).
pub fn repair_snapshots(repo: &Repository, opts: &SnapshotRepairOptions) -> Result<SnapshotRepair> {
    let mut report = SnapshotRepair {
        dry_run: opts.dry_run,
        ..SnapshotRepair::default()
    };
    // Snapshots first: a backup writes its index files before its snapshot,
    // so every snapshot listed here has its blobs in the index read below
    // (one that finishes later is not touched).
    let snapshots: Vec<(Id, Snapshot)> = if opts.snapshots.is_empty() {
        repo.snapshots()?
    } else {
        opts.snapshots
            .iter()
            .map(|id| Ok((*id, repo.load_json(FileKind::Snapshot, id)?)))
            .collect::<Result<_>>()?
    };
    // Every index file, read strictly: a blob missing from an index file
    // that merely failed to read is not lost, and must not be cut out.
    let mut index = crate::index::Index::new();
    for f in repo.backend().list(FileKind::Index)? {
        let Ok(id) = f.name.parse::<Id>() else {
            continue;
        };
        match repo.load_json::<IndexFile>(FileKind::Index, &id) {
            Ok(file) => index.add_file(&file),
            Err(Error::NotFound(_)) => {
                return Err(Error::Refused(format!(
                    "index {id} disappeared while it was read (is a prune running?): nothing was changed; run repair again when it is done"
                )))
            }
            Err(e) => {
                return Err(Error::Refused(format!(
                    "index {id} cannot be read ({e}): nothing was changed; run `cairn repair index` first if it is damaged"
                )))
            }
        }
    }
    index.finish();
    let repo = repo.with_index(index);
    let packs: HashSet<Id> = repo
        .backend()
        .list(FileKind::Pack)?
        .into_iter()
        .filter_map(|f| f.name.parse::<Id>().ok())
        .collect();
    // An index that still lists lost packs would make the repaired trees
    // deduplicate against blobs that are gone: rebuild it first.
    let missing: HashSet<Id> = repo
        .index()
        .iter()
        .map(|(_, _, loc)| loc.pack)
        .filter(|p| !packs.contains(p))
        .collect();
    if let Some(first) = missing.iter().next() {
        return Err(Error::Refused(format!(
            "the index lists {} packs that storage no longer holds (such as {first}): run `cairn repair index` first, then repair snapshots; nothing was changed",
            missing.len()
        )));
    }
    let mut damage = Damage {
        packs,
        ..Damage::default()
    };
    if opts.read_data {
        let listed: std::collections::BTreeSet<Id> =
            repo.index().iter().map(|(_, _, loc)| loc.pack).collect();
        for pack in listed {
            // A blob that does not decode is lost; a pack that cannot be read,
            // or whose header is damaged, says nothing about its blobs.
            read_pack_blobs(&repo, &pack, &mut damage, &mut |object, message| {
                tracing::warn!("{object}: {message}");
            })
            .map_err(|why| {
                Error::Refused(format!(
                    "pack {pack} could not be verified ({why}): nothing was changed"
                ))
            })?;
        }
    }
    report.snapshots = snapshots.len() as u64;
    // Which snapshots are damaged, and where.
    let mut damaged = Vec::new();
    {
        let mut assess = Assessor::new(&repo, &damage);
        for (id, snap) in snapshots {
            let harm = assess.snapshot(&snap.tree)?;
            if harm.is_clean() {
                continue;
            }
            if damage.load_tree(&repo, &snap.tree)?.is_none() {
                report.unrepairable.push(id);
                continue;
            }
            report.repaired.push(RepairedSnapshot {
                snapshot: id,
                repaired: None,
                damaged_files: harm.files,
                damaged_dirs: harm.dirs,
                examples: harm.paths(),
            });
            damaged.push(snap);
        }
    }
    if opts.dry_run {
        return Ok(report);
    }
    // New trees first (indexed when the session ends), then the snapshots
    // that refer to them, then the removals.
    let (roots, _) = write_session(&repo, Indexing::Write, |writer| {
        let mut rewriter = Rewriter {
            repo: &repo,
            damage: &damage,
            writer,
            memo: HashMap::new(),
            deep: HashMap::new(),
        };
        damaged
            .iter()
            .map(|s| match rewriter.tree(&s.tree, 0)?.0 {
                Fate::Repaired(id) => Ok(id),
                // Only a crafted snapshot whose trees recur at depths on
                // both sides of the limit is assessed damaged and found whole.
                Fate::Whole => Ok(s.tree),
                Fate::Lost => Err(Error::Refused(format!(
                    "tree {} no longer reads (did storage change during the repair?): run it again",
                    s.tree
                ))),
            })
            .collect::<Result<Vec<Id>>>()
    })?;
    for ((snap, root), entry) in damaged.into_iter().zip(roots).zip(&mut report.repaired) {
        let mut copy = snap;
        copy.tree = root;
        copy.original = Some(copy.original.unwrap_or(entry.snapshot));
        if !copy.tags.iter().any(|t| t == REPAIRED_TAG) {
            copy.tags.push(REPAIRED_TAG.to_string());
        }
        copy.program_version = format!("cairn {}", env!("CARGO_PKG_VERSION"));
        entry.repaired = Some(repo.save_json(FileKind::Snapshot, &copy)?);
    }
    if opts.forget {
        let gone = report
            .repaired
            .iter()
            .map(|r| r.snapshot)
            .chain(report.unrepairable.iter().copied())
            .collect::<Vec<_>>();
        for id in gone {
            match repo.backend().remove(FileKind::Snapshot, &id.to_hex()) {
                Ok(()) | Err(Error::NotFound(_)) => report.forgotten += 1,
                Err(e) => return Err(e),
            }
        }
    }
    Ok(report)
}

/// Writes repaired trees, each distinct tree once (once per depth where the
/// depth limit cut something below it: the same tree may be whole higher up).
struct Rewriter<'a, 'r, 'w> {
    repo: &'a IndexedRepository<'r>,
    damage: &'a Damage,
    writer: &'w Writer<'w, 'w>,
    memo: HashMap<Id, Fate>,
    deep: HashMap<(Id, usize), Fate>,
}

/// What became of a tree.
#[derive(Clone, Copy)]
enum Fate {
    /// It does not read.
    Lost,
    /// Nothing below it is lost.
    Whole,
    /// Its repaired copy.
    Repaired(Id),
}

impl Rewriter<'_, '_, '_> {
    /// The fate of a tree at `depth`, and whether the depth limit cut
    /// something below it.
    fn tree(&mut self, id: &Id, depth: usize) -> Result<(Fate, bool)> {
        if let Some(done) = self.memo.get(id) {
            return Ok((*done, false));
        }
        if let Some(done) = self.deep.get(&(*id, depth)) {
            return Ok((*done, true));
        }
        crate::interrupt::check()?;
        let (fate, limited) = match self.damage.load_tree(self.repo, id)? {
            None => (Fate::Lost, false),
            Some(tree) => self.rewrite(tree, depth)?,
        };
        if limited {
            self.deep.insert((*id, depth), fate);
        } else {
            self.memo.insert(*id, fate);
        }
        Ok((fate, limited))
    }

    fn rewrite(&mut self, mut tree: Tree, depth: usize) -> Result<(Fate, bool)> {
        let mut changed = false;
        let mut limited = false;
        let mut lost = vec![false; tree.nodes.len()];
        for (node, lost) in tree.nodes.iter_mut().zip(&mut lost) {
            if node.node_type == NodeType::File
                && node
                    .content
                    .iter()
                    .any(|b| self.damage.data_lost(self.repo, b))
            {
                node.content
                    .retain(|b| !self.damage.data_lost(self.repo, b));
                node.size = node
                    .content
                    .iter()
                    .filter_map(|b| self.repo.index().lookup(BlobType::Data, b))
                    .map(|l| u64::from(l.raw_length))
                    .sum();
                *lost = true;
            }
            if let Some(sub) = node.subtree {
                // Deeper than any reader goes: restore refuses it, so it is
                // lost here (decided per node: higher up it may read fine).
                let fate = if depth + 1 > MAX_TREE_DEPTH {
                    limited = true;
                    Fate::Lost
                } else {
                    let (fate, lim) = self.tree(&sub, depth + 1)?;
                    limited |= lim;
                    fate
                };
                match fate {
                    Fate::Whole => {}
                    Fate::Repaired(new) => {
                        node.subtree = Some(new);
                        changed = true;
                    }
                    Fate::Lost => {
                        node.subtree = Some(self.store(&Tree::default())?);
                        *lost = true;
                    }
                }
            }
        }
        if lost.contains(&true) {
            // Entries that lost nothing keep their names; a damaged one is
            // renamed NAME.repaired (NAME.repaired-2, ... while that is taken),
            // its stem shortened to keep the name within 255 bytes.
            let mut names: HashSet<Vec<u8>> = tree
                .nodes
                .iter()
                .zip(&lost)
                .filter(|(_, l)| !**l)
                .map(|(n, _)| n.name.0.clone())
                .collect();
            for (node, _) in tree.nodes.iter_mut().zip(&lost).filter(|(_, l)| **l) {
                let stem = std::mem::take(&mut node.name.0);
                node.name.0 = (1..)
                    .map(|n| repaired_name(&stem, n))
                    .find(|name| !names.contains(name))
                    .unwrap_or_default();
                names.insert(node.name.0.clone());
            }
            tree.nodes.sort_by(|a, b| a.name.cmp(&b.name));
            changed = true;
        }
        let fate = if changed {
            Fate::Repaired(self.store(&tree)?)
        } else {
            Fate::Whole
        };
        Ok((fate, limited))
    }

    fn store(&self, tree: &Tree) -> Result<Id> {
        let bytes = tree.to_bytes();
        let id = self.writer.repo().key().blob_id(&bytes);
        if let Some(ticket) = self.writer.claim(BlobType::Tree, id) {
            self.writer.save(ticket, BlobType::Tree, id, &bytes)?;
        }
        Ok(id)
    }
}
