//! Restore: recreate a snapshot (or part of it) under a target directory.
//! Every blob is decrypted and its keyed hash checked before it is written.
//! File contents are written by a pool of workers; directory metadata is
//! applied last, deepest first, so restoring into read-only directories works.

use std::collections::HashMap;
use std::ffi::CString;
use std::fs::{self, OpenOptions};
use std::ops::Range;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::sync::{Mutex, PoisonError};

use crossbeam_channel::{bounded, RecvTimeoutError, Sender};
use filetime::FileTime;
use globset::{Glob, GlobSet, GlobSetBuilder};

use crate::blob::BlobType;
use crate::error::{Error, Result};
use crate::id::Id;
use crate::repository::Repository;
use crate::tree::{Node, NodeType};

/// What to restore and where.
#[derive(Clone, Debug, Default)]
pub struct RestoreOptions {
    /// Directory to restore into (created if missing).
    pub target: PathBuf,
    /// Path inside the snapshot to restore (default: the whole snapshot).
    pub subpath: Option<String>,
    /// Glob patterns over paths in the snapshot; when given, only matching
    /// entries (and everything below matching directories) are restored.
    pub includes: Vec<String>,
    /// Restore ownership (uid/gid). Default: when running as root.
    pub owner: Option<bool>,
    /// Worker threads (0 = number of CPUs).
    pub threads: usize,
}

/// An entry that could not be restored.
#[derive(Clone, Debug, serde::Serialize)]
pub struct RestoreError {
    /// Path in the target.
    pub path: PathBuf,
    /// What went wrong.
    pub message: String,
}

/// Result of a restore.
#[derive(Debug, Default, serde::Serialize)]
pub struct RestoreSummary {
    /// Files restored.
    pub files: u64,
    /// Directories restored.
    pub dirs: u64,
    /// Other entries (symlinks, fifos, devices, hard links) restored.
    pub others: u64,
    /// Bytes of file content written.
    pub bytes: u64,
    /// Entries that failed.
    pub errors: Vec<RestoreError>,
}

struct Ctx<'r> {
    repo: &'r Repository,
    includes: Option<GlobSet>,
    owner: bool,
    errors: Mutex<Vec<RestoreError>>,
    files: AtomicU64,
    others: AtomicU64,
    bytes: AtomicU64,
}

impl Ctx<'_> {
    fn error(&self, path: &Path, message: String) {
        tracing::warn!(path = %path.display(), "{message}");
        {
            let mut e = self.errors.lock().unwrap_or_else(PoisonError::into_inner);
            e.push(RestoreError {
                path: path.to_path_buf(),
                message,
            });
        }
    }
}

enum FileTask {
    /// A file restored by one worker, front to back.
    Whole { path: PathBuf, node: Node },
    /// Blobs `blobs` of a large file, written at `offset` (see [`PART_BLOBS`]).
    Part {
        file: Arc<PartedFile>,
        blobs: Range<usize>,
        offset: u64,
    },
}

/// Files with more content blobs than this are restored in parts of this
/// many blobs (~32 MiB at the average chunk size) by all workers at once, so
/// one large file (a database volume, a disk image) is decrypted,
/// decompressed and verified on every core.
const PART_BLOBS: usize = 64;

/// A large file being restored in parts. The worker that finishes the last
/// part checks the size and applies the metadata.
struct PartedFile {
    path: PathBuf,
    node: Node,
    file: fs::File,
    parts_left: AtomicUsize,
    written: AtomicU64,
    failed: AtomicBool,
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> Error + 'a {
    move |e| Error::io(op, path, e)
}

fn set_owner(path: &Path, node: &Node) -> Result<()> {
    std::os::unix::fs::lchown(path, Some(node.uid), Some(node.gid)).map_err(io_err("chown", path))
}

/// Set atime and mtime by path without following or opening it (utimensat
/// with AT_SYMLINK_NOFOLLOW): opening a restored FIFO would block.
fn set_mtime(path: &Path, node: &Node) -> Result<()> {
    let t = file_time(node);
    filetime::set_symlink_file_times(path, t, t).map_err(io_err("set times", path))
}

fn file_time(node: &Node) -> FileTime {
    FileTime::from_unix_time(
        node.mtime_ns.div_euclid(1_000_000_000),
        node.mtime_ns.rem_euclid(1_000_000_000) as u32,
    )
}

/// [`apply_metadata`] for a regular file still open: through its descriptor,
/// without resolving the path three more times.
fn apply_file_metadata(ctx: &Ctx<'_>, f: &fs::File, path: &Path, node: &Node) -> Result<()> {
    if ctx.owner {
        std::os::unix::fs::fchown(f, Some(node.uid), Some(node.gid))
            .map_err(io_err("chown", path))?;
    }
    f.set_permissions(fs::Permissions::from_mode(node.mode & 0o7777))
        .map_err(io_err("chmod", path))?;
    let t = file_time(node);
    filetime::set_file_handle_times(f, Some(t), Some(t)).map_err(io_err("set times", path))
}

/// Ownership, permissions and times, in that order (chown clears set-id bits).
fn apply_metadata(ctx: &Ctx<'_>, path: &Path, node: &Node) -> Result<()> {
    let symlink = node.node_type == NodeType::Symlink;
    if ctx.owner {
        set_owner(path, node)?;
    }
    if !symlink {
        fs::set_permissions(path, fs::Permissions::from_mode(node.mode & 0o7777))
            .map_err(io_err("chmod", path))?;
    }
    set_mtime(path, node)
}

fn remove_existing(path: &Path) -> Result<()> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path).map_err(io_err("remove", path)),
        Ok(_) => fs::remove_file(path).map_err(io_err("remove", path)),
        Err(_) => Ok(()),
    }
}

/// How often a restore flushes the target filesystem in the background.
const FLUSH_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// Start writing a large file's data to disk every this many bytes, without
/// waiting: the final `syncfs` then finds little left to flush, and the disk
/// works while the CPUs decrypt and decompress (the kernel would otherwise
/// hold gigabytes of dirty pages until the end).
const WRITEBACK_EVERY: u64 = 8 << 20;

/// Ask the kernel to begin writeback of a byte range (Linux
/// `sync_file_range(SYNC_FILE_RANGE_WRITE)`: asynchronous, no metadata, no
/// durability promise by itself). A failure is harmless: `syncfs` follows.
fn start_writeback(f: &fs::File, offset: u64, len: u64) {
    use std::os::fd::AsRawFd;
    // SAFETY: the descriptor is valid for the lifetime of `f`; the call only
    // reads its arguments.
    unsafe {
        libc::sync_file_range(
            f.as_raw_fd(),
            offset as libc::off64_t,
            len as libc::off64_t,
            libc::SYNC_FILE_RANGE_WRITE,
        );
    }
}

/// Replace what is at `path` with a new, empty file only the owner can read
/// (its mode is set at the end).
fn create_file(path: &Path) -> Result<fs::File> {
    let open = || {
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
    };
    // Into an empty target the first attempt succeeds: no lookup before it.
    match open() {
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            remove_existing(path)?;
            open()
        }
        r => r,
    }
    .map_err(io_err("create", path))
}

/// All-zero chunks of 4 KiB or more are not written: they become holes, so
/// sparse files stay sparse.
fn is_hole(data: &[u8]) -> bool {
    data.len() >= 4096 && data.iter().all(|&b| b == 0)
}

/// Restored content of the wrong length: the snapshot and its blobs disagree.
fn size_mismatch(path: &Path, found: String, size: u64) -> Error {
    Error::corrupt(
        format!("file {}", path.display()),
        format!("{found} but the snapshot records {size}"),
    )
}

/// Write the plaintexts of `ids` into `file` from `offset` on: all-zero chunks
/// are skipped (holes), and writeback starts every [`WRITEBACK_EVERY`] bytes.
/// Returns the bytes covered and whether the last chunk was a hole.
fn write_blobs(
    ctx: &Ctx<'_>,
    file: &fs::File,
    path: &Path,
    ids: &[Id],
    offset: u64,
) -> Result<(u64, bool)> {
    let (mut pos, mut flushed, mut hole) = (offset, offset, false);
    ctx.repo
        .read_data_blobs(ids, ctx.repo.backend().max_read_run(), |data| {
            hole = is_hole(data);
            if !hole {
                file.write_all_at(data, pos)
                    .map_err(io_err("write", path))?;
            }
            pos += data.len() as u64;
            if pos - flushed >= WRITEBACK_EVERY {
                start_writeback(file, flushed, pos - flushed);
                flushed = pos;
            }
            Ok(())
        })?;
    // Small files are left to the kernel and the final syncfs.
    if pos - offset >= WRITEBACK_EVERY / 8 && pos > flushed {
        start_writeback(file, flushed, pos - flushed);
    }
    Ok((pos - offset, hole))
}

fn restore_file(ctx: &Ctx<'_>, path: &Path, node: &Node) -> Result<()> {
    let f = create_file(path)?;
    let (written, ends_in_hole) = write_blobs(ctx, &f, path, &node.content, 0)?;
    if ends_in_hole {
        f.set_len(written).map_err(io_err("truncate", path))?;
    }
    if written != node.size {
        let found = format!("restored {written} bytes");
        return Err(size_mismatch(path, found, node.size));
    }
    apply_file_metadata(ctx, &f, path, node)?;
    ctx.bytes.fetch_add(written, Ordering::Relaxed);
    Ok(())
}

/// Create a large file at its final size and split it into parts for the
/// workers (part offsets come from the blobs' plaintext lengths in the index).
fn open_parted(ctx: &Ctx<'_>, path: PathBuf, node: Node) -> Result<Vec<FileTask>> {
    let mut offsets = Vec::with_capacity(node.content.len().div_ceil(PART_BLOBS));
    let mut offset = 0u64;
    for (i, id) in node.content.iter().enumerate() {
        if i % PART_BLOBS == 0 {
            offsets.push((i, offset));
        }
        let loc = ctx
            .repo
            .index()
            .lookup(BlobType::Data, id)
            .ok_or_else(|| Error::NotFound(format!("data blob {id} (not in the index)")))?;
        offset += u64::from(loc.raw_length);
    }
    if offset != node.size {
        let found = format!("its blobs hold {offset} bytes");
        return Err(size_mismatch(&path, found, node.size));
    }
    let file = create_file(&path)?;
    // At its final size from the start: parts land anywhere, and all-zero
    // chunks are simply not written (they stay holes).
    file.set_len(node.size).map_err(io_err("truncate", &path))?;
    let n = node.content.len();
    let shared = Arc::new(PartedFile {
        path,
        node,
        file,
        parts_left: AtomicUsize::new(offsets.len()),
        written: AtomicU64::new(0),
        failed: AtomicBool::new(false),
    });
    Ok(offsets
        .into_iter()
        .map(|(i, offset)| FileTask::Part {
            file: Arc::clone(&shared),
            blobs: i..(i + PART_BLOBS).min(n),
            offset,
        })
        .collect())
}

/// Write one part of a large file; the last part to finish completes the file.
fn restore_part(ctx: &Ctx<'_>, pf: &PartedFile, blobs: Range<usize>, offset: u64) {
    match write_blobs(ctx, &pf.file, &pf.path, &pf.node.content[blobs], offset) {
        Ok((n, _)) => {
            pf.written.fetch_add(n, Ordering::Relaxed);
        }
        Err(e) => {
            if !pf.failed.swap(true, Ordering::Relaxed) {
                ctx.error(&pf.path, e.to_string());
            }
        }
    }
    if pf.parts_left.fetch_sub(1, Ordering::AcqRel) != 1 || pf.failed.load(Ordering::Relaxed) {
        return;
    }
    let written = pf.written.load(Ordering::Relaxed);
    let done = if written == pf.node.size {
        apply_file_metadata(ctx, &pf.file, &pf.path, &pf.node)
    } else {
        let found = format!("restored {written} bytes");
        Err(size_mismatch(&pf.path, found, pf.node.size))
    };
    match done {
        Ok(()) => {
            ctx.files.fetch_add(1, Ordering::Relaxed);
            ctx.bytes.fetch_add(written, Ordering::Relaxed);
        }
        Err(e) => ctx.error(&pf.path, e.to_string()),
    }
}

fn make_special(path: &Path, node: &Node) -> Result<()> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| Error::InvalidInput(format!("path {} contains NUL", path.display())))?;
    let kind = match node.node_type {
        NodeType::Fifo => libc::S_IFIFO,
        NodeType::Chardev => libc::S_IFCHR,
        _ => libc::S_IFBLK,
    };
    // SAFETY: `c` is a valid NUL-terminated path; mknod has no other preconditions.
    let rc = unsafe {
        libc::mknod(
            c.as_ptr(),
            kind | (node.mode & 0o7777) as libc::mode_t,
            node.rdev as libc::dev_t,
        )
    };
    if rc != 0 {
        return Err(Error::io("mknod", path, std::io::Error::last_os_error()));
    }
    Ok(())
}

fn restore_other(ctx: &Ctx<'_>, path: &Path, node: &Node) -> Result<()> {
    remove_existing(path)?;
    match node.node_type {
        NodeType::Symlink => {
            let target = node.target.clone().unwrap_or_default().to_os();
            std::os::unix::fs::symlink(&target, path).map_err(io_err("symlink", path))?;
        }
        NodeType::Fifo | NodeType::Chardev | NodeType::Blockdev => make_special(path, node)?,
        NodeType::Socket => return Ok(()), // a socket is recreated by its server, not by restore
        NodeType::File | NodeType::Dir => {
            return Err(Error::Internal(
                "files and directories are restored elsewhere".into(),
            ))
        }
    }
    ctx.others.fetch_add(1, Ordering::Relaxed);
    apply_metadata(ctx, path, node)
}

/// Create a directory, replacing a non-directory in its way; an existing
/// directory is kept. Into an empty target one `mkdir` and nothing else.
fn create_dir(path: &Path) -> std::io::Result<()> {
    match fs::create_dir(path) {
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            if fs::symlink_metadata(path)?.is_dir() {
                return Ok(());
            }
            fs::remove_file(path)?;
            fs::create_dir(path)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => fs::create_dir_all(path),
        r => r,
    }
}

/// Walks the snapshot's trees depth-first and restores as it goes: a directory
/// is created when the first included entry below it is found, files go to
/// the workers through a bounded channel, other entries are made at once.
/// Only directories (their metadata is applied last) and hard links are
/// remembered, so memory does not grow with the number of files.
struct Walk<'c, 'r> {
    ctx: &'c Ctx<'r>,
    files: Sender<FileTask>,
    /// Directories entered, outermost first, and whether creating them
    /// failed (already reported); the first `created` of them were attempted.
    stack: Vec<(PathBuf, bool)>,
    created: usize,
    /// Created directories, children before parents, with their metadata.
    dirs: Vec<(PathBuf, Node)>,
    /// Hard links: (link path, first path), made once all files are written.
    links: Vec<(PathBuf, PathBuf)>,
    seen_inodes: HashMap<(u64, u64), PathBuf>,
}

impl Walk<'_, '_> {
    /// Create the entered directories that do not exist yet.
    fn ensure_dirs(&mut self) {
        for (path, failed) in &mut self.stack[self.created..] {
            if let Err(e) = create_dir(path) {
                self.ctx
                    .error(path, format!("cannot create directory: {e}"));
                *failed = true;
            }
        }
        self.created = self.stack.len();
    }

    fn tree(
        &mut self,
        tree_id: &Id,
        snap_path: &Path,
        target: &Path,
        included: bool,
    ) -> Result<()> {
        let tree = self.ctx.repo.load_tree(tree_id)?;
        for node in tree.nodes {
            let name = node.name.to_os();
            if name.is_empty() || name == "." || name == ".." || name.as_bytes().contains(&b'/') {
                self.ctx.error(
                    &target.join(&name),
                    "unsafe name in snapshot, skipped".into(),
                );
                continue;
            }
            let sp = snap_path.join(&name);
            let tp = target.join(&name);
            let inc = included || self.ctx.includes.as_ref().is_none_or(|g| g.is_match(&sp));
            self.node(node, &sp, tp, inc)?;
        }
        Ok(())
    }

    fn node(
        &mut self,
        node: Node,
        snap_path: &Path,
        target: PathBuf,
        included: bool,
    ) -> Result<()> {
        match node.node_type {
            NodeType::Dir => {
                self.stack.push((target.clone(), false));
                if included {
                    self.ensure_dirs();
                }
                if let Some(sub) = node.subtree {
                    self.tree(&sub, snap_path, &target, included)?;
                }
                let created = self.created == self.stack.len();
                let failed = self.stack.pop().is_some_and(|(_, failed)| failed);
                if created {
                    self.created -= 1;
                    // A directory that could not be created gets no metadata
                    // (and no second error).
                    if !failed {
                        self.dirs.push((target, node));
                    }
                }
            }
            _ if !included => {}
            NodeType::File => {
                self.ensure_dirs();
                if node.links > 1 {
                    let key = (node.device_id, node.inode);
                    if let Some(first) = self.seen_inodes.get(&key) {
                        self.links.push((target, first.clone()));
                        return Ok(());
                    }
                    self.seen_inodes.insert(key, target.clone());
                }
                let tasks = if node.content.len() > PART_BLOBS {
                    match open_parted(self.ctx, target.clone(), node) {
                        Ok(parts) => parts,
                        Err(e) => {
                            self.ctx.error(&target, e.to_string());
                            return Ok(());
                        }
                    }
                } else {
                    vec![FileTask::Whole { path: target, node }]
                };
                for task in tasks {
                    // The workers only stop once this sender is dropped (or by
                    // panicking, which the thread scope reports).
                    let _ = self.files.send(task);
                }
            }
            _ => {
                self.ensure_dirs();
                if let Err(e) = restore_other(self.ctx, &target, &node) {
                    self.ctx.error(&target, e.to_string());
                }
            }
        }
        Ok(())
    }
}

fn sync_filesystem(target: &Path) -> Result<()> {
    use std::os::fd::AsRawFd;
    let dir = fs::File::open(target).map_err(io_err("open", target))?;
    // SAFETY: the descriptor is valid for the lifetime of `dir`.
    if unsafe { libc::syncfs(dir.as_raw_fd()) } != 0 {
        return Err(Error::io("sync", target, std::io::Error::last_os_error()));
    }
    Ok(())
}

/// Find the node at `subpath` inside the snapshot's root tree.
fn find_subpath(repo: &Repository, root: &Id, subpath: &str) -> Result<Node> {
    let mut tree = repo.load_tree(root)?;
    let parts: Vec<&str> = subpath.split('/').filter(|p| !p.is_empty()).collect();
    for (i, part) in parts.iter().enumerate() {
        let node = tree
            .find(part.as_bytes())
            .cloned()
            .ok_or_else(|| Error::NotFound(format!("path {subpath} in the snapshot")))?;
        if i + 1 == parts.len() {
            return Ok(node);
        }
        let sub = node.subtree.ok_or_else(|| {
            Error::NotFound(format!(
                "path {subpath} in the snapshot ({part} is not a directory)"
            ))
        })?;
        tree = repo.load_tree(&sub)?;
    }
    Err(Error::InvalidInput("empty path".into()))
}

/// Restore a snapshot's tree (or the part chosen by `opts`) under `opts.target`.
///
/// The repository index must be loaded. Entries that fail are listed in the
/// summary; the call itself fails only for problems that stop the whole
/// restore (unreadable trees, an unusable target).
///
/// # Errors
/// [`Error::NotFound`] for a missing subpath; storage and corruption errors on trees.
pub fn restore(repo: &Repository, root: &Id, opts: &RestoreOptions) -> Result<RestoreSummary> {
    let includes = if opts.includes.is_empty() {
        None
    } else {
        let mut b = GlobSetBuilder::new();
        for p in &opts.includes {
            b.add(
                Glob::new(p)
                    .map_err(|e| Error::InvalidInput(format!("bad include pattern {p:?}: {e}")))?,
            );
        }
        Some(
            b.build()
                .map_err(|e| Error::InvalidInput(format!("bad include pattern: {e}")))?,
        )
    };
    // SAFETY: geteuid has no preconditions.
    let is_root = unsafe { libc::geteuid() } == 0;
    let ctx = Ctx {
        repo,
        includes,
        owner: opts.owner.unwrap_or(is_root),
        errors: Mutex::new(Vec::new()),
        files: AtomicU64::new(0),
        others: AtomicU64::new(0),
        bytes: AtomicU64::new(0),
    };
    fs::create_dir_all(&opts.target).map_err(io_err("create target directory", &opts.target))?;

    let threads = if opts.threads == 0 {
        // CPU-bound locally; latency-bound on object stores, where more requests in flight help.
        let cpus = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2);
        cpus.max(repo.backend().concurrency())
    } else {
        opts.threads
    };
    let (walked, dirs, links) = std::thread::scope(|s| {
        let ctx = &ctx;
        let (tx, rx) = bounded::<FileTask>(threads * 4);
        // Small files stay dirty in the page cache until something writes them
        // back (the kernel's thresholds are far above a typical restore), so
        // without this the final syncfs wrote a whole source tree while the
        // CPUs idled. A flusher starts writeback once a second until the
        // workers are done (each holds a clone of `alive_tx`).
        let (alive_tx, alive_rx) = bounded::<()>(0);
        let target = &opts.target;
        s.spawn(move || {
            while let Err(RecvTimeoutError::Timeout) = alive_rx.recv_timeout(FLUSH_EVERY) {
                // Only a head start: the final syncfs reports errors.
                let _ = sync_filesystem(target);
            }
        });
        for _ in 0..threads {
            let rx = rx.clone();
            let alive = alive_tx.clone();
            s.spawn(move || {
                let _alive = alive;
                for task in rx {
                    match task {
                        FileTask::Whole { path, node } => match restore_file(ctx, &path, &node) {
                            Ok(()) => {
                                ctx.files.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(e) => ctx.error(&path, e.to_string()),
                        },
                        FileTask::Part {
                            file,
                            blobs,
                            offset,
                        } => restore_part(ctx, &file, blobs, offset),
                    }
                }
            });
        }
        drop(alive_tx);
        let mut walk = Walk {
            ctx,
            files: tx,
            stack: Vec::new(),
            created: 0,
            dirs: Vec::new(),
            links: Vec::new(),
            seen_inodes: HashMap::new(),
        };
        let walked = match opts
            .subpath
            .as_deref()
            .filter(|s| !s.trim_matches('/').is_empty())
        {
            None => walk.tree(root, Path::new("/"), &opts.target, false),
            Some(sub) => find_subpath(repo, root, sub).and_then(|node| {
                let snap_path = Path::new("/").join(sub.trim_start_matches('/'));
                if node.node_type == NodeType::Dir {
                    // The directory's contents go straight into the target; the
                    // target gets its metadata (last: it is the outermost).
                    if let Some(t) = node.subtree {
                        walk.tree(&t, &snap_path, &opts.target, false)?;
                    }
                    walk.dirs.push((opts.target.clone(), node));
                    Ok(())
                } else {
                    let target = opts.target.join(node.name.to_os());
                    walk.node(node, &snap_path, target, true)
                }
            }),
        };
        // Dropping the walk closes the channel: the workers finish the queue and stop.
        let Walk { dirs, links, .. } = walk;
        (walked, dirs, links)
    });
    walked?;

    for (link, first) in &links {
        let r = remove_existing(link)
            .and_then(|_| fs::hard_link(first, link).map_err(io_err("link", link)));
        match r {
            Ok(()) => {
                ctx.others.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => ctx.error(link, e.to_string()),
        }
    }
    let mut ndirs = 0;
    for (path, node) in &dirs {
        match apply_metadata(&ctx, path, node) {
            Ok(()) => ndirs += 1,
            Err(e) => ctx.error(path, e.to_string()),
        }
    }
    // One syncfs at the end instead of an fsync per file: when restore returns,
    // the data is on disk (a restore Job's volume is used right after it).
    sync_filesystem(&opts.target)?;
    Ok(RestoreSummary {
        files: ctx.files.load(Ordering::Relaxed),
        dirs: ndirs,
        others: ctx.others.load(Ordering::Relaxed),
        bytes: ctx.bytes.load(Ordering::Relaxed),
        errors: ctx
            .errors
            .into_inner()
            .unwrap_or_else(PoisonError::into_inner),
    })
}
