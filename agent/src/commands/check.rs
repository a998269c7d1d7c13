//! `check`: verify a repository's structure and, optionally, its data.
//!
//! Structure: every index file opens; every indexed pack exists and its
//! encrypted header lists exactly the blobs the index says it holds; every
//! snapshot opens; every tree of every snapshot is readable (decrypted and
//! hash-checked) and every blob a tree refers to is indexed. With read-data,
//! selected packs are downloaded whole: the pack's name must match its hash and
//! every blob in it must decrypt, decompress and match its keyed hash.
//!
//! Problems are collected per object, not returned as the first error, so one
//! run reports everything that is wrong. When something is lost, a last pass
//! names the snapshots that can no longer be restored whole and what in them
//! is lost ([`crate::commands::damage`]).

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::Serialize;

use crate::backend::FileKind;
use crate::blob::{decode_blob, BlobType};
use crate::commands::damage::{Assessor, Damage};
use crate::constants::MAX_TREE_DEPTH;
use crate::error::{Error, Result};
use crate::id::Id;
use crate::index::{Index, IndexFile};
use crate::pack;
use crate::repository::{IndexedRepository, Repository};
use crate::snapshot::Snapshot;
use crate::tree::{NodeType, Tree};

/// Which packs to read in full.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub enum ReadData {
    /// Structure only.
    #[default]
    None,
    /// Every pack.
    All,
    /// About this percentage of packs, chosen at random.
    Percent(f64),
    /// Group `n` of `m` (1-based), by pack ID: running 1/m … m/m reads every pack once.
    Group(u32, u32),
}

impl std::str::FromStr for ReadData {
    type Err = Error;
    fn from_str(s: &str) -> Result<ReadData> {
        let bad = || {
            Error::InvalidInput(format!(
                "--read-data-subset {s:?}: use a percentage (10%) or a group (n/m)"
            ))
        };
        if let Some(p) = s.strip_suffix('%') {
            let p: f64 = p.trim().parse().map_err(|_| bad())?;
            if !(0.0..=100.0).contains(&p) {
                return Err(bad());
            }
            return Ok(ReadData::Percent(p));
        }
        let (n, m) = s.split_once('/').ok_or_else(bad)?;
        let (n, m): (u32, u32) = (
            n.trim().parse().map_err(|_| bad())?,
            m.trim().parse().map_err(|_| bad())?,
        );
        if m == 0 || n == 0 || n > m {
            return Err(bad());
        }
        Ok(ReadData::Group(n, m))
    }
}

/// One thing found wrong.
#[derive(Clone, Debug, Serialize)]
pub struct Problem {
    /// The object concerned (`pack <id>`, `index <id>`, `snapshot <id>`, `tree <id>`, ...).
    pub object: String,
    /// What is wrong with it.
    pub message: String,
}

/// Result of a check.
#[derive(Clone, Debug, Default, Serialize)]
pub struct CheckReport {
    /// Problems found (empty: the repository is sound).
    pub problems: Vec<Problem>,
    /// Packs not listed by any index (left by interrupted backups; not an error).
    pub unreferenced_packs: u64,
    /// Packs prune has marked for deletion (not an error).
    pub marked_packs: u64,
    /// Index files read.
    pub index_files: u64,
    /// Packs whose headers were checked.
    pub packs_checked: u64,
    /// Packs read in full.
    pub packs_read: u64,
    /// Blobs decoded and verified while reading packs.
    pub blobs_read: u64,
    /// Snapshots checked.
    pub snapshots: u64,
    /// Distinct trees read.
    pub trees: u64,
    /// Snapshots that cannot be restored whole, and what in them is lost
    /// (from the problems above: missing packs, unreadable trees, data blobs
    /// `--read-data` found damaged).
    pub damaged_snapshots: Vec<DamagedSnapshot>,
}

/// A snapshot with lost data.
#[derive(Clone, Debug, Serialize)]
pub struct DamagedSnapshot {
    /// Snapshot ID.
    pub snapshot: String,
    /// When it was taken.
    pub time: String,
    /// Its host.
    pub hostname: String,
    /// Files that lost data.
    pub damaged_files: u64,
    /// Directories whose tree is lost (their contents not counted).
    pub damaged_dirs: u64,
    /// Up to ten of the damaged paths.
    pub examples: Vec<String>,
}

impl CheckReport {
    fn problem(&mut self, object: impl Into<String>, message: impl std::fmt::Display) {
        self.problems.push(Problem {
            object: object.into(),
            message: message.to_string(),
        });
    }
}

/// Check the repository. Loads the index into `repo` (tolerating bad index files).
///
/// # Errors
/// Only failures that stop the check itself (listing the repository); problems
/// with individual objects are in the report.
/// A blob as an index file or a pack header lists it: type, ID, offset,
/// length and raw length, compared whole.
type ListedBlob = (BlobType, Id, u32, u32, u32);

/// What `check` says of a file in `snapshots/` or `index/` whose name is no
/// ID (an S3 console's folder marker, an uppercase copy): every other command
/// skips it.
const NOT_AN_ID: &str = "name is not an ID: not a Cairn file (other commands skip it)";

pub fn check(repo: &Repository, read_data: ReadData) -> Result<CheckReport> {
    let mut report = CheckReport::default();
    // Snapshots are listed first: a backup writes its index before its
    // snapshot, so a backup finishing during the check is not mistaken for
    // one that refers to unindexed data.
    let snapshot_files = repo.backend().list(FileKind::Snapshot)?;

    // 1. Index files.
    let mut index = Index::new();
    let mut expected: HashMap<Id, Vec<ListedBlob>> = HashMap::new();
    // A concurrent prune replaces index files (new ones first): list again when
    // one vanishes.
    let mut seen = HashSet::new();
    let mut relist = true;
    let mut rounds = 0;
    while relist && rounds < 5 {
        relist = false;
        rounds += 1;
        for f in repo.backend().list(FileKind::Index)? {
            let Ok(id) = f.name.parse::<Id>() else {
                if rounds == 1 {
                    report.problem(format!("index file {:?}", f.name), NOT_AN_ID);
                }
                continue;
            };
            if !seen.insert(id) {
                continue;
            }
            match repo.load_json::<IndexFile>(FileKind::Index, &id) {
                Err(Error::NotFound(_)) => {
                    relist = true;
                    continue;
                }
                Ok(file) => {
                    report.index_files += 1;
                    for p in &file.packs {
                        let list = expected.entry(p.id).or_default();
                        list.extend(
                            p.blobs
                                .iter()
                                .map(|b| (b.blob_type, b.id, b.offset, b.length, b.raw_length)),
                        );
                    }
                    index.add_file(&file);
                }
                Err(e) => {
                    report.index_files += 1;
                    report.problem(format!("index {id}"), e);
                }
            }
        }
    }
    index.finish();
    let repo = repo.with_index(index);

    // 2. Packs: present, headers agree with the index.
    let stored: BTreeMap<Id, u64> = repo
        .backend()
        .list(FileKind::Pack)?
        .into_iter()
        .filter_map(|f| f.name.parse::<Id>().ok().map(|id| (id, f.size)))
        .collect();
    report.unreferenced_packs = stored
        .keys()
        .filter(|id| !expected.contains_key(id))
        .count() as u64;
    report.marked_packs = expected.keys().filter(|p| !repo.index().is_live(p)).count() as u64;
    for (pack_id, listed) in &expected {
        let object = format!("pack {pack_id}");
        let Some(&size) = stored.get(pack_id) else {
            // A marked pack may be gone: prune deletes it after its grace period.
            if repo.index().is_live(pack_id) {
                report.problem(object, "missing: listed in the index but not in storage");
            }
            continue;
        };
        if listed.is_empty() && !repo.index().is_live(pack_id) {
            continue; // marked by prune while in no index: its contents were never listed
        }
        report.packs_checked += 1;
        match read_pack_header(&repo, pack_id, size) {
            Ok(header) => {
                let mut a: Vec<_> = header
                    .iter()
                    .map(|b| (b.blob_type, b.id, b.offset, b.length, b.raw_length))
                    .collect();
                let mut b = listed.clone();
                a.sort();
                a.dedup();
                b.sort();
                b.dedup();
                if a != b {
                    report.problem(object, "header does not match the index");
                }
            }
            Err(e) => report.problem(object, e),
        }
    }

    // 3. Snapshots and trees.
    let mut walked = Walked::default();
    let mut damage = Damage::default();
    let mut snapshots = Vec::new();
    for f in snapshot_files {
        let Ok(id) = f.name.parse::<Id>() else {
            report.problem(format!("snapshot file {:?}", f.name), NOT_AN_ID);
            continue;
        };
        report.snapshots += 1;
        match repo.load_json::<Snapshot>(FileKind::Snapshot, &id) {
            Ok(s) => {
                check_tree(
                    &repo,
                    &stored,
                    &s.tree,
                    &format!("snapshot {}", id.short()),
                    &mut walked,
                    &mut report,
                );
                snapshots.push((id, s));
            }
            // Removed by a concurrent forget after the listing.
            Err(Error::NotFound(_)) => report.snapshots -= 1,
            Err(e) => report.problem(format!("snapshot {id}"), e),
        }
    }
    report.trees = walked.seen.len() as u64;
    damage.trees = walked.unreadable;

    // 4. Data.
    let selected: Vec<(Id, u64)> = match read_data {
        ReadData::None => Vec::new(),
        ReadData::All => stored
            .iter()
            .filter(|(id, _)| expected.contains_key(id))
            .map(|(i, s)| (*i, *s))
            .collect(),
        ReadData::Group(n, m) => stored
            .iter()
            .filter(|(id, _)| expected.contains_key(id))
            .filter(|(id, _)| u32::from(id.0[0]) % m == n - 1)
            .map(|(i, s)| (*i, *s))
            .collect(),
        ReadData::Percent(p) => stored
            .iter()
            .filter(|(id, _)| expected.contains_key(id))
            .filter(|_| {
                let mut r = [0u8; 4];
                crate::crypto::fill_random(&mut r);
                f64::from(u32::from_le_bytes(r)) / f64::from(u32::MAX) * 100.0 < p
            })
            .map(|(i, s)| (*i, *s))
            .collect(),
    };
    for (pack_id, _) in selected {
        report.packs_read += 1;
        let mut problems = Vec::new();
        match read_pack_blobs(&repo, &pack_id, &mut damage, &mut |o, m| {
            problems.push((o, m));
        }) {
            Ok(n) => report.blobs_read += n,
            Err(e) => problems.push((format!("pack {pack_id}"), e)),
        }
        for (object, message) in problems {
            report.problem(object, message);
        }
    }

    // 5. What the problems cost: the snapshots and paths that lost data.
    // (Nothing is lost without a problem above: then no tree is read again.)
    damage.packs = stored.keys().copied().collect();
    if !report.problems.is_empty() {
        let mut assess = Assessor::new(&repo, &damage);
        for (id, s) in &snapshots {
            let harm = match assess.snapshot(&s.tree) {
                Ok(h) => h,
                Err(e) => {
                    report.problem(
                        format!("snapshot {id}"),
                        format!("assessing its damage: {e}"),
                    );
                    continue;
                }
            };
            if harm.is_clean() {
                continue;
            }
            report.damaged_snapshots.push(DamagedSnapshot {
                snapshot: id.to_hex(),
                time: s.time.to_rfc3339(),
                hostname: s.hostname.clone(),
                damaged_files: harm.files,
                damaged_dirs: harm.dirs,
                examples: harm.paths(),
            });
        }
    }
    Ok(report)
}

/// Read a pack whole and decode every blob its header lists: the blobs that
/// do not decode, or lie beyond its end, go to `damage`, and every problem
/// found (those, a name that does not match the content) to `problem` as
/// (object, message). Returns the blobs decoded, or, when the pack cannot be
/// read or its header is damaged, why (nothing is then known of its blobs,
/// and nothing goes to `damage`).
pub(crate) fn read_pack_blobs(
    repo: &Repository,
    pack_id: &Id,
    damage: &mut Damage,
    problem: &mut dyn FnMut(String, String),
) -> std::result::Result<u64, String> {
    let object = format!("pack {pack_id}");
    let bytes = repo
        .backend()
        .read(FileKind::Pack, &pack_id.to_hex())
        .map_err(|e| e.to_string())?;
    if Id::of_stored(&bytes) != *pack_id {
        problem(
            object.clone(),
            "content does not match its name (modified or truncated)".into(),
        );
    }
    let header = pack::read_header(repo.key(), pack_id, &bytes).map_err(|e| e.to_string())?;
    let mut decoded_blobs = 0;
    for b in header {
        let start = b.offset as usize;
        let decoded = match bytes.get(start..start + b.length as usize) {
            None => Err("lies beyond the end of the pack".to_string()),
            Some(stored) => repo
                .check_raw_length(b.blob_type, &b.id, b.raw_length)
                .and_then(|()| decode_blob(repo.key(), b.blob_type, &b.id, stored, b.raw_length))
                .map(drop)
                .map_err(|e| e.to_string()),
        };
        match decoded {
            Ok(()) => decoded_blobs += 1,
            Err(e) => {
                match b.blob_type {
                    BlobType::Data => damage.data.insert(b.id),
                    BlobType::Tree => damage.trees.insert(b.id),
                };
                problem(
                    format!("{} blob {} in pack {pack_id}", b.blob_type, b.id),
                    e,
                );
            }
        }
    }
    Ok(decoded_blobs)
}

/// Read and authenticate a pack's header (trailer, then the sealed header).
///
/// # Errors
/// Storage errors; a truncated pack or a header that does not authenticate.
pub fn read_pack_header(repo: &Repository, id: &Id, size: u64) -> Result<Vec<pack::PackedBlob>> {
    let name = id.to_hex();
    if size < 4 {
        return Err(Error::corrupt(
            format!("pack {id}"),
            "truncated: no header trailer",
        ));
    }
    let trailer = repo
        .backend()
        .read_range(FileKind::Pack, &name, size - 4, 4)?;
    let hlen = pack::header_len_from_trailer(id, size, &trailer)?;
    let start = size - 4 - u64::from(hlen);
    let sealed = repo
        .backend()
        .read_range(FileKind::Pack, &name, start, hlen)?;
    pack::parse_header(repo.key(), id, &sealed, start)
}

/// What the tree walk has met so far, over all snapshots.
#[derive(Default)]
struct Walked {
    /// Trees read (each once).
    seen: HashSet<Id>,
    /// Trees that did not read.
    unreadable: HashSet<Id>,
    /// Data blobs reported missing (each once).
    missing: HashSet<Id>,
}

fn check_tree(
    repo: &IndexedRepository<'_>,
    stored: &BTreeMap<Id, u64>,
    id: &Id,
    context: &str,
    walked: &mut Walked,
    report: &mut CheckReport,
) {
    let Walked {
        seen,
        unreadable,
        missing,
    } = walked;
    // A work list, not recursion: a crafted snapshot may nest trees without end.
    let mut todo = vec![(*id, 0usize)];
    while let Some((id, depth)) = todo.pop() {
        if !seen.insert(id) {
            continue;
        }
        if depth > MAX_TREE_DEPTH {
            report.problem(
                format!("tree {id} ({context})"),
                format!("nested deeper than {MAX_TREE_DEPTH} directories"),
            );
            continue;
        }
        let tree = match repo.load_tree(&id) {
            Ok(t) => t,
            Err(e) => {
                // Lost (not a timeout): what `damaged_snapshots` counts.
                if matches!(e, Error::NotFound(_) | Error::Corrupt { .. }) {
                    unreadable.insert(id);
                }
                report.problem(format!("tree {id} ({context})"), e);
                continue;
            }
        };
        check_nodes(repo, stored, &tree, &id, context, missing, report);
        todo.extend(
            tree.nodes
                .iter()
                .filter_map(|n| n.subtree)
                .map(|s| (s, depth + 1)),
        );
    }
}

/// The data blobs of one tree's files: indexed, in a pack that exists.
fn check_nodes(
    repo: &IndexedRepository<'_>,
    stored: &BTreeMap<Id, u64>,
    tree: &Tree,
    id: &Id,
    context: &str,
    missing: &mut HashSet<Id>,
    report: &mut CheckReport,
) {
    for node in &tree.nodes {
        if node.node_type == NodeType::File {
            for b in &node.content {
                let problem = match repo.index().lookup(BlobType::Data, b) {
                    None => "not in the index",
                    Some(loc) if !stored.contains_key(&loc.pack) => {
                        "in a pack that is missing from storage"
                    }
                    Some(_) => continue,
                };
                if missing.insert(*b) {
                    report.problem(
                        format!("data blob {b}"),
                        format!(
                            "referenced by {} in tree {id} ({context}) but {problem}",
                            node.name.display()
                        ),
                    );
                }
            }
        }
    }
}
