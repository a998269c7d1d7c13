//! `prune`: remove data no snapshot references, without a lock.
//!
//! Deletion is two-phase (full argument in `docs/FORMAT.md`, "Prune"):
//!
//! 1. A pack no snapshot needs is *marked*: the new index lists it with the
//!    time of marking. Backups deduplicate only against live packs, so from
//!    then on no new snapshot can come to depend on it; snapshots of backups
//!    that were already running may still refer to it.
//! 2. A later prune deletes a marked pack once the *grace period* has passed
//!    since marking and, reading the snapshots again, still finds no snapshot
//!    that needs it. A marked pack that a snapshot does need is made live
//!    again (recovered).
//!
//! Safety rests on one assumption: no backup runs longer than the grace
//! period (default 24 h). Packs that are in no index at all (left by a crashed
//! backup, or being written by a running one) are marked the same way and
//! deleted only if still unindexed a grace period later.
//!
//! Partly used packs are repacked: the blobs still needed are copied, still
//! encrypted, into new packs (each verified on the way), and the old pack is
//! marked. `--max-unused` bounds the unused space left behind.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::backend::FileKind;
use crate::blob::{decode_blob, BlobType};
use crate::constants::INDEX_FLUSH_BLOBS;
use crate::error::{Error, Result};
use crate::id::Id;
use crate::index::{Index, IndexBlob, IndexFile, IndexPack};
use crate::repository::{IndexedRepository, Repository};
use crate::snapshot::Snapshot;
use crate::writer::{write_session, Indexing};

/// Default grace period between marking a pack and deleting it.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(24 * 3600);

/// Default `--max-unused`: percentage of unused space tolerated in kept packs.
pub const DEFAULT_MAX_UNUSED: f64 = 5.0;

/// Prune settings.
#[derive(Clone, Debug)]
pub struct PruneOptions {
    /// Unused bytes left in kept packs, as a percentage of the used bytes;
    /// partly used packs are repacked until this holds (100 or more: repack nothing).
    pub max_unused_percent: f64,
    /// Time between marking a pack and deleting it. Zero deletes at once,
    /// which is safe only when no backup is running.
    pub grace: Duration,
    /// Only compute and report.
    pub dry_run: bool,
}

impl Default for PruneOptions {
    fn default() -> Self {
        PruneOptions {
            max_unused_percent: DEFAULT_MAX_UNUSED,
            grace: DEFAULT_GRACE,
            dry_run: false,
        }
    }
}

/// What a prune found and did (or would do, with `dry_run`).
#[derive(Clone, Debug, Default, Serialize)]
pub struct PruneReport {
    /// Whether this was a dry run.
    pub dry_run: bool,
    /// Snapshots read.
    pub snapshots: u64,
    /// Blobs the snapshots need.
    pub used_blobs: u64,
    /// Stored bytes of the needed blobs.
    pub used_bytes: u64,
    /// Stored bytes in kept packs that no snapshot needs (after repacking).
    pub unused_bytes_kept: u64,
    /// Packs in storage.
    pub packs: u64,
    /// Bytes in storage (packs).
    pub pack_bytes: u64,
    /// Packs kept as they are.
    pub packs_kept: u64,
    /// Partly used packs whose needed blobs were copied into new packs.
    pub packs_repacked: u64,
    /// New packs written by repacking.
    pub packs_written: u64,
    /// Bytes of the new packs.
    pub bytes_written: u64,
    /// Packs marked for deletion by this run (unused, repacked, or unindexed).
    pub packs_marked: u64,
    /// Of those, packs that were in no index (debris of interrupted backups,
    /// or packs of backups still running).
    pub unindexed_packs_marked: u64,
    /// Marked packs that snapshots need again, made live.
    pub packs_recovered: u64,
    /// Marked packs waiting for their grace period to pass.
    pub packs_waiting: u64,
    /// Bytes in waiting packs.
    pub bytes_waiting: u64,
    /// Packs deleted.
    pub packs_deleted: u64,
    /// Bytes deleted.
    pub bytes_deleted: u64,
    /// Index files written.
    pub index_files_written: u64,
    /// Index files replaced (deleted).
    pub index_files_removed: u64,
    /// Grace period in seconds.
    pub grace_seconds: u64,
    /// Temporary files older than the grace period removed (left by backups
    /// killed while writing; local repositories only).
    pub temporaries_removed: u64,
    /// Bytes of those files.
    pub temporary_bytes_removed: u64,
    /// The storage's clock minus this host's, in seconds, when the storage
    /// has a clock (marks are made and aged by the storage's clock).
    pub storage_clock_offset_seconds: Option<i64>,
}

/// How far this host's clock may be from the storage's before prune refuses
/// to run: marks made by hosts that aged them by their own clocks (older
/// versions) are only as right as those clocks.
pub const MAX_CLOCK_SKEW: Duration = Duration::from_secs(600);

/// A pack as the index files describe it, merged over all files.
struct PackRecord {
    blobs: Vec<IndexBlob>,
    live: bool,
    marked: Option<DateTime<Utc>>,
}

/// What happens to a pack.
enum Fate {
    Keep,
    Repack,
    /// Marked by this run (the time is taken when the new index is written).
    Mark,
    /// Marked by an earlier run at this time, still within the grace period.
    Marked(DateTime<Utc>),
    Delete,
}

fn refuse(reason: impl std::fmt::Display) -> Error {
    Error::Refused(format!(
        "prune stopped before deleting anything: {reason}; run `cairn check`"
    ))
}

/// Run `f` on every item with up to `threads` threads; the first error wins.
fn parallel<T: Sync>(
    items: &[T],
    threads: usize,
    f: impl Fn(&T) -> Result<()> + Sync,
) -> Result<()> {
    let next = AtomicUsize::new(0);
    let first_error = Mutex::new(None);
    std::thread::scope(|s| {
        for _ in 0..threads.clamp(1, items.len().max(1)) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(item) = items.get(i) else { break };
                if let Err(e) = f(item) {
                    let mut fe = first_error
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    fe.get_or_insert(e);
                    next.store(items.len(), Ordering::Relaxed);
                }
            });
        }
    });
    match first_error
        .into_inner()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
    {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Blobs (type, ID) reachable from all snapshots; errors if any is not indexed.
/// One bit per indexed blob, by [`Index::position`].
struct BitSet(Vec<u64>);

impl BitSet {
    fn new(n: usize) -> BitSet {
        BitSet(vec![0; n.div_ceil(64)])
    }
    /// Set bit `i`; true if it was clear.
    fn insert(&mut self, i: usize) -> bool {
        let (w, b) = (i / 64, 1u64 << (i % 64));
        let was = self.0[w] & b != 0;
        self.0[w] |= b;
        !was
    }
    fn contains(&self, i: usize) -> bool {
        self.0[i / 64] & (1 << (i % 64)) != 0
    }
    fn count(&self) -> u64 {
        self.0.iter().map(|w| u64::from(w.count_ones())).sum()
    }
}

/// Blobs reachable from all snapshots, as a bit set over index positions;
/// errors if any is not indexed.
fn used_blobs(
    repo: &IndexedRepository<'_>,
    snapshots: Vec<crate::backend::FileInfo>,
    report: &mut PruneReport,
) -> Result<BitSet> {
    let index = repo.index();
    let mut used = BitSet::new(index.len());
    for f in snapshots {
        let Ok(id) = f.name.parse::<Id>() else {
            continue;
        };
        let snap: Snapshot = match repo.load_json(FileKind::Snapshot, &id) {
            Ok(s) => s,
            // Removed by a concurrent forget after the listing.
            Err(Error::NotFound(_)) => continue,
            Err(e) => return Err(refuse(e)),
        };
        report.snapshots += 1;
        let mut stack = vec![snap.tree];
        while let Some(tree_id) = stack.pop() {
            let Some(pos) = index.position(BlobType::Tree, &tree_id) else {
                return Err(refuse(format!(
                    "snapshot {} refers to tree {tree_id}, which is in no index",
                    id.short()
                )));
            };
            if !used.insert(pos) {
                continue;
            }
            let tree = repo.load_tree(&tree_id).map_err(refuse)?;
            for node in tree.nodes {
                for b in node.content {
                    let Some(pos) = index.position(BlobType::Data, &b) else {
                        return Err(refuse(format!(
                            "snapshot {} refers to data blob {b} (in {}), which is in no index",
                            id.short(),
                            node.name.display()
                        )));
                    };
                    used.insert(pos);
                }
                if let Some(sub) = node.subtree {
                    stack.push(sub);
                }
            }
        }
    }
    Ok(used)
}

/// Prune the repository (see the module documentation): [`plan`], then,
/// unless it is a dry run, [`PrunePlan::execute`].
///
/// # Errors
/// [`Error::Refused`] (nothing deleted) when the repository is inconsistent:
/// an unreadable index file or snapshot, a blob a snapshot needs that is in no
/// index or whose pack is missing or damaged. Storage errors.
pub fn prune(repo: &Repository, opts: &PruneOptions) -> Result<PruneReport> {
    let plan = plan(repo, opts)?;
    if opts.dry_run {
        return Ok(plan.report);
    }
    plan.execute()
}

/// What a prune decided, before it changes anything (steps 1–5 of
/// FORMAT.md §12.1): a dry run reports it, a real run executes it. The
/// plan holds the repository's merged index records and its pack listing as
/// they were read, so it must be executed at once (step 5's 80 % rule is
/// counted from when planning started).
pub struct PrunePlan<'r> {
    /// The repository with the index the plan was made from.
    repo: IndexedRepository<'r>,
    report: PruneReport,
    started: Instant,
    /// The storage's time when planning started.
    clock: DateTime<Utc>,
    grace: Duration,
    records: BTreeMap<Id, PackRecord>,
    fates: BTreeMap<Id, Fate>,
    needed: HashMap<Id, Vec<IndexBlob>>,
    to_repack: Vec<Id>,
    stored: HashMap<Id, u64>,
    old_index_files: Vec<Id>,
}

impl PrunePlan<'_> {
    /// What the plan found and would do.
    pub fn report(&self) -> &PruneReport {
        &self.report
    }
}

/// Read the repository and decide each pack's fate; nothing is written.
/// The plan keeps the index it read (merged from every index file).
///
/// # Errors
/// As [`prune`].
pub fn plan<'r>(repo: &'r Repository, opts: &PruneOptions) -> Result<PrunePlan<'r>> {
    let started = Instant::now();
    let mut report = PruneReport {
        dry_run: opts.dry_run,
        grace_seconds: opts.grace.as_secs(),
        ..PruneReport::default()
    };

    // Time is the storage's: every host that prunes this repository then
    // ages marks by the same clock. One whose own clock is far off refuses.
    let host_now = Utc::now();
    // A dry run writes nothing, not even the clock probe (it may look at a
    // repository it cannot write): it decides by this host's clock.
    let storage_clock = if opts.dry_run {
        None
    } else {
        repo.backend().clock()?
    };
    let clock = match storage_clock {
        Some(storage) => {
            let offset = storage - host_now;
            report.storage_clock_offset_seconds = Some(offset.num_seconds());
            let skew = offset.abs().to_std().unwrap_or(Duration::MAX);
            if !opts.grace.is_zero() && skew > MAX_CLOCK_SKEW {
                return Err(Error::Refused(format!(
                    "this host's clock ({host_now}) is {} the storage's ({storage}) by {}; prune ages marks by the storage's clock and runs only where the two agree within {}: fix the clock that is wrong (this host's, or the storage server's) and run prune again. Nothing was changed",
                    if offset.num_seconds() > 0 { "behind" } else { "ahead of" },
                    humantime(skew),
                    humantime(MAX_CLOCK_SKEW),
                )));
            }
            storage
        }
        None => host_now,
    };

    // 0. Snapshots are listed before the index: a backup writes its index
    //    before its snapshot, so every snapshot listed here has its blobs in
    //    an index file listed below. (A snapshot written later is not seen; the
    //    packs it needs may be marked, and the next prune recovers them.)
    let snapshot_files = repo.backend().list(FileKind::Snapshot)?;

    // 1. Every index file, merged per pack ("live wins").
    let mut records: BTreeMap<Id, PackRecord> = BTreeMap::new();
    let mut index = Index::new();
    let mut old_index_files = Vec::new();
    for f in repo.backend().list(FileKind::Index)? {
        // Not an index file (a folder marker, a stray copy): not prune's to
        // read or delete.
        let Ok(id) = f.name.parse::<Id>() else {
            tracing::warn!("skipping {:?} in index/: its name is not an ID", f.name);
            continue;
        };
        let file: IndexFile = match repo.load_json(FileKind::Index, &id) {
            Ok(file) => file,
            Err(Error::NotFound(_)) => {
                return Err(Error::Refused(format!(
                    "index {id} disappeared while prune was reading the index: is another prune running? Try again"
                )))
            }
            Err(e) => return Err(refuse(e)),
        };
        index.add_file(&file);
        for p in file.packs {
            let r = records.entry(p.id).or_insert(PackRecord {
                blobs: Vec::new(),
                live: false,
                marked: None,
            });
            r.live |= p.marked.is_none();
            r.marked = r.marked.max(p.marked);
            if p.blobs.len() > r.blobs.len() {
                r.blobs = p.blobs;
            }
        }
        old_index_files.push(id);
    }
    index.finish();
    let repo = repo.with_index(index);
    tracing::info!(
        "prune: read {} index files ({} packs) in {:.1?}",
        old_index_files.len(),
        records.len(),
        started.elapsed()
    );

    // 2. What the snapshots need.
    let used = used_blobs(&repo, snapshot_files, &mut report)?;
    report.used_blobs = used.count();
    tracing::info!(
        "prune: {} snapshots need {} blobs ({:.1?})",
        report.snapshots,
        report.used_blobs,
        started.elapsed()
    );

    // 3. What storage holds.
    let stored: HashMap<Id, u64> = repo
        .backend()
        .list(FileKind::Pack)?
        .into_iter()
        .filter_map(|f| f.name.parse::<Id>().ok().map(|id| (id, f.size)))
        .collect();
    report.packs = stored.len() as u64;
    report.pack_bytes = stored.values().sum();

    // 4. Per pack: the needed blobs it holds the chosen copy of.
    let now = clock;
    let grace = chrono::Duration::from_std(opts.grace)
        .map_err(|_| Error::InvalidInput("grace period too long".into()))?;
    let mut fates: BTreeMap<Id, Fate> = BTreeMap::new();
    let mut needed: HashMap<Id, Vec<IndexBlob>> = HashMap::new();
    let mut candidates = Vec::new(); // (unused bytes, pack)
    for (pack, rec) in &records {
        let mut need = Vec::new();
        let mut unused = 0u64;
        for b in &rec.blobs {
            // Needed, and this record holds the copy the index prefers.
            let chosen = repo
                .index()
                .position(b.blob_type, &b.id)
                .filter(|&p| used.contains(p))
                .and_then(|p| repo.index().location_at(p))
                .is_some_and(|l| l.pack == *pack && l.offset == b.offset);
            if chosen {
                need.push(b.clone());
            } else {
                unused += u64::from(b.length);
            }
        }
        if !stored.contains_key(pack) {
            if !need.is_empty() {
                return Err(refuse(format!(
                    "pack {pack} holds {} blobs that snapshots need but is missing from storage",
                    need.len()
                )));
            }
            continue; // record of a pack already gone: dropped from the new index
        }
        let fate = if need.is_empty() {
            match rec.marked.filter(|_| !rec.live) {
                Some(t) if now - t >= grace => Fate::Delete,
                Some(t) => Fate::Marked(t),
                None if opts.grace.is_zero() => Fate::Delete,
                None => {
                    report.packs_marked += 1;
                    Fate::Mark
                }
            }
        } else {
            if !rec.live {
                report.packs_recovered += 1;
            }
            report.used_bytes += need.iter().map(|b| u64::from(b.length)).sum::<u64>();
            if unused > 0 {
                candidates.push((unused, *pack));
            }
            needed.insert(*pack, need);
            Fate::Keep
        };
        fates.insert(*pack, fate);
    }
    // Packs no index lists: debris of interrupted backups, or running ones.
    for (pack, _) in stored.iter().filter(|(p, _)| !records.contains_key(p)) {
        report.unindexed_packs_marked += 1;
        if opts.grace.is_zero() {
            fates.insert(*pack, Fate::Delete);
        } else {
            report.packs_marked += 1;
            fates.insert(*pack, Fate::Mark);
        }
    }

    // 5. Repack partly used packs, most wasteful first, until the unused space
    //    left is within the limit.
    candidates.sort_by(|a, b| b.cmp(a));
    let mut unused_kept: u64 = candidates.iter().map(|c| c.0).sum();
    let limit = if opts.max_unused_percent >= 100.0 {
        u64::MAX
    } else {
        (report.used_bytes as f64 * opts.max_unused_percent.max(0.0) / 100.0) as u64
    };
    let mut to_repack = Vec::new();
    for (unused, pack) in candidates {
        if unused_kept <= limit {
            break;
        }
        unused_kept -= unused;
        to_repack.push(pack);
        fates.insert(pack, Fate::Repack);
    }
    report.unused_bytes_kept = unused_kept;
    report.packs_repacked = to_repack.len() as u64;

    for (pack, fate) in &fates {
        let size = stored.get(pack).copied().unwrap_or(0);
        match fate {
            Fate::Keep => report.packs_kept += 1,
            Fate::Marked(_) => {
                report.packs_waiting += 1;
                report.bytes_waiting += size;
            }
            Fate::Delete => {
                report.packs_deleted += 1;
                report.bytes_deleted += size;
            }
            _ => {}
        }
    }
    Ok(PrunePlan {
        repo,
        report,
        started,
        clock,
        grace: opts.grace,
        records,
        fates,
        needed,
        to_repack,
        stored,
        old_index_files,
    })
}

impl PrunePlan<'_> {
    /// Carry the plan out (steps 6–8 of FORMAT.md §12.1): repack, write the
    /// new index, remove the old index files, delete the packs due.
    ///
    /// # Errors
    /// As [`prune`]; [`Error::Refused`] when planning and repacking took more
    /// than 80 % of the grace period (nothing deleted).
    pub fn execute(self) -> Result<PruneReport> {
        let PrunePlan {
            repo,
            mut report,
            started,
            clock,
            grace,
            records,
            fates,
            needed,
            to_repack,
            stored,
            old_index_files,
        } = self;

        // 6. Copy the needed blobs of repacked packs into new packs.
        let new_packs = repack(&repo, &to_repack, &needed, &mut report)?;
        tracing::info!(
            "prune: repacked {} packs into {} ({:.1?})",
            to_repack.len(),
            new_packs.len(),
            started.elapsed()
        );

        // A prune that ran nearly as long as the grace period may have read an
        // index that is no longer true enough to write back (see FORMAT.md).
        if !grace.is_zero() && started.elapsed() > grace.mul_f64(0.8) {
            return Err(Error::Refused(format!(
            "prune ran for {:.0?}, more than 80% of the grace period; nothing was deleted (new packs are left for the next prune). Use a longer --grace",
            started.elapsed()
        )));
        }

        // 7. The new index: live packs, new packs, marked packs with their time.
        //    New marks take the time now, just before the index files that carry
        //    them are written: backups that load the index from here on no longer
        //    see these packs live (once the old files are removed, moments later).
        let mark_time = storage_time(clock, started);
        let mut out: Vec<IndexPack> = Vec::new();
        for (pack, fate) in &fates {
            let blobs = records
                .get(pack)
                .map(|r| r.blobs.clone())
                .unwrap_or_default();
            match fate {
                Fate::Keep => out.push(IndexPack {
                    id: *pack,
                    blobs,
                    marked: None,
                }),
                Fate::Marked(t) => out.push(IndexPack {
                    id: *pack,
                    blobs,
                    marked: Some(*t),
                }),
                Fate::Mark => out.push(IndexPack {
                    id: *pack,
                    blobs,
                    marked: Some(mark_time),
                }),
                Fate::Repack if !grace.is_zero() => out.push(IndexPack {
                    id: *pack,
                    blobs,
                    marked: Some(mark_time),
                }),
                Fate::Repack | Fate::Delete => {}
            }
        }
        for p in &new_packs {
            let mut f = IndexFile::default();
            f.add_pack(p.0, &p.1);
            out.extend(f.packs);
        }
        let mut new_files = Vec::new();
        let mut file = IndexFile::default();
        for p in out {
            if !file.packs.is_empty() && file.blob_count() + p.blobs.len() > INDEX_FLUSH_BLOBS {
                new_files.push(std::mem::take(&mut file));
            }
            file.packs.push(p);
        }
        if !file.packs.is_empty() {
            new_files.push(file);
        }
        let mut written = HashSet::new();
        for f in &new_files {
            written.insert(repo.save_json(FileKind::Index, f)?);
        }
        report.index_files_written = written.len() as u64;

        // 8. Remove the replaced index files, then the packs due for deletion.
        let threads = repo.backend().concurrency();
        let old: Vec<Id> = old_index_files
            .into_iter()
            .filter(|id| !written.contains(id))
            .collect();
        parallel(&old, threads, |id| {
            match repo.backend().remove(FileKind::Index, &id.to_hex()) {
                Err(Error::NotFound(_)) => Ok(()),
                other => other,
            }
        })?;
        report.index_files_removed = old.len() as u64;
        let doomed: Vec<Id> = fates
            .iter()
            .filter(|(_, f)| {
                matches!(f, Fate::Delete) || (matches!(f, Fate::Repack) && grace.is_zero())
            })
            .map(|(p, _)| *p)
            .collect();
        if grace.is_zero() {
            for p in fates.iter().filter(|(_, f)| matches!(f, Fate::Repack)) {
                report.packs_deleted += 1;
                report.bytes_deleted += stored.get(p.0).copied().unwrap_or(0);
            }
        }
        parallel(&doomed, threads, |id| {
            match repo.backend().remove(FileKind::Pack, &id.to_hex()) {
                Err(Error::NotFound(_)) => Ok(()),
                other => other,
            }
        })?;
        // Files a killed writer left half-written: no backup still running is
        // older than the grace period (the assumption all of prune rests on).
        let (n, bytes) = repo
            .backend()
            .remove_stale_temporaries(grace, storage_time(clock, started))?;
        report.temporaries_removed = n;
        report.temporary_bytes_removed = bytes;
        tracing::info!(
            "prune: wrote {} index files, removed {} index files and {} packs ({:.1?})",
            report.index_files_written,
            report.index_files_removed,
            doomed.len(),
            started.elapsed()
        );
        Ok(report)
    }
}

/// The storage's time now, from its time when planning `started`.
fn storage_time(clock: DateTime<Utc>, started: Instant) -> DateTime<Utc> {
    clock + chrono::Duration::from_std(started.elapsed()).unwrap_or_default()
}

/// A duration for messages: `12 min 5 s`, `3 h 20 min`.
fn humantime(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..=59 => format!("{s} s"),
        60..=3599 => format!("{} min {} s", s / 60, s % 60),
        _ => format!("{} h {} min", s / 3600, s % 3600 / 60),
    }
}

/// Copy the needed blobs of `packs` into new packs (data and trees apart),
/// verifying each blob; returns the new packs and their blobs. The
/// repository writer stores them and writes no index: prune indexes them
/// with everything else in step 6.
fn repack(
    repo: &IndexedRepository<'_>,
    packs: &[Id],
    needed: &HashMap<Id, Vec<IndexBlob>>,
    report: &mut PruneReport,
) -> Result<Vec<(Id, Vec<crate::pack::PackedBlob>)>> {
    let key = repo.key();
    let ((), stored) = write_session(repo, Indexing::Collect, |writer| {
        for pack in packs {
            if writer.failed() {
                return Err(Error::Internal("writing the repacked packs failed".into()));
            }
            let bytes = repo.backend().read(FileKind::Pack, &pack.to_hex())?;
            if Id::of_stored(&bytes) != *pack {
                return Err(refuse(format!(
                    "pack {pack} is damaged (content does not match its name)"
                )));
            }
            let mut blobs = needed.get(pack).cloned().unwrap_or_default();
            blobs.sort_by_key(|b| b.offset);
            for b in blobs {
                let range = b.offset as usize..(b.offset as usize + b.length as usize);
                let Some(stored) = bytes.get(range) else {
                    return Err(refuse(format!(
                        "pack {pack} is shorter than the index says"
                    )));
                };
                repo.check_raw_length(b.blob_type, &b.id, b.raw_length)
                    .map_err(refuse)?;
                decode_blob(key, b.blob_type, &b.id, stored, b.raw_length).map_err(refuse)?;
                let ticket = writer.ticket();
                writer.save_sealed(ticket, b.blob_type, b.id, stored.to_vec(), b.raw_length)?;
            }
        }
        Ok(())
    })?;
    report.packs_written += stored.packs_written;
    report.bytes_written += stored.pack_bytes;
    Ok(stored.packs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_grace_is_the_protocols() {
        // `--grace` defaults to the protocol's text; the engine's own default must agree.
        let text = cairn_protocol::DEFAULT_GRACE;
        assert_eq!(
            cairn_protocol::duration::parse_fixed(text),
            Ok(DEFAULT_GRACE)
        );
    }
}
