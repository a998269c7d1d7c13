//! Restore: recreate a snapshot (or part of it) under a target directory.
//! Every blob is decrypted and its keyed hash checked before it is written.
//! File contents are written by a pool of workers; directory metadata is
//! applied last, deepest first, so restoring into read-only directories works.
//!
//! A snapshot may be hostile (anyone with a repository key can write trees),
//! so nothing is done by path: every entry is created inside an open
//! directory descriptor by its name, nothing in the target is followed
//! (`O_NOFOLLOW`, `O_EXCL`, `AT_SYMLINK_NOFOLLOW`), metadata goes through
//! descriptors, and directories opened again at the end (for their metadata,
//! for hard links) are resolved beneath the target without symlinks.

use std::collections::HashMap;
use std::fs;
use std::ops::Range;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::sync::{Mutex, PoisonError};

use crossbeam_channel::{bounded, RecvTimeoutError, Sender};
use globset::{Glob, GlobSet, GlobSetBuilder};
use rustix::fs::{self as rfs, AtFlags, FileType, Gid, Mode, OFlags, Timespec, Timestamps, Uid};
use rustix::io::Errno;

use crate::beneath;
use crate::blob::BlobType;
use crate::constants::MAX_TREE_DEPTH;
use crate::error::{Error, Result};
use crate::id::Id;
use crate::repository::IndexedRepository;
use crate::tree::{Node, NodeType};
use crate::treepath::entry_at;

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
    /// Clear set-user-ID and set-group-ID bits of everything but
    /// directories. They are always cleared when ownership is not restored.
    pub strip_setid: bool,
    /// Do not create character and block devices (each is reported).
    pub skip_devices: bool,
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
    repo: &'r IndexedRepository<'r>,
    includes: Option<GlobSet>,
    owner: bool,
    /// Clear set-user-ID and set-group-ID bits of non-directories.
    strip_setid: bool,
    /// Skip character and block devices (reported as errors).
    skip_devices: bool,
    /// The target directory: every restored entry is created beneath it,
    /// through directory descriptors and without following symlinks.
    root: DirFd,
    target: PathBuf,
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

    /// The mode to set: set-id bits are cleared unless ownership is restored
    /// too (a root restore with `--no-owner` would otherwise make another
    /// user's setuid program a root one) or when told to.
    fn mode(&self, node: &Node) -> Mode {
        let mut mode = node.mode & 0o7777;
        if node.node_type != NodeType::Dir && (self.strip_setid || !self.owner) {
            mode &= !0o6000;
        }
        Mode::from_raw_mode(mode)
    }
}

/// A directory of the target, open: entries are created inside it by name.
type DirFd = Arc<OwnedFd>;

/// Where an entry goes: its directory and its path (for messages; the name
/// is the node's).
struct Place {
    dir: DirFd,
    path: PathBuf,
}

enum FileTask {
    /// A file restored by one worker, front to back.
    Whole { place: Place, node: Node },
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

fn errno<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(Errno) -> Error + 'a {
    move |e| Error::io(op, path, e.into())
}

fn timestamps(node: &Node) -> Timestamps {
    let t = Timespec {
        tv_sec: node.mtime_ns.div_euclid(1_000_000_000),
        tv_nsec: node.mtime_ns.rem_euclid(1_000_000_000),
    };
    Timestamps {
        last_access: t,
        last_modification: t,
    }
}

/// Ownership, permissions and times of an open file or directory, in that
/// order (chown clears set-id bits), through its descriptor.
fn apply_fd_metadata(ctx: &Ctx<'_>, fd: BorrowedFd<'_>, path: &Path, node: &Node) -> Result<()> {
    if ctx.owner {
        let (uid, gid) = owner(node);
        rfs::fchown(fd, Some(uid), Some(gid)).map_err(errno("chown", path))?;
    }
    rfs::fchmod(fd, ctx.mode(node)).map_err(errno("chmod", path))?;
    rfs::futimens(fd, &timestamps(node)).map_err(errno("set times", path))
}

fn owner(node: &Node) -> (Uid, Gid) {
    // Unchecked: -1 ("leave unchanged" to chown) is recorded only by a
    // crafted snapshot, and it harms nothing.
    (
        Uid::from_raw_unchecked(node.uid),
        Gid::from_raw_unchecked(node.gid),
    )
}

/// Metadata of an entry that is not opened (symlinks, FIFOs, devices): by
/// name in its directory, never following a symlink.
fn apply_entry_metadata(ctx: &Ctx<'_>, place: &Place, node: &Node) -> Result<()> {
    let (dir, name, path) = (place.dir.as_fd(), node.name.0.as_slice(), &place.path);
    if ctx.owner {
        let (uid, gid) = owner(node);
        rfs::chownat(dir, name, Some(uid), Some(gid), AtFlags::SYMLINK_NOFOLLOW)
            .map_err(errno("chown", path))?;
    }
    if let Some(kind) = special_kind(node.node_type) {
        chmod_special(dir, name, kind, ctx.mode(node)).map_err(|e| match e {
            Some(e) => Error::io("chmod", path, e.into()),
            None => Error::Refused("replaced while being restored: mode not set".into()),
        })?;
    }
    rfs::utimensat(dir, name, &timestamps(node), AtFlags::SYMLINK_NOFOLLOW)
        .map_err(errno("set times", path))
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

/// Replace what is at the place with a new, empty file only the owner can
/// read (its mode is set at the end). `O_EXCL` never opens an existing entry
/// (nor follows a symlink in the way): that is removed and the create retried.
fn create_file(place: &Place, name: &[u8]) -> Result<fs::File> {
    let open = || {
        let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::CLOEXEC;
        rfs::openat(place.dir.as_fd(), name, flags, Mode::RUSR | Mode::WUSR)
    };
    // Into an empty target the first attempt succeeds: no lookup before it.
    let fd = match open() {
        Err(Errno::EXIST) => {
            beneath::remove_at(place.dir.as_fd(), name).map_err(io_err("remove", &place.path))?;
            open()
        }
        r => r,
    }
    .map_err(errno("create", &place.path))?;
    Ok(fs::File::from(fd))
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

fn restore_file(ctx: &Ctx<'_>, place: &Place, node: &Node) -> Result<()> {
    let path = &place.path;
    let f = create_file(place, &node.name.0)?;
    let (written, ends_in_hole) = write_blobs(ctx, &f, path, &node.content, 0)?;
    if ends_in_hole {
        f.set_len(written).map_err(io_err("truncate", path))?;
    }
    if written != node.size {
        let found = format!("restored {written} bytes");
        return Err(size_mismatch(path, found, node.size));
    }
    apply_fd_metadata(ctx, f.as_fd(), path, node)?;
    ctx.bytes.fetch_add(written, Ordering::Relaxed);
    Ok(())
}

/// Create a large file at its final size and split it into parts for the
/// workers (part offsets come from the blobs' plaintext lengths in the index;
/// decoding checks every blob against its recorded length).
fn open_parted(ctx: &Ctx<'_>, place: Place, node: Node) -> Result<Vec<FileTask>> {
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
        return Err(size_mismatch(&place.path, found, node.size));
    }
    let file = create_file(&place, &node.name.0)?;
    // At its final size from the start: parts land anywhere, and all-zero
    // chunks are simply not written (they stay holes).
    file.set_len(node.size)
        .map_err(io_err("truncate", &place.path))?;
    let n = node.content.len();
    let shared = Arc::new(PartedFile {
        path: place.path,
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
        apply_fd_metadata(ctx, pf.file.as_fd(), &pf.path, &pf.node)
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

/// Set the mode of the FIFO or device `name` in `dir`. A chmod by name would
/// follow a symlink that a writer of the target put in its place since
/// `mknodat` (rustix's `chmodat` cannot refuse symlinks without fchmodat2).
/// So the entry is opened as a path (no driver runs, no FIFO blocks) without
/// following, checked to be of `kind` still, and changed through its /proc
/// link, which names that inode itself (fchmod refuses O_PATH descriptors).
/// `Err(None)`: it is no longer of `kind`.
fn chmod_special(
    dir: BorrowedFd<'_>,
    name: &[u8],
    kind: FileType,
    mode: Mode,
) -> std::result::Result<(), Option<Errno>> {
    let flags = OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let fd = rfs::openat(dir, name, flags, Mode::empty()).map_err(Some)?;
    let st = rfs::fstat(&fd).map_err(Some)?;
    if FileType::from_raw_mode(st.st_mode) != kind {
        return Err(None);
    }
    let link = format!("/proc/self/fd/{}", fd.as_raw_fd());
    rfs::chmod(link.as_str(), mode).map_err(Some)
}

/// The file type `mknodat` makes for a node, if it is made that way.
fn special_kind(t: NodeType) -> Option<FileType> {
    match t {
        NodeType::Fifo => Some(FileType::Fifo),
        NodeType::Chardev => Some(FileType::CharacterDevice),
        NodeType::Blockdev => Some(FileType::BlockDevice),
        _ => None,
    }
}

fn restore_other(ctx: &Ctx<'_>, place: &Place, node: &Node) -> Result<()> {
    let (dir, name, path) = (place.dir.as_fd(), node.name.0.as_slice(), &place.path);
    let special = match node.node_type {
        NodeType::Symlink => None,
        NodeType::Chardev | NodeType::Blockdev if ctx.skip_devices => {
            return Err(Error::Refused(
                "device node not restored (devices are refused by this restore)".into(),
            ))
        }
        NodeType::Fifo | NodeType::Chardev | NodeType::Blockdev => special_kind(node.node_type),
        NodeType::Socket => return Ok(()), // a socket is recreated by its server, not by restore
        NodeType::File | NodeType::Dir => {
            return Err(Error::Internal(
                "files and directories are restored elsewhere".into(),
            ))
        }
    };
    beneath::remove_at(dir, name).map_err(io_err("remove", path))?;
    match special {
        None => {
            let target = node.target.clone().unwrap_or_default();
            rfs::symlinkat(target.0.as_slice(), dir, name).map_err(errno("symlink", path))?;
        }
        Some(kind) => {
            // Owner-only until its metadata is applied.
            rfs::mknodat(dir, name, kind, Mode::RUSR | Mode::WUSR, node.rdev)
                .map_err(errno("mknod", path))?
        }
    }
    ctx.others.fetch_add(1, Ordering::Relaxed);
    apply_entry_metadata(ctx, place, node)
}

/// Create the directory `name` inside `parent` (owner-only until its
/// metadata is applied) and open it, replacing a non-directory in its way:
/// a symlink there is removed, never followed. An existing directory is kept.
fn create_dir(parent: BorrowedFd<'_>, name: &[u8]) -> std::io::Result<OwnedFd> {
    match rfs::mkdirat(parent, name, Mode::RWXU) {
        Ok(()) | Err(Errno::EXIST) => {}
        Err(e) => return Err(e.into()),
    }
    match beneath::open_dir_at(parent, name) {
        Err(e) if matches!(e.raw_os_error(), Some(libc::ELOOP | libc::ENOTDIR)) => {
            rfs::unlinkat(parent, name, AtFlags::empty())?;
            rfs::mkdirat(parent, name, Mode::RWXU)?;
            beneath::open_dir_at(parent, name)
        }
        r => r,
    }
}

/// A directory entered by the walk.
struct Entered {
    /// Path in the target (for messages) and relative to it (to open it
    /// again when its metadata is applied).
    path: PathBuf,
    rel: PathBuf,
    name: Vec<u8>,
    /// Open once created; `None` before, or when creating it failed.
    fd: Option<DirFd>,
    failed: bool,
}

/// Walks the snapshot's trees depth-first and restores as it goes: a directory
/// is created when the first included entry below it is found, files go to
/// the workers through a bounded channel, other entries are made at once.
/// Only directories (their metadata is applied last) and hard links are
/// remembered, so memory does not grow with the number of files; open
/// directory descriptors are held for the directories entered and the files
/// queued, so their number is bounded too.
struct Walk<'c, 'r> {
    ctx: &'c Ctx<'r>,
    files: Sender<FileTask>,
    /// Directories entered, outermost first; the first `created` of them
    /// were attempted.
    stack: Vec<Entered>,
    created: usize,
    /// Created directories relative to the target, children before parents,
    /// with their metadata.
    dirs: Vec<(PathBuf, Node)>,
    /// Hard links relative to the target: (link, first path), made once all
    /// files are written.
    links: Vec<(PathBuf, PathBuf)>,
    seen_inodes: HashMap<(u64, u64), PathBuf>,
}

impl Walk<'_, '_> {
    /// Create the entered directories that do not exist yet.
    fn ensure_dirs(&mut self) {
        for i in self.created..self.stack.len() {
            let parent = match i {
                0 => Some(Arc::clone(&self.ctx.root)),
                _ => self.stack[i - 1].fd.clone(),
            };
            let e = &mut self.stack[i];
            // Below a directory that failed, that error is the one reported.
            let Some(parent) = parent else {
                e.failed = true;
                continue;
            };
            match create_dir(parent.as_fd(), &e.name) {
                Ok(fd) => e.fd = Some(Arc::new(fd)),
                Err(err) => {
                    self.ctx
                        .error(&e.path, format!("cannot create directory: {err}"));
                    e.failed = true;
                }
            }
        }
        self.created = self.stack.len();
    }

    /// The directory new entries go into: the innermost entered one.
    fn place(&self, name: &[u8]) -> Option<(Place, PathBuf)> {
        let (dir, path, rel) = match self.stack.last() {
            None => (
                Arc::clone(&self.ctx.root),
                self.ctx.target.clone(),
                PathBuf::new(),
            ),
            Some(e) => (e.fd.clone()?, e.path.clone(), e.rel.clone()),
        };
        let name = std::ffi::OsStr::from_bytes(name);
        Some((
            Place {
                dir,
                path: path.join(name),
            },
            rel.join(name),
        ))
    }

    fn tree(&mut self, tree_id: &Id, snap_path: &Path, included: bool) -> Result<()> {
        let tree = self.ctx.repo.load_tree(tree_id)?;
        for node in tree.nodes {
            let sp = snap_path.join(node.name.to_os());
            let inc = included || self.ctx.includes.as_ref().is_none_or(|g| g.is_match(&sp));
            self.node(node, &sp, inc);
        }
        Ok(())
    }

    fn node(&mut self, node: Node, snap_path: &Path, included: bool) {
        if node.node_type == NodeType::Dir {
            let (path, rel) = match self.stack.last() {
                None => (self.ctx.target.clone(), PathBuf::new()),
                Some(e) => (e.path.clone(), e.rel.clone()),
            };
            let name = node.name.to_os();
            if self.stack.len() >= MAX_TREE_DEPTH {
                self.ctx.error(
                    &path.join(&name),
                    format!("nested deeper than {MAX_TREE_DEPTH} directories: not restored"),
                );
                return;
            }
            self.stack.push(Entered {
                path: path.join(&name),
                rel: rel.join(&name),
                name: node.name.0.clone(),
                fd: None,
                failed: false,
            });
            if included {
                self.ensure_dirs();
            }
            if let Some(sub) = node.subtree {
                // A listing that cannot be read (or breaks the reader rules)
                // costs that directory, not the rest of the restore.
                if let Err(e) = self.tree(&sub, snap_path, included) {
                    let path = self.stack.last().map(|e| e.path.clone());
                    self.ctx.error(&path.unwrap_or_default(), e.to_string());
                }
            }
            let created = self.created == self.stack.len();
            if let Some(e) = self.stack.pop() {
                if created {
                    self.created -= 1;
                    // A directory that could not be created gets no metadata
                    // (and no second error).
                    if !e.failed {
                        self.dirs.push((e.rel, node));
                    }
                }
            }
            return;
        }
        if !included {
            return;
        }
        self.ensure_dirs();
        let Some((place, rel)) = self.place(&node.name.0) else {
            let path = self.stack.last().map(|e| e.path.join(node.name.to_os()));
            self.ctx.error(
                &path.unwrap_or_default(),
                "not restored: its directory could not be created".into(),
            );
            return;
        };
        match node.node_type {
            NodeType::File => {
                if node.links > 1 {
                    let key = (node.device_id, node.inode);
                    if let Some(first) = self.seen_inodes.get(&key) {
                        self.links.push((rel, first.clone()));
                        return;
                    }
                    self.seen_inodes.insert(key, rel);
                }
                let tasks = if node.content.len() > PART_BLOBS {
                    let path = place.path.clone();
                    match open_parted(self.ctx, place, node) {
                        Ok(parts) => parts,
                        Err(e) => {
                            self.ctx.error(&path, e.to_string());
                            return;
                        }
                    }
                } else {
                    vec![FileTask::Whole { place, node }]
                };
                for task in tasks {
                    // The workers only stop once this sender is dropped (or by
                    // panicking, which the thread scope reports).
                    let _ = self.files.send(task);
                }
            }
            _ => {
                if let Err(e) = restore_other(self.ctx, &place, &node) {
                    self.ctx.error(&place.path, e.to_string());
                }
            }
        }
    }
}

/// Open the parent directory of `rel` (relative to the target) again, beneath
/// the target and without following symlinks; returns it and the last name.
fn reopen_parent<'p>(ctx: &Ctx<'_>, rel: &'p Path) -> std::io::Result<(OwnedFd, &'p [u8])> {
    let name = rel
        .file_name()
        .ok_or_else(|| std::io::Error::from(Errno::INVAL))?;
    let parent = rel.parent().unwrap_or(Path::new(""));
    let flags = OFlags::PATH | OFlags::DIRECTORY;
    let fd = beneath::open_beneath(ctx.root.as_fd(), parent, flags)?;
    Ok((fd, name.as_bytes()))
}

/// Make the hard link `link` to the already restored `first` (both relative
/// to the target), replacing what is in the way.
fn make_link(ctx: &Ctx<'_>, link: &Path, first: &Path) -> std::io::Result<()> {
    let (first_dir, first_name) = reopen_parent(ctx, first)?;
    let (link_dir, link_name) = reopen_parent(ctx, link)?;
    beneath::remove_at(link_dir.as_fd(), link_name)?;
    // Flags 0: a symlink at `first` would be linked itself, never followed.
    rfs::linkat(
        first_dir.as_fd(),
        first_name,
        link_dir.as_fd(),
        link_name,
        AtFlags::empty(),
    )?;
    Ok(())
}

/// Apply a restored directory's metadata, opening it again beneath the target.
fn finish_dir(ctx: &Ctx<'_>, rel: &Path, node: &Node) -> Result<()> {
    let path = ctx.target.join(rel);
    let fd = beneath::open_beneath(ctx.root.as_fd(), rel, OFlags::RDONLY | OFlags::DIRECTORY)
        .map_err(io_err("open", &path))?;
    apply_fd_metadata(ctx, fd.as_fd(), &path, node)
}

fn sync_filesystem(dir: BorrowedFd<'_>, target: &Path) -> Result<()> {
    rfs::syncfs(dir).map_err(errno("sync", target))
}

/// Restore a snapshot's tree (or the part chosen by `opts`) under `opts.target`.
///
/// The repository index must be loaded. Entries that fail are listed in the
/// summary; the call itself fails only for problems that stop the whole
/// restore (unreadable trees, an unusable target).
///
/// # Errors
/// [`Error::NotFound`] for a missing subpath; storage and corruption errors on trees.
pub fn restore(
    repo: &IndexedRepository<'_>,
    root: &Id,
    opts: &RestoreOptions,
) -> Result<RestoreSummary> {
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
    fs::create_dir_all(&opts.target).map_err(io_err("create target directory", &opts.target))?;
    let root_fd = beneath::open_dir_path(&opts.target).map_err(io_err("open", &opts.target))?;
    let ctx = Ctx {
        repo,
        includes,
        owner: opts.owner.unwrap_or(is_root),
        strip_setid: opts.strip_setid,
        skip_devices: opts.skip_devices,
        root: Arc::new(root_fd),
        target: opts.target.clone(),
        errors: Mutex::new(Vec::new()),
        files: AtomicU64::new(0),
        others: AtomicU64::new(0),
        bytes: AtomicU64::new(0),
    };

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
                let _ = sync_filesystem(ctx.root.as_fd(), target);
            }
        });
        for _ in 0..threads {
            let rx = rx.clone();
            let alive = alive_tx.clone();
            s.spawn(move || {
                let _alive = alive;
                for task in rx {
                    match task {
                        FileTask::Whole { place, node } => match restore_file(ctx, &place, &node) {
                            Ok(()) => {
                                ctx.files.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(e) => ctx.error(&place.path, e.to_string()),
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
            None => walk.tree(root, Path::new("/"), false),
            Some(sub) => entry_at(repo, root, sub).and_then(|node| {
                let snap_path = Path::new("/").join(sub.trim_start_matches('/'));
                if node.node_type == NodeType::Dir {
                    // The directory's contents go straight into the target; the
                    // target gets its metadata (last: it is the outermost).
                    if let Some(t) = node.subtree {
                        walk.tree(&t, &snap_path, false)?;
                    }
                    walk.dirs.push((PathBuf::new(), node));
                } else {
                    walk.node(node, &snap_path, true);
                }
                Ok(())
            }),
        };
        // Dropping the walk closes the channel: the workers finish the queue and stop.
        let Walk { dirs, links, .. } = walk;
        (walked, dirs, links)
    });
    walked?;

    for (link, first) in &links {
        match make_link(&ctx, link, first) {
            Ok(()) => {
                ctx.others.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => ctx.error(&opts.target.join(link), format!("link: {e}")),
        }
    }
    let mut ndirs = 0;
    for (rel, node) in &dirs {
        match finish_dir(&ctx, rel, node) {
            Ok(()) => ndirs += 1,
            // The target itself (a sub-path restored into it) may belong to
            // someone else: the root of a new volume is root's, and a restore
            // Job is not. Its contents are what was asked for; its own
            // metadata is kept and said so, not an error.
            Err(Error::Io { cause, .. })
                if rel.as_os_str().is_empty() && cause.raw_os_error() == Some(libc::EPERM) =>
            {
                tracing::warn!(
                    "{}: not the owner: its own mode, owner and times are left as they are",
                    opts.target.display()
                );
            }
            Err(e) => ctx.error(&opts.target.join(rel), e.to_string()),
        }
    }
    // One syncfs at the end instead of an fsync per file: when restore returns,
    // the data is on disk (a restore Job's volume is used right after it).
    sync_filesystem(ctx.root.as_fd(), &opts.target)?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_special_file_swapped_for_a_symlink_is_not_chmodded_through_it() {
        let tmp = tempfile::tempdir().unwrap();
        let victim = tmp.path().join("victim");
        fs::write(&victim, b"x").unwrap();
        fs::set_permissions(&victim, fs::Permissions::from_mode(0o600)).unwrap();
        let target = tmp.path().join("target");
        fs::create_dir(&target).unwrap();
        let dir = beneath::open_dir_path(&target).unwrap();
        let mode = Mode::from_raw_mode(0o666);

        rfs::mknodat(&dir, "fifo", FileType::Fifo, Mode::RUSR, 0).unwrap();
        chmod_special(dir.as_fd(), b"fifo", FileType::Fifo, mode).unwrap();
        let m = fs::symlink_metadata(target.join("fifo"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(m & 0o777, 0o666);

        // What a writer of the target can do between mknodat and chmod.
        std::os::unix::fs::symlink(&victim, target.join("swapped")).unwrap();
        assert_eq!(
            chmod_special(dir.as_fd(), b"swapped", FileType::Fifo, mode),
            Err(None)
        );
        let m = fs::metadata(&victim).unwrap().permissions().mode();
        assert_eq!(m & 0o777, 0o600, "the symlink's target was chmodded");
    }
}
