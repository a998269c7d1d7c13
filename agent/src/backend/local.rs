//! A repository in a local directory (or any mounted filesystem, such as a PVC).
//! Files are written to a temporary name, flushed to disk, then hard-linked
//! into place, so a crash never leaves a partial file under a real name and
//! an existing file is never replaced.
//!
//! Directories are made 0700 and files 0600, as restic does: on a shared host
//! nobody else can copy the key files and guess passwords offline. A
//! repository whose config file is group-readable (made so by its owner for a
//! group of users) keeps that: new directories 0770, files 0660.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{BufWriter, ErrorKind, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use super::{Backend, FileInfo, FileKind, StagedFile};
use crate::error::{Error, Result};

/// Backend for a directory on a local filesystem.
pub struct LocalBackend {
    root: PathBuf,
    /// Whether the repository is shared with its group (see the module doc).
    group: OnceLock<bool>,
}

impl LocalBackend {
    /// A backend rooted at `root` (which need not exist until `create`).
    pub fn new(root: impl Into<PathBuf>) -> LocalBackend {
        LocalBackend {
            root: root.into(),
            group: OnceLock::new(),
        }
    }

    /// A backend for a new repository shared with its group from the start
    /// (`cairn init --group-access`): directories 0770, files 0660, so
    /// every user of the directory's group (in Kubernetes: every agent pod
    /// with the volume's fsGroup) can write it, whatever its own user.
    pub fn shared_with_group(root: impl Into<PathBuf>) -> LocalBackend {
        let b = LocalBackend::new(root);
        let _ = b.group.set(true);
        b
    }

    /// Modes for new directories and files.
    fn modes(&self) -> (u32, u32) {
        let group = *self.group.get_or_init(|| {
            fs::metadata(self.root.join("config")).is_ok_and(|m| m.mode() & 0o040 != 0)
        });
        if group {
            (0o770, 0o660)
        } else {
            (0o700, 0o600)
        }
    }

    fn create_dirs(&self, dir: &Path) -> std::io::Result<()> {
        let (dir_mode, _) = self.modes();
        DirBuilder::new()
            .recursive(true)
            .mode(dir_mode)
            .create(dir)?;
        if dir_mode & 0o070 != 0 {
            // The umask (022 in most containers) took the group's write bit:
            // give it back to the directories this repository owns.
            for d in dir.ancestors() {
                if !d.starts_with(&self.root) {
                    break;
                }
                if let Ok(m) = fs::symlink_metadata(d) {
                    if m.is_dir() && m.mode() & 0o070 != 0o070 {
                        // Keep the set-group-ID bit a directory inherits from
                        // an fsGroup volume: it keeps new files in the group.
                        let mode = (m.mode() & 0o7000) | dir_mode;
                        let _ = fs::set_permissions(d, fs::Permissions::from_mode(mode));
                    }
                }
            }
        }
        Ok(())
    }

    fn path(&self, kind: FileKind, name: &str) -> PathBuf {
        self.root.join(kind.path(name))
    }

    fn err(&self, op: &'static str, kind: FileKind, name: &str, e: std::io::Error) -> Error {
        if e.kind() == ErrorKind::NotFound && op != "write" {
            return Error::NotFound(format!(
                "{} {name} ({})",
                kind.name(),
                self.path(kind, name).display()
            ));
        }
        Error::Backend {
            op,
            key: self.path(kind, name).display().to_string(),
            message: e.to_string(),
            cause: Some(e),
        }
    }
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Whether `dir` holds anything but temporary files, looking `depth` levels
/// of subdirectories deep (an unreadable directory counts as holding files).
fn holds_files(dir: &Path, depth: u32) -> bool {
    let Ok(rd) = fs::read_dir(dir) else {
        return true;
    };
    rd.flatten().any(|e| {
        let temp = e.file_name().to_string_lossy().starts_with(".tmp-");
        match e.file_type() {
            Ok(t) if t.is_dir() && depth > 0 => holds_files(&e.path(), depth - 1),
            Ok(t) if t.is_file() && temp => false,
            _ => true,
        }
    })
}

/// A fresh temporary name in `dir` (skipped by `list`, never a real file's name).
fn temp_name(dir: &Path) -> PathBuf {
    let mut rnd = [0u8; 8];
    crate::crypto::fill_random(&mut rnd);
    dir.join(format!(".tmp-{}", hex::encode(rnd)))
}

/// Write buffer of a staged file: small pieces (tree blobs) are gathered,
/// large ones (data blobs) go straight to the file.
const STAGE_BUFFER: usize = 256 * 1024;

impl LocalBackend {
    /// A temporary file in the kind's top directory, on the same filesystem
    /// as its final place (hard links cannot cross filesystems).
    fn staged(&self, kind: FileKind) -> Result<LocalStaged> {
        let dir = self.root.join(kind.dir());
        if !dir.is_dir() {
            if !self.root.join("config").exists() && kind != FileKind::Config {
                return Err(Error::RepositoryNotFound(self.location()));
            }
            self.create_dirs(&dir)
                .map_err(|e| Error::io("create directory", &dir, e))?;
        }
        let tmp = temp_name(&dir);
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(self.modes().1)
            .open(&tmp)
            .map_err(|e| Error::io("create", &tmp, e))?;
        if self.modes().1 & 0o060 != 0 {
            // As in create_dirs: the umask must not keep the group out.
            // Best effort, as for directories: some volume drivers refuse
            // chmod, and the file is still written (with the umask's mode).
            let _ = file.set_permissions(fs::Permissions::from_mode(self.modes().1));
        }
        Ok(LocalStaged {
            backend: LocalBackend {
                root: self.root.clone(),
                group: self.group.clone(),
            },
            kind,
            tmp,
            file: Some(BufWriter::with_capacity(STAGE_BUFFER, file)),
        })
    }

    /// What an `init` killed before writing the config leaves: only the
    /// repository's directories, with nothing but key and temporary files.
    fn is_unfinished_init(&self) -> bool {
        let Ok(entries) = fs::read_dir(&self.root) else {
            return false;
        };
        entries.flatten().all(|e| {
            let name = e.file_name();
            let is_dir = e.file_type().is_ok_and(|t| t.is_dir());
            match name.to_str() {
                Some("keys") => is_dir,
                Some("snapshots") | Some("index") => is_dir && !holds_files(&e.path(), 0),
                Some("data") => is_dir && !holds_files(&e.path(), 1),
                // A fresh filesystem's own directory (ext4 volume root).
                Some("lost+found") => is_dir,
                _ => false,
            }
        })
    }

    fn write_err(&self, kind: FileKind, name: &str, target: &Path, e: std::io::Error) -> Error {
        if e.kind() == ErrorKind::AlreadyExists {
            Error::Backend {
                op: "write",
                key: target.display().to_string(),
                message: "file already exists (repository files are never overwritten)".into(),
                cause: Some(e),
            }
        } else {
            self.err("write", kind, name, e)
        }
    }
}

/// A file written under a temporary name, then flushed and hard-linked to its
/// final name: how every file of a local repository is stored.
struct LocalStaged {
    backend: LocalBackend,
    kind: FileKind,
    tmp: PathBuf,
    file: Option<BufWriter<File>>,
}

impl StagedFile for LocalStaged {
    fn write_all(&mut self, data: &[u8]) -> Result<()> {
        let Some(f) = self.file.as_mut() else {
            return Err(Error::Internal("staged file already closed".into()));
        };
        f.write_all(data).map_err(|e| Error::Backend {
            op: "write",
            key: self.tmp.display().to_string(),
            message: e.to_string(),
            cause: Some(e),
        })
    }

    fn commit(mut self: Box<Self>, name: &str) -> Result<()> {
        let (kind, b) = (self.kind, &self.backend);
        let target = b.path(kind, name);
        let dir = target.parent().unwrap_or(&b.root).to_path_buf();
        let file = self.file.take();
        let result = (|| -> std::io::Result<()> {
            let f = file
                .ok_or_else(|| std::io::Error::other("staged file already closed"))?
                .into_inner()
                .map_err(std::io::IntoInnerError::into_error)?;
            f.sync_all()?;
            drop(f);
            if !dir.is_dir() {
                b.create_dirs(&dir)?;
            }
            fs::hard_link(&self.tmp, &target)?;
            sync_dir(&dir)
        })();
        // Drop removes the temporary name.
        result.map_err(|e| b.write_err(kind, name, &target, e))
    }
}

impl Drop for LocalStaged {
    fn drop(&mut self) {
        self.file = None;
        let _ = fs::remove_file(&self.tmp);
    }
}

impl Backend for LocalBackend {
    fn location(&self) -> String {
        self.root.display().to_string()
    }

    /// A read syscall per 2 MiB costs nothing next to the data, and smaller
    /// runs keep each restore worker's buffers small.
    fn max_read_run(&self) -> u64 {
        2 << 20
    }

    fn clock(&self) -> Result<Option<chrono::DateTime<chrono::Utc>>> {
        let mut tag = [0u8; 8];
        crate::crypto::fill_random(&mut tag);
        let path = self.root.join(format!(".tmp-clock-{}", hex::encode(tag)));
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| Error::io("create", &path, e))?;
        let modified = file.metadata().and_then(|m| m.modified());
        drop(file);
        let _ = fs::remove_file(&path);
        let modified = modified.map_err(|e| Error::io("stat", &path, e))?;
        Ok(Some(modified.into()))
    }

    fn remove_stale_temporaries(
        &self,
        age: std::time::Duration,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<(u64, u64)> {
        let (mut n, mut bytes) = (0, 0);
        for kind in FileKind::ALL {
            let dir = self.root.join(kind.dir());
            let entries = match fs::read_dir(&dir) {
                Ok(e) => e,
                Err(e) if e.kind() == ErrorKind::NotFound => continue,
                Err(e) => return Err(Error::io("list", dir, e)),
            };
            for entry in entries {
                let entry = entry.map_err(|e| Error::io("list", &dir, e))?;
                if !entry.file_name().as_encoded_bytes().starts_with(b".tmp-") {
                    continue;
                }
                let Ok(meta) = entry.metadata() else {
                    continue; // gone already (committed or dropped by its writer)
                };
                let stale = meta
                    .modified()
                    .ok()
                    .map(chrono::DateTime::<chrono::Utc>::from)
                    .and_then(|t| (now - t).to_std().ok())
                    .is_some_and(|elapsed| elapsed >= age);
                if !meta.is_file() || !stale {
                    continue;
                }
                match fs::remove_file(entry.path()) {
                    Ok(()) => {
                        n += 1;
                        bytes += meta.len();
                    }
                    Err(e) if e.kind() == ErrorKind::NotFound => {}
                    Err(e) => return Err(Error::io("remove", entry.path(), e)),
                }
            }
        }
        Ok((n, bytes))
    }

    fn create(&self) -> Result<()> {
        if self.root.join("config").exists() {
            return Err(Error::RepositoryExists(self.location()));
        }
        // A location that is not empty is refused, unless it is what an init
        // killed before it wrote the config leaves (or one still running: they
        // cannot be told apart). Its key files are left alone: they open no
        // config, so `open` skips them, and of two inits racing, the second
        // config write fails.
        // A new filesystem's lost+found (the root of a fresh ext4 volume) does
        // not make it non-empty.
        let not_empty = fs::read_dir(&self.root)
            .is_ok_and(|mut e| e.any(|e| e.is_ok_and(|e| e.file_name() != "lost+found")));
        if not_empty && !self.is_unfinished_init() {
            return Err(Error::InvalidInput(format!(
                "{} exists and is not empty; choose an empty or new directory",
                self.location()
            )));
        }
        for d in ["keys", "snapshots", "index", "data"] {
            let p = self.root.join(d);
            self.create_dirs(&p)
                .map_err(|e| Error::io("create directory", p, e))?;
        }
        Ok(())
    }

    fn exists(&self, kind: FileKind, name: &str) -> Result<bool> {
        match fs::metadata(self.path(kind, name)) {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
            Err(e) => Err(self.err("stat", kind, name, e)),
        }
    }

    fn read(&self, kind: FileKind, name: &str) -> Result<Vec<u8>> {
        fs::read(self.path(kind, name)).map_err(|e| self.err("read", kind, name, e))
    }

    fn read_range(&self, kind: FileKind, name: &str, offset: u64, length: u32) -> Result<Vec<u8>> {
        let mut f =
            File::open(self.path(kind, name)).map_err(|e| self.err("open", kind, name, e))?;
        f.seek(SeekFrom::Start(offset))
            .map_err(|e| self.err("seek", kind, name, e))?;
        let mut buf = vec![0u8; length as usize];
        match f.read_exact(&mut buf) {
            Ok(()) => Ok(buf),
            Err(e) if e.kind() == ErrorKind::UnexpectedEof => Err(Error::corrupt(
                format!("{} {name}", kind.name()),
                format!("truncated: cannot read {length} bytes at offset {offset}"),
            )),
            Err(e) => Err(self.err("read", kind, name, e)),
        }
    }

    fn write(&self, kind: FileKind, name: &str, data: Vec<u8>) -> Result<()> {
        let mut f = self.staged(kind)?;
        f.write_all(&data)?;
        Box::new(f).commit(name)
    }

    fn stage(&self, kind: FileKind) -> Result<Option<Box<dyn StagedFile>>> {
        Ok(Some(Box::new(self.staged(kind)?)))
    }

    fn list(&self, kind: FileKind) -> Result<Vec<FileInfo>> {
        if kind == FileKind::Config {
            let size = fs::metadata(self.path(kind, "")).map(|m| m.len()).ok();
            return Ok(size
                .map(|size| FileInfo {
                    name: "config".into(),
                    size,
                })
                .into_iter()
                .collect());
        }
        let mut out = Vec::new();
        let mut dirs = vec![self.root.join(kind.dir())];
        while let Some(dir) = dirs.pop() {
            let entries = match fs::read_dir(&dir) {
                Ok(e) => e,
                Err(e) if e.kind() == ErrorKind::NotFound && !self.root.join("config").exists() => {
                    return Err(Error::RepositoryNotFound(self.location()))
                }
                Err(e) if e.kind() == ErrorKind::NotFound => continue,
                Err(e) => return Err(Error::io("list", dir, e)),
            };
            for entry in entries {
                let entry = entry.map_err(|e| Error::io("list", &dir, e))?;
                let name = entry.file_name().to_string_lossy().into_owned();
                if name.starts_with(".tmp-") {
                    continue;
                }
                let meta = entry
                    .metadata()
                    .map_err(|e| Error::io("stat", entry.path(), e))?;
                if meta.is_dir() {
                    if kind == FileKind::Pack {
                        dirs.push(entry.path());
                    }
                } else {
                    out.push(FileInfo {
                        name,
                        size: meta.len(),
                    });
                }
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    fn remove(&self, kind: FileKind, name: &str) -> Result<()> {
        fs::remove_file(self.path(kind, name)).map_err(|e| self.err("remove", kind, name, e))
    }
}
