//! The walker: visits the source paths depth-first without following
//! anything, decides per file whether the parent snapshot's content can be
//! reused (metadata unchanged) or the file must be read, and turns each entry's
//! `stat` into a tree node. It sends directory events (in order) to the tree
//! builder and files to read to the file workers, and never waits for file
//! contents. Also here: the exclude patterns and the source paths as a tree.

use std::collections::BTreeMap;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use crossbeam_channel::{bounded, Sender};
use globset::{Glob, GlobSet, GlobSetBuilder};
use rustix::fs::{self as rfs, AtFlags, FileType, Stat};

use super::read::FileJob;
use super::{ChangeDetection, Event, FileOutcome, Shared};
use crate::beneath;
use crate::blob::BlobType;
use crate::constants::MAX_TREE_DEPTH;
use crate::error::{Error, Result};
use crate::id::Id;
use crate::tree::{Node, NodeType, RawName, Tree};

/// Excludes compiled from glob patterns.
pub(super) struct Excludes {
    names: GlobSet,
    paths: GlobSet,
}

impl Excludes {
    pub(super) fn new(patterns: &[String]) -> Result<Excludes> {
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
pub(super) fn normalize(p: &Path) -> Result<PathBuf> {
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

pub(super) fn time_ns(secs: i64, nsec: i64) -> i64 {
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
pub(super) fn identity(st: &Stat) -> (u64, u64) {
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
pub(super) fn replaced(was: &str, now: &Stat) -> String {
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
pub(super) struct PathTree {
    children: BTreeMap<Vec<u8>, PathTree>,
    leaf: bool,
}

impl PathTree {
    pub(super) fn insert(&mut self, path: &Path) {
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

/// Walks the source paths depth-first: sends the directory events to the
/// tree builder and the files to read to the file workers.
pub(super) struct Walker<'s, 'a> {
    pub(super) shared: &'s Shared<'a>,
    pub(super) excludes: Excludes,
    pub(super) detection: ChangeDetection,
    pub(super) events: Sender<Event>,
    pub(super) files: Sender<FileJob>,
}

impl Walker<'_, '_> {
    pub(super) fn send(&self, e: Event) -> Result<()> {
        self.events
            .send(e)
            .map_err(|_| Error::Internal("tree builder stopped".into()))
    }

    pub(super) fn parent_tree(&self, subtree: Option<Id>) -> Option<Tree> {
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
    pub(super) fn walk_virtual(
        &self,
        tree: &PathTree,
        path: &Path,
        parent: Option<&Tree>,
    ) -> Result<()> {
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
                super::test_hooks::run("before opendir", path);
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
