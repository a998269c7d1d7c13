//! The backup pipeline. Stages run on their own threads and talk through
//! bounded channels, so a slow stage throttles the ones before it and memory
//! stays flat however large the source is:
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
//! ([`crate::writer`]); this module walks, reads and builds trees.
//!
//! The walker never waits for file contents: it only decides, per file, whether
//! the parent snapshot's content can be reused (metadata unchanged) or the file
//! must be read. The tree builder assembles directories in depth-first order.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::ErrorKind;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use rustix::fs::{self as rfs, AtFlags, FileType, Mode, OFlags, Stat};
use rustix::io::Errno;

use crossbeam_channel::{bounded, Receiver, Sender};
use globset::{Glob, GlobSet, GlobSetBuilder};

use crate::backend::FileKind;
use crate::beneath;
use crate::blob::{blob_buffer, BlobType};
use crate::constants::MAX_TREE_DEPTH;
use crate::error::{Error, Result};
use crate::id::Id;
use crate::repository::{hostname, username, Repository};
use crate::snapshot::{Snapshot, Summary};
use crate::tree::{Node, NodeType, RawName, Tree};
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

/// A regular file to read: by name in its open directory, expected to be
/// the inode the walker saw there.
struct FileJob {
    dir: Arc<OwnedFd>,
    name: Vec<u8>,
    path: PathBuf,
    seen: (u64, u64),
    reply: Sender<std::result::Result<FileRead, SourceError>>,
}

struct FileRead {
    content: Vec<Id>,
    size: u64,
    /// The file changed while it was read (stored as read, reported).
    changed: Option<SourceError>,
}

struct BlobJob {
    ticket: Ticket,
    blob_type: BlobType,
    id: Id,
    /// The plaintext in a [`blob_buffer`].
    data: Vec<u8>,
}

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
    repo: &'a Repository,
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

/// Excludes compiled from glob patterns.
struct Excludes {
    names: GlobSet,
    paths: GlobSet,
}

impl Excludes {
    fn new(patterns: &[String]) -> Result<Excludes> {
        let mut names = GlobSetBuilder::new();
        let mut paths = GlobSetBuilder::new();
        for p in patterns {
            let glob = Glob::new(p)
                .map_err(|e| Error::InvalidInput(format!("bad exclude pattern {p:?}: {e}")))?;
            if p.contains('/') {
                paths.add(glob);
            } else {
                names.add(glob);
            }
        }
        let build = |b: GlobSetBuilder| {
            b.build()
                .map_err(|e| Error::InvalidInput(format!("bad exclude pattern: {e}")))
        };
        Ok(Excludes {
            names: build(names)?,
            paths: build(paths)?,
        })
    }

    fn excluded(&self, path: &Path) -> bool {
        path.file_name().is_some_and(|n| self.names.is_match(n)) || self.paths.is_match(path)
    }
}

/// Make a path absolute and remove `.`/`..` components without touching symlinks.
fn normalize(p: &Path) -> Result<PathBuf> {
    let abs = std::path::absolute(p).map_err(|e| Error::io("resolve path", p, e))?;
    let mut out = PathBuf::from("/");
    for c in abs.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::ParentDir => {
                out.pop();
            }
            _ => {}
        }
    }
    Ok(out)
}

fn time_ns(secs: i64, nsec: i64) -> i64 {
    secs.saturating_mul(1_000_000_000).saturating_add(nsec)
}

/// A tree node from an entry's `stat` (no content). The casts are no-ops on
/// x86_64 but not on every target (`st_nlink` is 32 bits on aarch64).
#[allow(clippy::unnecessary_cast)]
fn node_from_stat(name: RawName, st: &Stat) -> Node {
    let node_type = match FileType::from_raw_mode(st.st_mode) {
        FileType::Directory => NodeType::Dir,
        FileType::Symlink => NodeType::Symlink,
        FileType::Fifo => NodeType::Fifo,
        FileType::CharacterDevice => NodeType::Chardev,
        FileType::BlockDevice => NodeType::Blockdev,
        FileType::Socket => NodeType::Socket,
        _ => NodeType::File,
    };
    Node {
        name,
        node_type,
        mode: st.st_mode,
        uid: st.st_uid,
        gid: st.st_gid,
        mtime_ns: time_ns(st.st_mtime as i64, st.st_mtime_nsec as i64),
        ctime_ns: time_ns(st.st_ctime as i64, st.st_ctime_nsec as i64),
        inode: st.st_ino as u64,
        device_id: st.st_dev as u64,
        links: st.st_nlink as u64,
        size: if node_type == NodeType::File {
            st.st_size.max(0) as u64
        } else {
            0
        },
        content: Vec::new(),
        subtree: None,
        target: None,
        rdev: if matches!(node_type, NodeType::Chardev | NodeType::Blockdev) {
            st.st_rdev as u64
        } else {
            0
        },
    }
}

/// Device and inode: which entry a `stat` describes.
#[allow(clippy::unnecessary_cast)]
fn identity(st: &Stat) -> (u64, u64) {
    (st.st_dev as u64, st.st_ino as u64)
}

/// What an entry's type is called in messages.
fn kind_name(st: &Stat) -> &'static str {
    match FileType::from_raw_mode(st.st_mode) {
        FileType::RegularFile => "a regular file",
        FileType::Directory => "a directory",
        FileType::Symlink => "a symbolic link",
        FileType::Fifo => "a FIFO",
        FileType::CharacterDevice => "a character device",
        FileType::BlockDevice => "a block device",
        FileType::Socket => "a socket",
        FileType::Unknown => "an entry of unknown type",
    }
}

/// The entry opened is not the one the walk looked at: a concurrent writer
/// replaced it (with a symlink, a FIFO, another file). It is not read.
fn replaced(was: &str, now: &Stat) -> String {
    format!(
        "replaced while the backup ran (was {was}, opened {}): not backed up",
        kind_name(now)
    )
}

fn unchanged(node: &Node, old: &Node, mode: ChangeDetection) -> bool {
    old.node_type == NodeType::File
        && old.size == node.size
        && old.mtime_ns == node.mtime_ns
        && match mode {
            ChangeDetection::Strict => old.inode == node.inode && old.ctime_ns == node.ctime_ns,
            ChangeDetection::IgnoreCtime => old.inode == node.inode,
            ChangeDetection::IgnoreInode => true,
        }
}

/// The set of source paths as a tree of path components; leaves are backed up whole.
#[derive(Default)]
struct PathTree {
    children: BTreeMap<Vec<u8>, PathTree>,
    leaf: bool,
}

impl PathTree {
    fn insert(&mut self, path: &Path) {
        let mut t = self;
        for c in path.components() {
            if let Component::Normal(n) = c {
                if t.leaf {
                    return; // an ancestor is already backed up whole
                }
                t = t.children.entry(RawName::from_os(n).0).or_default();
            }
        }
        t.leaf = true;
        t.children.clear();
    }
}

struct Walker<'s, 'a> {
    shared: &'s Shared<'a>,
    excludes: Excludes,
    detection: ChangeDetection,
    events: Sender<Event>,
    files: Sender<FileJob>,
}

impl Walker<'_, '_> {
    fn send(&self, e: Event) -> Result<()> {
        self.events
            .send(e)
            .map_err(|_| Error::Internal("tree builder stopped".into()))
    }

    fn parent_tree(&self, subtree: Option<Id>) -> Option<Tree> {
        let id = subtree?;
        match self.shared.repo.load_tree(&id) {
            Ok(t) => Some(t),
            Err(e) => {
                tracing::warn!("parent tree {id} unreadable, reading files again: {e}");
                None
            }
        }
    }

    /// Emit the virtual directories above the source paths, then the sources.
    /// These paths are the user's: their components are followed as written.
    fn walk_virtual(&self, tree: &PathTree, path: &Path, parent: Option<&Tree>) -> Result<()> {
        for (name, child) in &tree.children {
            let child_path = path.join(RawName(name.clone()).to_os());
            let old = parent.and_then(|t| t.find(name));
            if child.leaf {
                match beneath::open_dir_path(path) {
                    Ok(dir) => {
                        let dir = Arc::new(dir);
                        self.walk_entry(&dir, name, &child_path, old, 0)?;
                    }
                    Err(e) => self
                        .shared
                        .source_error(path, format!("cannot open directory: {e}")),
                }
                continue;
            }
            let st = match rfs::stat(&child_path) {
                Ok(st) => st,
                Err(e) => {
                    self.shared
                        .source_error(&child_path, format!("cannot stat: {e}"));
                    continue;
                }
            };
            let node = node_from_stat(RawName(name.clone()), &st);
            let old_subtree = old.and_then(|n| n.subtree);
            self.send(Event::EnterDir {
                node: Some(node),
                parent_subtree: old_subtree,
            })?;
            let old_tree = self.parent_tree(old_subtree);
            self.walk_virtual(child, &child_path, old_tree.as_ref())?;
            self.send(Event::LeaveDir)?;
        }
        Ok(())
    }

    /// Back up the entry `name` of the open directory `dir` (at `path`).
    /// Nothing is followed: the entry is examined with `fstatat(NOFOLLOW)`,
    /// a directory is opened with `O_NOFOLLOW` and must be the inode
    /// examined, and files are read the same way by the file workers.
    fn walk_entry(
        &self,
        dir: &Arc<OwnedFd>,
        name: &[u8],
        path: &Path,
        old: Option<&Node>,
        depth: usize,
    ) -> Result<()> {
        if self.shared.failed() {
            return Err(Error::Internal("backup aborted".into()));
        }
        crate::interrupt::check()?;
        let st = match rfs::statat(dir.as_fd(), name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(e) => {
                self.shared.source_error(path, format!("cannot stat: {e}"));
                return Ok(());
            }
        };
        let mut node = node_from_stat(RawName(name.to_vec()), &st);
        match node.node_type {
            NodeType::File => {
                if let Some(old) = old.filter(|o| unchanged(&node, o, self.detection)) {
                    let index = self.shared.repo.index();
                    if old
                        .content
                        .iter()
                        .all(|id| index.contains_live(BlobType::Data, id))
                    {
                        node.content = old.content.clone();
                        return self.send(Event::File {
                            node,
                            outcome: FileOutcome::Unmodified,
                            reply: None,
                        });
                    }
                }
                let outcome = if old.is_some() {
                    FileOutcome::Changed
                } else {
                    FileOutcome::New
                };
                let (tx, rx) = bounded(1);
                self.files
                    .send(FileJob {
                        dir: Arc::clone(dir),
                        name: name.to_vec(),
                        path: path.to_path_buf(),
                        seen: (node.device_id, node.inode),
                        reply: tx,
                    })
                    .map_err(|_| Error::Internal("file workers stopped".into()))?;
                self.send(Event::File {
                    node,
                    outcome,
                    reply: Some(rx),
                })
            }
            NodeType::Dir if depth >= MAX_TREE_DEPTH => {
                let msg = format!("nested deeper than {MAX_TREE_DEPTH} directories: not backed up");
                self.shared.source_error(path, msg);
                Ok(())
            }
            NodeType::Dir => {
                #[cfg(test)]
                test_hooks::run("before opendir", path);
                let sub = match beneath::open_dir_at(dir.as_fd(), name) {
                    Ok(fd) => fd,
                    // O_DIRECTORY | O_NOFOLLOW on what is no longer a directory.
                    Err(e) if matches!(e.raw_os_error(), Some(libc::ELOOP | libc::ENOTDIR)) => {
                        let msg = match rfs::statat(dir.as_fd(), name, AtFlags::SYMLINK_NOFOLLOW) {
                            Ok(now) => replaced("a directory", &now),
                            Err(e) => format!("cannot open directory: {e}"),
                        };
                        self.shared.source_error(path, msg);
                        return Ok(());
                    }
                    Err(e) => {
                        self.shared
                            .source_error(path, format!("cannot open directory: {e}"));
                        return Ok(());
                    }
                };
                match rfs::fstat(&sub) {
                    Ok(now) if identity(&now) == (node.device_id, node.inode) => {}
                    Ok(now) => {
                        self.shared
                            .source_error(path, replaced("a directory", &now));
                        return Ok(());
                    }
                    Err(e) => {
                        self.shared.source_error(path, format!("cannot stat: {e}"));
                        return Ok(());
                    }
                }
                let mut entries = match beneath::list_dir(sub.as_fd()) {
                    Ok(names) => names,
                    Err(e) => {
                        self.shared
                            .source_error(path, format!("cannot list directory: {e}"));
                        return Ok(());
                    }
                };
                entries.sort_unstable();
                let sub = Arc::new(sub);
                let old_subtree = old
                    .filter(|o| o.node_type == NodeType::Dir)
                    .and_then(|o| o.subtree);
                self.send(Event::EnterDir {
                    node: Some(node),
                    parent_subtree: old_subtree,
                })?;
                let old_tree = self.parent_tree(old_subtree);
                for name in entries {
                    let child = path.join(std::ffi::OsStr::from_bytes(&name));
                    if self.excludes.excluded(&child) {
                        continue;
                    }
                    let old_child = old_tree.as_ref().and_then(|t| t.find(&name));
                    self.walk_entry(&sub, &name, &child, old_child, depth + 1)?;
                }
                self.send(Event::LeaveDir)
            }
            NodeType::Symlink => {
                match rfs::readlinkat(dir.as_fd(), name, Vec::new()) {
                    Ok(t) => node.target = Some(RawName(t.into_bytes())),
                    Err(e) => {
                        self.shared
                            .source_error(path, format!("cannot read link: {e}"));
                        return Ok(());
                    }
                }
                self.send(Event::Entry(node))
            }
            _ => self.send(Event::Entry(node)),
        }
    }
}

/// Open a regular file for reading without following a symlink and without
/// blocking (a FIFO swapped in opens at once, and is then refused by type).
fn open_source(dir: BorrowedFd<'_>, name: &[u8]) -> std::result::Result<OwnedFd, Errno> {
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
    // O_NOATIME keeps backups from dirtying atimes; only the owner (or root) may use it.
    match rfs::openat(dir, name, flags | OFlags::NOATIME, Mode::empty()) {
        Err(Errno::PERM) => rfs::openat(dir, name, flags, Mode::empty()),
        other => other,
    }
}

/// Whether a file's size or modification time moved between two `fstat`s.
fn file_changed(before: &Stat, after: &Stat) -> Option<String> {
    #[allow(clippy::unnecessary_cast)]
    let time = |st: &Stat| time_ns(st.st_mtime as i64, st.st_mtime_nsec as i64);
    if before.st_size != after.st_size {
        Some(format!(
            "changed while being read (size {} -> {} bytes): stored as read",
            before.st_size, after.st_size
        ))
    } else {
        (time(before) != time(after))
            .then(|| "changed while being read (modified again): stored as read".to_string())
    }
}

fn read_file(
    shared: &Shared<'_>,
    chunker: &crate::chunker::Chunker,
    buf: &mut Vec<u8>,
    blobs: &Sender<BlobJob>,
    job: &FileJob,
) -> std::result::Result<FileRead, SourceError> {
    let path = job.path.as_path();
    let src_err = |message: String| SourceError {
        path: path.to_path_buf(),
        message,
    };
    #[cfg(test)]
    test_hooks::run("before open", path);
    let fd = match open_source(job.dir.as_fd(), &job.name) {
        Ok(fd) => fd,
        Err(Errno::LOOP) => {
            let msg = "replaced while the backup ran (was a regular file, opened a symbolic link): not backed up";
            return Err(src_err(msg.into()));
        }
        Err(e) => return Err(src_err(format!("cannot open: {e}"))),
    };
    let opened = rfs::fstat(&fd).map_err(|e| src_err(format!("cannot stat: {e}")))?;
    if FileType::from_raw_mode(opened.st_mode) != FileType::RegularFile
        || identity(&opened) != job.seen
    {
        return Err(src_err(replaced("a regular file", &opened)));
    }
    #[cfg(test)]
    test_hooks::run("opened", path);
    let file = File::from(fd);
    let key = shared.repo.key();
    let mut content = Vec::new();
    let mut pipeline_closed = false;
    let size = chunker
        .chunk_stream_with::<_, std::io::Error>(buf, &file, |chunk| {
            if crate::interrupt::requested() {
                pipeline_closed = true;
                return Err(std::io::Error::new(ErrorKind::Interrupted, "interrupted"));
            }
            let id = key.blob_id(chunk);
            if let Some(ticket) = shared.claim(BlobType::Data, id) {
                let job = BlobJob {
                    ticket,
                    blob_type: BlobType::Data,
                    id,
                    data: blob_buffer(chunk),
                };
                if blobs.send(job).is_err() {
                    pipeline_closed = true;
                    return Err(std::io::Error::new(
                        ErrorKind::BrokenPipe,
                        "pipeline stopped",
                    ));
                }
            }
            content.push(id);
            Ok(())
        })
        .map_err(|e| {
            src_err(if pipeline_closed {
                "backup aborted".into()
            } else {
                format!("read error: {e}")
            })
        })?;
    add(&shared.counters.bytes_read, size);
    let after = rfs::fstat(&file).map_err(|e| src_err(format!("cannot stat: {e}")))?;
    // A file that shrank or grew while it was read (or was rewritten in
    // place) is stored as read, and said so: the backup exits 3.
    let changed = file_changed(&opened, &after)
        .or_else(|| {
            (size != after.st_size.max(0) as u64).then(|| {
                format!(
                    "changed while being read (read {size} bytes of {}): stored as read",
                    after.st_size
                )
            })
        })
        .map(src_err);
    Ok(FileRead {
        content,
        size,
        changed,
    })
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

/// Assemble trees from the walker's events (in depth-first order) and store them.
fn build_trees(shared: &Shared<'_>, events: Receiver<Event>, blobs: Sender<BlobJob>) -> Result<Id> {
    struct Open {
        node: Option<Node>,
        parent_subtree: Option<Id>,
        nodes: Vec<Node>,
    }
    let key = shared.repo.key();
    let c = &shared.counters;
    let mut stack: Vec<Open> = Vec::new();
    for ev in events {
        match ev {
            Event::EnterDir {
                node,
                parent_subtree,
            } => {
                stack.push(Open {
                    node,
                    parent_subtree,
                    nodes: Vec::new(),
                });
            }
            Event::Entry(node) => {
                if let Some(top) = stack.last_mut() {
                    top.nodes.push(node);
                }
            }
            Event::File {
                mut node,
                outcome,
                reply,
            } => {
                if let Some(rx) = reply {
                    match rx.recv() {
                        Ok(Ok(read)) => {
                            node.content = read.content;
                            node.size = read.size;
                            if let Some(e) = read.changed {
                                shared.source_error(&e.path, e.message);
                            }
                        }
                        Ok(Err(e)) => {
                            shared.source_error(&e.path, e.message);
                            continue;
                        }
                        Err(_) => return Err(Error::Internal("file worker stopped".into())),
                    }
                }
                match outcome {
                    FileOutcome::New => add(&c.files_new, 1),
                    FileOutcome::Changed => add(&c.files_changed, 1),
                    FileOutcome::Unmodified => add(&c.files_unmodified, 1),
                }
                add(&c.total_files, 1);
                add(&c.total_bytes, node.size);
                if let Some(top) = stack.last_mut() {
                    top.nodes.push(node);
                }
            }
            Event::LeaveDir => {
                let Some(open) = stack.pop() else {
                    return Err(Error::Internal("unbalanced directory events".into()));
                };
                let id = save_tree(shared, key, &blobs, open.nodes, open.parent_subtree)?;
                let mut node = open
                    .node
                    .ok_or_else(|| Error::Internal("root directory closed".into()))?;
                node.subtree = Some(id);
                if let Some(top) = stack.last_mut() {
                    top.nodes.push(node);
                }
            }
        }
    }
    match (stack.pop(), stack.is_empty()) {
        (Some(root), true) if root.node.is_none() => {
            save_tree(shared, key, &blobs, root.nodes, root.parent_subtree)
        }
        _ => Err(Error::Internal("unbalanced directory events".into())),
    }
}

fn save_tree(
    shared: &Shared<'_>,
    key: &crate::crypto::MasterKey,
    blobs: &Sender<BlobJob>,
    mut nodes: Vec<Node>,
    parent_subtree: Option<Id>,
) -> Result<Id> {
    nodes.sort_by(|a, b| a.name.cmp(&b.name));
    let bytes = Tree { nodes }.to_bytes();
    let id = key.blob_id(&bytes);
    let c = &shared.counters;
    match parent_subtree {
        None => add(&c.dirs_new, 1),
        Some(p) if p == id => add(&c.dirs_unmodified, 1),
        Some(_) => add(&c.dirs_changed, 1),
    }
    if let Some(ticket) = shared.claim(BlobType::Tree, id) {
        blobs
            .send(BlobJob {
                ticket,
                blob_type: BlobType::Tree,
                id,
                data: blob_buffer(&bytes),
            })
            .map_err(|_| Error::Internal("blob workers stopped".into()))?;
    }
    Ok(id)
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
/// The repository index must be loaded ([`Repository::load_index`]).
///
/// # Errors
/// Invalid options; storage errors (the snapshot is then not written, and
/// what was uploaded stays unreferenced until a later backup reuses it or
/// prune removes it). Unreadable source entries are not errors: they are
/// reported in [`BackupResult::errors`].
pub fn backup(repo: &Repository, opts: &BackupOptions) -> Result<BackupResult> {
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
        let mut repo = Repository::init(backend, b"pw", cost).unwrap();
        repo.load_index().unwrap();
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
        let mut repo = Repository::open(backend, b"pw").unwrap();
        repo.load_index().unwrap();
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
