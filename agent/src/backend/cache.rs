//! A local cache in front of a remote backend for the files that incremental
//! backups and listings read again and again: snapshot files, index files,
//! and packs holding tree blobs. Every cached file is named by the hash of its
//! contents and checked against it when read, and listings always come from
//! the remote, so a stale, damaged or deleted cache costs downloads, never a
//! wrong result. Every listing also drops the cached files of its kind that
//! the remote no longer has (a pack another host pruned, or one that was
//! lost). `check` does not read through the cache at all
//! ([`super::open_uncached`]): a pack the remote lost or damaged must not pass
//! because this host still has a good copy.

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use super::{Backend, FileInfo, FileKind};
use crate::error::Result;
use crate::id::Id;

/// The default cache root: `$CAIRN_CACHE_DIR`, `$XDG_CACHE_HOME/cairn` or `~/.cache/cairn`.
pub fn default_cache_root() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("CAIRN_CACHE_DIR").filter(|d| !d.is_empty()) {
        return Some(d.into());
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME").filter(|d| !d.is_empty()) {
        return Some(Path::new(&d).join("cairn"));
    }
    std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache/cairn"))
}

/// A caching wrapper around another backend.
pub struct CachedBackend {
    inner: Box<dyn Backend>,
    dir: PathBuf,
    /// Cached packs whose hash was checked by this process (checked once, then read by range).
    verified: Mutex<HashSet<String>>,
}

impl CachedBackend {
    /// Cache `inner` under `root/<hash of the location>`. Returns `inner`
    /// unwrapped if the cache directory cannot be created (read-only home).
    pub fn wrap(inner: Box<dyn Backend>, root: &Path) -> Box<dyn Backend> {
        let tag = blake3::hash(inner.location().as_bytes()).to_hex();
        let dir = root.join(&tag[..16]);
        match fs::create_dir_all(&dir) {
            Ok(()) => Box::new(CachedBackend {
                inner,
                dir,
                verified: Mutex::new(HashSet::new()),
            }),
            Err(e) => {
                tracing::warn!(
                    "no local cache ({}: {e}); every read goes to the repository",
                    dir.display()
                );
                inner
            }
        }
    }

    /// Kinds cached whenever they are read. Packs are cached only when asked
    /// to ([`Backend::cache_pack`]: tree packs), never because they were read.
    fn cached(kind: FileKind) -> bool {
        matches!(kind, FileKind::Snapshot | FileKind::Index)
    }

    fn path(&self, kind: FileKind, name: &str) -> PathBuf {
        self.dir.join(kind.path(name))
    }

    /// Whether the pack is cached and intact (hashed on first use in this process).
    fn verified_pack(&self, name: &str) -> bool {
        let mut v = self.verified.lock().unwrap_or_else(PoisonError::into_inner);
        if v.contains(name) {
            return true;
        }
        if self.get(FileKind::Pack, name).is_some() {
            v.insert(name.to_string());
            return true;
        }
        false
    }

    /// The cached copy, if present and intact.
    fn get(&self, kind: FileKind, name: &str) -> Option<Vec<u8>> {
        let p = self.path(kind, name);
        let data = fs::read(&p).ok()?;
        if Id::of_stored(&data).to_hex() == name {
            tracing::debug!("cache hit: {} {name}", kind.name());
            Some(data)
        } else {
            tracing::warn!("discarding damaged cache file {}", p.display());
            let _ = fs::remove_file(&p);
            None
        }
    }

    /// Remove the cached copies of files of `kind` that the remote no longer
    /// lists (best effort). Packs lie one directory deeper (`data/ab/abcd…`).
    fn drop_unlisted(&self, kind: FileKind, listed: &[FileInfo]) {
        let names: HashSet<&str> = listed.iter().map(|f| f.name.as_str()).collect();
        let top = match kind {
            FileKind::Pack => self.dir.join("data"),
            _ => match self.dir.join(kind.path("x")).parent() {
                Some(d) => d.to_path_buf(),
                None => return,
            },
        };
        let mut dirs = vec![top];
        let mut dropped = Vec::new();
        while let Some(dir) = dirs.pop() {
            let Ok(entries) = fs::read_dir(&dir) else {
                continue;
            };
            for e in entries.flatten() {
                let n = e.file_name().to_string_lossy().into_owned();
                if kind == FileKind::Pack && e.file_type().is_ok_and(|t| t.is_dir()) {
                    dirs.push(e.path());
                } else if !n.starts_with(".tmp-") && !names.contains(n.as_str()) {
                    tracing::debug!(
                        "dropping cached {} {n}: the repository no longer has it",
                        kind.name()
                    );
                    let _ = fs::remove_file(e.path());
                    dropped.push(n);
                }
            }
        }
        // Readers hold this lock: take it only once the walk is done.
        let mut verified = self.verified.lock().unwrap_or_else(PoisonError::into_inner);
        for n in dropped {
            verified.remove(&n);
        }
    }

    /// Store a copy (best effort: a cache that cannot be written is only slower).
    fn put(&self, kind: FileKind, name: &str, data: &[u8]) {
        let p = self.path(kind, name);
        let Some(parent) = p.parent() else { return };
        if fs::create_dir_all(parent).is_err() {
            return;
        }
        let tmp = parent.join(format!(".tmp-{name}-{}", std::process::id()));
        if fs::write(&tmp, data).is_ok() && fs::rename(&tmp, &p).is_ok() {
            return;
        }
        let _ = fs::remove_file(&tmp);
    }
}

impl Backend for CachedBackend {
    fn location(&self) -> String {
        self.inner.location()
    }

    fn concurrency(&self) -> usize {
        self.inner.concurrency()
    }

    fn max_read_run(&self) -> u64 {
        self.inner.max_read_run()
    }

    fn remove_stale_temporaries(
        &self,
        age: std::time::Duration,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<(u64, u64)> {
        self.inner.remove_stale_temporaries(age, now)
    }

    fn clock(&self) -> Result<Option<chrono::DateTime<chrono::Utc>>> {
        self.inner.clock()
    }

    fn create(&self) -> Result<()> {
        self.inner.create()
    }

    fn exists(&self, kind: FileKind, name: &str) -> Result<bool> {
        self.inner.exists(kind, name)
    }

    fn read(&self, kind: FileKind, name: &str) -> Result<Vec<u8>> {
        if Self::cached(kind) || (kind == FileKind::Pack && self.verified_pack(name)) {
            if let Some(d) = self.get(kind, name) {
                return Ok(d);
            }
        }
        let data = self.inner.read(kind, name)?;
        if Self::cached(kind) {
            tracing::debug!("cache miss: {} {name}", kind.name());
            if Id::of_stored(&data).to_hex() == name {
                self.put(kind, name, &data);
            }
        }
        Ok(data)
    }

    fn read_range(&self, kind: FileKind, name: &str, offset: u64, length: u32) -> Result<Vec<u8>> {
        if kind == FileKind::Pack && self.verified_pack(name) {
            use std::os::unix::fs::FileExt;
            let mut buf = vec![0u8; length as usize];
            let file = fs::File::open(self.path(kind, name));
            if file.and_then(|f| f.read_exact_at(&mut buf, offset)).is_ok() {
                tracing::debug!("cache hit: pack {name}");
                return Ok(buf);
            }
        }
        self.inner.read_range(kind, name, offset, length)
    }

    fn cache_pack(&self, name: &str) -> Result<()> {
        if self.verified_pack(name) {
            return Ok(());
        }
        let data = self.inner.read(FileKind::Pack, name)?;
        tracing::debug!("cache miss: pack {name}");
        if Id::of_stored(&data).to_hex() == name {
            self.put(FileKind::Pack, name, &data);
        }
        Ok(())
    }

    fn write(&self, kind: FileKind, name: &str, data: Vec<u8>) -> Result<()> {
        if matches!(kind, FileKind::Snapshot | FileKind::Index) {
            // small metadata files: keep a copy, so later runs need not download them
            self.inner.write(kind, name, data.clone())?;
            self.put(kind, name, &data);
            return Ok(());
        }
        self.inner.write(kind, name, data)
    }

    fn list(&self, kind: FileKind) -> Result<Vec<FileInfo>> {
        let list = self.inner.list(kind)?;
        if matches!(kind, FileKind::Snapshot | FileKind::Index | FileKind::Pack) {
            self.drop_unlisted(kind, &list);
        }
        Ok(list)
    }

    fn remove(&self, kind: FileKind, name: &str) -> Result<()> {
        let _ = fs::remove_file(self.path(kind, name));
        self.inner.remove(kind, name)
    }
}
