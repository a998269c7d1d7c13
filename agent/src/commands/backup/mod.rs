//! `backup`: the backup pipeline. Stages run on their own threads and talk
//! through bounded channels, so a slow stage throttles the ones before it and
//! memory stays flat however large the source is:
//!
//! ```text
//! walker ──FileJob──▶ file workers (read, chunk, hash, dedup) ──BlobJob──▶ blob workers
//!   │ (DFS events, in order)                                                (compress, pad, encrypt)
//!   ▼                                                                             │
//! tree builder (waits for file results in order, saves tree blobs) ──BlobJob──▶  ▼
//!                                                         repository writer (packs, uploads, index)
//! ```
//!
//! Claiming, packing, uploading and indexing are the repository writer's
//! ([`crate::writer`]); this module walks, reads and builds trees: the walker
//! in `walk.rs`, the file workers in `read.rs`, the tree builder in `tree.rs`.
//! Here are the options and the result, what the stages share and send each
//! other, the pipeline's wiring and [`backup`] itself.
//!
//! The walker never waits for file contents: it only decides, per file, whether
//! the parent snapshot's content can be reused (metadata unchanged) or the file
//! must be read. The tree builder assembles directories in depth-first order.

mod read;
mod tree;
mod walk;

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Instant;

use crossbeam_channel::{bounded, Receiver};

use self::read::{read_file, FileJob, FileRead};
use self::tree::build_trees;
use self::walk::{normalize, Excludes, PathTree, Walker};
use crate::backend::FileKind;
use crate::blob::BlobType;
use crate::error::{Error, Result};
use crate::id::Id;
use crate::repository::{hostname, username, IndexedRepository};
use crate::snapshot::{Snapshot, Summary};
use crate::tree::Node;
use crate::writer::{write_session, Indexing, Ticket, Writer};

/// How to decide that a file is unchanged since the parent snapshot.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ChangeDetection {
    /// Size, mtime, ctime and inode must all match (restic's default).
    #[default]
    Strict,
    /// Ignore ctime (size, mtime and inode must match).
    IgnoreCtime,
    /// Trust path, size and mtime only: for sources mounted from volume
    /// snapshots or clones, where every inode and ctime changes between runs.
    IgnoreInode,
}

/// Which snapshot to use as the parent.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum ParentChoice {
    /// The latest snapshot with the same host and paths.
    #[default]
    Latest,
    /// No parent: read every file.
    None,
    /// This snapshot.
    Snapshot(Id),
}

/// What to back up and how.
#[derive(Clone, Debug, Default)]
pub struct BackupOptions {
    /// Source paths (files or directories).
    pub paths: Vec<PathBuf>,
    /// Tags for the snapshot.
    pub tags: Vec<String>,
    /// Host name to record (default: this machine's).
    pub hostname: Option<String>,
    /// Glob patterns to exclude. Patterns without `/` match names anywhere;
    /// patterns with `/` match whole absolute paths.
    pub excludes: Vec<String>,
    /// Parent snapshot selection.
    pub parent: ParentChoice,
    /// Unchanged-file detection.
    pub change_detection: ChangeDetection,
    /// Worker threads per CPU-bound stage (0 = number of CPUs).
    pub threads: usize,
}

/// A source entry that could not be backed up.
#[derive(Clone, Debug, serde::Serialize)]
pub struct SourceError {
    /// The path.
    pub path: PathBuf,
    /// What went wrong.
    pub message: String,
}

/// Result of a backup.
#[derive(Debug)]
pub struct BackupResult {
    /// ID of the snapshot written.
    pub snapshot_id: Id,
    /// The snapshot.
    pub snapshot: Snapshot,
    /// Entries skipped because they could not be read.
    pub errors: Vec<SourceError>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum FileOutcome {
    New,
    Changed,
    Unmodified,
}

/// A blob for the blob workers to encode (compress, pad, encrypt) and store
/// through the writer.
struct BlobJob {
    ticket: Ticket,
    blob_type: BlobType,
    id: Id,
    /// The plaintext in a [`crate::blob::blob_buffer`].
    data: Vec<u8>,
}

/// What the walker tells the tree builder, in depth-first order.
enum Event {
    EnterDir {
        node: Option<Node>,
        parent_subtree: Option<Id>,
    },
    Entry(Node),
    File {
        node: Node,
        outcome: FileOutcome,
        reply: Option<Receiver<std::result::Result<FileRead, SourceError>>>,
    },
    LeaveDir,
}

#[derive(Default)]
struct Counters {
    files_new: AtomicU64,
    files_changed: AtomicU64,
    files_unmodified: AtomicU64,
    dirs_new: AtomicU64,
    dirs_changed: AtomicU64,
    dirs_unmodified: AtomicU64,
    bytes_read: AtomicU64,
    total_files: AtomicU64,
    total_bytes: AtomicU64,
}

fn add(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

/// State shared by all stages of one backup.
struct Shared<'a> {
    repo: &'a IndexedRepository<'a>,
    writer: &'a Writer<'a, 'a>,
    counters: Counters,
    failed: AtomicBool,
    fatal: Mutex<Option<Error>>,
    source_errors: Mutex<Vec<SourceError>>,
}

impl Shared<'_> {
    /// A ticket when the blob must be stored (not in the repository, not claimed yet).
    fn claim(&self, t: BlobType, id: Id) -> Option<Ticket> {
        self.writer.claim(t, id)
    }

    fn fail(&self, e: Error) {
        {
            let mut f = self.fatal.lock().unwrap_or_else(PoisonError::into_inner);
            f.get_or_insert(e);
        }
        self.failed.store(true, Ordering::SeqCst);
    }

    /// Whether this backup or its writer failed.
    fn failed(&self) -> bool {
        self.failed.load(Ordering::Relaxed) || self.writer.failed()
    }

    fn source_error(&self, path: &Path, message: String) {
        tracing::warn!(path = %path.display(), "{message}");
        {
            let mut v = self
                .source_errors
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            v.push(SourceError {
                path: path.to_path_buf(),
                message,
            });
        }
    }
}

/// Test-only hooks into the walker and the file workers, to change a source entry at an
/// exact point of its backup (what a concurrent writer can do at any time).
#[cfg(test)]
pub(crate) mod test_hooks {
    use std::path::Path;
    use std::sync::Mutex;

    /// Called with the phase ("before opendir" in the walker, "before open"
    /// and "opened" in the file workers) and the entry's path.
    pub type Hook = fn(&str, &Path);
    pub static HOOK: Mutex<Option<Hook>> = Mutex::new(None);

    pub fn run(phase: &str, path: &Path) {
        let hook = *HOOK
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(hook) = hook {
            hook(phase, path);
        }
    }
}

/// Walk, read and build trees with `threads` workers per CPU-bound stage,
/// feeding the writer; returns the root tree's ID.
fn run_pipeline(
    shared: &Shared<'_>,
    threads: usize,
    excludes: Excludes,
    chunker: &crate::chunker::Chunker,
    opts: &BackupOptions,
    parent_root: Option<Id>,
    path_tree: &PathTree,
) -> Result<Id> {
    std::thread::scope(|s| -> Result<Id> {
        let (file_tx, file_rx) = bounded::<FileJob>(threads * 4);
        let (blob_tx, blob_rx) = bounded::<BlobJob>(threads * 2);
        let (event_tx, event_rx) = bounded::<Event>(8192);

        for _ in 0..threads {
            let (rx, tx, chunker) = (file_rx.clone(), blob_tx.clone(), chunker.clone());
            s.spawn(move || {
                let mut buf = Vec::new();
                for job in rx {
                    let result = read_file(shared, &chunker, &mut buf, &tx, &job);
                    let _ = job.reply.send(result);
                }
            });
            let rx = blob_rx.clone();
            s.spawn(move || {
                for job in rx {
                    let saved = shared
                        .writer
                        .save_buf(job.ticket, job.blob_type, job.id, job.data);
                    if let Err(e) = saved {
                        shared.fail(e);
                    }
                }
            });
        }
        drop((file_rx, blob_rx));
        let builder = s.spawn(move || build_trees(shared, event_rx, blob_tx));

        let walked = (|| -> Result<()> {
            let walker = Walker {
                shared,
                excludes,
                detection: opts.change_detection,
                events: event_tx,
                files: file_tx,
            };
            walker.send(Event::EnterDir {
                node: None,
                parent_subtree: parent_root,
            })?;
            let parent_tree = walker.parent_tree(parent_root);
            walker.walk_virtual(path_tree, Path::new("/"), parent_tree.as_ref())
            // the walker (and with it the event and file senders) is dropped here
        })();
        let built = builder
            .join()
            .map_err(|_| Error::Internal("tree builder panicked".into()))?;
        // Record the builder's error first: it explains why the walker stopped.
        let built = built.map_err(|e| {
            shared.fail(e);
            Error::Internal("backup failed".into())
        });
        if let Err(e) = walked {
            shared.fail(e);
        }
        built
    })
}

/// Run a backup and write its snapshot.
///
/// The loaded index is the dedup base: only an [`IndexedRepository`] is accepted.
///
/// # Errors
/// Invalid options; storage errors (the snapshot is then not written, and
/// what was uploaded stays unreferenced until a later backup reuses it or
/// prune removes it). Unreadable source entries are not errors: they are
/// reported in [`BackupResult::errors`].
pub fn backup(repo: &IndexedRepository<'_>, opts: &BackupOptions) -> Result<BackupResult> {
    let started = Instant::now();
    let time = chrono::Local::now().fixed_offset();
    if opts.paths.is_empty() {
        return Err(Error::InvalidInput(
            "nothing to back up: give at least one path".into(),
        ));
    }
    let mut paths = Vec::new();
    let mut path_tree = PathTree::default();
    for p in &opts.paths {
        let abs = normalize(p)?;
        fs::symlink_metadata(&abs).map_err(|e| Error::io("cannot back up", &abs, e))?;
        path_tree.insert(&abs);
        paths.push(abs.to_string_lossy().into_owned());
    }
    paths.sort();
    paths.dedup();
    let host = opts.hostname.clone().unwrap_or_else(hostname);

    let parent = match &opts.parent {
        ParentChoice::None => None,
        ParentChoice::Snapshot(id) => {
            Some((*id, repo.load_json::<Snapshot>(FileKind::Snapshot, id)?))
        }
        ParentChoice::Latest => repo
            .snapshots()?
            .into_iter()
            .rev()
            .find(|(_, s)| s.same_source(&host, &paths)),
    };
    if let Some((id, _)) = &parent {
        tracing::info!("using parent snapshot {}", id.short());
    }

    let threads = if opts.threads == 0 {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2)
    } else {
        opts.threads
    };
    let excludes = Excludes::new(&opts.excludes)?;
    let chunker = repo.chunker();

    let ((root, counters, errors), stored) = write_session(repo, Indexing::Write, |writer| {
        let shared = Shared {
            repo,
            writer,
            counters: Counters::default(),
            failed: AtomicBool::new(false),
            fatal: Mutex::new(None),
            source_errors: Mutex::new(Vec::new()),
        };
        let parent_root = parent.as_ref().map(|(_, snap)| snap.tree);
        let root = run_pipeline(
            &shared,
            threads,
            excludes,
            &chunker,
            opts,
            parent_root,
            &path_tree,
        );
        // A signal may have cut a file's read short after the walk ended:
        // no snapshot then, rather than one with that file missing.
        crate::interrupt::check()?;
        // All stages have finished here (the pipeline's scope joined them).
        if let Some(e) = shared
            .fatal
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            return Err(e);
        }
        let errors = shared
            .source_errors
            .into_inner()
            .unwrap_or_else(PoisonError::into_inner);
        Ok((root?, shared.counters, errors))
    })?;
    // The writer has stored and indexed every blob: the snapshot may follow.

    let c = &counters;
    let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let summary = Summary {
        files_new: get(&c.files_new),
        files_changed: get(&c.files_changed),
        files_unmodified: get(&c.files_unmodified),
        dirs_new: get(&c.dirs_new),
        dirs_changed: get(&c.dirs_changed),
        dirs_unmodified: get(&c.dirs_unmodified),
        data_blobs_added: stored.data_blobs,
        tree_blobs_added: stored.tree_blobs,
        bytes_added: stored.raw_bytes,
        bytes_stored: stored.pack_bytes,
        bytes_read: get(&c.bytes_read),
        total_files: get(&c.total_files),
        total_bytes: get(&c.total_bytes),
        errors: errors.len() as u64,
        duration_seconds: 0.0,
    };
    let mut snapshot = Snapshot {
        time,
        hostname: host,
        username: username(),
        paths,
        tags: opts.tags.clone(),
        tree: root,
        parent: parent.map(|(id, _)| id),
        original: None,
        program_version: format!("cairn {}", env!("CARGO_PKG_VERSION")),
        summary,
    };
    snapshot.summary.duration_seconds = started.elapsed().as_secs_f64();
    let snapshot_id = repo.save_json(FileKind::Snapshot, &snapshot)?;
    Ok(BackupResult {
        snapshot_id,
        snapshot,
        errors,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::LocalBackend;
    use crate::repository::KdfCost;
    use crate::repository::Repository;
    use crate::tree::NodeType;
    use rustix::fs::{self as rfs, FileType, Mode};
    use std::collections::BTreeMap;
    use std::os::unix::fs::symlink;

    /// The agent's secret: what a swapped-in symlink points at.
    const SECRET: &[u8] = b"CAIRN_PASSWORD=hunter2 AWS_SECRET_ACCESS_KEY=abc";

    fn secret_path(source: &Path) -> PathBuf {
        source.parent().unwrap().join("secret")
    }

    /// Replaces entries at the moment the file workers reach them, by name:
    /// what a tenant writing the volume can do at any time.
    fn swap(phase: &str, path: &Path) {
        let name = path.file_name().unwrap().to_str().unwrap();
        let source = path.parent().unwrap();
        match (phase, name) {
            ("before open", "to-secret") => {
                fs::remove_file(path).unwrap();
                symlink(secret_path(source), path).unwrap();
            }
            ("before open", "to-zero") => {
                fs::remove_file(path).unwrap();
                symlink("/dev/zero", path).unwrap();
            }
            ("before open", "to-fifo") => {
                fs::remove_file(path).unwrap();
                rfs::mknodat(rfs::CWD, path, FileType::Fifo, Mode::RWXU, 0).unwrap();
            }
            ("before open", "to-other-file") => {
                // Made before the old one goes: certainly another inode.
                let new = path.with_file_name("new");
                fs::write(&new, b"another inode").unwrap();
                fs::rename(&new, path).unwrap();
            }
            ("before opendir", "sub") => {
                // A directory becomes a symlink to the secret's directory
                // between the walker's look and its open.
                fs::rename(path, path.with_file_name("moved-away")).unwrap();
                symlink(secret_path(source).parent().unwrap(), path).unwrap();
            }
            ("opened", "shrinks") => {
                fs::OpenOptions::new()
                    .write(true)
                    .open(path)
                    .unwrap()
                    .set_len(10)
                    .unwrap();
            }
            _ => {}
        }
    }

    #[test]
    fn entries_swapped_during_a_backup_are_not_followed_and_are_reported() {
        let tmp = tempfile::tempdir().unwrap();
        let source = tmp.path().join("src");
        fs::create_dir_all(source.join("sub")).unwrap();
        fs::write(secret_path(&source), SECRET).unwrap();
        for name in ["to-secret", "to-zero", "to-fifo", "to-other-file", "kept"] {
            fs::write(source.join(name), format!("original {name}")).unwrap();
        }
        fs::write(source.join("sub/dir-file"), b"in sub").unwrap();
        fs::write(source.join("shrinks"), vec![b'x'; 100_000]).unwrap();

        let backend = Box::new(LocalBackend::new(tmp.path().join("repo")));
        let cost = KdfCost {
            memory_kib: 1024,
            iterations: 1,
        };
        let repo = Repository::init(backend, b"pw", cost).unwrap();
        let repo = repo.load_index().unwrap();
        *test_hooks::HOOK.lock().unwrap() = Some(swap);
        let result = backup(
            &repo,
            &BackupOptions {
                paths: vec![source.clone()],
                threads: 2,
                ..Default::default()
            },
        );
        *test_hooks::HOOK.lock().unwrap() = None;
        let result = result.unwrap();

        let mut errors: Vec<(String, String)> = result
            .errors
            .iter()
            .map(|e| {
                let name = e.path.file_name().unwrap().to_string_lossy().into_owned();
                (name, e.message.clone())
            })
            .collect();
        errors.sort();
        let expect = [
            ("shrinks", "changed while being read"),
            ("sub", "was a directory, opened a symbolic link"),
            ("to-fifo", "opened a FIFO"),
            ("to-other-file", "opened a regular file"),
            ("to-secret", "opened a symbolic link"),
            ("to-zero", "opened a symbolic link"),
        ];
        assert_eq!(errors.len(), expect.len(), "{errors:#?}");
        for ((name, msg), (want_name, want)) in errors.iter().zip(expect) {
            assert_eq!(name, want_name, "{errors:#?}");
            assert!(msg.contains(want), "{name}: {msg}");
        }

        // Every stored byte comes from the source tree as it was: no secret,
        // no /dev/zero, and the swapped files are absent.
        let backend = Box::new(LocalBackend::new(tmp.path().join("repo")));
        let repo = Repository::open(backend, b"pw").unwrap();
        let repo = repo.load_index().unwrap();
        let root = repo.load_tree(&result.snapshot.tree).unwrap();
        let mut stack = vec![root];
        let mut files = BTreeMap::new();
        while let Some(tree) = stack.pop() {
            for node in tree.nodes {
                if let Some(sub) = node.subtree {
                    stack.push(repo.load_tree(&sub).unwrap());
                }
                if node.node_type == NodeType::File {
                    let mut data = Vec::new();
                    repo.read_data_blobs(&node.content, 1 << 20, |d| {
                        data.extend_from_slice(d);
                        Ok(())
                    })
                    .unwrap();
                    assert!(
                        !data.windows(SECRET.len()).any(|w| w == SECRET),
                        "{} holds the secret",
                        node.name.display()
                    );
                    files.insert(node.name.display(), data);
                }
            }
        }
        let names: Vec<&str> = files.keys().map(String::as_str).collect();
        assert_eq!(names, ["kept", "shrinks"], "{files:?}");
        assert_eq!(files["kept"], b"original kept");
        assert_eq!(files["shrinks"].len(), 10);
    }
}
