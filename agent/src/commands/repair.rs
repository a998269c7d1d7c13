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

use crate::backend::FileKind;
use crate::commands::check::read_pack_header;
use crate::constants::INDEX_FLUSH_BLOBS;
use crate::error::{Error, Result};
use crate::id::Id;
use crate::index::IndexFile;
use crate::pack::PackedBlob;
use crate::repository::Repository;

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
